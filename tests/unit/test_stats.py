"""
Unit tests for appnet.stats (counters, the connection guard) and
appnet.transcript.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from appnet.stats import GuardedFactory, StatsRegistry
from appnet.transcript import Transcript, redact_words


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data * 2)


class GuardTests(SynchronousTestCase):
    """GuardedFactory."""

    def setUp(self) -> None:
        self.registry = StatsRegistry()
        self.stats = self.registry.service("echo")
        self.guard = GuardedFactory(
            Factory.forProtocol(Echo), self.stats, max_connections=3, max_per_address=2,
            refusal=b"busy\r\n",
        )

    def connect(self, host: str):
        addr = IPv4Address("TCP", host, 1000)
        proto = self.guard.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        return proto, transport

    def test_counts_bytes_and_connections(self) -> None:
        """Bytes in and out and connections are counted per service."""
        proto, t = self.connect("127.0.0.1")
        proto.dataReceived(b"abc")
        self.assertEqual(t.value(), b"abcabc")
        snap = self.registry.snapshot()["echo"]
        self.assertEqual((snap["bytes_in"], snap["bytes_out"]), (3, 6))
        self.assertEqual((snap["connections"], snap["connections_active"]), (1, 1))
        proto.connectionLost(None)
        self.assertEqual(self.stats["connections_active"], 0)

    def test_limits(self) -> None:
        """Over the per-address or total limit a client gets the refusal and is closed."""
        self.connect("10.0.0.1")
        self.connect("10.0.0.1")
        _, t = self.connect("10.0.0.1")
        self.assertEqual(t.value(), b"busy\r\n")
        self.assertTrue(t.disconnecting)
        self.connect("10.0.0.2")
        _, t = self.connect("10.0.0.3")
        self.assertEqual(t.value(), b"busy\r\n")
        self.assertEqual(self.stats["connections_refused"], 2)

    def test_slots_freed(self) -> None:
        """A closed connection frees its address's slot."""
        p1, _ = self.connect("10.0.0.1")
        self.connect("10.0.0.1")
        p1.connectionLost(None)
        _, t = self.connect("10.0.0.1")
        self.assertFalse(t.disconnecting)
        self.assertEqual(self.guard.per_address["10.0.0.1"], 2)


class TranscriptTests(SynchronousTestCase):
    """Transcript formatting and redaction."""

    def test_lines(self) -> None:
        """Lines carry direction, text and note; the redactor runs before anything is kept."""
        out: list[str] = []
        t = Transcript(
            "x", "peer", lambda line: "client note", lambda line: "server note",
            redact=lambda line: redact_words(line, 1), emit=out.append,
        )
        t.client(b"PASS hunter2\r\n")
        t.server(b"+OK\r\n")
        t.event("tls")
        self.assertEqual(out[0].split(), ["C:", "PASS", "****", "client", "note"])
        self.assertEqual(out[1].split(), ["S:", "+OK", "server", "note"])
        self.assertNotIn("hunter2", " ".join(out + t.lines))
        self.assertEqual(out[2].split(), ["*:", "tls"])
