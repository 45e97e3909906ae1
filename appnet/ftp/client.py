"""
The FTP client: L{connect} gives an L{FTPSession} with a Deferred-returning
API on top of C{twisted.protocols.ftp.FTPClient}::

    session = await connect("ftp.example.org", 21, "alice", "secret", tls="explicit")
    for entry in await session.list("/"):
        print(entry.name, entry.size, entry.kind)
    await session.download("/big.iso", "big.iso", resume=True,
                           progress=lambda done, total: ...)
    await session.upload("notes.txt", "/notes.txt")
    await session.quit()

TLS is C{"explicit"} (AUTH TLS, RFC 4217, the default), C{"implicit"}
(ftps, port 990) or C{"none"}. With TLS every data connection is protected
(PROT P) and resumes the control connection's TLS session, which servers
such as vsftpd (C{require_ssl_reuse}) and appnet
(C{require_tls_session_reuse}) demand and Python's ftplib cannot do.
Certificates are checked against the system trust store, or C{cafile}.

What Twisted's FTPClient lacks and this adds: TLS on control and data
connections with session reuse, UTF-8 names, MLSD parsed into
L{RemoteEntry}, SIZE, resume both ways, progress callbacks, TCP_NODELAY.
"""

from __future__ import annotations

import calendar
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import defer, endpoints, interfaces, protocol, ssl
# ClientTLSOptions is public API but not re-exported by twisted.internet.ssl.
from twisted.internet._sslverify import ClientTLSOptions
from twisted.protocols import ftp as _tftp
from twisted.protocols.basic import FileSender
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from appnet.errors import ProtocolError

__all__ = ["connect", "FTPSession", "RemoteEntry", "FTPClientError", "parse_mlsx"]

Progress = Callable[[int, "int | None"], None]


class FTPClientError(ProtocolError):
    """The server refused something; C{code} is its reply code (C{550}...)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class RemoteEntry:
    """
    One entry of an MLSD listing (RFC 3659).

    @ivar facts: every fact the server sent, lower-case names
    """

    name: str
    kind: str
    size: int | None
    modified: float | None
    perm: str
    facts: dict[str, str]


def parse_mlsx(line: str) -> RemoteEntry:
    """Parse one MLSD/MLST line, C{type=file;size=3;... name}."""
    facts_text, _, name = line.partition(" ")
    facts: dict[str, str] = {}
    for fact in facts_text.split(";"):
        key, sep, value = fact.partition("=")
        if sep:
            facts[key.lower()] = value
    modified = None
    if "modify" in facts:
        try:
            modified = float(calendar.timegm(time.strptime(facts["modify"][:14], "%Y%m%d%H%M%S")))
        except ValueError:
            modified = None
    size = facts.get("size")
    return RemoteEntry(
        name=name,
        kind=facts.get("type", "").lower(),
        size=int(size) if size and size.isdigit() else None,
        modified=modified,
        perm=facts.get("perm", ""),
        facts=facts,
    )


class _SessionCachingOptions(ssl.CertificateOptions):
    """
    Client options whose context keeps sessions. Twisted turns the session
    cache off; OpenSSL then drops the TLS 1.3 session ticket, and no data
    connection could resume the control connection's session.
    """

    def _makeContext(self) -> Any:
        from OpenSSL import SSL

        context = super()._makeContext()
        context.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
        return context


#: TLS 1.2 only, as appnet's server: in TLS 1.3 the session ticket comes
#: after the handshake, and resuming it on the data connection failed here
#: against vsftpd (522) although the ticket had been read; TLS 1.2 session
#: IDs are settled inside the handshake (see appnet.ftp.server.session_caching).
_FTPS_VERSIONS = {
    "raiseMinimumTo": ssl.TLSVersion.TLSv1_2,
    "lowerMaximumSecurityTo": ssl.TLSVersion.TLSv1_2,
    # Servers that keep no session cache (vsftpd) can only resume tickets.
    "enableSessionTickets": True,
}


def _client_tls(hostname: str, cafile: str | None, verify: bool) -> Any:
    """Client TLS (system trust, a PEM bundle, or none) that keeps sessions."""
    if not verify:
        return _SessionCachingOptions(verify=False, **_FTPS_VERSIONS)
    trust: Any = ssl.platformTrust()
    if cafile is not None:
        with open(cafile, "rb") as f:
            pems = [part + b"-----END CERTIFICATE-----\n"
                    for part in f.read().split(b"-----END CERTIFICATE-----") if b"BEGIN" in part]
        trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(p) for p in pems])
    base = _SessionCachingOptions(trustRoot=trust, **_FTPS_VERSIONS)
    # As ssl.optionsForClientTLS builds it (host name checks, SNI), over our context.
    return ClientTLSOptions(base._makeTLSConnection, hostname)


@implementer(interfaces.IOpenSSLClientConnectionCreator)
class _SessionKeeping:
    """Client TLS for data connections: the checks of C{options}, and the
    control connection's session resumed (RFC 4217 10.2)."""

    def __init__(self, options: Any, control: "_Control") -> None:
        self.options = options
        self.control = control

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        from OpenSSL import SSL

        if hasattr(self.options, "clientConnectionForTLS"):
            connection = self.options.clientConnectionForTLS(tlsProtocol)
        else:
            connection = SSL.Connection(self.options.getContext(), None)
            connection.set_connect_state()
        session = self.control.tls_session()
        if session is not None:
            connection.set_session(session)
        return connection


class _Control(_tftp.FTPClient):
    """
    Twisted's FTPClient with UTF-8 names and TLS-capable data connections.
    Login is queued by L{connect} (after AUTH TLS), not at construction.
    """

    _encoding = "utf-8"
    protect = False

    def __init__(self, reactor: Any, tls_options: Any) -> None:
        _tftp.FTPClientBasic.__init__(self)
        self.passive = 1
        self._trustPasvAddr = False
        self.reactor = reactor
        self.tls_options = tls_options
        self.connectFactory = self._connect_data
        self.greeted: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass
        super().connectionMade()

    def _cb_greeting(self, greeting: Any) -> None:
        self.greeting = greeting
        if not self.greeted.called:
            self.greeted.callback(greeting)

    def tls_session(self) -> Any:
        """The control connection's TLS session, or None."""
        try:
            handle = self.transport.getHandle()
        except AttributeError:
            return None
        get_session = getattr(handle, "get_session", None)
        return get_session() if get_session is not None else None

    def _connect_data(self, host: str, port: int, factory: Any) -> Any:
        if self.protect:
            factory = TLSMemoryBIOFactory(_SessionKeeping(self.tls_options, self), True, factory)
        return self.reactor.connectTCP(host, port, factory)


class _Collect(protocol.Protocol):
    """Receives a data connection into memory (listings)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)


@implementer(interfaces.IProtocol)
class _ToFile(protocol.Protocol):
    """Receives a download into a file, reporting progress."""

    def __init__(self, f: Any, done: int, total: int | None, progress: Progress | None) -> None:
        self.file = f
        self.done = done
        self.total = total
        self.progress = progress

    def connectionMade(self) -> None:
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass

    def dataReceived(self, data: bytes) -> None:
        self.file.write(data)
        self.done += len(data)
        if self.progress is not None:
            self.progress(self.done, self.total)


def _failure_to_error(failure: Any) -> Any:
    if failure.check(_tftp.CommandFailed):
        lines = failure.value.args[0]
        text = lines[-1] if lines else "command failed"
        code = int(text[:3]) if text[:3].isdigit() else None
        raise FTPClientError(text, code)
    if failure.check(_tftp.ConnectionLost):
        raise FTPClientError("connection lost")
    return failure


class FTPSession:
    """A logged-in FTP session. Every method returns a Deferred."""

    def __init__(self, control: _Control) -> None:
        self._control = control
        #: FEAT lines (upper-case first words), e.g. C{{"MLST", "SIZE", "UTF8"}}
        self.features: set[str] = set()

    def _command(self, line: str) -> defer.Deferred:
        return self._control.queueStringCommand(line).addErrback(_failure_to_error)

    def pwd(self) -> defer.Deferred:
        """The current directory."""
        d = self._command("PWD")
        return d.addCallback(lambda lines: _tftp.parsePWDResponse(lines[-1]))

    def cwd(self, path: str) -> defer.Deferred:
        return self._command(f"CWD {path}")

    def mkdir(self, path: str) -> defer.Deferred:
        return self._command(f"MKD {path}")

    def delete(self, path: str) -> defer.Deferred:
        return self._command(f"DELE {path}")

    def size(self, path: str) -> defer.Deferred:
        """Fire with the file's size in bytes (SIZE, binary mode)."""
        d = self._command(f"SIZE {path}")
        return d.addCallback(lambda lines: int(lines[-1][4:].strip()))

    def list(self, path: str = "") -> defer.Deferred:
        """
        Fire with the directory's entries as L{RemoteEntry}: MLSD, or LIST
        parsed as C{ls -l} lines from servers without it (vsftpd).
        """
        if "MLST" not in self.features:
            return self._list_unix(path)
        collect = _Collect()
        d = self._control.receiveFromConnection([f"MLSD {path}".rstrip()], collect)
        d.addErrback(_failure_to_error)

        def parse(_: object) -> list[RemoteEntry]:
            text = b"".join(collect.chunks).decode("utf-8", "replace")
            return [parse_mlsx(line) for line in text.splitlines() if line.strip()]

        def no_mlsd(failure: Any) -> Any:
            failure.trap(FTPClientError)
            if failure.value.code not in (500, 502, 504):
                return failure
            return self._list_unix(path)

        return d.addCallbacks(parse, no_mlsd)

    def _list_unix(self, path: str) -> defer.Deferred:
        listing = _tftp.FTPFileListProtocol()
        d = self._control.receiveFromConnection([f"LIST {path}".rstrip()], listing)
        d.addErrback(_failure_to_error)

        def entries(_: object) -> list[RemoteEntry]:
            out = []
            for f in listing.files:
                kind = {"d": "dir", "-": "file", "l": "link"}.get(f["filetype"], "other")
                out.append(RemoteEntry(name=f["filename"], kind=kind, size=int(f["size"]),
                                       modified=None, perm=f["perms"], facts={}))
            return out

        return d.addCallback(entries)

    @defer.inlineCallbacks
    def download(self, remote: str, local: str, *, resume: bool = False,
                 progress: Progress | None = None) -> Any:
        """
        Download C{remote} into the file C{local}.

        @param resume: continue a partial C{local} (REST STREAM)
        @param progress: called with (bytes so far, total or None)
        @return: Deferred firing with the bytes received in this call
        """
        total = yield self.size(remote).addErrback(lambda f: f.trap(FTPClientError) and None)
        offset = os.path.getsize(local) if resume and os.path.exists(local) else 0
        if total is not None and offset >= total > 0:
            return 0
        with open(local, "ab" if offset else "wb") as f:
            sink = _ToFile(f, offset, total, progress)
            d = self._control.receiveFromConnection(
                ([f"REST {offset}"] if offset else []) + [f"RETR {remote}"], sink
            )
            try:
                yield d.addErrback(_failure_to_error)
            except FTPClientError:
                if not offset and sink.done == 0:
                    f.close()
                    os.remove(local)
                raise
        return sink.done - offset

    @defer.inlineCallbacks
    def upload(self, local: str, remote: str, *, resume: bool = False,
               progress: Progress | None = None) -> Any:
        """
        Upload the file C{local} as C{remote}.

        @param resume: append what the server lacks (SIZE, then REST + STOR)
        @return: Deferred firing with the bytes sent in this call
        """
        total = os.path.getsize(local)
        offset = 0
        if resume:
            offset = yield self.size(remote).addErrback(lambda f: f.trap(FTPClientError) and 0)
            if offset >= total:
                return 0
        commands = ([f"REST {offset}"] if offset else []) + [f"STOR {remote}"]
        consumer_d, done_d = self._control.sendToConnection(commands)
        done_d.addErrback(_failure_to_error)
        consumer = yield consumer_d
        sent = [offset]

        def count(chunk: bytes) -> bytes:
            sent[0] += len(chunk)
            if progress is not None:
                progress(sent[0], total)
            return chunk

        with open(local, "rb") as f:
            f.seek(offset)
            # FileSender is a pull producer: the transport asks for each
            # chunk when it has room, so memory stays bounded.
            yield FileSender().beginFileTransfer(f, consumer, count)
        consumer.finish()
        yield done_d
        return sent[0] - offset

    def quit(self) -> defer.Deferred:
        """Say QUIT and close."""
        d = self._command("QUIT")
        d.addBoth(lambda r: self._control.transport.loseConnection())
        return d


async def connect(
    host: str,
    port: int = 21,
    user: str = "anonymous",
    password: str = "anonymous@",
    *,
    tls: str = "explicit",
    cafile: str | None = None,
    verify: bool = True,
    reactor: Any = None,
    timeout: float = 30,
) -> FTPSession:
    """
    Connect and log in.

    @param tls: C{"explicit"} (AUTH TLS), C{"implicit"} or C{"none"}
    @raise FTPClientError: login or TLS refused
    """
    if tls not in ("explicit", "implicit", "none"):
        raise ValueError(f"tls must be explicit, implicit or none, not {tls!r}")
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    options = _client_tls(host, cafile, verify) if tls != "none" else None
    control = _Control(reactor, options)
    factory = protocol.Factory.forProtocol(lambda: control)
    if tls == "implicit":
        endpoint = endpoints.wrapClientTLS(
            options, endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
        )
    else:
        endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
    await endpoint.connect(factory)
    await control.greeted
    if tls == "explicit":
        await control.queueStringCommand("AUTH TLS").addErrback(_failure_to_error)
        control.transport.startTLS(options)
    session = FTPSession(control)
    login = control.queueStringCommand(f"USER {user}")
    try:
        await login.addErrback(_failure_to_error)
        await session._command(f"PASS {password}")
    except FTPClientError:
        control.transport.loseConnection()
        raise
    await session._command("TYPE I")
    try:
        feat = await session._command("FEAT")
        session.features = {line.strip().split(" ")[0].upper() for line in feat[1:-1]}
    except FTPClientError:
        pass
    if tls != "none":
        await session._command("PBSZ 0")
        await session._command("PROT P")
        control.protect = True
    return session
