"""
Tests for L{appnet.tftp.machine}: the sans-IO TFTP transfer engines.

Two kinds of test: single machines fed datagrams by hand (the transitions,
one by one), and a client machine paired with a server machine over a
simulated network (L{Network}) with a fake clock, loss, duplication and
reordering.
"""

from __future__ import annotations

import errno
import heapq
import io
import itertools
import random
from typing import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appnet.tftp import wire
from appnet.tftp.machine import (
    UNKNOWN_TID_DATAGRAM,
    Action,
    Close,
    Done,
    Failed,
    LimitExceeded,
    LocalIOError,
    NegotiatedOptions,
    PeerProtocolError,
    Receiver,
    RemoteError,
    RequestedOptions,
    Send,
    Sender,
    SetTimer,
    State,
    TimedOut,
    Transfer,
    TransferPolicy,
    error_datagram,
)
from appnet.tftp.wire import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Mode,
    Opcode,
    OptionAck,
    ReadRequest,
    WriteRequest,
    decode,
    encode,
)

CLIENT_TO_SERVER = "c2s"
SERVER_TO_CLIENT = "s2c"
LATENCY = 0.001

Fault = Callable[[str, int, bytes], list[float]]
"""Decides a datagram's fate: (direction, index in that direction, bytes) ->
one delivery delay per copy delivered (empty: lost)."""


def no_fault(direction: str, index: int, datagram: bytes) -> list[float]:
    return [LATENCY]


def drop_every(n: int, *directions: str) -> Fault:
    """Lose every C{n}th datagram in each of C{directions}."""

    def fault(direction: str, index: int, datagram: bytes) -> list[float]:
        if direction in directions and index % n == n - 1:
            return []
        return [LATENCY]

    return fault


def duplicate_all(*directions: str) -> Fault:
    """Deliver every datagram in C{directions} twice."""

    def fault(direction: str, index: int, datagram: bytes) -> list[float]:
        if direction in directions:
            return [LATENCY, LATENCY * 1.5]
        return [LATENCY]

    return fault


def swap_pairs(*directions: str) -> Fault:
    """Deliver datagrams 0,1,2,3... in C{directions} as 1,0,3,2... when they
    are sent together (as the blocks of a window are)."""

    def fault(direction: str, index: int, datagram: bytes) -> list[float]:
        if direction in directions and index % 2 == 0:
            return [LATENCY * 2]
        return [LATENCY]

    return fault


def opcode(datagram: bytes) -> int:
    return int.from_bytes(datagram[:2], "big")


class Endpoint:
    """One side of a simulated transfer: a machine, its timer, its results."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.machine: Transfer | None = None
        self.deadline: float | None = None
        self.sent: list[bytes] = []
        self.done: list[Done] = []
        self.failed: list[Failed] = []
        self.closed = False
        self.actions: list[Action] = []

    def count(self, code: Opcode) -> int:
        """How many datagrams with this opcode this side sent."""
        return sum(1 for d in self.sent if opcode(d) == code)

    @property
    def error(self) -> Exception:
        assert len(self.failed) == 1, self.failed
        return self.failed[0].error


class Network:
    """
    A client machine and the server machine it makes, joined by a simulated
    network with a fake clock (plain floats).

    The server side behaves like the protocol layer should: requests go to a
    listener that builds the server machine from the first one and drops
    repeats; the client sends to the listener until its machine is
    established, then to the server's transfer port.
    """

    def __init__(
        self,
        client: Transfer,
        make_server: Callable[[wire.Packet], Transfer],
        fault: Fault = no_fault,
        fast: bool = False,
    ) -> None:
        self.fast = fast
        self.fast_hits = 0
        self.client = Endpoint("client")
        self.client.machine = client
        self.server = Endpoint("server")
        self.make_server = make_server
        self.fault = fault
        self.now = 0.0
        self._queue: list[tuple[float, int, str, bytes]] = []
        self._seq = itertools.count()
        self._indexes = {CLIENT_TO_SERVER: 0, SERVER_TO_CLIENT: 0}
        self.max_window_seen = 0

    def schedule(self, when: float, target: str, datagram: bytes) -> None:
        """Deliver C{datagram} to C{target} ("client" or "server") at C{when}."""
        heapq.heappush(self._queue, (when, next(self._seq), target, datagram))

    def run(self, time_limit: float = 100_000.0) -> Network:
        """Run until both sides have closed, or nothing is left to happen."""
        assert self.client.machine is not None
        self._apply(self.client, self.client.machine.start(self.now))
        while True:
            next_packet = self._queue[0][0] if self._queue else None
            timers = [
                (e.deadline, e)
                for e in (self.client, self.server)
                if e.deadline is not None and not e.closed
            ]
            next_timer = min(timers, key=lambda t: t[0]) if timers else None
            if next_packet is None and next_timer is None:
                break
            if next_timer is None or (next_packet is not None and next_packet <= next_timer[0]):
                when, _, target, datagram = heapq.heappop(self._queue)
                self.now = when
                self._deliver(target, datagram)
            else:
                when, endpoint = next_timer
                self.now = when
                endpoint.deadline = None
                assert endpoint.machine is not None
                self._apply(endpoint, endpoint.machine.timer_fired(self.now))
            if self.now > time_limit:
                raise AssertionError("simulation ran past its time limit")
        return self

    def _deliver(self, target: str, datagram: bytes) -> None:
        if target == "listener":
            if self.server.machine is None:
                self.server.machine = self.make_server(decode(datagram))
                self._apply(self.server, self.server.machine.start(self.now))
            return  # a repeated request: the protocol layer drops it
        endpoint = self.client if target == "client" else self.server
        if endpoint.closed or endpoint.machine is None:
            return  # the port is gone
        machine = endpoint.machine
        following = machine.fast_ack(datagram, self.now) if self.fast else None
        if following is None:
            self._apply(endpoint, machine.datagram_received(datagram, self.now))
        else:
            # What a driver does with the fast path's answer: the same
            # actions the general path would have returned.
            self.fast_hits += 1
            assert machine.deadline is not None
            self._apply(endpoint, [Send(following), SetTimer(machine.deadline)])
        self._check_window(machine)

    def _read_ahead(self, endpoint: Endpoint) -> None:
        if self.fast and endpoint.machine is not None and not endpoint.closed:
            endpoint.machine.read_ahead()

    def _check_window(self, machine: Transfer) -> None:
        # White-box: the sender's retransmission buffer never exceeds a window.
        if isinstance(machine, Sender):
            held = len(machine._window)
            assert held <= machine.options.windowsize, (held, machine.options)
            self.max_window_seen = max(self.max_window_seen, held)

    def _apply(self, endpoint: Endpoint, actions: list[Action]) -> None:
        assert not endpoint.closed, f"{endpoint.name} acted after Close"
        self._perform(endpoint, actions)
        self._read_ahead(endpoint)

    def _perform(self, endpoint: Endpoint, actions: list[Action]) -> None:
        # A driver sends at once, and a socket copies: the fast path may
        # refill a sent datagram's buffer once its block is acknowledged.
        actions = [Send(bytes(a.datagram)) if isinstance(a, Send) else a for a in actions]
        endpoint.actions.extend(actions)
        for i, action in enumerate(actions):
            if isinstance(action, Send):
                endpoint.sent.append(action.datagram)
                self._transmit(endpoint, action.datagram)
            elif isinstance(action, SetTimer):
                endpoint.deadline = action.deadline
            elif isinstance(action, Done):
                endpoint.done.append(action)
            elif isinstance(action, Failed):
                endpoint.failed.append(action)
            elif isinstance(action, Close):
                assert i == len(actions) - 1, "Close must be the last action"
                endpoint.closed = True
                endpoint.deadline = None
            else:
                raise AssertionError(f"unknown action {action!r}")

    def _transmit(self, endpoint: Endpoint, datagram: bytes) -> None:
        if endpoint is self.client:
            direction = CLIENT_TO_SERVER
            assert self.client.machine is not None
            target = "server" if self.client.machine.established else "listener"
        else:
            direction, target = SERVER_TO_CLIENT, "client"
        index = self._indexes[direction]
        self._indexes[direction] += 1
        for delay in self.fault(direction, index, datagram):
            heapq.heappush(self._queue, (self.now + delay, next(self._seq), target, datagram))


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def get(
    data: bytes,
    *,
    mode: Mode = Mode.OCTET,
    options: RequestedOptions = RequestedOptions(),
    client_policy: TransferPolicy = TransferPolicy(),
    server_policy: TransferPolicy = TransferPolicy(),
    fault: Fault = no_fault,
    inject: tuple[tuple[float, str, bytes], ...] = (),
    fast: bool = False,
) -> tuple[Network, bytes]:
    """A client GET of C{data} from a server machine; returns what arrived."""
    sink = io.BytesIO()
    client = Receiver.get("file", sink, mode=mode, options=options, policy=client_policy)

    def make_server(request: wire.Packet) -> Transfer:
        assert isinstance(request, ReadRequest)
        return Sender.serve(request, io.BytesIO(data), size=len(data), policy=server_policy)

    network = Network(client, make_server, fault, fast)
    for when, target, datagram in inject:
        network.schedule(when, target, datagram)
    network.run()
    return network, sink.getvalue()


def put(
    data: bytes,
    *,
    mode: Mode = Mode.OCTET,
    options: RequestedOptions = RequestedOptions(),
    client_policy: TransferPolicy = TransferPolicy(),
    server_policy: TransferPolicy = TransferPolicy(),
    fault: Fault = no_fault,
    fast: bool = False,
) -> tuple[Network, bytes]:
    """A client PUT of C{data} to a server machine; returns what arrived."""
    sink = io.BytesIO()
    client = Sender.put(
        "file", io.BytesIO(data), size=len(data), mode=mode, options=options, policy=client_policy
    )

    def make_server(request: wire.Packet) -> Transfer:
        assert isinstance(request, WriteRequest)
        return Receiver.serve(request, sink, policy=server_policy)

    network = Network(client, make_server, fault, fast).run()
    return network, sink.getvalue()


class TransferTestCase(SynchronousTestCase):
    """Assertions shared by the simulated-transfer tests."""

    def assertTransferred(self, network: Network, received: bytes, data: bytes) -> None:
        """Both sides succeeded, closed, and the file arrived intact."""
        for side in (network.client, network.server):
            self.assertEqual(side.failed, [], f"{side.name} failed")
            self.assertEqual(len(side.done), 1, f"{side.name} did not finish")
            self.assertTrue(side.closed, f"{side.name} did not close")
        self.assertEqual(len(received), len(data))
        self.assertTrue(received == data, "file corrupted in transit")

    def sender_of(self, network: Network) -> Endpoint:
        return network.server if isinstance(network.server.machine, Sender) else network.client


def data_blocks(endpoint: Endpoint) -> list[Data]:
    return [p for p in map(decode, endpoint.sent) if isinstance(p, Data)]


class TransferSizeTests(TransferTestCase):
    """Files of every awkward size cross intact, with the right last block."""

    SIZES = (0, 1, 511, 512, 513, 1024, 1536, 512 * 7 + 100)

    def test_get_sizes(self) -> None:
        """A GET of 0, 1, 511, 512, 513 bytes and multiples of 512 delivers
        the file, in size // 512 + 1 blocks."""
        for size in self.SIZES:
            data = payload(size, size)
            network, received = get(data)
            self.assertTransferred(network, received, data)
            self.assertEqual(network.server.count(Opcode.DATA), size // 512 + 1, size)
            self.assertEqual(network.server.done[0].stats.blocks, size // 512 + 1)
            self.assertEqual(network.client.done[0].stats.file_bytes, size)

    def test_put_sizes(self) -> None:
        """A PUT of 0, 1, 511, 512, 513 bytes and multiples of 512 delivers
        the file, in size // 512 + 1 blocks."""
        for size in self.SIZES:
            data = payload(size, size)
            network, received = put(data)
            self.assertTransferred(network, received, data)
            self.assertEqual(network.client.count(Opcode.DATA), size // 512 + 1, size)
            self.assertEqual(network.server.done[0].stats.file_bytes, size)

    def test_empty_final_block(self) -> None:
        """When the size is a multiple of the block size the transfer ends
        with an empty DATA block; otherwise with a short one."""
        network, _ = get(payload(1024))
        blocks = data_blocks(network.server)
        self.assertEqual([(b.block, len(b.payload)) for b in blocks], [(1, 512), (2, 512), (3, 0)])
        network, _ = get(payload(1000))
        blocks = data_blocks(network.server)
        self.assertEqual([(b.block, len(b.payload)) for b in blocks], [(1, 512), (2, 488)])

    def test_blksize_multiples(self) -> None:
        """With a negotiated block size, files of exact multiples of it (and
        one byte either side) cross intact in both directions, lock-step and
        windowed."""
        for blksize, windowsize in [(1468, None), (1468, 4), (8, None), (8, 3)]:
            options = RequestedOptions(blksize=blksize, windowsize=windowsize)
            for size in (0, blksize, blksize * 5, blksize * 5 - 1, blksize * 5 + 1, blksize * 12):
                data = payload(size, size)
                for transfer in (get, put):
                    network, received = transfer(data, options=options)
                    self.assertTransferred(network, received, data)
                    sender = self.sender_of(network)
                    blocks = data_blocks(sender)
                    self.assertEqual(len(blocks), size // blksize + 1)
                    self.assertEqual(len(blocks[-1].payload), size % blksize)


class RolloverTests(TransferTestCase):
    """Block numbers wrap from 65535 to 0 and the transfer goes on."""

    DATA = payload(600_000, 65536)  # 75,000 blocks of 8 octets

    def assertWrapped(self, network: Network) -> None:
        numbers = self.block_numbers(self.sender_of(network))
        index = numbers.index(65535)
        self.assertEqual(numbers[index + 1 : index + 3], [0, 1])
        self.assertEqual(numbers[-1], 75001 % 65536)

    def block_numbers(self, endpoint: Endpoint) -> list[int]:
        return [
            int.from_bytes(d[2:4], "big") for d in endpoint.sent if opcode(d) == Opcode.DATA
        ]

    def test_get_lock_step(self) -> None:
        """A lock-step GET of 75,001 blocks of 8 octets wraps the block
        number to 0 after 65535 and delivers the file intact."""
        network, received = get(self.DATA, options=RequestedOptions(blksize=8))
        self.assertTransferred(network, received, self.DATA)
        self.assertWrapped(network)
        self.assertEqual(network.server.done[0].stats.blocks, 75001)

    def test_put_windowed(self) -> None:
        """A PUT of 75,001 blocks with windowsize 16 wraps the block number
        to 0 and delivers the file intact."""
        network, received = put(self.DATA, options=RequestedOptions(blksize=8, windowsize=16))
        self.assertTransferred(network, received, self.DATA)
        self.assertWrapped(network)

    def test_windowed_loss_across_rollover(self) -> None:
        """Losses and go-backs across the wrap (windowsize 16, every 97th
        datagram lost each way) still deliver the file intact."""
        data = self.DATA[: 8 * 70_000]
        network, received = get(
            data,
            options=RequestedOptions(blksize=8, windowsize=16),
            fault=drop_every(97, CLIENT_TO_SERVER, SERVER_TO_CLIENT),
        )
        self.assertTransferred(network, received, data)
        self.assertGreater(network.server.done[0].stats.retransmissions, 0)


class OptionCombinationTests(TransferTestCase):
    """Every combination of options gives the agreed behaviour."""

    def test_every_combination(self) -> None:
        """For GET and PUT, octet and netascii, every combination of blksize,
        windowsize, timeout and tsize transfers the file intact and runs with
        exactly the options requested."""
        data = payload(3000, 7) + b"line\nbreak\r\nand a lone \r CR\n" * 20
        blksizes = (None, 8, 1468, 65464)
        windowsizes = (None, 1, 16)
        timeouts = (None, 3)
        for blksize, windowsize, timeout, tsize, mode, transfer in itertools.product(
            blksizes, windowsizes, timeouts, (False, True), (Mode.OCTET, Mode.NETASCII), (get, put)
        ):
            if transfer is put and tsize and mode is Mode.NETASCII:
                continue  # refused up front: see test_put_tsize_needs_octet_size
            options = RequestedOptions(
                blksize=blksize, windowsize=windowsize, timeout=timeout, tsize=tsize
            )
            network, received = transfer(data, mode=mode, options=options)
            label = f"{transfer.__name__} {mode} {options}"
            self.assertTransferred(network, received, data)
            expected = NegotiatedOptions(
                blksize=blksize or 512,
                windowsize=windowsize or 1,
                timeout=timeout,
                tsize=len(data) if tsize and mode is Mode.OCTET else None,
            )
            self.assertEqual(network.client.done[0].stats.options, expected, label)
            self.assertEqual(network.server.done[0].stats.options, expected, label)
            oacks = network.server.count(Opcode.OACK)
            anything = blksize or windowsize or timeout or (tsize and mode is Mode.OCTET)
            self.assertEqual(oacks, 1 if anything else 0, label)


class ServerNegotiationTests(SynchronousTestCase):
    """A server grants what it can and ignores the rest (RFC 2347)."""

    def start_sender(
        self, options: dict[str, str], *, size: int | None = 1000, mode: Mode = Mode.OCTET,
        policy: TransferPolicy = TransferPolicy(),
    ) -> tuple[Sender, list[Action]]:
        sender = Sender.serve(ReadRequest("f", mode, options), io.BytesIO(b"x" * 1000), size=size, policy=policy)
        return sender, sender.start(10.0)

    def test_no_options_no_oack(self) -> None:
        """An RRQ without options is answered with DATA 1 at once."""
        _, actions = self.start_sender({})
        self.assertEqual(actions, [Send(encode(Data(1, b"x" * 512))), SetTimer(11.0)])

    def test_oack_in_request_order(self) -> None:
        """Granted options are acknowledged in the order the client sent
        them, and the server waits for ACK 0."""
        sender, actions = self.start_sender(
            {"windowsize": "4", "tsize": "0", "timeout": "2", "blksize": "100"}
        )
        self.assertEqual(
            actions,
            [
                Send(encode(OptionAck({"windowsize": "4", "tsize": "1000", "timeout": "2", "blksize": "100"}))),
                SetTimer(12.0),
            ],
        )
        self.assertIs(sender.state, State.NEGOTIATING)
        self.assertEqual(sender.options, NegotiatedOptions(100, 4, 2, 1000))

    def test_unknown_and_invalid_options_ignored(self) -> None:
        """Unknown options and values out of range or not numbers are left
        out of the OACK; with nothing left, there is no OACK at all."""
        _, actions = self.start_sender(
            {"foo": "bar", "blksize": "7", "timeout": "0", "windowsize": "x", "multicast": "1"}
        )
        self.assertEqual(decode(actions[0].datagram), Data(1, b"x" * 512))
        _, actions = self.start_sender(
            {"timeout": "256", "windowsize": "0", "blksize": "-8", "tsize": "+0"}
        )
        self.assertEqual(decode(actions[0].datagram), Data(1, b"x" * 512))

    def test_lowers_blksize_and_windowsize(self) -> None:
        """A server lowers blksize and windowsize to its policy maximum
        (RFC 2348, RFC 7440), and lowers windowsize further to keep the
        retransmission buffer within max_window_bytes."""
        policy = TransferPolicy(max_blksize=1024, max_windowsize=8)
        _, actions = self.start_sender({"blksize": "65464", "windowsize": "100"}, policy=policy)
        self.assertEqual(decode(actions[0].datagram), OptionAck({"blksize": "1024", "windowsize": "8"}))
        policy = TransferPolicy(max_window_bytes=100_000)
        _, actions = self.start_sender({"blksize": "65464", "windowsize": "16"}, policy=policy)
        self.assertEqual(decode(actions[0].datagram), OptionAck({"blksize": "65464", "windowsize": "1"}))
        _, actions = self.start_sender({"blksize": "1000", "windowsize": "16"}, policy=policy)
        self.assertEqual(decode(actions[0].datagram), OptionAck({"blksize": "1000", "windowsize": "16"}))
        _, actions = self.start_sender({"blksize": "10000", "windowsize": "16"}, policy=policy)
        self.assertEqual(decode(actions[0].datagram), OptionAck({"blksize": "10000", "windowsize": "10"}))

    def test_blksize_above_rfc_maximum_is_capped(self) -> None:
        """A blksize over 65464 is granted as 65464, not refused."""
        _, actions = self.start_sender({"blksize": "99999"})
        self.assertEqual(decode(actions[0].datagram), OptionAck({"blksize": "65464"}))

    def test_tsize_reported_on_rrq(self) -> None:
        """RFC 2349: a server answers tsize 0 in an RRQ with the file size,
        but not in netascii mode nor when the size is unknown."""
        _, actions = self.start_sender({"tsize": "0"}, size=123456)
        self.assertEqual(decode(actions[0].datagram), OptionAck({"tsize": "123456"}))
        _, actions = self.start_sender({"tsize": "0"}, mode=Mode.NETASCII)
        self.assertIsInstance(decode(actions[0].datagram), Data)
        _, actions = self.start_sender({"tsize": "0"}, size=None)
        self.assertIsInstance(decode(actions[0].datagram), Data)

    def test_oack_then_ack0_then_data(self) -> None:
        """After its OACK a server sends DATA 1 only on ACK 0, repeats the
        OACK on timeout, and ignores the client's repeated ACK 0 later."""
        sender, _ = self.start_sender({"blksize": "100"})
        self.assertEqual(sender.timer_fired(11.0), [Send(encode(OptionAck({"blksize": "100"}))), SetTimer(12.0)])
        actions = sender.datagram_received(encode(Ack(0)), 11.5)
        self.assertEqual(actions, [Send(encode(Data(1, b"x" * 100))), SetTimer(12.5)])
        self.assertEqual(sender.datagram_received(encode(Ack(0)), 11.6), [])

    def test_timeout_option_sets_interval(self) -> None:
        """RFC 2349: a granted timeout is the retransmission interval."""
        sender, actions = self.start_sender({"timeout": "7"})
        self.assertEqual(actions[-1], SetTimer(17.0))
        self.assertEqual(sender.datagram_received(encode(Ack(0)), 12.0)[-1], SetTimer(19.0))

    def test_wrq_tsize_within_limit(self) -> None:
        """A WRQ's tsize within max_size is acknowledged with its value."""
        receiver = Receiver.serve(
            WriteRequest("f", Mode.OCTET, {"tsize": "100"}), io.BytesIO(),
            policy=TransferPolicy(max_size=100),
        )
        actions = receiver.start(0.0)
        self.assertEqual(actions, [Send(encode(OptionAck({"tsize": "100"}))), SetTimer(1.0)])
        self.assertEqual(receiver.expected_size, 100)

    def test_wrq_tsize_over_limit(self) -> None:
        """RFC 2349: a WRQ announcing a file over max_size is refused with
        ERROR 3 before any data flows."""
        receiver = Receiver.serve(
            WriteRequest("f", Mode.OCTET, {"tsize": "101"}), io.BytesIO(),
            policy=TransferPolicy(max_size=100),
        )
        actions = receiver.start(0.0)
        self.assertEqual(decode(actions[0].datagram).code, ErrorCode.DISK_FULL)
        self.assertIsInstance(actions[1].error, LimitExceeded)
        self.assertEqual(actions[2], Close())

    def test_wrq_data_over_limit(self) -> None:
        """A WRQ whose data grows past max_size (no tsize, or a false one)
        fails with ERROR 3 when the limit is crossed, and writes nothing
        beyond it."""
        sink = io.BytesIO()
        receiver = Receiver.serve(
            WriteRequest("f", Mode.OCTET, {"blksize": "8"}), sink,
            policy=TransferPolicy(max_size=20),
        )
        receiver.start(0.0)
        for block in (1, 2):
            receiver.datagram_received(encode(Data(block, b"12345678")), 0.1)
        actions = receiver.datagram_received(encode(Data(3, b"12345678")), 0.2)
        self.assertEqual(decode(actions[0].datagram).code, ErrorCode.DISK_FULL)
        self.assertIsInstance(actions[1].error, LimitExceeded)
        self.assertEqual(sink.getvalue(), b"12345678" * 2)

    def test_repeated_oack_from_client_side_receiver(self) -> None:
        """A WRQ server's OACK is repeated on timeout (it stands for ACK 0)."""
        receiver = Receiver.serve(WriteRequest("f", Mode.OCTET, {"blksize": "8"}), io.BytesIO())
        receiver.start(0.0)
        oack = encode(OptionAck({"blksize": "8"}))
        self.assertEqual(receiver.timer_fired(1.0), [Send(oack), SetTimer(2.0)])

    def test_mail_mode_refused(self) -> None:
        """Mode mail (obsolete) is refused with ERROR 4 by either server."""
        for machine in (
            Sender.serve(ReadRequest("f", Mode.MAIL), io.BytesIO()),
            Receiver.serve(WriteRequest("f", Mode.MAIL), io.BytesIO()),
        ):
            actions = machine.start(0.0)
            self.assertEqual(decode(actions[0].datagram).code, ErrorCode.ILLEGAL_OPERATION)
            self.assertIsInstance(actions[1].error, PeerProtocolError)
            self.assertEqual(actions[2], Close())


class ClientNegotiationTests(SynchronousTestCase):
    """A client accepts the subset of its options the server acknowledged,
    and refuses anything else with ERROR 8."""

    OPTIONS = RequestedOptions(blksize=1468, windowsize=16, timeout=3, tsize=True)

    def started_get(self, policy: TransferPolicy = TransferPolicy()) -> Receiver:
        receiver = Receiver.get("f", io.BytesIO(), options=self.OPTIONS, policy=policy)
        receiver.start(0.0)
        return receiver

    def started_put(self) -> Sender:
        sender = Sender.put("f", io.BytesIO(b"abc"), size=3, options=self.OPTIONS)
        sender.start(0.0)
        return sender

    def test_request_carries_options(self) -> None:
        """The request lists the options asked for: tsize 0 on a GET, the
        file size on a PUT."""
        receiver = Receiver.get("f", io.BytesIO(), options=self.OPTIONS)
        self.assertEqual(
            decode(receiver.start(0.0)[0].datagram),
            ReadRequest("f", Mode.OCTET, {"blksize": "1468", "tsize": "0", "timeout": "3", "windowsize": "16"}),
        )
        sender = Sender.put("f", io.BytesIO(b"abc"), size=3, options=self.OPTIONS)
        self.assertEqual(decode(sender.start(0.0)[0].datagram).options["tsize"], "3")

    def test_accepts_subset(self) -> None:
        """An OACK naming only some options: those apply, the others keep
        their defaults, and ACK 0 goes back."""
        receiver = self.started_get()
        actions = receiver.datagram_received(encode(OptionAck({"blksize": "1000"})), 0.5)
        self.assertEqual(actions, [Send(encode(Ack(0))), SetTimer(1.5)])
        self.assertEqual(receiver.options, NegotiatedOptions(blksize=1000))
        self.assertTrue(receiver.established)

    def test_accepts_lowered_values(self) -> None:
        """A server may lower blksize and windowsize; tsize tells the size."""
        receiver = self.started_get()
        receiver.datagram_received(
            encode(OptionAck({"blksize": "512", "windowsize": "4", "timeout": "3", "tsize": "99"})), 0.5
        )
        self.assertEqual(receiver.options, NegotiatedOptions(512, 4, 3, 99))
        self.assertEqual(receiver.expected_size, 99)

    def assertRefused(self, machine: Transfer, oack: dict[str, str]) -> None:
        actions = machine.datagram_received(encode(OptionAck(oack)), 0.5)
        self.assertTrue(machine.established, "the ERROR 8 must go to the server's TID")
        self.assertEqual(decode(actions[0].datagram).code, ErrorCode.OPTION_REFUSED)
        self.assertIsInstance(actions[1].error, PeerProtocolError)
        self.assertEqual(actions[1].error.code, ErrorCode.OPTION_REFUSED)
        self.assertEqual(actions[2], Close())
        self.assertEqual(len(actions), 3)

    def test_refuses_unrequested_option(self) -> None:
        """An option we did not ask for is refused with ERROR 8."""
        self.assertRefused(self.started_get(), {"blksize": "1468", "multicast": "1"})
        receiver = Receiver.get("f", io.BytesIO(), options=RequestedOptions(blksize=1468))
        receiver.start(0.0)
        self.assertRefused(receiver, {"windowsize": "4"})

    def test_refuses_out_of_bounds_values(self) -> None:
        """A blksize or windowsize above what we asked (or below the
        minimum), a changed timeout, or a value that is not a number, is
        refused with ERROR 8."""
        for oack in (
            {"blksize": "1469"},
            {"blksize": "7"},
            {"windowsize": "17"},
            {"windowsize": "0"},
            {"timeout": "4"},
            {"tsize": "lots"},
            {"blksize": " 512"},
        ):
            self.assertRefused(self.started_get(), oack)

    def test_put_refuses_changed_tsize(self) -> None:
        """On a PUT the server must echo our tsize; another value is refused."""
        self.assertRefused(self.started_put(), {"tsize": "4"})

    def test_get_refuses_oversized_tsize(self) -> None:
        """RFC 2349: a GET whose announced size is over max_size is aborted
        with ERROR 3."""
        receiver = self.started_get(TransferPolicy(max_size=1000))
        actions = receiver.datagram_received(encode(OptionAck({"tsize": "1001"})), 0.5)
        self.assertEqual(decode(actions[0].datagram).code, ErrorCode.DISK_FULL)
        self.assertIsInstance(actions[1].error, LimitExceeded)

    def test_server_refuses_options(self) -> None:
        """A server answering the request with ERROR 8 fails the transfer
        with RemoteError code 8 and no reply (the caller may retry without
        options)."""
        for machine in (self.started_get(), self.started_put()):
            actions = machine.datagram_received(encode(Error(ErrorCode.OPTION_REFUSED, "no")), 0.5)
            self.assertEqual(len(actions), 2)
            self.assertIsInstance(actions[0].error, RemoteError)
            self.assertEqual(actions[0].error.code, ErrorCode.OPTION_REFUSED)
            self.assertEqual(actions[1], Close())
            self.assertFalse(machine.established)

    def test_server_ignoring_options(self) -> None:
        """A server that ignores our options answers a GET with DATA 1, a
        PUT with ACK 0: the defaults apply."""
        receiver = self.started_get()
        actions = receiver.datagram_received(encode(Data(1, b"short")), 0.5)
        self.assertEqual(actions[0].stats.options, NegotiatedOptions())
        sender = self.started_put()
        actions = sender.datagram_received(encode(Ack(0)), 0.5)
        self.assertEqual(actions, [Send(encode(Data(1, b"abc"))), SetTimer(1.5)])
        self.assertEqual(sender.options, NegotiatedOptions())

    def test_repeated_oack_on_get(self) -> None:
        """If the server repeats its OACK (our ACK 0 was lost) a GET repeats
        ACK 0; once data flows, a stray OACK is ignored."""
        receiver = self.started_get()
        oack = encode(OptionAck({"blksize": "8"}))
        receiver.datagram_received(oack, 0.5)
        self.assertEqual(receiver.datagram_received(oack, 0.6), [Send(encode(Ack(0)))])
        receiver.datagram_received(encode(Data(1, b"12345678")), 0.7)
        self.assertEqual(receiver.datagram_received(oack, 0.8), [])

    def test_repeated_oack_on_put(self) -> None:
        """If the server repeats its OACK on a PUT, it is a duplicate ACK 0:
        no DATA is sent again (the Sorcerer's Apprentice rule)."""
        sender = Sender.put("f", io.BytesIO(b"x" * 100), options=RequestedOptions(blksize=8))
        sender.start(0.0)
        oack = encode(OptionAck({"blksize": "8"}))
        self.assertEqual(len(sender.datagram_received(oack, 0.5)), 2)
        self.assertEqual(sender.datagram_received(oack, 0.6), [])


class LossTests(TransferTestCase):
    """Lost, duplicated and reordered datagrams are recovered from."""

    DATA = payload(40_000, 3)

    def test_drop_every_nth(self) -> None:
        """Losing every Nth datagram in one or both directions, lock-step and
        with windowsize 16, GET and PUT, still delivers the file intact.

        (N must not divide the length of a retransmitted window: every
        retransmission would then lose the same block, with any windowed
        protocol. Real loss is not periodic.)"""
        cases = [
            (5, (CLIENT_TO_SERVER,)),
            (7, (SERVER_TO_CLIENT,)),
            (9, (CLIENT_TO_SERVER, SERVER_TO_CLIENT)),
            (11, (CLIENT_TO_SERVER, SERVER_TO_CLIENT)),
        ]
        for (n, directions), windowsize, transfer in itertools.product(cases, (None, 16), (get, put)):
            options = RequestedOptions(blksize=256, windowsize=windowsize)
            network, received = transfer(self.DATA, options=options, fault=drop_every(n, *directions))
            self.assertTransferred(network, received, self.DATA)
            sender = self.sender_of(network)
            self.assertGreater(sender.done[0].stats.retransmissions, 0)

    def test_duplication(self) -> None:
        """Every datagram delivered twice, both ways: the file arrives intact
        and the sender sends each block exactly once."""
        for windowsize, transfer in itertools.product((None, 16), (get, put)):
            options = RequestedOptions(blksize=256, windowsize=windowsize)
            network, received = transfer(
                self.DATA, options=options, fault=duplicate_all(CLIENT_TO_SERVER, SERVER_TO_CLIENT)
            )
            self.assertTransferred(network, received, self.DATA)
            self.assertEqual(self.sender_of(network).count(Opcode.DATA), len(self.DATA) // 256 + 1)

    def test_reordering_within_window(self) -> None:
        """Blocks of a window delivered pairwise swapped: the receiver asks
        the sender to go back, and the file arrives intact."""
        for transfer in (get, put):
            network, received = transfer(
                self.DATA,
                options=RequestedOptions(blksize=256, windowsize=16),
                fault=swap_pairs(SERVER_TO_CLIENT if transfer is get else CLIENT_TO_SERVER),
            )
            self.assertTransferred(network, received, self.DATA)

    def test_lost_final_ack_is_repeated_while_dallying(self) -> None:
        """When the final ACK is lost, the sender repeats the final block and
        the dallying receiver acknowledges it again: both sides succeed."""
        data = payload(1000)

        def lose_first_final_ack(direction: str, index: int, datagram: bytes) -> list[float]:
            if direction == CLIENT_TO_SERVER and datagram == encode(Ack(2)) and not seen:
                seen.append(datagram)
                return []
            return [LATENCY]

        seen: list[bytes] = []
        network, received = get(data, fault=lose_first_final_ack)
        self.assertTransferred(network, received, data)
        self.assertEqual(network.client.count(Opcode.ACK), 3)  # 1, 2, and 2 again
        self.assertEqual(network.server.done[0].stats.retransmissions, 1)
        # Done is reported on the final block; Close only after the dally.
        self.assertLess(network.client.done[0].stats.finished, 0.01)

    def test_without_dally_the_sender_times_out(self) -> None:
        """Why receivers dally: with dally 0 and the final ACK lost, the
        receiver has the file but the sender never learns it and fails."""
        data = payload(1000)

        def lose_final_ack(direction: str, index: int, datagram: bytes) -> list[float]:
            return [] if datagram == encode(Ack(2)) else [LATENCY]

        network, received = get(data, client_policy=TransferPolicy(dally=0), fault=lose_final_ack)
        self.assertEqual(received, data)
        self.assertEqual(len(network.client.done), 1)
        self.assertIsInstance(network.server.error, TimedOut)

    @settings(max_examples=25, deadline=None)
    @given(
        seed=st.integers(0, 2**32),
        size=st.integers(0, 5000),
        blksize=st.sampled_from([8, 100, 512]),
        windowsize=st.sampled_from([None, 2, 16]),
        is_get=st.booleans(),
    )
    def test_random_faults(self, seed: int, size: int, blksize: int, windowsize: int | None, is_get: bool) -> None:
        """Under random loss (15%), duplication (10%) and delay, transfers of
        any size and window deliver the file intact."""
        rng = random.Random(seed)

        def fault(direction: str, index: int, datagram: bytes) -> list[float]:
            roll = rng.random()
            if roll < 0.15:
                return []
            delays = [LATENCY * rng.uniform(1, 5)]
            if roll > 0.9:
                delays.append(LATENCY * rng.uniform(1, 5))
            return delays

        data = payload(size, seed)
        policy = TransferPolicy(retries=40)
        network, received = (get if is_get else put)(
            data,
            options=RequestedOptions(blksize=blksize, windowsize=windowsize),
            client_policy=policy,
            server_policy=policy,
            fault=fault,
        )
        self.assertTransferred(network, received, data)


class ApprenticeTests(TransferTestCase):
    """RFC 1123 4.2.3.1: a duplicate ACK never causes DATA to be sent again."""

    DATA = payload(512 * 20 + 10, 9)
    BLOCKS = 21

    def test_duplicated_acks_do_not_double_traffic(self) -> None:
        """Every ACK delivered twice: the sender still sends each block once
        (with the bug it would send every block twice)."""
        network, received = get(self.DATA, fault=duplicate_all(CLIENT_TO_SERVER))
        self.assertTransferred(network, received, self.DATA)
        self.assertEqual(network.server.count(Opcode.DATA), self.BLOCKS)

    def test_delayed_ack_costs_one_retransmission(self) -> None:
        """The classic scenario: the first ACK is delayed past the timeout,
        so DATA 1 is sent again and ACKed twice. The sender sends one extra
        packet in all, not one extra per block for the rest of the transfer."""

        def delay_first_ack(direction: str, index: int, datagram: bytes) -> list[float]:
            if direction == CLIENT_TO_SERVER and datagram == encode(Ack(1)) and not delayed:
                delayed.append(datagram)
                return [1.5]
            return [LATENCY]

        delayed: list[bytes] = []
        network, received = get(self.DATA, fault=delay_first_ack)
        self.assertTransferred(network, received, self.DATA)
        self.assertEqual(network.server.count(Opcode.DATA), self.BLOCKS + 1)
        self.assertEqual(network.server.done[0].stats.retransmissions, 1)
        # The receiver acknowledged each block once, and block 1 twice.
        self.assertEqual(network.client.count(Opcode.ACK), self.BLOCKS + 1)
        self.assertEqual(network.client.done[0].stats.retransmissions, 1)

    def test_duplicated_acks_windowed(self) -> None:
        """With windowsize 8 and every ACK delivered twice, each block is
        still sent exactly once."""
        network, received = get(
            self.DATA, options=RequestedOptions(windowsize=8), fault=duplicate_all(CLIENT_TO_SERVER)
        )
        self.assertTransferred(network, received, self.DATA)
        self.assertEqual(network.server.count(Opcode.DATA), self.BLOCKS)

    def test_duplicate_ack_sends_nothing(self) -> None:
        """Fed by hand: the ACK for block 1 sends DATA 2; the same ACK again
        sends nothing and leaves the timer alone."""
        sender = Sender.serve(ReadRequest("f"), io.BytesIO(self.DATA))
        sender.start(0.0)
        actions = sender.datagram_received(encode(Ack(1)), 0.1)
        self.assertEqual(decode(actions[0].datagram).block, 2)
        self.assertEqual(sender.datagram_received(encode(Ack(1)), 0.2), [])
        self.assertEqual(sender.deadline, 1.1)


class WindowTests(SynchronousTestCase):
    """RFC 7440 windows, fed by hand."""

    def start_sender(self, size: int = 8 * 10, windowsize: int = 4) -> tuple[Sender, list[Action]]:
        sender = Sender.serve(
            ReadRequest("f", Mode.OCTET, {"blksize": "8", "windowsize": str(windowsize)}),
            io.BytesIO(payload(size)),
        )
        sender.start(0.0)
        return sender, sender.datagram_received(encode(Ack(0)), 0.0)

    def blocks(self, actions: list[Action]) -> list[int]:
        return [decode(a.datagram).block for a in actions if isinstance(a, Send)]

    def test_window_sent_whole(self) -> None:
        """After ACK 0 a sender sends a whole window of blocks."""
        _, actions = self.start_sender()
        self.assertEqual(self.blocks(actions), [1, 2, 3, 4])

    def test_full_ack_moves_window(self) -> None:
        """An ACK for the window's last block sends the next window."""
        sender, _ = self.start_sender()
        self.assertEqual(self.blocks(sender.datagram_received(encode(Ack(4)), 0.1)), [5, 6, 7, 8])

    def test_partial_ack_goes_back(self) -> None:
        """An ACK for a block inside the window goes back: the window starts
        after it, resending what followed it."""
        sender, _ = self.start_sender()
        actions = sender.datagram_received(encode(Ack(2)), 0.1)
        self.assertEqual(self.blocks(actions), [3, 4, 5, 6])

    def test_timeout_resends_window(self) -> None:
        """On timeout the sender resends the window from the block after the
        last ACKed one."""
        sender, _ = self.start_sender()
        sender.datagram_received(encode(Ack(1)), 0.1)
        self.assertEqual(self.blocks(sender.timer_fired(1.1)), [2, 3, 4, 5])

    def test_out_of_window_ack_ignored(self) -> None:
        """An ACK for a block not yet sent, or older than the window, is
        ignored."""
        sender, _ = self.start_sender()
        sender.datagram_received(encode(Ack(4)), 0.1)
        self.assertEqual(sender.datagram_received(encode(Ack(9)), 0.2), [])
        self.assertEqual(sender.datagram_received(encode(Ack(2)), 0.2), [])
        self.assertEqual(sender.datagram_received(encode(Ack(4)), 0.2), [])

    def test_window_stops_at_final_block(self) -> None:
        """The last window ends with the final (short or empty) block."""
        sender, actions = self.start_sender(size=8 * 2)
        self.assertEqual(self.blocks(actions), [1, 2, 3])

    def start_receiver(self, windowsize: int = 4) -> tuple[Receiver, io.BytesIO]:
        sink = io.BytesIO()
        receiver = Receiver.serve(
            WriteRequest("f", Mode.OCTET, {"blksize": "8", "windowsize": str(windowsize)}), sink
        )
        receiver.start(0.0)
        return receiver, sink

    def feed(self, receiver: Receiver, *blocks: int, now: float = 0.1) -> list[bytes]:
        sent = []
        for block in blocks:
            for action in receiver.datagram_received(encode(Data(block, bytes([block]) * 8)), now):
                if isinstance(action, Send):
                    sent.append(action.datagram)
        return sent

    def test_receiver_acks_each_window(self) -> None:
        """A receiver acknowledges once per window of blocks."""
        receiver, _ = self.start_receiver()
        self.assertEqual(self.feed(receiver, 1, 2, 3), [])
        self.assertEqual(self.feed(receiver, 4), [encode(Ack(4))])
        self.assertEqual(self.feed(receiver, 5, 6, 7, 8), [encode(Ack(8))])

    def test_receiver_reports_gap_once(self) -> None:
        """A block from further on in the window makes the receiver ACK the
        last in-order block, once; the out-of-order blocks are dropped."""
        receiver, sink = self.start_receiver()
        self.assertEqual(self.feed(receiver, 1, 3, 4), [encode(Ack(1))])
        self.assertEqual(sink.getvalue(), b"\x01" * 8)

    def test_receiver_does_not_repeat_ack_on_gap_after_window_ack(self) -> None:
        """When the first block of a window is lost, the receiver's window
        ACK already says where it is; it does not send the same ACK again
        (the sender would ignore it as a duplicate)."""
        receiver, _ = self.start_receiver()
        self.feed(receiver, 1, 2, 3, 4)
        self.assertEqual(self.feed(receiver, 6, 7), [])

    def test_receiver_reacks_repeated_last_block(self) -> None:
        """A repeat of the last block received is answered with its ACK
        again; older repeats are ignored."""
        receiver, _ = self.start_receiver()
        self.feed(receiver, 1, 2, 3, 4)
        self.assertEqual(self.feed(receiver, 1, 2, 3), [])
        self.assertEqual(self.feed(receiver, 4), [encode(Ack(4))])

    def test_receiver_timeout_acks_last_in_order(self) -> None:
        """On timeout a receiver ACKs the last block it has in order."""
        receiver, _ = self.start_receiver()
        self.feed(receiver, 1, 2)
        self.assertEqual(receiver.timer_fired(1.1), [Send(encode(Ack(2))), SetTimer(2.1)])


class RetryLimitTests(SynchronousTestCase):
    """Retransmission on timeout, up to a limit, then failure."""

    def test_unanswered_request(self) -> None:
        """A client repeats its request once per timeout, retries times, then
        fails with TimedOut, sending no ERROR (no peer is known)."""
        policy = TransferPolicy(timeout=2.0, retries=3)
        receiver = Receiver.get("f", io.BytesIO(), policy=policy)
        rrq = encode(ReadRequest("f"))
        self.assertEqual(receiver.start(0.0), [Send(rrq), SetTimer(2.0)])
        for attempt in (1, 2, 3):
            now = 2.0 * attempt
            self.assertEqual(receiver.timer_fired(now), [Send(rrq), SetTimer(now + 2.0)])
        actions = receiver.timer_fired(8.0)
        self.assertEqual(len(actions), 2)
        self.assertIsInstance(actions[0].error, TimedOut)
        self.assertEqual(actions[0].stats.retransmissions, 3)
        self.assertEqual(actions[1], Close())

    def test_sender_gives_up(self) -> None:
        """A sender repeats unacknowledged DATA retries times, then sends
        ERROR 0 and fails with TimedOut."""
        sender = Sender.serve(ReadRequest("f"), io.BytesIO(b"abc"), policy=TransferPolicy(retries=2))
        data = encode(Data(1, b"abc"))
        self.assertEqual(sender.start(0.0), [Send(data), SetTimer(1.0)])
        self.assertEqual(sender.timer_fired(1.0), [Send(data), SetTimer(2.0)])
        self.assertEqual(sender.timer_fired(2.0), [Send(data), SetTimer(3.0)])
        actions = sender.timer_fired(3.0)
        self.assertEqual(decode(actions[0].datagram).code, ErrorCode.NOT_DEFINED)
        self.assertIsInstance(actions[1].error, TimedOut)
        self.assertEqual(actions[2], Close())
        self.assertIs(sender.state, State.CLOSED)

    def test_receiver_gives_up(self) -> None:
        """A receiver repeats its last ACK retries times, then fails."""
        receiver = Receiver.serve(WriteRequest("f"), io.BytesIO(), policy=TransferPolicy(retries=1))
        ack0 = encode(Ack(0))
        self.assertEqual(receiver.start(0.0), [Send(ack0), SetTimer(1.0)])
        self.assertEqual(receiver.timer_fired(1.0), [Send(ack0), SetTimer(2.0)])
        actions = receiver.timer_fired(2.0)
        self.assertIsInstance(actions[1].error, TimedOut)

    def test_progress_resets_the_count(self) -> None:
        """Each acknowledged block starts the retry count afresh."""
        sender = Sender.serve(ReadRequest("f"), io.BytesIO(b"x" * 2000), policy=TransferPolicy(retries=1))
        sender.start(0.0)
        sender.timer_fired(1.0)
        sender.datagram_received(encode(Ack(1)), 1.5)
        self.assertEqual(len(sender.timer_fired(2.5)), 2)  # a retransmission, not a failure
        self.assertIsInstance(sender.timer_fired(3.5)[1], Failed)

    def test_blackholed_transfer(self) -> None:
        """When the network dies mid-transfer both sides give up: each sends
        1 + retries copies of its last packet, then fails with TimedOut."""
        data = payload(5000)

        def blackhole(direction: str, index: int, datagram: bytes) -> list[float]:
            return [LATENCY] if index < 3 else []

        network, _ = get(data, fault=blackhole)
        self.assertIsInstance(network.client.error, TimedOut)
        self.assertIsInstance(network.server.error, TimedOut)
        self.assertTrue(network.client.closed and network.server.closed)
        # The RRQ, ACK 1 and ACK 2 got through, so the server sent DATA 1-3,
        # then DATA 3 five more times.
        self.assertEqual(network.server.count(Opcode.DATA), 3 + 5)
        self.assertEqual(network.server.failed[0].stats.blocks, 2)
        self.assertEqual(network.client.count(Opcode.ACK), 3 + 5)


class PeerErrorTests(SynchronousTestCase):
    """An ERROR from the peer ends the transfer without a reply."""

    def assertRemoteFailure(self, actions: list[Action], code: int) -> None:
        self.assertEqual(len(actions), 2)
        self.assertIsInstance(actions[0], Failed)
        self.assertIsInstance(actions[0].error, RemoteError)
        self.assertEqual(actions[0].error.code, code)
        self.assertEqual(actions[1], Close())

    def test_error_from_receiver_mid_transfer(self) -> None:
        """A server sender fails on the client's ERROR mid-transfer."""
        sender = Sender.serve(ReadRequest("f"), io.BytesIO(b"x" * 5000))
        sender.start(0.0)
        sender.datagram_received(encode(Ack(1)), 0.1)
        actions = sender.datagram_received(encode(Error(ErrorCode.DISK_FULL, "full")), 0.2)
        self.assertRemoteFailure(actions, ErrorCode.DISK_FULL)
        self.assertEqual(actions[0].error.message, "full")
        self.assertEqual(actions[0].stats.blocks, 1)
        self.assertEqual(sender.datagram_received(encode(Ack(2)), 0.3), [])

    def test_error_from_sender_mid_transfer(self) -> None:
        """A server receiver fails on the client's ERROR mid-transfer."""
        receiver = Receiver.serve(WriteRequest("f"), io.BytesIO())
        receiver.start(0.0)
        receiver.datagram_received(encode(Data(1, b"x" * 512)), 0.1)
        actions = receiver.datagram_received(encode(Error(0, "user cancelled")), 0.2)
        self.assertRemoteFailure(actions, 0)

    def test_error_in_simulated_transfer(self) -> None:
        """In a paired GET, an ERROR reaching the server mid-transfer stops
        it at once: it sends no more DATA and fails with the peer's code,
        while the client, never told, times out."""
        network, _ = get(
            payload(512 * 10),
            inject=((0.0045, "server", encode(Error(ErrorCode.DISK_FULL, "full"))),),
        )
        self.assertIsInstance(network.server.error, RemoteError)
        self.assertEqual(network.server.error.code, ErrorCode.DISK_FULL)
        self.assertEqual(network.server.count(Opcode.DATA), 2)
        self.assertEqual(network.server.count(Opcode.ERROR), 0)
        self.assertIsInstance(network.client.error, TimedOut)

    def test_error_before_established(self) -> None:
        """A GET answered with ERROR 1 fails with that code, sends nothing
        and stays unestablished."""
        receiver = Receiver.get("nope", io.BytesIO())
        receiver.start(0.0)
        actions = receiver.datagram_received(encode(Error(ErrorCode.FILE_NOT_FOUND, "nope")), 0.1)
        self.assertRemoteFailure(actions, ErrorCode.FILE_NOT_FOUND)
        self.assertFalse(receiver.established)

    def test_error_while_dallying_closes(self) -> None:
        """An ERROR after the final ACK closes the receiver quietly: the file
        is complete and Done was already reported."""
        receiver = Receiver.serve(WriteRequest("f"), io.BytesIO())
        receiver.start(0.0)
        actions = receiver.datagram_received(encode(Data(1, b"end")), 0.1)
        self.assertIsInstance(actions[0], Done)
        self.assertEqual(receiver.datagram_received(encode(Error(0, "bye")), 0.2), [Close()])


class ProtocolErrorTests(SynchronousTestCase):
    """Anything not in a state's transition table is answered with ERROR 4."""

    def assertIllegal(self, machine: Transfer, datagram: bytes) -> None:
        actions = machine.datagram_received(datagram, 0.5)
        self.assertEqual(len(actions), 3, actions)
        self.assertEqual(decode(actions[0].datagram).code, ErrorCode.ILLEGAL_OPERATION)
        self.assertIsInstance(actions[1].error, PeerProtocolError)
        self.assertEqual(actions[2], Close())
        self.assertIs(machine.state, State.CLOSED)

    def sending(self) -> Sender:
        sender = Sender.serve(ReadRequest("f"), io.BytesIO(b"x" * 5000))
        sender.start(0.0)
        return sender

    def receiving(self) -> Receiver:
        receiver = Receiver.serve(WriteRequest("f"), io.BytesIO())
        receiver.start(0.0)
        return receiver

    def test_data_to_sender(self) -> None:
        """DATA sent to a sender is illegal."""
        self.assertIllegal(self.sending(), encode(Data(1, b"x")))

    def test_ack_to_receiver(self) -> None:
        """An ACK sent to a receiver is illegal."""
        self.assertIllegal(self.receiving(), encode(Ack(0)))

    def test_request_on_transfer_port(self) -> None:
        """A request arriving on a transfer's port is illegal."""
        self.assertIllegal(self.sending(), encode(ReadRequest("g")))
        self.assertIllegal(self.receiving(), encode(WriteRequest("g")))

    def test_oack_to_server(self) -> None:
        """An OACK sent to a server is illegal."""
        self.assertIllegal(self.sending(), encode(OptionAck({"blksize": "8"})))
        self.assertIllegal(self.receiving(), encode(OptionAck({"blksize": "8"})))

    def test_malformed_datagram(self) -> None:
        """A malformed datagram from the peer is illegal."""
        self.assertIllegal(self.sending(), b"\x00\x04\x00")
        self.assertIllegal(self.receiving(), b"\x00\x09")

    def test_oversized_block(self) -> None:
        """A DATA block longer than the agreed block size is illegal."""
        self.assertIllegal(self.receiving(), encode(Data(1, b"x" * 513)))

    def test_nonzero_ack_while_negotiating(self) -> None:
        """Only ACK 0 may answer a server's OACK."""
        sender = Sender.serve(ReadRequest("f", Mode.OCTET, {"blksize": "8"}), io.BytesIO(b""))
        sender.start(0.0)
        self.assertIllegal(sender, encode(Ack(1)))

    def test_strays_ignored_before_established(self) -> None:
        """Before the first valid answer, a client ignores garbage and
        packets that cannot be the answer, and stays unestablished."""
        for client in (Receiver.get("f", io.BytesIO()), Sender.put("f", io.BytesIO())):
            client.start(0.0)
            for stray in (b"junk", encode(Data(5, b"x")), encode(Ack(3)), encode(ReadRequest("x"))):
                self.assertEqual(client.datagram_received(stray, 0.1), [])
            self.assertFalse(client.established)
            self.assertIs(client.state, State.REQUESTING)

    def test_strays_ignored_while_dallying(self) -> None:
        """A finished receiver ignores anything but its final block."""
        receiver = Receiver.serve(WriteRequest("f"), io.BytesIO())
        receiver.start(0.0)
        receiver.datagram_received(encode(Data(1, b"end")), 0.1)
        for stray in (b"junk", encode(Ack(1)), encode(Data(7, b"x"))):
            self.assertEqual(receiver.datagram_received(stray, 0.2), [])
        self.assertEqual(
            receiver.datagram_received(encode(Data(1, b"end")), 0.3),
            [Send(encode(Ack(1))), SetTimer(5.3)],
        )
        self.assertEqual(receiver.timer_fired(5.3), [Close()])

    def test_stale_data_ignored(self) -> None:
        """A receiver ignores DATA older than its last block, and DATA 0
        before any rollover."""
        receiver = self.receiving()
        receiver.datagram_received(encode(Data(1, b"x" * 512)), 0.1)
        receiver.datagram_received(encode(Data(2, b"x" * 512)), 0.2)
        self.assertEqual(receiver.datagram_received(encode(Data(1, b"x" * 512)), 0.3), [])
        fresh = self.receiving()
        self.assertEqual(fresh.datagram_received(encode(Data(0, b"x" * 512)), 0.3), [])


class LocalIOTests(SynchronousTestCase):
    """A failing source or sink fails the transfer with a fitting ERROR."""

    class BrokenFile:
        """A source and sink whose every call fails with one errno."""

        def __init__(self, err: int) -> None:
            self.err = err

        def read(self, size: int) -> bytes:
            raise OSError(self.err, "secret /srv/path " + str(self.err))

        def write(self, data: bytes) -> None:
            raise OSError(self.err, "No space")

    def test_sink_full(self) -> None:
        """A sink raising ENOSPC sends ERROR 3; the OSError is the cause."""
        receiver = Receiver.serve(WriteRequest("f"), self.BrokenFile(errno.ENOSPC))
        receiver.start(0.0)
        actions = receiver.datagram_received(encode(Data(1, b"x")), 0.1)
        self.assertEqual(decode(actions[0].datagram).code, ErrorCode.DISK_FULL)
        self.assertIsInstance(actions[1].error, LocalIOError)
        self.assertIsInstance(actions[1].error.__cause__, OSError)

    def test_source_errors(self) -> None:
        """A source raising EACCES sends ERROR 2, EIO ERROR 0; the message
        is the error's strerror."""
        for err, code in ((errno.EACCES, ErrorCode.ACCESS_VIOLATION), (errno.EIO, ErrorCode.NOT_DEFINED)):
            sender = Sender.serve(ReadRequest("f"), self.BrokenFile(err))
            actions = sender.start(0.0)
            error = decode(actions[0].datagram)
            self.assertEqual(error.code, code)
            self.assertIsInstance(actions[1].error, LocalIOError)
            self.assertEqual(actions[2], Close())

    def test_source_returning_too_much_is_a_bug(self) -> None:
        """A source returning more than asked is our bug: it raises."""

        class Greedy:
            """A source that ignores the size it is given."""

            def read(self, size: int) -> bytes:
                return b"x" * (size + 1)

        self.assertRaises(ValueError, Sender.serve(ReadRequest("f"), Greedy()).start, 0.0)


class NetasciiTransferTests(TransferTestCase):
    """Netascii mode translates line ends on the wire and back."""

    TEXT = b"one\ntwo\r\nthree\rfour\n\n\r\r\n" * 30 + b"ends with CR\r"

    def test_round_trip(self) -> None:
        """A text with LF, CR LF and lone CR, cut into 8-octet blocks (so
        pairs straddle blocks), arrives unchanged both ways, lock-step and
        windowed."""
        for transfer, windowsize in itertools.product((get, put), (None, 5)):
            network, received = transfer(
                self.TEXT, mode=Mode.NETASCII, options=RequestedOptions(blksize=8, windowsize=windowsize)
            )
            self.assertTransferred(network, received, self.TEXT)

    def test_wire_form(self) -> None:
        """On the wire, LF is CR LF and CR is CR NUL; file_bytes counts the
        local bytes."""
        network, received = get(b"a\nb\rc", mode=Mode.NETASCII)
        self.assertEqual(data_blocks(network.server)[0].payload, b"a\r\nb\r\0c")
        self.assertEqual(network.server.done[0].stats.file_bytes, 5)
        self.assertEqual(network.client.done[0].stats.file_bytes, 5)

    def test_expansion_fills_blocks(self) -> None:
        """A file of newlines doubles on the wire; blocks stay full until
        the last."""
        text = b"\n" * 600
        network, received = get(text, mode=Mode.NETASCII)
        self.assertEqual(received, text)
        sizes = [len(b.payload) for b in data_blocks(network.server)]
        self.assertEqual(sizes, [512, 512, 176])


class DriverContractTests(SynchronousTestCase):
    """The promises the protocol layer relies on."""

    def test_timer_fired_early_is_ignored(self) -> None:
        """A timer that fires before the deadline does nothing."""
        sender = Sender.serve(ReadRequest("f"), io.BytesIO(b"abc"))
        sender.start(0.0)
        self.assertEqual(sender.timer_fired(0.999), [])
        self.assertEqual(sender.deadline, 1.0)

    def test_misuse_raises(self) -> None:
        """Feeding a machine before start, or starting it twice, is a bug."""
        sender = Sender.serve(ReadRequest("f"), io.BytesIO(b"abc"))
        self.assertRaises(RuntimeError, sender.datagram_received, encode(Ack(1)), 0.0)
        sender.start(0.0)
        self.assertRaises(RuntimeError, sender.start, 0.0)

    def test_closed_machine_ignores_everything(self) -> None:
        """After Close, datagrams and timers produce no actions."""
        sender = Sender.serve(ReadRequest("f"), io.BytesIO(b"abc"))
        sender.start(0.0)
        self.assertEqual(sender.datagram_received(encode(Ack(1)), 0.1)[-1], Close())
        self.assertEqual(sender.datagram_received(encode(Ack(1)), 0.2), [])
        self.assertEqual(sender.timer_fired(100.0), [])
        self.assertIsNone(sender.deadline)

    def test_done_before_final_ack(self) -> None:
        """A receiver reports Done before sending the final ACK, so the owner
        can commit the file first, then dallies."""
        receiver = Receiver.serve(WriteRequest("f"), io.BytesIO())
        receiver.start(0.0)
        actions = receiver.datagram_received(encode(Data(1, b"end")), 0.25)
        self.assertIsInstance(actions[0], Done)
        self.assertEqual(actions[1:], [Send(encode(Ack(1))), SetTimer(5.25)])
        self.assertIs(receiver.state, State.DALLYING)
        self.assertEqual(actions[0].stats.duration, 0.25)

    def test_dally_at_least_two_intervals(self) -> None:
        """The dally lasts at least two retransmission intervals, so a peer
        with a long agreed timeout is still answered."""
        receiver = Receiver.serve(WriteRequest("f", Mode.OCTET, {"timeout": "10"}), io.BytesIO())
        receiver.start(0.0)
        actions = receiver.datagram_received(encode(Data(1, b"end")), 1.0)
        self.assertEqual(actions[-1], SetTimer(21.0))

    def test_zero_dally_closes_at_once(self) -> None:
        """With dally 0 the receiver closes right after the final ACK."""
        receiver = Receiver.serve(WriteRequest("f"), io.BytesIO(), policy=TransferPolicy(dally=0))
        receiver.start(0.0)
        actions = receiver.datagram_received(encode(Data(1, b"end")), 1.0)
        self.assertEqual(actions[1:], [Send(encode(Ack(1))), Close()])

    def test_established_before_error_8(self) -> None:
        """The call that refuses an OACK makes the machine established first,
        so the layer can lock the TID before sending the ERROR 8."""
        receiver = Receiver.get("f", io.BytesIO(), options=RequestedOptions(blksize=8))
        receiver.start(0.0)
        self.assertFalse(receiver.established)
        receiver.datagram_received(encode(OptionAck({"tsize": "1"})), 0.1)
        self.assertTrue(receiver.established)

    def test_servers_are_established(self) -> None:
        """A server machine knows its peer from the start."""
        self.assertTrue(Sender.serve(ReadRequest("f"), io.BytesIO()).established)
        self.assertTrue(Receiver.serve(WriteRequest("f"), io.BytesIO()).established)

    def test_progress(self) -> None:
        """transferred and expected_size report progress."""
        receiver = Receiver.get("f", io.BytesIO(), options=RequestedOptions(tsize=True))
        receiver.start(0.0)
        receiver.datagram_received(encode(OptionAck({"tsize": "1000"})), 0.1)
        receiver.datagram_received(encode(Data(1, b"x" * 512)), 0.2)
        self.assertEqual((receiver.transferred, receiver.expected_size), (512, 1000))

    def test_unknown_tid_datagram(self) -> None:
        """The ERROR 5 for strangers is ready-made."""
        self.assertEqual(decode(UNKNOWN_TID_DATAGRAM), Error(ErrorCode.UNKNOWN_TID, "unknown transfer ID"))

    def test_error_datagram_is_always_encodable(self) -> None:
        """error_datagram cuts long messages and drops unencodable ones."""
        self.assertEqual(len(decode(error_datagram(1, "x" * 1000)).message), 200)
        self.assertEqual(decode(error_datagram(1, "a\0b")), Error(1, ""))

    def test_stats(self) -> None:
        """Done carries what happened: options, bytes, blocks, times."""
        network, _ = get(payload(1000), options=RequestedOptions(blksize=100, tsize=True))
        stats = network.server.done[0].stats
        self.assertEqual(stats.options, NegotiatedOptions(blksize=100, tsize=1000))
        self.assertEqual((stats.file_bytes, stats.blocks, stats.retransmissions), (1000, 11, 0))
        self.assertEqual(stats.started, 0.001)  # built when the RRQ arrived

    def test_window_buffer_bounded(self) -> None:
        """During a windowed transfer the sender never holds more than one
        window of blocks (checked after every datagram)."""
        network, _ = get(payload(20_000), options=RequestedOptions(blksize=64, windowsize=16),
                         fault=drop_every(5, SERVER_TO_CLIENT))
        self.assertEqual(network.max_window_seen, 16)


_ANY_PACKET = st.one_of(
    st.builds(Data, st.integers(0, 5).map(lambda n: (n - 2) & 0xFFFF), st.binary(max_size=520)),
    st.builds(Ack, st.integers(0, 5).map(lambda n: (n - 2) & 0xFFFF)),
    st.builds(Error, st.integers(0, 9), st.text(alphabet="abc", max_size=5)),
    st.builds(
        OptionAck,
        st.dictionaries(
            st.sampled_from(["blksize", "tsize", "timeout", "windowsize", "x"]),
            st.sampled_from(["0", "1", "8", "512", "9999999", "y"]),
            min_size=1,
        ),
    ),
    st.builds(ReadRequest, st.just("f")),
).map(encode)

_MACHINES: list[Callable[[], Transfer]] = [
    lambda: Sender.serve(ReadRequest("f"), io.BytesIO(b"x" * 2000)),
    lambda: Sender.serve(ReadRequest("f", Mode.OCTET, {"windowsize": "4"}), io.BytesIO(b"x" * 3000), size=3000),
    lambda: Receiver.serve(WriteRequest("f", Mode.NETASCII), io.BytesIO()),
    lambda: Receiver.serve(WriteRequest("f", Mode.OCTET, {"blksize": "8", "windowsize": "3"}), io.BytesIO()),
    lambda: Receiver.get("f", io.BytesIO(), options=RequestedOptions(blksize=512, windowsize=4, tsize=True)),
    lambda: Sender.put("f", io.BytesIO(b"x" * 2000), size=2000, options=RequestedOptions(timeout=1, tsize=True)),
]


class RobustnessTests(SynchronousTestCase):
    """Nothing the peer sends makes a machine raise or break its contract."""

    @settings(deadline=None, max_examples=300)
    @given(
        st.sampled_from(range(len(_MACHINES))),
        st.lists(
            st.one_of(_ANY_PACKET, st.binary(max_size=30), st.just("timer")), max_size=30
        ),
    )
    def test_random_input(self, which: int, inputs: list[bytes | str]) -> None:
        """Any sequence of datagrams (valid, stale, illegal or garbage) and
        timer expiries gives only actions: Close at most once and last,
        nothing after it, and Done or Failed at most once between them."""
        machine = _MACHINES[which]()
        actions = list(machine.start(0.0))
        now = 0.0
        for item in inputs:
            now += 0.5
            if item == "timer":
                actions += machine.timer_fired(machine.deadline or now)
            else:
                assert isinstance(item, bytes)
                actions += machine.datagram_received(item, now)
        closes = [i for i, a in enumerate(actions) if isinstance(a, Close)]
        self.assertLessEqual(len(closes), 1)
        if closes:
            self.assertEqual(closes[0], len(actions) - 1)
            self.assertIs(machine.state, State.CLOSED)
        outcomes = [a for a in actions if isinstance(a, (Done, Failed))]
        self.assertLessEqual(len(outcomes), 1)
        for action in actions:
            if isinstance(action, Send):
                decode(action.datagram)  # everything we send is well-formed


class ValidationTests(SynchronousTestCase):
    """Bad local configuration is refused up front with ValueError."""

    def test_requested_options(self) -> None:
        """Requested options outside their RFC ranges are refused."""
        for kwargs in ({"blksize": 7}, {"blksize": 65465}, {"windowsize": 0}, {"windowsize": 65536},
                       {"timeout": 0}, {"timeout": 256}):
            self.assertRaises(ValueError, RequestedOptions, **kwargs)

    def test_policy(self) -> None:
        """Policies with impossible values are refused."""
        for kwargs in ({"timeout": 0}, {"retries": -1}, {"dally": -1}, {"max_blksize": 7},
                       {"max_windowsize": 0}, {"max_window_bytes": 1}, {"max_size": -1}):
            self.assertRaises(ValueError, TransferPolicy, **kwargs)

    def test_put_tsize_needs_octet_size(self) -> None:
        """A PUT may announce tsize only with a known size in octet mode."""
        options = RequestedOptions(tsize=True)
        self.assertRaises(ValueError, Sender.put, "f", io.BytesIO(), options=options)
        self.assertRaises(ValueError, Sender.put, "f", io.BytesIO(), size=1, mode=Mode.NETASCII, options=options)

    def test_client_window_bounded(self) -> None:
        """A PUT may not ask for a window over max_window_bytes."""
        self.assertRaises(
            ValueError, Sender.put, "f", io.BytesIO(),
            options=RequestedOptions(blksize=65464, windowsize=100),
        )

    def test_client_mail_mode(self) -> None:
        """Clients do not speak mail mode."""
        self.assertRaises(ValueError, Receiver.get, "f", io.BytesIO(), mode=Mode.MAIL)
        self.assertRaises(ValueError, Sender.put, "f", io.BytesIO(), mode=Mode.MAIL)
