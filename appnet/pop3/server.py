"""
The POP3 server (RFC 1939, 2449, 2595, 3206, 5034): L{POP3ServerFactory}.

L{POP3Server} extends C{twisted.mail.pop3.POP3}: it keeps Twisted's command
dispatch (C{do_USER}, C{do_RETR}...), its command queue for pipelined clients,
its idle timer and its C{IMailbox} avatar interface reached through
twisted.cred, and replaces what Twisted gets wrong or lacks:

 - an explicit AUTHORIZATION/TRANSACTION state table with arity checks, so
   a wrong-state or malformed command gets C{-ERR} instead of an exception
   class name (or a dropped connection on a bad DELE argument);
 - line framing that accepts CRLF or bare LF, bounds every line and answers
   an overlong one with C{-ERR} while the session goes on;
 - message transfer with correct dot-stuffing (Twisted misses a dot on the
   first line of a message and at chunk boundaries) and CRLF normalisation
   (Twisted turns stored CRLF into CR CR LF); small messages in one write;
 - PASS, AUTH and QUIT queue pipelined commands until they complete;
 - STLS (RFC 2595) with the plaintext buffered behind it discarded (no
   command injection), AUTH PLAIN/LOGIN (RFC 5034), RESP-CODES and
   AUTH-RESP-CODE (RFC 2449, 3206), C{[IN-USE]} for a locked maildrop;
 - plaintext passwords only over TLS or from loopback (configurable);
 - failed logins are delayed by the checker, counted, and after three the
   session is closed; UPDATE failures are reported, not swallowed.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Callable

from twisted.cred import error as cred_error
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.mail import pop3 as _tpop3
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure

from appnet.accounts import PLAINTEXT_AUTH_POLICIES, plaintext_auth_allowed
from appnet.errors import MailboxLocked, NoSuchMessage
from appnet.lines import BoundedLines
from appnet.stats import ServiceStats
from appnet.transcript import Transcript

__all__ = ["POP3Server", "POP3ServerFactory", "encode_message", "MessageEncoder"]

_log = Logger()

AUTHORIZATION, TRANSACTION = "AUTHORIZATION", "TRANSACTION"

#: command -> (fewest args, most args or None for the rest of the line, states)
_COMMANDS: dict[bytes, tuple[int, int | None, tuple[str, ...]]] = {
    b"CAPA": (0, 0, (AUTHORIZATION, TRANSACTION)),
    b"QUIT": (0, 0, (AUTHORIZATION, TRANSACTION)),
    b"NOOP": (0, 0, (AUTHORIZATION, TRANSACTION)),
    b"USER": (1, None, (AUTHORIZATION,)),
    b"PASS": (0, None, (AUTHORIZATION,)),
    b"APOP": (2, 2, (AUTHORIZATION,)),
    b"AUTH": (0, 2, (AUTHORIZATION,)),
    b"STLS": (0, 0, (AUTHORIZATION,)),
    b"STAT": (0, 0, (TRANSACTION,)),
    b"LIST": (0, 1, (TRANSACTION,)),
    b"UIDL": (0, 1, (TRANSACTION,)),
    b"RETR": (1, 1, (TRANSACTION,)),
    b"TOP": (2, 2, (TRANSACTION,)),
    b"DELE": (1, 1, (TRANSACTION,)),
    b"RSET": (0, 0, (TRANSACTION,)),
}

#: Messages up to this size are read and sent in one write; larger ones
#: stream from disk through a producer.
FAST_SEND_LIMIT = 256 * 1024

MAX_FAILED_LOGINS = 3


def encode_message(data: bytes) -> bytes:
    """
    Turn a stored message into a POP3 multi-line response body: every line
    ending CRLF, lines starting with C{.} dot-stuffed, and the terminating
    C{.} line appended.
    """
    if b"\r" in data:  # the store keeps LF line ends: usually nothing to undo
        data = data.replace(b"\r\n", b"\n")
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\n.", b"\n..").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


class MessageEncoder:
    """
    L{encode_message} for a message fed in chunks: keeps the state that
    crosses chunk boundaries (start of line, a CR waiting for its LF).
    """

    def __init__(self) -> None:
        self._bol = True
        self._cr = False
        self._any = False

    def feed(self, chunk: bytes) -> bytes:
        """Encode the next chunk."""
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._cr = True
        chunk = chunk.replace(b"\r\n", b"\n")
        if not chunk:
            return b""
        self._any = True
        if self._bol and chunk.startswith(b"."):
            chunk = b"." + chunk
        chunk = chunk.replace(b"\n.", b"\n..")
        self._bol = chunk.endswith(b"\n")
        return chunk.replace(b"\n", b"\r\n")

    def finish(self) -> bytes:
        """The end of the response: the last CRLF if missing, and C{.}."""
        out = b""
        if self._cr:
            out, self._any, self._bol = b"\r", True, False
        if self._any and not self._bol:
            out += b"\r\n"
        return out + b".\r\n"


def _top(data: bytes, lines: int) -> bytes:
    """The header and the first C{lines} lines of the body (RFC 1939 TOP)."""
    text = data.replace(b"\r\n", b"\n")
    head, sep, body = text.partition(b"\n\n")
    if not sep:
        return text
    body_lines = body.split(b"\n")
    if body.endswith(b"\n"):
        body_lines.pop()
    return head + b"\n\n" + b"".join(line + b"\n" for line in body_lines[:lines])


_CLIENT_NOTES = {
    "CAPA": "ask which extensions the server supports",
    "USER": "name the maildrop (user) to open",
    "PASS": "give the password for that user",
    "APOP": "log in with a digest of the greeting timestamp",
    "AUTH": "log in with a SASL mechanism",
    "STLS": "switch this connection to TLS",
    "STAT": "ask for the number of messages and their total size",
    "LIST": "ask for message sizes",
    "UIDL": "ask for unique ids (to fetch only new mail)",
    "RETR": "retrieve a whole message",
    "TOP": "retrieve the header and first lines of a message",
    "DELE": "mark a message for deletion at QUIT",
    "RSET": "unmark every message marked for deletion",
    "NOOP": "do nothing (keep the session alive)",
    "QUIT": "end the session; deletions take effect now (UPDATE state)",
}


def annotate_client(line: str) -> str:
    """A short note of what a POP3 client line means."""
    word, _, rest = line.partition(" ")
    note = _CLIENT_NOTES.get(word.upper())
    if note is None:
        return "SASL response or unknown command"
    if word.upper() in ("RETR", "DELE", "LIST", "UIDL") and rest.isdigit():
        note = note.replace("a message", f"message {rest}").replace("sizes", f"size of message {rest}")
    return note


def annotate_server(line: str) -> str:
    """A short note of what a POP3 server line means."""
    if line.startswith("+OK"):
        return "positive reply"
    if line.startswith("-ERR"):
        if line[5:6] == "[":
            return f"negative reply, response code {line[5:].split(']')[0]}]"
        return "negative reply"
    if line.startswith("+ "):
        return "SASL challenge"
    if line == ".":
        return "end of multi-line reply"
    return "multi-line reply"


def redact(line: str) -> str:
    """Hide passwords: PASS arguments, AUTH initial responses, SASL lines."""
    word = line.split(" ", 1)[0].upper()
    if word == "PASS":
        return "PASS ****"
    if word == "AUTH" and line.count(" ") >= 2:
        return " ".join(line.split(" ")[:2]) + " ****"
    if word not in _CLIENT_NOTES:
        return "****"
    return line


class POP3Server(BoundedLines, _tpop3.POP3):
    """
    One POP3 session. Built by L{POP3ServerFactory}; see the module
    docstring for what it changes in C{twisted.mail.pop3.POP3}.
    """

    factory: POP3ServerFactory
    _sasl: Callable[[bytes], None] | None = None
    _failed_logins = 0
    _tls = False
    transcript: Transcript | None = None

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        self.timeOut = f.idle_timeout
        self.callLater = f.reactor.callLater
        self.portal = f.portal
        self._tls = f.implicit_tls
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, NotImplementedError, OSError):
            pass  # not TCP (tests, unix sockets)
        if f.trace:
            peer = self.transport.getPeer()
            self.transcript = Transcript(
                "pop3",
                f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}",
                annotate_client,
                annotate_server,
                redact,
                emit=f.trace_emit,
            )
        self.sendLine(b"+OK " + f.greeting)
        self.setTimeout(self.timeOut)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._sasl = None
        super().connectionLost(reason)

    def timeoutConnection(self) -> None:
        # RFC 1939 section 3: autologout without entering UPDATE.
        self.sendLine(b"-ERR [SYS/TEMP] autologout: idle too long")
        self.transport.loseConnection()

    def sendLine(self, line: bytes) -> None:
        if self.transcript is not None:
            self.transcript.server(line)
        self.transport.write(line + b"\r\n")

    def successResponse(self, message: Any = b"") -> None:
        if not isinstance(message, bytes):
            message = str(message).encode("utf-8")
        self.sendLine(b"+OK " + message if message else b"+OK")

    def failResponse(self, message: Any = b"") -> None:
        if not isinstance(message, bytes):
            message = str(message).encode("utf-8")
        self.sendLine(b"-ERR " + message if message else b"-ERR")

    # -- framing (appnet.lines.BoundedLines) -------------------------------

    def max_line_length(self) -> int:
        return self.factory.max_line

    def line_too_long(self) -> None:
        self.failResponse(b"line too long")

    def dataReceived(self, data: bytes) -> None:
        # The idle timer restarts once per packet, not once per pipelined line.
        self.resetTimeout()
        BoundedLines.dataReceived(self, data)

    def lineReceived(self, line: bytes) -> None:
        if self.transcript is not None:
            self.transcript.client(line)
        if self._sasl is not None:
            step, self._sasl = self._sasl, None
            step(line)
            return
        if self.blocked is not None:
            self.blocked.append((line, ()))
            return
        self._command(line)

    def _unblock(self, _: object) -> None:
        commands = self.blocked
        self.blocked = None
        while commands and self.blocked is None:
            line, _args = commands.pop(0)
            if self.transport.disconnecting:
                return
            self._command(line)
        if self.blocked is not None and commands:
            self.blocked.extend(commands)

    def processCommand(self, command: bytes, *args: bytes) -> Any:
        # Twisted's entry point, kept for code that calls it directly.
        return self._command(b" ".join((command,) + args))

    # -- dispatch -----------------------------------------------------------

    @property
    def session_state(self) -> str:
        """C{AUTHORIZATION} until login, then C{TRANSACTION}."""
        return TRANSACTION if self.mbox is not None else AUTHORIZATION

    def _command(self, line: bytes) -> None:
        word, _, rest = line.partition(b" ")
        command = word.upper()
        spec = _COMMANDS.get(command)
        if spec is None:
            if not line.strip():
                self.failResponse(b"empty command")
            else:
                self.failResponse(b"unknown command")
            return
        least, most, states = spec
        if self.session_state not in states:
            self.failResponse(
                b"command not valid in the %s state" % self.session_state.encode()
            )
            return
        if most is None:
            args: tuple[bytes, ...] = (rest,) if rest else ()
        else:
            args = tuple(rest.split()) if rest.strip() else ()
        if not least <= len(args) <= (most if most is not None else 1):
            self.failResponse(b"wrong number of arguments for " + command)
            return
        handler = getattr(self, "do_" + command.decode("ascii"))
        try:
            result = handler(*args)
        except Exception:
            self._internal_error(Failure())
            return
        if isinstance(result, defer.Deferred):
            result.addErrback(self._internal_error)

    def _internal_error(self, failure: Failure) -> None:
        self.factory.stats.incr("errors")
        _log.failure("POP3 command failed", failure)
        if not self.transport.disconnecting:
            self.failResponse(b"[SYS/TEMP] internal server error")

    def _wait_for(self, d: defer.Deferred) -> defer.Deferred:
        """Queue further commands until C{d} fires (pipelining)."""
        if d.called and not d.paused:
            return d
        self.blocked = []
        self.setTimeout(None)

        def done(result: object) -> object:
            self.setTimeout(self.timeOut)
            self._unblock(None)
            return result

        return d.addBoth(done)

    def _message_index(self, arg: bytes) -> int | None:
        """0-based index for a message-number argument, or None (-ERR sent)."""
        if not arg.isdigit() or len(arg) > 9 or int(arg) < 1:
            self.failResponse(b"invalid message number: " + arg[:20])
            return None
        i = int(arg) - 1
        try:
            deleted = self._is_deleted(i)
        except (ValueError, IndexError):
            self.failResponse(b"no such message: " + arg)
            return None
        if deleted:
            self.failResponse(b"message %s already deleted" % arg)
            return None
        return i

    def _is_deleted(self, i: int) -> bool:
        check = getattr(self.mbox, "is_deleted", None)
        if check is not None:
            return check(i)
        return self.mbox.listMessages(i) == 0

    # -- AUTHORIZATION ------------------------------------------------------

    def listCapabilities(self) -> list[bytes]:
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.session_state == AUTHORIZATION:
            if self._plaintext_ok():
                caps.append(b"USER")
                caps.append(b"SASL PLAIN LOGIN")
            if self.factory.tls_options is not None and not self._tls:
                caps.append(b"STLS")
        caps.append(b"EXPIRE NEVER")
        caps.append(b"IMPLEMENTATION appnet")
        return caps

    def do_CAPA(self) -> None:
        lines = [b"+OK capability list follows"] + self.listCapabilities() + [b"."]
        for line in lines:
            self.sendLine(line)

    def do_NOOP(self) -> None:
        self.successResponse()

    def _plaintext_ok(self) -> bool:
        host = getattr(self.transport.getPeer(), "host", None)
        return plaintext_auth_allowed(self.factory.plaintext_auth, self._tls, host)

    def _refuse_plaintext(self) -> bool:
        if self._plaintext_ok():
            return False
        self.failResponse(b"[AUTH] plaintext authentication requires TLS: send STLS first")
        return True

    def do_STLS(self) -> None:
        if self._tls:
            self.failResponse(b"TLS already active")
            return
        if self.factory.tls_options is None:
            self.failResponse(b"TLS not available")
            return
        self.successResponse(b"begin TLS negotiation")
        self.cut_after_this_line()
        self._userIs = None
        self.transport.startTLS(self.factory.tls_options)
        self._tls = True
        if self.transcript is not None:
            self.transcript.event("TLS started; the rest is encrypted")

    def do_USER(self, user: bytes) -> None:
        if self._refuse_plaintext():
            return
        self._userIs = user
        self.successResponse(b"send PASS")

    def do_PASS(self, password: bytes = b"") -> defer.Deferred | None:
        if self._userIs is None:
            self.failResponse(b"USER required before PASS")
            return None
        if self._refuse_plaintext():
            return None
        user, self._userIs = self._userIs, None
        return self._login(user, password)

    def do_APOP(self, user: bytes, digest: bytes) -> None:
        # Passwords are stored only as slow salted hashes; APOP needs the
        # cleartext secret on the server, so it cannot be offered.
        self.failResponse(b"[AUTH] APOP not supported: use USER/PASS or AUTH PLAIN over TLS")

    def do_AUTH(self, mechanism: bytes | None = None, initial: bytes | None = None) -> None:
        if mechanism is None:
            # RFC 1734 clients probe with a bare AUTH for the mechanism list.
            self.successResponse(b"supported mechanisms follow")
            if self._plaintext_ok():
                self.sendLine(b"PLAIN")
                self.sendLine(b"LOGIN")
            self.sendLine(b".")
            return
        mech = mechanism.upper()
        if mech not in (b"PLAIN", b"LOGIN"):
            self.failResponse(b"unsupported SASL mechanism")
            return
        if self._refuse_plaintext():
            return
        if mech == b"PLAIN":
            if initial is None:
                self._challenge(b"", self._auth_plain)
            else:
                self._auth_plain(b"" if initial == b"=" else initial)
        else:
            if initial is None:
                self._challenge(b"Username:", self._auth_login_user)
            else:
                self._auth_login_user(initial)

    def _challenge(self, text: bytes, step: Callable[[bytes], None]) -> None:
        self.sendLine(b"+ " + base64.b64encode(text))
        self._sasl = step

    def _sasl_decode(self, line: bytes) -> bytes | None:
        if line.strip() == b"*":
            self.failResponse(b"authentication cancelled")
            return None
        try:
            return base64.b64decode(line.strip(), validate=True)
        except (binascii.Error, ValueError):
            self.failResponse(b"[AUTH] invalid base64 in SASL response")
            return None

    def _auth_plain(self, line: bytes) -> None:
        decoded = self._sasl_decode(line)
        if decoded is None:
            return
        parts = decoded.split(b"\0")
        if len(parts) != 3 or parts[0] not in (b"", parts[1]):
            self.failResponse(b"[AUTH] malformed PLAIN response")
            return
        self._login(parts[1], parts[2])

    def _auth_login_user(self, line: bytes) -> None:
        user = self._sasl_decode(line)
        if user is None:
            return
        self._challenge(b"Password:", lambda l: self._auth_login_pass(user, l))

    def _auth_login_pass(self, user: bytes, line: bytes) -> None:
        password = self._sasl_decode(line)
        if password is not None:
            self._login(user, password)

    def _login(self, user: bytes, password: bytes) -> defer.Deferred:
        if self.portal is None:
            self.failResponse(b"[SYS/PERM] no authentication configured")
            return defer.succeed(None)
        d = self.portal.login(UsernamePassword(user, password), None, _tpop3.IMailbox)
        d.addCallbacks(self._logged_in, self._login_failed, callbackArgs=(user,))
        return self._wait_for(d)

    def _logged_in(self, result: tuple, user: bytes) -> None:
        interface, avatar, logout = result
        if self.transport.disconnecting or self.mbox is not None:
            logout()
            return
        self.mbox = avatar
        self._onLogout = logout
        self.factory.stats.incr("logins_ok")
        count = len([s for s in avatar.listMessages() if s])
        self.successResponse(b"maildrop has %d message%s" % (count, b"" if count == 1 else b"s"))

    def _login_failed(self, failure: Failure) -> None:
        if failure.check(MailboxLocked):
            self.failResponse(b"[IN-USE] maildrop already locked by another session")
            return
        if not failure.check(cred_error.UnauthorizedLogin, cred_error.LoginFailed):
            self._internal_error(failure)
            return
        self.factory.stats.incr("logins_failed")
        self._failed_logins += 1
        self.failResponse(b"[AUTH] authentication failed")
        if self._failed_logins >= MAX_FAILED_LOGINS:
            self.failResponse(b"[AUTH] too many failed logins; goodbye")
            self.transport.loseConnection()

    # -- TRANSACTION --------------------------------------------------------

    def do_STAT(self) -> None:
        sizes = [s for s in self.mbox.listMessages() if s]
        self.successResponse(b"%d %d" % (len(sizes), sum(sizes)))

    def do_LIST(self, arg: bytes | None = None) -> None:
        if arg is not None:
            i = self._message_index(arg)
            if i is not None:
                self.successResponse(b"%d %d" % (i + 1, self.mbox.listMessages(i)))
            return
        sizes = self.mbox.listMessages()
        count = sum(1 for s in sizes if s)
        out = [b"+OK %d messages (%d octets)\r\n" % (count, sum(sizes))]
        out += [b"%d %d\r\n" % (n, s) for n, s in enumerate(sizes, 1) if s]
        out.append(b".\r\n")
        self._write_lines(out)

    def do_UIDL(self, arg: bytes | None = None) -> None:
        if arg is not None:
            i = self._message_index(arg)
            if i is not None:
                self.successResponse(b"%d %s" % (i + 1, self.mbox.getUidl(i)))
            return
        sizes = self.mbox.listMessages()
        out = [b"+OK unique-id listing follows\r\n"]
        out += [
            b"%d %s\r\n" % (n, self.mbox.getUidl(n - 1))
            for n, s in enumerate(sizes, 1)
            if s
        ]
        out.append(b".\r\n")
        self._write_lines(out)

    def _write_lines(self, lines: list[bytes]) -> None:
        if self.transcript is not None:
            for line in lines:
                self.transcript.server(line)
        self.transport.writeSequence(lines)

    def do_RETR(self, arg: bytes) -> defer.Deferred | None:
        i = self._message_index(arg)
        if i is None:
            return None
        return self._send_message(i, None)

    def do_TOP(self, arg: bytes, lines: bytes) -> defer.Deferred | None:
        if not lines.isdigit() or len(lines) > 9:
            self.failResponse(b"invalid line count: " + lines[:20])
            return None
        i = self._message_index(arg)
        if i is None:
            return None
        return self._send_message(i, int(lines))

    def _send_message(self, i: int, top: int | None) -> defer.Deferred | None:
        size = self.mbox.listMessages(i)
        try:
            if top is not None or size <= FAST_SEND_LIMIT:
                read = getattr(self.mbox, "read_message", None)
                if read is not None:
                    data = read(i)
                else:
                    with self.mbox.getMessage(i) as f:
                        data = f.read()
                if top is not None:
                    data = _top(data, top)
                head = b"+OK %d octets\r\n" % size if top is None else b"+OK top of message follows\r\n"
                if self.transcript is not None:
                    self.transcript.server(head)
                    self.transcript.event(f"message {i + 1} content ({size} octets) and '.' sent")
                self.transport.writeSequence((head, encode_message(data)))
                self.factory.stats.incr("messages")
                return None
            fp = self.mbox.getMessage(i)
        except NoSuchMessage:
            self.failResponse(b"[SYS/TEMP] message %d vanished from the maildrop" % (i + 1))
            return None
        self.successResponse(b"%d octets" % size)
        if self.transcript is not None:
            self.transcript.event(f"streaming message {i + 1} ({size} octets)")
        encoder = MessageEncoder()
        d = FileSender().beginFileTransfer(fp, self.transport, encoder.feed)

        def sent(_: object) -> None:
            fp.close()
            self.transport.write(encoder.finish())
            self.factory.stats.incr("messages")

        def failed(failure: Failure) -> None:
            fp.close()
            _log.failure("POP3 message transfer failed", failure)
            self.transport.loseConnection()

        d.addCallbacks(sent, failed)
        return self._wait_for(d)

    def do_DELE(self, arg: bytes) -> None:
        i = self._message_index(arg)
        if i is not None:
            self.mbox.deleteMessage(i)
            self.successResponse(b"message %d marked for deletion" % (i + 1))

    def do_RSET(self) -> None:
        self.mbox.undeleteMessages()
        self._highest = 0
        count = len([s for s in self.mbox.listMessages() if s])
        self.successResponse(b"maildrop has %d messages" % count)

    def do_QUIT(self) -> defer.Deferred | None:
        if self.mbox is None:
            self.successResponse(b"%s POP3 server signing off" % self.factory.hostname.encode())
            self.transport.loseConnection()
            return None
        d = defer.maybeDeferred(self.mbox.sync)

        def release() -> None:
            # Free the maildrop before the reply, not at connectionLost: a
            # client that logs in again as soon as it reads +OK must not
            # find its own old session still holding the lock.
            logout, self._onLogout = self._onLogout, None
            if logout is not None:
                logout()

        def updated(_: object) -> None:
            release()
            self.successResponse(b"%s POP3 server signing off (maildrop updated)" % self.factory.hostname.encode())
            self.transport.loseConnection()

        def update_failed(failure: Failure) -> None:
            _log.failure("POP3 UPDATE failed", failure)
            self.factory.stats.incr("errors")
            release()
            self.failResponse(b"[SYS/TEMP] some deleted messages not removed")
            self.transport.loseConnection()

        return self._wait_for(d.addCallbacks(updated, update_failed))


class POP3ServerFactory(protocol.ServerFactory):
    """
    Builds L{POP3Server} sessions.

    @param portal: a twisted.cred portal whose realm serves
        C{twisted.mail.pop3.IMailbox} avatars (appnet's realm serves
        L{appnet.pop3.maildrop.Maildrop})
    @param stats: where counters go
    @param tls_options: server TLS options for STLS, or None to not offer it
    @param implicit_tls: the listener is wrapped in TLS already (pop3s)
    @param plaintext_auth: C{"tls-or-loopback"} (default), C{"tls"} or
        C{"always"}: where USER/PASS and AUTH PLAIN are accepted
    @param trace: log annotated transcripts; C{trace_emit} receives each
        line instead of the log when given
    """

    protocol = POP3Server
    noisy = False

    def __init__(
        self,
        portal: Any,
        stats: ServiceStats | None = None,
        tls_options: Any = None,
        implicit_tls: bool = False,
        hostname: str = "localhost",
        idle_timeout: int = 600,
        max_line: int = 8192,
        plaintext_auth: str = "tls-or-loopback",
        trace: bool = False,
        trace_emit: Callable[[str], None] | None = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        if plaintext_auth not in PLAINTEXT_AUTH_POLICIES:
            raise ValueError(f"plaintext_auth: {plaintext_auth!r}")
        self.portal = portal
        self.stats = stats or ServiceStats("pop3")
        self.tls_options = tls_options
        self.implicit_tls = implicit_tls
        self.hostname = hostname
        self.greeting = f"{hostname} POP3 server (appnet) ready".encode()
        self.idle_timeout = idle_timeout
        self.max_line = max_line
        self.plaintext_auth = plaintext_auth
        self.trace = trace
        self.trace_emit = trace_emit
        self.reactor = reactor
