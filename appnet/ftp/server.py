"""
The FTP server (RFC 959, 2228, 2389, 2428, 2640, 3659, 4217): L{FTPServerFactory}.

L{FTPServer} extends C{twisted.protocols.ftp.FTP}: it keeps Twisted's
C{ftp_*} dispatch, reply table, login states and C{IFTPShell} avatars reached
through twisted.cred, and replaces what Twisted gets wrong or lacks:

 - the command loop: Twisted stops reading the control connection while a
   command's Deferred is pending, and its PASV/EPSV Deferreds wait for the
   data connection, so a client sending C{REST} after C{PASV} (curl C{-C -})
   deadlocks (twisted/twisted#4819). Here PASV/EPSV/PORT/EPRT answer at
   once, the transfer command waits for the data connection, pipelined
   commands are queued (bounded), and C{ABOR} is served during a transfer;
 - the data connection: Twisted's C{DTP} cannot do TLS, sendfile or wait
   without blocking the control channel; L{DataChannel} does, checks the
   peer address of passive connections, and sets TCP_NODELAY;
 - per-transfer overhead: a passive port is a bare listening socket
   (L{_PassivePort}) whose connection is accepted in the transfer
   command's own reactor turn; a small binary file goes out on the bare
   accepted socket, no transport made, in that turn; replies go out at
   the end of each read (L{FTPServer._flush}) rather than at the
   reactor's next turn, and the clean-up the client does not wait for
   (closing sockets) after them; commands that answer at once make no
   Deferred;
 - framing: L{appnet.lines.BoundedLines} (CRLF or LF, an overlong line
   answered with 500 and the session kept, cleartext after AUTH TLS
   dropped); Twisted's LineReceiver drops the connection instead;
 - paths: UTF-8 names (RFC 2640), every path through the store's jail
   (L{appnet.filesystem.normalize_virtual}); escapes get 550;
 - what it lacks: REST STREAM both ways, APPE, STOU, ABOR, MLSD/MLST with
   RFC 3659 facts, SIZE/MDTM in ASCII and binary, FEAT listing exactly
   this, OPTS UTF8/MLST, EPSV/EPRT over IPv6, AUTH TLS/PBSZ/PROT (CCC
   refused), a passive port range and masquerade address, PORT/EPRT
   refused to any address but the client's (no bounce attacks), a bound on
   failed logins and line length, quota as 552.
"""

from __future__ import annotations

import copy
import errno
import ipaddress
import os
import random
import socket
import time
from typing import Any, Callable

from OpenSSL import SSL
from twisted.cred import credentials
from twisted.cred import error as cred_error
from twisted.internet import address, defer, error, interfaces, posixbase, protocol, tcp
from twisted.logger import Logger
from twisted.protocols import ftp as _tftp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from appnet.errors import (
    NotFound,
    PathOutsideRoot,
    PermissionDenied,
    QuotaExceeded,
    StoreError,
)
from appnet.filesystem import (
    AlreadyExists,
    DirectoryNotEmpty,
    FileInfo,
    InvalidOffset,
    IsADirectory,
    NotADirectory,
    normalize_virtual,
)
from appnet.lines import BoundedLines
from appnet.sockets import ReplySender, plain_tcp
from appnet.stats import ServiceStats
from appnet.transcript import Transcript, redact_words

__all__ = ["FTPServer", "FTPServerFactory", "DataChannel", "FTPReply", "mlsx_facts", "list_line"]

_log = Logger()

#: Facts MLSD/MLST can give (RFC 3659 section 7.5), all on by default.
MLST_FACTS = ("type", "size", "modify", "perm")

MAX_FAILED_LOGINS = 3
MAX_QUEUED_COMMANDS = 64
SENDFILE_CHUNK = 4 * 1024 * 1024
#: Files up to this size are sent with one read and one write.
SMALL_FILE = 64 * 1024
#: Bytes read per recv on a data connection (Twisted reads 64 KiB).
DATA_READ_SIZE = 1024 * 1024
#: SO_SNDBUF for sendfile downloads: a fixed buffer measured faster here
#: than the kernel's autotuning on loopback (bench/ftp).
SENDFILE_SNDBUF = 8 * 1024 * 1024
#: Most bytes one sendfile round sends before the reactor runs other work.
SENDFILE_ROUND = 32 * 1024 * 1024


#: Why a data connection closed after the whole transfer was sent: one
#: Failure for all, as the reactor keeps its own (making one is costly).
_SENT = Failure(error.ConnectionDone("transfer sent"))


class FTPReply(Exception):
    """A command ends with this reply (code and text)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


#: Store error -> (reply code, text); the first matching class wins.
_STORE_REPLIES: tuple[tuple[type[StoreError], int, str], ...] = (
    (QuotaExceeded, 552, "quota exceeded"),
    (InvalidOffset, 554, "restart offset beyond end of file"),
    (PathOutsideRoot, 550, "path not allowed"),
    (PermissionDenied, 550, "permission denied"),
    (NotFound, 550, "no such file or directory"),
    (IsADirectory, 550, "is a directory"),
    (NotADirectory, 550, "not a directory"),
    (AlreadyExists, 550, "already exists"),
    (DirectoryNotEmpty, 550, "directory not empty"),
)


def _store_reply(e: StoreError, path: str = "") -> FTPReply:
    """The reply for a store error (550 family, 552 quota, 554 offset)."""
    where = f"{path}: " if path else ""
    for kind, code, text in _STORE_REPLIES:
        if isinstance(e, kind):
            return FTPReply(code, where + text)
    return FTPReply(451, f"{where}local error in processing")


def _mdtm(t: float) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(t))


def mlsx_facts(info: FileInfo, facts: tuple[str, ...] = MLST_FACTS) -> str:
    """
    The RFC 3659 fact string of one entry, e.g.
    C{type=file;size=12;modify=20240101120000;perm=rw;}.
    """
    values = {
        "type": info.kind,
        "size": str(info.size),
        "modify": _mdtm(info.mtime),
        "perm": info.perm,
    }
    return "".join(f"{f}={values[f]};" for f in facts if f in values)


_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def list_line(info: FileInfo, owner: str, now: float | None = None) -> str:
    """One C{ls -l} style line of a LIST reply (the form clients parse)."""
    if info.is_dir:
        mode = "drwxrwxr-x" if "m" in info.perm else "dr-xr-xr-x"
    else:
        mode = "-rw-rw-r--" if "w" in info.perm else "-r--r--r--"
    t = time.gmtime(info.mtime)
    current = time.gmtime(time.time() if now is None else now)
    if current.tm_year == t.tm_year:
        when = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}"
    else:
        when = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d}  {t.tm_year}"
    owner = owner[:8]
    return f"{mode}   1 {owner:<8} {owner:<8} {info.size:>12} {when} {info.name}"


# -- data connections ---------------------------------------------------------


@implementer(interfaces.IHandshakeListener)
class DataChannel(protocol.Protocol):
    """
    One data connection. Bytes arriving before an upload is attached are
    buffered (bounded: the transport is paused beyond a limit).

    @ivar refused: why the connection was cut (a TLS session not reused
        when that is required), or None
    """

    sink: Any = None
    refused: str | None = None

    def __init__(self) -> None:
        self._buffer: list[bytes] = []
        self._buffered = 0
        self.closed: defer.Deferred = defer.Deferred()
        self.bytes_in = 0
        self.bytes_out = 0

    _ready = False

    def connectionMade(self) -> None:
        _nodelay(self.transport)
        tcp_transport = getattr(self.transport, "transport", self.transport)
        if isinstance(tcp_transport, tcp.Connection):
            # Uploads: one recv (and one trip through Python) per MiB rather
            # than per 64 KiB, Twisted's default.
            tcp_transport.bufferSize = DATA_READ_SIZE
        if not interfaces.ISSLTransport.providedBy(self.transport):
            self._made()
        # Under TLS, wait for the handshake: closing before it ends (an
        # empty listing) would cut the client's handshake short.

    def _made(self) -> None:
        self._ready = True
        self.factory.channel_made(self)

    def handshakeCompleted(self) -> None:
        """TLS is up: enforce C{require_tls_session_reuse} (RFC 4217 10.2)."""
        if (self.factory.session.factory.require_tls_session_reuse
                and not tls_session_reused(self.transport)):
            self.refused = "TLS session reuse required on the data connection"
            self.transport.abortConnection()
            self.factory.fail(Failure(error.ConnectionAborted(self.refused)), self.refused)
            return
        self._made()

    def dataReceived(self, data: bytes) -> None:
        if self.refused is not None:
            return
        self.bytes_in += len(data)
        if self.sink is not None:
            self.sink.write(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > 1 << 20:
            self.transport.pauseProducing()

    def attach(self, sink: Any) -> None:
        """Send everything received (so far and from now on) to C{sink}."""
        self.sink = sink
        buffered, self._buffer = self._buffer, []
        for chunk in buffered:
            sink.write(chunk)
        if self._buffered > 1 << 20:
            self.transport.resumeProducing()
        self._buffered = 0

    def write(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.transport.write(data)

    def send_final(self, data: bytes) -> bool:
        """
        Send C{data}, all this connection will carry, and close it.

        @return: whether it is all with the kernel and the stream ended
            (FIN) already, so that the transfer can be reported done now:
            plain TCP whose socket took it at once (the socket closes
            once the session's replies are out, L{FTPServer.after_replies}).
            Otherwise it goes through Twisted's buffer, and L{closed} tells
            when it is done.
        """
        sock = plain_tcp(self.transport)
        sent = _send_now(sock.socket, data) if sock is not None else 0
        self.bytes_out += sent
        if sock is not None and sent == len(data):
            # Nothing is left in Twisted's buffer, so close as the reactor
            # would a turn later (loseConnection waits for a write event
            # first), but after the reply is sent: the descriptor leaves
            # the reactor, the socket closes (the kernel still delivers
            # what it holds), and connectionLost runs.
            self.factory.session.after_replies(lambda: _close_sent(sock))
            return True
        self.write(data[sent:])
        self.transport.loseConnection()
        return False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self._ready:
            self.factory.fail(reason, self.refused)
        self.factory.channel_lost(self)
        if not self.closed.called:
            # The reason as a value: a Failure would errback the Deferred.
            self.closed.callback(reason.value)


class _Refused(protocol.Protocol):
    """A data connection nobody asked for: closed at once."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class _DataFactory(protocol.ClientFactory):
    """Makes the one data connection of one transfer setup (passive or active)."""

    protocol = DataChannel
    noisy = False

    def __init__(self, session: "FTPServer", peer_host: str | None) -> None:
        self.session = session
        self.peer_host = peer_host
        self.channel: DataChannel | None = None
        self.failure: Failure | None = None
        self._waiters: list[defer.Deferred] = []
        self.listening_port: Any = None
        self.connector: Any = None
        self.deadline: Any = None
        """The passive connection's timeout (an C{IDelayedCall}), once a
        transfer command waits for it."""
        self.refused: str | None = None

    def allows(self, host: str | None) -> bool:
        """Whether a connection from C{host} may be this setup's one data
        connection: the first, and (passive) from the client's host."""
        if self.channel is not None or self.failure is not None:
            return False
        # A passive port is guessable: only the client may connect to it.
        return self.peer_host is None or _same_host(host, self.peer_host)

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        host = getattr(addr, "host", None)
        if not self.allows(host):
            if self.channel is None and self.failure is None:
                _log.warn("FTP data connection from {host} refused (control peer {peer})",
                          host=host, peer=self.peer_host)
            return _Refused()
        p = DataChannel()
        p.factory = self
        return p

    def channel_made(self, channel: DataChannel) -> None:
        self.channel = channel
        self._settled()
        if self.listening_port is not None:
            self.listening_port.stopListening()
            self.listening_port = None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(channel)

    def channel_lost(self, channel: DataChannel) -> None:
        self.session.data_channel_lost(self, channel)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.fail(reason)

    def fail(self, reason: Failure, refused: str | None = None) -> None:
        if self.channel is not None or self.failure is not None:
            return
        self._settled()
        self.failure = reason
        self.refused = refused
        if self.listening_port is not None:
            self.listening_port.stopListening()
            self.listening_port = None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(reason)

    def wait(self) -> defer.Deferred:
        """Fire with the L{DataChannel} once it is connected."""
        if self.channel is not None:
            return defer.succeed(self.channel)
        if self.failure is not None:
            return defer.fail(self.failure)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d

    def _settled(self) -> None:
        """Connected or failed: the passive connection's deadline is moot."""
        deadline, self.deadline = self.deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def accept(self) -> None:
        """
        The transfer command came: take the passive connection now if it
        is waiting (see L{_PassivePort.accept}), or give the client
        C{data_timeout} to make it (timed from the transfer command, as
        vsftpd does: no timer per PASV when the client is already there).
        """
        if self.channel is not None or self.failure is not None or self.listening_port is None:
            return
        if isinstance(self.listening_port, _PassivePort):
            self.listening_port.accept()
        if self.channel is None and self.failure is None and self.deadline is None:
            factory = self.session.factory
            self.deadline = factory.reactor.callLater(
                factory.data_timeout, self.fail, Failure(error.TimeoutError("no data connection"))
            )

    def close(self) -> None:
        """Stop listening or connecting; drop the connection if one is up."""
        if self.listening_port is not None:
            self.listening_port.stopListening()
            self.listening_port = None
        if self.connector is not None and _connecting(self.connector):
            self.connector.stopConnecting()
        self.fail(Failure(error.ConnectionAborted("data connection closed")))
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.loseConnection()


@implementer(interfaces.IReadDescriptor)
class _PassivePort:
    """
    A passive data port on a real reactor: a listening socket whose
    connections go to one L{_DataFactory} until it is stopped.

    Twisted's C{listenTCP} does the same job with a log line at each start
    and stop, a factory start and stop and a close deferred to the next
    reactor turn: a third of the server's CPU time per small file
    (bench/ftp). Tests on a memory reactor get C{listenTCP}, which records
    its listeners (see L{FTPServer._listen_passive}).

    Nothing is accepted before the transfer command (L{accept}): clients
    connect first, and the kernel holds the connection meanwhile, so it is
    taken in the command's own reactor turn, and the reactor watches the
    port only when the client is late.
    """

    def __init__(self, reactor: Any, factory: Any, interface: str, port: int,
                 failed: Callable[[Failure], None]) -> None:
        """
        @param factory: builds the protocol of each connection (the
            L{_DataFactory}, or the TLS factory wrapping it)
        @param failed: told when accepting fails for want of resources
        @raise error.CannotListenError: when C{port} is taken or C{interface}
            cannot be bound
        """
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        nonblocking = getattr(socket, "SOCK_NONBLOCK", 0)
        sock = socket.socket(family, socket.SOCK_STREAM | nonblocking)
        try:
            if port:
                # A port of the range is reusable at once after a transfer
                # whose connection lingers in TIME_WAIT. Not for port 0:
                # there Linux's search for a free port, with thousands of
                # passive ports in TIME_WAIT (every server-closed download
                # leaves one), took 2.9 ms with SO_REUSEADDR against 0.4 ms
                # without (6,000 of them, measured here); pyftpdlib sets
                # it only for a range too.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if not nonblocking:
                sock.setblocking(False)
            if family == socket.AF_INET6:
                sock.bind(socket.getaddrinfo(interface, port, family, socket.SOCK_STREAM, 0,
                                             socket.AI_NUMERICHOST)[0][4])
            else:
                sock.bind((interface, port))
            sock.listen(8)
            host = sock.getsockname()
        except OSError as e:
            sock.close()
            raise error.CannotListenError(interface, port, e) from None
        self._address_type = address.IPv6Address if family == socket.AF_INET6 else address.IPv4Address
        self._host = self._address_type("TCP", host[0], host[1])
        self.reactor = reactor
        self.factory = factory
        self._failed = failed
        self.socket: socket.socket | None = sock
        self._fileno = sock.fileno()
        self._sessions = 0
        self._watched = False

    def getHost(self) -> Any:
        """The address listened on (its port is what PASV/EPSV announce)."""
        return self._host

    def fileno(self) -> int:
        return self._fileno if self.socket is not None else -1

    def logPrefix(self) -> str:
        return "FTP-passive"

    def doRead(self) -> None:
        """Accept what is waiting; the factory refuses all but its one peer."""
        while (waiting := self._accept_one()) is not None:
            self.serve(*waiting)

    def _accept_one(self) -> tuple[socket.socket, Any] | None:
        """A waiting connection and its peer's address, or None."""
        while self.socket is not None:
            try:
                return self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as e:
                if e.errno == errno.ECONNABORTED:
                    continue
                # Out of descriptors or memory: the waiting connection would
                # keep the socket readable, so give this transfer up (425).
                self.stopListening()
                self._failed(Failure(e))
        return None

    def take(self) -> tuple[socket.socket, Any] | None:
        """
        The client's connection, if it is waiting, as a bare non-blocking
        socket and its peer's address (L{_Download}'s small files need no
        transport); the caller L{serve}s it if it needs one after all.
        Connections from anyone else are refused as L{doRead} does.
        Only for a port whose factory is the plain L{_DataFactory}.
        """
        while (waiting := self._accept_one()) is not None:
            sock, peer = waiting
            if self.factory.allows(peer[0]):
                sock.setblocking(False)
                return sock, peer
            self.serve(sock, peer)
        return None

    def serve(self, sock: socket.socket, peer: Any) -> None:
        """Give an accepted connection a transport and the factory's protocol."""
        protocol = self.factory.buildProtocol(self._address_type("TCP", peer[0], peer[1]))
        if protocol is None:
            sock.close()
            return
        self._sessions += 1
        transport = tcp.Server(sock, protocol, peer, None, self._sessions, self.reactor)
        transport.repstr = f"<{type(protocol).__name__} on FTP passive port {self._host.port}>"
        protocol.makeConnection(transport)

    def accept(self) -> None:
        """Take the connections waiting; have the reactor watch for the
        client's until it comes."""
        self.doRead()
        if self.socket is not None and not self._watched:
            self._watched = True
            self.reactor.addReader(self)

    def stopListening(self) -> None:
        """Close the listening socket (connections made stay up)."""
        sock, self.socket = self.socket, None
        if sock is not None:
            if self._watched:
                self.reactor.removeReader(self)
            sock.close()

    def connectionLost(self, reason: Failure) -> None:
        self.stopListening()


def _connecting(connector: Any) -> bool:
    return getattr(connector, "state", None) == "connecting"


def _same_host(a: str | None, b: str | None) -> bool:
    """Whether two address strings name the same host (::ffff:1.2.3.4 is 1.2.3.4)."""
    return a == b or _ip(a) == _ip(b)


def _ip(host: str | None) -> Any:
    if host is None:
        return None
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def session_caching(options: Any) -> Any:
    """
    A copy of server C{CertificateOptions} fit for FTPS; the options other
    services share are left untouched.

      - Its context caches sessions, so that data connections can resume
        the control connection's TLS session (RFC 4217 10.2); Twisted turns
        the server session cache off by default.
      - It stops at TLS 1.2. In TLS 1.3 the server sends session tickets
        I{after} the handshake: a client that opens a data connection at
        once may not have one yet (curl/curl#3002), and GnuTLS clients
        (lftp) that meet a ticket on an upload connection stop sending and
        truncate the file (lavv17/lftp#666; it happened here about one
        upload in two). In TLS 1.2 the session is settled inside the
        handshake; vsftpd and FileZilla Server default to it for FTPS too.
    """
    if options is None or not hasattr(options, "enableSessions"):
        return options
    resuming = copy.copy(options)
    resuming.enableSessions = True
    # CertificateOptions has no public way to change these after
    # construction; its context is made lazily from them.
    resuming._options |= SSL.OP_NO_TLSv1_3
    resuming._context = None
    return resuming


def tls_session_reused(transport: Any) -> bool:
    """Whether the TLS connection C{transport} resumed an earlier session."""
    from OpenSSL._util import lib

    connection = getattr(transport, "_tlsConnection", None)
    if connection is None:
        return False
    return bool(lib.SSL_session_reused(connection._ssl))


def _nodelay(transport: Any) -> None:
    """TCP_NODELAY: without it every reply waits for Nagle + delayed ACK."""
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, NotImplementedError, OSError):
        pass


def _close_sent(connection: tcp.Connection) -> None:
    """Close a data connection whose data went out whole (L{_send_now})."""
    if not connection.disconnected:
        connection.connectionLost(_SENT)


def _send_now(sock: socket.socket, data: bytes) -> int:
    """
    Send C{data} on the non-blocking TCP socket C{sock} at once, past
    Twisted's write buffer (which would wait for the next reactor turn);
    when all of it went, shut the sending side too (FIN). Only for a
    connection nothing was written to yet.

    @return: the number of bytes sent (0 when the socket refused them)
    """
    try:
        sent = sock.send(data)
    except OSError:
        return 0
    if sent == len(data):
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # The peer is gone already; Twisted's close finds out.
    return sent


@implementer(interfaces.IWriteDescriptor)
class _Sendfile:
    """
    Copy a file to a TCP socket with C{os.sendfile}, driven by the reactor's
    writability events; the transport stops reading meanwhile so that the
    reactor has only this writer for the descriptor.
    """

    def __init__(self, reactor: Any, transport: Any, file: Any, offset: int) -> None:
        self.reactor = reactor
        self.transport = transport
        self.file = file
        self.offset = offset
        self.sent = 0
        self.done: defer.Deferred = defer.Deferred(lambda d: self._finish(error.ConnectionAborted()))
        self._fd = transport.fileno()
        self._finished = False

    def start(self) -> defer.Deferred:
        self.transport.stopReading()
        try:
            self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                             SENDFILE_SNDBUF)
        except OSError:
            pass
        self.reactor.addWriter(self)
        return self.done

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "FTP-sendfile"

    def doRead(self) -> None:
        pass

    def doWrite(self) -> Any:
        budget = SENDFILE_ROUND
        while budget > 0:
            try:
                n = os.sendfile(self._fd, self.file.fileno(), self.offset, SENDFILE_CHUNK)
            except BlockingIOError:
                return None
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                self._finish(e)
                return None
            if n == 0:
                self._finish(None)
                return None
            self.offset += n
            self.sent += n
            budget -= n
        return None

    def connectionLost(self, reason: Failure) -> None:
        self._finish(reason.value)

    def _finish(self, problem: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
        self.reactor.removeWriter(self)
        self.file.close()
        if not self.transport.disconnected:
            self.transport.startReading()
        if self.done.called:
            return
        if problem is None:
            self.done.callback(self.sent)
        else:
            self.done.errback(problem)


class _ASCIIEncoder:
    """LF -> CRLF for TYPE A downloads, CRLF -> LF for uploads, chunk by chunk."""

    def __init__(self, sink: Any, upload: bool) -> None:
        self.sink = sink
        self.upload = upload
        self._cr = False
        self.error = None

    def write(self, data: bytes) -> None:
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._cr = True
        data = data.replace(b"\r\n", b"\n")
        if not self.upload:
            data = data.replace(b"\n", b"\r\n")
        if data:
            self.sink.write(data)

    def flush(self) -> None:
        if self._cr:
            self._cr = False
            self.sink.write(b"\r")

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.sink.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.flush()
        self.sink.unregisterProducer()


# -- transcripts ----------------------------------------------------------------

_CLIENT_NOTES = {
    "USER": "user name", "PASS": "password", "ACCT": "account", "CWD": "change directory",
    "CDUP": "parent directory", "QUIT": "end the session", "PORT": "active mode: connect to me",
    "EPRT": "extended PORT (IPv6 too)", "PASV": "passive mode: you listen",
    "EPSV": "extended PASV", "TYPE": "representation type (A ascii, I image)",
    "RETR": "download", "STOR": "upload (replace)", "STOU": "upload under a unique name",
    "APPE": "append", "REST": "restart the next transfer at an offset", "RNFR": "rename from",
    "RNTO": "rename to", "ABOR": "abort the transfer", "DELE": "delete file",
    "RMD": "remove directory", "MKD": "make directory", "PWD": "print directory",
    "LIST": "long listing", "NLST": "name listing", "MLSD": "machine listing",
    "MLST": "facts of one entry", "SIZE": "file size", "MDTM": "modification time",
    "FEAT": "list extensions", "OPTS": "set an option", "AUTH": "start TLS",
    "PBSZ": "protection buffer size", "PROT": "data channel protection",
    "SYST": "system type", "NOOP": "no operation", "STAT": "status", "HELP": "help",
}


def _annotate_client(line: str) -> str:
    return _CLIENT_NOTES.get(line.split(" ", 1)[0].upper(), "")


_REPLY_NOTES = {
    "150": "file status okay, opening data connection",
    "200": "command okay",
    "211": "system status / features",
    "213": "file status",
    "214": "help",
    "215": "system type",
    "220": "service ready for new user",
    "221": "closing control connection",
    "226": "closing data connection, transfer done",
    "227": "entering passive mode (h1,h2,h3,h4,p1,p2)",
    "229": "entering extended passive mode (|||port|)",
    "230": "user logged in",
    "234": "security exchange okay: TLS handshake follows",
    "250": "requested file action done",
    "257": "pathname",
    "331": "user name okay, need password",
    "350": "pending further information",
    "421": "service closing control connection",
    "425": "can't open data connection",
    "426": "connection closed, transfer aborted",
    "451": "local error",
    "500": "syntax error",
    "501": "syntax error in arguments",
    "502": "command not implemented",
    "503": "bad sequence of commands",
    "504": "parameter not implemented",
    "521": "data connection must be protected (PROT P)",
    "522": "data connection refused (TLS)",
    "530": "not logged in",
    "534": "request denied for policy reasons",
    "550": "file unavailable (not found, no access, not allowed)",
    "552": "exceeded storage allocation (quota)",
    "553": "file name not allowed",
    "554": "restart offset invalid",
}


def _annotate_server(line: str) -> str:
    code = line[:3]
    if line[3:4] not in (" ", "-"):
        return ""
    return _REPLY_NOTES.get(code, "")


def _redact(line: str) -> str:
    if line[:5].upper() == "PASS ":
        return redact_words(line, 1)
    return line


# -- the protocol interpreter ------------------------------------------------------


class FTPServer(BoundedLines, _tftp.FTP):
    """One FTP control connection. See the module docstring."""

    transcript: Transcript | None = None
    _busy = False
    _draining = False
    _tls = False
    _protect = False
    _pbsz = False
    _utf8 = True
    _rest = 0
    _rename_from: str | None = None
    _failed_logins = 0
    _transfer: Any = None
    _data: _DataFactory | None = None
    _control_socket: Any = None
    _replies_out: Any = None
    _reading = False

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        self._queue: list[bytes] = []
        self._replies: list[bytes] = []
        self._after_replies: list[Callable[[], None]] = []
        self._tls = f.implicit_tls
        self.cwd = "/"
        self.mlst_facts = MLST_FACTS
        self.timeOut = f.idle_timeout
        self.callLater = f.reactor.callLater
        self._control_socket = None if f.implicit_tls else plain_tcp(self.transport)
        self._replies_out = ReplySender(self.transport, f.stats)
        # Asked once: PASV/EPSV/PORT need them for every transfer.
        self._local_host = self.transport.getHost().host
        self._local_ip = _ip(self._local_host)
        self._peer_host = self.transport.getPeer().host
        _nodelay(self.transport)
        if f.trace:
            peer = self.transport.getPeer()
            self.transcript = Transcript(
                "ftp", f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}",
                _annotate_client, _annotate_server, _redact, emit=f.trace_emit,
            )
        self.state = self.UNAUTH
        self.setTimeout(self.timeOut)
        self.reply_line(220, f.greeting)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.setTimeout(None)
        self._close_data()
        if self._transfer is not None:
            self._transfer.abort()
        logout = getattr(self, "logout", None)
        if logout is not None:
            self.logout = None
            logout()
        self.shell = None
        self.disconnected = True

    def timeoutConnection(self) -> None:
        self.reply_line(421, "idle timeout, closing control connection")
        self._hang_up()

    # -- replies -------------------------------------------------------------

    def sendLine(self, line: bytes | str) -> None:
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogateescape")
        if self.transcript is not None:
            self.transcript.server(line)
        if self.transport is not None:
            self._write(line + b"\r\n")

    def reply_line(self, code: int, text: str) -> None:
        """Send a one-line reply (CR and LF in C{text} are neutralised)."""
        text = text.replace("\r", " ").replace("\n", " ")
        self.sendLine(f"{code} {text}")

    def reply_multi(self, code: int, first: str, lines: list[str], last: str) -> None:
        """Send a multi-line reply; body lines start with a space."""
        out = [f"{code}-{first}"] + [" " + s.replace("\r", " ").replace("\n", " ") for s in lines]
        out.append(f"{code} {last}")
        data = "\r\n".join(out).encode("utf-8", "surrogateescape") + b"\r\n"
        if self.transcript is not None:
            for line in out:
                self.transcript.server(line)
        self._write(data)

    def _write(self, data: bytes) -> None:
        """Queue a reply: it leaves at the end of the read (L{_flush}), at
        once outside one. Under TLS it goes to the transport now."""
        if self._control_socket is None:
            self.transport.write(data)
            return
        self._replies.append(data)
        if not self._reading:
            self._flush()

    def _hang_up(self) -> None:
        """Close the control connection once the replies written are sent."""
        self._flush()
        self.transport.loseConnection()

    def _flush(self) -> None:
        """
        Send the replies written so far now, not at the reactor's next
        turn: a client waits for each reply, and a turn of the reactor
        costs more than the reply (bench/ftp). Replies to what one read
        brought go out together at its end (150 and 226 of a small file in
        one segment, as the client reads them). Then the clean-up queued
        by L{after_replies} runs.
        """
        replies = self._replies
        if replies:
            self._replies = []
            self._send(b"".join(replies))
        work = self._after_replies
        if work:
            self._after_replies = []
            for f in work:
                try:
                    f()
                except Exception:  # noqa: BLE001 - a bug of ours: logged, the session goes on
                    _log.failure("FTP clean-up after a reply failed")

    def _send(self, data: bytes) -> None:
        """
        Send replies on the control connection: straight to the socket on
        plain TCP (L{appnet.sockets.ReplySender}).
        """
        self._replies_out.send(data)

    def after_replies(self, work: Callable[[], None]) -> None:
        """
        Call C{work} once the replies written so far have gone out (at
        once outside a read): clean-up the client does not wait for, such
        as closing a data connection whose data and FIN are sent, is done
        while the client reads the reply rather than before it is sent.
        """
        if self._reading:
            self._after_replies.append(work)
        else:
            work()

    # -- framing and the command loop ------------------------------------------

    # -- framing (appnet.lines.BoundedLines) ------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._reading = True
        try:
            super().dataReceived(data)
        finally:
            self._reading = False
            self._flush()

    def max_line_length(self) -> int:
        return self.factory.max_line

    def line_too_long(self) -> None:
        self.reply_line(500, "command line too long")

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        # Telnet IAC sequences some clients put before ABOR (RFC 959 4.1.3).
        line = line.lstrip(b"\xff\xf4\xf2\xff")
        if self.transcript is not None:
            self.transcript.client(line)
        if self._busy:
            verb = line.split(b" ", 1)[0].upper()
            if verb == b"ABOR" and self._transfer is not None:
                self._abort_transfer()
                return
            if verb == b"STAT" and self._transfer is not None and line.strip().upper() == b"STAT":
                self.reply_line(213, f"transfer in progress, {self._transfer.progress()} bytes")
                return
            self._queue.append(line)
            if len(self._queue) > MAX_QUEUED_COMMANDS:
                self.transport.pauseProducing()
            return
        self._run(line)

    def _run(self, line: bytes) -> None:
        text = line.decode("utf-8", "surrogateescape")
        cmd, _, arg = text.partition(" ")
        cmd = cmd.upper()
        self._busy = True
        # Most commands answer at once: no Deferred for them (two thirds
        # of the commands of a small-file download, bench/ftp).
        try:
            result = self._dispatch(cmd, arg)
            if not isinstance(result, defer.Deferred):
                self._succeeded(result)
        except Exception:  # noqa: BLE001 - a bug of ours: 451 and one log entry, never a traceback to the peer
            self._failed(Failure(), cmd)
        else:
            if isinstance(result, defer.Deferred):
                result.addCallbacks(self._succeeded, self._failed, errbackArgs=(cmd,))
                result.addBoth(self._done)
                return
        self._done(None)

    def _done(self, _: object) -> None:
        self._busy = False
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue and not self._busy and self.transport is not None:
                if self.transport.disconnecting:
                    return
                if len(self._queue) == MAX_QUEUED_COMMANDS + 1:
                    self.transport.resumeProducing()
                self._run(self._queue.pop(0))
        finally:
            self._draining = False

    def _succeeded(self, result: Any) -> None:
        if isinstance(result, tuple):
            self.reply_line(*result)

    def _failed(self, failure: Failure, cmd: str) -> None:
        if failure.check(FTPReply):
            self.reply_line(failure.value.code, failure.value.text)
        elif failure.check(StoreError):
            r = _store_reply(failure.value)
            self.reply_line(r.code, r.text)
        elif failure.check(_tftp.FTPCmdError):
            self.sendLine(failure.value.response())
        else:
            _log.failure("FTP {cmd} failed", failure, cmd=cmd)
            self.factory.stats.incr("errors")
            self.reply_line(451, "local error in processing")

    def processCommand(self, cmd: str, *params: str) -> Any:
        # Twisted's entry point, kept for code that calls it directly.
        return self._dispatch(cmd.upper(), " ".join(params))

    _PRE_LOGIN = {"USER", "PASS", "QUIT", "FEAT", "AUTH", "PBSZ", "PROT", "CCC",
                  "OPTS", "SYST", "NOOP", "HELP"}
    _NO_ARG = {"CDUP", "PWD", "XPWD", "PASV", "QUIT", "NOOP", "SYST", "FEAT", "ABOR",
               "CCC", "XCUP"}
    _NEED_ARG = {"USER", "RETR", "STOR", "APPE", "DELE", "RMD", "MKD", "RNFR", "RNTO",
                 "SIZE", "MDTM", "PORT", "EPRT", "REST", "TYPE", "STRU", "MODE", "AUTH",
                 "PBSZ", "PROT", "CWD", "OPTS"}
    _ALIASES = {"XPWD": "PWD", "XCWD": "CWD", "XCUP": "CDUP", "XMKD": "MKD", "XRMD": "RMD"}

    def _dispatch(self, cmd: str, arg: str) -> Any:
        cmd = self._ALIASES.get(cmd, cmd)
        method = getattr(self, "ftp_" + cmd, None) if cmd.isalpha() else None
        if method is None:
            return (502, f"command not implemented: {cmd[:16]}")
        if self.state != self.AUTHED and cmd not in self._PRE_LOGIN:
            if self.state == self.INAUTH:
                return (503, "login with USER and PASS")
            return (530, "please login with USER and PASS")
        if cmd != "RNTO" and self._rename_from is not None:
            self._rename_from = None
        if cmd in self._NO_ARG:
            return method()
        if not arg and cmd in self._NEED_ARG:
            return (501, f"{cmd} requires an argument")
        return method(arg)

    # -- helpers ---------------------------------------------------------------

    @property
    def view(self) -> Any:
        return self.shell.view

    def _path(self, arg: str) -> str:
        """The canonical virtual path of a client's path argument."""
        return normalize_virtual(arg or ".", self.cwd)

    def _name(self, path: str) -> str:
        return path.rsplit("/", 1)[-1] or "/"

    # -- login -------------------------------------------------------------------

    def ftp_USER(self, username: str) -> Any:
        if not username:
            return (501, "USER requires a name")
        if self.state == self.AUTHED:
            return (503, "already logged in")
        if self.factory.require_tls and not self._tls and not self._is_anonymous(username):
            return (530, "use AUTH TLS first")
        self._user = username
        self.state = self.INAUTH
        if self._is_anonymous(username):
            return (331, "anonymous login ok, send your e-mail address as password")
        return (331, f"password required for {username}")

    def _is_anonymous(self, username: str) -> bool:
        return self.factory.anonymous and username.lower() in ("anonymous", "ftp")

    def ftp_PASS(self, password: str = "") -> Any:
        if self.state != self.INAUTH:
            if self.state == self.AUTHED:
                return (503, "already logged in")
            return (503, "login with USER first")
        user = self._user
        del self._user
        if self._is_anonymous(user):
            creds: Any = credentials.Anonymous()
        else:
            creds = credentials.UsernamePassword(user.encode("utf-8", "surrogateescape"),
                                                 password.encode("utf-8", "surrogateescape"))
        d = self.portal.login(creds, None, _tftp.IFTPShell)

        def ok(result: tuple) -> tuple:
            _iface, avatar, logout = result
            self.shell = avatar
            self.logout = logout
            self.cwd = "/"
            self.workingDirectory = []
            self.state = self.AUTHED
            self.factory.stats.incr("logins_ok")
            if avatar.user is None:
                return (230, "anonymous access granted, restrictions apply")
            return (230, f"user {avatar.user} logged in")

        def failed(failure: Failure) -> tuple:
            failure.trap(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials,
                         PermissionDenied)
            self.state = self.UNAUTH
            self._failed_logins += 1
            self.factory.stats.incr("logins_failed")
            if self._failed_logins >= MAX_FAILED_LOGINS:
                self.reply_line(530, "login incorrect, too many failures: goodbye")
                self._hang_up()
                return None
            return (530, "login incorrect")

        return d.addCallbacks(ok, failed)

    # -- TLS (RFC 4217) -------------------------------------------------------------

    def ftp_AUTH(self, mechanism: str) -> Any:
        if self.factory.tls_options is None:
            return (502, "TLS not available")
        if mechanism.upper() not in ("TLS", "TLS-C", "SSL"):
            return (504, f"AUTH {mechanism} not supported, use AUTH TLS")
        if self._tls:
            return (503, "TLS already active")
        self.reply_line(234, "AUTH TLS ok, start the handshake")
        self._flush()  # In the clear, before the handshake.
        self.cut_after_this_line()
        self.transport.startTLS(self.factory.tls_options)
        self._tls = True
        self._control_socket = None
        self._replies_out.tls_started()
        if self.transcript is not None:
            self.transcript.event("TLS started on the control connection")
        # RFC 4217 section 4: AUTH resets the session to just-connected.
        if self.state != self.AUTHED:
            self.state = self.UNAUTH
        return None

    def ftp_PBSZ(self, size: str) -> Any:
        if not self._tls:
            return (503, "PBSZ requires AUTH TLS first")
        if not size.isdigit():
            return (501, "PBSZ requires a number")
        self._pbsz = True
        return (200, "PBSZ=0")

    def ftp_PROT(self, level: str) -> Any:
        if not self._tls:
            return (503, "PROT requires AUTH TLS first")
        if not self._pbsz and not self.factory.implicit_tls:
            return (503, "PROT requires PBSZ first")
        level = level.upper()
        if level == "P":
            self._protect = True
            return (200, "data channel protection: Private")
        if level == "C":
            if self.factory.require_tls:
                return (534, "data channel must be protected")
            self._protect = False
            return (200, "data channel protection: Clear")
        if level in ("S", "E"):
            return (536, f"PROT {level} not supported")
        return (504, "PROT must be C or P")

    def ftp_CCC(self) -> Any:
        return (534, "CCC refused: the control connection stays protected")

    # -- features ---------------------------------------------------------------------

    def features(self) -> list[str]:
        """The FEAT list: exactly the extensions this server implements."""
        feats = []
        if self.factory.tls_options is not None:
            feats += ["AUTH TLS", "PBSZ", "PROT"]
        mlst = "".join(f"{f}{'*' if f in self.mlst_facts else ''};" for f in MLST_FACTS)
        feats += ["EPRT", "EPSV", "MDTM", f"MLST {mlst}", "PASV", "REST STREAM", "SIZE",
                  "TVFS", "UTF8"]
        return feats

    def ftp_FEAT(self) -> Any:
        self.reply_multi(211, "Extensions supported:", self.features(), "End")
        return None

    def ftp_OPTS(self, option: str) -> Any:
        name, _, value = option.partition(" ")
        name = name.upper()
        if name == "UTF8":
            if value.upper() in ("ON", ""):
                self._utf8 = True
                return (200, "UTF8 mode on")
            if value.upper() == "OFF":
                return (504, "UTF8 cannot be turned off: names are UTF-8")
            return (501, "OPTS UTF8 ON or OFF")
        if name == "MLST":
            asked = [f.lower() for f in value.split(";") if f]
            chosen = tuple(f for f in MLST_FACTS if f in asked)
            self.mlst_facts = chosen
            return (200, "MLST OPTS " + "".join(f + ";" for f in chosen))
        return (501, f"OPTS {name[:16]} not understood")

    def ftp_SYST(self) -> Any:
        return (215, "UNIX Type: L8")

    def ftp_NOOP(self) -> Any:
        return (200, "NOOP ok")

    def ftp_HELP(self, arg: str = "") -> Any:
        commands = sorted(n[4:] for n in dir(self) if n.startswith("ftp_"))
        self.reply_multi(214, "The following commands are recognized:",
                         [" ".join(commands)], "Help ok")
        return None

    def ftp_QUIT(self) -> Any:
        self.reply_line(221, "goodbye")
        self.disconnected = True
        self._hang_up()
        return None

    def ftp_TYPE(self, type_: str) -> Any:
        t = type_.upper().replace(" ", "")
        if t in ("I", "L8"):
            self.binary = True
            return (200, "type set to I")
        if t in ("A", "AN"):
            self.binary = False
            return (200, "type set to A")
        return (504, f"type {type_[:8]} not supported")

    def ftp_STRU(self, structure: str) -> Any:
        return (200, "structure F") if structure.upper() == "F" else (504, "only STRU F")

    def ftp_MODE(self, mode: str) -> Any:
        return (200, "mode S") if mode.upper() == "S" else (504, "only MODE S")

    def ftp_ALLO(self, arg: str = "") -> Any:
        return (202, "ALLO not needed")

    # -- navigation ---------------------------------------------------------------------

    def ftp_PWD(self) -> Any:
        return (257, '"' + self.cwd.replace('"', '""') + '" is the current directory')

    def ftp_CWD(self, arg: str) -> Any:
        path = self._path(arg)
        if not self.view.stat(path).is_dir:
            raise NotADirectory(path)
        self.cwd = path
        return (250, f'directory changed to "{path}"')

    def ftp_CDUP(self) -> Any:
        return self.ftp_CWD("..")

    def ftp_MKD(self, arg: str) -> Any:
        path = self._path(arg)
        self.view.mkdir(path)
        return (257, '"' + path.replace('"', '""') + '" created')

    def ftp_RMD(self, arg: str) -> Any:
        self.view.rmdir(self._path(arg))
        return (250, "directory removed")

    def ftp_DELE(self, arg: str) -> Any:
        self.view.remove(self._path(arg))
        return (250, "file removed")

    def ftp_RNFR(self, arg: str) -> Any:
        path = self._path(arg)
        self.view.stat(path)
        self._rename_from = path
        return (350, "ready for RNTO")

    def ftp_RNTO(self, arg: str) -> Any:
        source, self._rename_from = self._rename_from, None
        if source is None:
            return (503, "RNFR required first")
        self.view.rename(source, self._path(arg))
        return (250, "renamed")

    def ftp_SIZE(self, arg: str) -> Any:
        path = self._path(arg)
        info = self.view.stat(path)
        if info.is_dir:
            return (550, f"{arg}: not a regular file")
        if self.binary:
            return (213, str(info.size))
        if info.size > self.factory.ascii_size_limit:
            return (550, "SIZE in ASCII mode is refused for large files; use TYPE I")
        with self.view.open_read(path) as f:
            data = f.read()
        return (213, str(len(data.replace(b"\r\n", b"\n")) + data.replace(b"\r\n", b"\n").count(b"\n")))

    def ftp_MDTM(self, arg: str) -> Any:
        info = self.view.stat(self._path(arg))
        return (213, _mdtm(info.mtime))

    def ftp_MLST(self, arg: str = "") -> Any:
        path = self._path(arg)
        info = self.view.stat(path)
        self.reply_multi(250, f"Listing {path}", [f"{mlsx_facts(info, self.mlst_facts)} {path}"],
                         "End")
        return None

    def ftp_STAT(self, arg: str = "") -> Any:
        if not arg:
            who = self.shell.user if self.state == self.AUTHED and self.shell else None
            lines = [f"logged in as {who or 'anonymous'}",
                     f"TYPE: {'BINARY' if self.binary else 'ASCII'}",
                     f"TLS control: {self._tls}, data: {self._protect}"]
            self.reply_multi(211, "FTP server status:", lines, "End of status")
            return None
        path = self._path(arg)
        info = self.view.stat(path)
        entries = self.view.list(path) if info.is_dir else [info]
        owner = self.shell.user or "ftp"
        self.reply_multi(213, f"status of {path}:", [list_line(i, owner) for i in entries],
                         "End of status")
        return None

    # -- data connection setup -------------------------------------------------------------

    def _close_data(self) -> None:
        data, self._data = self._data, None
        if data is not None:
            data.close()

    def data_channel_lost(self, data: _DataFactory, channel: DataChannel) -> None:
        """A data connection closed; forget it if it is the current one."""
        self.factory.stats.incr("bytes_in", channel.bytes_in)
        self.factory.stats.incr("bytes_out", channel.bytes_out)
        if self._data is data:
            self._data = None

    def _wrap_data(self, factory: _DataFactory) -> Any:
        if self._protect:
            return TLSMemoryBIOFactory(self.factory.tls_options, False, factory)
        return factory

    def _listen_passive(self, interface: str) -> _DataFactory:
        self._close_data()
        data = _DataFactory(self, self._peer_host)
        wrapped = self._wrap_data(data)
        ports = list(self.factory.passive_ports) if self.factory.passive_ports else [0]
        if len(ports) > 1:
            random.shuffle(ports)
        reactor = self.factory.reactor
        lean = isinstance(reactor, posixbase.PosixReactorBase)
        for number in ports:
            try:
                if lean:
                    data.listening_port = _PassivePort(reactor, wrapped, interface, number,
                                                       data.fail)
                else:
                    data.listening_port = reactor.listenTCP(number, wrapped, interface=interface)
                break
            except error.CannotListenError:
                continue
        else:
            raise FTPReply(425, "no passive port free, try again later")
        self._data = data
        return data

    def ftp_PASV(self) -> Any:
        if self._epsvAll:
            return (503, "PASV not allowed after EPSV ALL")
        advertised = self.factory.masquerade_address
        if advertised is None:
            if not isinstance(self._local_ip, ipaddress.IPv4Address):
                return (425, "PASV is IPv4 only; use EPSV")
            advertised = str(self._local_ip)
        data = self._listen_passive(self._local_host)
        port = data.listening_port.getHost().port
        return (227, f"Entering Passive Mode ({_tftp.encodeHostPort(advertised, port)})")

    def ftp_EPSV(self, arg: str = "") -> Any:
        if arg.upper() == "ALL":
            self._epsvAll = True
            return (200, "EPSV ALL ok")
        if arg and arg not in ("1", "2"):
            return (522, "network protocol not supported, use (1,2)")
        family = "2" if isinstance(self._local_ip, ipaddress.IPv6Address) else "1"
        if arg and arg != family:
            return (522, f"network protocol not supported, use ({family})")
        data = self._listen_passive(self._local_host)
        port = data.listening_port.getHost().port
        return (229, f"Entering Extended Passive Mode (|||{port}|)")

    def _connect_active(self, host: str, port: int) -> Any:
        if self._epsvAll:
            return (503, "PORT/EPRT not allowed after EPSV ALL")
        if not _same_host(host, self._peer_host):
            return (501, "PORT to an address other than yours is refused")
        if not 1024 <= port <= 65535:
            return (501, "PORT to a privileged port is refused")
        self._close_data()
        data = _DataFactory(self, None)
        data.connector = self.factory.reactor.connectTCP(
            host, port, self._wrap_data(data), timeout=self.factory.data_timeout
        )
        self._data = data
        return (200, "active mode ok, connecting at the transfer command")

    def ftp_PORT(self, arg: str) -> Any:
        try:
            fields = [int(x) for x in arg.split(",")]
            if len(fields) != 6 or not all(0 <= x <= 255 for x in fields):
                raise ValueError
        except ValueError:
            return (501, "PORT h1,h2,h3,h4,p1,p2")
        host = ".".join(str(x) for x in fields[:4])
        return self._connect_active(host, fields[4] << 8 | fields[5])

    def ftp_EPRT(self, arg: str) -> Any:
        try:
            proto, host, port = _tftp.decodeExtendedAddress(arg)
            ipaddress.ip_address(host)
        except ValueError:
            return (501, "EPRT |proto|address|port|")
        if proto not in ("1", "2"):
            return (522, "network protocol not supported, use (1,2)")
        return self._connect_active(host, port)

    # -- transfers -------------------------------------------------------------------------

    def ftp_REST(self, arg: str) -> Any:
        if not arg.isdigit():
            return (501, "REST requires a byte offset")
        offset = int(arg)
        if offset and not self.binary:
            return (504, "REST with an offset needs TYPE I")
        self._rest = offset
        return (350, f"restarting at {offset}, send RETR, STOR or APPE")

    def _take_data(self) -> _DataFactory:
        data = self._data
        if self.factory.require_tls and self.shell.user is not None and not self._protect:
            self._close_data()
            raise FTPReply(521, "data connections must be protected: send PROT P")
        if data is None:
            raise FTPReply(425, "use PORT, EPRT, PASV or EPSV first")
        self._data = None
        return data

    def _take_rest(self) -> int:
        offset, self._rest = self._rest, 0
        return offset

    def ftp_RETR(self, arg: str) -> Any:
        offset = self._take_rest()
        path = self._path(arg)
        data = self._take_data()
        try:
            f = self.view.open_read(path, offset)
        except StoreError:
            data.close()
            raise
        transfer = _Download(self, data, f, offset)
        return self._start(transfer, f"opening {'BINARY' if self.binary else 'ASCII'} "
                                     f"data connection for {self._name(path)}")

    def ftp_STOR(self, arg: str) -> Any:
        return self._upload(arg, append=False)

    def ftp_APPE(self, arg: str) -> Any:
        return self._upload(arg, append=True)

    def _upload(self, arg: str, append: bool) -> Any:
        offset = self._take_rest()
        path = self._path(arg)
        data = self._take_data()
        try:
            if append:
                writer = self.view.open_write(path, append=True)
            elif offset:
                writer = self.view.open_write(path, offset=offset)
            else:
                writer = self.view.open_write(path)
        except StoreError:
            data.close()
            raise
        return self._start(_Upload(self, data, writer), f"ok to send data for {self._name(path)}")

    def ftp_STOU(self, arg: str = "") -> Any:
        self._take_rest()
        hint = None
        directory = self.cwd
        if arg:
            path = self._path(arg)
            directory, _, hint = path.rpartition("/")
            directory = directory or "/"
        data = self._take_data()
        try:
            writer = self.view.open_unique(directory, hint or "ftp-upload")
        except StoreError:
            data.close()
            raise
        return self._start(_Upload(self, data, writer), f"FILE: {self._name(writer.path)}",
                           done=f"transfer complete, stored as {self._name(writer.path)}")

    def _listing_args(self, arg: str) -> str:
        # Clients send ls flags (LIST -la, LIST -a /dir); they are ignored.
        words = arg.split(" ")
        while words and words[0].startswith("-"):
            words.pop(0)
        return " ".join(words)

    def ftp_LIST(self, arg: str = "") -> Any:
        return self._listing(self._listing_args(arg), "list")

    def ftp_NLST(self, arg: str = "") -> Any:
        return self._listing(self._listing_args(arg), "nlst")

    def ftp_MLSD(self, arg: str = "") -> Any:
        return self._listing(arg, "mlsd")

    def _listing(self, arg: str, kind: str) -> Any:
        self._take_rest()
        path = self._path(arg)
        data = self._take_data()
        try:
            info = self.view.stat(path)
            if info.is_dir:
                entries = self.view.list(path)
            elif kind == "mlsd":
                raise NotADirectory(path)
            else:
                entries = [info]
        except StoreError:
            data.close()
            raise
        owner = self.shell.user or "ftp"
        if kind == "list":
            lines = [list_line(i, owner) for i in entries]
        elif kind == "nlst":
            lines = [i.name for i in entries]
        else:
            lines = [f"{mlsx_facts(i, self.mlst_facts)} {i.name}" for i in entries]
        body = "".join(line + "\r\n" for line in lines).encode("utf-8", "surrogateescape")
        return self._start(_Listing(self, data, body), "here comes the listing")

    def _start(self, transfer: Any, opening: str,
               done: str = "transfer complete") -> defer.Deferred | tuple:
        self._transfer = transfer
        self.reply_line(150, opening)

        def finished(result: tuple) -> tuple:
            self._transfer = None
            if self.timeOut is None:
                self.setTimeout(self.factory.idle_timeout)
            if result[0] == 226 and len(result) == 1:
                return (226, done)
            return result

        outcome = transfer.run()
        if isinstance(outcome, tuple):
            # Done in this turn (a small file): no Deferred, and the idle
            # timer need not be stopped and restarted.
            return finished(outcome)
        # No idle timeout while a transfer runs.
        self.setTimeout(None)
        return outcome.addCallback(finished)

    def _abort_transfer(self) -> None:
        transfer = self._transfer
        transfer.aborted = True
        transfer.abort()

    def ftp_ABOR(self) -> Any:
        self._close_data()
        return (226, "no transfer to abort")


class _Transfer:
    """One transfer on one data connection; C{run} fires with the final reply."""

    aborted = False

    def __init__(self, session: FTPServer, data: _DataFactory) -> None:
        self.session = session
        self.data = data
        self.channel: DataChannel | None = None

    def progress(self) -> int:
        return 0

    def run(self) -> defer.Deferred | tuple:
        """Fire with the final reply, or give it when the transfer is done
        at once."""
        self.data.accept()
        d = self.data.wait()
        d.addCallbacks(self._connected, self._no_connection)
        return d

    def _no_connection(self, failure: Failure) -> tuple:
        self.cleanup()
        if self.aborted:
            self.session.reply_line(426, "transfer aborted")
            return (226, "abort successful")
        if self.data.refused is not None:
            return (522, self.data.refused)
        return (425, "cannot open data connection")

    def _ended(self, ok: tuple) -> tuple:
        """The reply once the data connection is gone."""
        if self.aborted:
            self.session.reply_line(426, "transfer aborted")
            return (226, "abort successful")
        if self.channel is not None and self.channel.refused is not None:
            return (522, self.channel.refused)
        return ok

    def _connected(self, channel: DataChannel) -> defer.Deferred:
        self.channel = channel
        return self.transfer(channel)

    def transfer(self, channel: DataChannel) -> defer.Deferred:
        raise NotImplementedError

    def cleanup(self) -> None:
        pass

    def abort(self) -> None:
        self.data.close()

    def _send_final(self, channel: DataChannel, data: bytes) -> defer.Deferred:
        """Send C{data} and close; fire with the reply. When the socket
        took it all at once, 226 goes now rather than a reactor turn later,
        when Twisted gets round to closing the socket."""
        if channel.send_final(data):
            return defer.succeed(self._ended((226,)))
        return channel.closed.addCallback(lambda _: self._ended((226,)))

    def _closed(self) -> defer.Deferred:
        """Close the data connection; fire when it is gone."""
        assert self.channel is not None
        if self.channel.transport is not None:
            self.channel.transport.loseConnection()
        return self.channel.closed


class _Listing(_Transfer):
    def __init__(self, session: FTPServer, data: _DataFactory, body: bytes) -> None:
        super().__init__(session, data)
        self.body = body

    def transfer(self, channel: DataChannel) -> defer.Deferred:
        return self._send_final(channel, self.body)


class _Download(_Transfer):
    def __init__(self, session: FTPServer, data: _DataFactory, file: Any, offset: int) -> None:
        super().__init__(session, data)
        self.file = file
        self.offset = offset
        self._sender: Any = None

    def progress(self) -> int:
        return getattr(self._sender, "sent", getattr(self._sender, "bytes_sent", 0))

    def cleanup(self) -> None:
        self.file.close()

    def run(self) -> defer.Deferred | tuple:
        done = self._send_small_at_once()
        return super().run() if done is None else done

    def _send_small_at_once(self) -> tuple | None:
        """
        The common case of many small files, done without a transport: a
        small binary file, on a plain passive port the client has already
        connected to, is sent on the bare socket with one read and one
        write, and the socket closed once the replies are out. When the
        socket does not take it all, the connection gets its transport and
        the rest goes the usual way.

        @return: the final reply, or None when this is not the case
        """
        port = self.data.listening_port
        if not (self.session.binary and isinstance(port, _PassivePort) and port.factory is self.data):
            return None  # ASCII, active mode, TLS or a memory reactor.
        size = self._small_size()
        waiting = port.take() if size is not None else None
        if waiting is None:
            return None
        sock, peer = waiting
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # Gone already: the send below finds out.
        data = os.pread(self.file.fileno(), size - self.offset, self.offset)
        sent = _send_now(sock, data)
        self.session.factory.stats.incr("bytes_out", sent)
        if sent < len(data):
            self.offset += sent
            port.serve(sock, peer)
            return None
        self.file.close()

        def close() -> None:
            sock.close()
            self.data.close()

        self.session.after_replies(close)
        return self._ended((226,))

    def transfer(self, channel: DataChannel) -> defer.Deferred:
        session = self.session
        sock = plain_tcp(channel.transport)
        reactor = session.factory.reactor
        size = self._small_size()
        if session.binary and size is not None:
            # One read and one write: cheaper than setting up either
            # streaming path for a file that fits a socket buffer.
            data = os.pread(self.file.fileno(), size - self.offset, self.offset)
            self.file.close()
            return self._send_final(channel, data)
        if (session.binary and sock is not None and session.factory.use_sendfile
                and hasattr(os, "sendfile") and hasattr(reactor, "addWriter")):
            self._sender = _Sendfile(reactor, sock, self.file, self.offset)
            d = self._sender.start()
            d.addCallback(lambda n: setattr(channel, "bytes_out", channel.bytes_out + n))
        else:
            from appnet.filesystem import FileProducer

            consumer: Any = channel if session.binary else _ASCIIEncoder(channel, upload=False)
            self._sender = FileProducer(self.file)
            d = self._sender.start(consumer, session.factory.cooperator)
        d.addCallbacks(self._sent, self._failed)
        return d

    def _small_size(self) -> int | None:
        """The file's size if what is left to send is small, else None."""
        try:
            size = os.fstat(self.file.fileno()).st_size
        except (OSError, ValueError, AttributeError):
            return None
        return size if size - self.offset <= SMALL_FILE else None

    def _sent(self, _: object) -> defer.Deferred:
        return self._closed().addCallback(lambda _: self._ended((226,)))

    def _failed(self, failure: Failure) -> Any:
        self.data.close()
        if self.aborted or (self.channel is not None and self.channel.refused):
            return self._ended((426,))
        if failure.check(StoreError):
            return (451, "local read error")
        return (426, "data connection closed, transfer aborted")

    def abort(self) -> None:
        if self._sender is not None:
            if isinstance(self._sender, _Sendfile):
                self._sender.done.cancel()
            else:
                self._sender.stopProducing()
        self.data.close()
        self.file.close()


class _Upload(_Transfer):
    def __init__(self, session: FTPServer, data: _DataFactory, writer: Any) -> None:
        super().__init__(session, data)
        self.writer = writer
        self.sink: Any = writer

    def progress(self) -> int:
        return self.writer.bytes_written

    def cleanup(self) -> None:
        self.writer.abort()

    def transfer(self, channel: DataChannel) -> defer.Deferred:
        if not self.session.binary:
            self.sink = _ASCIIEncoder(self.writer, upload=True)
        self.writer.registerProducer(channel.transport, True)
        channel.attach(self.sink)
        return channel.closed.addCallback(self._closed_by_peer)

    def _closed_by_peer(self, reason: BaseException) -> Any:
        if isinstance(self.sink, _ASCIIEncoder):
            self.sink.flush()
        self.writer.unregisterProducer()
        if self.writer.error is not None:
            self.writer.abort()
            return self.writer.close().addErrback(self._store_failed)
        if self.aborted or self.channel.refused is not None:
            # Keep what arrived, so that REST/APPE can resume it.
            self.writer.abort(keep_partial=self.channel.refused is None)
            return self._ended((426,))
        # Any close ends the upload, as vsftpd does by default: a TLS client
        # that skips close_notify is common, and plain TCP cannot tell.
        d = self.writer.close()
        return d.addCallbacks(lambda _: (226,), self._store_failed)

    def _store_failed(self, failure: Failure) -> tuple:
        failure.trap(StoreError)
        r = _store_reply(failure.value)
        return (r.code, r.text)

    def abort(self) -> None:
        self.data.close()


class FTPServerFactory(protocol.ServerFactory):
    """
    Builds L{FTPServer} sessions.

    @param portal: a twisted.cred portal serving C{IFTPShell} avatars
        (L{appnet.ftp.shell.FTPShell}); anonymous needs a checker for
        C{IAnonymous} in it
    @param anonymous: accept C{anonymous}/C{ftp} with any password
    @param tls_options: server TLS options for AUTH TLS and PROT P, or None
    @param implicit_tls: the listener is wrapped in TLS already (ftps)
    @param require_tls: users (not anonymous) must AUTH TLS and PROT P
    @param require_tls_session_reuse: refuse a protected data connection
        that does not resume the control connection's TLS session
    @param passive_ports: ports PASV/EPSV may listen on (empty: any)
    @param masquerade_address: IPv4 address to advertise in PASV replies
        (behind NAT)
    @param use_sendfile: send plain-TCP downloads with C{os.sendfile}
    @param cooperator: schedules chunked (TLS, ASCII) downloads; the global
        one by default (tests pass one driven by their clock)
    """

    protocol = FTPServer
    noisy = False

    def __init__(
        self,
        portal: Any,
        *,
        stats: ServiceStats | None = None,
        anonymous: bool = True,
        tls_options: Any = None,
        implicit_tls: bool = False,
        require_tls: bool = False,
        require_tls_session_reuse: bool = False,
        hostname: str = "localhost",
        idle_timeout: int = 600,
        data_timeout: int = 30,
        max_line: int = 4096,
        passive_ports: range | list[int] | None = None,
        masquerade_address: str | None = None,
        use_sendfile: bool = True,
        ascii_size_limit: int = 16 * 1024 * 1024,
        trace: bool = False,
        trace_emit: Callable[[str], None] | None = None,
        reactor: Any = None,
        cooperator: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.portal = portal
        self.cooperator = cooperator
        self.stats = stats or ServiceStats("ftp")
        self.anonymous = anonymous
        self.tls_options = tls_options
        self.implicit_tls = implicit_tls
        self.require_tls = require_tls
        self.require_tls_session_reuse = require_tls_session_reuse
        self.hostname = hostname
        self.greeting = f"{hostname} FTP server (appnet) ready"
        self.idle_timeout = idle_timeout
        self.data_timeout = data_timeout
        self.max_line = max_line
        self.passive_ports = passive_ports
        self.masquerade_address = masquerade_address
        self.use_sendfile = use_sendfile
        self.ascii_size_limit = ascii_size_limit
        self.trace = trace
        self.trace_emit = trace_emit
        self.reactor = reactor

    def buildProtocol(self, addr: Any) -> FTPServer:
        p = self.protocol()
        p.factory = self
        p.portal = self.portal
        return p

