"""
Counters for every service, read by the SNMP agent and the web console.

A L{StatsRegistry} holds one L{ServiceStats} per service; protocols bump
counters (C{stats.incr("logins_failed")}); L{GuardedFactory} counts
connections and bytes for any TCP server and enforces its connection limits,
so no protocol has to.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Iterator

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

__all__ = ["StatsRegistry", "ServiceStats", "GuardedFactory", "COUNTERS"]

_log = Logger()

#: The counters every service has (others may be added by a protocol).
COUNTERS = (
    "connections",
    "connections_active",
    "connections_refused",
    "logins_ok",
    "logins_failed",
    "bytes_in",
    "bytes_out",
    "messages",
    "errors",
)


class ServiceStats:
    """The counters of one service."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.time()
        self.counters: Counter[str] = Counter({c: 0 for c in COUNTERS})

    def incr(self, counter: str, by: int = 1) -> None:
        """Add C{by} to a counter (created on first use)."""
        self.counters[counter] += by

    def __getitem__(self, counter: str) -> int:
        return self.counters[counter]

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter."""
        return dict(self.counters)


class StatsRegistry:
    """Every service's L{ServiceStats}, by name."""

    def __init__(self) -> None:
        self._services: dict[str, ServiceStats] = {}

    def service(self, name: str) -> ServiceStats:
        """The stats of one service, created on first use."""
        stats = self._services.get(name)
        if stats is None:
            stats = self._services[name] = ServiceStats(name)
        return stats

    def __iter__(self) -> Iterator[ServiceStats]:
        return iter(sorted(self._services.values(), key=lambda s: s.name))

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Service name -> counter -> value."""
        return {s.name: s.snapshot() for s in self}


class _GuardedProtocol(ProtocolWrapper):
    def dataReceived(self, data: bytes) -> None:
        self.factory.stats.counters["bytes_in"] += len(data)
        self.wrappedProtocol.dataReceived(data)

    def write(self, data: bytes) -> None:
        self.factory.stats.counters["bytes_out"] += len(data)
        self.transport.write(data)

    def writeSequence(self, data) -> None:
        if not isinstance(data, (list, tuple)):
            data = list(data)
        self.factory.stats.counters["bytes_out"] += sum(map(len, data))
        self.transport.writeSequence(data)


class _Refuse(Protocol):
    """Says the protocol's refusal line and hangs up."""

    def __init__(self, message: bytes) -> None:
        self.message = message

    def connectionMade(self) -> None:
        if self.message:
            self.transport.write(self.message)
        self.transport.loseConnection()


class GuardedFactory(WrappingFactory):
    """
    Wraps a server factory: counts connections and bytes into C{stats}, and
    refuses connections over C{max_connections} in all or
    C{max_per_address} from one address, writing C{refusal} first (e.g.
    C{b"-ERR [SYS/TEMP] too many connections\\r\\n"}).
    """

    protocol = _GuardedProtocol
    noisy = False

    def __init__(
        self,
        wrapped,
        stats: ServiceStats,
        max_connections: int = 1000,
        max_per_address: int = 50,
        refusal: bytes = b"",
    ) -> None:
        super().__init__(wrapped)
        self.stats = stats
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.refusal = refusal
        self.per_address: Counter[str] = Counter()

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None) or str(addr)
        if (
            len(self.protocols) >= self.max_connections
            or self.per_address[host] >= self.max_per_address
        ):
            self.stats.incr("connections_refused")
            _log.info(
                "refused connection from {host}: limit reached", host=host
            )
            return _Refuse(self.refusal)
        proto = super().buildProtocol(addr)
        if proto is not None:
            proto._guard_host = host
            self.per_address[host] += 1
            self.stats.incr("connections")
            self.stats.incr("connections_active")
        return proto

    def unregisterProtocol(self, p) -> None:
        super().unregisterProtocol(p)
        host = getattr(p, "_guard_host", None)
        if host is not None:
            self.per_address[host] -= 1
            if self.per_address[host] <= 0:
                del self.per_address[host]
            self.stats.incr("connections_active", -1)

    def __getattr__(self, name):
        # Let code holding the guard reach the wrapped factory's attributes.
        if name == "wrappedFactory":
            raise AttributeError(name)
        return getattr(self.wrappedFactory, name)
