"""
The TFTP client: L{get} and L{put}, Deferred-returning and cancellable.

    from appnet.tftp.client import get
    from appnet.tftp.machine import RequestedOptions

    result = await get("192.0.2.7", 69, "pxelinux.0", "/tmp/pxelinux.0",
                       options=RequestedOptions(blksize=1468, tsize=True))
    print(result.stats.file_bytes, result.stats.options)

Each call opens its own UDP port (the client's TID), sends the request to
the server's well-known port and locks onto the port of the server's first
valid answer (see L{appnet.tftp.machine}); a datagram from anywhere else is
answered with ERROR 5 and otherwise ignored.

A download into a path goes to a temporary file next to it, renamed into
place only when the last block has arrived: a failed or cancelled transfer
leaves the old file (if any) alone. The Deferred fires as soon as the file
is complete; the port stays open a little longer (the machine "dallies" to
repeat the final ACK should the server not have got it), until
L{TransferResult.closed} fires.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Union

from twisted.internet import abstract, defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from appnet.tftp._udp import ERROR_OPCODE, MachineDriver, listen_transfer_port, socket_sendto as _socket_sendto
from appnet.tftp.machine import (
    UNKNOWN_TID_DATAGRAM,
    Action,
    Close,
    Done,
    Failed,
    Receiver,
    RequestedOptions,
    Send,
    Sender,
    SetTimer,
    Sink,
    Source,
    Transfer,
    TransferError,
    TransferPolicy,
    TransferStats,
    error_datagram,
)
from appnet.tftp.wire import ErrorCode, Mode

__all__ = ["DEFAULT_CLIENT_POLICY", "TransferError", "TransferResult", "get", "put"]

_log = Logger(namespace="appnet.tftp.client")

DEFAULT_CLIENT_POLICY = TransferPolicy(timeout=1.0, retries=5, dally=2.0)
"""Timing of a client transfer unless told otherwise."""

Progress = Callable[[int, Union[int, None]], None]
"""C{progress(bytes_so_far, expected_total_or_None)}."""


@dataclass(frozen=True)
class TransferResult:
    """
    A finished transfer.

    @ivar stats: what it did (negotiated options, bytes, blocks, time)
    @ivar closed: fires when the local port is released
    """

    stats: TransferStats
    closed: defer.Deferred


class _LocalFile:
    """A download target path: a temporary file renamed into place on success."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, self.temp = tempfile.mkstemp(prefix=".tftp-", suffix=".part", dir=directory)
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self) -> None:
        self.file.close()
        os.replace(self.temp, self.path)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass


class _ClientTransfer(MachineDriver):
    """Drives one client machine over its own UDP port."""

    noisy = False  # no "Starting protocol" log lines per transfer

    def __init__(
        self,
        machine: Transfer,
        server: tuple[str, int],
        result: defer.Deferred,
        *,
        progress: Progress | None,
        local: _LocalFile | None,
        owned: Any,
        reactor: Any,
    ) -> None:
        self.machine = machine
        self.server = server
        self.peer: tuple[str, int] | None = None
        self.result = result
        self.progress = progress
        self._local = local
        self._owned = owned  # a file we opened and must close
        self._reactor = reactor
        self._port: Any = None
        self._sendto: Any = None
        self._timer: Any = None
        self._closed = False
        self._reported = -1
        self.closed: defer.Deferred[None] = defer.Deferred()

    def begin(self) -> None:
        interface = "::" if abstract.isIPv6Address(self.server[0]) else ""
        self._port = listen_transfer_port(
            self._reactor, self, interface, isinstance(self.machine, Receiver)
        )
        self._sendto = _socket_sendto(self._port)
        self._perform(self.machine.start(self._reactor.seconds()))

    def cancel(self) -> None:
        """Stop now: tell the server (once it is known) and clean up."""
        if self._closed:
            return
        if self.machine.established:
            self._send(error_datagram(ErrorCode.NOT_DEFINED, "transfer cancelled"))
        self._cleanup(success=False)
        self._release()

    # DatagramProtocol

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self._closed:
            return
        established = self.machine.established
        if (established and addr != self.peer) or (
            not established and addr[0] != self.server[0]
        ):
            if datagram[:2] != ERROR_OPCODE and addr[1] != 0:
                self._write(UNKNOWN_TID_DATAGRAM, addr)
            return
        try:
            actions = self.machine.datagram_received(datagram, self._reactor.seconds())
            if not established and self.machine.established:
                self.peer = addr  # lock on before any answer goes out
            self._perform(actions)
        except Exception:
            self._internal_error()

    # Actions

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if self._closed:
                return
            if isinstance(action, Send):
                self._send(action.datagram)
            elif isinstance(action, SetTimer):
                self._set_timer(action.deadline)
            elif isinstance(action, Done):
                self._report_progress()
                self._cleanup(success=True)
                if not self.result.called:
                    self.result.callback(TransferResult(action.stats, self.closed))
            elif isinstance(action, Failed):
                self._cleanup(success=False)
                if not self.result.called:
                    self.result.errback(action.error)
            elif isinstance(action, Close):
                self._release()
        self._report_progress()

    def _report_progress(self) -> None:
        done = self.machine.transferred
        if self.progress is not None and done != self._reported:
            self._reported = done
            self.progress(done, self.machine.expected_size)

    def _send(self, datagram: bytes) -> None:
        self._write(datagram, self.peer if self.peer is not None else self.server)

    def _cleanup(self, success: bool) -> None:
        local, self._local = self._local, None
        owned, self._owned = self._owned, None
        if owned is not None:
            owned.close()
        if local is not None:
            if success:
                local.commit()
            else:
                local.discard()

    def _internal_error(self) -> None:
        failure = Failure()
        _log.failure("TFTP client transfer failed", failure)
        if self.machine.established:
            self._send(error_datagram(ErrorCode.NOT_DEFINED, "client error"))
        self._cleanup(success=False)
        if not self.result.called:
            self.result.errback(failure)
        self._release()

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._sendto = None
        port, self._port = self._port, None
        d = defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
        d.addBoth(lambda _: self.closed.callback(None))


def _start(
    host: str,
    port: int,
    build: Callable[[], tuple[Transfer, _LocalFile | None, Any]],
    progress: Progress | None,
    reactor: Any,
) -> defer.Deferred[TransferResult]:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    transfer: list[_ClientTransfer] = []

    def cancel(d: defer.Deferred) -> None:
        if transfer:
            transfer[0].cancel()

    result: defer.Deferred[TransferResult] = defer.Deferred(cancel)

    def resolved(address: str) -> None:
        if result.called:
            return  # cancelled while resolving
        machine, local, owned = build()
        t = _ClientTransfer(
            machine, (address, port), result,
            progress=progress, local=local, owned=owned, reactor=reactor,
        )
        transfer.append(t)
        try:
            t.begin()
        except BaseException:
            t._cleanup(success=False)
            raise

    if abstract.isIPAddress(host) or abstract.isIPv6Address(host):
        address: defer.Deferred = defer.succeed(host)
    else:
        address = reactor.resolve(host)
    address.addCallback(resolved)
    address.addErrback(lambda f: None if result.called else result.errback(f))
    return result


def get(
    host: str,
    port: int,
    remote: str,
    local: str | os.PathLike | Sink,
    *,
    mode: Mode | str = Mode.OCTET,
    options: RequestedOptions = RequestedOptions(),
    policy: TransferPolicy = DEFAULT_CLIENT_POLICY,
    progress: Progress | None = None,
    reactor: Any = None,
) -> defer.Deferred[TransferResult]:
    """
    Download C{remote} from a TFTP server.

    @param host: server name or IP address
    @param port: its well-known port (69; appnet's default is 10069)
    @param remote: the file name to ask for
    @param local: a path (written via a temporary file, renamed into place
        on success) or any object with C{write(bytes)}
    @param mode: C{"octet"} (default) or C{"netascii"}
    @param options: RFC 2347 options to ask for (blksize, windowsize,
        timeout, tsize)
    @param policy: timing, retries and C{max_size}
    @param progress: called with C{(bytes_so_far, tsize_or_None)} as blocks
        arrive
    @return: a cancellable Deferred firing with a L{TransferResult}; it
        fails with a L{TransferError} (L{RemoteError} for the server's
        ERROR, e.g. code 1 "file not found"; L{TimedOut}; ...)
    """
    mode = Mode(mode)

    def build() -> tuple[Transfer, _LocalFile | None, Any]:
        target: _LocalFile | None = None
        sink: Any = local
        if isinstance(local, (str, os.PathLike)):
            target = sink = _LocalFile(local)
        try:
            machine = Receiver.get(remote, sink, mode=mode, options=options, policy=policy)
        except BaseException:
            if target is not None:
                target.discard()
            raise
        return machine, target, None

    return _start(host, port, build, progress, reactor)


def put(
    host: str,
    port: int,
    remote: str,
    local: str | os.PathLike | Source,
    *,
    size: int | None = None,
    mode: Mode | str = Mode.OCTET,
    options: RequestedOptions = RequestedOptions(),
    policy: TransferPolicy = DEFAULT_CLIENT_POLICY,
    progress: Progress | None = None,
    reactor: Any = None,
) -> defer.Deferred[TransferResult]:
    """
    Upload to C{remote} on a TFTP server.

    @param local: a path, or any object with C{read(n)} (then give C{size}
        to announce it with C{tsize})
    @param size: the size of C{local} when it is not a path
    @return: a cancellable Deferred firing with a L{TransferResult} when
        the server has acknowledged the last block
    @raise ValueError: (through the Deferred) C{tsize} asked without a
        known size, or in netascii mode
    """
    mode = Mode(mode)

    def build() -> tuple[Transfer, _LocalFile | None, Any]:
        owned = None
        source: Any = local
        known = size
        if isinstance(local, (str, os.PathLike)):
            owned = source = open(local, "rb")
            known = os.fstat(owned.fileno()).st_size
        try:
            machine = Sender.put(
                remote, source, size=known, mode=mode, options=options, policy=policy
            )
        except BaseException:
            if owned is not None:
                owned.close()
            raise
        return machine, None, owned

    return _start(host, port, build, progress, reactor)

