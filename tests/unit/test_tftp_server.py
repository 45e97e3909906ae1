"""
Tests for L{appnet.tftp.server}: the TFTP server's Twisted layer, with a fake
UDP reactor and a fake clock (no sockets, no real time); and the same for
the client's protocol (L{appnet.tftp.client}) at the end.

L{FakeUDPReactor} hands out L{FakeUDPPort}s that record every datagram
written; a test plays the client by calling C{datagramReceived} on the
well-known port's protocol and on each transfer's protocol.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from appnet.filesystem import FileStore
from appnet.stats import ServiceStats
from appnet.tftp import wire
from appnet.tftp.machine import UNKNOWN_TID_DATAGRAM, TransferPolicy
from appnet.tftp.server import SERVER_WINDOW_BYTES, TFTPServerFactory, error_for_store_error
from appnet.tftp.wire import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    ReadRequest,
    WriteRequest,
    decode,
    encode,
)

CLIENT = ("10.0.0.7", 40000)
OTHER = ("10.0.0.7", 40001)


class FakeUDPPort:
    """A listening UDP port that records what its protocol writes."""

    def __init__(self, reactor: FakeUDPReactor, number: int, protocol: Any, interface: str,
                 maxPacketSize: int) -> None:
        self.reactor = reactor
        self.number = number
        self.protocol = protocol
        self.interface = interface
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.listening = True
        self.maxPacketSize = maxPacketSize
        protocol.makeConnection(self)

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.written.append((datagram, addr))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.number)

    def stopListening(self) -> None:
        self.listening = False
        self.protocol.doStop()

    def packets(self) -> list[tuple[wire.Packet, tuple[str, int]]]:
        """Everything written, decoded."""
        return [(decode(d), a) for d, a in self.written]

    def take(self) -> list[wire.Packet]:
        """Decode and forget what was written so far."""
        out = [decode(d) for d, _ in self.written]
        self.written.clear()
        return out


class FakeUDPReactor(Clock):
    """A clock with C{listenUDP}: ports are numbered from 50000."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakeUDPPort] = []
        self.fail_listen = False

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> FakeUDPPort:
        if self.fail_listen:
            from twisted.internet.error import CannotListenError

            raise CannotListenError(interface, port, OSError("no ports"))
        fake = FakeUDPPort(self, port or 50000 + len(self.ports), protocol, interface, maxPacketSize)
        self.ports.append(fake)
        return fake


class ServerTestsMixin:
    """A server over a temporary store with a few public files."""

    writable = False
    policy = TransferPolicy(timeout=1.0, retries=2, dally=3.0)
    per_client = 10

    def setUp(self) -> None:
        base = os.path.realpath(self.mktemp())  # type: ignore[attr-defined]
        self.store = FileStore(base, incoming=True)
        self.public = os.path.join(base, "public")
        self.contents = {
            "empty": b"",
            "one-block": bytes(range(256)) * 2,
            "three-blocks": os.urandom(512 * 2 + 100),
            "boot/pxelinux.0": os.urandom(3000),
        }
        for name, data in self.contents.items():
            path = os.path.join(self.public, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        self.reactor = FakeUDPReactor()
        self.lines: list[str] = []
        self.stats = ServiceStats("tftp")
        self.factory = TFTPServerFactory(
            self.store.view_for(None),
            writable=self.writable,
            policy=self.policy,
            max_transfers_per_client=self.per_client,
            stats=self.stats,
            trace=True,
            trace_emit=self.lines.append,
            reactor=self.reactor,
        )
        self.listener = self.reactor.listenUDP(69, self.factory.buildProtocol(), "127.0.0.1")

    def request(self, packet: wire.Packet | bytes, client: tuple[str, int] = CLIENT) -> FakeUDPPort | None:
        """Send a request to port 69; return the new transfer port, if any."""
        before = len(self.reactor.ports)
        datagram = packet if isinstance(packet, bytes) else encode(packet)
        self.listener.protocol.datagramReceived(datagram, client)
        if len(self.reactor.ports) > before:
            return self.reactor.ports[-1]
        return None

    def refusal(self) -> Error:
        """The one ERROR the well-known port sent."""
        packets = self.listener.take()
        self.assertEqual(len(packets), 1, packets)  # type: ignore[attr-defined]
        self.assertIsInstance(packets[0], Error)  # type: ignore[attr-defined]
        return packets[0]  # type: ignore[return-value]

    def download(self, port: FakeUDPPort, client: tuple[str, int] = CLIENT) -> bytes:
        """Play a lock-step client on C{port} from DATA 1 to the end."""
        received = b""
        while True:
            packets = port.take()
            self.assertEqual(len(packets), 1, packets)  # type: ignore[attr-defined]
            data = packets[0]
            self.assertIsInstance(data, Data)  # type: ignore[attr-defined]
            received += data.payload
            port.protocol.datagramReceived(encode(Ack(data.block)), client)
            if len(data.payload) < 512:
                return received


class ReadTests(ServerTestsMixin, SynchronousTestCase):
    """RRQ: files are served from the store, each transfer on its own port."""

    def test_read_files_of_every_size(self) -> None:
        """
        Files of 0, 512 and 1124 octets arrive whole in lock-step from a new
        port (not the well-known one), which is released after the last ACK.
        """
        for name in ("empty", "one-block", "three-blocks"):
            port = self.request(ReadRequest(name, "octet"))
            assert port is not None
            self.assertNotEqual(port.number, 69)
            self.assertEqual(self.download(port), self.contents[name])
            self.assertFalse(port.listening)
            self.assertEqual(port.written, [])
        self.assertEqual(self.listener.written, [])
        self.assertEqual(self.stats["transfers"], 3)
        self.assertEqual(self.stats["transfers_active"], 0)
        self.assertEqual(self.stats["bytes_out"], 0 + 512 + 1124)
        self.assertEqual(self.factory.transfers, {})

    def test_subdirectory_and_leading_slash(self) -> None:
        """C{/boot/pxelinux.0} and C{boot/pxelinux.0} name the same file."""
        for name in ("/boot/pxelinux.0", "boot/pxelinux.0"):
            port = self.request(ReadRequest(name, "octet"))
            assert port is not None
            self.assertEqual(self.download(port), self.contents["boot/pxelinux.0"])

    def test_options_negotiated(self) -> None:
        """
        blksize, tsize and windowsize are granted in an OACK (tsize is the
        file's size); after ACK 0 the window of DATA blocks follows.
        """
        request = ReadRequest(
            "boot/pxelinux.0", "octet", {"blksize": "1000", "tsize": "0", "windowsize": "2"}
        )
        port = self.request(request)
        assert port is not None
        [oack] = port.take()
        self.assertEqual(
            oack, OptionAck({"blksize": "1000", "tsize": "3000", "windowsize": "2"})
        )
        port.protocol.datagramReceived(encode(Ack(0)), CLIENT)
        blocks = port.take()
        self.assertEqual([b.block for b in blocks], [1, 2])
        self.assertEqual([len(b.payload) for b in blocks], [1000, 1000])
        port.protocol.datagramReceived(encode(Ack(2)), CLIENT)
        last, final = port.take()
        self.assertEqual((last.block, len(last.payload)), (3, 1000))
        self.assertEqual((final.block, final.payload), (4, b""))
        port.protocol.datagramReceived(encode(Ack(4)), CLIENT)
        self.assertFalse(port.listening)
        self.assertEqual(len(self.lines), 1)
        self.assertIn("RRQ /boot/pxelinux.0 octet blksize=1000 windowsize=2 tsize=3000", self.lines[0])
        self.assertIn("3000 bytes", self.lines[0])
        self.assertTrue(self.lines[0].endswith(": ok"), self.lines[0])

    def test_window_bounded_to_64_kib(self) -> None:
        """
        A window (blksize x windowsize) is bounded to 64 KiB: 16 blocks of
        1468 are granted, but at blksize 65464 the answer is windowsize 1
        (two such datagrams overflow a client's default receive buffer).
        """
        self.factory.policy = dataclasses.replace(self.policy, max_window_bytes=SERVER_WINDOW_BYTES)
        for blksize, granted in (("1468", "16"), ("65464", "1")):
            request = ReadRequest("boot/pxelinux.0", "octet", {"blksize": blksize, "windowsize": "16"})
            port = self.request(request)
            assert port is not None
            [oack] = port.take()
            self.assertEqual(oack, OptionAck({"blksize": blksize, "windowsize": granted}))

    def test_missing_file(self) -> None:
        """A missing file gets ERROR 1 from the well-known port, no transfer port."""
        self.assertIsNone(self.request(ReadRequest("nope", "octet")))
        self.assertEqual(self.refusal().code, ErrorCode.FILE_NOT_FOUND)
        self.assertEqual(self.stats["requests_refused"], 1)
        self.assertIn("refused: ERROR 1", self.lines[0])

    def test_transcript_escapes_names(self) -> None:
        """A file name with a newline cannot forge a second transcript line."""
        self.request(ReadRequest("a\nRRQ /x octet: ok", "octet"))
        self.refusal()
        self.assertEqual(len(self.lines), 1)
        self.assertNotIn("\n", self.lines[0])
        self.assertIn("a\\nRRQ", self.lines[0])

    def test_directory(self) -> None:
        """Asking for a directory is answered like a missing file."""
        self.assertIsNone(self.request(ReadRequest("boot", "octet")))
        self.assertEqual(self.refusal().code, ErrorCode.FILE_NOT_FOUND)

    def test_escape_refused(self) -> None:
        """Paths that leave the root get ERROR 2, never a file from outside."""
        for name in ("../etc/passwd", "boot/../../home", "a\\b"):
            self.assertIsNone(self.request(ReadRequest(name, "octet")))
            error = self.refusal()
            self.assertEqual(error.code, ErrorCode.ACCESS_VIOLATION, name)
            self.assertNotIn(self.public, error.message)

    def test_root_is_a_jail(self) -> None:
        """
        With C{root = "/boot"}, names are relative to it and C{..} cannot
        reach the rest of C{public/} (ERROR 2).
        """
        self.factory.root = "/boot"
        port = self.request(ReadRequest("pxelinux.0", "octet"))
        assert port is not None
        self.assertEqual(self.download(port), self.contents["boot/pxelinux.0"])
        for name in ("../one-block", "/../one-block", "x/../../one-block"):
            self.assertIsNone(self.request(ReadRequest(name, "octet")))
            self.assertEqual(self.refusal().code, ErrorCode.ACCESS_VIOLATION, name)

    def test_drop_box_not_readable(self) -> None:
        """The upload drop box cannot be read back over TFTP (ERROR 2)."""
        self.assertIsNone(self.request(ReadRequest("incoming/x", "octet")))
        self.assertEqual(self.refusal().code, ErrorCode.ACCESS_VIOLATION)

    def test_mail_mode_refused(self) -> None:
        """Mail mode is obsolete: ERROR 4."""
        self.assertIsNone(self.request(ReadRequest("one-block", "mail")))
        self.assertEqual(self.refusal().code, ErrorCode.ILLEGAL_OPERATION)

    def test_wrong_tid(self) -> None:
        """
        A datagram to a transfer port from another port is answered with
        ERROR 5 to its sender and does not disturb the transfer.
        """
        port = self.request(ReadRequest("three-blocks", "octet"))
        assert port is not None
        first = port.take()
        port.protocol.datagramReceived(encode(Ack(1)), OTHER)
        self.assertEqual(port.written, [(UNKNOWN_TID_DATAGRAM, OTHER)])
        port.written.clear()
        # An ERROR from a stranger is not answered at all.
        port.protocol.datagramReceived(encode(Error(0, "x")), OTHER)
        self.assertEqual(port.written, [])
        port.protocol.datagramReceived(encode(Ack(1)), CLIENT)
        rest = self.download(port)
        self.assertEqual(first[0].payload + rest, self.contents["three-blocks"])
        self.assertEqual(self.stats["unknown_tid"], 2)

    def test_repeated_request_dropped(self) -> None:
        """
        The same RRQ again from the same client port while its transfer is
        alive is the client's retransmission: no second transfer.
        """
        request = ReadRequest("three-blocks", "octet")
        port = self.request(request)
        self.assertIsNone(self.request(request))
        self.assertEqual(self.listener.written, [])
        self.assertEqual(len(self.factory.transfers), 1)
        assert port is not None
        self.assertEqual(self.download(port), self.contents["three-blocks"])
        # Once it is over, the same request starts a new transfer.
        self.assertIsNotNone(self.request(request))

    def test_new_request_from_same_port_supersedes(self) -> None:
        """
        A different request from a client port with a live transfer starts
        a new transfer; the old one is abandoned with an ERROR.
        """
        old = self.request(ReadRequest("three-blocks", "octet"))
        new = self.request(ReadRequest("one-block", "octet"))
        assert old is not None and new is not None
        self.assertFalse(old.listening)
        self.assertIsInstance(old.take()[-1], Error)
        self.assertEqual(self.download(new), self.contents["one-block"])

    def test_per_client_limit(self) -> None:
        """
        Over C{max_transfers_per_client} live transfers from one address,
        requests get ERROR 0; another address is still served, and a freed
        slot is usable again.
        """
        self.factory.max_transfers_per_client = 2
        first = self.request(ReadRequest("one-block", "octet"), ("10.0.0.7", 1))
        self.request(ReadRequest("one-block", "octet"), ("10.0.0.7", 2))
        self.assertIsNone(self.request(ReadRequest("one-block", "octet"), ("10.0.0.7", 3)))
        error = self.refusal()
        self.assertEqual(error.code, ErrorCode.NOT_DEFINED)
        self.assertIn("too many", error.message)
        self.assertIsNotNone(self.request(ReadRequest("one-block", "octet"), ("10.0.0.8", 1)))
        assert first is not None
        self.download(first, ("10.0.0.7", 1))
        self.assertIsNotNone(self.request(ReadRequest("one-block", "octet"), ("10.0.0.7", 3)))

    def test_total_limit(self) -> None:
        """Over C{max_transfers} live transfers in all, requests get ERROR 0."""
        self.factory.max_transfers = 1
        self.request(ReadRequest("one-block", "octet"), ("10.0.0.1", 1))
        self.assertIsNone(self.request(ReadRequest("one-block", "octet"), ("10.0.0.2", 1)))
        self.assertIn("busy", self.refusal().message)

    def test_retransmission_and_timeout(self) -> None:
        """
        Without ACKs the block is sent again every C{timeout} seconds; after
        C{retries} the transfer fails, its port is released and it counts
        as failed.
        """
        port = self.request(ReadRequest("three-blocks", "octet"))
        assert port is not None
        self.assertEqual(len(port.take()), 1)
        self.reactor.advance(1.0)
        self.assertEqual([p.block for p in port.take()], [1])
        self.reactor.advance(1.0)
        self.assertEqual([p.block for p in port.take()], [1])
        self.reactor.advance(1.0)
        self.assertFalse(port.listening)
        self.assertEqual(self.stats["transfers_failed"], 1)
        self.assertIn("failed", self.lines[-1])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_duplicate_ack_ignored(self) -> None:
        """A repeated ACK sends nothing (no Sorcerer's Apprentice)."""
        port = self.request(ReadRequest("three-blocks", "octet"))
        assert port is not None
        port.take()
        port.protocol.datagramReceived(encode(Ack(1)), CLIENT)
        self.assertEqual([p.block for p in port.take()], [2])
        port.protocol.datagramReceived(encode(Ack(1)), CLIENT)
        self.assertEqual(port.take(), [])

    def test_malformed_and_stray_datagrams(self) -> None:
        """
        On the well-known port a malformed datagram or a DATA/ACK gets
        ERROR 4; an ERROR, or anything from port 0, gets no answer.
        """
        for datagram in (b"", b"\x00", b"\x00\x01name-without-nul", b"\x00\x09zz",
                         encode(Ack(1)), encode(Data(1, b"x"))):
            self.listener.protocol.datagramReceived(datagram, CLIENT)
            self.assertEqual(self.refusal().code, ErrorCode.ILLEGAL_OPERATION, datagram)
        self.listener.protocol.datagramReceived(encode(Error(1, "x")), CLIENT)
        self.listener.protocol.datagramReceived(encode(ReadRequest("one-block")), ("10.0.0.7", 0))
        self.assertEqual(self.listener.written, [])

    def test_malformed_on_transfer_port(self) -> None:
        """Garbage from the client mid-transfer ends it with ERROR 4."""
        port = self.request(ReadRequest("three-blocks", "octet"))
        assert port is not None
        port.take()
        port.protocol.datagramReceived(b"\x00\x04\x00", CLIENT)
        [error] = port.take()
        self.assertEqual(error.code, ErrorCode.ILLEGAL_OPERATION)
        self.assertFalse(port.listening)

    def test_no_traceback_to_peer(self) -> None:
        """
        A bug on our side (here: the view raises C{RuntimeError}) answers
        ERROR 0 with a generic message and logs the failure.
        """
        def broken(path: str, offset: int = 0) -> None:
            raise RuntimeError("secret detail /srv/x")

        self.factory.view = type("View", (), {"open_read": staticmethod(broken)})()
        self.request(ReadRequest("one-block", "octet"))
        error = self.refusal()
        self.assertEqual(error.code, ErrorCode.NOT_DEFINED)
        self.assertNotIn("secret", error.message)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_no_port(self) -> None:
        """When no transfer port can be bound the client is told to retry."""
        self.reactor.fail_listen = True
        self.request(ReadRequest("one-block", "octet"))
        self.assertIn("busy", self.refusal().message)
        self.assertEqual(self.factory.transfers, {})
        self.flushLoggedErrors()

    def test_stop_aborts_transfers(self) -> None:
        """C{stop} tells every client and releases every transfer port."""
        port = self.request(ReadRequest("three-blocks", "octet"))
        assert port is not None
        port.take()
        d = self.factory.stop()
        self.successResultOf(d)
        [error] = port.take()
        self.assertIsInstance(error, Error)
        self.assertFalse(port.listening)
        self.assertEqual(self.factory.transfers, {})

    def test_transfer_binds_listener_interface(self) -> None:
        """Transfer ports bind the well-known port's address, with large reads."""
        port = self.request(ReadRequest("one-block", "octet"))
        assert port is not None
        self.assertEqual(port.interface, "127.0.0.1")
        self.assertGreaterEqual(port.maxPacketSize, 65468)
        self.assertGreaterEqual(self.listener.maxPacketSize, 65468)


class WriteRefusedTests(ServerTestsMixin, SynchronousTestCase):
    """A read-only server (the default) refuses every WRQ."""

    def test_write_refused(self) -> None:
        """WRQ gets ERROR 2 and nothing is created."""
        self.assertIsNone(self.request(WriteRequest("new.bin", "octet")))
        self.assertEqual(self.refusal().code, ErrorCode.ACCESS_VIOLATION)
        self.assertEqual(os.listdir(os.path.join(self.public, "incoming")), [])


class WriteTests(ServerTestsMixin, SynchronousTestCase):
    """A writable server creates new files in the upload directory."""

    writable = True

    def upload(self, name: str, data: bytes, options: dict[str, str] | None = None) -> FakeUDPPort:
        port = self.request(WriteRequest(name, "octet", options or {}))
        assert port is not None
        [first] = port.take()
        self.assertIn(type(first), (Ack, OptionAck))
        blocks = [data[i:i + 512] for i in range(0, len(data), 512)]
        if len(data) % 512 == 0:
            blocks.append(b"")
        for number, payload in enumerate(blocks, 1):
            port.protocol.datagramReceived(encode(Data(number, payload)), CLIENT)
            self.assertEqual(port.take(), [Ack(number)])
        return port

    def incoming(self, name: str) -> bytes:
        with open(os.path.join(self.public, "incoming", name), "rb") as f:
            return f.read()

    def test_upload(self) -> None:
        """
        WRQ is answered with ACK 0 from a new port; the file is in place
        in the drop box before the final ACK; the port lingers (dallies)
        and is then released.
        """
        data = os.urandom(1500)
        port = self.upload("new.bin", data)
        self.assertEqual(self.incoming("new.bin"), data)
        self.assertTrue(port.listening)
        # The final block again (our ACK was lost): ACK repeated.
        port.protocol.datagramReceived(encode(Data(3, data[1024:])), CLIENT)
        self.assertEqual(port.take(), [Ack(3)])
        self.reactor.advance(3.0)
        self.assertFalse(port.listening)
        self.assertEqual(self.stats["bytes_in"], 1500)
        self.assertIn("WRQ /incoming/new.bin", self.lines[0])

    def test_upload_sizes(self) -> None:
        """Empty and exactly-one-block uploads are stored whole."""
        for name, data in (("zero", b""), ("full", os.urandom(512))):
            self.upload(name, data)
            self.assertEqual(self.incoming(name), data)

    def test_upload_path_forms(self) -> None:
        """C{/incoming/x}, C{incoming/x} and C{x} all land in the drop box."""
        for name, stored in (("/incoming/a", "a"), ("incoming/b", "b"), ("c", "c")):
            self.upload(name, b"x")
            self.assertEqual(self.incoming(stored), b"x")

    def test_create_only(self) -> None:
        """An existing name gets ERROR 6; the file is not touched."""
        self.upload("once", b"first")
        self.assertIsNone(self.request(WriteRequest("once", "octet"), OTHER))
        self.assertEqual(self.refusal().code, ErrorCode.FILE_EXISTS)
        self.assertEqual(self.incoming("once"), b"first")

    def test_too_large_by_tsize(self) -> None:
        """A WRQ announcing more than C{max_size} gets ERROR 3 up front."""
        self.factory.policy = TransferPolicy(max_size=1000)
        port = self.request(WriteRequest("big", "octet", {"tsize": "5000"}))
        assert port is not None
        [error] = port.take()
        self.assertEqual(error.code, ErrorCode.DISK_FULL)
        self.assertFalse(port.listening)
        self.assertNotIn("big", os.listdir(os.path.join(self.public, "incoming")))

    def test_quota_exceeded_while_writing(self) -> None:
        """
        When the drop box's byte limit is hit mid-transfer the client gets
        ERROR 3 and the partial file is removed.
        """
        base = os.path.realpath(self.mktemp())
        store = FileStore(base, incoming=True, incoming_limit=600)
        self.factory.view = store.view_for(None)
        port = self.request(WriteRequest("big", "octet"))
        assert port is not None
        port.take()
        port.protocol.datagramReceived(encode(Data(1, b"a" * 512)), CLIENT)
        self.assertEqual(port.take(), [Ack(1)])
        port.protocol.datagramReceived(encode(Data(2, b"b" * 512)), CLIENT)
        [error] = port.take()
        self.assertEqual(error.code, ErrorCode.DISK_FULL)
        self.assertFalse(port.listening)
        self.assertEqual(os.listdir(os.path.join(base, "public", "incoming")), [])

    def test_abandoned_upload_removed(self) -> None:
        """An upload whose client goes silent times out and leaves no file."""
        port = self.request(WriteRequest("half", "octet"))
        assert port is not None
        port.protocol.datagramReceived(encode(Data(1, b"a" * 512)), CLIENT)
        self.reactor.pump([1.0] * 5)
        self.assertFalse(port.listening)
        self.assertEqual(os.listdir(os.path.join(self.public, "incoming")), [])

    def test_upload_outside_drop_box_refused(self) -> None:
        """A WRQ whose name escapes gets ERROR 2."""
        self.assertIsNone(self.request(WriteRequest("../x", "octet")))
        self.assertEqual(self.refusal().code, ErrorCode.ACCESS_VIOLATION)


class ErrorMappingTests(SynchronousTestCase):
    """L{error_for_store_error} gives each store error its TFTP code."""

    def test_codes(self) -> None:
        """NotFound 1, PermissionDenied/PathOutsideRoot 2, quota 3, exists 6, else 0."""
        from appnet.errors import NotFound, PathOutsideRoot, PermissionDenied, QuotaExceeded, StoreError
        from appnet.filesystem import AlreadyExists

        for error, code in (
            (NotFound("x"), 1), (PermissionDenied("x"), 2), (PathOutsideRoot("x"), 2),
            (QuotaExceeded("x"), 3), (AlreadyExists("x"), 6), (StoreError("x"), 0),
        ):
            self.assertEqual(error_for_store_error(error)[0], code, error)


class ClientProtocolTests(SynchronousTestCase):
    """
    L{appnet.tftp.client} over the same fake reactor: where requests go,
    TID locking, ERROR 5 to strangers, timeouts and cancellation.
    """

    SERVER = ("10.0.0.1", 69)

    def setUp(self) -> None:
        from appnet.tftp import client

        self.client = client
        self.reactor = FakeUDPReactor()
        self.sink = io.BytesIO()

    def start_get(self, **kwargs: Any) -> tuple[Any, FakeUDPPort]:
        d = self.client.get(self.SERVER[0], self.SERVER[1], "f", self.sink,
                            policy=TransferPolicy(timeout=1.0, retries=1, dally=0),
                            reactor=self.reactor, **kwargs)
        return d, self.reactor.ports[-1]

    def test_locks_onto_first_answer(self) -> None:
        """
        The RRQ goes to the well-known port; the port of the first DATA
        becomes the peer: ACKs go there, and another port of the server
        gets ERROR 5 and changes nothing.
        """
        d, port = self.start_get()
        self.assertEqual(port.packets(), [(ReadRequest("f", "octet"), self.SERVER)])
        port.written.clear()
        tid = (self.SERVER[0], 6000)
        port.protocol.datagramReceived(encode(Data(1, b"a" * 512)), tid)
        self.assertEqual(port.packets(), [(Ack(1), tid)])
        port.written.clear()
        port.protocol.datagramReceived(encode(Data(2, b"evil")), (self.SERVER[0], 6001))
        self.assertEqual(port.written, [(UNKNOWN_TID_DATAGRAM, (self.SERVER[0], 6001))])
        port.written.clear()
        port.protocol.datagramReceived(encode(Data(2, b"end")), tid)
        result = self.successResultOf(d)
        self.assertEqual(self.sink.getvalue(), b"a" * 512 + b"end")
        self.assertEqual(result.stats.file_bytes, 515)
        self.successResultOf(result.closed)
        self.assertFalse(port.listening)

    def test_other_host_before_answer(self) -> None:
        """Before the server answers, a datagram from another host gets ERROR 5."""
        d, port = self.start_get()
        port.written.clear()
        port.protocol.datagramReceived(encode(Data(1, b"x")), ("10.9.9.9", 6000))
        self.assertEqual(port.written, [(UNKNOWN_TID_DATAGRAM, ("10.9.9.9", 6000))])
        self.assertNoResult(d)

    def test_timeout(self) -> None:
        """An unanswered request is sent again, then the Deferred fails with L{TimedOut}."""
        from appnet.tftp.machine import TimedOut

        d, port = self.start_get()
        self.reactor.advance(1.0)
        self.assertEqual(len(port.written), 2)
        self.reactor.advance(1.0)
        self.failureResultOf(d, TimedOut)
        self.assertFalse(port.listening)

    def test_cancel(self) -> None:
        """Cancelling mid-transfer tells the server with an ERROR and releases the port."""
        d, port = self.start_get()
        tid = (self.SERVER[0], 6000)
        port.protocol.datagramReceived(encode(Data(1, b"a" * 512)), tid)
        port.written.clear()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        [(error, addr)] = port.packets()
        self.assertIsInstance(error, Error)
        self.assertEqual(addr, tid)
        self.assertFalse(port.listening)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_progress(self) -> None:
        """The progress callback sees the bytes so far and the tsize the server announced."""
        seen: list[tuple[int, int | None]] = []
        from appnet.tftp.machine import RequestedOptions

        d, port = self.start_get(options=RequestedOptions(tsize=True),
                                 progress=lambda done, total: seen.append((done, total)))
        tid = (self.SERVER[0], 6000)
        port.protocol.datagramReceived(encode(OptionAck({"tsize": "3"})), tid)
        port.protocol.datagramReceived(encode(Data(1, b"abc")), tid)
        self.successResultOf(d)
        self.assertEqual(seen[-1], (3, 3))
