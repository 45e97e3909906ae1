"""
appnet's ESMTP server engine: L{SMTPServer} and L{SMTPServerFactory}.

Our own engine rather than C{twisted.mail.smtp.ESMTP}, which advertises only
AUTH and STARTTLS, never parses MAIL/RCPT parameters, reads only lines (no
BDAT) and can answer pipelined commands out of order while a Deferred is
pending (twisted/twisted#8126, #8128). We keep Twisted's cred (AUTH goes
through the portal), TLS (C{startTLS}) and endpoints.

Extensions: PIPELINING (RFC 2920), SIZE (1870), 8BITMIME (6152),
ENHANCEDSTATUSCODES (2034, 3463), STARTTLS (3207), AUTH PLAIN and LOGIN
(4954), SMTPUTF8 (6531), CHUNKING (3030).

Input is processed in order, strictly: while a command waits for a Deferred
(a login, a delivery), what follows stays buffered, unparsed; replies to a
group of pipelined commands leave in one write. Command lines are framed by
L{appnet.lines.BoundedLines}; message content is handled in bulk:

 - DATA ends only at C{CRLF . CRLF} (no SMTP smuggling with C{LF . LF} or
   C{CR . CR}); a bare LF inside is taken as a line end (as Postfix's
   C{smtpd_forbid_bare_newline = normalize}); a bare CR, a NUL or a line
   over C{max_line} octets rejects the message with C{554 5.6.0} after its
   end; dot-stuffing is undone on the whole block at once;
 - BDAT chunks are binary and counted, never scanned.

Nothing is delivered from a message that is refused.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.cred import error as cred_error
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from appnet.accounts import PLAINTEXT_AUTH_POLICIES, plaintext_auth_allowed
from appnet.lines import BoundedLines
from appnet.smtp.address import EnvelopeError, MailCommand, parse_mail, parse_rcpt
from appnet.smtp.delivery import (
    Delivery,
    Recipient,
    TraceInfo,
    new_message_id,
    received_header,
    submission_headers,
)
from appnet.sockets import ReplySender
from appnet.stats import ServiceStats
from appnet.transcript import Transcript

__all__ = [
    "MX",
    "SUBMISSION",
    "ContentError",
    "ISMTPSubmitter",
    "SMTPServer",
    "SMTPServerFactory",
    "Submitter",
    "unstuff",
]

_log = Logger()

#: Listener roles: MX accepts mail for local domains from anyone; submission
#: (and smtps) require AUTH and relay for authenticated users.
MX, SUBMISSION = "mx", "submission"

LINE, DATA, BDAT, CLOSED = "line", "data", "bdat", "closed"

#: Errors after which the session is closed (Postfix's smtpd_hard_error_limit).
MAX_ERRORS = 20
MAX_FAILED_LOGINS = 3
#: Received bytes waiting behind a pending command before reading pauses.
MAX_PENDING_INPUT = 1 << 20

_END_OF_DATA = b"\r\n.\r\n"


class ISMTPSubmitter(Interface):
    """The avatar an SMTP AUTH login yields: who may submit mail."""

    username = Attribute("str: the authenticated user name")


@implementer(ISMTPSubmitter)
class Submitter:
    """An authenticated user of the submission service."""

    def __init__(self, username: str) -> None:
        self.username = username


class ContentError(ValueError):
    """Message content that breaks RFC 5321's rules for DATA."""


def unstuff(raw: bytes) -> bytes:
    """
    Turn what arrived between C{354} and the final C{.} line into the
    message: every line end CRLF (a bare LF counts as one), the leading
    dot of each line removed (RFC 5321 4.5.2).

    @param raw: the DATA bytes up to and including the CRLF before C{.}
    @raise ContentError: a bare CR or a NUL octet
    """
    if b"\0" in raw:
        raise ContentError("NUL octet in message")
    data = raw.replace(b"\r\n", b"\n")
    if b"\r" in data:
        raise ContentError("bare CR in message (RFC 5321 2.3.8)")
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\n.", b"\n").replace(b"\n", b"\r\n")


def _has_long_line(raw: bytes, limit: int) -> bool:
    """True when a line of C{raw}, without its CR LF, is over C{limit} octets."""
    # Linear and in C for the common case: a regular expression for "a long
    # run without CR or LF" backtracks at every octet and cost more than
    # the rest of a session.
    lines = raw.split(b"\n")
    if max(map(len, lines), default=0) <= limit:
        return False
    return any(len(line) - line.endswith(b"\r") > limit for line in lines)


class _Transaction:
    """One MAIL transaction's state."""

    __slots__ = ("chunked", "declared_size", "discard", "mail", "parts", "recipients", "sender", "size", "tail", "utf8")

    def __init__(self, sender: str, mail: MailCommand, declared_size: int) -> None:
        self.sender = sender
        self.mail = mail
        self.utf8 = "SMTPUTF8" in mail.params
        self.declared_size = declared_size
        self.recipients: list[Recipient] = []
        self.parts: list[bytes] = []
        self.size = 0
        self.tail = b"\r\n"  # DATA starts at the beginning of a line
        self.discard = False  # over the size limit: count, do not keep
        self.chunked = False  # BDAT used


_CLIENT_NOTES = {
    "HELO": "say hello (plain SMTP)",
    "EHLO": "say hello and ask for the extensions (ESMTP)",
    "MAIL": "start a message: the envelope sender",
    "RCPT": "add an envelope recipient",
    "DATA": "send the message content, ended by a line with a single dot",
    "BDAT": "send a chunk of the message, counted in octets (CHUNKING)",
    "RSET": "abort the current message",
    "NOOP": "do nothing",
    "VRFY": "ask whether a mailbox exists",
    "EXPN": "ask to expand a mailing list",
    "HELP": "ask for help",
    "QUIT": "end the session",
    "STARTTLS": "switch this connection to TLS",
    "AUTH": "log in with a SASL mechanism",
}

_SERVER_NOTES = {
    "2": "positive completion",
    "3": "positive intermediate: go on",
    "4": "transient failure: try again later",
    "5": "permanent failure",
}


def annotate_client(line: str) -> str:
    """A short note of what an SMTP client line means."""
    return _CLIENT_NOTES.get(line.split(" ", 1)[0].upper(), "SASL response or unknown command")


_EXTENSION_NOTES = {
    "PIPELINING": "extension: commands may be sent in groups (RFC 2920)",
    "SIZE": "extension: the largest message accepted, in octets (RFC 1870)",
    "8BITMIME": "extension: 8-bit message content accepted (RFC 6152)",
    "ENHANCEDSTATUSCODES": "extension: replies carry class.subject.detail codes (RFC 3463)",
    "SMTPUTF8": "extension: UTF-8 addresses and headers accepted (RFC 6531)",
    "CHUNKING": "extension: BDAT chunks accepted (RFC 3030)",
    "STARTTLS": "extension: TLS can be started (RFC 3207)",
    "AUTH": "extension: login mechanisms offered (RFC 4954)",
}


def annotate_server(line: str) -> str:
    """A short note of what an SMTP reply line means."""
    if line.startswith("250") and line[4:]:
        note = _EXTENSION_NOTES.get(line[4:].split(" ", 1)[0])
        if note is not None:
            return note
    if line.startswith("334"):
        return "SASL challenge"
    if line.startswith("354"):
        return "send the content now"
    return _SERVER_NOTES.get(line[:1], "reply")


def redact(line: str) -> str:
    """Hide credentials: AUTH initial responses and SASL lines."""
    word = line.split(" ", 1)[0].upper()
    if word == "AUTH" and line.count(" ") >= 2:
        return " ".join(line.split(" ")[:2]) + " ****"
    if word not in _CLIENT_NOTES:
        return "****"
    return line


class SMTPServer(BoundedLines, TimeoutMixin, protocol.Protocol):
    """One ESMTP session; see the module docstring."""

    factory: SMTPServerFactory
    transcript: Transcript | None = None
    _replies_out: Any = None  # appnet.sockets.ReplySender

    def __init__(self) -> None:
        self._mode = LINE
        self._inbuf = b""
        self._out: list[bytes] = []
        self._busy = False
        self._running = False
        self._paused = False
        self._helo: str | None = None
        self._esmtp = False
        self._tls = False
        self._user: str | None = None
        self._txn: _Transaction | None = None
        self._sasl: Callable[[bytes], None] | None = None
        self._bdat_left = 0
        self._bdat_last = False
        self._errors = 0
        self._failed_logins = 0
        self._peer = ""

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        self.callLater = f.reactor.callLater
        self._tls = f.implicit_tls
        self._replies_out = ReplySender(self.transport, f.stats)
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, NotImplementedError, OSError):
            pass  # not TCP (tests, unix sockets)
        peer = self.transport.getPeer()
        self._peer = str(getattr(peer, "host", "") or "")
        if f.trace:
            self.transcript = Transcript(
                "smtp",
                f"{self._peer}:{getattr(peer, 'port', '')}",
                annotate_client,
                annotate_server,
                redact,
                emit=f.trace_emit,
            )
        self._line(b"220 %s ESMTP appnet ready" % f.hostname.encode())
        self._flush()
        self.setTimeout(f.idle_timeout)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.setTimeout(None)
        self._mode = CLOSED
        self._txn = None
        self._sasl = None

    def timeoutConnection(self) -> None:
        self._close(421, "4.4.2", f"{self.factory.hostname} idle too long; closing connection")

    def _close(self, code: int, status: str, text: str) -> None:
        self._reply(code, status, text, count=False)
        self._flush()
        self._mode = CLOSED
        self._inbuf = b""
        self.transport.loseConnection()

    # -- output -------------------------------------------------------------

    def _line(self, line: bytes) -> None:
        if self._mode is CLOSED:
            return
        if self.transcript is not None:
            self.transcript.server(line)
        self._out.append(line + b"\r\n")

    def _reply(self, code: int, status: str, text: str, count: bool = True) -> None:
        """Queue one reply line (ENHANCEDSTATUSCODES: C{status} before the text)."""
        self._line(f"{code} {status} {text}".encode())
        if code >= 400 and count:
            self._errors += 1
            if self._errors >= MAX_ERRORS:
                self._close(421, "4.7.0", f"{self.factory.hostname} too many errors; closing connection")

    def _refuse(self, error: EnvelopeError) -> None:
        self._reply(error.code, error.status, error.text)

    def _flush(self) -> None:
        if self._out:
            out, self._out = self._out, []
            # The client waits for these replies: send them now, not at
            # the reactor's next turn (straight to the socket on plain TCP).
            self._replies_out.send(out[0] if len(out) == 1 else b"".join(out))

    # -- input --------------------------------------------------------------

    def max_line_length(self) -> int:
        return self.factory.max_line - 2

    def line_too_long(self) -> None:
        self._reply(500, "5.5.2", "line too long")

    def dataReceived(self, data: bytes) -> None:
        if self._mode is CLOSED:
            return
        # The idle timer restarts once per packet, not once per line.
        self.resetTimeout()
        self._inbuf = self._inbuf + data if self._inbuf else data
        if self._busy:
            if len(self._inbuf) > MAX_PENDING_INPUT and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
            return
        self._run()

    def _run(self) -> None:
        """Process buffered input until it runs out or a command must wait."""
        if self._running:
            return
        self._running = True
        try:
            while self._inbuf and not self._busy and self._mode is not CLOSED:
                data, self._inbuf = self._inbuf, b""
                if self._mode is LINE:
                    BoundedLines.dataReceived(self, data)
                    rest = self.take_unframed() if self._stop else b""
                elif self._mode is DATA:
                    rest = self._data_received(data)
                else:
                    rest = self._bdat_received(data)
                self._inbuf = rest + self._inbuf
        except Exception:  # noqa: BLE001 - a bug of ours; the session's state is unknown
            self.factory.stats.incr("errors")
            _log.failure("SMTP session failed")
            self._close(421, "4.3.0", f"{self.factory.hostname} internal error; closing connection")
        finally:
            self._running = False
        if self._paused and len(self._inbuf) < MAX_PENDING_INPUT // 2 and self._mode is not CLOSED:
            self._paused = False
            self.transport.resumeProducing()
        self._flush()

    def _wait(self, d: defer.Deferred[Any]) -> None:
        """Hold further input until C{d} (already given its callbacks) fires."""
        self._busy = True
        self.setTimeout(None)

        def done(result: object) -> None:
            self._busy = False
            if self._mode is CLOSED:
                return
            self.setTimeout(self.factory.idle_timeout)
            self._run()

        d.addErrback(self._internal_error).addBoth(done)

    def _internal_error(self, failure: Failure) -> None:
        self.factory.stats.incr("errors")
        _log.failure("SMTP command failed", failure)
        if self._mode is not CLOSED:
            self._reply(451, "4.3.0", "internal server error; try again later")

    def lineReceived(self, line: bytes) -> None:
        if self.transcript is not None:
            self.transcript.client(b"****" if self._sasl is not None else line)
        if self._sasl is not None:
            step, self._sasl = self._sasl, None
            step(line)
        else:
            self._command(line)
        if self._busy or self._mode is not LINE:
            self.stop_after_this_line()

    def _command(self, line: bytes) -> None:
        if b"\0" in line:
            self._reply(500, "5.5.2", "NUL octet in command")
            return
        word, _, rest = line.partition(b" ")
        handler = self._HANDLERS.get(word.upper())
        if handler is None:
            if word.upper() in (b"EXPN", b"TURN", b"ETRN", b"SEND", b"SOML", b"SAML"):
                self._reply(502, "5.5.1", "command not implemented")
            else:
                self._reply(500, "5.5.1", "command unrecognized")
            return
        try:
            arg = rest.decode("utf-8").strip(" ")
        except UnicodeDecodeError:
            self._reply(500, "5.5.2", "command is not valid UTF-8")
            return
        try:
            handler(self, arg)
        except Exception:  # noqa: BLE001 - a bug of ours: 451 and one log entry, never a traceback to the peer
            self._internal_error(Failure())

    # -- session commands ---------------------------------------------------

    def do_EHLO(self, arg: str) -> None:
        if not arg:
            self._reply(501, "5.5.4", "syntax: EHLO hostname")
            return
        self._helo, self._esmtp, self._txn = arg, True, None
        f = self.factory
        lines = [f"{f.hostname} greets {arg}", "PIPELINING"]
        lines.append(f"SIZE {f.max_message_size}" if f.max_message_size else "SIZE")
        lines += ["8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING"]
        if f.tls_options is not None and not self._tls:
            lines.append("STARTTLS")
        if self._plaintext_ok() and self._user is None:
            lines.append("AUTH PLAIN LOGIN")
        for text in lines[:-1]:
            self._line(b"250-" + text.encode("utf-8", "replace"))
        self._line(b"250 " + lines[-1].encode())

    def do_HELO(self, arg: str) -> None:
        if not arg:
            self._reply(501, "5.5.4", "syntax: HELO hostname")
            return
        self._helo, self._esmtp, self._txn = arg, False, None
        self._line(f"250 {self.factory.hostname}".encode())

    def do_RSET(self, arg: str) -> None:
        self._txn = None
        self._reply(250, "2.0.0", "OK")

    def do_NOOP(self, arg: str) -> None:
        self._reply(250, "2.0.0", "OK")

    def do_VRFY(self, arg: str) -> None:
        if not arg:
            self._reply(501, "5.5.4", "syntax: VRFY address")
            return
        # RFC 5321 3.5.3: no user list for address harvesters.
        self._reply(252, "2.5.0", "cannot VRFY user, but will accept a message and attempt delivery")

    def do_HELP(self, arg: str) -> None:
        self._line(b"214-2.0.0 commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY QUIT STARTTLS AUTH HELP")
        self._reply(214, "2.0.0", "see RFC 5321")

    def do_QUIT(self, arg: str) -> None:
        self._close(221, "2.0.0", f"{self.factory.hostname} closing connection")

    def do_STARTTLS(self, arg: str) -> None:
        if arg:
            self._reply(501, "5.5.4", "syntax: STARTTLS (no arguments)")
        elif self._tls:
            self._reply(503, "5.5.1", "TLS already active")
        elif self.factory.tls_options is None:
            self._reply(454, "4.7.0", "TLS not available")
        else:
            self._reply(220, "2.0.0", "ready to start TLS")
            self._flush()
            # RFC 3207 4.2: forget everything said in the clear.
            self.cut_after_this_line()
            self._inbuf = b""
            self._helo, self._esmtp, self._txn, self._user = None, False, None, None
            self.transport.startTLS(self.factory.tls_options)
            self._tls = True
            self._replies_out.tls_started()
            if self.transcript is not None:
                self.transcript.event("TLS started; the rest is encrypted")

    # -- AUTH (RFC 4954) ----------------------------------------------------

    def _plaintext_ok(self) -> bool:
        return plaintext_auth_allowed(self.factory.plaintext_auth, self._tls, self._peer or None)

    def do_AUTH(self, arg: str) -> None:
        mechanism, _, initial = arg.partition(" ")
        mech = mechanism.upper()
        if self._helo is None or not self._esmtp:
            self._reply(503, "5.5.1", "send EHLO first")
        elif self._user is not None:
            self._reply(503, "5.5.1", "already authenticated")
        elif self._txn is not None:
            self._reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
        elif mech not in ("PLAIN", "LOGIN"):
            self._reply(504, "5.5.4", "unrecognized authentication mechanism")
        elif not self._plaintext_ok():
            if self.factory.tls_options is not None and not self._tls:
                self._reply(538, "5.7.11", "encryption required for requested authentication mechanism")
            else:
                self._reply(530, "5.7.0", "authentication not available on this connection")
        elif mech == "PLAIN":
            if initial:
                self._auth_plain(initial.encode())
            else:
                self._challenge(b"", self._auth_plain)
        elif initial:
            self._auth_login_user(initial.encode())
        else:
            self._challenge(b"Username:", self._auth_login_user)

    def _challenge(self, text: bytes, step: Callable[[bytes], None]) -> None:
        self._line(b"334 " + base64.b64encode(text))
        self._sasl = step

    def _sasl_decode(self, line: bytes) -> bytes | None:
        line = line.strip()
        if line == b"*":
            self._reply(501, "5.0.0", "authentication cancelled")
            return None
        if line == b"=":
            return b""
        try:
            return base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            self._reply(501, "5.5.2", "invalid base64 in SASL response")
            return None

    def _auth_plain(self, line: bytes) -> None:
        decoded = self._sasl_decode(line)
        if decoded is None:
            return
        parts = decoded.split(b"\0")
        if len(parts) != 3 or parts[0] not in (b"", parts[1]):
            self._reply(501, "5.5.2", "malformed PLAIN response")
            return
        self._login(parts[1], parts[2])

    def _auth_login_user(self, line: bytes) -> None:
        user = self._sasl_decode(line)
        if user is not None:
            self._challenge(b"Password:", lambda l: self._auth_login_pass(user, l))

    def _auth_login_pass(self, user: bytes, line: bytes) -> None:
        password = self._sasl_decode(line)
        if password is not None:
            self._login(user, password)

    def _login(self, user: bytes, password: bytes) -> None:
        portal = self.factory.portal
        if portal is None:
            self._reply(454, "4.7.0", "authentication not configured")
            return
        d = portal.login(UsernamePassword(user, password), None, ISMTPSubmitter)
        d.addCallbacks(self._logged_in, self._login_failed)
        self._wait(d)

    def _logged_in(self, result: tuple[Any, Any, Callable[[], None]]) -> None:
        _interface, avatar, logout = result
        logout()  # the avatar holds no resources
        if self._mode is CLOSED:
            return
        self._user = avatar.username
        self.factory.stats.incr("logins_ok")
        self._reply(235, "2.7.0", "authentication successful")

    def _login_failed(self, failure: Failure) -> None:
        if not failure.check(cred_error.UnauthorizedLogin, cred_error.LoginFailed):
            self._internal_error(failure)
            return
        self.factory.stats.incr("logins_failed")
        self._failed_logins += 1
        if self._mode is CLOSED:
            return
        self._reply(535, "5.7.8", "authentication credentials invalid")
        if self._failed_logins >= MAX_FAILED_LOGINS and self._mode is not CLOSED:
            self._close(421, "4.7.0", "too many failed logins; closing connection")

    # -- the mail transaction -----------------------------------------------

    @property
    def _may_relay(self) -> bool:
        return self.factory.role == SUBMISSION and self._user is not None

    def do_MAIL(self, arg: str) -> None:
        f = self.factory
        if self._helo is None:
            self._reply(503, "5.5.1", "send HELO or EHLO first")
            return
        if self._txn is not None:
            self._reply(503, "5.5.1", "nested MAIL command")
            return
        if f.role == SUBMISSION and self._user is None:
            if self._plaintext_ok() or f.tls_options is None or self._tls:
                self._reply(530, "5.7.0", "authentication required")
            else:
                self._reply(530, "5.7.0", "must issue a STARTTLS command first")
            return
        try:
            mail = parse_mail(arg)
            size = self._mail_params(mail)
        except EnvelopeError as e:
            self._refuse(e)
            return
        sender = "" if mail.sender is None else str(mail.sender)
        self._txn = _Transaction(sender, mail, size)
        self._reply(250, "2.1.0", f"sender <{sender}> OK")

    def _mail_params(self, mail: MailCommand) -> int:
        """Check MAIL's parameters; return the declared SIZE (0 if none)."""
        params = mail.params
        if params and not self._esmtp:
            raise EnvelopeError(555, "5.5.4", "MAIL parameters need EHLO")
        size = 0
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > 15:
                    raise EnvelopeError(501, "5.5.4", "syntax: SIZE=<octets>")
                size = int(value)
                limit = self.factory.max_message_size
                if limit and size > limit:
                    raise EnvelopeError(552, "5.3.4", f"message size exceeds fixed maximum message size ({limit})")
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    raise EnvelopeError(555, "5.5.4", "BODY must be 7BIT or 8BITMIME")
            elif key == "SMTPUTF8":
                if value is not None:
                    raise EnvelopeError(501, "5.5.4", "SMTPUTF8 takes no value")
            elif key != "AUTH":  # RFC 4954 5: accepted, not trusted
                raise EnvelopeError(555, "5.5.4", f"unsupported MAIL parameter {key}")
        return size

    def do_RCPT(self, arg: str) -> None:
        txn = self._txn
        if txn is None:
            self._reply(503, "5.5.1", "need MAIL before RCPT")
            return
        if txn.chunked:
            self._reply(503, "5.5.1", "RCPT not allowed after BDAT")
            return
        if len(txn.recipients) >= self.factory.max_recipients:
            # RFC 5321 4.5.3.1.10: 452 makes the client send the rest later.
            self._reply(452, "4.5.3", "too many recipients")
            return
        try:
            rcpt = parse_rcpt(arg, txn.utf8)
            if rcpt.params:
                raise EnvelopeError(555, "5.5.4", f"unsupported RCPT parameter {next(iter(rcpt.params))}")
            recipient = self.factory.delivery.recipient(rcpt.recipient, self._may_relay, txn.declared_size)
        except EnvelopeError as e:
            if e.status == "5.7.1":
                self.factory.stats.incr("relay_denied")
            self._refuse(e)
            return
        txn.recipients.append(recipient)
        self._reply(250, "2.1.5", f"recipient <{recipient.address}> OK")

    def _ready_for_content(self, command: str) -> bool:
        txn = self._txn
        if txn is None:
            self._reply(503, "5.5.1", f"need MAIL before {command}")
        elif not txn.recipients:
            self._reply(554, "5.5.1", "no valid recipients")
        else:
            return True
        return False

    def do_DATA(self, arg: str) -> None:
        if arg:
            self._reply(501, "5.5.4", "syntax: DATA (no arguments)")
            return
        if not self._ready_for_content("DATA"):
            return
        assert self._txn is not None
        if self._txn.chunked:
            self._reply(503, "5.5.1", "DATA not allowed after BDAT")
            return
        self._line(b"354 end data with <CR><LF>.<CR><LF>")
        self._mode = DATA

    def _data_received(self, data: bytes) -> bytes:
        """Take DATA content from C{data}; return what follows its end."""
        txn = self._txn
        assert txn is not None
        probe = txn.tail + data
        at = probe.find(_END_OF_DATA)
        if at < 0:
            self._take(txn, data)
            txn.tail = probe[-4:]
            return b""
        # The terminator starts at probe[at]; the content ends with its CRLF.
        cut = at + 2 - len(txn.tail)  # index in data just after the content
        if cut > 0:
            self._take(txn, data[:cut])
        elif cut < 0 and not txn.discard:
            # Part of the terminator's leading CRLF came in an earlier packet.
            content = b"".join(txn.parts)
            txn.parts = [content[:cut]]
        rest = data[at + 5 - len(txn.tail) :]
        self._mode = LINE
        if self.transcript is not None:
            self.transcript.event(f"message content: {txn.size} octets, then the final '.'")
        self._end_of_data(txn)
        return rest

    def _take(self, txn: _Transaction, chunk: bytes) -> None:
        txn.size += len(chunk)
        limit = self.factory.max_message_size
        if limit and txn.size > limit:
            txn.discard, txn.parts = True, []
        elif not txn.discard:
            txn.parts.append(chunk)

    def _end_of_data(self, txn: _Transaction) -> None:
        self._txn = None
        if txn.discard:
            self._reply(552, "5.3.4", "message size exceeds fixed maximum message size")
            return
        raw = b"".join(txn.parts)
        txn.parts = []
        if _has_long_line(raw, self.factory.max_line - 2):
            self._reply(554, "5.6.0", f"message has a line longer than {self.factory.max_line} octets")
            return
        try:
            message = unstuff(raw)
        except ContentError as e:
            self._reply(554, "5.6.0", str(e))
            return
        self._accept(txn, message)

    def do_BDAT(self, arg: str) -> None:
        words = arg.split(" ")
        if not 1 <= len(words) <= 2 or not words[0].isdigit() or len(words[0]) > 15 or (
            len(words) == 2 and words[1].upper() != "LAST"
        ):
            self._reply(501, "5.5.4", "syntax: BDAT <octets> [LAST]")
            return
        self._bdat_left = int(words[0])
        self._bdat_last = len(words) == 2
        txn = self._txn
        if txn is not None:
            txn.chunked = True
        self._mode = BDAT
        if self._bdat_left == 0:
            self._bdat_chunk_done()

    def _bdat_received(self, data: bytes) -> bytes:
        """Take BDAT chunk octets from C{data}; return what follows the chunk."""
        take = data[: self._bdat_left] if len(data) > self._bdat_left else data
        self._bdat_left -= len(take)
        txn = self._txn
        if txn is not None and txn.recipients:
            self._take(txn, take)
        if self._bdat_left == 0:
            self._bdat_chunk_done()
        return data[len(take) :]

    def _bdat_chunk_done(self) -> None:
        # RFC 3030 2: the chunk is read whatever the reply is going to be.
        self._mode = LINE
        if self.transcript is not None:
            self.transcript.event("BDAT chunk content received")
        if not self._ready_for_content("BDAT"):
            self._txn = None
            return
        txn = self._txn
        assert txn is not None
        if txn.discard:
            self._txn = None
            self._reply(552, "5.3.4", "message size exceeds fixed maximum message size")
        elif self._bdat_last:
            self._txn = None
            message = b"".join(txn.parts)
            txn.parts = []
            self._accept(txn, message)
        else:
            self._reply(250, "2.0.0", f"{txn.size} octets received")

    # -- delivery -----------------------------------------------------------

    def _protocol_name(self, txn: _Transaction) -> str:
        name = "ESMTP" if self._esmtp else "SMTP"
        if txn.utf8:
            name = "UTF8SMTP"
        if self._tls:
            name += "S"
        if self._user is not None:
            name += "A"
        return name

    def _accept(self, txn: _Transaction, message: bytes) -> None:
        f = self.factory
        queue_id = new_message_id()

        def deliver() -> defer.Deferred[None]:
            trace = TraceInfo(self._helo or "", self._peer, self._protocol_name(txn), queue_id)
            head = received_header(trace, f.hostname, txn.recipients)
            if f.role == SUBMISSION:
                head += submission_headers(message, f.hostname)
            return f.delivery.deliver(txn.sender, txn.recipients, head + message)

        # Reached from the DATA and BDAT paths, outside _command's guard: a
        # bug raising here must become a 451, not an error out of dataReceived.
        d = defer.maybeDeferred(deliver)

        def delivered(_: object) -> None:
            f.stats.incr("messages")
            f.stats.incr("recipients", len(txn.recipients))
            if self._mode is not CLOSED:
                self._reply(250, "2.0.0", f"OK queued as {queue_id}")

        def failed(failure: Failure) -> None:
            failure.trap(EnvelopeError)
            if self._mode is not CLOSED:
                self._refuse(failure.value)

        d.addCallbacks(delivered, failed)
        self._wait(d)

    #: Command verb -> C{do_*} method, filled in below.
    _HANDLERS: ClassVar[dict[bytes, Callable[[SMTPServer, str], None]]] = {}


SMTPServer._HANDLERS = {
    name[3:].encode(): getattr(SMTPServer, name) for name in dir(SMTPServer) if name.startswith("do_")
}


class SMTPServerFactory(protocol.ServerFactory):
    """
    Builds L{SMTPServer} sessions for one listener.

    @param delivery: the L{Delivery} policy and back end
    @param role: L{MX} (mail for local domains from anyone) or
        L{SUBMISSION} (AUTH required; authenticated users may relay)
    @param portal: a cred portal serving L{ISMTPSubmitter} avatars, or None
    @param tls_options: server TLS options for STARTTLS, or None to not offer it
    @param implicit_tls: the listener is wrapped in TLS already (smtps)
    @param max_message_size: octets (advertised in SIZE); 0 for no limit
    @param max_line: longest line accepted, in octets with its CRLF
    @param plaintext_auth: C{"tls-or-loopback"}, C{"tls"} or C{"always"}
    @param trace: log annotated transcripts; C{trace_emit} receives each
        line instead of the log when given
    """

    protocol = SMTPServer
    noisy = False

    def __init__(
        self,
        delivery: Delivery,
        role: str = MX,
        portal: Any = None,
        stats: ServiceStats | None = None,
        tls_options: Any = None,
        implicit_tls: bool = False,
        hostname: str = "localhost",
        idle_timeout: int = 300,
        max_message_size: int = 35 << 20,
        max_recipients: int = 100,
        max_line: int = 1000,
        plaintext_auth: str = "tls-or-loopback",
        trace: bool = False,
        trace_emit: Callable[[str], None] | None = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        if role not in (MX, SUBMISSION):
            raise ValueError(f"role: {role!r}")
        if plaintext_auth not in PLAINTEXT_AUTH_POLICIES:
            raise ValueError(f"plaintext_auth: {plaintext_auth!r}")
        self.delivery = delivery
        self.role = role
        self.portal = portal
        self.stats = stats or ServiceStats("smtp")
        self.tls_options = tls_options
        self.implicit_tls = implicit_tls
        self.hostname = hostname
        self.idle_timeout = idle_timeout
        self.max_message_size = max_message_size or 0
        self.max_recipients = max_recipients
        self.max_line = max_line
        self.plaintext_auth = plaintext_auth
        self.trace = trace
        self.trace_emit = trace_emit
        self.reactor = reactor
