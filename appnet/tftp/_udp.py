"""
UDP details shared by the TFTP server and client (private).
"""

from __future__ import annotations

import socket
from typing import Any

MAX_PACKET_SIZE = 65536
"""Read size of every TFTP socket: above any DATA with the largest blksize
(Twisted's default of 8192 would truncate large blocks)."""

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
    C{port.write} when the port has no socket (test fakes).
    """
    handle = getattr(port, "getHandle", None)
    sock = handle() if handle is not None else None
    if isinstance(sock, socket.socket):
        return sock.sendto
    return port.write
