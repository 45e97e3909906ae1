"""
The SMTP client: L{send_mail}, one message to one server, as a Deferred::

    result = await send_mail("mail.example.org", 587, "alice@example.org",
                             ["bob@example.org", "carol@example.net"], msg,
                             username="alice", password="secret")
    result.accepted    # {"bob@example.org": (250, "2.1.5 Ok"), ...}
    result.refused     # {"carol@example.net": (550, "5.1.1 no such user")}

and L{deliver_to_hosts}, which tries a list of hosts (the MX list) in turn.

Our own small protocol, not Twisted's C{ESMTPClient}: Twisted's sends one
command at a time (no PIPELINING) and never sends C{SIZE=},
C{BODY=8BITMIME} or C{SMTPUTF8} (see docs/smtp.md). Ours pipelines MAIL, every RCPT and DATA in one write when
the server offers PIPELINING (RFC 2920), upgrades with STARTTLS (RFC 3207)
and says EHLO again, or starts in TLS (port 465), authenticates with PLAIN
or LOGIN (RFC 4954) only over TLS or to a loopback peer, normalises line
ends to CRLF, dot-stuffs, and sends QUIT.

Every reply must arrive within C{timeout} seconds. Failures of the session
raise L{SMTPClientError}, whose C{permanent} flag tells a relay whether to
bounce (5xx) or retry (4xx, connection refused or lost, timeouts, a
STARTTLS that cannot happen). Refused recipients are not failures: they
are listed in L{SendResult.refused}, and when every recipient is refused no
message is sent at all.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer, endpoints, error, protocol, ssl
from twisted.python.failure import Failure

from appnet.errors import ProtocolError
from appnet.lines import BoundedLines
from appnet.mime import needs_smtputf8, to_bytes

__all__ = [
    "TLS_MODES",
    "Reply",
    "SMTPClientError",
    "SMTPClientProtocol",
    "SendResult",
    "data_payload",
    "deliver_to_hosts",
    "send_mail",
]

#: What C{tls=} accepts: C{"starttls"} (required), C{"implicit"} (TLS from
#: the first byte, port 465), C{"opportunistic"} (STARTTLS when offered,
#: certificate not checked, RFC 7435), C{"none"}.
TLS_MODES = ("starttls", "implicit", "opportunistic", "none")

#: RFC 5321 §4.5.3.1.5 sets 512 octets for a reply line; be lenient, but bounded.
MAX_REPLY_LINE = 4096
#: Bounds a multiline reply (an EHLO answer is a dozen lines).
MAX_REPLY_LINES = 200

_REPLY = re.compile(rb"([2-5][0-9][0-9])([ -]?)(.*)\Z", re.DOTALL)
_LINE_END = re.compile(rb"\r\n|\r|\n")
_BAD_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")


class SMTPClientError(ProtocolError):
    """
    The session failed.

    @ivar code: the server's reply code, or None (connection refused or
        lost, timeout, garbage, a policy of ours)
    @ivar text: the server's reply text, or what went wrong
    @ivar permanent: True if trying again later cannot help (a 5xx reply)
    @ivar stage: C{"connect"}, C{"greeting"}, C{"ehlo"}, C{"starttls"},
        C{"auth"}, C{"mail"}, C{"rcpt"}, C{"data"} or C{"message"}
    @ivar result: the recipients answered so far, once RCPT was answered
    """

    def __init__(self, code: int | None, text: str, permanent: bool, stage: str = "",
                 result: SendResult | None = None) -> None:
        super().__init__(f"{code} {text}" if code is not None else text)
        self.code = code
        self.text = text
        self.permanent = permanent
        self.stage = stage
        self.result = result


@dataclass(frozen=True)
class Reply:
    """One server reply: its code and its lines of text (without the code)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The lines joined with newlines."""
        return "\n".join(self.lines)

    def error(self, stage: str) -> SMTPClientError:
        """This reply as the failure of C{stage}."""
        return SMTPClientError(self.code, self.text, self.code >= 500, stage)


@dataclass
class SendResult:
    """
    What the server said.

    @ivar accepted: recipient -> C{(code, text)} of its RCPT reply, for each
        recipient the message was delivered to
    @ivar refused: recipient -> C{(code, text)} for each refused one
        (4xx: try again later; 5xx: give up)
    @ivar code: the reply code to the end of the message (C{250}), None
        when every recipient was refused and nothing was sent
    @ivar text: that reply's text (often carries a queue id)
    """

    accepted: dict[str, tuple[int, str]] = field(default_factory=dict)
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    code: int | None = None
    text: str = ""


def data_payload(message: bytes) -> tuple[bytes, int]:
    """
    The message as sent after DATA: every line end CRLF (bare CR and bare
    LF too), a final CRLF, dot-stuffed (RFC 5321 §4.5.2), ending with
    C{.CRLF}; and its size for C{SIZE=} (before stuffing, RFC 1870).
    """
    text = _LINE_END.sub(b"\r\n", message)
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    size = len(text)
    if text.startswith(b"."):
        text = b"." + text
    return text.replace(b"\r\n.", b"\r\n..") + b".\r\n", size


class SMTPClientProtocol(BoundedLines, protocol.Protocol):
    """
    The wire side of a client session: commands out, replies in order.

    L{send} writes one or more commands in one write (pipelining) and
    returns a Deferred per command, firing with its L{Reply}; replies are
    matched to commands strictly in order. A garbage or overlong reply, an
    unexpected reply, a lost connection or C{timeout} seconds without the
    expected reply fail every waiting Deferred with L{SMTPClientError}
    (transient) and close the connection.

    @ivar greeting: a Deferred firing with the server's greeting
    @ivar tls: True once the connection is encrypted
    """

    def __init__(self, clock: Any, timeout: float, tls: bool = False) -> None:
        self.clock = clock
        self.timeout = timeout
        self.tls = tls
        self._waiting: deque[defer.Deferred[Reply]] = deque()
        self._lines: list[str] = []
        self._code: bytes | None = None
        self._timer: Any = None
        self._failure: SMTPClientError | None = None
        self.greeting = self._expect()

    def max_line_length(self) -> int:
        return MAX_REPLY_LINE

    def line_too_long(self) -> None:
        self._fail(SMTPClientError(None, f"reply line longer than {MAX_REPLY_LINE} octets", False))

    def connectionMade(self) -> None:
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, NotImplementedError, OSError):
            pass

    def lineReceived(self, line: bytes) -> None:
        if self._failure is not None:
            return
        m = _REPLY.match(line)
        if m is None or (self._code is not None and m.group(1) != self._code):
            self._fail(SMTPClientError(None, f"garbage in reply: {line[:100]!r}", False))
            return
        self._lines.append(m.group(3).decode("utf-8", "replace"))
        if m.group(2) == b"-":
            self._code = m.group(1)
            if len(self._lines) > MAX_REPLY_LINES:
                self._fail(SMTPClientError(None, f"reply longer than {MAX_REPLY_LINES} lines", False))
            return
        reply = Reply(int(m.group(1)), tuple(self._lines))
        self._lines, self._code = [], None
        if not self._waiting:
            self._fail(SMTPClientError(None, f"unexpected reply: {reply.code} {reply.text}", False))
            return
        d = self._waiting.popleft()
        self._arm()
        if not d.called:
            d.callback(reply)

    def send(self, *commands: bytes) -> list[defer.Deferred[Reply]]:
        """Write C{commands} (without line ends) at once; a Deferred for each reply."""
        if self._failure is not None:
            return [defer.fail(self._failure) for _ in commands]
        self.transport.write(b"".join(c + b"\r\n" for c in commands))
        return [self._expect() for _ in commands]

    def send_message(self, payload: bytes) -> defer.Deferred[Reply]:
        """Write a message already made by L{data_payload}; its reply."""
        if self._failure is not None:
            return defer.fail(self._failure)
        self.transport.write(payload)
        return self._expect()

    def start_tls(self, options: Any) -> None:
        """Switch to TLS now, ignoring whatever followed the 220 in cleartext."""
        self.cut_after_this_line()
        self.transport.startTLS(options)
        self.tls = True

    @property
    def talking(self) -> bool:
        """True while the connection is up and the dialogue in step."""
        return self._failure is None and self.transport is not None and not self.transport.disconnecting

    def close(self) -> None:
        """Close the connection (waiting Deferreds fail)."""
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._fail(SMTPClientError(None, f"connection lost: {reason.getErrorMessage()}", False),
                   disconnect=False)

    def _expect(self) -> defer.Deferred[Reply]:
        d: defer.Deferred[Reply] = defer.Deferred(lambda _: self._abort())
        self._waiting.append(d)
        if self._timer is None:
            self._arm()
        return d

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._waiting:
            self._timer = self.clock.callLater(self.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(SMTPClientError(None, f"no reply within {self.timeout:g} s", False))

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def _fail(self, reason: SMTPClientError, disconnect: bool = True) -> None:
        if self._failure is None:
            self._failure = reason
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            if not d.called:
                d.errback(self._failure)
        if disconnect:
            self._abort()


def _tls_options(host: str, verify: bool, trust_root: Any) -> Any:
    if not verify:
        return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
    if isinstance(trust_root, str):
        with open(trust_root, "rb") as f:
            pem = f.read()
        marker = b"-----END CERTIFICATE-----"
        trust_root = ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(part + marker) for part in pem.split(marker) if b"BEGIN" in part])
    return ssl.optionsForClientTLS(host, trustRoot=trust_root)


def _is_loopback(address: Any) -> bool:
    try:
        return ipaddress.ip_address(getattr(address, "host", "")).is_loopback
    except ValueError:
        return False


def _check_address(address: str) -> bytes:
    if _BAD_ADDRESS.search(address):
        raise ValueError(f"bad address {address!r}: no spaces, controls or angle brackets")
    return address.encode("utf-8")


def _extensions(reply: Reply) -> dict[str, list[str]]:
    """EHLO keywords (upper case) -> parameters; C{AUTH=LOGIN} read as C{AUTH LOGIN}."""
    found: dict[str, list[str]] = {}
    for line in reply.lines[1:]:
        words = line.replace("=", " ", 1).split() if line.upper().startswith("AUTH=") else line.split()
        if words:
            found.setdefault(words[0].upper(), []).extend(words[1:])
    return found


def _helo_name(proto: SMTPClientProtocol) -> str:
    """An address literal for our end (RFC 5321 §4.1.4): no DNS lookup needed."""
    host = getattr(proto.transport.getHost(), "host", "127.0.0.1")
    return f"[IPv6:{host}]" if ":" in host else f"[{host}]"


async def _reply(d: defer.Deferred[Reply], stage: str, ok: Iterable[int]) -> Reply:
    reply = await d
    if reply.code not in ok:
        raise reply.error(stage)
    return reply


async def _pipelined(ds: list[defer.Deferred[Reply]]) -> list[Reply]:
    """
    The replies to MAIL, the RCPTs and DATA sent at once. When the session
    breaks midway, a refused MAIL (a 421 before closing) is the better error.
    """
    results = await defer.DeferredList(ds, consumeErrors=True)
    failures = [value for ok, value in results if not ok]
    if failures:
        mail_ok, mail = results[0]
        if mail_ok and mail.code != 250:
            raise mail.error("mail")
        failures[0].raiseException()
    return [value for _, value in results]


class _Session:
    """One mail transaction over a connected L{SMTPClientProtocol}."""

    def __init__(self, proto: SMTPClientProtocol, host: str, opts: dict[str, Any]) -> None:
        self.proto = proto
        self.host = host
        self.opts = opts
        self.extensions: dict[str, list[str]] = {}

    async def hello(self) -> None:
        proto, helo = self.proto, self.opts["helo"] or _helo_name(self.proto)
        (ehlo,) = proto.send(b"EHLO " + helo.encode("idna"))
        reply = await ehlo
        if reply.code >= 500:  # an old server: plain HELO, no extensions
            (d,) = proto.send(b"HELO " + helo.encode("idna"))
            await _reply(d, "ehlo", (250,))
            self.extensions = {}
        elif reply.code != 250:
            raise reply.error("ehlo")
        else:
            self.extensions = _extensions(reply)

    async def starttls(self) -> None:
        tls = self.opts["tls"]
        if tls in ("none", "implicit"):
            return
        if "STARTTLS" not in self.extensions:
            if tls == "starttls":
                raise SMTPClientError(None, "server does not offer STARTTLS", False, "starttls")
            return
        (d,) = self.proto.send(b"STARTTLS")
        reply = await d
        if reply.code != 220:
            if tls == "starttls":
                raise reply.error("starttls")
            return
        self.proto.start_tls(self.opts["tls_options"])
        await self.hello()

    async def authenticate(self) -> None:
        username, password = self.opts["username"], self.opts["password"]
        if username is None:
            return
        if not (self.proto.tls or self.opts["allow_plaintext_auth"]
                or _is_loopback(self.proto.transport.getPeer())):
            raise SMTPClientError(None, "refusing to send a password without TLS", True, "auth")
        mechanisms = {m.upper() for m in self.extensions.get("AUTH", [])}
        user, secret = username.encode("utf-8"), (password or "").encode("utf-8")
        if "PLAIN" in mechanisms:
            token = base64.b64encode(b"\0" + user + b"\0" + secret)
            (d,) = self.proto.send(b"AUTH PLAIN " + token)
            reply = await d
            if reply.code == 334:  # it wanted the credentials on their own line
                (d,) = self.proto.send(token)
                reply = await d
        elif "LOGIN" in mechanisms:
            (d,) = self.proto.send(b"AUTH LOGIN")
            reply = await _reply(d, "auth", (334,))
            for answer in (user, secret):
                (d,) = self.proto.send(base64.b64encode(answer))
                reply = await d
                if reply.code != 334:
                    break
        else:
            raise SMTPClientError(None, "server offers neither AUTH PLAIN nor AUTH LOGIN", True, "auth")
        if reply.code == 334:  # a further challenge we cannot answer: cancel
            reply = await self.proto.send(b"*")[0]
        if reply.code != 235:
            raise reply.error("auth")

    def mail_command(self, sender: bytes, size: int, eight_bit: bool, utf8: bool) -> bytes:
        command = b"MAIL FROM:<" + sender + b">"
        if "SIZE" in self.extensions:
            limit = self.extensions["SIZE"]
            if limit and limit[0].isdigit() and 0 < int(limit[0]) < size:
                raise SMTPClientError(
                    552, f"message of {size} octets exceeds the server's limit of {limit[0]}",
                    True, "mail")
            command += b" SIZE=%d" % size
        if eight_bit and "8BITMIME" in self.extensions:
            command += b" BODY=8BITMIME"
        if utf8:
            if "SMTPUTF8" not in self.extensions:
                raise SMTPClientError(
                    None, "message needs SMTPUTF8 (non-ASCII addresses) but the server lacks it",
                    True, "mail")
            command += b" SMTPUTF8"
        return command

    async def transaction(self, sender: str, recipients: Sequence[str], data: bytes,
                          utf8: bool) -> SendResult:
        payload, size = data_payload(data)
        mail = self.mail_command(_check_address(sender), size, not data.isascii(), utf8)
        rcpts = [b"RCPT TO:<" + _check_address(r) + b">" for r in recipients]
        proto = self.proto
        data_reply: Reply | None = None
        if "PIPELINING" in self.extensions:
            mail_reply, *rcpt_replies, data_reply = await _pipelined(proto.send(mail, *rcpts, b"DATA"))
            if data_reply.code == 354 and not (
                    mail_reply.code == 250 and any(r.code in (250, 251) for r in rcpt_replies)):
                await proto.send_message(b".\r\n")  # RFC 2920 §3.1: an empty message, refused
            if mail_reply.code != 250:
                raise mail_reply.error("mail")
        else:
            await _reply(proto.send(mail)[0], "mail", (250,))
            rcpt_replies = [await proto.send(r)[0] for r in rcpts]
        result = SendResult()
        for recipient, reply in zip(recipients, rcpt_replies):
            bucket = result.accepted if reply.code in (250, 251) else result.refused
            bucket[recipient] = (reply.code, reply.text)
        if not result.accepted:
            return result
        try:
            if data_reply is None:
                data_reply = await proto.send(b"DATA")[0]
            if data_reply.code != 354:
                raise data_reply.error("data")
            final = await _reply(proto.send_message(payload), "message", (250,))
        except SMTPClientError as e:
            e.result = result
            raise
        result.code, result.text = final.code, final.text
        return result

    async def quit(self) -> None:
        """Say QUIT and wait for the answer; a failure here changes nothing."""
        (d,) = self.proto.send(b"QUIT")
        try:
            await d
        except SMTPClientError:
            pass
        self.proto.close()


async def _send(endpoint: Any, factory: protocol.Factory, host: str, sender: str,
                recipients: Sequence[str], message: bytes | EmailMessage,
                opts: dict[str, Any]) -> SendResult:
    utf8 = needs_smtputf8(sender, recipients, message)
    if isinstance(message, EmailMessage):
        if "Bcc" in message:  # blind copies stay blind (as smtplib.send_message does)
            message = copy.deepcopy(message)
            del message["Bcc"]
        data = to_bytes(message, smtputf8=utf8)
    else:
        data = bytes(message)
    try:
        proto: SMTPClientProtocol = await endpoint.connect(factory)
    except (error.ConnectError, error.DNSLookupError, defer.TimeoutError, OSError) as e:
        raise SMTPClientError(None, f"cannot connect to {host}: {e}", False, "connect") from None
    session = _Session(proto, host, opts)
    stage = "greeting"
    try:
        await _reply(proto.greeting, stage, (220,))
        for stage, step in (("ehlo", session.hello), ("starttls", session.starttls),
                            ("auth", session.authenticate)):
            await step()
        stage = "mail"
        result = await session.transaction(sender, recipients, data, utf8)
    except SMTPClientError as e:
        e.stage = e.stage or stage  # a lost connection or a timeout: where it happened
        if proto.talking:  # the server is still there: say goodbye
            proto.send(b"QUIT")[0].addErrback(lambda _: None)
        proto.close()
        raise
    except BaseException:
        proto.close()
        raise
    await session.quit()
    return result


def send_mail(
    host: str,
    port: int,
    sender: str,
    recipients: Sequence[str],
    message: bytes | EmailMessage,
    *,
    tls: str = "starttls",
    verify: bool = True,
    trust_root: Any = None,
    username: str | None = None,
    password: str | None = None,
    allow_plaintext_auth: bool = False,
    helo: str | None = None,
    timeout: float = 60,
    reactor: Any = None,
) -> defer.Deferred[SendResult]:
    """
    Send one message to one SMTP server.

    @param sender: the reverse-path (MAIL FROM); C{""} for a bounce
    @param recipients: the forward-paths (RCPT TO), one transaction for all
    @param message: bytes (any line ends) or an C{EmailMessage}, serialized
        with L{appnet.mime.to_bytes} (raw UTF-8 headers when SMTPUTF8 is
        needed) without its C{Bcc} field
    @param tls: one of L{TLS_MODES}
    @param verify: check the server's certificate (for C{"starttls"} and
        C{"implicit"}) against C{trust_root}, or the system's CAs
    @param trust_root: a PEM file name (one or more certificates), an
        C{ssl.Certificate}, or any Twisted C{IOpenSSLTrustRoot}
    @param username: log in with AUTH PLAIN (or LOGIN) when given; refused
        without TLS unless the server is on loopback or
        C{allow_plaintext_auth}
    @param helo: our name for EHLO; default our address as a literal
    @param timeout: seconds to connect, and to wait for each reply
    @return: a cancellable Deferred firing with a L{SendResult}
    @raise SMTPClientError: (through the Deferred) the session failed
    @raise ValueError: a bad C{tls} mode, or an address holding spaces,
        controls or angle brackets
    @raise OSError: the C{trust_root} file cannot be read
    """
    if tls not in TLS_MODES:
        raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, not {tls!r}")
    for address in (sender, *recipients):
        _check_address(address)
    if helo is not None:
        helo.encode("idna")  # a bad name fails the call (UnicodeError), not the session
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    # Built now, so a bad trust_root file fails the call, not the session.
    tls_options = None if tls == "none" else _tls_options(
        host, verify and tls != "opportunistic", trust_root)
    endpoint: Any = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls == "implicit":
        endpoint = endpoints.wrapClientTLS(tls_options, endpoint)
    factory = protocol.Factory.forProtocol(
        lambda: SMTPClientProtocol(reactor, timeout, tls=tls == "implicit"))  # type: ignore[arg-type]
    opts = {"tls": tls, "tls_options": tls_options, "username": username, "password": password,
            "allow_plaintext_auth": allow_plaintext_auth, "helo": helo}
    return defer.Deferred.fromCoroutine(
        _send(endpoint, factory, host, sender, recipients, message, opts))


def deliver_to_hosts(
    hosts: Sequence[tuple[str, int]],
    sender: str,
    recipients: Sequence[str],
    message: bytes | EmailMessage,
    **kw: Any,
) -> defer.Deferred[SendResult]:
    """
    Try C{hosts} in order (an MX list, best first) with L{send_mail} and
    C{**kw}: move to the next host when a connection cannot be made or the
    greeting is not 220 (RFC 5321 §5.1); any later failure, or success, ends
    the attempt.

    @return: a Deferred firing with the first L{SendResult}; when every host
        failed, it fails with the last transient L{SMTPClientError} (a retry
        may help), or the last one if all were permanent
    """
    if not hosts:
        raise ValueError("no hosts to try")

    async def run() -> SendResult:
        transient: SMTPClientError | None = None
        last: SMTPClientError | None = None
        for host, port in hosts:
            try:
                return await send_mail(host, port, sender, recipients, message, **kw)
            except SMTPClientError as e:
                if e.stage not in ("connect", "greeting"):
                    raise
                last = e
                if not e.permanent:
                    transient = e
        raise transient or last  # type: ignore[misc]

    return defer.Deferred.fromCoroutine(run())
