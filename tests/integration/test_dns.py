"""
Integration tests for DNS on loopback: appnet's client against appnet's
server (built by L{make_service} exactly as C{twistd appnet-dns} does) over
real UDP and TCP sockets: answers, NXDOMAIN, truncation with TCP fallback,
AXFR, the automatic zone, forwarding with its recursion ACL, timeouts and
fail-over between servers, and zone reloading.

L{start_dns} is reused by the interop tests.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SkipTest, TestCase

from appnet.config import load_config
from appnet.dns.client import DNSClient, DNSTimeout, NXDomain, QueryRefused
from appnet.service import listening_ports, make_service
from tests.support import free_tcp_port
from tests.unit.test_dns import ZONE, write_zone


async def start_dns(test: TestCase, zone_text: str | None = ZONE, **dns_keys: Any) -> Any:
    """
    Start appnet's DNS service on ephemeral loopback ports with C{zone_text}
    as example.org; stop it when the test ends.

    @return: the top service, with C{udp_port}, C{tcp_port} and C{data_dir}
        attributes added
    """
    from twisted.internet import reactor

    data_dir = test.mktemp()
    if zone_text is not None:
        write_zone(os.path.join(data_dir, "zones"), zone_text)
    hostname = dns_keys.pop("hostname", "mail.example.net")
    # UDP and TCP on one port number, as a client's TCP retry expects:
    # take a free TCP port and bind UDP to it too; retry on a clash.
    for attempt in range(10):
        port = free_tcp_port()
        keys = {
            "listen_udp": [f"udp:{port}:interface=127.0.0.1"],
            "listen_tcp": [f"tcp:{port}:interface=127.0.0.1"],
            "reload_interval": 0,
        }
        keys.update(dns_keys)
        config = load_config(data_dir=data_dir, overrides={"": {"hostname": hostname}, "dns": keys})
        top = make_service(config, reactor, only=("dns",))
        try:
            top.startService()
        except CannotListenError:
            await top.stopService()
            continue
        break
    test.addCleanup(top.stopService)
    ports = listening_ports(top)
    top.udp_port = ports["dns"].getHost().port
    top.tcp_port = ports["dns-tcp"].getHost().port
    top.data_dir = data_dir
    return top


def client_for(top: Any, **kw: Any) -> DNSClient:
    from twisted.internet import reactor

    return DNSClient([("127.0.0.1", top.udp_port)], timeout=kw.pop("timeout", 2.0), reactor=reactor, **kw)


class LoopbackTests(TestCase):
    """appnet's client and server over real sockets."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield defer.Deferred.fromCoroutine(start_dns(self))
        self.client = client_for(self.server)

    @defer.inlineCallbacks
    def test_a_record(self) -> Any:
        """resolve() returns the A record as a typed Record."""
        records = yield self.client.resolve("www.example.org", "A")
        self.assertEqual([(r.name, r.type, r.ttl, r.data) for r in records], [("www.example.org.", "A", 300, "192.0.2.2")])
        self.assertEqual(str(records[0].rdata.address), "192.0.2.2")

    @defer.inlineCallbacks
    def test_mx(self) -> Any:
        """MX records carry preference and exchange."""
        records = yield self.client.resolve("example.org", "MX")
        self.assertEqual([(r.rdata.preference, str(r.rdata.exchange)) for r in records], [(10, "mail.example.org.")])

    @defer.inlineCallbacks
    def test_nxdomain(self) -> Any:
        """A missing name fails with NXDomain."""
        with self.assertRaises(NXDomain):
            yield self.client.resolve("missing.example.org", "A")

    @defer.inlineCallbacks
    def test_nodata_empty(self) -> Any:
        """An existing name without the type resolves to no records."""
        records = yield self.client.resolve("www.example.org", "MX")
        self.assertEqual(records, [])

    @defer.inlineCallbacks
    def test_truncation_falls_back_to_tcp(self) -> Any:
        """A TXT set too big for UDP comes back whole, through a TCP retry."""
        stats = self.server.context.stats.service("dns")
        before = stats["connections"]
        records = yield self.client.resolve("big.example.org", "TXT")
        self.assertEqual(len(records), 8)
        self.assertEqual(stats["connections"], before + 1)

    @defer.inlineCallbacks
    def test_tcp_only(self) -> Any:
        """A client set to TCP asks over TCP."""
        from twisted.internet import reactor

        client = DNSClient([("127.0.0.1", self.server.tcp_port)], tcp=True, reactor=reactor)
        records = yield client.resolve("alias.example.org", "A")
        self.assertEqual([r.type for r in records], ["CNAME", "A"])

    @defer.inlineCallbacks
    def test_axfr(self) -> Any:
        """The zone transfers whole over TCP, SOA first and last."""
        from twisted.internet import reactor

        client = DNSClient([("127.0.0.1", self.server.tcp_port)], reactor=reactor)
        records = yield client.transfer("example.org")
        self.assertEqual(records[0].type, "SOA")
        self.assertEqual(records[-1].type, "SOA")
        self.assertIn(("www.example.org.", "AAAA"), {(r.name, r.type) for r in records})

    @defer.inlineCallbacks
    def test_automatic_zone(self) -> Any:
        """The own domain (the hostname's parent) has MX and A for the mail host."""
        mx = yield self.client.resolve("example.net", "MX")
        self.assertEqual(mx[0].data, "10 mail.example.net.")
        a = yield self.client.resolve("mail.example.net", "A")
        self.assertEqual(a[0].data, "127.0.0.1")

    @defer.inlineCallbacks
    def test_reload(self) -> Any:
        """An edited zone file is served once the watcher notices it."""
        write_zone(os.path.join(self.server.data_dir, "zones"), ZONE.replace("192.0.2.2\n", "192.0.2.4\n"))
        self.assertTrue(self.server.getServiceNamed("dns-zones").check())
        records = yield self.client.resolve("www.example.org", "A")
        self.assertEqual(records[0].data, "192.0.2.4")


class SilentServer(DatagramProtocol):
    """Receives queries and never answers."""

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.last = data


class ClientFailoverTests(TestCase):
    """The client gives up on a silent server and tries the next."""

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.silent = reactor.listenUDP(0, SilentServer(), interface="127.0.0.1")
        self.addCleanup(self.silent.stopListening)

    @defer.inlineCallbacks
    def test_timeout(self) -> Any:
        """A server that never answers fails the query with DNSTimeout."""
        from twisted.internet import reactor

        client = DNSClient([("127.0.0.1", self.silent.getHost().port)], timeout=0.2, reactor=reactor)
        with self.assertRaises(DNSTimeout):
            yield client.resolve("www.example.org")

    @defer.inlineCallbacks
    def test_next_server(self) -> Any:
        """After the silent server times out the second server answers."""
        from twisted.internet import reactor

        server = yield defer.Deferred.fromCoroutine(start_dns(self))
        client = DNSClient(
            [("127.0.0.1", self.silent.getHost().port), ("127.0.0.1", server.udp_port)],
            timeout=0.2,
            reactor=reactor,
        )
        records = yield client.resolve("www.example.org")
        self.assertEqual(records[0].data, "192.0.2.2")

    @defer.inlineCallbacks
    def test_cancel(self) -> Any:
        """Cancelling a query frees its socket and fails the Deferred."""
        from twisted.internet import reactor

        client = DNSClient([("127.0.0.1", self.silent.getHost().port)], timeout=30, reactor=reactor)
        d = client.resolve("www.example.org")
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            yield d


UPSTREAM_ZONE = """\
$TTL 120
@ IN SOA ns.upstream.test. admin.upstream.test. 7 3600 900 604800 30
  IN NS ns
ns  IN A 192.0.2.100
far IN A 192.0.2.101
"""


class ForwardingTests(TestCase):
    """A name outside our zones is forwarded for allowed clients only."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.upstream = yield defer.Deferred.fromCoroutine(start_dns(self, zone_text=None))
        write_zone(os.path.join(self.upstream.data_dir, "zones"), UPSTREAM_ZONE, "upstream.test.zone")
        self.upstream.getServiceNamed("dns-zones").reload()

    @defer.inlineCallbacks
    def test_forwarded_from_loopback(self) -> Any:
        """From loopback a foreign name resolves through the upstream, then from cache."""
        front = yield defer.Deferred.fromCoroutine(
            start_dns(self, forwarders=[f"127.0.0.1:{self.upstream.udp_port}"])
        )
        client = client_for(front)
        records = yield client.resolve("far.upstream.test", "A")
        self.assertEqual(records[0].data, "192.0.2.101")
        reply = yield client.query("far.upstream.test", "A")
        self.assertTrue(reply.flags & 0x0080)  # RA
        self.assertEqual(front.context.stats.service("dns")["cache_hits"], 1)
        with self.assertRaises(NXDomain):
            yield client.resolve("nowhere.upstream.test")

    @defer.inlineCallbacks
    def test_refused_outside_acl(self) -> Any:
        """A client outside allow_recursion is REFUSED: never an open resolver."""
        front = yield defer.Deferred.fromCoroutine(
            start_dns(
                self,
                forwarders=[f"127.0.0.1:{self.upstream.udp_port}"],
                allow_recursion=["192.0.2.0/24"],
            )
        )
        with self.assertRaises(QueryRefused):
            yield client_for(front).resolve("far.upstream.test", "A")
        # Our own zones still answer that client.
        records = yield client_for(front).resolve("www.example.org", "A")
        self.assertEqual(records[0].data, "192.0.2.2")


def _child_env() -> dict[str, str]:
    """Our environment with this checkout first on PYTHONPATH, for child processes."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class TwistdDNSTests(TestCase):
    """C{twistd appnet-dns} serves a zone file; C{appnet dns query} reads it."""

    @defer.inlineCallbacks
    def test_twistd_and_cli(self) -> Any:
        """The plugin starts from a data dir, answers MX over UDP and TCP, and stops on SIGTERM."""
        from twisted.internet import reactor

        from tests.integration.test_twistd import ServerProcess
        from tests.support import appnet_argv, run_process, twistd_argv

        data_dir = os.path.abspath(self.mktemp())
        write_zone(os.path.join(data_dir, "zones"))
        port = free_tcp_port()
        argv = twistd_argv() + [
            "--nodaemon", "--pidfile=", "appnet-dns", "--data", data_dir,
            "--listen-udp", f"udp:{port}:interface=127.0.0.1",
            "--listen-tcp", f"tcp:{port}:interface=127.0.0.1",
        ]
        proc = ServerProcess()
        reactor.spawnProcess(proc, argv[0], argv, env=_child_env(), path=data_dir)

        async def kill() -> None:
            if proc.running:
                proc.signal("KILL")
                await proc.wait(10)

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(kill()))
        client = DNSClient([("127.0.0.1", port)], timeout=0.25, reactor=reactor)
        for _ in range(120):  # bounded: about 30 s of 0.25 s attempts
            if not proc.running:
                self.fail(f"twistd exited:\n{proc.output}")
            try:
                records = yield client.resolve("example.org", "MX")
                break
            except DNSTimeout:
                continue
        else:
            self.fail(f"twistd appnet-dns did not answer:\n{proc.output}")
        self.assertEqual(records[0].data, "10 mail.example.org.")
        for extra in ([], ["--tcp"]):
            done = yield run_process(
                appnet_argv() + ["dns", "query", "example.org", "MX", "--port", str(port)] + extra,
                env=_child_env(),
            )
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertIn(b"example.org.\t300\tIN\tMX\t10 mail.example.org.", done.stdout)
        done = yield run_process(
            appnet_argv() + ["dns", "query", "nope.example.org", "--port", str(port)], env=_child_env()
        )
        self.assertEqual(done.returncode, 1)
        self.assertIn(b"NXDOMAIN", done.stdout)
        proc.signal("TERM")
        yield defer.Deferred.fromCoroutine(proc.wait())


class Secondary(DatagramProtocol):
    """Records NOTIFY messages; acknowledges them when C{ack}."""

    def __init__(self, ack: bool) -> None:
        self.ack = ack
        self.received: list[Any] = []
        self.arrived: defer.Deferred = defer.Deferred()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        import dns.message

        message = dns.message.from_wire(data)
        self.received.append(message)
        if self.ack:
            reply = dns.message.make_response(message)
            self.transport.write(reply.to_wire(), addr)
        if not self.arrived.called:
            self.arrived.callback(message)


class NotifyTests(TestCase):
    """A changed zone serial is announced to secondaries with NOTIFY (RFC 1996)."""

    @defer.inlineCallbacks
    def test_notify_on_serial_change(self) -> Any:
        """After a zone edit with a new serial, the secondary gets one NOTIFY for the zone's SOA."""
        import dns.flags
        import dns.opcode
        import dns.rdatatype
        from twisted.internet import reactor

        secondary = Secondary(ack=True)
        port = reactor.listenUDP(0, secondary, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        server = yield defer.Deferred.fromCoroutine(
            start_dns(self, notify=[f"127.0.0.1:{port.getHost().port}"])
        )
        write_zone(os.path.join(server.data_dir, "zones"), ZONE.replace("2024010101", "2024010102"))
        self.assertTrue(server.getServiceNamed("dns-zones").check())
        message = yield secondary.arrived
        self.assertEqual(message.opcode(), dns.opcode.NOTIFY)
        self.assertTrue(message.flags & dns.flags.AA)
        self.assertEqual(str(message.question[0].name), "example.org.")
        self.assertEqual(message.question[0].rdtype, dns.rdatatype.SOA)
        self.assertEqual(message.answer[0][0].serial, 2024010102)
        self.assertEqual(len(secondary.received), 1)

    @defer.inlineCallbacks
    def test_notify_retried(self) -> Any:
        """A silent secondary is sent the NOTIFY C{tries} times, then reported unacknowledged."""
        from twisted.internet import reactor

        from appnet.dns.notify import Notifier
        from appnet.dns.zones import load_zones

        secondary = Secondary(ack=False)
        port = reactor.listenUDP(0, secondary, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        directory = self.mktemp()
        write_zone(directory)
        zones, _ = load_zones(directory)
        target = ("127.0.0.1", port.getHost().port)
        result = yield Notifier([target], reactor, timeout=0.1, tries=3).notify(next(iter(zones)))
        self.assertEqual(result, {target: False})
        self.assertEqual(len(secondary.received), 3)


class RawUDP(DatagramProtocol):
    """Sends raw datagrams and collects replies."""

    def __init__(self) -> None:
        self.replies: list[bytes] = []
        self.waiting: list[tuple[int, defer.Deferred]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.replies.append(data)
        for count, d in list(self.waiting):
            if len(self.replies) >= count and not d.called:
                self.waiting.remove((count, d))
                d.callback(list(self.replies))

    def wait_for(self, count: int) -> defer.Deferred:
        from twisted.internet import reactor

        d: defer.Deferred = defer.Deferred()
        if len(self.replies) >= count:
            d.callback(list(self.replies))
        else:
            self.waiting.append((count, d))
        return d.addTimeout(5, reactor)


class BadInputOverSocketsTests(TestCase):
    """Over real sockets, malformed messages get FORMERR or silence and the server goes on."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield defer.Deferred.fromCoroutine(start_dns(self))

    @defer.inlineCallbacks
    def test_udp_garbage_then_query(self) -> Any:
        """Garbage, a short header and a pointer loop over UDP; then a real query is answered."""
        import struct

        from twisted.internet import reactor

        from tests.unit.test_dns import twisted_query

        raw = RawUDP()
        port = reactor.listenUDP(0, raw, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        target = ("127.0.0.1", self.server.udp_port)
        port.write(b"\x01\x02\x03", target)  # short: silence
        port.write(struct.pack("!6H", 7, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01", target)  # FORMERR
        port.write(twisted_query(b"www.example.org", id=8), target)
        replies = yield raw.wait_for(2)
        self.assertEqual([r[:2] for r in replies], [b"\x00\x07", b"\x00\x08"])
        self.assertEqual(replies[0][3] & 0x0F, 1)
        self.assertEqual(replies[1][3] & 0x0F, 0)

    @defer.inlineCallbacks
    def test_tcp_formerr_keeps_connection(self) -> Any:
        """Over TCP a label too long gets FORMERR and the next query on the connection is answered."""
        import struct

        from twisted.internet import endpoints, reactor
        from twisted.internet.protocol import Protocol

        from tests.unit.test_dns import twisted_query

        class Collector(Protocol):
            def __init__(self) -> None:
                self.data = b""
                self.two: defer.Deferred = defer.Deferred()

            def dataReceived(self, data: bytes) -> None:
                self.data += data
                frames, rest = [], self.data
                while len(rest) >= 2 and len(rest) >= 2 + int.from_bytes(rest[:2], "big"):
                    size = int.from_bytes(rest[:2], "big")
                    frames.append(rest[2 : 2 + size])
                    rest = rest[2 + size :]
                if len(frames) >= 2 and not self.two.called:
                    self.two.callback(frames)

        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.tcp_port)
        collector = yield endpoints.connectProtocol(endpoint, Collector())
        self.addCleanup(collector.transport.loseConnection)
        bad = struct.pack("!6H", 9, 0, 1, 0, 0, 0) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"
        good = twisted_query(b"www.example.org", id=10)
        for message in (bad, good):
            collector.transport.write(len(message).to_bytes(2, "big") + message)
        frames = yield collector.two.addTimeout(5, reactor)
        self.assertEqual([(f[:2], f[3] & 0x0F) for f in frames], [(b"\x00\x09", 1), (b"\x00\x0a", 0)])


class IPv6Tests(TestCase):
    """The server listens on ::1 over TCP and the client asks over IPv6."""

    @defer.inlineCallbacks
    def test_ipv6_loopback_tcp(self) -> Any:
        """Over ::1 (a tcp6 endpoint) the A record and the whole TXT set come back."""
        import socket

        from twisted.internet import reactor

        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("::1", 0))
            except OSError:
                raise SkipTest("no IPv6 loopback here")
            port = probe.getsockname()[1]
        # UDP on ::1 waits for DatagramListenerService to parse escaped
        # colons ("interface=\\:\\:1"); it splits on every colon today.
        yield defer.Deferred.fromCoroutine(
            start_dns(self, listen_tcp=[f"tcp6:{port}:interface=\\:\\:1"])
        )
        client = DNSClient([("::1", port)], tcp=True, reactor=reactor)
        records = yield client.resolve("www.example.org", "A")
        self.assertEqual(records[0].data, "192.0.2.2")
        records = yield client.resolve("big.example.org", "TXT")
        self.assertEqual(len(records), 8)
