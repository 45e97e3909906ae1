"""
UDP details shared by the TFTP server and client (private).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import error as internet_error
from twisted.internet.protocol import DatagramProtocol

from appnet.tftp import wire

MAX_PACKET_SIZE = 65536
"""Read size of every TFTP socket: above any DATA with the largest blksize
(Twisted's default of 8192 would truncate large blocks)."""

ERROR_OPCODE = wire.encode(wire.Error(0, ""))[:2]
"""The first two octets of an ERROR: never answered (two servers could loop)."""

RECEIVE_BUFFER = 4 * 1024 * 1024
"""Receive buffer asked for by a socket that receives DATA: a window of
16 blocks of 65464 octets arrives in one burst, and the usual 208 KiB
default would drop most of it. The kernel caps it at
C{net.core.rmem_max}."""


def listen_transfer_port(
    reactor: Any, protocol: Any, interface: str, receives_data: bool
) -> Any:
    """
    Listen on a fresh ephemeral UDP port (a TID) for one transfer.

    @param receives_data: the transfer receives DATA (a receiver): grow the
        receive buffer (see L{RECEIVE_BUFFER})
    @return: the listening port
    @raise twisted.internet.error.CannotListenError: no port could be bound
    """
    port = reactor.listenUDP(0, protocol, interface=interface, maxPacketSize=MAX_PACKET_SIZE)
    if receives_data:
        handle = getattr(port, "getHandle", None)
        sock = handle() if handle is not None else None
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            except OSError:
                pass  # the default buffer only costs throughput
    return port


def socket_sendto(port: Any) -> Any:
    """
    The C{sendto} of a listening port's socket, or a wrapper around
    C{port.write} when the port has no socket (test fakes). The wrapper
    writes a copy, as a socket would: a machine may refill a datagram's
    buffer once it is acknowledged (see L{appnet.tftp.machine}).
    """
    handle = getattr(port, "getHandle", None)
    sock = handle() if handle is not None else None
    if isinstance(sock, socket.socket):
        return sock.sendto
    write = port.write
    return lambda datagram, addr: write(bytes(datagram), addr)


class MachineDriver(DatagramProtocol):
    """
    What the server's and the client's transfer protocols share in driving
    a sans-IO L{appnet.tftp.machine} transfer: one lazily re-armed timer
    and sends through the socket's own C{sendto}.

    Subclasses set C{machine}, C{_reactor} and C{_sendto}, and define
    C{_perform(actions)} and C{_internal_error()}.
    """

    machine: Any
    _reactor: Any
    _timer: Any = None
    _closed = False
    _paused = False
    _sendto: Any = None

    def _perform(self, actions: list[Any]) -> None:
        raise NotImplementedError

    def _internal_error(self) -> None:
        raise NotImplementedError

    # Timer: one DelayedCall, re-armed lazily; the machine checks the time.

    def _set_timer(self, deadline: float) -> None:
        # A later deadline is left to _timer_expired to re-arm (cheaper
        # than a reset per block); an earlier one (a smaller agreed
        # timeout) moves the call.
        timer = self._timer
        if timer is None or not timer.active():
            delay = max(0.0, deadline - self._reactor.seconds())
            self._timer = self._reactor.callLater(delay, self._timer_expired)
        elif timer.getTime() > deadline:
            timer.reset(max(0.0, deadline - self._reactor.seconds()))

    def _timer_expired(self) -> None:
        self._timer = None
        if self._closed or self._paused:
            return
        try:
            now = self._reactor.seconds()
            deadline = self.machine.deadline
            if deadline is None:
                return
            if now < deadline:
                self._set_timer(deadline)
                return
            self._perform(self.machine.timer_fired(now))
        except Exception:
            self._internal_error()

    def _write(self, datagram: bytes, addr: Any) -> None:
        sendto = self._sendto
        if sendto is None:
            return
        try:
            # The socket's own sendto: every address here came from
            # recvfrom or was resolved, so udp.Port.write's checks (a third
            # of the per-block cost in lock-step) are not needed.
            sendto(datagram, addr)
        except (OSError, internet_error.MessageLengthError):
            # A full socket buffer or an unreachable peer is a lost packet:
            # the machine's timer retransmits.
            pass
