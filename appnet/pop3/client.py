"""
The POP3 client: L{fetch_mail}, a Deferred-returning API on top of
C{twisted.mail.pop3.AdvancedPOP3Client}.

    d = fetch_mail("pop.example.org", 995, "alice", "secret", tls="implicit",
                   delete=True, known_uids=seen)
    d.addCallback(lambda result: [m.message for m in result.messages])

TLS is C{"starttls"} (STLS, the default), C{"implicit"} (pop3s) or
C{"none"} (only for loopback and tests). Certificates are verified against
the system trust store unless C{cafile} names a PEM bundle (for a
self-signed server) or C{verify=False}.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Callable, Iterable

from twisted.internet import defer, endpoints, protocol, ssl
from twisted.mail.pop3 import AdvancedPOP3Client
from twisted.mail.pop3 import ServerErrorResponse

from appnet.errors import ProtocolError

__all__ = ["fetch_mail", "FetchedMessage", "FetchResult", "POP3ClientError", "client_tls_options"]


class POP3ClientError(ProtocolError):
    """The server refused something; C{str()} carries its C{-ERR} text."""


@dataclass(frozen=True)
class FetchedMessage:
    """
    One message retrieved.

    @ivar number: its message number in the session
    @ivar uid: its UIDL unique-id (str)
    @ivar size: its size as LIST reported it
    @ivar data: the message bytes, CRLF line ends, dot-stuffing undone
    """

    number: int
    uid: str
    size: int
    data: bytes

    @property
    def message(self) -> EmailMessage:
        """The message parsed with Python's C{email} package."""
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class FetchResult:
    """
    What L{fetch_mail} did.

    @ivar messages: the messages retrieved (new ones only, with C{known_uids})
    @ivar deleted: UIDs deleted on the server (committed by QUIT)
    @ivar total: messages in the maildrop
    """

    messages: list[FetchedMessage] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    total: int = 0


def client_tls_options(hostname: str, cafile: str | None = None, verify: bool = True) -> Any:
    """
    Client TLS options: system trust, a PEM bundle, or (C{verify=False}) none.
    """
    if not verify:
        return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
    if cafile is not None:
        with open(cafile, "rb") as f:
            authority = ssl.Certificate.loadPEM(f.read())
        return ssl.optionsForClientTLS(hostname, trustRoot=authority)
    return ssl.optionsForClientTLS(hostname)


class _Client(AdvancedPOP3Client):
    timeout = 60

    def __init__(self) -> None:
        super().__init__()
        self.greeted: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, NotImplementedError, OSError):
            pass
        super().connectionMade()

    def serverGreeting(self, greeting: bytes) -> None:
        self.greeted.callback(greeting)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        if not self.greeted.called:
            self.greeted.errback(reason)


async def _fetch(
    proto: _Client,
    hostname: str,
    username: str,
    password: str,
    tls: str,
    tls_options: Any,
    delete: bool,
    known: set[str],
    progress: Callable[[int, int], None] | None,
) -> FetchResult:
    await proto.greeted
    if tls == "starttls":
        await proto.startTLS(tls_options)
    try:
        await proto.user(username.encode("utf-8"))
        await proto.password(password.encode("utf-8"))
    except ServerErrorResponse as e:
        raise POP3ClientError(_err(e)) from None
    sizes = await proto.listSize()
    uids = [u.decode("ascii", "replace") for u in await proto.listUID()]
    result = FetchResult(total=len(sizes))
    wanted = [i for i, uid in enumerate(uids) if uid not in known]
    for n, i in enumerate(wanted):
        lines = await proto.retrieve(i)
        data = b"".join(line + b"\r\n" for line in lines)
        result.messages.append(FetchedMessage(i + 1, uids[i], sizes[i], data))
        if progress is not None:
            progress(n + 1, len(wanted))
        if delete:
            await proto.delete(i)
            result.deleted.append(uids[i])
    await proto.quit()
    return result


def _err(e: Exception) -> str:
    arg = e.args[0] if e.args else b""
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def fetch_mail(
    host: str,
    port: int,
    username: str,
    password: str,
    *,
    tls: str = "starttls",
    cafile: str | None = None,
    verify: bool = True,
    delete: bool = False,
    known_uids: Iterable[str] = (),
    timeout: float = 30,
    progress: Callable[[int, int], None] | None = None,
    reactor: Any = None,
) -> defer.Deferred[FetchResult]:
    """
    Log in to a POP3 server and retrieve every message (or only those whose
    UIDL is not in C{known_uids}), optionally deleting them.

    @param tls: C{"starttls"}, C{"implicit"} or C{"none"}
    @param progress: called with C{(done, total)} after each message
    @return: a cancellable Deferred firing with a L{FetchResult}; fails with
        L{POP3ClientError} when the server refuses the login or a command
    """
    if tls not in ("starttls", "implicit", "none"):
        raise ValueError(f"tls must be starttls, implicit or none, not {tls!r}")
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    tls_options = None if tls == "none" else client_tls_options(host, cafile, verify)
    endpoint: Any = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls == "implicit":
        endpoint = endpoints.wrapClientTLS(tls_options, endpoint)
    factory = protocol.Factory.forProtocol(_Client)
    factory.buildProtocol = lambda addr: _built(_Client(), factory, timeout)  # type: ignore[method-assign]

    async def run() -> FetchResult:
        proto = await endpoint.connect(factory)
        proto.allowInsecureLogin = True
        try:
            return await _fetch(
                proto, host, username, password, tls, tls_options, delete, set(known_uids), progress
            )
        except ServerErrorResponse as e:
            raise POP3ClientError(_err(e)) from None
        finally:
            if proto.transport is not None and proto.transport.connected:
                proto.transport.loseConnection()

    return defer.Deferred.fromCoroutine(run())


def _built(proto: _Client, factory: Any, timeout: float) -> _Client:
    proto.factory = factory
    proto.timeout = timeout  # every reply must come within this (TimeoutMixin)
    return proto
