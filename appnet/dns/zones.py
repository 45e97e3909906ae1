"""
Authoritative zones: BIND zone files read with dnspython, the automatic zone
of appnet's own domain, and the lookup rules of RFC 1034 section 4.3.2.

A L{ZoneSet} maps origins to L{Zone}s; L{Zone.lookup} answers one question
with the sections an authoritative server returns (answer, authority,
additional) and the RCODE, chasing CNAMEs within the zone, synthesising
wildcard answers (RFC 4592), returning referrals below delegations, and
putting the SOA in the authority section of NXDOMAIN and NODATA answers
with the negative TTL of RFC 2308. Nothing here does I/O except
L{load_zone_file} and L{load_zones}, which the server runs at start-up and on
reload.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rcode
import dns.rrset
import dns.zone

from appnet.errors import AppnetError

__all__ = [
    "Zone",
    "ZoneSet",
    "ZoneError",
    "Lookup",
    "load_zone_file",
    "load_zones",
    "automatic_zone",
    "zone_origin_for_file",
]

#: The file-name suffixes a zone file may carry: C{example.org.zone}, C{example.org.db}.
ZONE_SUFFIXES = (".zone", ".db")

#: How many CNAMEs one answer may chase within our zones.
MAX_CNAME_CHAIN = 8

_IN = dns.rdataclass.IN
_SOA = dns.rdatatype.SOA
_NS = dns.rdatatype.NS
_CNAME = dns.rdatatype.CNAME
_ANY = dns.rdatatype.ANY
_A = dns.rdatatype.A
_AAAA = dns.rdatatype.AAAA
_WILD = dns.name.Name((b"*",))


class ZoneError(AppnetError):
    """
    A zone file could not be loaded; C{str()} names the file and line.

    @ivar path: the zone file
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message if message.startswith(path) else f"{path}: {message}")


@dataclass
class Lookup:
    """
    The outcome of one authoritative lookup.

    @ivar rcode: C{dns.rcode.NOERROR} or C{dns.rcode.NXDOMAIN}
    @ivar authoritative: False for a referral below a delegation
    @ivar answer: RRsets for the answer section
    @ivar authority: RRsets for the authority section
    @ivar additional: RRsets for the additional section (glue, MX/SRV targets)
    """

    rcode: int = dns.rcode.NOERROR
    authoritative: bool = True
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)


class Zone:
    """
    One authoritative zone (a dnspython C{dns.zone.Zone}, absolute names),
    with the set of names that exist in it, empty non-terminals included,
    so NXDOMAIN is told apart from NODATA as RFC 8020 asks.

    @ivar origin: the zone apex
    @ivar source: where it came from (a file path or C{"automatic"})
    """

    def __init__(self, zone: dns.zone.Zone, source: str) -> None:
        self.zone = zone
        self.origin: dns.name.Name = zone.origin
        self.source = source
        soa = zone.get_rdataset(self.origin, _SOA)
        if soa is None:
            raise ZoneError(source, f"zone {self.origin} has no SOA record at its apex")
        self.soa = dns.rrset.from_rdata_list(self.origin, soa.ttl, list(soa))
        # RFC 2308 section 5: the negative TTL is min(SOA TTL, SOA MINIMUM).
        self.soa_negative = dns.rrset.from_rdata_list(
            self.origin, min(soa.ttl, soa[0].minimum), list(soa)
        )
        self.serial: int = soa[0].serial
        self.names: set[dns.name.Name] = set()
        self.delegations: set[dns.name.Name] = set()
        for name, node in zone.nodes.items():
            name = self._absolute(name)
            while name != self.origin and name.is_subdomain(self.origin):
                self.names.add(name)
                name = name.parent()
        self.names.add(self.origin)
        for name, node in zone.nodes.items():
            name = self._absolute(name)
            if name != self.origin and node.get_rdataset(_IN, _NS) is not None:
                self.delegations.add(name)

    def _absolute(self, name: dns.name.Name) -> dns.name.Name:
        return name if name.is_absolute() else name.derelativize(self.origin)

    def _node(self, name: dns.name.Name):
        return self.zone.nodes.get(name) or self.zone.nodes.get(name.relativize(self.origin))

    def _delegation_for(self, name: dns.name.Name) -> dns.name.Name | None:
        if not self.delegations:
            return None
        while name != self.origin:
            if name in self.delegations:
                return name
            name = name.parent()
        return None

    def _rrset(self, owner: dns.name.Name, node, rdtype: int) -> dns.rrset.RRset | None:
        rdataset = node.get_rdataset(_IN, rdtype)
        if rdataset is None:
            return None
        return dns.rrset.from_rdata_list(owner, rdataset.ttl, list(rdataset))

    def _addresses(self, target: dns.name.Name, into: list[dns.rrset.RRset]) -> None:
        if not target.is_subdomain(self.origin):
            return
        node = self._node(target)
        if node is None:
            return
        for rdtype in (_A, _AAAA):
            rrset = self._rrset(target, node, rdtype)
            if rrset is not None and rrset not in into:
                into.append(rrset)

    def lookup(self, qname: dns.name.Name, qtype: int) -> Lookup:
        """
        Answer C{qname}/C{qtype} (class IN) from this zone.

        @param qname: an absolute name at or below L{origin}
        @param qtype: an RR type number; C{ANY} returns every RRset (RFC 8482
            allows less; we give all, as the zone is ours)
        """
        result = Lookup()
        name = qname
        for _ in range(MAX_CNAME_CHAIN + 1):
            cut = self._delegation_for(name)
            if cut is not None:
                if name != qname:
                    return result  # the resolver follows the CNAME itself
                node = self._node(cut)
                ns = self._rrset(cut, node, _NS)
                result.authoritative = False
                result.authority.append(ns)
                for rdata in ns:
                    self._addresses(rdata.target, result.additional)
                return result
            node = self._node(name)
            owner = name
            if node is None:
                if name in self.names:
                    result.authority.append(self.soa_negative)
                    return result  # empty non-terminal: NODATA
                node = self._wildcard(name)
                if node is None:
                    result.rcode = dns.rcode.NXDOMAIN
                    result.authority.append(self.soa_negative)
                    return result
            if qtype == _ANY:
                for rdataset in node.rdatasets:
                    result.answer.append(
                        dns.rrset.from_rdata_list(owner, rdataset.ttl, list(rdataset))
                    )
                return result
            rrset = self._rrset(owner, node, qtype)
            if rrset is not None:
                result.answer.append(rrset)
                self._add_additional(rrset, result)
                return result
            cname = self._rrset(owner, node, _CNAME) if qtype != _CNAME else None
            if cname is None:
                result.authority.append(self.soa_negative)
                return result
            result.answer.append(cname)
            name = cname[0].target
            if not name.is_subdomain(self.origin) or any(r.name == name for r in result.answer):
                return result  # out of the zone, or a CNAME loop: stop here
        return result

    def _wildcard(self, name: dns.name.Name):
        # RFC 4592: the closest encloser is the longest existing ancestor;
        # only "*.<closest encloser>" may match.
        parent = name.parent()
        while parent not in self.names:
            if parent == self.origin or len(parent) <= 1:
                break
            parent = parent.parent()
        if parent not in self.names:
            return None
        return self._node(_WILD.concatenate(parent))

    def _add_additional(self, rrset: dns.rrset.RRset, result: Lookup) -> None:
        if rrset.rdtype == dns.rdatatype.MX:
            for rdata in rrset:
                self._addresses(rdata.exchange, result.additional)
        elif rrset.rdtype in (_NS, dns.rdatatype.SRV):
            for rdata in rrset:
                self._addresses(rdata.target, result.additional)

    def iterate_rrsets(self) -> Iterator[dns.rrset.RRset]:
        """Every RRset of the zone, the apex SOA first (for AXFR)."""
        yield self.soa
        for name, node in sorted(self.zone.nodes.items()):
            owner = self._absolute(name)
            for rdataset in node.rdatasets:
                if owner == self.origin and rdataset.rdtype == _SOA:
                    continue
                yield dns.rrset.from_rdata_list(owner, rdataset.ttl, list(rdataset))

    def positive_keys(self) -> Iterator[tuple[dns.name.Name, int]]:
        """(name, type) of every RRset that exists, for precomputed answers."""
        for name, node in self.zone.nodes.items():
            owner = self._absolute(name)
            if owner.labels[0] == b"*":
                continue
            for rdataset in node.rdatasets:
                yield owner, rdataset.rdtype


class ZoneSet:
    """Our authoritative zones, found by the longest matching origin."""

    def __init__(self, zones: Iterable[Zone] = ()) -> None:
        self.zones: dict[dns.name.Name, Zone] = {}
        for zone in zones:
            self.zones[zone.origin] = zone

    def find(self, qname: dns.name.Name) -> Zone | None:
        """The zone whose origin is the closest ancestor of C{qname}, if any."""
        name = qname
        while True:
            zone = self.zones.get(name)
            if zone is not None:
                return zone
            if len(name) <= 1:
                return None
            name = name.parent()

    def __iter__(self) -> Iterator[Zone]:
        return iter(self.zones.values())

    def __len__(self) -> int:
        return len(self.zones)


def zone_origin_for_file(filename: str) -> dns.name.Name | None:
    """
    The origin a zone file's name declares: C{example.org.zone} or
    C{example.org.db} -> C{example.org.}; L{None} for other files.
    """
    base = os.path.basename(filename)
    for suffix in ZONE_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            try:
                return dns.name.from_text(base[: -len(suffix)].rstrip(".") + ".")
            except dns.exception.DNSException:
                return None
    return None


def load_zone_file(path: str, origin: dns.name.Name | None = None) -> Zone:
    """
    Read one BIND zone file with dnspython (multi-line SOA, C{$TTL},
    C{$ORIGIN}, C{$INCLUDE} relative names all work).

    @param origin: the zone apex; by default from the file name
    @raise ZoneError: unreadable or malformed; the message names file and line
    """
    if origin is None:
        origin = zone_origin_for_file(path)
        if origin is None:
            raise ZoneError(path, f"cannot tell the origin from the name; use NAME{ZONE_SUFFIXES[0]}")
    try:
        zone = dns.zone.from_file(path, origin=origin, relativize=False, check_origin=True)
    except OSError as e:
        raise ZoneError(path, e.strerror or str(e)) from None
    except dns.exception.DNSException as e:
        raise ZoneError(path, str(e)) from None
    return Zone(zone, path)


def automatic_zone(
    domain: str,
    mail_host: str,
    address: str,
    records: Iterable[str] = (),
    ttl: int = 3600,
) -> Zone:
    """
    The zone appnet serves for its own domain when no zone file does: SOA,
    NS and MX pointing at the mail host, and the mail host's address.

    @param domain: the zone apex, e.g. C{example.org}
    @param mail_host: the host name of this box (config C{hostname})
    @param address: its IPv4 or IPv6 address
    @param records: extra RR lines in zone-file syntax (config C{dns.records})
    @raise ZoneError: an extra record does not parse
    """
    origin = dns.name.from_text(domain.rstrip(".") + ".")
    host = dns.name.from_text(mail_host.rstrip(".") + ".")
    rtype = "AAAA" if ":" in address else "A"
    lines = [
        f"@ {ttl} IN SOA {host} hostmaster.{origin} 1 3600 900 604800 300",
        f"@ {ttl} IN NS {host}",
        f"@ {ttl} IN MX 10 {host}",
    ]
    if host.is_subdomain(origin):
        lines.append(f"{host} {ttl} IN {rtype} {address}")
    lines.extend(records)
    try:
        zone = dns.zone.from_text("\n".join(lines) + "\n", origin=origin, relativize=False)
    except dns.exception.DNSException as e:
        raise ZoneError("dns.records", str(e)) from None
    return Zone(zone, "automatic")


def load_zones(
    zones_dir: str,
    own: Zone | None = None,
    previous: ZoneSet | None = None,
) -> tuple[ZoneSet, list[ZoneError]]:
    """
    Load every zone file in C{zones_dir} (C{NAME.zone} / C{NAME.db}).

    A file that fails to load is reported and, if C{previous} held its zone,
    the old zone keeps serving. C{own} (the automatic zone) is served unless
    a file provides the same origin.

    @return: the zones and the errors met
    """
    zones: dict[dns.name.Name, Zone] = {}
    errors: list[ZoneError] = []
    try:
        names = sorted(os.listdir(zones_dir))
    except FileNotFoundError:
        names = []
    except OSError as e:
        errors.append(ZoneError(zones_dir, e.strerror or str(e)))
        names = []
    for base in names:
        origin = zone_origin_for_file(base)
        if origin is None:
            continue
        path = os.path.join(zones_dir, base)
        try:
            zones[origin] = load_zone_file(path, origin)
        except ZoneError as e:
            errors.append(e)
            old = previous.zones.get(origin) if previous is not None else None
            if old is not None and old.source == path:
                zones[origin] = old
    if own is not None and own.origin not in zones:
        zones[own.origin] = own
    return ZoneSet(zones.values()), errors
