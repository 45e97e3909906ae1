"""
Integration tests for TFTP on loopback: our client against our server over
real UDP sockets, with and without options, and through a lossy relay
(L{LossyRelay}) that drops and duplicates datagrams.

Also: C{twistd appnet} assembly (C{make_service} serves TFTP), and the
C{appnet tftp get|put} command line.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import threading
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SkipTest, TestCase

from appnet.config import load_config
from appnet.filesystem import FileStore
from appnet.service import listening_ports, make_service
from appnet.stats import ServiceStats
from appnet.tftp import client, wire
from appnet.tftp.machine import RemoteError, RequestedOptions, TransferPolicy
from appnet.tftp.server import TFTPServerFactory

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FAST = TransferPolicy(timeout=0.2, retries=10, dally=0)
"""Client policy for a clean path: no lingering after the last ACK."""

LOSSY = TransferPolicy(timeout=0.05, retries=40, dally=0.3)
"""Policy for both ends of the lossy path: quick retransmissions."""


def the_reactor() -> Any:
    """The global reactor (imported on use, never at module import)."""
    from twisted.internet import reactor

    return reactor


class TFTPServerFixture:
    """Our TFTP server on 127.0.0.1, port 0, over a temporary store."""

    def __init__(self, test: TestCase, *, writable: bool = False,
                 policy: TransferPolicy = TransferPolicy(dally=0.5), max_threads: int = 0) -> None:
        base = os.path.realpath(test.mktemp())
        self.store = FileStore(base, incoming=True)
        self.public = os.path.join(base, "public")
        self.incoming = os.path.join(self.public, "incoming")
        self.stats = ServiceStats("tftp")
        self.lines: list[str] = []
        reactor = the_reactor()
        self.factory = TFTPServerFactory(
            self.store.view_for(None), writable=writable, policy=policy,
            stats=self.stats, trace=True, trace_emit=self.lines.append, reactor=reactor,
            max_threads=max_threads, busy_poll=50e-6,
        )
        self.listener = reactor.listenUDP(0, self.factory.buildProtocol(), interface="127.0.0.1")
        self.port = self.listener.getHost().port
        test.addCleanup(self.listener.stopListening)
        test.addCleanup(self.factory.stop)

    def publish(self, name: str, data: bytes) -> None:
        """Put a file in C{public/}."""
        with open(os.path.join(self.public, name), "wb") as f:
            f.write(data)


def patterned(size: int) -> bytes:
    """Bytes that differ block to block, so a misplaced block is noticed."""
    return random.Random(size).randbytes(size)


class LoopbackTests(TestCase):
    """Our client against our server over real UDP sockets."""

    def setUp(self) -> None:
        self.server = TFTPServerFixture(self, writable=True)

    async def fetch(self, name: str, options: RequestedOptions = RequestedOptions(),
                    **kwargs: Any) -> tuple[bytes, client.TransferResult]:
        sink = io.BytesIO()
        result = await client.get("127.0.0.1", self.server.port, name, sink,
                                  options=options, policy=FAST, **kwargs)
        await result.closed
        return sink.getvalue(), result

    async def test_sizes_without_options(self) -> None:
        """
        Files of 0, 511, 512, 513 octets and 1 MiB arrive byte-identical in
        RFC 1350 lock-step (no options, no OACK).
        """
        for size in (0, 511, 512, 513, 1 << 20):
            data = patterned(size)
            self.server.publish(f"f{size}", data)
            got, result = await self.fetch(f"f{size}")
            self.assertEqual(got, data, size)
            self.assertEqual(result.stats.options.blksize, 512)
            self.assertEqual(result.stats.blocks, size // 512 + 1)

    async def test_options(self) -> None:
        """
        blksize, windowsize and tsize are negotiated and used; a 3 MB file
        arrives byte-identical with each combination, including the
        largest block size.
        """
        data = patterned(3_000_000 + 7)
        self.server.publish("big", data)
        for options in (
            RequestedOptions(blksize=1468, tsize=True),
            RequestedOptions(blksize=1468, windowsize=16),
            RequestedOptions(blksize=65464, windowsize=8, tsize=True),
            RequestedOptions(blksize=8, tsize=True, timeout=2),
        ):
            if options.blksize == 8:
                self.server.publish("small", data[:10_000])
                got, result = await self.fetch("small", options)
                self.assertEqual(got, data[:10_000])
                continue
            got, result = await self.fetch("big", options)
            self.assertEqual(got, data, options)
            agreed = result.stats.options
            self.assertEqual(agreed.blksize, options.blksize)
            self.assertEqual(agreed.windowsize, options.windowsize or 1)
            self.assertEqual(agreed.tsize, len(data) if options.tsize else None)

    async def test_download_to_path_and_progress(self) -> None:
        """
        A download to a path appears only when complete; progress reports
        climb to the announced size.
        """
        data = patterned(100_000)
        self.server.publish("p", data)
        target = os.path.join(os.path.realpath(self.mktemp()))
        os.makedirs(target)
        path = os.path.join(target, "out.bin")
        seen: list[tuple[int, int | None]] = []
        result = await client.get("127.0.0.1", self.server.port, "p", path,
                                  options=RequestedOptions(blksize=1024, tsize=True),
                                  policy=FAST, progress=lambda d, t: seen.append((d, t)))
        await result.closed
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(os.listdir(target), ["out.bin"])
        self.assertEqual(seen[-1], (len(data), len(data)))
        self.assertEqual([d for d, _ in seen], sorted(d for d, _ in seen))

    async def test_missing_file(self) -> None:
        """A missing file fails the Deferred with the server's ERROR 1; no file is left."""
        target = os.path.realpath(self.mktemp())
        os.makedirs(target)
        with self.assertRaises(RemoteError) as caught:
            await client.get("127.0.0.1", self.server.port, "nope",
                             os.path.join(target, "x"), policy=FAST)
        self.assertEqual(caught.exception.code, 1)
        self.assertEqual(os.listdir(target), [])

    async def test_put(self) -> None:
        """
        Uploads of 0, 512, 513 octets and 1 MiB (with options) land
        byte-identical in the drop box; a second upload of a name gets
        ERROR 6.
        """
        for size, options in ((0, RequestedOptions()), (512, RequestedOptions()),
                              (513, RequestedOptions(tsize=True)),
                              (1 << 20, RequestedOptions(blksize=1468, windowsize=8, tsize=True))):
            data = patterned(size)
            result = await client.put("127.0.0.1", self.server.port, f"up{size}",
                                      io.BytesIO(data), size=size, options=options, policy=FAST)
            await result.closed
            with open(os.path.join(self.server.incoming, f"up{size}"), "rb") as f:
                self.assertEqual(f.read(), data)
        with self.assertRaises(RemoteError) as caught:
            await client.put("127.0.0.1", self.server.port, "up0", io.BytesIO(b"x"), policy=FAST)
        self.assertEqual(caught.exception.code, 6)

    async def test_netascii(self) -> None:
        """A netascii download turns the file's LF into CRLF on the wire and back."""
        data = b"line one\nline two\r\nbare\rend\n"
        self.server.publish("text", data)
        sink = io.BytesIO()
        result = await client.get("127.0.0.1", self.server.port, "text", sink,
                                  mode="netascii", policy=FAST)
        await result.closed
        self.assertEqual(sink.getvalue(), data)

    async def test_cancel(self) -> None:
        """
        Cancelling a download fails it with C{CancelledError}, tells the
        server (its transfer ends) and leaves no partial file.
        """
        self.server.publish("big", patterned(5_000_000))
        target = os.path.realpath(self.mktemp())
        os.makedirs(target)
        started: defer.Deferred[None] = defer.Deferred()

        def progress(done: int, total: int | None) -> None:
            if done > 100_000 and not started.called:
                started.callback(None)

        d = client.get("127.0.0.1", self.server.port, "big", os.path.join(target, "big"),
                       policy=FAST, progress=progress)
        await started
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            await d
        self.assertEqual(os.listdir(target), [])
        await poll(lambda: not self.server.factory.transfers)

    async def test_ipv6(self) -> None:
        """Over ::1 the server's transfer port binds IPv6 too and the file arrives."""
        import socket

        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
                probe.bind(("::1", 0))
        except OSError:
            raise SkipTest("no IPv6 loopback here")
        listener = the_reactor().listenUDP(0, self.server.factory.buildProtocol(), interface="::1")
        self.addCleanup(listener.stopListening)
        data = patterned(100_000)
        self.server.publish("six", data)
        sink = io.BytesIO()
        result = await client.get("::1", listener.getHost().port, "six", sink,
                                  options=RequestedOptions(blksize=1468, windowsize=8), policy=FAST)
        await result.closed
        self.assertEqual(sink.getvalue(), data)

    async def test_stats_and_transcript(self) -> None:
        """Each transfer counts in the stats and logs one transcript line."""
        self.server.publish("s", b"x" * 1000)
        await self.fetch("s", RequestedOptions(blksize=700))
        await poll(lambda: self.server.stats["transfers_active"] == 0)
        self.assertEqual(self.server.stats["transfers"], 1)
        self.assertEqual(self.server.stats["bytes_out"], 1000)
        self.assertEqual(len(self.server.lines), 1)
        self.assertIn("RRQ /s octet blksize=700: 1000 bytes, 2 blocks", self.server.lines[0])


class ThreadedLoopbackTests(LoopbackTests):
    """The same, with downloads on threads of their own (the deployed default)."""

    def setUp(self) -> None:
        self.server = TFTPServerFixture(self, writable=True, max_threads=4)

    async def test_downloads_are_threaded(self) -> None:
        """Downloads go through a transfer thread; uploads stay on the reactor."""
        self.server.publish("t", patterned(5000))
        await self.fetch("t")
        await client.put("127.0.0.1", self.server.port, "up", io.BytesIO(b"x" * 700), policy=FAST)
        await poll(lambda: self.server.stats["transfers_active"] == 0)
        self.assertEqual(self.server.stats["transfers"], 2)
        self.assertEqual(self.server.stats["transfers_threaded"], 1)


class RawPeer(DatagramProtocol):
    """A hand-driven TFTP peer on 127.0.0.1: every datagram it gets is queued."""

    def __init__(self) -> None:
        self.queue: defer.DeferredQueue = defer.DeferredQueue()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.queue.put((datagram, addr))

    def next(self, timeout: float = 5.0) -> defer.Deferred:
        """The next datagram and its source, or a timeout failure."""
        return self.queue.get().addTimeout(timeout, the_reactor())

    def send(self, packet: wire.Packet, addr: tuple[str, int]) -> None:
        self.transport.write(wire.encode(packet), addr)


class ThreadedTransferTests(TestCase):
    """What a transfer on its own thread keeps: TIDs, timeouts, limits, shutdown."""

    def setUp(self) -> None:
        self.server = TFTPServerFixture(
            self, policy=TransferPolicy(timeout=0.2, retries=2), max_threads=1
        )
        self.data = patterned(2000)
        self.server.publish("f", self.data)

    def peer(self) -> RawPeer:
        peer = RawPeer()
        port = the_reactor().listenUDP(0, peer, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return peer

    def request(self, peer: RawPeer, name: str = "f") -> None:
        peer.send(wire.ReadRequest(name, wire.Mode.OCTET, {}), ("127.0.0.1", self.server.port))

    async def next_error(self, peer: RawPeer) -> wire.Packet:
        """The next ERROR C{peer} gets (DATA repeats on the way are skipped)."""
        for _ in range(20):
            packet = wire.decode((await peer.next())[0])
            if isinstance(packet, wire.Error):
                return packet
        raise AssertionError("no ERROR")

    async def read_rest(self, peer: RawPeer, first: bytes, tid: tuple[str, int]) -> bytes:
        """ACK blocks from DATA 1 (C{first}) to the end; return the file."""
        received = b""
        expected = 1
        packet = wire.decode(first)
        while True:
            assert isinstance(packet, wire.Data), packet
            if packet.block == expected:  # else a late repeat of one we have
                received += packet.payload
                expected += 1
                peer.send(wire.Ack(packet.block), tid)
                if len(packet.payload) < 512:
                    return received
            datagram, addr = await peer.next()
            self.assertEqual(addr, tid)
            packet = wire.decode(datagram)

    async def test_unknown_tid(self) -> None:
        """
        A datagram to the transfer's port from another address gets ERROR 5
        and does not disturb the transfer.
        """
        client, stranger = self.peer(), self.peer()
        self.request(client)
        first, tid = await client.next()
        stranger.send(wire.Ack(1), tid)
        answer, addr = await stranger.next()
        self.assertEqual(addr, tid)
        self.assertEqual(wire.decode(answer).code, wire.ErrorCode.UNKNOWN_TID)
        self.assertEqual(await self.read_rest(client, first, tid), self.data)
        await poll(lambda: self.server.stats["transfers_active"] == 0)
        self.assertEqual(self.server.stats["unknown_tid"], 1)
        self.assertEqual(self.server.stats["transfers_threaded"], 1)
        self.assertEqual(len(self.server.lines), 1)
        self.assertIn("RRQ /f octet blksize=512: 2000 bytes, 4 blocks", self.server.lines[0])

    async def test_timeout(self) -> None:
        """An unanswered block is sent again C{retries} times, then ERROR 0."""
        client = self.peer()
        self.request(client)
        first, tid = await client.next()
        for _ in range(2):
            self.assertEqual((await client.next())[0], first)
        answer, _ = await client.next()
        self.assertIsInstance(wire.decode(answer), wire.Error)
        await poll(lambda: self.server.stats["transfers_active"] == 0)
        self.assertIn("2 resent", self.server.lines[0])
        self.assertIn("failed: ERROR 0 timed out after 2 retransmissions", self.server.lines[0])

    async def test_stop(self) -> None:
        """Stopping the server ends a live threaded transfer with ERROR 0, and waits for it."""
        client = self.peer()
        self.request(client)
        await client.next()
        await self.server.factory.stop()
        self.assertEqual(self.server.factory.transfers, {})
        self.assertEqual(self.server.stats["transfers_active"], 0)
        self.assertEqual(await self.next_error(client), wire.Error(0, "server shutting down"))
        self.assertFalse([t for t in threading.enumerate() if t.name.startswith("tftp-transfer")])

    async def test_superseded(self) -> None:
        """
        A new request from the same client port ends the threaded transfer
        it replaces (ERROR 0 from the old TID) and is served in full.
        """
        client = self.peer()
        self.request(client)
        _, old_tid = await client.next()
        self.request(client, "/f")  # the same file, but not a repeat of the request
        old: list[wire.Packet] = []
        new: list[tuple[bytes, tuple[str, int]]] = []
        while not (old and isinstance(old[-1], wire.Error) and new):
            datagram, addr = await client.next()
            if addr == old_tid:
                old.append(wire.decode(datagram))  # a late DATA 1 repeat, then the ERROR
            else:
                new.append((datagram, addr))
        self.assertEqual(old[-1], wire.Error(0, "superseded by a new request"))
        first, new_tid = new[0]
        self.assertEqual(await self.read_rest(client, first, new_tid), self.data)
        await poll(lambda: self.server.stats["transfers_active"] == 0)
        self.assertEqual(self.server.factory._threaded, set())

    async def test_hand_off(self) -> None:
        """
        Beyond the cap (one here), a new download runs on the reactor, and
        the threaded one moves there too, on the same port, mid-transfer;
        both complete, with one transcript line each.
        """
        first_client, second_client = self.peer(), self.peer()
        self.request(first_client)
        first, first_tid = await first_client.next()
        self.assertEqual(len(self.server.factory._threaded), 1)
        self.request(second_client)
        second, second_tid = await second_client.next()
        await poll(lambda: not self.server.factory._threaded)
        self.assertEqual(self.server.stats["transfers"], 2)
        self.assertEqual(self.server.stats["transfers_threaded"], 1)
        self.assertEqual(await self.read_rest(first_client, first, first_tid), self.data)
        self.assertEqual(await self.read_rest(second_client, second, second_tid), self.data)
        await poll(lambda: self.server.stats["transfers_active"] == 0)
        self.assertEqual(self.server.factory.transfers, {})
        self.assertEqual(len(self.server.lines), 2)
        self.assertTrue(all(line.endswith(": ok") for line in self.server.lines), self.server.lines)

    async def test_stop_after_hand_off(self) -> None:
        """A transfer moved onto the reactor is still ended by a shutdown."""
        first_client, second_client = self.peer(), self.peer()
        self.request(first_client)
        await first_client.next()
        self.request(second_client)
        await second_client.next()
        await poll(lambda: not self.server.factory._threaded)
        await self.server.factory.stop()
        for peer in (first_client, second_client):
            self.assertEqual(await self.next_error(peer), wire.Error(0, "server shutting down"))
        self.assertEqual(self.server.stats["transfers_active"], 0)

    async def test_our_bug(self) -> None:
        """A bug in the thread answers ERROR 0, is logged once, and frees the transfer."""
        view = self.server.factory.view

        class Broken:
            def __init__(self, f: Any) -> None:
                self.f = f
                self.fileno, self.close = f.fileno, f.close

            def read(self, size: int) -> bytes:
                if self.f.tell():
                    raise ValueError("a bug")
                return self.f.read(size)

        class View:
            def open_read(self, path: str) -> Broken:
                return Broken(view.open_read(path))

        self.server.factory.view = View()
        client = self.peer()
        self.request(client)
        self.assertIsInstance(wire.decode((await client.next())[0]), wire.Data)
        self.assertEqual(await self.next_error(client), wire.Error(0, "internal server error"))
        await poll(lambda: self.server.stats["transfers_active"] == 0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(self.server.stats["errors"], 1)


async def poll(condition: Any, timeout: float = 10.0, interval: float = 0.01) -> None:
    """Wait until C{condition()} is true, checking every C{interval} (bounded)."""
    from twisted.internet import task

    reactor = the_reactor()
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await task.deferLater(reactor, interval, lambda: None)


class LossyRelay:
    """
    A UDP relay between one client and one TFTP server that drops and
    duplicates datagrams (decided by a seeded random generator).

    The client sends its request to L{port}; the relay forwards it to the
    server's well-known port from its own server-side socket. For each
    server TID (transfer port) the relay opens a client-side socket, so the
    client sees one TID per transfer, as it would without the relay.
    """

    def __init__(self, server: tuple[str, int], *, seed: int, drop: float, duplicate: float) -> None:
        self.server = server
        self.random = random.Random(seed)
        self.drop = drop
        self.duplicate = duplicate
        self.client: tuple[str, int] | None = None
        self.dropped = 0
        self.duplicated = 0
        self.reactor = the_reactor()
        self.ports: list[Any] = []
        self.front = self._listen(_Side(self, None))
        self.back_side = _Side(self, "back")
        self.back = self._listen(self.back_side)
        self.by_tid: dict[int, Any] = {}
        self.port = self.front.getHost().port

    def _listen(self, side: _Side) -> Any:
        port = self.reactor.listenUDP(0, side, interface="127.0.0.1", maxPacketSize=65536)
        self.ports.append(port)
        return port

    def forward(self, port: Any, datagram: bytes, addr: tuple[str, int]) -> None:
        """Send through the lossy link: maybe not at all, maybe twice."""
        roll = self.random.random()
        if roll < self.drop:
            self.dropped += 1
            return
        copies = 2 if roll > 1 - self.duplicate else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            port.write(datagram, addr)

    def from_client(self, side: _Side, datagram: bytes, addr: tuple[str, int]) -> None:
        self.client = addr
        target = self.server if side.tid is None else ("127.0.0.1", side.tid)
        self.forward(self.back, datagram, target)

    def from_server(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if self.client is None:
            return
        front = self.by_tid.get(addr[1])
        if front is None:
            front = self.by_tid[addr[1]] = self._listen(_Side(self, None, tid=addr[1]))
        self.forward(front, datagram, self.client)

    def stop(self) -> defer.Deferred:
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])


class _Side(DatagramProtocol):
    def __init__(self, relay: LossyRelay, role: str | None, tid: int | None = None) -> None:
        self.relay = relay
        self.role = role
        self.tid = tid

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self.role == "back":
            self.relay.from_server(datagram, addr)
        else:
            self.relay.from_client(self, datagram, addr)


class LossyPathTests(TestCase):
    """Transfers through a relay that drops and duplicates datagrams."""

    max_threads = 0

    def setUp(self) -> None:
        self.server = TFTPServerFixture(
            self, writable=True, policy=LOSSY, max_threads=self.max_threads
        )

    def relay(self, seed: int) -> LossyRelay:
        relay = LossyRelay(("127.0.0.1", self.server.port), seed=seed, drop=0.1, duplicate=0.1)
        self.addCleanup(relay.stop)
        return relay

    async def test_download_survives_loss(self) -> None:
        """
        With 10% of datagrams dropped and 10% duplicated in both directions,
        downloads (lock-step and windowed) arrive byte-identical.
        """
        data = patterned(300_000 + 3)
        self.server.publish("lossy", data)
        for seed, options in ((1, RequestedOptions()),
                              (2, RequestedOptions(blksize=1024, windowsize=8, tsize=True))):
            relay = self.relay(seed)
            sink = io.BytesIO()
            result = await client.get("127.0.0.1", relay.port, "lossy", sink,
                                      options=options, policy=LOSSY)
            await result.closed
            self.assertEqual(sink.getvalue(), data)
            self.assertGreater(relay.dropped, 10)
            self.assertGreater(relay.duplicated, 10)
            self.assertGreater(result.stats.retransmissions, 0)

    async def test_upload_survives_loss(self) -> None:
        """Through the same lossy relay, an upload lands byte-identical."""
        data = patterned(200_000 + 11)
        relay = self.relay(3)
        result = await client.put("127.0.0.1", relay.port, "lossy-up", io.BytesIO(data),
                                  size=len(data), options=RequestedOptions(windowsize=4, tsize=True),
                                  policy=LOSSY)
        await result.closed
        await poll(lambda: os.path.exists(os.path.join(self.server.incoming, "lossy-up")))
        with open(os.path.join(self.server.incoming, "lossy-up"), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertGreater(relay.dropped, 10)


class ThreadedLossyPathTests(LossyPathTests):
    """The same, with downloads on threads of their own."""

    max_threads = 4


class AssemblyTests(TestCase):
    """The TFTP service as C{twistd appnet} builds it, and the command line."""

    async def test_make_service_serves_tftp(self) -> None:
        """
        C{make_service} with C{[tftp] listen = udp:0} serves C{public/}
        from the data directory, and stopping it releases every port.
        """
        data_dir = os.path.realpath(self.mktemp())
        config = load_config(data_dir=data_dir, overrides={
            "tftp": {"listen": ["udp:0:interface=127.0.0.1"]},
            "pop3": {"enabled": False},
        })
        top = make_service(config, the_reactor(), only=("tftp",))
        top.startService()
        self.addCleanup(top.stopService)
        port = listening_ports(top)["tftp"].getHost().port
        public = os.path.join(data_dir, "files", "public")
        with open(os.path.join(public, "hello.txt"), "wb") as f:
            f.write(b"hello over tftp\n")
        sink = io.BytesIO()
        result = await client.get("127.0.0.1", port, "hello.txt", sink, policy=FAST)
        await result.closed
        self.assertEqual(sink.getvalue(), b"hello over tftp\n")
        self.assertEqual(top.context.stats.service("tftp")["transfers"], 1)

    def test_writable_needs_drop_box(self) -> None:
        """C{writable = true} without C{[files] incoming} stops start-up naming the key."""
        from appnet.config import ConfigError

        with self.assertRaises(ConfigError) as caught:
            load_config(overrides={"tftp": {"writable": True}})
        self.assertEqual(caught.exception.key, "tftp.writable")
        config = load_config(overrides={"tftp": {"writable": True}, "files": {"incoming": True}})
        self.assertTrue(config["tftp"]["writable"])

    async def test_cli_get_and_put(self) -> None:
        """
        C{appnet tftp get} saves the file and reports the rate;
        C{appnet tftp put} uploads one; a missing file exits 1 with the
        server's message.
        """
        server = TFTPServerFixture(self, writable=True)
        data = patterned(200_000)
        server.publish("cli.bin", data)
        work = os.path.realpath(self.mktemp())
        os.makedirs(work)
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        base = [sys.executable, "-m", "appnet.cli", "tftp"]

        def run(*args: str) -> defer.Deferred:
            return threads.deferToThread(subprocess.run, base + list(args), cwd=work, env=env,
                                         capture_output=True, timeout=60)

        done = await run("get", "--port", str(server.port), "--blksize", "1468", "cli.bin")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"200000 bytes", done.stdout)
        with open(os.path.join(work, "cli.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        done = await run("put", "--port", str(server.port), "cli.bin", "back.bin")
        self.assertEqual(done.returncode, 0, done.stderr)
        await poll(lambda: os.path.exists(os.path.join(server.incoming, "back.bin")))
        with open(os.path.join(server.incoming, "back.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        done = await run("get", "--port", str(server.port), "missing")
        self.assertEqual(done.returncode, 1)
        self.assertIn(b"file not found", done.stderr)
