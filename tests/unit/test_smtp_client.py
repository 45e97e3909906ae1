"""
Unit tests of the SMTP client (L{appnet.smtp.client}) with scripted server
replies over C{StringTransport}, and of C{appnet mail send}'s arguments.
"""

from __future__ import annotations

import base64
import io
import os
import sys

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appnet import mime
from appnet.cli import _parser
from appnet.smtp.cli import build_message, server_address
from appnet.smtp.client import (
    SendResult,
    SMTPClientError,
    SMTPClientProtocol,
    data_payload,
    deliver_to_hosts,
    send_mail,
)

EHLO_PIPELINING = (b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
                   b"250-8BITMIME\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 SMTPUTF8\r\n")
EHLO_PLAIN = b"250-mx.example.org\r\n250-SIZE\r\n250 8BITMIME\r\n"
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


class TLSStringTransport(StringTransport):
    """A StringTransport that records a switch to TLS."""

    tls_options = None

    def startTLS(self, options):
        self.tls_options = options


class Harness:
    """One send_mail call over a MemoryReactorClock and a scripted server."""

    def __init__(self, peer: str = "127.0.0.1", **kw) -> None:
        self.reactor = MemoryReactorClock()
        kw.setdefault("tls", "none")
        recipients = kw.pop("recipients", ["bob@example.org"])
        message = kw.pop("message", MESSAGE)
        self.result = send_mail("mx.example.org", 25, "alice@example.org", recipients,
                                message, reactor=self.reactor, timeout=30, **kw)
        self.reactor.advance(0)
        self.transport = TLSStringTransport(
            hostAddress=IPv4Address("TCP", "10.0.0.1", 40000),
            peerAddress=IPv4Address("TCP", peer, 25))

    def connect(self, index: int = -1) -> None:
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        self.proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport.clear()
        self.proto.makeConnection(self.transport)

    def server(self, data: bytes) -> bytes:
        """Deliver C{data} as the server's; return what the client wrote in response."""
        self.transport.clear()
        self.proto.dataReceived(data)
        return self.transport.value()


def _start(testcase: SynchronousTestCase, ehlo: bytes = EHLO_PIPELINING, **kw) -> Harness:
    h = Harness(**kw)
    h.connect()
    testcase.assertEqual(h.server(b"220 mx.example.org ESMTP\r\n"), b"EHLO [10.0.0.1]\r\n")
    h.ehlo_answer = h.server(ehlo)
    return h


class PayloadTests(SynchronousTestCase):
    """data_payload: CRLF normalisation, dot-stuffing, the SIZE figure."""

    def test_examples(self):
        """Bare LF and bare CR become CRLF, leading dots double, a last CRLF is added."""
        self.assertEqual(data_payload(b".a\n..b\rc\r\n.\r\nend"),
                         (b"..a\r\n...b\r\nc\r\n..\r\nend\r\n.\r\n", 20))
        self.assertEqual(data_payload(b""), (b"\r\n.\r\n", 2))

    @given(st.binary())
    def test_unstuffing_restores(self, data):
        """Undoing the stuffing gives the CRLF-normalised message, whose length is SIZE."""
        payload, size = data_payload(data)
        self.assertTrue(payload.endswith(b"\r\n.\r\n"))
        lines = payload[:-3].split(b"\r\n")[:-1]
        self.assertTrue(all(not line.startswith(b".") or line.startswith(b"..") for line in lines))
        body = b"".join(line[1:] + b"\r\n" if line.startswith(b".") else line + b"\r\n"
                        for line in lines)
        normalised = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if not normalised.endswith(b"\r\n"):
            normalised += b"\r\n"
        self.assertEqual(body, normalised)
        self.assertEqual(size, len(normalised))


class PipelinedSessionTests(SynchronousTestCase):
    """A whole session with a server offering PIPELINING."""

    def test_one_write_for_the_envelope(self):
        """
        MAIL (with SIZE and no BODY for 7-bit data), every RCPT and DATA go
        in one write; the message follows 354; QUIT ends the session.
        """
        h = _start(self, recipients=["bob@example.org", "carol@example.org"])
        self.assertEqual(h.ehlo_answer, b"MAIL FROM:<alice@example.org> SIZE=22\r\n"
                         b"RCPT TO:<bob@example.org>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n")
        self.assertEqual(h.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 Unknown\r\n"
                                  b"354 go ahead\r\n"), MESSAGE + b".\r\n")
        self.assertEqual(h.server(b"250 2.0.0 queued as 42\r\n"), b"QUIT\r\n")
        self.assertNoResult(h.result)
        h.server(b"221 bye\r\n")
        self.assertTrue(h.transport.disconnecting)
        result = self.successResultOf(h.result)
        self.assertEqual(result, SendResult(
            accepted={"bob@example.org": (250, "2.1.5 Ok")},
            refused={"carol@example.org": (550, "5.1.1 Unknown")},
            code=250, text="2.0.0 queued as 42"))

    def test_replies_split_anywhere(self):
        """Replies arriving byte by byte are read the same."""
        h = _start(self)
        written = b""
        for byte in b"250 Ok\r\n250 Ok\r\n354 go\r\n":
            written += h.server(bytes([byte]))
        self.assertEqual(written, MESSAGE + b".\r\n")

    def test_all_refused_after_354(self):
        """
        Every RCPT refused but DATA answered 354 (RFC 2920 §3.1): an empty
        message ends the data, no message is sent, the result lists the refusals.
        """
        h = _start(self)
        self.assertEqual(h.server(b"250 Ok\r\n550 no\r\n354 go\r\n"), b".\r\n")
        self.assertEqual(h.server(b"554 no valid recipients\r\n"), b"QUIT\r\n")
        h.server(b"221 bye\r\n")
        result = self.successResultOf(h.result)
        self.assertEqual((result.accepted, result.refused, result.code),
                         ({}, {"bob@example.org": (550, "no")}, None))

    def test_all_refused_data_refused(self):
        """Every RCPT refused and DATA refused: no payload, a SendResult, QUIT."""
        h = _start(self)
        self.assertEqual(h.server(b"250 Ok\r\n450 try later\r\n554 no recipients\r\n"), b"QUIT\r\n")
        h.server(b"221 bye\r\n")
        self.assertEqual(self.successResultOf(h.result).refused,
                         {"bob@example.org": (450, "try later")})

    def test_mail_refused(self):
        """5xx to MAIL FROM: a permanent failure at the mail stage, then QUIT."""
        h = _start(self)
        self.assertEqual(h.server(b"553 5.7.1 sender rejected\r\n503 no\r\n503 no\r\n"), b"QUIT\r\n")
        e = self.failureResultOf(h.result, SMTPClientError).value
        self.assertEqual((e.code, e.text, e.permanent, e.stage),
                         (553, "5.7.1 sender rejected", True, "mail"))

    def test_421_then_close(self):
        """421 to MAIL and the connection closed: the 421 is the (transient) error."""
        h = _start(self)
        h.server(b"421 4.3.2 shutting down\r\n")
        h.proto.connectionLost(Failure(error.ConnectionDone()))
        e = self.failureResultOf(h.result, SMTPClientError).value
        self.assertEqual((e.code, e.permanent, e.stage), (421, False, "mail"))

    def test_final_reply_transient(self):
        """4xx after the message: transient, with the recipients' replies attached."""
        h = _start(self)
        h.server(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
        self.assertEqual(h.server(b"451 4.3.0 disk full\r\n"), b"QUIT\r\n")
        e = self.failureResultOf(h.result, SMTPClientError).value
        self.assertEqual((e.code, e.permanent, e.stage), (451, False, "message"))
        self.assertEqual(list(e.result.accepted), ["bob@example.org"])

    def test_eight_bit_and_smtputf8(self):
        """8-bit data adds BODY=8BITMIME; a non-ASCII address adds SMTPUTF8."""
        h = _start(self, recipients=["zoë@example.org"], message="Subject: é\r\n\r\né\r\n".encode())
        self.assertTrue(h.ehlo_answer.startswith(
            b"MAIL FROM:<alice@example.org> SIZE=19 BODY=8BITMIME SMTPUTF8\r\n"
            + "RCPT TO:<zoë@example.org>".encode()))


class PlainSessionTests(SynchronousTestCase):
    """A server without PIPELINING: one command at a time."""

    def test_lock_step(self):
        """Each RCPT waits for the previous reply; DATA only after them."""
        h = _start(self, ehlo=EHLO_PLAIN, recipients=["b@example.org", "c@example.org"])
        self.assertEqual(h.ehlo_answer, b"MAIL FROM:<alice@example.org> SIZE=22\r\n")
        self.assertEqual(h.server(b"250 Ok\r\n"), b"RCPT TO:<b@example.org>\r\n")
        self.assertEqual(h.server(b"250 Ok\r\n"), b"RCPT TO:<c@example.org>\r\n")
        self.assertEqual(h.server(b"251 forwarded\r\n"), b"DATA\r\n")
        self.assertEqual(h.server(b"354 go\r\n"), MESSAGE + b".\r\n")
        h.server(b"250 Ok\r\n")
        h.server(b"221 bye\r\n")
        self.assertEqual(len(self.successResultOf(h.result).accepted), 2)

    def test_all_refused_no_data(self):
        """Every recipient refused: no DATA at all, QUIT, a SendResult."""
        h = _start(self, ehlo=EHLO_PLAIN)
        h.server(b"250 Ok\r\n")
        self.assertEqual(h.server(b"550 5.1.1 no\r\n"), b"QUIT\r\n")
        h.server(b"221 bye\r\n")
        self.assertEqual(self.successResultOf(h.result).code, None)

    def test_data_refused(self):
        """5xx to DATA: permanent, stage data."""
        h = _start(self, ehlo=EHLO_PLAIN)
        h.server(b"250 Ok\r\n")
        h.server(b"250 Ok\r\n")
        self.assertEqual(h.server(b"554 no\r\n"), b"QUIT\r\n")
        e = self.failureResultOf(h.result, SMTPClientError).value
        self.assertEqual((e.code, e.permanent, e.stage), (554, True, "data"))

    def test_size_over_server_limit(self):
        """A message over the advertised SIZE is refused before MAIL (552, permanent)."""
        h = _start(self, ehlo=b"250-mx\r\n250 SIZE 10\r\n")
        self.assertEqual(h.ehlo_answer, b"QUIT\r\n")
        e = self.failureResultOf(h.result, SMTPClientError).value
        self.assertEqual((e.code, e.permanent, e.stage), (552, True, "mail"))

    def test_smtputf8_missing(self):
        """A message needing SMTPUTF8 to a server without it: permanent error, nothing sent."""
        h = _start(self, ehlo=EHLO_PLAIN, recipients=["zoë@example.org"])
        self.assertEqual(h.ehlo_answer, b"QUIT\r\n")
        e = self.failureResultOf(h.result, SMTPClientError).value
        self.assertTrue(e.permanent)
        self.assertIn("SMTPUTF8", e.text)

    def test_helo_fallback(self):
        """A server refusing EHLO (500) gets HELO and no extensions are used."""
        h = Harness()
        h.connect()
        h.server(b"220 old\r\n")
        self.assertEqual(h.server(b"500 what?\r\n"), b"HELO [10.0.0.1]\r\n")
        self.assertEqual(h.server(b"250 hi\r\n"), b"MAIL FROM:<alice@example.org>\r\n")

    def test_composed_message(self):
        """An EmailMessage is sent as appnet.mime.to_bytes makes it."""
        msg = mime.compose("alice@example.org", "bob@example.org", "Grüße", "Hallo\n")
        h = _start(self, message=msg)
        sent = h.server(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
        self.assertEqual(sent, mime.to_bytes(msg) + b".\r\n")


    def test_bcc_not_sent(self):
        """An EmailMessage's Bcc field is left out of what is sent; the caller's copy keeps it."""
        msg = mime.compose("alice@example.org", "bob@example.org", "s", "t\n",
                           headers={"Bcc": "eve@example.org"})
        h = _start(self, message=msg, recipients=["bob@example.org", "eve@example.org"])
        sent = h.server(b"250 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n")
        self.assertNotIn(b"Bcc", sent)
        self.assertIn(b"To: bob@example.org\r\n", sent)
        self.assertEqual(msg["Bcc"], "eve@example.org")


class ErrorTests(SynchronousTestCase):
    """Failures at each stage, garbage, disconnects and timeouts."""

    def test_greeting_refused(self):
        """554 greeting: permanent, stage greeting; 421: transient."""
        for reply, permanent in ((b"554 go away\r\n", True), (b"421 busy\r\n", False)):
            h = Harness()
            h.connect()
            self.assertEqual(h.server(reply), b"QUIT\r\n")
            e = self.failureResultOf(h.result, SMTPClientError).value
            self.assertEqual((e.permanent, e.stage), (permanent, "greeting"))

    def test_ehlo_transient(self):
        """421 to EHLO: transient failure."""
        h = Harness()
        h.connect()
        h.server(b"220 hi\r\n")
        h.server(b"421 closing\r\n")
        e = self.failureResultOf(h.result, SMTPClientError).value
        self.assertEqual((e.code, e.permanent, e.stage), (421, False, "ehlo"))

    def test_multiline_greeting(self):
        """A multi-line 220 greeting is one reply."""
        h = Harness()
        h.connect()
        self.assertEqual(h.server(b"220-mx.example.org\r\n220-more\r\n220 ready\r\n"),
                         b"EHLO [10.0.0.1]\r\n")

    def test_garbage(self):
        """A reply that is not 'ddd text': transient failure, connection aborted, no QUIT."""
        for junk in (b"HTTP/1.1 400 Bad Request\r\n", b"250-a\r\n354 b\r\n", b"999 x\r\n"):
            h = Harness()
            h.connect()
            self.assertEqual(h.server(junk), b"")
            e = self.failureResultOf(h.result, SMTPClientError).value
            self.assertFalse(e.permanent)
            self.assertIn("garbage", e.text)
            self.assertTrue(h.transport.disconnecting)

    def test_unexpected_reply(self):
        """A reply nobody asked for (a second greeting) fails the session."""
        p = SMTPClientProtocol(MemoryReactorClock(), 30)
        p.makeConnection(StringTransport())
        p.dataReceived(b"220 hi\r\n250 surprise\r\n")
        self.assertEqual(self.successResultOf(p.greeting).code, 220)
        self.assertTrue(p.transport.disconnecting)
        self.assertIn("unexpected", self.failureResultOf(p.send(b"NOOP")[0]).value.text)

    def test_overlong_reply(self):
        """A reply line over the bound fails the session (no unbounded buffer)."""
        h = Harness()
        h.connect()
        h.server(b"220 " + b"x" * 5000)
        e = self.failureResultOf(h.result, SMTPClientError).value
        self.assertIn("longer", e.text)

    def test_server_closes_mid_session(self):
        """The connection lost while waiting for RCPT replies: transient, stage mail."""
        h = _start(self)
        h.server(b"250 Ok\r\n")
        h.proto.connectionLost(Failure(error.ConnectionDone()))
        e = self.failureResultOf(h.result, SMTPClientError).value
        self.assertEqual((e.code, e.permanent, e.stage), (None, False, "mail"))
        self.assertIn("connection lost", e.text)

    def test_timeout(self):
        """No reply within the timeout: transient failure and the connection aborted."""
        h = _start(self)
        h.reactor.advance(29)
        self.assertNoResult(h.result)
        h.server(b"250 Ok\r\n")  # a reply restarts the clock
        h.reactor.advance(29)
        self.assertNoResult(h.result)
        h.reactor.advance(1)
        e = self.failureResultOf(h.result, SMTPClientError).value
        self.assertEqual((e.permanent, e.stage), (False, "mail"))
        self.assertIn("no reply within 30 s", e.text)
        self.assertTrue(h.transport.disconnecting)

    def test_cancel(self):
        """Cancelling the Deferred aborts the connection."""
        h = _start(self)
        h.result.cancel()
        self.failureResultOf(h.result, defer.CancelledError)
        self.assertTrue(h.transport.disconnecting)

    def test_connection_refused(self):
        """Connection refused: transient, stage connect."""
        h = Harness()
        _, _, factory, _, _ = h.reactor.tcpClients[0]
        factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
        h.reactor.advance(1)
        e = self.failureResultOf(h.result, SMTPClientError).value
        self.assertEqual((e.code, e.permanent, e.stage), (None, False, "connect"))

    def test_bad_arguments(self):
        """Addresses with CR, LF, spaces or brackets, and unknown TLS modes are ValueErrors."""
        r = MemoryReactorClock()
        for sender, rcpt in (("a@b\r\nRSET", "c@d"), ("a@b", "c@d> x"), ("a b@c", "c@d")):
            self.assertRaises(ValueError, send_mail, "h", 25, sender, [rcpt], b"", reactor=r)
        self.assertRaises(ValueError, send_mail, "h", 25, "a@b", ["c@d"], b"", tls="ssl", reactor=r)
        self.assertEqual(r.tcpClients, [])


class TLSAndAuthTests(SynchronousTestCase):
    """STARTTLS and AUTH."""

    def test_starttls_then_ehlo_then_auth_plain(self):
        """
        STARTTLS when offered, TLS started after 220, EHLO again, AUTH PLAIN
        with the credentials in one line; cleartext after the 220 ignored.
        """
        h = _start(self, tls="starttls", verify=False, username="alice", password="sécret",
                   peer="192.0.2.7")
        self.assertEqual(h.ehlo_answer, b"STARTTLS\r\n")
        self.assertEqual(h.server(b"220 go ahead\r\n250 injected\r\n"), b"EHLO [10.0.0.1]\r\n")
        self.assertIsNotNone(h.transport.tls_options)
        token = base64.b64encode("\0alice\0sécret".encode())
        self.assertEqual(h.server(EHLO_PIPELINING), b"AUTH PLAIN " + token + b"\r\n")
        self.assertTrue(h.server(b"235 2.7.0 ok\r\n").startswith(b"MAIL FROM:"))

    def test_auth_login(self):
        """AUTH LOGIN when PLAIN is not offered: user and password each base64."""
        h = _start(self, ehlo=b"250-x\r\n250 AUTH=LOGIN\r\n", username="alice", password="pw")
        self.assertEqual(h.ehlo_answer, b"AUTH LOGIN\r\n")
        self.assertEqual(h.server(b"334 VXNlcm5hbWU6\r\n"), b"YWxpY2U=\r\n")
        self.assertEqual(h.server(b"334 UGFzc3dvcmQ6\r\n"), b"cHc=\r\n")
        self.assertTrue(h.server(b"235 ok\r\n").startswith(b"MAIL FROM:"))

    def test_auth_refused(self):
        """535: permanent failure at auth; 454: transient."""
        for reply, permanent in ((b"535 5.7.8 bad\r\n", True), (b"454 4.7.0 later\r\n", False)):
            h = _start(self, username="alice", password="pw")
            self.assertEqual(h.server(reply), b"QUIT\r\n")
            e = self.failureResultOf(h.result, SMTPClientError).value
            self.assertEqual((e.code, e.permanent, e.stage), (int(reply[:3]), permanent, "auth"))

    def test_no_password_in_cleartext(self):
        """Without TLS to a non-loopback server, the password is never sent."""
        h = _start(self, username="alice", password="pw", peer="192.0.2.7")
        self.assertEqual(h.ehlo_answer, b"QUIT\r\n")
        e = self.failureResultOf(h.result, SMTPClientError).value
        self.assertEqual((e.permanent, e.stage), (True, "auth"))

    def test_allow_plaintext_auth(self):
        """allow_plaintext_auth=True sends it anyway."""
        h = _start(self, username="alice", password="pw", peer="192.0.2.7",
                   allow_plaintext_auth=True)
        self.assertTrue(h.ehlo_answer.startswith(b"AUTH PLAIN "))

    def test_starttls_required_not_offered(self):
        """tls="starttls" and no STARTTLS advertised: transient error, nothing sent."""
        h = _start(self, tls="starttls", ehlo=EHLO_PLAIN)
        self.assertEqual(h.ehlo_answer, b"QUIT\r\n")
        e = self.failureResultOf(h.result, SMTPClientError).value
        self.assertEqual((e.permanent, e.stage), (False, "starttls"))

    def test_starttls_refused(self):
        """STARTTLS answered 454 with tls="starttls": an error; opportunistic goes on in clear."""
        h = _start(self, tls="starttls")
        self.assertEqual(h.server(b"454 4.7.0 TLS not available\r\n"), b"QUIT\r\n")
        self.assertEqual(self.failureResultOf(h.result, SMTPClientError).value.code, 454)
        h = _start(self, tls="opportunistic")
        self.assertTrue(h.server(b"454 4.7.0 TLS not available\r\n").startswith(b"MAIL FROM:"))

    def test_opportunistic_without_starttls(self):
        """tls="opportunistic" to a server without STARTTLS sends in clear."""
        h = _start(self, tls="opportunistic", ehlo=EHLO_PLAIN)
        self.assertTrue(h.ehlo_answer.startswith(b"MAIL FROM:"))


class DeliverToHostsTests(SynchronousTestCase):
    """deliver_to_hosts tries the next host only for connect and greeting failures."""

    def _attempt(self, hosts):
        reactor = MemoryReactorClock()
        d = deliver_to_hosts(hosts, "a@example.org", ["b@example.org"], MESSAGE,
                             tls="none", reactor=reactor, timeout=30)
        reactor.advance(0)
        return reactor, d

    def test_next_host_after_refused_connection_and_421(self):
        """Host 1 refuses the connection, host 2 greets 421, host 3 takes the message."""
        reactor, d = self._attempt([("10.0.0.1", 25), ("10.0.0.2", 25), ("10.0.0.3", 25)])
        reactor.tcpClients[0][2].clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
        reactor.advance(1)
        self.assertEqual(len(reactor.tcpClients), 2)  # (MemoryReactor resolves all to 127.0.0.1)
        h = Harness.__new__(Harness)
        h.reactor, h.transport = reactor, TLSStringTransport()
        h.connect(1)
        h.server(b"421 busy\r\n")
        h.proto.connectionLost(Failure(error.ConnectionDone()))
        reactor.advance(0)
        self.assertEqual(len(reactor.tcpClients), 3)
        h.transport = TLSStringTransport(hostAddress=IPv4Address("TCP", "10.0.0.9", 1))
        h.connect(2)
        h.server(b"220 hi\r\n")
        h.server(b"250 x\r\n")
        h.server(b"250 Ok\r\n")
        h.server(b"250 Ok\r\n")
        h.server(b"354 go\r\n")
        h.server(b"250 queued\r\n")
        h.server(b"221 bye\r\n")
        self.assertEqual(self.successResultOf(d).text, "queued")

    def test_all_fail(self):
        """Every host unreachable: the (transient) failure of the last one."""
        reactor, d = self._attempt([("10.0.0.1", 25), ("10.0.0.2", 25)])
        for i in range(2):
            reactor.tcpClients[i][2].clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
            reactor.advance(1)
        e = self.failureResultOf(d, SMTPClientError).value
        self.assertEqual((e.stage, e.permanent), ("connect", False))
        self.assertIn("10.0.0.2", e.text)

    def test_later_failure_ends_the_attempt(self):
        """A refusal after the greeting (550 to MAIL) does not try the next host."""
        reactor, d = self._attempt([("10.0.0.1", 25), ("10.0.0.2", 25)])
        h = Harness.__new__(Harness)
        h.reactor, h.transport = reactor, TLSStringTransport()
        h.connect(0)
        h.server(b"220 hi\r\n")
        h.server(b"250 x\r\n")
        h.server(b"550 no\r\n")
        self.assertEqual(self.failureResultOf(d, SMTPClientError).value.stage, "mail")
        self.assertEqual(len(reactor.tcpClients), 1)


class MailSendArgumentTests(SynchronousTestCase):
    """C{appnet mail send}: argument handling."""

    def test_server_address(self):
        """host:port, [v6]:port, a bare host, and the defaults per TLS mode."""
        self.assertEqual(server_address(None, "starttls"), ("127.0.0.1", 10587))
        self.assertEqual(server_address(None, "implicit"), ("127.0.0.1", 10465))
        self.assertEqual(server_address("mx.example.org:25", "none"), ("mx.example.org", 25))
        self.assertEqual(server_address("[::1]:2525", "none"), ("::1", 2525))
        self.assertEqual(server_address("[::1]", "starttls"), ("::1", 10587))
        self.assertEqual(server_address("mail.example.org", "starttls"), ("mail.example.org", 10587))
        for bad in ("h:x", "h:0", "h:70000"):
            self.assertRaises(ValueError, server_address, bad, "none")

    def test_parse_and_build(self):
        """Repeated --to/--cc/--bcc/--attach; Bcc goes to the envelope only."""
        path = self.mktemp() + ".txt"
        with open(path, "wb") as f:
            f.write(b"attached")
        args = _parser().parse_args(
            ["mail", "send", "--from", "a@example.org", "--to", "b@example.org", "--to",
             "c@example.org", "--cc", "d@example.org", "--bcc", "e@example.org",
             "--subject", "S", "--attach", path, "--tls", "implicit", "--user", "a"])
        self.assertEqual((args.command, args.action, args.tls, args.user),
                         ("mail", "send", "implicit", "a"))
        recipients, msg = build_message(args, "body\n")
        self.assertEqual(recipients, ["b@example.org", "c@example.org", "d@example.org",
                                      "e@example.org"])
        self.assertEqual(msg["To"], "b@example.org, c@example.org")
        self.assertEqual(msg["Cc"], "d@example.org")
        self.assertIsNone(msg["Bcc"])
        self.assertEqual(mime.attachments(msg),
                         [(os.path.basename(path), "text/plain", b"attached")])

    def test_required(self):
        """--from and --to are required; --tls takes only the known modes."""
        for argv in (["mail", "send", "--to", "b@x"], ["mail", "send", "--from", "a@x"],
                     ["mail", "send", "--from", "a@x", "--to", "b@x", "--tls", "ssl"]):
            self.patch(sys, "stderr", io.StringIO())
            self.assertRaises(SystemExit, _parser().parse_args, argv)
