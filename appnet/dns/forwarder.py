"""
The caching forwarder: names outside our zones, asked of configured
upstream servers, remembered for their TTL.

Positive answers are kept for the smallest TTL in the answer section;
NXDOMAIN and NODATA answers for the SOA's negative TTL, min(SOA TTL, SOA
MINIMUM) (RFC 2308 section 5); answers without an SOA, and failures, are not
kept. A cached answer is returned with its TTLs reduced by the time it has
spent in the cache. Identical questions in flight share one upstream query.
The server decides who may use this (L{appnet.dns.server.DNSEngine}'s
recursion ACL); nothing here knows about clients.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["Forwarder", "AnswerCache", "ForwardResult"]

#: Nothing is cached longer than a day (RFC 8767 suggests such a cap).
MAX_TTL = 86400


@dataclass(frozen=True)
class ForwardResult:
    """An upstream answer: RCODE and the three record sections."""

    rcode: int
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)

    @classmethod
    def from_message(cls, message: dns.message.Message) -> ForwardResult:
        return cls(message.rcode(), list(message.answer), list(message.authority), list(message.additional))

    def aged(self, seconds: int) -> ForwardResult:
        """A copy with every TTL reduced by C{seconds}."""
        if seconds <= 0:
            return self
        return ForwardResult(
            self.rcode,
            [_aged(r, seconds) for r in self.answer],
            [_aged(r, seconds) for r in self.authority],
            [_aged(r, seconds) for r in self.additional],
        )


def _aged(rrset: dns.rrset.RRset, seconds: int) -> dns.rrset.RRset:
    copy = rrset.copy()
    copy.ttl = max(0, rrset.ttl - seconds)
    return copy


def cache_ttl(result: ForwardResult) -> int:
    """How long C{result} may be cached (0: not at all)."""
    if result.rcode == dns.rcode.NOERROR and result.answer:
        return min(MAX_TTL, min(r.ttl for r in result.answer))
    if result.rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        for rrset in result.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                return min(MAX_TTL, rrset.ttl, rrset[0].minimum)
    return 0


class AnswerCache:
    """
    Question -> L{ForwardResult}, bounded (least recently used goes first),
    expiring by the reactor's clock.
    """

    def __init__(self, max_entries: int, clock: Any) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[Any, tuple[float, float, ForwardResult]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Any) -> ForwardResult | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored, expires, result = entry
        now = self.clock.seconds()
        if now >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return result.aged(int(now - stored))

    def put(self, key: Any, result: ForwardResult, ttl: int) -> None:
        if ttl <= 0 or self.max_entries <= 0:
            return
        now = self.clock.seconds()
        self._entries[key] = (now, now + ttl, result)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class Forwarder:
    """
    Resolves names through upstream servers with a cache.

    @param client: an L{appnet.dns.client.DNSClient} over the upstreams
    @param cache: an L{AnswerCache}
    """

    def __init__(self, client: Any, cache: AnswerCache, stats: Any = None) -> None:
        self.client = client
        self.cache = cache
        self.stats = stats
        self._in_flight: dict[Any, list[defer.Deferred]] = {}

    def _count(self, counter: str) -> None:
        if self.stats is not None:
            self.stats.incr(counter)

    def resolve(self, qname: dns.name.Name, qtype: int) -> defer.Deferred[ForwardResult]:
        """The answer to C{qname}/C{qtype}, from the cache or upstream."""
        key = (qname.canonicalize(), qtype)
        cached = self.cache.get(key)
        if cached is not None:
            self._count("cache_hits")
            return defer.succeed(cached)
        waiting = self._in_flight.get(key)
        mine: defer.Deferred = defer.Deferred()
        if waiting is not None:
            waiting.append(mine)
            return mine
        self._count("cache_misses")
        self._in_flight[key] = [mine]

        def done(result: Any) -> None:
            waiters = self._in_flight.pop(key, [])
            if not isinstance(result, Failure):
                result = ForwardResult.from_message(result)
                self.cache.put(key, result, cache_ttl(result))
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(result)

        self.client.query(qname, qtype).addBoth(done)
        return mine
