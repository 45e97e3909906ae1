"""
The TFTP server: a thin Twisted layer over L{appnet.tftp.machine}.

Two kinds of socket, as RFC 1350 wants::

    well-known port (69, appnet 10069)   TFTPServerProtocol: requests only
    one ephemeral port per transfer      _ServerTransfer: drives one machine

L{TFTPServerProtocol} only reads datagrams off the well-known port and hands
them to its L{TFTPServerFactory}, which holds the policy (root, writable,
limits), the file store view, the stats and the live transfers, decides on
each request and starts a L{_ServerTransfer} on a fresh port (the server's
TID) for each one it accepts.

What the factory answers on the well-known port:

  - RRQ/WRQ accepted: nothing from this port; the transfer's own port
    answers (OACK, DATA 1 or ACK 0).
  - RRQ/WRQ refused: one ERROR from this port (1 not found, 2 access
    violation, 3 disk full, 6 file exists, 0 for limits and our own faults,
    4 for mail mode).
  - the same request again from the same client address and port while its
    transfer is alive: nothing (it is the client's retransmission).
  - a malformed datagram, or a DATA/ACK/OACK: ERROR 4 (RFC 1350: a packet
    that cannot be explained). An ERROR, or a datagram from port 0: nothing.

Files come from an L{appnet.filesystem.IFileView} (the anonymous view:
C{public/}, and the C{/incoming} drop box when the store has one). Reads
are read-only and stream: the machine reads one block at a time from the
open file. Writes, only when C{writable}, create new files (never replace)
under C{upload_dir}, through the store's L{IFileWriter}, committed when the
last block has arrived and before its ACK is sent.
"""

from __future__ import annotations

import errno
import os
import posixpath
from typing import Any, Callable

from twisted.internet import defer, error as internet_error
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from appnet.errors import (
    NotFound,
    PathOutsideRoot,
    PermissionDenied,
    QuotaExceeded,
    StoreError,
)
from appnet.filesystem.interfaces import (
    AlreadyExists,
    IFileView,
    IsADirectory,
    NotADirectory,
)
from appnet.filesystem.paths import normalize_virtual, split_virtual
from appnet.stats import ServiceStats
from appnet.tftp import wire
from appnet.tftp._threaded import TransferThread, bind_transfer_socket, threads_supported
from appnet.tftp._udp import ERROR_OPCODE, MachineDriver, MAX_PACKET_SIZE, listen_transfer_port, socket_sendto as _socket_sendto
from appnet.tftp.machine import (
    UNKNOWN_TID_DATAGRAM,
    Action,
    Close,
    Done,
    Failed,
    Receiver,
    Send,
    Sender,
    SetTimer,
    State,
    Transfer,
    TransferPolicy,
    TransferStats,
    error_datagram,
)
from appnet.tftp.wire import DecodeError, ErrorCode, Mode, ReadRequest, WriteRequest

__all__ = [
    "DEFAULT_SERVER_POLICY",
    "SERVER_WINDOW_BYTES",
    "TFTPServerFactory",
    "TFTPServerProtocol",
    "describe_transfer",
    "error_for_store_error",
]

_log = Logger(namespace="appnet.tftp")
_transcript_log = Logger(namespace="appnet.tftp.transcript")

SERVER_WINDOW_BYTES = 64 * 1024
"""The server's bound on one window (C{blksize} x C{windowsize}): a burst
that fits the default Linux receive buffer (208 KiB, counted with each
datagram's kernel overhead, which roughly doubles a 64 KiB one). A larger
window overflows a client that did not grow its buffer, and every overflow
costs a timeout: atftp with blksize 65464 and windowsize 16 fell from 240
MB/s to under 1 MB/s with 16 blocks granted, and 2 blocks (a 128 KiB bound)
still cost it a 50 ms stall in most downloads (405 against 583 MB/s when
granted 1). blksize 1468 keeps windowsize 16; blksize 65464 gets 1."""

DEFAULT_SERVER_POLICY = TransferPolicy(max_window_bytes=SERVER_WINDOW_BYTES)
"""A server's policy unless told otherwise."""


def error_for_store_error(e: StoreError) -> tuple[int, str]:
    """
    The TFTP error code and message for a store error.

    @return: C{(code, message)}; the message never names a host path.
    """
    if isinstance(e, (NotFound, IsADirectory, NotADirectory)):
        return ErrorCode.FILE_NOT_FOUND, "file not found"
    if isinstance(e, PathOutsideRoot):
        return ErrorCode.ACCESS_VIOLATION, "access violation: path outside the TFTP root"
    if isinstance(e, PermissionDenied):
        return ErrorCode.ACCESS_VIOLATION, "access violation"
    if isinstance(e, QuotaExceeded):
        return ErrorCode.DISK_FULL, "disk full or allocation exceeded"
    if isinstance(e, AlreadyExists):
        return ErrorCode.FILE_EXISTS, "file already exists"
    return ErrorCode.NOT_DEFINED, "cannot open the file"


def printable(text: str) -> str:
    """C{text} with control characters (and undecodable bytes) escaped, for one log line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def describe_transfer(
    request: ReadRequest | WriteRequest, path: str, stats: TransferStats, outcome: str
) -> str:
    """
    The one transcript line of a finished transfer, e.g.::

        RRQ /pxelinux.0 octet blksize=1468 windowsize=16 tsize=26828:
        26828 bytes, 19 blocks, 0 resent, 0.021 s: ok

    (on one line).
    """
    kind = "RRQ" if isinstance(request, ReadRequest) else "WRQ"
    options = stats.options
    agreed = [f"blksize={options.blksize}"]
    if options.windowsize != 1:
        agreed.append(f"windowsize={options.windowsize}")
    if options.timeout is not None:
        agreed.append(f"timeout={options.timeout}")
    if options.tsize is not None:
        agreed.append(f"tsize={options.tsize}")
    return (
        f"{kind} {printable(path)} {request.mode.value} {' '.join(agreed)}: "
        f"{stats.file_bytes} bytes, {stats.blocks} blocks, "
        f"{stats.retransmissions} resent, {stats.duration:.3f} s: {outcome}"
    )


def _outcome(action: Done | Failed) -> str:
    """The end of a transcript line for a machine's L{Done} or L{Failed}."""
    if isinstance(action, Done):
        return "ok"
    return f"failed: ERROR {int(action.error.code)} {action.error.message}"


class _WriterSink:
    """
    A L{Sink<appnet.tftp.machine.Sink>} over an L{IFileWriter}, whose
    C{write} never raises: its C{error} becomes the C{OSError} the machine
    turns into an ERROR (quota: 3, permission: 2).
    """

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def write(self, data: bytes) -> None:
        self.writer.write(data)
        failure = self.writer.error
        if failure is not None:
            if isinstance(failure, QuotaExceeded):
                code = errno.ENOSPC
            elif isinstance(failure, PermissionDenied):
                code = errno.EACCES
            else:
                code = errno.EIO
            raise OSError(code, os.strerror(code))


class _ServerTransfer(MachineDriver):
    """
    One transfer on its own ephemeral port (the server's TID): feeds the
    machine the client's datagrams and timer expiries, and carries out its
    actions.
    """

    noisy = False  # no "Starting protocol" log lines per transfer

    def __init__(
        self,
        factory: TFTPServerFactory,
        machine: Transfer,
        peer: tuple[str, int],
        request: ReadRequest | WriteRequest,
        request_bytes: bytes,
        path: str,
        source: Any = None,
        writer: Any = None,
    ) -> None:
        self.factory = factory
        self.machine = machine
        self.peer = peer
        self.request = request
        self.request_bytes = request_bytes
        self.path = path
        self._source = source
        self._writer = writer
        self._reactor = factory.reactor
        self._timer: Any = None
        self._port: Any = None
        self._sendto: Any = None
        self._paused = False
        self._closed = False
        self.closed: defer.Deferred[None] = defer.Deferred()

    # Life cycle

    def begin(self, interface: str) -> None:
        """
        Listen on a fresh port and start the machine.

        @raise internet_error.CannotListenError: no port could be bound
        """
        self._port = listen_transfer_port(
            self._reactor, self, interface, isinstance(self.machine, Receiver)
        )
        self._sendto = _socket_sendto(self._port)
        self._perform(self.machine.start(self._reactor.seconds()))
        self.machine.read_ahead()

    def adopt(self, sock: Any) -> None:
        """
        Carry on a started machine on C{sock}, the socket of a transfer
        thread that let it go (L{_ThreadedServerTransfer}); the reactor
        takes its own copy of the socket.
        """
        self._port = self._reactor.adoptDatagramPort(
            sock.fileno(), sock.family, self, MAX_PACKET_SIZE
        )
        self._sendto = _socket_sendto(self._port)
        deadline = self.machine.deadline
        if deadline is not None:
            self._set_timer(deadline)

    def abort(self, code: int = ErrorCode.NOT_DEFINED, message: str = "server shutting down") -> None:
        """Give up now: tell the client, undo any upload, release the port."""
        if self._closed:
            return
        self._send(error_datagram(code, message))
        self._release()

    # DatagramProtocol

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            if addr != self.peer:
                # RFC 1350: answer a stranger with ERROR 5, never disturb the
                # transfer; never answer an ERROR (two servers could loop).
                self.factory.stats.incr("unknown_tid")
                if datagram[:2] != ERROR_OPCODE and addr[1] != 0:
                    self._write(UNKNOWN_TID_DATAGRAM, addr)
                return
            if self._closed or self._paused:
                return
            machine = self.machine
            now = self._reactor.seconds()
            following = machine.fast_ack(datagram, now)
            if following is None:
                self._perform(machine.datagram_received(datagram, now))
            else:
                self._write(following, addr)
                self._set_timer(machine.deadline)
            machine.read_ahead()
        except Exception:
            self._internal_error()

    # Actions

    def _perform(self, actions: list[Action]) -> None:
        for index, action in enumerate(actions):
            if self._closed:
                return
            if isinstance(action, Send):
                self._send(action.datagram)
            elif isinstance(action, SetTimer):
                self._set_timer(action.deadline)
            elif isinstance(action, Done):
                if self._writer is not None:
                    # Commit before the final ACK goes out (the machine put
                    # Done first for this); carry on when the file is in place.
                    self._paused = True
                    d = self._writer.close()
                    rest = actions[index + 1:]
                    d.addCallbacks(
                        lambda _: self._committed(action.stats, rest),
                        lambda f: self._commit_failed(action.stats, f),
                    )
                    return
                self.factory.transfer_done(self, action.stats, "ok")
            elif isinstance(action, Failed):
                if self._writer is not None:
                    self._writer.abort()
                self.factory.transfer_done(self, action.stats, _outcome(action))
            elif isinstance(action, Close):
                self._release()

    def _committed(self, stats: TransferStats, rest: list[Action]) -> None:
        self._paused = False
        self.factory.transfer_done(self, stats, "ok")
        self._perform(rest)

    def _commit_failed(self, stats: TransferStats, failure: Any) -> None:
        self._paused = False
        e = failure.value
        if isinstance(e, StoreError):
            code, message = error_for_store_error(e)
        else:
            _log.failure("committing a TFTP upload failed", failure)
            code, message = ErrorCode.NOT_DEFINED, "cannot store the file"
        self.factory.transfer_done(self, stats, f"failed: ERROR {code} {message}")
        self._send(error_datagram(code, message))
        self._release()

    def _internal_error(self) -> None:
        _log.failure("TFTP transfer with {peer} failed", peer=self.peer)
        self.factory.stats.incr("errors")
        if self._writer is not None:
            self._writer.abort()
        if not self._closed:
            self._send(error_datagram(ErrorCode.NOT_DEFINED, "internal server error"))
            self._release()

    def _send(self, datagram: bytes) -> None:
        self._write(datagram, self.peer)

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._source is not None:
            self._source.close()
        if self._writer is not None:
            self._writer.abort()  # a no-op once committed
        self.factory.transfer_closed(self)
        self._sendto = None
        port, self._port = self._port, None
        d = defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
        d.addBoth(lambda _: self.closed.callback(None))


class _ThreadedServerTransfer:
    """
    A download on a thread of its own (see L{appnet.tftp._threaded}): the
    thread drives the machine on the transfer's socket; this object is the
    transfer's face in the reactor thread, with L{_ServerTransfer}'s
    interface for the factory (C{begin}, C{abort}, C{closed}), and
    C{release} to move the transfer onto the reactor: a L{_ServerTransfer}
    adopts the socket and the machine, and takes this one's place.
    """

    def __init__(
        self,
        factory: TFTPServerFactory,
        machine: Sender,
        peer: tuple[str, int],
        request: ReadRequest,
        request_bytes: bytes,
        path: str,
        source: Any,
    ) -> None:
        self.factory = factory
        self.machine = machine
        self.peer = peer
        self.request = request
        self.request_bytes = request_bytes
        self.path = path
        self._source = source
        self._sock: Any = None
        self._thread: TransferThread | None = None
        self._closed = False
        self._abort: tuple[int, str] | None = None
        self._crashed = False
        self.closed: defer.Deferred[None] = defer.Deferred()

    def begin(self, interface: str) -> None:
        """
        Bind a fresh port and start the thread.

        @raise internet_error.CannotListenError: no port could be bound
        """
        try:
            self._sock = bind_transfer_socket(interface)
        except OSError as e:
            raise internet_error.CannotListenError(interface, 0, e) from e
        reactor = self.factory.reactor
        self._thread = TransferThread(
            self.machine, self._sock, self.peer,
            clock=reactor.seconds,
            busy_poll=self.factory.busy_poll,
            alone=lambda: len(self.factory.transfers) <= 1,
            call_from_thread=reactor.callFromThread,
            on_outcome=self._outcome,
            on_unknown_tid=lambda: self.factory.stats.incr("unknown_tid"),
            on_crash=self._on_crash,
            on_exit=self._exited,
        )
        self._thread.start()

    def abort(self, code: int = ErrorCode.NOT_DEFINED, message: str = "server shutting down") -> None:
        """Have the thread tell the client and end; C{closed} fires when it has."""
        if self._closed:
            return
        self._abort = (code, message)
        if self._thread is None:
            self._exited()  # never started
        else:
            self._thread.stop(code, message)

    def release(self) -> None:
        """Move the transfer onto the reactor (see L{TransferThread.release})."""
        if not self._closed and self._thread is not None:
            self._thread.release()

    def _outcome(self, action: Done | Failed) -> None:
        self.factory.transfer_done(self, action.stats, _outcome(action))

    def _on_crash(self, failure: Any) -> None:
        self._crashed = True
        _log.failure("TFTP transfer with {peer} failed", failure, peer=self.peer)
        self.factory.stats.incr("errors")
        self._send_error(ErrorCode.NOT_DEFINED, "internal server error")

    def _send_error(self, code: int, message: str) -> None:
        try:
            self._sock.sendto(error_datagram(code, message), self.peer)
        except OSError:
            pass

    def _exited(self) -> None:
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is not None:
            thread.join()
            if thread.released and not thread.stopped and self.machine.state is not State.CLOSED:
                # The thread let the machine go without a word to the peer.
                if self._abort is not None:
                    self._send_error(*self._abort)
                elif not self._crashed and self._hand_off():
                    return
        if self._sock is not None:
            self._sock.close()
        self._source.close()
        self.factory.transfer_closed(self)
        self.closed.callback(None)

    def _hand_off(self) -> bool:
        """Carry the transfer on on the reactor; C{False} if that failed."""
        successor = _ServerTransfer(
            self.factory, self.machine, self.peer, self.request, self.request_bytes,
            self.path, source=self._source,
        )
        try:
            successor.adopt(self._sock)
        except Exception:
            _log.failure("moving a TFTP transfer onto the reactor failed")
            self.factory.stats.incr("errors")
            self._send_error(ErrorCode.NOT_DEFINED, "internal server error")
            return False
        self._sock.close()
        self.factory.transfer_moved(self, successor)
        successor.closed.chainDeferred(self.closed)
        return True


class TFTPServerProtocol(DatagramProtocol):
    """
    The well-known port: hands every datagram to the factory (see the module
    docstring for what is answered).
    """

    def __init__(self, factory: TFTPServerFactory) -> None:
        self.factory = factory

    def startProtocol(self) -> None:
        # Requests may fill a datagram (see appnet.tftp.wire).
        self.transport.maxPacketSize = MAX_PACKET_SIZE

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            self.factory.request_received(datagram, addr, self)
        except Exception:
            # Nothing a peer sends may raise out of here.
            _log.failure("TFTP request from {addr} failed", addr=addr)
            self.factory.stats.incr("errors")
            self.answer(error_datagram(ErrorCode.NOT_DEFINED, "internal server error"), addr)

    def answer(self, datagram: bytes, addr: Any) -> None:
        """Send one datagram from the well-known port (refusals only)."""
        if self.transport is None or addr[1] == 0:
            return
        try:
            self.transport.write(datagram, addr)
        except (OSError, internet_error.MessageLengthError):
            pass

    @property
    def interface(self) -> str:
        """The address this port is bound to; transfer ports bind the same."""
        return self.transport.getHost().host if self.transport is not None else ""


class TFTPServerFactory:
    """
    Shared state and policy of a TFTP server (any number of well-known
    ports): the file view, what may be read and written, limits, stats and
    the live transfers.

    @param view: the anonymous L{IFileView} of the filesystem store
    @param root: virtual directory requests are relative to
    @param writable: accept WRQ (create-only, under C{upload_dir})
    @param upload_dir: virtual directory uploads go to; a WRQ name that
        already lies under it (relative to C{root}) is taken as it is, any
        other is placed in it
    @param policy: timing and limits of each transfer (C{max_size} caps
        uploads)
    @param max_transfers: live transfers in all
    @param max_transfers_per_client: live transfers per client IP address
    @param stats: counters: C{transfers}, C{transfers_failed},
        C{transfers_active}, C{transfers_threaded} (of C{transfers}: begun
        on a thread), C{bytes_out} and C{bytes_in} (file octets),
        C{requests_refused}, C{duplicate_requests}, C{unknown_tid},
        C{malformed}, C{errors} (refusals, failed transfers, our bugs)
    @param trace: log one transcript line per transfer; C{trace_emit}
        receives each line instead when given
    @param max_threads: a download runs on a thread of its own (see
        L{appnet.tftp._threaded}) while no more than this many transfers
        are live; when more are, the threaded ones move onto the reactor
        (which adopts their sockets). Uploads always run on the reactor.
        0: everything on the reactor. Needs a reactor with
        C{callFromThread} and C{adoptDatagramPort}, and a POSIX platform.
    @param busy_poll: seconds a transfer thread polls for the peer's answer
        after sending, before it sleeps (0: never); only while it is the
        only live transfer
    @param reactor: provides C{listenUDP}, C{callLater} and C{seconds}
    """

    def __init__(
        self,
        view: IFileView,
        *,
        root: str = "/",
        writable: bool = False,
        upload_dir: str = "/incoming",
        policy: TransferPolicy = DEFAULT_SERVER_POLICY,
        max_transfers: int = 1000,
        max_transfers_per_client: int = 10,
        stats: ServiceStats | None = None,
        trace: bool = False,
        trace_emit: Callable[[str], None] | None = None,
        max_threads: int = 0,
        busy_poll: float = 0.0,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.view = view
        self.root = normalize_virtual(root)
        self.writable = writable
        self.upload_dir = normalize_virtual(upload_dir)
        self.policy = policy
        self.max_transfers = max_transfers
        self.max_transfers_per_client = max_transfers_per_client
        self.stats = stats or ServiceStats("tftp")
        self.trace = trace
        self.trace_emit = trace_emit
        self.reactor = reactor
        self.max_threads = max_threads if threads_supported() else 0
        self.busy_poll = busy_poll
        self.transfers: dict[tuple[str, int], _ServerTransfer | _ThreadedServerTransfer] = {}
        self._per_host: dict[str, int] = {}
        # Threaded transfers until their thread has exited (an aborted one
        # leaves `transfers` at once when a new request takes its place).
        self._threaded: set[_ThreadedServerTransfer] = set()

    def buildProtocol(self, addr: Any = None) -> TFTPServerProtocol:
        """A protocol for one more well-known port."""
        return TFTPServerProtocol(self)

    # Requests

    def request_received(
        self, datagram: bytes, addr: tuple[str, int], listener: TFTPServerProtocol
    ) -> None:
        """Decide on one datagram that reached a well-known port."""
        if addr[1] == 0:
            return  # cannot be answered
        live = self.transfers.get(addr)
        if live is not None and live.request_bytes == datagram:
            self.stats.incr("duplicate_requests")
            return
        try:
            packet = wire.decode(datagram)
        except DecodeError:
            # A short, fixed answer: the port must not be a useful amplifier.
            self.stats.incr("malformed")
            listener.answer(error_datagram(ErrorCode.ILLEGAL_OPERATION, "malformed request"), addr)
            return
        if isinstance(packet, wire.Error):
            return
        if not isinstance(packet, (ReadRequest, WriteRequest)):
            self.stats.incr("malformed")
            listener.answer(
                error_datagram(ErrorCode.ILLEGAL_OPERATION, "only RRQ and WRQ are taken on this port"),
                addr,
            )
            return
        refusal = self._check_limits(addr)
        if refusal is None and packet.mode is Mode.MAIL:
            refusal = (ErrorCode.ILLEGAL_OPERATION, "mail mode is not supported")
        if refusal is not None:
            self._refuse(listener, addr, packet, refusal)
            return
        try:
            if isinstance(packet, ReadRequest):
                transfer = self._open_read(packet, datagram, addr)
            else:
                transfer = self._open_write(packet, datagram, addr)
        except StoreError as e:
            self._refuse(listener, addr, packet, error_for_store_error(e))
            return
        except _Refused as e:
            self._refuse(listener, addr, packet, (e.code, e.message))
            return
        if live is not None:
            # The client reused its port for a new request: it has given up
            # on the old transfer.
            live.abort(ErrorCode.NOT_DEFINED, "superseded by a new request")
        self._track(transfer)
        try:
            transfer.begin(listener.interface)
        except internet_error.CannotListenError:
            _log.failure("no UDP port for a TFTP transfer")
            transfer.abort()
            self._refuse(listener, addr, packet, (ErrorCode.NOT_DEFINED, "server busy, try again later"))
            return
        if len(self.transfers) > self.max_threads:
            # Several transfers share the process: one event loop serves
            # them with less CPU than threads taking turns at the GIL.
            for threaded in list(self._threaded):
                threaded.release()

    def _check_limits(self, addr: tuple[str, int]) -> tuple[int, str] | None:
        if len(self.transfers) >= self.max_transfers:
            return ErrorCode.NOT_DEFINED, "server busy, try again later"
        if self._per_host.get(addr[0], 0) >= self.max_transfers_per_client:
            return ErrorCode.NOT_DEFINED, "too many transfers from your address"
        return None

    def _refuse(
        self,
        listener: TFTPServerProtocol,
        addr: tuple[str, int],
        request: ReadRequest | WriteRequest,
        refusal: tuple[int, str],
    ) -> None:
        code, message = refusal
        self.stats.incr("requests_refused")
        self.stats.incr("errors")
        kind = "RRQ" if isinstance(request, ReadRequest) else "WRQ"
        _log.info(
            "TFTP {kind} {filename!r} from {host}:{port} refused: ERROR {code} {message}",
            kind=kind, filename=request.filename, host=addr[0], port=addr[1],
            code=int(code), message=message,
        )
        self._transcript(
            addr, f"{kind} {printable(request.filename)}: refused: ERROR {int(code)} {message}"
        )
        listener.answer(error_datagram(code, message), addr)

    def _resolve(self, base: str, filename: str) -> str:
        # "/pxelinux.0" and "pxelinux.0" both mean the file in the root, as
        # with tftpd-hpa -s. The name is normalised on its own first, so
        # that ".." can never climb out of the TFTP root (into the rest of
        # public/); the store rejects NUL, "\\" and symlink escapes.
        parts = split_virtual(filename)
        return normalize_virtual("/".join(parts) or ".", base)

    def _open_read(
        self, request: ReadRequest, datagram: bytes, addr: tuple[str, int]
    ) -> _ServerTransfer | _ThreadedServerTransfer:
        path = self._resolve(self.root, request.filename)
        source = self.view.open_read(path)
        try:
            size = os.fstat(source.fileno()).st_size
            machine = Sender.serve(request, source, size=size, policy=self.policy)
        except BaseException:
            source.close()
            raise
        if len(self.transfers) < self.max_threads and len(self._threaded) < self.max_threads:
            return _ThreadedServerTransfer(self, machine, addr, request, datagram, path, source)
        return _ServerTransfer(self, machine, addr, request, datagram, path, source=source)

    def _open_write(self, request: WriteRequest, datagram: bytes, addr: tuple[str, int]) -> _ServerTransfer:
        if not self.writable:
            raise _Refused(ErrorCode.ACCESS_VIOLATION, "access violation: this server is read-only")
        path = self._resolve(self.root, request.filename)
        if not (path == self.upload_dir or path.startswith(self.upload_dir.rstrip("/") + "/")):
            path = self._resolve(self.upload_dir, posixpath.basename(request.filename.rstrip("/")) or ".")
        writer = self.view.open_write(path, exclusive=True)
        machine = Receiver.serve(request, _WriterSink(writer), policy=self.policy)
        return _ServerTransfer(self, machine, addr, request, datagram, path, writer=writer)

    # Bookkeeping

    def _track(self, transfer: _ServerTransfer | _ThreadedServerTransfer) -> None:
        if isinstance(transfer, _ThreadedServerTransfer):
            self._threaded.add(transfer)
            self.stats.incr("transfers_threaded")
        self.transfers[transfer.peer] = transfer
        host = transfer.peer[0]
        self._per_host[host] = self._per_host.get(host, 0) + 1
        self.stats.incr("transfers")
        self.stats.incr("transfers_active")

    def transfer_done(
        self, transfer: _ServerTransfer | _ThreadedServerTransfer, stats: TransferStats, outcome: str
    ) -> None:
        """Count and record a transfer that succeeded or failed."""
        key = "bytes_out" if isinstance(transfer.request, ReadRequest) else "bytes_in"
        self.stats.incr(key, stats.file_bytes)
        line = describe_transfer(transfer.request, transfer.path, stats, outcome)
        if outcome != "ok":
            self.stats.incr("transfers_failed")
            self.stats.incr("errors")
            _log.info("TFTP transfer with {host}:{port} failed: {line}",
                      host=transfer.peer[0], port=transfer.peer[1], line=line)
        self._transcript(transfer.peer, line)

    def transfer_moved(self, transfer: _ThreadedServerTransfer, successor: _ServerTransfer) -> None:
        """A threaded transfer carries on on the reactor as C{successor}."""
        self._threaded.discard(transfer)
        if self.transfers.get(transfer.peer) is transfer:
            self.transfers[transfer.peer] = successor

    def transfer_closed(self, transfer: _ServerTransfer | _ThreadedServerTransfer) -> None:
        """Forget a transfer whose port is being released."""
        if isinstance(transfer, _ThreadedServerTransfer):
            self._threaded.discard(transfer)
        if self.transfers.get(transfer.peer) is transfer:
            del self.transfers[transfer.peer]
        host = transfer.peer[0]
        count = self._per_host.get(host, 0) - 1
        if count > 0:
            self._per_host[host] = count
        else:
            self._per_host.pop(host, None)
        self.stats.incr("transfers_active", -1)

    def _transcript(self, addr: tuple[str, int], line: str) -> None:
        if not self.trace:
            return
        if self.trace_emit is not None:
            self.trace_emit(line)
        else:
            _transcript_log.info("{peer} {line}", peer=f"{addr[0]}:{addr[1]}", line=line)

    def stop(self) -> defer.Deferred[None]:
        """
        Abort every live transfer (server shutdown).

        @return: a Deferred firing when every transfer port is released
        """
        live = set(self.transfers.values()) | self._threaded
        for transfer in live:
            transfer.abort()
        return defer.DeferredList([t.closed for t in live]).addCallback(lambda _: None)


class _Refused(Exception):
    """A request the policy refuses (not a store error)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
