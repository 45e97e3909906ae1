"""
The fast answer path: authoritative answers encoded once, sent many times.

Twisted's stock server builds every reply through its resolver chain: a
Deferred, a C{dns.Message}, a fresh encoding. Here an authoritative answer
for one (name, type, class) is rendered once into a L{PreparedAnswer} (the
header counts and the wire bytes after the question, compressed against the
question name); a reply is then the query's ID and flags, those counts, the
query's own question bytes (so the asker's letter case, RFC 4343 and 0x20
randomisation, comes back unchanged) and the prepared body. Compression
pointers in the body only point into the question name, whose label lengths
are the same whatever the case, so they stay valid.

L{scan_query} is a strict parser for the one query shape that matters: QR=0,
OPCODE=QUERY, one question, no answer or authority records, at most an
EDNS(0) OPT record. Anything else returns L{None} and takes the full
dnspython path, which owns every error reply. Pure functions; no Twisted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.message
import dns.name

from appnet.dns.zones import Lookup

__all__ = [
    "PreparedAnswer",
    "ScannedQuery",
    "prepare_answer",
    "scan_query",
    "assemble",
    "assemble_truncated",
    "header_error",
    "answer_key",
    "opt_record",
    "udp_limit",
]

#: Largest UDP reply without EDNS (RFC 1035 section 4.2.1).
CLASSIC_UDP_LIMIT = 512


@dataclass(frozen=True, slots=True)
class PreparedAnswer:
    """
    One authoritative answer, encoded.

    @ivar flags1: first flags byte without RD (QR, AA)
    @ivar rcode: the RCODE (low four bits of the second flags byte)
    @ivar counts: ANCOUNT, NSCOUNT, ARCOUNT (6 bytes) for a reply without OPT
    @ivar counts_edns: the same with ARCOUNT one higher, for the OPT record
    @ivar body: answer, authority and additional sections
    """

    flags1: int
    rcode: int
    counts: bytes
    counts_edns: bytes
    body: bytes


#: What L{scan_query} returns: (key, question, payload). C{key} is the
#: lower-cased question name in wire form + QTYPE + QCLASS; C{question} the
#: question section exactly as sent; C{payload} the EDNS UDP payload size, or
#: L{None} without EDNS. A plain tuple: this runs once per query.
ScannedQuery = tuple[bytes, bytes, "int | None"]


def answer_key(qname: dns.name.Name, qtype: int, qclass: int) -> bytes:
    """The key L{scan_query} computes for a question."""
    return qname.canonicalize().to_wire() + struct.pack("!HH", qtype, qclass)


def opt_record(payload: int, dnssec_ok: bool = False) -> bytes:
    """Our EDNS(0) OPT RR: root owner, our UDP payload size, no options; DO if asked."""
    flags = b"\x80\x00" if dnssec_ok else b"\x00\x00"
    return b"\x00\x00\x29" + payload.to_bytes(2, "big") + b"\x00\x00" + flags + b"\x00\x00"


def udp_limit(payload: int | None, our_max: int) -> int:
    """
    The largest UDP reply allowed: 512 octets without EDNS, else the
    requester's payload size capped at ours (never below 512, RFC 6891 6.2.5).
    """
    if payload is None:
        return CLASSIC_UDP_LIMIT
    return max(CLASSIC_UDP_LIMIT, min(payload, our_max))


def scan_query(data: bytes) -> ScannedQuery | None:
    """
    Parse a simple query strictly, or return L{None} for the full path.

    Accepted: QR=0, OPCODE 0, QDCOUNT 1, ANCOUNT and NSCOUNT 0, ARCOUNT 0
    or one EDNS version 0 OPT record with a root owner, an uncompressed name
    of at most 255 octets, nothing trailing.
    """
    n = len(data)
    if n < 17 or data[2] & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00":
        return None
    i = 12
    try:
        length = data[i]
        while length:
            if length > 63:
                return None  # compression pointer or reserved label type
            i += length + 1
            length = data[i]
    except IndexError:
        return None
    i += 1
    if i - 12 > 255:
        return None
    qend = i + 4
    arcount = data[10:12]
    if arcount == b"\x00\x00":
        if qend != n:
            return None
        payload = None
    elif arcount == b"\x00\x01":
        # OPT: owner 0, type 41, class = payload, ttl = xrcode/version/flags.
        if (
            n < qend + 11
            or data[qend : qend + 3] != b"\x00\x00\x29"
            or data[qend + 5] != 0
            or data[qend + 6] != 0
            or qend + 11 + int.from_bytes(data[qend + 9 : qend + 11], "big") != n
        ):
            return None
        payload = int.from_bytes(data[qend + 3 : qend + 5], "big")
    else:
        return None
    return (data[12:i].lower() + data[i:qend], data[12:qend], payload)


def prepare_answer(
    qname: dns.name.Name, qtype: int, qclass: int, lookup: Lookup
) -> PreparedAnswer:
    """Render a L{Lookup} once, for L{assemble} to reuse."""
    message = dns.message.Message(id=0)
    message.find_rrset(message.question, qname, qclass, qtype, create=True, force_unique=True)
    message.answer = list(lookup.answer)
    message.authority = list(lookup.authority)
    message.additional = list(lookup.additional)
    wire = message.to_wire(max_size=65535)
    qend = 12 + len(qname.to_wire()) + 4
    arcount = int.from_bytes(wire[10:12], "big")
    return PreparedAnswer(
        flags1=0x84 if lookup.authoritative else 0x80,
        rcode=lookup.rcode,
        counts=wire[6:12],
        counts_edns=wire[6:10] + (arcount + 1).to_bytes(2, "big"),
        body=wire[qend:],
    )


def assemble(
    query: bytes,
    question: bytes,
    answer: PreparedAnswer,
    opt: bytes | None,
    recursion_available: bool,
    limit: int,
) -> bytes:
    """
    The reply to C{query} carrying C{answer}, or its truncated form (TC set,
    no records but OPT) when longer than C{limit}.

    @param query: the query as received (ID and flags are taken from it)
    @param question: the question section to echo
    @param opt: our OPT record when the query had EDNS, else L{None}
    """
    flags1 = answer.flags1 | (query[2] & 0x01)
    flags2 = (0x80 if recursion_available else 0) | (query[3] & 0x10) | answer.rcode
    if opt is None:
        reply = b"".join(
            (query[:2], bytes((flags1, flags2)), b"\x00\x01", answer.counts, question, answer.body)
        )
    else:
        reply = b"".join(
            (
                query[:2],
                bytes((flags1, flags2)),
                b"\x00\x01",
                answer.counts_edns,
                question,
                answer.body,
                opt,
            )
        )
    if len(reply) > limit:
        return assemble_truncated(query, question, flags1, flags2, opt)
    return reply


def assemble_truncated(
    query: bytes, question: bytes, flags1: int, flags2: int, opt: bytes | None
) -> bytes:
    """A reply with TC set and only the question (and OPT): ask again over TCP."""
    counts = b"\x00\x01\x00\x00\x00\x00" + (b"\x00\x01" if opt is not None else b"\x00\x00")
    return b"".join((query[:2], bytes((flags1 | 0x02, flags2)), counts, question, opt or b""))


def header_error(query: bytes, rcode: int) -> bytes:
    """
    A header-only reply (ID, OPCODE and RD copied) with C{rcode}, for a
    query too broken to echo its question (RFC 1035 FORMERR).
    """
    flags1 = 0x80 | (query[2] & 0x79)
    return query[:2] + bytes((flags1, rcode & 0x0F)) + b"\x00" * 8

