"""
The DNS client: C{resolve(name, type)} returning typed records.

    client = DNSClient([("127.0.0.1", 10053)], timeout=2.0)
    records = await client.resolve("example.org", "MX")
    for r in records:
        print(r.rdata.preference, r.rdata.exchange)

Queries go over UDP from a fresh random source port (RFC 5452), with EDNS(0);
a truncated reply is asked again over TCP; a server that does not answer
within C{timeout} is skipped for the next one. Replies are matched on ID,
source address and question. Every Deferred is cancellable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
from twisted.internet import defer, endpoints, error
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.python.failure import Failure

from appnet.errors import AppnetError

__all__ = [
    "DNSClient",
    "Record",
    "DNSError",
    "NXDomain",
    "ServerFailure",
    "QueryRefused",
    "DNSTimeout",
    "resolve",
    "parse_server",
]

#: The EDNS UDP payload size we ask for (the DNS flag day 2020 value).
CLIENT_PAYLOAD = 1232


class DNSError(AppnetError):
    """
    A query failed.

    @ivar rcode: the RCODE of the reply, or L{None} when there was none
    """

    rcode: int | None = None

    def __init__(self, name: str, rdtype: str, message: str = "") -> None:
        self.name = name
        self.rdtype = rdtype
        super().__init__(message or f"{name} {rdtype}: {type(self).__name__}")


class NXDomain(DNSError):
    """The name does not exist (NXDOMAIN)."""

    rcode = dns.rcode.NXDOMAIN


class ServerFailure(DNSError):
    """The server could not answer (SERVFAIL, FORMERR, NOTIMP, ...)."""

    rcode = dns.rcode.SERVFAIL


class QueryRefused(DNSError):
    """The server refused to answer (REFUSED): not its zone, no recursion for us."""

    rcode = dns.rcode.REFUSED


class DNSTimeout(DNSError):
    """No server answered in time."""


@dataclass(frozen=True)
class Record:
    """
    One resource record of an answer.

    @ivar name: owner name, absolute (C{"www.example.org."})
    @ivar type: the type's mnemonic (C{"MX"})
    @ivar ttl: seconds
    @ivar data: the record data as a zone file (and dig) writes it
    @ivar rdata: dnspython's typed rdata (C{.address}, C{.exchange},
        C{.preference}, C{.target}, C{.strings}, ...)
    """

    name: str
    type: str
    ttl: int
    data: str
    rdata: Any

    def to_text(self) -> str:
        """The record as a line of dig's answer section."""
        return f"{self.name}\t{self.ttl}\tIN\t{self.type}\t{self.data}"


def parse_server(text: str, default_port: int = 53) -> tuple[str, int]:
    """C{"192.0.2.1"}, C{"192.0.2.1:5353"}, C{"[::1]:5353"}, C{"::1"} -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


class _UDPExchange(DatagramProtocol):
    noisy = False

    def __init__(self, query: dns.message.Message, server: tuple[str, int], done: defer.Deferred) -> None:
        self.query = query
        self.server = server
        self.done = done

    def startProtocol(self) -> None:
        self.transport.connect(*self.server)
        self.transport.write(self.query.to_wire())

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            reply = dns.message.from_wire(data)
        except (dns.exception.DNSException, ValueError):
            return  # garbage or a spoof attempt: keep waiting
        if self.query.is_response(reply) and not self.done.called:
            self.done.callback(reply)

    def connectionRefused(self) -> None:
        if not self.done.called:
            self.done.errback(error.ConnectionRefusedError(f"{self.server[0]}:{self.server[1]}"))


class _TCPExchange(Protocol):
    def __init__(self, query: dns.message.Message, done: defer.Deferred, many: bool = False) -> None:
        self.query = query
        self.done = done
        self.many = many
        self.replies: list[dns.message.Message] = []
        self._buffer = b""

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        wire = self.query.to_wire()
        self.transport.write(len(wire).to_bytes(2, "big") + wire)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 2:
            size = int.from_bytes(self._buffer[:2], "big")
            if len(self._buffer) < 2 + size:
                return
            wire, self._buffer = self._buffer[2 : 2 + size], self._buffer[2 + size :]
            try:
                reply = dns.message.from_wire(wire, one_rr_per_rrset=self.many)
            except (dns.exception.DNSException, ValueError) as e:
                self._finish(Failure(e))
                return
            if not self.query.is_response(reply) and not (self.many and self.replies):
                continue
            if not self.many:
                self._finish(reply)
                return
            self.replies.append(reply)
            if reply.rcode() != dns.rcode.NOERROR or _transfer_complete(self.replies):
                self._finish(self.replies)
                return

    def _finish(self, result: Any) -> None:
        if not self.done.called:
            if isinstance(result, Failure):
                self.done.errback(result)
            else:
                self.done.callback(result)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.errback(reason)


def _transfer_complete(replies: list[dns.message.Message]) -> bool:
    soas = [
        rrset for reply in replies for rrset in reply.answer if rrset.rdtype == dns.rdatatype.SOA
    ]
    return len(soas) >= 2


class DNSClient:
    """
    A stub resolver over a list of servers.

    @param servers: C{(address, port)} pairs tried in order (IP addresses)
    @param timeout: seconds to wait for each server
    @param tcp: always use TCP
    @param reactor: the reactor (the global one by default)
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]] = (("127.0.0.1", 53),),
        timeout: float = 2.0,
        tcp: bool = False,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        if not servers:
            raise ValueError("a DNS client needs at least one server")
        self.servers = [(host, int(port)) for host, port in servers]
        self.timeout = timeout
        self.tcp = tcp
        self.reactor = reactor

    def query(
        self,
        name: str | dns.name.Name,
        rdtype: str | int = "A",
        *,
        tcp: bool | None = None,
        recursion_desired: bool = True,
    ) -> defer.Deferred[dns.message.Message]:
        """
        Ask each server in turn until one answers; return its reply.

        @raise DNSTimeout: (errback) no server answered
        """
        query = dns.message.make_query(
            name, rdtype, use_edns=0, payload=CLIENT_PAYLOAD, id=random.SystemRandom().randrange(65536)
        )
        if not recursion_desired:
            query.flags &= ~dns.flags.RD
        use_tcp = self.tcp if tcp is None else tcp

        async def ask() -> dns.message.Message:
            failures: list[str] = []
            for server in self.servers:
                try:
                    if use_tcp:
                        return await self._exchange_tcp(query, server)
                    reply = await self._exchange_udp(query, server)
                    if reply.flags & dns.flags.TC:
                        reply = await self._exchange_tcp(query, server)
                    return reply
                except (
                    DNSTimeout,
                    error.ConnectError,
                    error.ConnectionClosed,
                    error.TimeoutError,
                    dns.exception.DNSException,
                ) as e:
                    failures.append(f"{server[0]}:{server[1]}: {e}")
            raise DNSTimeout(
                str(query.question[0].name),
                dns.rdatatype.to_text(query.question[0].rdtype),
                "no answer: " + "; ".join(failures),
            )

        return defer.Deferred.fromCoroutine(ask())

    def resolve(self, name: str | dns.name.Name, rdtype: str | int = "A") -> defer.Deferred[list[Record]]:
        """
        The answer-section records for C{name}/C{rdtype} (a CNAME chain
        included, as the server gave it).

        @raise NXDomain: (errback) the name does not exist
        @raise QueryRefused: (errback) the server refused
        @raise ServerFailure: (errback) any other error RCODE
        @raise DNSTimeout: (errback) no server answered
        """
        type_text = rdtype if isinstance(rdtype, str) else dns.rdatatype.to_text(rdtype)

        def records(reply: dns.message.Message) -> list[Record]:
            rcode = reply.rcode()
            if rcode == dns.rcode.NXDOMAIN:
                raise NXDomain(str(name), type_text)
            if rcode == dns.rcode.REFUSED:
                raise QueryRefused(str(name), type_text)
            if rcode != dns.rcode.NOERROR:
                raise ServerFailure(str(name), type_text, f"{name} {type_text}: {dns.rcode.to_text(rcode)}")
            return records_of(reply)

        return self.query(name, rdtype).addCallback(records)

    def exchange(
        self, message: dns.message.Message, server: tuple[str, int], tcp: bool = False
    ) -> defer.Deferred[dns.message.Message]:
        """
        Send a message of one's own making (a NOTIFY, say) to one server
        and return its reply; over UDP unless C{tcp}, TCP again if truncated.

        @raise DNSTimeout: (errback) no reply within C{timeout}
        """
        if tcp:
            return self._exchange_tcp(message, server)

        def again_over_tcp(reply: dns.message.Message) -> Any:
            if reply.flags & dns.flags.TC:
                return self._exchange_tcp(message, server)
            return reply

        return self._exchange_udp(message, server).addCallback(again_over_tcp)

    def transfer(self, zone: str, server: tuple[str, int] | None = None) -> defer.Deferred[list[Record]]:
        """AXFR C{zone} from C{server} (the first server by default) over TCP."""
        query = dns.message.make_query(zone, dns.rdatatype.AXFR)
        query.flags &= ~dns.flags.RD

        def records(replies: list[dns.message.Message]) -> list[Record]:
            if replies[-1].rcode() != dns.rcode.NOERROR:
                cls = QueryRefused if replies[-1].rcode() == dns.rcode.REFUSED else ServerFailure
                raise cls(zone, "AXFR")
            return [r for reply in replies for r in records_of(reply)]

        return self._exchange_tcp(query, server or self.servers[0], many=True).addCallback(records)

    def _timed(self, d: defer.Deferred, query: dns.message.Message, server: tuple[str, int]) -> defer.Deferred:
        question = query.question[0]

        def expired() -> None:
            d.cancel()

        call = self.reactor.callLater(self.timeout, expired)

        def translate(result: Any) -> Any:
            if call.active():
                call.cancel()
                return result
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                raise DNSTimeout(
                    str(question.name),
                    dns.rdatatype.to_text(question.rdtype),
                    f"timed out after {self.timeout}s",
                )
            return result

        return d.addBoth(translate)

    def _exchange_udp(self, query: dns.message.Message, server: tuple[str, int]) -> defer.Deferred:
        ports: list[Any] = []
        # Cancelling fails C{done} with CancelledError; close() below frees the port.
        done: defer.Deferred = defer.Deferred()
        protocol = _UDPExchange(query, server, done)
        interface = "::" if ":" in server[0] else ""
        try:
            ports.append(self.reactor.listenUDP(0, protocol, interface=interface))
        except error.CannotListenError as e:
            return defer.fail(e)

        def close(result: Any) -> Any:
            for port in ports:
                port.stopListening()
            return result

        return self._timed(done.addBoth(close), query, server)

    def _exchange_tcp(self, query: dns.message.Message, server: tuple[str, int], many: bool = False) -> defer.Deferred:
        host, port = server
        endpoint_class = endpoints.TCP6ClientEndpoint if ":" in host else endpoints.TCP4ClientEndpoint
        endpoint = endpoint_class(self.reactor, host, port, timeout=max(1, int(self.timeout)))
        protocols: list[_TCPExchange] = []

        def cancel(d: defer.Deferred) -> None:
            for p in protocols:
                if p.transport is not None:
                    p.transport.abortConnection()

        done: defer.Deferred = defer.Deferred(cancel)
        protocol = _TCPExchange(query, done, many)
        protocols.append(protocol)
        connecting = endpoints.connectProtocol(endpoint, protocol)

        def not_connected(reason: Failure) -> None:
            if not done.called:
                done.errback(reason)

        connecting.addErrback(not_connected)

        def stop_connecting(result: Any) -> Any:
            if not connecting.called:
                connecting.cancel()
            return result

        return self._timed(done.addBoth(stop_connecting), query, server)


def records_of(reply: dns.message.Message) -> list[Record]:
    """The answer section of C{reply} as L{Record}s."""
    out = []
    for rrset in reply.answer:
        type_text = dns.rdatatype.to_text(rrset.rdtype)
        for rdata in rrset:
            out.append(Record(str(rrset.name), type_text, rrset.ttl, rdata.to_text(), rdata))
    return out


def resolve(
    name: str,
    rdtype: str | int = "A",
    servers: Sequence[tuple[str, int]] = (("127.0.0.1", 53),),
    timeout: float = 2.0,
    reactor: Any = None,
) -> defer.Deferred[list[Record]]:
    """One-shot L{DNSClient.resolve}."""
    return DNSClient(servers, timeout, reactor=reactor).resolve(name, rdtype)

