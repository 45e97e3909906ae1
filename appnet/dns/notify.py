"""
NOTIFY (RFC 1996): tell secondaries that a zone changed, so they transfer
it (AXFR) now instead of at their next SOA refresh.

The primary sends each configured secondary one NOTIFY per changed zone
(opcode NOTIFY, AA, the zone's SOA as the question and in the answer), and
sends it again, up to C{tries} times, until the secondary replies.
"""

from __future__ import annotations

from typing import Any, Sequence

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
from twisted.internet import defer
from twisted.logger import Logger

from appnet.dns.client import DNSClient, DNSError
from appnet.dns.zones import Zone

__all__ = ["Notifier", "make_notify"]

_log = Logger()


def make_notify(zone: Zone) -> dns.message.Message:
    """The NOTIFY message for C{zone}: question (origin, SOA), the SOA as a hint."""
    message = dns.message.make_query(zone.origin, dns.rdatatype.SOA, dns.rdataclass.IN)
    message.set_opcode(dns.opcode.NOTIFY)
    message.flags = (message.flags & ~dns.flags.RD) | dns.flags.AA
    message.answer.append(zone.soa)
    return message


class Notifier:
    """
    Sends NOTIFY for changed zones to a list of secondaries.

    @param targets: C{(address, port)} of each secondary
    @param tries: sends per secondary before giving up (RFC 1996 suggests 5)
    """

    def __init__(
        self, targets: Sequence[tuple[str, int]], reactor: Any, timeout: float = 2.0, tries: int = 5
    ) -> None:
        self.targets = list(targets)
        self.tries = tries
        self.client = DNSClient(self.targets or [("127.0.0.1", 53)], timeout=timeout, reactor=reactor)

    def notify(self, zone: Zone) -> defer.Deferred[dict[tuple[str, int], bool]]:
        """Notify every target of C{zone}; fires with target -> acknowledged."""

        async def one(target: tuple[str, int]) -> bool:
            for _ in range(self.tries):
                try:
                    reply = await self.client.exchange(make_notify(zone), target)
                except (DNSError, OSError) as e:
                    _log.debug("DNS NOTIFY {zone} to {target}: {e}", zone=zone.origin, target=target, e=e)
                    continue
                ok = reply.rcode() == dns.rcode.NOERROR
                _log.info(
                    "DNS NOTIFY {zone} serial {serial} to {host}:{port}: {rcode}",
                    zone=zone.origin,
                    serial=zone.serial,
                    host=target[0],
                    port=target[1],
                    rcode=dns.rcode.to_text(reply.rcode()),
                )
                return ok
            _log.warn(
                "DNS NOTIFY {zone} to {host}:{port}: no answer after {tries} tries",
                zone=zone.origin,
                host=target[0],
                port=target[1],
                tries=self.tries,
            )
            return False

        targets = list(self.targets)
        gathered = defer.gatherResults(
            [defer.Deferred.fromCoroutine(one(t)) for t in targets], consumeErrors=True
        )
        return gathered.addCallback(lambda oks: dict(zip(targets, oks)))
