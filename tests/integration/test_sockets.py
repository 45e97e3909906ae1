"""
L{appnet.sockets} on real loopback connections: L{plain_tcp} finds the TCP
connection under the connection guard's wrapper and refuses TLS; L{push}
sends at once what Twisted would send at its next turn; L{ReplySender}
writes straight to the socket, counted, and through the transport under TLS.
"""

from __future__ import annotations

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from appnet.sockets import ReplySender, plain_tcp, push
from appnet.stats import GuardedFactory, ServiceStats


class _Server(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.made.callback(self)


class _Client(protocol.Protocol):
    def connectionMade(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class _Connected(TestCase):
    async def connect(self, wrap) -> protocol.Protocol:
        server = protocol.ServerFactory.forProtocol(_Server)
        server.made = defer.Deferred()
        port = reactor.listenTCP(0, wrap(server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = await endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port
        ).connect(protocol.Factory.forProtocol(_Client))
        self.addCleanup(client.transport.loseConnection)
        proto = await server.made
        self.addCleanup(proto.transport.loseConnection)
        return proto


class PlainTCPTests(_Connected):
    async def test_under_guard(self) -> None:
        """Through the guard's wrapper: the TCP connection; push sends at once."""
        proto = await self.connect(lambda f: GuardedFactory(f, ServiceStats("t")))
        connection = plain_tcp(proto.transport)
        self.assertIsNotNone(connection)
        proto.transport.write(b"220 hello\r\n")
        self.assertEqual(connection._tempDataBuffer, [b"220 hello\r\n"])
        push(connection)
        self.assertEqual((connection._tempDataBuffer, connection.dataBuffer), ([], b""))

    async def test_tls_refused(self) -> None:
        """Under a TLS wrapper there is no plain connection to write to."""
        from twisted.internet.ssl import CertificateOptions
        from OpenSSL import crypto

        key = crypto.PKey()
        key.generate_key(crypto.TYPE_RSA, 2048)
        cert = crypto.X509()
        cert.get_subject().CN = "t"
        cert.set_issuer(cert.get_subject())
        cert.set_pubkey(key)
        cert.gmtime_adj_notBefore(0)
        cert.gmtime_adj_notAfter(3600)
        cert.sign(key, "sha256")
        options = CertificateOptions(privateKey=key, certificate=cert)
        proto = await self.connect(lambda f: TLSMemoryBIOFactory(options, False, f))
        self.assertIsNone(plain_tcp(proto.transport))

    def test_memory_transport(self) -> None:
        """A StringTransport is not TCP: None, and push(None) does nothing."""
        self.assertIsNone(plain_tcp(StringTransport()))
        push(None)


class ReplySenderTests(_Connected):
    async def test_straight_to_the_socket(self) -> None:
        """On plain TCP a reply bypasses Twisted's buffer and is counted."""
        stats = ServiceStats("t")
        proto = await self.connect(lambda f: GuardedFactory(f, stats))
        sender = ReplySender(proto.transport, stats)
        connection = plain_tcp(proto.transport)
        sender.send(b"250 ok\r\n")
        self.assertEqual((connection._tempDataBuffer, connection.dataBuffer), ([], b""))
        self.assertEqual(stats["bytes_out"], len(b"250 ok\r\n"))

    async def test_after_tls_through_the_transport(self) -> None:
        """Once TLS started, replies go to the transport (which encrypts them)."""
        proto = await self.connect(lambda f: f)
        sender = ReplySender(proto.transport, ServiceStats("t"))
        sender.tls_started()
        written: list[bytes] = []
        self.patch(proto.transport, "write", written.append)
        sender.send(b"250 ok\r\n")
        self.assertEqual(written, [b"250 ok\r\n"])

    def test_memory_transport(self) -> None:
        """Not TCP: through the transport."""
        transport = StringTransport()
        ReplySender(transport, ServiceStats("t")).send(b"220 hi\r\n")
        self.assertEqual(transport.value(), b"220 hi\r\n")
