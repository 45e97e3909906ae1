"""
Tests for the in-order ACK fast path of L{appnet.tftp.machine.Sender}
(C{fast_ack} and C{read_ahead}): the same scripted transfers, over the same
simulated network and fake clock as L{tests.unit.test_tftp_machine}, run
once through the general path only and once with the fast path the way the
drivers use it; every action of both machines (datagrams, timer deadlines,
outcomes with their stats) must be identical, and the file too.
"""

from __future__ import annotations

import errno
import io
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appnet.tftp import wire
from appnet.tftp.machine import (
    Action,
    Close,
    Done,
    Failed,
    LocalIOError,
    Receiver,
    RequestedOptions,
    Send,
    Sender,
    Transfer,
    TransferPolicy,
)
from appnet.tftp.wire import Ack, Data, Mode, ReadRequest, encode
from tests.unit.test_tftp_machine import (
    CLIENT_TO_SERVER,
    LATENCY,
    SERVER_TO_CLIENT,
    Fault,
    Network,
    drop_every,
    duplicate_all,
    get,
    no_fault,
    payload,
    put,
    swap_pairs,
)


def comparable(actions: list[Action]) -> list[object]:
    """
    C{actions} with each L{Failed}'s error (an exception: equal only to
    itself) replaced by its class, code and message.
    """
    return [
        (Failed, type(a.error), a.error.code, a.error.message, a.stats)
        if isinstance(a, Failed) else a
        for a in actions
    ]


class EquivalenceTestCase(SynchronousTestCase):
    """Runs a scenario both ways and compares everything."""

    def assertSameActions(self, fast: Network, slow: Network) -> None:
        """Both sides of C{fast} did exactly what they did in C{slow}."""
        self.assertEqual(comparable(fast.client.actions), comparable(slow.client.actions))
        self.assertEqual(comparable(fast.server.actions), comparable(slow.server.actions))

    def assertSameRun(self, run, **kwargs) -> tuple[Network, bytes]:  # type: ignore[no-untyped-def]
        """
        Run C{run(fast=False, **kwargs)} and C{run(fast=True, **kwargs)};
        assert both sides did exactly the same, and return the fast run.
        """
        slow, slow_received = run(fast=False, **kwargs)
        fast, fast_received = run(fast=True, **kwargs)
        self.assertEqual(fast_received, slow_received)
        self.assertSameActions(fast, slow)
        self.assertEqual(fast.now, slow.now)
        self.assertEqual(slow.fast_hits, 0)
        return fast, fast_received

    def assertSameDownload(self, source: Any) -> tuple[Network, bytes]:
        """
        L{assertSameRun} for a client's plain download served from
        C{source()} (a new file-like object per run).
        """

        def run(fast: bool) -> tuple[Network, bytes]:
            sink = io.BytesIO()
            client = Receiver.get("f", sink)

            def make_server(request: wire.Packet) -> Transfer:
                assert isinstance(request, ReadRequest)
                return Sender.serve(request, source())

            return Network(client, make_server, no_fault, fast).run(), sink.getvalue()

        return self.assertSameRun(run)


class LockStepEquivalenceTests(EquivalenceTestCase):
    """Lock-step downloads and uploads: the fast path's home."""

    def test_sizes(self) -> None:
        """Empty, short, exact multiples and odd sizes, default and small blksize."""
        for blksize in (None, 8, 100):
            size_of_block = blksize or 512
            for size in (0, 1, size_of_block - 1, size_of_block, size_of_block + 1,
                         3 * size_of_block, 10_000):
                data = payload(size, size)
                network, received = self.assertSameRun(
                    get, data=data, options=RequestedOptions(blksize=blksize)
                )
                self.assertEqual(received, data)
                # Every ACK but the first (the read-ahead is not there yet)
                # and the last two (final block, or a short read) goes fast.
                blocks = size // size_of_block + 1
                self.assertGreaterEqual(network.fast_hits, max(0, blocks - 3))

    def test_rollover(self) -> None:
        """Block numbers wrap past 65535 on the fast path as on the general one."""
        data = payload(8 * 70_000 + 3)
        network, received = self.assertSameRun(get, data=data, options=RequestedOptions(blksize=8))
        self.assertEqual(received, data)
        self.assertGreater(network.fast_hits, 65_536)
        numbers = [wire.decode(d).block for d in network.server.sent if d[1] == 3]
        self.assertIn(0, numbers)

    def test_source_without_readinto(self) -> None:
        """A source with only C{read} takes the fast path too (its reads build the datagrams)."""
        data = payload(20_000, 10)

        class ReadOnly:
            def __init__(self) -> None:
                self._file = io.BytesIO(data)

            def read(self, size: int) -> bytes:
                return self._file.read(size)

        network, received = self.assertSameDownload(ReadOnly)
        self.assertEqual(received, data)
        self.assertGreater(network.fast_hits, 30)

    def test_client_put(self) -> None:
        """A client's upload is a sender too."""
        data = payload(20_000, 7)
        network, received = self.assertSameRun(put, data=data)
        self.assertEqual(received, data)
        self.assertGreater(network.fast_hits, 30)

    def test_loss(self) -> None:
        """Lost DATA and lost ACKs: timer resends, then the fast path resumes."""
        data = payload(30_000, 3)
        for fault in (drop_every(7, SERVER_TO_CLIENT), drop_every(5, CLIENT_TO_SERVER),
                      drop_every(4, SERVER_TO_CLIENT, CLIENT_TO_SERVER)):
            network, received = self.assertSameRun(
                get, data=data, fault=fault, server_policy=TransferPolicy(retries=20),
                client_policy=TransferPolicy(retries=20),
            )
            self.assertEqual(received, data)
            self.assertGreater(network.fast_hits, 0)
            self.assertGreater(len(network.server.sent), len(set(network.server.sent)))

    def test_duplicates(self) -> None:
        """Duplicated ACKs are never answered (no Sorcerer's Apprentice) on either path."""
        data = payload(20_000, 4)
        network, received = self.assertSameRun(
            get, data=data, fault=duplicate_all(CLIENT_TO_SERVER, SERVER_TO_CLIENT)
        )
        self.assertEqual(received, data)
        blocks = len(data) // 512 + 1
        self.assertEqual(sum(1 for d in network.server.sent if d[1] == 3), blocks)

    def test_reordering(self) -> None:
        """Swapped datagrams in both directions."""
        data = payload(20_000, 5)
        network, received = self.assertSameRun(
            get, data=data, fault=swap_pairs(CLIENT_TO_SERVER, SERVER_TO_CLIENT),
            server_policy=TransferPolicy(retries=20), client_policy=TransferPolicy(retries=20),
        )
        self.assertEqual(received, data)

    @settings(max_examples=30, deadline=None)
    @given(
        seed=st.integers(0, 2**32),
        size=st.integers(0, 6000),
        blksize=st.sampled_from([8, 100, 512]),
        windowsize=st.sampled_from([None, 1, 4]),
        is_get=st.booleans(),
    )
    def test_random_faults(self, seed: int, size: int, blksize: int, windowsize: int | None,
                           is_get: bool) -> None:
        """Random loss, duplication and delay: the same run both ways."""

        def make_fault() -> Fault:
            rng = random.Random(seed)

            def fault(direction: str, index: int, datagram: bytes) -> list[float]:
                roll = rng.random()
                if roll < 0.15:
                    return []
                delays = [LATENCY * rng.uniform(1, 5)]
                if roll > 0.9:
                    delays.append(LATENCY * rng.uniform(1, 5))
                return delays

            return fault

        data = payload(size, seed)
        policy = TransferPolicy(retries=40)
        slow, slow_received = (get if is_get else put)(
            data, options=RequestedOptions(blksize=blksize, windowsize=windowsize),
            client_policy=policy, server_policy=policy, fault=make_fault())
        fast, fast_received = (get if is_get else put)(
            data, options=RequestedOptions(blksize=blksize, windowsize=windowsize),
            client_policy=policy, server_policy=policy, fault=make_fault(), fast=True)
        self.assertEqual(fast_received, data)
        self.assertEqual(slow_received, data)
        self.assertSameActions(fast, slow)


class NotTakenTests(EquivalenceTestCase):
    """Where the fast path must stay out of the way."""

    def test_windowed(self) -> None:
        """windowsize above 1 never takes the fast path."""
        data = payload(30_000, 6)
        network, _ = self.assertSameRun(
            get, data=data, options=RequestedOptions(blksize=512, windowsize=4)
        )
        self.assertEqual(network.fast_hits, 0)

    def test_netascii(self) -> None:
        """Netascii never takes the fast path (the wire size is not the read size)."""
        data = b"line\n" * 3000
        network, received = self.assertSameRun(get, data=data, mode=Mode.NETASCII)
        self.assertEqual(received, data)
        self.assertEqual(network.fast_hits, 0)

    def test_short_reads(self) -> None:
        """A source that returns less than asked still yields full blocks."""
        data = payload(10_000, 8)

        class Trickle(io.BytesIO):
            def read(self, size: int = -1) -> bytes:
                return super().read(min(size, 300))

            def readinto(self, buffer: Any) -> int:
                return super().readinto(memoryview(buffer)[:300])

        network, received = self.assertSameDownload(lambda: Trickle(data))
        self.assertEqual(received, data)
        self.assertEqual(network.fast_hits, 0)

    def test_read_error_mid_file(self) -> None:
        """
        A read error is raised where the general path would have read: the
        same ERROR, after the same blocks, with the same stats.
        """
        data = payload(10_000, 9)

        class Failing(io.BytesIO):
            reads = 0

            def _count(self) -> None:
                self.reads += 1
                if self.reads == 6:
                    raise OSError(errno.EIO, "I/O error")

            def read(self, size: int = -1) -> bytes:
                self._count()
                return super().read(size)

            def readinto(self, buffer: Any) -> int:
                self._count()
                return super().readinto(buffer)

        network, received = self.assertSameDownload(lambda: Failing(data))
        self.assertEqual(received, data[:5 * 512])
        self.assertIsInstance(network.server.error, LocalIOError)
        failed = [a for a in network.server.actions if isinstance(a, Failed)]
        self.assertEqual(failed[0].stats.file_bytes, 5 * 512)
        self.assertEqual(failed[0].stats.blocks, 5)


class FastAckTests(SynchronousTestCase):
    """The fast path's answers, one datagram at a time."""

    def setUp(self) -> None:
        self.data = payload(512 * 4 + 10)
        self.machine = Sender.serve(ReadRequest("f", Mode.OCTET, {}), io.BytesIO(self.data))
        self.machine.start(0.0)  # DATA 1

    def test_buffers_take_turns(self) -> None:
        """
        With a source that has C{readinto}, the fast path reads into two
        buffers in turn: the one refilled is always the one whose block was
        acknowledged, never the one in flight.
        """
        data = payload(512 * 8)
        machine = Sender.serve(ReadRequest("f", Mode.OCTET, {}), io.BytesIO(data))
        machine.start(0.0)
        machine.read_ahead()
        sent = []
        for block in range(1, 6):
            following = machine.fast_ack(encode(Ack(block)), 0.1 * block)
            self.assertEqual(following, encode(Data(block + 1, data[block * 512:(block + 1) * 512])))
            sent.append(following)
            machine.read_ahead()
            # The datagram in flight is intact after the next read-ahead.
            self.assertEqual(following[2:4], (block + 1).to_bytes(2, "big"))
        self.assertEqual(len({id(d) for d in sent[1:]}), 2)
        self.assertIsNot(sent[-1], sent[-2])

    def test_needs_read_ahead(self) -> None:
        """Without the next block read ahead, the fast path declines."""
        self.assertIsNone(self.machine.fast_ack(encode(Ack(1)), 0.1))
        self.machine.read_ahead()
        self.assertEqual(self.machine.fast_ack(encode(Ack(1)), 0.1),
                         encode(Data(2, self.data[512:1024])))
        self.assertEqual(self.machine.deadline, 1.1)

    def test_only_the_expected_ack(self) -> None:
        """Duplicates, stale ACKs, ACKs ahead and other packets: C{None}, nothing changed."""
        self.machine.read_ahead()
        for datagram in (encode(Ack(0)), encode(Ack(2)), encode(Ack(1)) + b"x",
                         encode(Data(1, b"")), b"\x00\x04\x00"):
            self.assertIsNone(self.machine.fast_ack(datagram, 0.1))
        self.assertEqual(self.machine.transferred, 512)
        self.assertEqual(self.machine.deadline, 1.0)

    def test_not_at_the_end(self) -> None:
        """
        The short last block and the ACK of the last block go the general
        way (the last block sets the end; its ACK is Done and Close).
        """
        for block in range(1, 4):
            self.machine.read_ahead()
            self.assertIsNotNone(self.machine.fast_ack(encode(Ack(block)), 0.1))
        self.machine.read_ahead()
        self.assertIsNone(self.machine.fast_ack(encode(Ack(4)), 0.2))
        self.assertEqual(self.machine.datagram_received(encode(Ack(4)), 0.2)[0],
                         Send(encode(Data(5, self.data[2048:]))))
        self.machine.read_ahead()
        self.assertIsNone(self.machine.fast_ack(encode(Ack(5)), 0.3))
        done, close = self.machine.datagram_received(encode(Ack(5)), 0.3)
        self.assertEqual(done, Done(self.machine._stats()))
        self.assertEqual(done.stats.file_bytes, len(self.data))
        self.assertEqual(close, Close())

    def test_closed(self) -> None:
        """A closed machine has no fast path."""
        self.machine.read_ahead()
        self.machine.datagram_received(encode(wire.Error(0, "bye")), 0.1)
        self.assertIsNone(self.machine.fast_ack(encode(Ack(1)), 0.1))

    def test_receiver_has_none(self) -> None:
        """A receiver never takes the fast path; its read_ahead does nothing."""
        receiver = Receiver.get("f", io.BytesIO())
        receiver.start(0.0)
        receiver.read_ahead()
        self.assertIsNone(receiver.fast_ack(encode(Ack(0)), 0.1))
