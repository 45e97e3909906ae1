"""
The DNS server: one L{DNSEngine} (zones, policy, the answer cache) behind a
thin UDP protocol and a thin TCP protocol.

Why not C{twisted.names.server.DNSServerFactory}: it never truncates UDP
replies (twisted/twisted#6949), answers EDNS(0) queries without an OPT record
(#5669), leaves AA off authoritative NXDOMAIN (#11990), and its
C{BindAuthority} cannot read a multi-line parenthesised SOA (#5470); and every
answer goes through its resolver chain (a Deferred and a fresh encoding per
query). The engine here decodes with dnspython, answers authoritative
questions from L{appnet.dns.answers} (encoded once), forwards the rest for
allowed clients through L{appnet.dns.forwarder}, and maps every malformed
query to FORMERR or silence as RFC 1035 and RFC 6891 say.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import struct
from typing import Any, Callable, Iterable, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from appnet.dns.answers import (
    CLASSIC_UDP_LIMIT,
    PreparedAnswer,
    answer_key,
    assemble,
    header_error,
    opt_record,
    prepare_answer,
    scan_query,
    udp_limit,
)
from appnet.dns.zones import Zone, ZoneSet, load_zones

__all__ = [
    "DNSEngine",
    "DNSDatagramProtocol",
    "DNSStreamProtocol",
    "DNSStreamFactory",
    "StreamCloser",
    "ZoneWatcher",
    "RateLimiter",
    "parse_networks",
]

_log = Logger()

_IN = dns.rdataclass.IN
_AXFR = dns.rdatatype.AXFR
_IXFR = dns.rdatatype.IXFR
_RD = dns.flags.RD
#: How many answers beyond the precomputed ones are remembered (a flood of
#: random names must not grow memory without bound).
MEMO_EXTRA = 50_000
#: Precompute at most this many answers at load time.
PRECOMPUTE_MAX = 200_000
#: Target size of one AXFR message.
AXFR_CHUNK = 16_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Send = Callable[[bytes], None]


def parse_networks(cidrs: Iterable[str]) -> list[Network]:
    """C{["127.0.0.0/8", "::1"]} -> networks; a bare address is a /32 or /128."""
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


class _AddressPolicy:
    """Is an address in a list of networks? Memoised, bounded."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self.networks = list(networks)
        self._memo: dict[str, bool] = {}

    def __call__(self, host: str) -> bool:
        allowed = self._memo.get(host)
        if allowed is None:
            try:
                address = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                allowed = False
            else:
                if getattr(address, "ipv4_mapped", None) is not None:
                    address = address.ipv4_mapped
                allowed = any(address in net for net in self.networks)
            if len(self._memo) > 10_000:
                self._memo.clear()
            self._memo[host] = allowed
        return allowed


class RateLimiter:
    """
    At most C{rate} UDP queries per second from one address (a one-second
    window per address), so a flood from one source costs a dictionary
    update per datagram instead of an answer and cannot starve the others.
    Addresses in C{exempt} are never limited; C{rate} 0 limits no one.
    """

    def __init__(self, rate: int, exempt: Sequence[Network], clock: Any) -> None:
        self.rate = rate
        self.exempt = _AddressPolicy(exempt)
        self.clock = clock
        self._windows: dict[str, tuple[int, int]] = {}

    def __call__(self, host: str) -> bool:
        """True when a query from C{host} may be answered now."""
        if self.rate <= 0:
            return True
        exempt = self.exempt._memo.get(host)
        if exempt is None:
            exempt = self.exempt(host)
        if exempt:
            return True
        now = int(self.clock.seconds())
        window, count = self._windows.get(host, (now, 0))
        if window != now:
            window, count = now, 0
        if len(self._windows) > 100_000:
            self._windows.clear()
        self._windows[host] = (window, count + 1)
        return count < self.rate


class DNSEngine:
    """
    Everything a DNS server decides, for both transports.

    @ivar zones: the L{ZoneSet} served (swap with L{set_zones})
    @ivar forwarder: an L{appnet.dns.forwarder.Forwarder}, or L{None} for an
        authoritative-only server
    @ivar max_udp_payload: the EDNS UDP payload size we advertise and honour
    """

    def __init__(
        self,
        zones: ZoneSet,
        *,
        forwarder: Any = None,
        allow_recursion: Sequence[Network] = (),
        allow_axfr: Sequence[Network] = (),
        max_udp_payload: int = 1232,
        stats: Any = None,
        trace: bool = False,
        rate_limit: RateLimiter | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.admit: Callable[[str], bool] = rate_limit or (lambda host: True)
        self.may_recurse = _AddressPolicy(allow_recursion)
        self.may_transfer = _AddressPolicy(allow_axfr)
        self.max_udp_payload = max_udp_payload
        self.opt = opt_record(max_udp_payload)
        self.opt_do = opt_record(max_udp_payload, dnssec_ok=True)
        self.trace = trace
        if stats is None:
            from appnet.stats import ServiceStats

            stats = ServiceStats("dns")
        self.stats = stats
        self._counters = stats.counters
        self._ra_memo: dict[str, bool] = {}
        self.set_zones(zones)

    # -- zones ---------------------------------------------------------

    def set_zones(self, zones: ZoneSet) -> None:
        """Serve C{zones} from now on; answers are precomputed here."""
        answers: dict[bytes, PreparedAnswer] = {}
        for zone in zones:
            for name, rdtype in zone.positive_keys():
                if len(answers) >= PRECOMPUTE_MAX:
                    break
                answers[answer_key(name, rdtype, _IN)] = prepare_answer(
                    name, rdtype, _IN, zone.lookup(name, rdtype)
                )
        self.zones = zones
        self._answers = answers
        self._memo_limit = len(answers) + MEMO_EXTRA

    def _recursion_available(self, host: str) -> bool:
        ra = self._ra_memo.get(host)
        if ra is None:
            ra = self.forwarder is not None and self.may_recurse(host)
            if len(self._ra_memo) > 10_000:
                self._ra_memo.clear()
            self._ra_memo[host] = ra
        return ra

    # -- the fast path ---------------------------------------------------

    def fast_answer(self, data: bytes, host: str) -> bytes | None:
        """
        The UDP reply to a simple query whose answer is already encoded, or
        L{None} when L{respond} must handle it.
        """
        if self.trace:
            return None  # traced queries take the full path, which logs them
        scanned = scan_query(data)
        if scanned is None:
            return None
        key, question, payload = scanned
        answer = self._answers.get(key)
        if answer is None:
            return None
        self._counters["queries"] += 1
        ra = self._ra_memo.get(host)
        if ra is None:
            ra = self._recursion_available(host)
        if payload is None:
            return assemble(data, question, answer, None, ra, CLASSIC_UDP_LIMIT)
        # RFC 3225 section 3: the DO bit is copied into the reply's OPT.
        opt = self.opt_do if data[19 + len(question)] & 0x80 else self.opt
        return assemble(data, question, answer, opt, ra, udp_limit(payload, self.max_udp_payload))

    # -- the full path ---------------------------------------------------

    def respond(self, data: bytes, host: str, tcp: bool, send: Send) -> None:
        """
        Answer one DNS message, calling C{send} with each reply (none for
        silence, several for AXFR, possibly later for forwarded queries).
        Never raises: a bug of ours becomes SERVFAIL and one log line.
        """
        if self.trace:
            send = _traced(send, host, tcp)
        try:
            self._respond(data, host, tcp, send)
        except Exception:
            _log.failure("DNS query from {host} failed", host=host)
            self._counters["errors"] += 1
            if len(data) >= 12:
                send(header_error(data, dns.rcode.SERVFAIL))

    def _respond(self, data: bytes, host: str, tcp: bool, send: Send) -> None:
        self._counters["queries"] += 1
        if len(data) < 12 or data[2] & 0x80:
            # No header to answer, or a response: replying could loop.
            self._counters["dropped"] += 1
            return
        try:
            query = dns.message.from_wire(data)
        except dns.message.ShortHeader:
            self._counters["dropped"] += 1
            return
        except (dns.exception.DNSException, ValueError, UnicodeError) as e:
            self._counters["formerr"] += 1
            if self.trace:
                _log.info("DNS {host}: FORMERR ({why})", host=host, why=e)
            send(header_error(data, dns.rcode.FORMERR))
            return
        limit = 65535 if tcp else udp_limit(
            query.payload if query.edns >= 0 else None, self.max_udp_payload
        )
        if query.opcode() != dns.opcode.QUERY:
            self._refuse(query, dns.rcode.NOTIMP, limit, send)
            return
        if len(query.question) != 1:
            self._counters["formerr"] += 1
            send(header_error(data, dns.rcode.FORMERR))
            return
        if query.edns > 0:
            self._refuse(query, dns.rcode.BADVERS, limit, send)
            return
        question = query.question[0]
        qname, qtype, qclass = question.name, question.rdtype, question.rdclass
        if qtype in (_AXFR, _IXFR):
            self._transfer(query, host, tcp, limit, send)
            return
        if dns.rdatatype.is_metatype(qtype) and qtype != dns.rdatatype.ANY:
            self._counters["formerr"] += 1
            self._refuse(query, dns.rcode.FORMERR, limit, send)
            return
        zone = self.zones.find(qname) if qclass == _IN else None
        if zone is not None:
            answer = self._authoritative(zone, qname, qtype, qclass)
            question_wire = qname.to_wire() + struct.pack("!HH", qtype, qclass)
            send(
                assemble(
                    data,
                    question_wire,
                    answer,
                    None if query.edns < 0 else self.opt_do if query.ednsflags & dns.flags.DO else self.opt,
                    self._recursion_available(host),
                    limit,
                )
            )
            return
        if (
            self.forwarder is None
            or qclass != _IN
            or not query.flags & _RD
            or not self.may_recurse(host)
        ):
            self._counters["refused"] += 1
            self._refuse(query, dns.rcode.REFUSED, limit, send)
            return
        self._forward(query, limit, send)

    def _authoritative(self, zone: Zone, qname: dns.name.Name, qtype: int, qclass: int) -> PreparedAnswer:
        key = answer_key(qname, qtype, qclass)
        answer = self._answers.get(key)
        if answer is None:
            answer = prepare_answer(qname, qtype, qclass, zone.lookup(qname, qtype))
            if len(self._answers) < self._memo_limit:
                self._answers[key] = answer
        return answer

    def _reply(self, query: dns.message.Message) -> dns.message.Message:
        reply = dns.message.make_response(query, our_payload=self.max_udp_payload)
        if query.edns >= 0 and query.ednsflags & dns.flags.DO:
            reply.ednsflags |= dns.flags.DO
        if self.forwarder is not None:
            reply.flags |= dns.flags.RA
        return reply

    def _refuse(self, query: dns.message.Message, rcode: int, limit: int, send: Send) -> None:
        reply = self._reply(query)
        reply.set_rcode(rcode)
        send(_render(reply, limit))

    def _forward(self, query: dns.message.Message, limit: int, send: Send) -> None:
        question = query.question[0]
        self._counters["forwarded"] += 1

        def answered(result: Any) -> None:
            reply = self._reply(query)
            reply.flags |= dns.flags.RA
            reply.set_rcode(result.rcode)
            reply.answer = list(result.answer)
            reply.authority = list(result.authority)
            reply.additional = list(result.additional)
            send(_render(reply, limit))

        def failed(reason: Any) -> None:
            _log.info(
                "DNS forwarding {name} failed: {why}",
                name=question.name,
                why=reason.getErrorMessage(),
            )
            self._counters["servfail"] += 1
            reply = self._reply(query)
            reply.set_rcode(dns.rcode.SERVFAIL)
            send(_render(reply, limit))

        d = self.forwarder.resolve(question.name, question.rdtype)
        d.addCallbacks(answered, failed)
        d.addErrback(lambda f: _log.failure("DNS forwarded reply failed", f))

    def _transfer(self, query: dns.message.Message, host: str, tcp: bool, limit: int, send: Send) -> None:
        qname = query.question[0].name
        zone = self.zones.zones.get(qname)
        if zone is None or not self.may_transfer(host):
            self._counters["refused"] += 1
            _log.info("DNS zone transfer of {zone} refused to {host}", zone=qname, host=host)
            self._refuse(query, dns.rcode.REFUSED, limit, send)
            return
        if not tcp:
            # RFC 1995 section 2: over UDP an IXFR gets the SOA alone; AXFR
            # is TCP only (RFC 5936 section 4.2).
            reply = self._reply(query)
            reply.flags |= dns.flags.AA
            if query.question[0].rdtype == _IXFR:
                reply.answer = [zone.soa]
            else:
                reply.set_rcode(dns.rcode.FORMERR)
            send(_render(reply, limit))
            return
        self._counters["transfers"] += 1
        _log.info("DNS zone transfer of {zone} to {host}", zone=qname, host=host)
        for chunk in _chunks(zone, AXFR_CHUNK):
            reply = self._reply(query)
            reply.flags |= dns.flags.AA
            reply.answer = chunk
            send(reply.to_wire(max_size=65535))


def _traced(send: Send, host: str, tcp: bool) -> Send:
    """C{send}, logging one line per reply: question, RCODE, flags, counts, size."""

    def traced(reply: bytes) -> None:
        try:
            message = dns.message.from_wire(reply, one_rr_per_rrset=True)
            question = message.question[0] if message.question else None
            asked = f"{question.name} {dns.rdatatype.to_text(question.rdtype)}" if question is not None else "(no question)"
            rcode = dns.rcode.to_text(message.rcode())
            flags = dns.flags.to_text(message.flags).lower()
            counts = f"{sum(len(r) for r in message.answer)} answer, {sum(len(r) for r in message.authority)} authority"
        except Exception as e:  # a trace line must never stop a reply
            asked, rcode, flags, counts = "?", "?", "?", str(e)
        _log.info(
            "DNS {host}{via} {asked}: {rcode} [{flags}] {counts}, {size} octets",
            host=host,
            via=" tcp" if tcp else "",
            asked=asked,
            rcode=rcode,
            flags=flags,
            counts=counts,
            size=len(reply),
        )
        send(reply)

    return traced


def _chunks(zone: Zone, size: int) -> Iterable[list]:
    """The zone's RRsets, SOA first and last, in groups of about C{size} octets."""
    rrsets = list(zone.iterate_rrsets()) + [zone.soa]
    chunk: list = []
    used = 0
    for rrset in rrsets:
        estimate = sum(len(rdata.to_wire()) + 12 for rdata in rrset) + len(rrset.name.to_wire())
        if chunk and used + estimate > size:
            yield chunk
            chunk, used = [], 0
        chunk.append(rrset)
        used += estimate
    if chunk:
        yield chunk


def _render(message: dns.message.Message, limit: int) -> bytes:
    """Encode C{message}, truncated (TC, no records) if over C{limit}."""
    # dnspython would cap at the requester's EDNS size and raise; we decide.
    wire = message.to_wire(max_size=65535)
    if len(wire) > limit:
        message.flags |= dns.flags.TC
        message.answer = []
        message.authority = []
        message.additional = []
        wire = message.to_wire(max_size=65535)
    return wire


class DNSDatagramProtocol(DatagramProtocol):
    """DNS over UDP: the fast path first, the engine for everything else."""

    noisy = False

    def __init__(self, engine: DNSEngine) -> None:
        self.engine = engine
        self._sendto: Any = None

    def startProtocol(self) -> None:
        # udp.Port.write re-validates the address of every datagram (it
        # came from recvfrom, so it is valid): a third of the fast path's
        # cost. Send on the port's own socket (IListeningPort.getHandle).
        handle = getattr(self.transport, "getHandle", None)
        self._sendto = handle().sendto if handle is not None else None

    def stopProtocol(self) -> None:
        self._sendto = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if not self.engine.admit(addr[0]):
            self.engine._counters["rate_limited"] += 1
            return
        reply = self.engine.fast_answer(data, addr[0])
        if reply is not None:
            self._write(reply, addr)
            return
        self.engine.respond(data, addr[0], False, lambda r: self._write(r, addr))

    def _write(self, reply: bytes, addr: Any) -> None:
        try:
            if self._sendto is not None:
                self._sendto(reply, addr)
            elif self.transport is not None:
                self.transport.write(reply, addr)
        except OSError as e:
            # A full socket buffer drops the reply, as the network might.
            self.engine._counters["send_errors"] += 1
            _log.debug("DNS reply to {addr} not sent: {e}", addr=addr, e=e)


class DNSStreamProtocol(Protocol, TimeoutMixin):
    """
    DNS over TCP (RFC 7766): two-octet length framing, pipelined queries,
    an idle timeout, and at most C{max_pending} forwarded queries in flight
    before reading pauses.
    """

    max_pending = 64

    def __init__(self, engine: DNSEngine, idle_timeout: float) -> None:
        self.engine = engine
        self.idle_timeout = idle_timeout
        self._buffer = b""
        self._pending = 0
        self._paused = False
        self.host = ""
        self.closed: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.host = getattr(peer, "host", "") or ""
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self.setTimeout(self.idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self._buffer += data
        while len(self._buffer) >= 2 and not self._paused:
            size = int.from_bytes(self._buffer[:2], "big")
            if size == 0:
                self.transport.loseConnection()
                self._buffer = b""
                return
            if len(self._buffer) < 2 + size:
                break
            message = self._buffer[2 : 2 + size]
            self._buffer = self._buffer[2 + size :]
            self._pending += 1
            sent = [False]

            def send(reply: bytes, sent: list = sent) -> None:
                if not sent[0]:
                    sent[0] = True
                    self._done()
                self._send(reply)

            self.engine.respond(message, self.host, True, send)
            if not sent[0]:
                # Silence or a reply still to come: count it as in flight
                # only while it may yet come.
                if not _may_answer_later(message):
                    sent[0] = True
                    self._done()
            if self._pending >= self.max_pending and not self._paused:
                self._paused = True
                self.transport.pauseProducing()

    def _done(self) -> None:
        self._pending -= 1
        if self._paused and self._pending < self.max_pending // 2:
            self._paused = False
            self.transport.resumeProducing()
            if self._buffer:
                self.dataReceived(b"")

    def _send(self, reply: bytes) -> None:
        if self.transport is not None and self.connected:
            self.transport.write(len(reply).to_bytes(2, "big") + reply)

    def timeoutConnection(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        factory = getattr(self, "factory", None)
        if factory is not None:
            factory.connections.discard(self)
        self.closed.callback(None)


def _may_answer_later(message: bytes) -> bool:
    # Only a well-formed query can be forwarded; a short or response
    # message has been dropped for good.
    return len(message) >= 12 and not message[2] & 0x80


class DNSStreamFactory(Factory):
    """Builds L{DNSStreamProtocol}s sharing one engine."""

    noisy = False

    def __init__(self, engine: DNSEngine, idle_timeout: float = 10.0) -> None:
        self.engine = engine
        self.idle_timeout = idle_timeout
        self.connections: set[DNSStreamProtocol] = set()

    def buildProtocol(self, addr: Any) -> DNSStreamProtocol:
        proto = DNSStreamProtocol(self.engine, self.idle_timeout)
        proto.factory = self
        self.connections.add(proto)
        return proto

    def close_connections(self) -> defer.Deferred:
        """Abort every open connection; fires when all are gone."""
        waiting = [p.closed for p in self.connections]
        for proto in list(self.connections):
            if proto.transport is not None:
                proto.transport.abortConnection()
        return defer.DeferredList(waiting)


class StreamCloser(service.Service):
    """Closes a L{DNSStreamFactory}'s connections when the service stops."""

    def __init__(self, factory: DNSStreamFactory) -> None:
        self.factory = factory

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return self.factory.close_connections()


class ZoneWatcher(service.Service):
    """
    Reloads the zones when a zone file changes (polled every C{interval}
    seconds; 0 to poll never) and on SIGHUP. A file that fails to load is
    logged with its file and line, and its old zone keeps serving. Zones
    whose SOA serial changed are announced with C{notifier} (NOTIFY), if any.
    """

    def __init__(
        self,
        engine: DNSEngine,
        zones_dir: str,
        own_zone: Callable[[], Zone | None],
        interval: float,
        reactor: Any,
        notifier: Any = None,
    ) -> None:
        self.engine = engine
        self.notifier = notifier
        self.zones_dir = zones_dir
        self.own_zone = own_zone
        self.interval = interval
        self.reactor = reactor
        self._signature = self._scan()
        self._loop: task.LoopingCall | None = None
        self._previous_handler: Any = None

    def _scan(self) -> tuple:
        try:
            names = sorted(os.listdir(self.zones_dir))
        except OSError:
            return ()
        signature = []
        for name in names:
            try:
                st = os.stat(os.path.join(self.zones_dir, name))
            except OSError:
                continue
            signature.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(signature)

    def check(self) -> bool:
        """Reload if any zone file changed; return whether it reloaded."""
        signature = self._scan()
        if signature == self._signature:
            return False
        self._signature = signature
        self.reload()
        return True

    def reload(self) -> list:
        """Load the zones again now; return the errors met."""
        before = {zone.origin: zone.serial for zone in self.engine.zones}
        zones, errors = load_zones(self.zones_dir, self.own_zone(), self.engine.zones)
        for error in errors:
            _log.error("DNS zone not reloaded: {error}", error=str(error))
        self.engine.set_zones(zones)
        if self.notifier is not None:
            for zone in zones:
                if before.get(zone.origin) != zone.serial:
                    self.notifier.notify(zone).addErrback(
                        lambda f: _log.failure("DNS NOTIFY failed", f)
                    )
        _log.info(
            "DNS zones loaded: {zones}",
            zones=", ".join(f"{z.origin} (serial {z.serial})" for z in zones) or "none",
        )
        return errors

    def _sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    def startService(self) -> None:
        super().startService()
        if self.interval > 0:
            self._loop = task.LoopingCall(self.check)
            self._loop.clock = self.reactor
            self._loop.start(self.interval, now=False)
        if hasattr(signal, "SIGHUP") and hasattr(self.reactor, "callFromThread"):
            try:
                self._previous_handler = signal.signal(signal.SIGHUP, self._sighup)
            except ValueError:
                pass  # not the main thread (e.g. under a test runner thread)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._previous_handler is not None:
            try:
                signal.signal(signal.SIGHUP, self._previous_handler)
            except ValueError:
                pass
            self._previous_handler = None
