"""
Small helpers for protocols that answer a client waiting on each reply.

Twisted's C{transport.write} buffers and sends at the reactor's next turn;
for a server whose client waits for every reply (SMTP, FTP control), a
turn of the reactor costs more than the reply. L{plain_tcp} finds the
plain TCP connection under a transport (through protocol wrappers such as
the connection guard), L{push} sends what was written at once, and
L{ReplySender} sends replies straight to the socket.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol

__all__ = ["ReplySender", "plain_tcp", "push"]


def plain_tcp(transport: Any) -> tcp.Connection | None:
    """
    The plain TCP connection C{transport} is, or the one under its protocol
    wrappers (such as L{appnet.stats.GuardedFactory}'s); None when TLS is
    on the way (a TLS wrapper, or a connection that started TLS) and for
    in-memory and other transports.
    """
    while isinstance(transport, ProtocolWrapper):
        if isinstance(transport, TLSMemoryBIOProtocol):
            return None
        transport = transport.transport
    if isinstance(transport, tcp.Connection) and not transport.TLS:
        return transport
    return None


def push(connection: tcp.Connection | None) -> None:
    """
    Send what was written to C{connection} now instead of at the reactor's
    next turn; nothing once the connection is closing or has turned to TLS
    (STARTTLS). C{doWrite} is the reactor's own call: on failure it leaves
    the descriptor registered, so the reactor's next call reports it.
    """
    if connection is not None and not connection.disconnecting and not connection.TLS:
        connection.doWrite()


class ReplySender:
    """
    Sends a session's replies. On plain TCP, while nothing of ours waits in
    Twisted's write buffer, they go straight to the socket with one
    C{send} (Twisted's buffer would cost two C{epoll_ctl} calls and its
    write path per reply) and are counted in C{stats} as appnet's
    connection guard counts what passes it. Otherwise, and for what the
    socket does not take (from then on every reply queues behind it, in
    order), they go through the transport, on plain TCP pushed at once
    (L{push}).

    @ivar tcp: the plain TCP connection, or C{None} (TLS, other transports)
    """

    def __init__(self, transport: Any, stats: Any) -> None:
        self.transport = transport
        self.tcp = plain_tcp(transport)
        self._stats = stats
        self._direct = self.tcp is not None

    def send(self, data: bytes) -> None:
        """Send C{data} now (see the class docstring)."""
        tcp = self.tcp
        sent = 0
        if self._direct and tcp is not None and not tcp.disconnecting:
            try:
                sent = tcp.socket.send(data)
            except OSError:
                pass  # Twisted's write path meets the error again and reports it.
            self._stats.incr("bytes_out", sent)
        if sent < len(data):
            self._direct = False
            self.transport.write(data[sent:] if sent else data)
            push(tcp)

    def tls_started(self) -> None:
        """TLS runs from now on: replies go through the transport only."""
        self.tcp = None
        self._direct = False
