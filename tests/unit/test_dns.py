"""
Unit tests for appnet's DNS: zones and lookups, the fast answer path, the
engine's replies (read back with twisted.names' own codec, so our wire
format is checked by an independent decoder), bad input, both transports
over in-memory transports, the caching forwarder and zone reloading.
"""

from __future__ import annotations

import os
import random
import struct
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.names import dns as tdns
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appnet.dns.answers import opt_record, scan_query, udp_limit
from appnet.dns.forwarder import AnswerCache, Forwarder
from appnet.dns.server import (
    DNSDatagramProtocol,
    DNSEngine,
    DNSStreamFactory,
    RateLimiter,
    ZoneWatcher,
    parse_networks,
)
from appnet.dns.zones import ZoneError, ZoneSet, automatic_zone, load_zone_file, load_zones

#: A zone as real ones are written: multi-line parenthesised SOA with
#: comments, relative names, a CNAME, a wildcard, an empty non-terminal
#: (deep.example.org), a delegation with glue and a TXT set too big for 512
#: octets.
ZONE = """\
$TTL 300
@   IN SOA ns1.example.org. hostmaster.example.org. (
        2024010101 ; serial
        3600       ; refresh
        900        ; retry
        604800     ; expire
        60 )       ; negative TTL
    IN NS  ns1
    IN MX  10 mail
ns1   IN A 192.0.2.1
mail  IN A 192.0.2.25
www   IN A 192.0.2.2
www   IN AAAA 2001:db8::2
alias IN CNAME www
loop1 IN CNAME loop2
loop2 IN CNAME loop1
out   IN CNAME www.elsewhere.test.
*.wild IN A 192.0.2.99
a.b.deep IN A 192.0.2.3
sub    IN NS ns.sub
ns.sub IN A 192.0.2.53
_sip._tcp IN SRV 10 5 5060 www
""" + "".join(f'big IN TXT "{i:03d}{"x" * 200}"\n' for i in range(8))

ORIGIN = dns.name.from_text("example.org.")


def write_zone(directory: str, text: str = ZONE, name: str = "example.org.zone") -> str:
    """Write a zone file and return its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def twisted_query(
    name: bytes, qtype: int = tdns.A, edns: int | None = None, rd: bool = False, id: int = 4242
) -> bytes:
    """A query encoded by twisted.names (EDNS version 0 with C{edns} payload)."""
    if edns is None:
        message = tdns.Message(id=id, recDes=rd)
        message.queries = [tdns.Query(name, qtype, tdns.IN)]
        return message.toStr()
    message = tdns._EDNSMessage(id=id, recDes=rd, maxSize=edns)
    message.queries = [tdns.Query(name, qtype, tdns.IN)]
    return message.toStr()


def decode(wire: bytes) -> tdns.Message:
    """A reply decoded by twisted.names."""
    message = tdns.Message()
    message.fromStr(wire)
    return message


class ZoneTestCase(SynchronousTestCase):
    """Builds the zone of L{ZONE} in a temporary directory."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.path = write_zone(self.dir)
        self.zone = load_zone_file(self.path)

    def lookup(self, name: str, rdtype: str):
        return self.zone.lookup(dns.name.from_text(name), dns.rdatatype.from_text(rdtype))


class ZoneLookupTests(ZoneTestCase):
    """L{Zone.lookup} follows RFC 1034 4.3.2, RFC 2308, RFC 4592 and RFC 8020."""

    def test_multiline_soa(self) -> None:
        """A parenthesised, commented multi-line SOA loads (BindAuthority cannot)."""
        self.assertEqual(self.zone.serial, 2024010101)
        self.assertEqual(self.zone.origin, ORIGIN)

    def test_positive(self) -> None:
        """An existing name and type is answered, authoritatively."""
        result = self.lookup("www.example.org.", "A")
        self.assertEqual(result.rcode, dns.rcode.NOERROR)
        self.assertTrue(result.authoritative)
        self.assertEqual([r.to_text() for r in result.answer[0]], ["192.0.2.2"])

    def test_nxdomain_has_soa_with_negative_ttl(self) -> None:
        """A missing name is NXDOMAIN with the SOA at min(TTL, MINIMUM) in authority."""
        result = self.lookup("nope.example.org.", "A")
        self.assertEqual(result.rcode, dns.rcode.NXDOMAIN)
        self.assertEqual(result.answer, [])
        self.assertEqual(result.authority[0].rdtype, dns.rdatatype.SOA)
        self.assertEqual(result.authority[0].ttl, 60)

    def test_nodata(self) -> None:
        """An existing name without the type is NOERROR, no answer, SOA in authority."""
        result = self.lookup("www.example.org.", "MX")
        self.assertEqual(result.rcode, dns.rcode.NOERROR)
        self.assertEqual(result.answer, [])
        self.assertEqual(result.authority[0].rdtype, dns.rdatatype.SOA)

    def test_empty_non_terminal_is_nodata(self) -> None:
        """A name that only exists as a parent of others is NODATA, not NXDOMAIN (RFC 8020)."""
        result = self.lookup("b.deep.example.org.", "A")
        self.assertEqual(result.rcode, dns.rcode.NOERROR)
        self.assertEqual(result.answer, [])

    def test_cname_chased(self) -> None:
        """A CNAME within the zone is followed: CNAME then the target's A."""
        result = self.lookup("alias.example.org.", "A")
        self.assertEqual(
            [(str(r.name), dns.rdatatype.to_text(r.rdtype)) for r in result.answer],
            [("alias.example.org.", "CNAME"), ("www.example.org.", "A")],
        )

    def test_cname_query_not_chased(self) -> None:
        """Asking for the CNAME itself returns just the CNAME."""
        result = self.lookup("alias.example.org.", "CNAME")
        self.assertEqual(len(result.answer), 1)

    def test_cname_loop_bounded(self) -> None:
        """A CNAME loop stops where a name repeats: each CNAME once."""
        result = self.lookup("loop1.example.org.", "A")
        self.assertEqual([str(r.name) for r in result.answer], ["loop1.example.org.", "loop2.example.org."])
        self.assertEqual(result.rcode, dns.rcode.NOERROR)

    def test_cname_out_of_zone(self) -> None:
        """A CNAME leaving the zone is returned for the resolver to follow."""
        result = self.lookup("out.example.org.", "A")
        self.assertEqual(str(result.answer[0][0].target), "www.elsewhere.test.")
        self.assertEqual(len(result.answer), 1)

    def test_wildcard(self) -> None:
        """A name under *.wild is synthesised with the asked owner name (RFC 4592)."""
        result = self.lookup("anything.wild.example.org.", "A")
        self.assertEqual(str(result.answer[0].name), "anything.wild.example.org.")
        self.assertEqual(result.answer[0][0].to_text(), "192.0.2.99")

    def test_wildcard_not_below_existing_name(self) -> None:
        """The wildcard does not match below a different closest encloser."""
        result = self.lookup("x.www.example.org.", "A")
        self.assertEqual(result.rcode, dns.rcode.NXDOMAIN)

    def test_referral(self) -> None:
        """Below a delegation the answer is a non-authoritative referral with glue."""
        result = self.lookup("host.sub.example.org.", "A")
        self.assertFalse(result.authoritative)
        self.assertEqual(result.answer, [])
        self.assertEqual(result.authority[0].rdtype, dns.rdatatype.NS)
        self.assertEqual(str(result.additional[0].name), "ns.sub.example.org.")

    def test_mx_additional(self) -> None:
        """An MX answer carries the exchange's address in the additional section."""
        result = self.lookup("example.org.", "MX")
        self.assertEqual(str(result.additional[0].name), "mail.example.org.")

    def test_any(self) -> None:
        """ANY returns every RRset of the name."""
        result = self.lookup("www.example.org.", "ANY")
        self.assertEqual(len(result.answer), 2)


class ZoneLoadingTests(SynchronousTestCase):
    """Zone files and the automatic zone load, or fail naming file and line."""

    def test_bad_file_names_file_and_line(self) -> None:
        """A malformed record is reported with the file and its line number."""
        path = write_zone(self.mktemp(), ZONE + "bad IN FOO 1\nlast IN A 192.0.2.1\n")
        with self.assertRaises(ZoneError) as caught:
            load_zone_file(path)
        line = ZONE.count("\n") + 1
        self.assertIn(f"{path}:{line}: unknown rdatatype 'FOO'", str(caught.exception))

    def test_missing_soa(self) -> None:
        """A zone without an SOA is refused."""
        path = write_zone(self.mktemp(), "$TTL 60\nwww IN A 192.0.2.1\n")
        self.assertRaises(ZoneError, load_zone_file, path)

    def test_automatic_zone(self) -> None:
        """The own domain gets SOA, NS, MX and the mail host's A record."""
        zone = automatic_zone("example.net", "mail.example.net", "192.0.2.9", ["www 60 IN A 192.0.2.10"])
        mx = zone.lookup(dns.name.from_text("example.net."), dns.rdatatype.MX)
        self.assertEqual(mx.answer[0][0].to_text(), "10 mail.example.net.")
        a = zone.lookup(dns.name.from_text("mail.example.net."), dns.rdatatype.A)
        self.assertEqual(a.answer[0][0].to_text(), "192.0.2.9")
        www = zone.lookup(dns.name.from_text("www.example.net."), dns.rdatatype.A)
        self.assertEqual(www.answer[0][0].to_text(), "192.0.2.10")

    def test_zone_file_overrides_automatic(self) -> None:
        """A zone file for the own domain replaces the automatic zone."""
        directory = self.mktemp()
        write_zone(directory)
        own = automatic_zone("example.org", "mail.example.org", "203.0.113.1")
        zones, errors = load_zones(directory, own)
        self.assertEqual(errors, [])
        zone = zones.find(dns.name.from_text("mail.example.org."))
        self.assertEqual(zone.source, os.path.join(directory, "example.org.zone"))

    def test_bad_reload_keeps_old_zone(self) -> None:
        """On reload, a broken file leaves the previously loaded zone serving."""
        directory = self.mktemp()
        write_zone(directory)
        first, _ = load_zones(directory)
        write_zone(directory, "garbage (\n")
        second, errors = load_zones(directory, previous=first)
        self.assertEqual(len(errors), 1)
        self.assertIs(second.zones[ORIGIN], first.zones[ORIGIN])

    def test_find_longest_origin(self) -> None:
        """L{ZoneSet.find} picks the closest enclosing zone and nothing outside."""
        outer = automatic_zone("example.org", "mail.example.org", "192.0.2.1")
        inner = automatic_zone("sub.example.org", "mail.sub.example.org", "192.0.2.2")
        zones = ZoneSet([outer, inner])
        self.assertIs(zones.find(dns.name.from_text("a.sub.example.org.")), inner)
        self.assertIs(zones.find(dns.name.from_text("a.example.org.")), outer)
        self.assertIsNone(zones.find(dns.name.from_text("example.com.")))


class ScanQueryTests(SynchronousTestCase):
    """L{scan_query} accepts only the simple query shape and passes on the rest."""

    def test_simple(self) -> None:
        """A plain query yields its lower-cased key and exact question."""
        wire = twisted_query(b"WWW.Example.org")
        key, question, payload = scan_query(wire)
        self.assertEqual(key, b"\x03www\x07example\x03org\x00\x00\x01\x00\x01")
        self.assertEqual(question, wire[12:])
        self.assertIsNone(payload)

    def test_edns(self) -> None:
        """An EDNS(0) query yields the requester's payload size."""
        self.assertEqual(scan_query(twisted_query(b"www.example.org", edns=4096))[2], 4096)

    def test_type_bytes_not_lowered(self) -> None:
        """Only the name is case-folded: type 65 (HTTPS, 0x41) is not type 97."""
        key, _, _ = scan_query(twisted_query(b"a.example", qtype=65))
        self.assertTrue(key.endswith(b"\x00\x41\x00\x01"))

    def test_rejects(self) -> None:
        """Responses, other opcodes, EDNS versions, pointers and trailing bytes go the full way."""
        wire = twisted_query(b"www.example.org")
        cases = [
            wire[:2] + b"\x80" + wire[3:],  # QR set
            wire[:2] + b"\x10" + wire[3:],  # opcode 2
            wire + b"\x00",  # trailing junk
            wire[:5] + b"\x02" + wire[6:],  # qdcount 2
            wire[:12] + b"\xc0\x0c\x00\x01\x00\x01",  # compressed question
            wire[:15],  # cut in the name
        ]
        v1 = bytearray(twisted_query(b"www.example.org", edns=1232))
        v1[-5] = 1  # EDNS version 1
        cases.append(bytes(v1))
        for case in cases:
            self.assertIsNone(scan_query(case), case)


class EngineTestCase(SynchronousTestCase):
    """An engine over L{ZONE}; C{ask} collects its replies."""

    forwarder: Any = None

    def setUp(self) -> None:
        self.dir = self.mktemp()
        write_zone(self.dir)
        zones, errors = load_zones(self.dir)
        self.assertEqual(errors, [])
        self.engine = DNSEngine(
            zones,
            forwarder=self.forwarder,
            allow_recursion=parse_networks(["127.0.0.0/8"]),
            allow_axfr=parse_networks(["127.0.0.1"]),
            max_udp_payload=1232,
        )

    def ask(self, wire: bytes, host: str = "127.0.0.1", tcp: bool = False) -> list[bytes]:
        """Every reply the engine sends for C{wire} (fast path first, as UDP does)."""
        replies: list[bytes] = []
        if not tcp:
            fast = self.engine.fast_answer(wire, host)
            if fast is not None:
                return [fast]
        self.engine.respond(wire, host, tcp, replies.append)
        return replies

    def ask_one(self, wire: bytes, **kw: Any) -> tdns.Message:
        replies = self.ask(wire, **kw)
        self.assertEqual(len(replies), 1)
        return decode(replies[0])


class EngineAnswerTests(EngineTestCase):
    """Replies, decoded by twisted.names, have the flags and sections RFCs ask for."""

    def test_answer_aa_and_id(self) -> None:
        """An authoritative answer echoes the ID, sets AA and QR, carries the A record."""
        reply = self.ask_one(twisted_query(b"www.example.org", id=777))
        self.assertEqual(reply.id, 777)
        self.assertTrue(reply.answer and reply.auth and reply.answer)
        self.assertEqual(reply.answers[0].payload.dottedQuad(), "192.0.2.2")

    def test_case_echoed(self) -> None:
        """The question and owner come back in the asker's letter case (0x20)."""
        reply = self.ask_one(twisted_query(b"wWw.EXAMPLE.org"))
        self.assertEqual(reply.queries[0].name.name, b"wWw.EXAMPLE.org")
        self.assertEqual(reply.answers[0].name.name, b"wWw.EXAMPLE.org")

    def test_nxdomain_is_authoritative(self) -> None:
        """NXDOMAIN carries AA and the SOA (Twisted's server leaves AA off: #11990)."""
        reply = self.ask_one(twisted_query(b"missing.example.org"))
        self.assertEqual(reply.rCode, tdns.ENAME)
        self.assertTrue(reply.auth)
        self.assertEqual(reply.authority[0].type, tdns.SOA)

    def test_nxdomain_slow_path_same_as_fast(self) -> None:
        """A memoised answer is byte-identical to the one computed first."""
        wire = twisted_query(b"missing.example.org")
        first = self.ask(wire)
        self.assertEqual(self.ask(wire), first)

    def test_nodata(self) -> None:
        """NODATA is NOERROR, AA, no answer, SOA in authority."""
        reply = self.ask_one(twisted_query(b"www.example.org", tdns.MX))
        self.assertEqual(reply.rCode, tdns.OK)
        self.assertEqual(reply.answers, [])
        self.assertEqual(reply.authority[0].type, tdns.SOA)

    def test_edns_gets_opt(self) -> None:
        """An EDNS query gets an OPT record with our payload size (Twisted: #5669)."""
        wire = twisted_query(b"www.example.org", edns=4096)
        reply = tdns._EDNSMessage._fromMessage(decode(self.ask(wire)[0]))
        self.assertEqual(reply.ednsVersion, 0)
        self.assertEqual(reply.maxSize, 1232)

    def test_do_bit_copied(self) -> None:
        """The DO bit of the query's OPT is copied into the reply's (RFC 3225), fast path and full."""
        for name in ("www.example.org.", "missing-do.example.org."):
            query = dns.message.make_query(name, "A", use_edns=0, want_dnssec=True)
            reply = dns.message.from_wire(self.ask(query.to_wire())[0])
            self.assertTrue(reply.ednsflags & dns.flags.DO, name)
        query = dns.message.make_query("www.example.org.", "A", use_edns=0)
        reply = dns.message.from_wire(self.ask(query.to_wire())[0])
        self.assertFalse(reply.ednsflags & dns.flags.DO)

    def test_no_edns_no_opt(self) -> None:
        """A query without EDNS gets no OPT record."""
        reply = self.ask_one(twisted_query(b"www.example.org"))
        self.assertEqual(reply.additional, [])

    def test_truncated_over_512(self) -> None:
        """Without EDNS a reply over 512 octets is truncated: TC, no records (Twisted: #6949)."""
        wire = twisted_query(b"big.example.org", tdns.TXT)
        raw = self.ask(wire)[0]
        self.assertLessEqual(len(raw), 512)
        reply = decode(raw)
        self.assertTrue(reply.trunc)
        self.assertEqual(reply.answers, [])

    def test_edns_payload_honoured(self) -> None:
        """The requester's EDNS size is capped at max_udp_payload: 1232 truncates, 4096 fits."""
        raw = self.ask(twisted_query(b"big.example.org", tdns.TXT, edns=4096))[0]
        reply = decode(raw)
        self.assertLessEqual(len(raw), 1232)
        self.assertTrue(reply.trunc)
        self.engine.max_udp_payload = 4096
        self.engine.opt = opt_record(4096)
        reply = decode(self.ask(twisted_query(b"big.example.org", tdns.TXT, edns=4096))[0])
        self.assertFalse(reply.trunc)
        self.assertEqual(len(reply.answers), 8)

    def test_tcp_not_truncated(self) -> None:
        """Over TCP the whole TXT set comes back."""
        reply = self.ask_one(twisted_query(b"big.example.org", tdns.TXT), tcp=True)
        self.assertFalse(reply.trunc)
        self.assertEqual(len(reply.answers), 8)

    def test_rd_copied_ra_clear(self) -> None:
        """RD is copied; RA stays clear on an authoritative-only server."""
        reply = self.ask_one(twisted_query(b"www.example.org", rd=True))
        self.assertTrue(reply.recDes)
        self.assertFalse(reply.recAv)

    def test_outside_zone_refused(self) -> None:
        """A name outside our zones, with no forwarder, is REFUSED."""
        reply = self.ask_one(twisted_query(b"www.example.com", rd=True))
        self.assertEqual(reply.rCode, tdns.EREFUSED)

    def test_other_opcode_notimp(self) -> None:
        """An opcode other than QUERY gets NOTIMP."""
        wire = bytearray(twisted_query(b"www.example.org"))
        wire[2] |= 2 << 3
        self.assertEqual(self.ask_one(bytes(wire)).rCode, tdns.ENOTIMP)

    def test_edns_version_1_badvers(self) -> None:
        """EDNS version 1 gets BADVERS (extended RCODE 16) with OPT version 0."""
        wire = bytearray(twisted_query(b"www.example.org", edns=1232))
        wire[-5] = 1
        reply = dns.message.from_wire(self.ask(bytes(wire))[0])
        self.assertEqual(reply.rcode(), dns.rcode.BADVERS)
        self.assertEqual(reply.edns, 0)

    def test_axfr_allowed(self) -> None:
        """AXFR over TCP from an allowed address: SOA first and last, every record between."""
        query = dns.message.make_query("example.org.", "AXFR")
        replies = [
            dns.message.from_wire(r, one_rr_per_rrset=True)
            for r in self.ask(query.to_wire(), tcp=True)
        ]
        rrsets = [rrset for r in replies for rrset in r.answer]
        self.assertEqual(rrsets[0].rdtype, dns.rdatatype.SOA)
        self.assertEqual(rrsets[-1].rdtype, dns.rdatatype.SOA)
        self.assertIn("www.example.org.", {str(r.name) for r in rrsets})
        self.assertTrue(all(r.flags & dns.flags.AA for r in replies))

    def test_axfr_refused(self) -> None:
        """AXFR from an address outside allow_axfr is REFUSED."""
        query = dns.message.make_query("example.org.", "AXFR")
        reply = dns.message.from_wire(self.ask(query.to_wire(), host="192.0.2.200", tcp=True)[0])
        self.assertEqual(reply.rcode(), dns.rcode.REFUSED)

    def test_axfr_over_udp_formerr(self) -> None:
        """AXFR over UDP is a format error (RFC 5936 4.2: TCP only)."""
        query = dns.message.make_query("example.org.", "AXFR")
        reply = dns.message.from_wire(self.ask(query.to_wire())[0])
        self.assertEqual(reply.rcode(), dns.rcode.FORMERR)


class TraceTests(EngineTestCase):
    """With trace on, every reply is logged in one line and still sent."""

    def test_trace_line(self) -> None:
        """A traced query (fast-path eligible too) logs question, RCODE, flags and size."""
        from twisted.logger import capturedLogs, formatEvent

        self.engine.trace = True
        with capturedLogs() as events:
            reply = self.ask_one(twisted_query(b"www.example.org"))
        self.assertEqual(reply.answers[0].payload.dottedQuad(), "192.0.2.2")
        lines = [formatEvent(e) for e in events]
        self.assertTrue(
            any("www.example.org. A: NOERROR [qr aa] 1 answer, 0 authority" in line for line in lines), lines
        )


_NAMES = [
    "example.org.", "www.example.org.", "alias.example.org.", "out.example.org.", "big.example.org.",
    "missing.example.org.", "a.b.deep.example.org.", "b.deep.example.org.", "x.wild.example.org.",
    "y.z.wild.example.org.", "ns.sub.example.org.", "host.sub.example.org.", "_sip._tcp.example.org.",
    "loop1.example.org.",
]
_TYPES = ["A", "AAAA", "MX", "TXT", "CNAME", "NS", "SOA", "SRV", "PTR"]


@st.composite
def _queries(draw: Any) -> tuple[bytes, str, str, int | None]:
    """A query for a zone name in random letter case, any type, with or without EDNS."""
    name = draw(st.sampled_from(_NAMES))
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    name = "".join(c.upper() if flip else c for c, flip in zip(name, flips))
    rdtype = draw(st.sampled_from(_TYPES))
    payload = draw(st.sampled_from([None, 512, 1232, 4096]))
    query = dns.message.make_query(
        name, rdtype, use_edns=0 if payload else False, payload=payload or 1232,
        id=draw(st.integers(0, 65535)),
    )
    if draw(st.booleans()):
        query.flags &= ~dns.flags.RD
    return query.to_wire(), name, rdtype, payload


class FastPathPropertyTests(EngineTestCase):
    """The fast path says exactly what the zone says, byte for byte what the full path says."""

    @settings(deadline=None, max_examples=300)
    @given(_queries())
    def test_fast_equals_full_and_zone(self, case: tuple[bytes, str, str, int | None]) -> None:
        """For any zone question, in any case, with any EDNS size: one reply, right sections, echoed case."""
        wire, name, rdtype, payload = case
        full: list[bytes] = []
        self.engine.respond(wire, "127.0.0.1", False, full.append)
        fast = self.engine.fast_answer(wire, "127.0.0.1")
        self.assertEqual(len(full), 1)
        if fast is not None:
            self.assertEqual(fast, full[0])
        reply = dns.message.from_wire(full[0])
        decode(full[0])  # twisted.names reads it too
        self.assertEqual(reply.id, dns.message.from_wire(wire).id)
        self.assertEqual(reply.question[0].name.to_text(), name)  # the asker's case
        limit = 512 if payload is None else max(512, min(payload, 1232))
        self.assertLessEqual(len(full[0]), limit)
        zone = self.engine.zones.find(dns.name.from_text(name))
        expected = zone.lookup(dns.name.from_text(name), dns.rdatatype.from_text(rdtype))
        self.assertEqual(reply.rcode(), expected.rcode)
        self.assertEqual(bool(reply.flags & dns.flags.AA), expected.authoritative)
        self.assertEqual(reply.edns, -1 if payload is None else 0)
        if reply.flags & dns.flags.TC:
            self.assertEqual((reply.answer, reply.authority, reply.additional), ([], [], []))
        else:
            self.assertEqual(reply.answer, expected.answer)
            self.assertEqual([r.ttl for r in reply.answer], [r.ttl for r in expected.answer])
            self.assertEqual(reply.authority, expected.authority)
            self.assertEqual(reply.additional, expected.additional)


@st.composite
def _mutated(draw: Any) -> bytes:
    """A valid query with bytes overwritten, cut off or appended."""
    wire = bytearray(draw(_queries())[0])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(wire) - 1))
        wire[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(wire)))
    return bytes(wire[:cut]) + draw(st.binary(max_size=8))


class MutationTests(EngineTestCase):
    """Corrupted queries never raise and never get more than one well-formed reply."""

    @settings(deadline=None, max_examples=500)
    @given(_mutated())
    def test_mutated_queries(self, wire: bytes) -> None:
        """Any corruption of a query: silence or one reply with its ID, decodable, no bug logged."""
        replies = self.ask(wire)
        self.assertLessEqual(len(replies), 1)
        for reply in replies:
            self.assertEqual(reply[:2], wire[:2])
            dns.message.from_wire(reply)
        self.assertEqual(self.engine.stats["errors"], 0)


def _header(id: int = 99, flags: int = 0, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!6H", id, flags, qd, an, ns, ar)


class BadInputTests(EngineTestCase):
    """Malformed queries get FORMERR or silence, and the server answers others after."""

    def assertStillAnswers(self) -> None:
        reply = self.ask_one(twisted_query(b"www.example.org"))
        self.assertEqual(reply.answers[0].payload.dottedQuad(), "192.0.2.2")

    def assertFormErr(self, wire: bytes) -> None:
        replies = self.ask(wire)
        self.assertEqual(len(replies), 1, wire)
        self.assertEqual(replies[0][:2], wire[:2])
        self.assertEqual(replies[0][3] & 0x0F, dns.rcode.FORMERR, wire)
        self.assertStillAnswers()

    def test_truncated_header_silent(self) -> None:
        """Fewer than 12 octets cannot be answered (no ID): silence."""
        for n in range(12):
            self.assertEqual(self.ask(b"\x12" * n), [])
        self.assertStillAnswers()

    def test_response_silent(self) -> None:
        """A message with QR set is never answered (no reflection loops)."""
        self.assertEqual(self.ask(_header(flags=0x8000, qd=0)), [])
        self.assertStillAnswers()

    def test_pointer_loop(self) -> None:
        """A compression pointer pointing at itself is FORMERR."""
        self.assertFormErr(_header() + b"\xc0\x0c\x00\x01\x00\x01")

    def test_pointer_forward(self) -> None:
        """A compression pointer past the end is FORMERR."""
        self.assertFormErr(_header() + b"\xc0\xff\x00\x01\x00\x01")

    def test_label_too_long(self) -> None:
        """A label of 64 octets (length byte 0x40, a reserved label type) is FORMERR."""
        self.assertFormErr(_header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01")

    def test_name_too_long(self) -> None:
        """A name over 255 octets is FORMERR."""
        name = (b"\x3f" + b"a" * 63) * 4 + b"\x00"
        self.assertFormErr(_header() + name + b"\x00\x01\x00\x01")

    def test_qdcount_zero(self) -> None:
        """A query with no question is FORMERR."""
        self.assertFormErr(_header(qd=0))

    def test_qdcount_five(self) -> None:
        """Five questions (all present) is FORMERR: one per query."""
        question = b"\x03www\x07example\x03org\x00\x00\x01\x00\x01"
        self.assertFormErr(_header(qd=5) + question * 5)

    def test_qdcount_lies(self) -> None:
        """QDCOUNT 5 with one question present is FORMERR."""
        self.assertFormErr(_header(qd=5) + b"\x03www\x07example\x03org\x00\x00\x01\x00\x01")

    def test_trailing_garbage(self) -> None:
        """Bytes after the last record are FORMERR."""
        self.assertFormErr(twisted_query(b"www.example.org") + b"junk")

    def test_random_bytes(self) -> None:
        """Random datagrams never raise: each gets silence or a header-sized error reply."""
        rng = random.Random(6)
        for _ in range(2000):
            wire = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
            for reply in self.ask(wire):
                self.assertEqual(reply[:2], wire[:2])
                self.assertTrue(reply[2] & 0x80)
        self.assertStillAnswers()
        self.assertEqual(self.engine.stats["errors"], 0)


class FakeUDPTransport:
    """Collects what a datagram protocol writes."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.written.append((data, addr))


class DatagramProtocolTests(EngineTestCase):
    """L{DNSDatagramProtocol} answers each datagram to its sender."""

    def test_answers_sender(self) -> None:
        """A query is answered to the address it came from; garbage is not."""
        proto = DNSDatagramProtocol(self.engine)
        proto.transport = FakeUDPTransport()
        proto.datagramReceived(twisted_query(b"www.example.org"), ("127.0.0.1", 5353))
        proto.datagramReceived(b"\x00", ("127.0.0.1", 5354))
        proto.datagramReceived(twisted_query(b"nx.example.org"), ("127.0.0.2", 5355))
        self.assertEqual([addr for _, addr in proto.transport.written], [("127.0.0.1", 5353), ("127.0.0.2", 5355)])
        self.assertEqual(decode(proto.transport.written[1][0]).rCode, tdns.ENAME)


class RateLimitTests(EngineTestCase):
    """A flood from one address is cut at the rate limit; others are still answered."""

    def test_flood_does_not_starve_others(self) -> None:
        """Past C{rate} queries in one second an address is dropped; another address and the next second are served."""
        clock = task.Clock()
        self.engine.admit = RateLimiter(10, parse_networks(["127.0.0.0/8"]), clock)
        proto = DNSDatagramProtocol(self.engine)
        proto.transport = FakeUDPTransport()
        query = twisted_query(b"www.example.org")
        for _ in range(1000):
            proto.datagramReceived(query, ("198.51.100.7", 53000))
        proto.datagramReceived(query, ("198.51.100.8", 53000))
        proto.datagramReceived(query, ("127.0.0.1", 53000))
        senders = [addr[0] for _, addr in proto.transport.written]
        self.assertEqual(senders.count("198.51.100.7"), 10)
        self.assertEqual(senders[-2:], ["198.51.100.8", "127.0.0.1"])
        self.assertEqual(self.engine.stats["rate_limited"], 990)
        clock.advance(1)
        proto.datagramReceived(query, ("198.51.100.7", 53000))
        self.assertEqual(proto.transport.written[-1][1][0], "198.51.100.7")

    def test_zero_is_unlimited(self) -> None:
        """A rate of 0 limits no one."""
        limiter = RateLimiter(0, [], task.Clock())
        self.assertTrue(all(limiter("192.0.2.1") for _ in range(5000)))


class StreamProtocolTests(EngineTestCase):
    """L{DNSStreamProtocol} frames with two-octet lengths, pipelines, times out."""

    def connect(self, clock: task.Clock | None = None):
        factory = DNSStreamFactory(self.engine, idle_timeout=10)
        proto = factory.buildProtocol(None)
        proto.callLater = (clock or task.Clock()).callLater
        transport = StringTransport(peerAddress=None)
        proto.makeConnection(transport)
        return proto, transport

    def replies(self, transport: StringTransport) -> list[tdns.Message]:
        data = transport.value()
        out = []
        while data:
            size = int.from_bytes(data[:2], "big")
            out.append(decode(data[2 : 2 + size]))
            data = data[2 + size :]
        return out

    def test_pipelined_and_split(self) -> None:
        """Two queries in one segment, a third split byte by byte, all answered in order."""
        proto, transport = self.connect()
        framed = [
            len(w).to_bytes(2, "big") + w
            for w in (
                twisted_query(b"www.example.org", id=1),
                twisted_query(b"nx.example.org", id=2),
                twisted_query(b"big.example.org", tdns.TXT, id=3),
            )
        ]
        proto.dataReceived(framed[0] + framed[1])
        for i in range(len(framed[2])):
            proto.dataReceived(framed[2][i : i + 1])
        replies = self.replies(transport)
        self.assertEqual([r.id for r in replies], [1, 2, 3])
        self.assertEqual(len(replies[2].answers), 8)

    def test_zero_length_closes(self) -> None:
        """A zero-length message closes the connection."""
        proto, transport = self.connect()
        proto.dataReceived(b"\x00\x00")
        self.assertTrue(transport.disconnecting)

    def test_close_connections(self) -> None:
        """Stopping the service aborts open connections and waits for them."""
        factory = DNSStreamFactory(self.engine, idle_timeout=10)
        proto = factory.buildProtocol(None)
        proto.callLater = task.Clock().callLater
        transport = StringTransport()
        proto.makeConnection(transport)
        d = factory.close_connections()
        self.assertNoResult(d)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.successResultOf(d)
        self.assertEqual(factory.connections, set())

    def test_idle_timeout(self) -> None:
        """An idle connection is closed after the idle timeout."""
        clock = task.Clock()
        proto, transport = self.connect(clock)
        clock.advance(9)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)


class FakeClient:
    """An upstream whose answers the test controls."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []
        self.pending: list[defer.Deferred] = []

    def query(self, name: Any, rdtype: Any) -> defer.Deferred:
        self.asked.append((str(name), rdtype))
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d


def upstream_reply(name: str, rdtype: str = "A", text: str | None = "192.0.2.77", ttl: int = 100, rcode: int = 0, soa_ttl: int = 30):
    """An upstream reply message: one record, or none with an SOA (negative)."""
    message = dns.message.make_response(dns.message.make_query(name, rdtype))
    message.set_rcode(rcode)
    if text is not None:
        message.answer.append(dns.rrset.from_text(name, ttl, "IN", rdtype, text))
    else:
        message.authority.append(
            dns.rrset.from_text("example.com.", 3600, "IN", "SOA", f"ns. host. 1 2 3 4 {soa_ttl}")
        )
    return message


class ForwarderTests(EngineTestCase):
    """The caching forwarder: ACL, TTL-respecting cache, negative caching, coalescing."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.client = FakeClient()
        self.forwarder = Forwarder(self.client, AnswerCache(100, self.clock))
        super().setUp()

    def forward(self, name: bytes, host: str = "127.0.0.1", **kw: Any) -> list[bytes]:
        replies: list[bytes] = []
        self.engine.respond(twisted_query(name, rd=True, **kw), host, False, replies.append)
        return replies

    def test_reply_after_upstream(self) -> None:
        """The reply is sent when the upstream answers, with RA set and AA clear."""
        replies = self.forward(b"www.example.com", id=5)
        self.assertEqual(replies, [])
        self.client.pending[0].callback(upstream_reply("www.example.com."))
        reply = decode(replies[0])
        self.assertEqual(reply.id, 5)
        self.assertTrue(reply.recAv)
        self.assertFalse(reply.auth)
        self.assertEqual(reply.answers[0].payload.dottedQuad(), "192.0.2.77")

    def test_refused_outside_acl(self) -> None:
        """A client outside allow_recursion gets REFUSED and nothing is forwarded."""
        replies = self.forward(b"www.example.com", host="198.51.100.1")
        self.assertEqual(decode(replies[0]).rCode, tdns.EREFUSED)
        self.assertEqual(self.client.asked, [])

    def test_no_rd_refused(self) -> None:
        """A non-recursive query for a foreign name is REFUSED, not forwarded."""
        replies: list[bytes] = []
        self.engine.respond(twisted_query(b"www.example.com"), "127.0.0.1", False, replies.append)
        self.assertEqual(decode(replies[0]).rCode, tdns.EREFUSED)

    def test_cached_with_aged_ttl(self) -> None:
        """A second query is served from the cache with the TTL reduced by the time passed."""
        self.forward(b"www.example.com")
        self.client.pending[0].callback(upstream_reply("www.example.com.", ttl=100))
        self.clock.advance(40)
        replies = self.forward(b"WWW.example.com")
        self.assertEqual(len(self.client.asked), 1)
        self.assertEqual(decode(replies[0]).answers[0].ttl, 60)
        self.clock.advance(61)
        self.forward(b"www.example.com")
        self.assertEqual(len(self.client.asked), 2)

    def test_negative_cached_for_soa_minimum(self) -> None:
        """NXDOMAIN is cached for min(SOA TTL, MINIMUM) (RFC 2308)."""
        self.forward(b"nx.example.com")
        self.client.pending[0].callback(upstream_reply("nx.example.com.", text=None, rcode=3, soa_ttl=30))
        self.clock.advance(29)
        self.assertEqual(decode(self.forward(b"nx.example.com")[0]).rCode, tdns.ENAME)
        self.assertEqual(len(self.client.asked), 1)
        self.clock.advance(2)
        self.forward(b"nx.example.com")
        self.assertEqual(len(self.client.asked), 2)

    def test_coalesced(self) -> None:
        """Identical questions in flight share one upstream query."""
        first = self.forward(b"www.example.com", id=1)
        second = self.forward(b"www.example.com", id=2)
        self.assertEqual(len(self.client.asked), 1)
        self.client.pending[0].callback(upstream_reply("www.example.com."))
        self.assertEqual([decode(first[0]).id, decode(second[0]).id], [1, 2])

    def test_upstream_failure_servfail(self) -> None:
        """An upstream failure is SERVFAIL, and is not cached."""
        replies = self.forward(b"www.example.com")
        self.client.pending[0].errback(Failure(RuntimeError("no upstream")))
        self.assertEqual(decode(replies[0]).rCode, tdns.ESERVER)
        self.forward(b"www.example.com")
        self.assertEqual(len(self.client.asked), 2)

    def test_big_forwarded_answer_truncated(self) -> None:
        """A forwarded answer too big for the client's UDP size is sent truncated, not dropped."""
        replies = self.forward(b"big.example.com", qtype=tdns.TXT)
        message = upstream_reply("big.example.com.", "TXT", text=None)
        message.authority = []
        message.answer.append(
            dns.rrset.from_text_list("big.example.com.", 60, "IN", "TXT", [f'"{i}{"y" * 200}"' for i in range(8)])
        )
        self.client.pending[0].callback(message)
        reply = decode(replies[0])
        self.assertTrue(reply.trunc)
        self.assertLessEqual(len(replies[0]), 512)
        tcp: list[bytes] = []
        self.engine.respond(twisted_query(b"big.example.com", tdns.TXT, rd=True), "127.0.0.1", True, tcp.append)
        self.assertEqual(len(decode(tcp[0]).answers), 8)

    def test_tcp_pauses_while_many_in_flight(self) -> None:
        """A TCP client with 64 forwarded queries in flight is not read from until half are answered."""
        factory = DNSStreamFactory(self.engine, idle_timeout=10)
        proto = factory.buildProtocol(None)
        proto.callLater = task.Clock().callLater
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        frames = b""
        for i in range(70):
            wire = twisted_query(f"n{i}.example.com".encode(), rd=True, id=i)
            frames += len(wire).to_bytes(2, "big") + wire
        proto.dataReceived(frames)
        self.assertEqual(len(self.client.pending), 64)
        self.assertEqual(transport.producerState, "paused")
        for d in self.client.pending[:33]:
            d.callback(upstream_reply("x.example.com."))
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(self.client.pending), 70)

    def test_ra_on_authoritative_for_allowed(self) -> None:
        """With a forwarder, authoritative replies to allowed clients set RA; others not."""
        self.assertTrue(self.ask_one(twisted_query(b"www.example.org")).recAv)
        self.assertFalse(self.ask_one(twisted_query(b"www.example.org"), host="198.51.100.1").recAv)


class ZoneWatcherTests(SynchronousTestCase):
    """L{ZoneWatcher} reloads changed zone files and keeps old zones on errors."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        write_zone(self.dir)
        zones, _ = load_zones(self.dir)
        self.engine = DNSEngine(zones)
        self.watcher = ZoneWatcher(self.engine, self.dir, lambda: None, 1, task.Clock())

    def address(self) -> str:
        reply = decode(self.engine.fast_answer(twisted_query(b"www.example.org"), "127.0.0.1"))
        return reply.answers[0].payload.dottedQuad()

    def test_reload_on_change(self) -> None:
        """An edited zone file is served after the next check."""
        self.assertFalse(self.watcher.check())
        write_zone(self.dir, ZONE.replace("192.0.2.2\n", "192.0.2.222\n"))
        self.assertTrue(self.watcher.check())
        self.assertEqual(self.address(), "192.0.2.222")

    def test_broken_edit_keeps_serving(self) -> None:
        """A broken edit is reported with file and line; the old zone still answers."""
        write_zone(self.dir, ZONE + "oops IN A not-an-address\n")
        errors = self.watcher.reload()
        self.assertEqual(len(errors), 1)
        self.assertIn("example.org.zone:", str(errors[0]))
        self.assertEqual(self.address(), "192.0.2.2")
        self.flushLoggedErrors()

    def test_polled_by_clock(self) -> None:
        """Started, the watcher polls on the reactor's clock."""
        clock = task.Clock()
        watcher = ZoneWatcher(self.engine, self.dir, lambda: None, 1, clock)
        watcher.startService()
        self.addCleanup(watcher.stopService)
        write_zone(self.dir, ZONE.replace("192.0.2.2\n", "192.0.2.223\n"))
        clock.advance(1)
        self.assertEqual(self.address(), "192.0.2.223")


class _ImmediateReactor(task.Clock):
    """A clock whose callFromThread runs the call at once."""

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


class SighupTests(SynchronousTestCase):
    """SIGHUP reloads the zones."""

    setUp = ZoneWatcherTests.setUp
    address = ZoneWatcherTests.address

    def test_sighup_handler(self) -> None:
        """Started, the watcher owns SIGHUP; the handler reloads; stopping restores the old handler."""
        import signal

        before = signal.getsignal(signal.SIGHUP)
        watcher = ZoneWatcher(self.engine, self.dir, lambda: None, 0, _ImmediateReactor())
        watcher.startService()
        try:
            self.assertEqual(signal.getsignal(signal.SIGHUP), watcher._sighup)
            write_zone(self.dir, ZONE.replace("192.0.2.2\n", "192.0.2.224\n"))
            os.kill(os.getpid(), signal.SIGHUP)
            self.assertEqual(self.address(), "192.0.2.224")
        finally:
            watcher.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)


class LimitTests(SynchronousTestCase):
    """L{udp_limit} follows RFC 1035 and RFC 6891."""

    def test_limits(self) -> None:
        """512 without EDNS; the requester's size capped by ours; never below 512."""
        self.assertEqual(udp_limit(None, 1232), 512)
        self.assertEqual(udp_limit(4096, 1232), 1232)
        self.assertEqual(udp_limit(800, 1232), 800)
        self.assertEqual(udp_limit(100, 1232), 512)



class ClientPartsTests(SynchronousTestCase):
    """The client's pure parts: server strings, records, errors."""

    def test_parse_server(self) -> None:
        """IP, IP:PORT, [IPv6]:PORT and bare IPv6 all parse, port 53 by default."""
        from appnet.dns.client import parse_server

        self.assertEqual(parse_server("192.0.2.1"), ("192.0.2.1", 53))
        self.assertEqual(parse_server("192.0.2.1:5353"), ("192.0.2.1", 5353))
        self.assertEqual(parse_server("[::1]:5353"), ("::1", 5353))
        self.assertEqual(parse_server("::1"), ("::1", 53))

    def test_records_of(self) -> None:
        """An answer section becomes Records whose text is a dig answer line."""
        from appnet.dns.client import records_of

        reply = upstream_reply("example.com.", "MX", "10 mail.example.com.", ttl=60)
        (record,) = records_of(reply)
        self.assertEqual((record.name, record.type, record.ttl), ("example.com.", "MX", 60))
        self.assertEqual(record.rdata.preference, 10)
        self.assertEqual(record.to_text(), "example.com.\t60\tIN\tMX\t10 mail.example.com.")

    def test_errors_carry_rcode(self) -> None:
        """Each DNSError subclass names its RCODE."""
        from appnet.dns.client import NXDomain, QueryRefused, ServerFailure

        self.assertEqual(NXDomain("a.", "A").rcode, dns.rcode.NXDOMAIN)
        self.assertEqual(QueryRefused("a.", "A").rcode, dns.rcode.REFUSED)
        self.assertEqual(ServerFailure("a.", "A").rcode, dns.rcode.SERVFAIL)

    def test_needs_a_server(self) -> None:
        """A client without servers is refused at construction."""
        from appnet.dns.client import DNSClient

        self.assertRaises(ValueError, DNSClient, [], reactor=task.Clock())


class ConfigTests(SynchronousTestCase):
    """The [dns] section checks its values."""

    def test_refusals(self) -> None:
        """Bad forwarders, networks, UDP-as-TCP and payload sizes stop start-up naming the key."""
        from appnet.config import ConfigError, load_config

        for key, value in [
            ("forwarders", ["not-an-ip"]),
            ("forwarders", ["192.0.2.1:99999"]),
            ("allow_recursion", ["10.0.0.0/33"]),
            ("listen_tcp", ["udp:53"]),
            ("listen_udp", ["tcp:53"]),
            ("max_udp_payload", 100),
        ]:
            with self.assertRaises(ConfigError) as caught:
                load_config(overrides={"dns": {key: value}})
            self.assertIn(f"dns.{key}", str(caught.exception))

    def test_own_domain(self) -> None:
        """The own domain is dns.domain, else the hostname's parent, else the hostname."""
        from appnet.config import load_config
        from appnet.dns.tap import own_domain

        self.assertEqual(own_domain(load_config(overrides={"": {"hostname": "mail.example.net"}})), "example.net")
        self.assertEqual(own_domain(load_config()), "localhost")
        self.assertEqual(
            own_domain(load_config(overrides={"": {"hostname": "mx.a.test"}, "dns": {"domain": "b.test"}})), "b.test"
        )
