"""
Interop tests for DNS: third-party clients against appnet's server, and
appnet's client and forwarder against dnsmasq.

 - dig (bind9-dnsutils): UDP, C{+tcp}, C{+bufsize}, C{+norecurse}, C{AXFR},
   NXDOMAIN with AA and SOA, truncation of a big TXT set and dig's own TCP
   retry, C{+dnssec} (DO echoed), EDNS version 1 -> BADVERS;
 - dnspython's stub resolver (C{dns.resolver}), including its TCP retry,
   and C{dns.query.xfr};
 - appnet's L{DNSClient} against dnsmasq (dnsmasq-base), and appnet's
   forwarder with dnsmasq as the upstream.

Each test needs its tool (L{require_tool}): skipped when it is missing,
failed when C{APPNET_REQUIRE_INTEROP=1}. dig runs as a child process through
the reactor; blocking dnspython calls run in a thread, so the reactor keeps
serving.
"""

from __future__ import annotations

import os
from typing import Any

import dns.query
import dns.resolver
import dns.zone
from twisted.internet import defer, protocol, threads, utils
from twisted.trial.unittest import TestCase

from appnet.dns.client import DNSClient, DNSTimeout
from tests.integration.test_dns import start_dns
from tests.support import free_tcp_port, require_tool


async def dig(server: Any, *args: str) -> str:
    """Run dig against C{server}; return its output."""
    path = require_tool("dig")
    out, err, code = await utils.getProcessOutputAndValue(
        path, ["@127.0.0.1", "-p", str(server.udp_port), "+time=2", "+tries=1", *args], env=os.environ
    )
    return out.decode()


def flags_of(output: str) -> set[str]:
    """The header flags dig printed (C{qr aa tc ...})."""
    for line in output.splitlines():
        if line.startswith(";; flags:"):
            return set(line.split(":")[1].split(";")[0].split())
    raise AssertionError(f"no flags line in:\n{output}")


def answers_of(output: str, rtype: str) -> list[str]:
    """The rdata of each answer-section record of C{rtype}."""
    out = []
    for line in output.splitlines():
        fields = line.split(None, 4)
        if len(fields) == 5 and not line.startswith(";") and fields[3] == rtype:
            out.append(fields[4])
    return out


class DigTests(TestCase):
    """dig against appnet's server."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        require_tool("dig")
        self.server = yield defer.Deferred.fromCoroutine(start_dns(self))

    def dig(self, *args: str) -> defer.Deferred[str]:
        return defer.Deferred.fromCoroutine(dig(self.server, *args))

    @defer.inlineCallbacks
    def test_udp(self) -> Any:
        """A plain UDP query: NOERROR, AA, the A record, an OPT record (EDNS)."""
        out = yield self.dig("www.example.org", "A")
        self.assertIn("status: NOERROR", out)
        self.assertIn("aa", flags_of(out))
        self.assertEqual(answers_of(out, "A"), ["192.0.2.2"])
        self.assertIn("EDNS: version: 0", out)

    @defer.inlineCallbacks
    def test_tcp_mx(self) -> Any:
        """+tcp: the MX record and its glue over TCP."""
        out = yield self.dig("+tcp", "example.org", "MX")
        self.assertEqual(answers_of(out, "MX"), ["10 mail.example.org."])
        self.assertIn("mail.example.org.\t300\tIN\tA\t192.0.2.25", out)

    @defer.inlineCallbacks
    def test_norecurse(self) -> Any:
        """+norecurse: the answer comes back with RD clear."""
        out = yield self.dig("+norecurse", "www.example.org")
        self.assertNotIn("rd", flags_of(out))
        self.assertEqual(answers_of(out, "A"), ["192.0.2.2"])

    @defer.inlineCallbacks
    def test_nxdomain(self) -> Any:
        """NXDOMAIN with AA and the SOA in the authority section."""
        out = yield self.dig("nothing.example.org")
        self.assertIn("status: NXDOMAIN", out)
        self.assertIn("aa", flags_of(out))
        self.assertIn("AUTHORITY SECTION", out)
        self.assertEqual(len(answers_of(out, "SOA")), 1)

    @defer.inlineCallbacks
    def test_truncation(self) -> Any:
        """A big TXT set over UDP with +bufsize=512: TC and no records (+ignore keeps it)."""
        out = yield self.dig("+ignore", "+bufsize=512", "big.example.org", "TXT")
        self.assertIn("tc", flags_of(out))
        self.assertEqual(answers_of(out, "TXT"), [])

    @defer.inlineCallbacks
    def test_truncation_retried_over_tcp(self) -> Any:
        """Without +ignore, dig retries a truncated answer over TCP and gets all 8 TXT records."""
        out = yield self.dig("+noedns", "big.example.org", "TXT")
        self.assertIn("Truncated, retrying in TCP mode", out)
        self.assertEqual(len(answers_of(out, "TXT")), 8)

    @defer.inlineCallbacks
    def test_axfr(self) -> Any:
        """AXFR: every record, the SOA first and last."""
        out = yield self.dig("example.org", "AXFR")
        lines = [line.split() for line in out.splitlines() if line and not line.startswith(";")]
        self.assertEqual(lines[0][3], "SOA")
        self.assertEqual(lines[-1][3], "SOA")
        self.assertIn(["*.wild.example.org.", "300", "IN", "A", "192.0.2.99"], lines)

    @defer.inlineCallbacks
    def test_dnssec_ok_echoed(self) -> Any:
        """+dnssec: the reply's OPT carries DO back (we sign nothing, so no RRSIGs)."""
        out = yield self.dig("+dnssec", "www.example.org")
        self.assertIn("EDNS: version: 0, flags: do;", out)
        self.assertEqual(answers_of(out, "A"), ["192.0.2.2"])

    @defer.inlineCallbacks
    def test_badvers(self) -> Any:
        """EDNS version 1 gets BADVERS (dig's negotiation switched off)."""
        out = yield self.dig("+edns=1", "+noednsnegotiation", "www.example.org")
        self.assertIn("status: BADVERS", out)


class DigBigBufferTests(TestCase):
    """dig +bufsize against a server advertising 4096 octets."""

    @defer.inlineCallbacks
    def test_bufsize_4096_fits(self) -> Any:
        """+bufsize=4096: the whole TXT set fits in one UDP reply, no TC."""
        require_tool("dig")
        server = yield defer.Deferred.fromCoroutine(start_dns(self, max_udp_payload=4096))
        out = yield defer.Deferred.fromCoroutine(dig(server, "+ignore", "+bufsize=4096", "big.example.org", "TXT"))
        self.assertNotIn("tc", flags_of(out))
        self.assertEqual(len(answers_of(out, "TXT")), 8)
        self.assertIn("udp: 4096", out)


class DnspythonTests(TestCase):
    """dnspython's resolver and zone transfer against appnet's server."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield defer.Deferred.fromCoroutine(start_dns(self))
        self.resolver = dns.resolver.Resolver(configure=False)
        self.resolver.nameservers = ["127.0.0.1"]
        self.resolver.port = self.server.udp_port
        self.resolver.lifetime = 5

    @defer.inlineCallbacks
    def test_resolve_cname(self) -> Any:
        """The resolver follows our CNAME answer to the address."""
        answer = yield threads.deferToThread(self.resolver.resolve, "alias.example.org", "A")
        self.assertEqual([r.address for r in answer], ["192.0.2.2"])
        self.assertEqual(str(answer.canonical_name), "www.example.org.")

    @defer.inlineCallbacks
    def test_big_txt_via_tcp(self) -> Any:
        """The resolver gets the truncated TXT set whole by its own TCP retry."""
        answer = yield threads.deferToThread(self.resolver.resolve, "big.example.org", "TXT")
        self.assertEqual(len(answer), 8)

    @defer.inlineCallbacks
    def test_nxdomain(self) -> Any:
        """The resolver raises NXDOMAIN for a missing name."""
        d = threads.deferToThread(self.resolver.resolve, "missing.example.org", "A")
        with self.assertRaises(dns.resolver.NXDOMAIN):
            yield d

    @defer.inlineCallbacks
    def test_xfr(self) -> Any:
        """dns.query.xfr transfers a zone dnspython accepts as complete."""

        def transfer() -> dns.zone.Zone:
            return dns.zone.from_xfr(dns.query.xfr("127.0.0.1", "example.org", port=self.server.tcp_port, lifetime=5))

        zone = yield threads.deferToThread(transfer)
        self.assertEqual(zone.get_rdataset("www", "A")[0].address, "192.0.2.2")


class _Child(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended: defer.Deferred = defer.Deferred()
        self.output = b""

    def errReceived(self, data: bytes) -> None:
        self.output += data

    outReceived = errReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


async def start_dnsmasq(test: TestCase) -> int:
    """dnsmasq on a free loopback port answering x.test; returns the port."""
    from twisted.internet import reactor

    path = require_tool("dnsmasq")
    port = free_tcp_port()
    child = _Child()
    process = reactor.spawnProcess(
        child,
        path,
        [
            path, "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1",
            "--bind-interfaces", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
            "--address=/x.test/1.2.3.4", "--mx-host=x.test,mail.x.test,5", "--log-facility=-",
        ],
        env=os.environ,
    )

    async def stop() -> None:
        if child.ended.called:
            return
        process.signalProcess("TERM")
        await child.ended

    test.addCleanup(lambda: defer.Deferred.fromCoroutine(stop()))
    client = DNSClient([("127.0.0.1", port)], timeout=0.2, reactor=reactor)
    # Poll (bounded) until dnsmasq answers: it binds after it starts.
    for _ in range(50):
        if child.ended.called:
            raise AssertionError(f"dnsmasq exited: {child.output.decode(errors='replace')}")
        try:
            await client.resolve("ready.x.test")
            return port
        except DNSTimeout:
            continue
    raise AssertionError("dnsmasq did not answer within 10 s")


class DnsmasqTests(TestCase):
    """appnet's client and forwarder against dnsmasq."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.port = yield defer.Deferred.fromCoroutine(start_dnsmasq(self))

    @defer.inlineCallbacks
    def test_client(self) -> Any:
        """appnet's client reads dnsmasq's A and MX answers, over UDP and TCP."""
        from twisted.internet import reactor

        client = DNSClient([("127.0.0.1", self.port)], reactor=reactor)
        a = yield client.resolve("host.x.test", "A")
        self.assertEqual([r.data for r in a], ["1.2.3.4"])
        mx = yield client.resolve("x.test", "MX")
        self.assertEqual([(r.rdata.preference, str(r.rdata.exchange)) for r in mx], [(5, "mail.x.test.")])
        tcp = DNSClient([("127.0.0.1", self.port)], tcp=True, reactor=reactor)
        a = yield tcp.resolve("other.x.test", "A")
        self.assertEqual([r.data for r in a], ["1.2.3.4"])

    @defer.inlineCallbacks
    def test_forwarder(self) -> Any:
        """appnet forwards a foreign name to dnsmasq and answers our client (and dig)."""
        front = yield defer.Deferred.fromCoroutine(start_dns(self, forwarders=[f"127.0.0.1:{self.port}"]))
        from twisted.internet import reactor

        records = yield DNSClient([("127.0.0.1", front.udp_port)], reactor=reactor).resolve("far.x.test")
        self.assertEqual([r.data for r in records], ["1.2.3.4"])
        out = yield defer.Deferred.fromCoroutine(dig(front, "again.x.test"))
        self.assertIn("ra", flags_of(out))
        self.assertEqual(answers_of(out, "A"), ["1.2.3.4"])
