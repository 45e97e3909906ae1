"""
Small helpers for protocols that answer a client waiting on each reply.

Twisted's C{transport.write} buffers and sends at the reactor's next turn;
for a server whose client waits for every reply (SMTP, FTP control), a
turn of the reactor costs more than the reply. L{plain_tcp} finds the
plain TCP connection under a transport (through protocol wrappers such as
the connection guard), and L{push} sends what was written at once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol

__all__ = ["plain_tcp", "push"]


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
