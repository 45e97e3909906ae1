"""
Unit tests for appnet.smtp.server and appnet.smtp.delivery: the ESMTP
dialogue over a StringTransport, time from a MemoryReactorClock, mail in a
MemoryMailboxStore, a fake outbound queue.
"""

from __future__ import annotations

import base64
import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from appnet import accounts
from appnet.accounts import AccountChecker, AccountDatabase, AppnetRealm, make_portal
from appnet.errors import QuotaExceeded
from appnet.mailbox.memory import MemoryMailboxStore
from appnet.smtp.delivery import Delivery, submission_headers
from appnet.smtp.server import (
    MAX_ERRORS,
    MX,
    SUBMISSION,
    ContentError,
    ISMTPSubmitter,
    SMTPServerFactory,
    Submitter,
    unstuff,
)
from appnet.stats import ServiceStats

REPLY = re.compile(rb"\A(?:[2-5]\d\d[ -][^\r\n]*\r\n)*\Z")

ENVELOPE = b"EHLO client.example\r\nMAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n"
BODY = b"Subject: hi\r\n\r\nHello\r\n"


class TLSStringTransport(StringTransport):
    """A StringTransport that records startTLS."""

    tls_started = None

    def startTLS(self, options: object) -> None:
        self.tls_started = options


class CountingTransport(TLSStringTransport):
    """Counts write calls, to prove replies are coalesced."""

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class FakeQueue:
    """An outbound queue recording what it was given."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, list[str], bytes]] = []

    def enqueue(self, sender: str, recipients: list[str], message: bytes) -> defer.Deferred[str]:
        self.queued.append((sender, recipients, message))
        return defer.succeed(f"q{len(self.queued)}")


class SMTPTestMixin:
    """An SMTP server over memory stores with users alice/secret and bob/hunter2."""

    def setUp(self) -> None:
        self.patch(accounts, "SCRYPT_N", 16)
        self.clock = MemoryReactorClock()
        directory = self.mktemp()
        os.makedirs(directory)
        self.db = AccountDatabase(os.path.join(directory, "users.json"))
        self.db.add("alice", "secret")
        self.db.add("bob", "hunter2")
        self.db.add("carol", "pw", quota=20)
        self.store = MemoryMailboxStore(user_exists=self.db.exists, quota_for=self.db.quota)
        self.queue = FakeQueue()
        self.delivery = Delivery(
            self.store,
            user_exists=self.db.exists,
            quota_for=self.db.quota,
            local_domains=["localhost", "example.net"],
            hostname="mx.example.net",
            queue=self.queue,
        )
        realm = AppnetRealm()
        realm.register(ISMTPSubmitter, lambda name: (Submitter(name), lambda: None))
        checker = AccountChecker(
            self.db,
            failed_delay=1.0,
            reactor=self.clock,
            run_blocking=lambda f, *a: defer.maybeDeferred(f, *a),
        )
        self.portal = make_portal(realm, checker)
        self.stats = ServiceStats("smtp")
        self.trace: list[str] = []

    def connect(self, peer: str = "127.0.0.1", transport_class: type = TLSStringTransport, **kw):
        kw.setdefault("reactor", self.clock)
        kw.setdefault("hostname", "mx.example.net")
        kw.setdefault("portal", self.portal)
        factory = SMTPServerFactory(self.delivery, stats=self.stats, trace_emit=self.trace.append, **kw)
        address = IPv4Address("TCP", peer, 40000)
        proto = factory.buildProtocol(address)
        transport = transport_class(peerAddress=address)
        proto.makeConnection(transport)
        return proto, transport

    def send(self, proto, transport, data: bytes) -> bytes:
        transport.clear()
        proto.dataReceived(data)
        return transport.value()

    def inbox(self, user: str = "alice") -> list[bytes]:
        folder = self.store.folder(user)
        return [folder.read_message(m.uid) for m in folder.messages()]

    def codes(self, out: bytes) -> list[bytes]:
        self.assertRegex(out, REPLY)
        return [line[:3] for line in out.split(b"\r\n") if line[3:4] == b" "]


class DialogueTests(SMTPTestMixin, SynchronousTestCase):
    """The RFC 5321 dialogue and the extensions the EHLO reply names."""

    def test_greeting(self) -> None:
        """The greeting is 220 with the host name, without an enhanced code."""
        _, t = self.connect()
        self.assertEqual(t.value(), b"220 mx.example.net ESMTP appnet ready\r\n")

    def test_ehlo_extensions(self) -> None:
        """EHLO lists every extension; AUTH on loopback, STARTTLS with TLS options."""
        proto, t = self.connect(tls_options=object(), max_message_size=1000)
        out = self.send(proto, t, b"EHLO c.example\r\n")
        lines = out.split(b"\r\n")[:-1]
        self.assertEqual(lines[0], b"250-mx.example.net greets c.example")
        self.assertEqual(
            [line[4:] for line in lines[1:]],
            [b"PIPELINING", b"SIZE 1000", b"8BITMIME", b"ENHANCEDSTATUSCODES", b"SMTPUTF8",
             b"CHUNKING", b"STARTTLS", b"AUTH PLAIN LOGIN"],
        )
        self.assertTrue(lines[-1].startswith(b"250 "))

    def test_textbook_transaction(self) -> None:
        """HELO, MAIL, RCPT, DATA, QUIT: the message lands in the inbox with trace fields."""
        proto, t = self.connect()
        out = self.send(proto, t, b"HELO c.example\r\n")
        self.assertEqual(out, b"250 mx.example.net\r\n")
        self.assertEqual(self.send(proto, t, b"MAIL FROM:<bob@example.org>\r\n"), b"250 2.1.0 sender <bob@example.org> OK\r\n")
        self.assertEqual(self.send(proto, t, b"RCPT TO:<Alice@LOCALHOST>\r\n"), b"250 2.1.5 recipient <Alice@LOCALHOST> OK\r\n")
        self.assertEqual(self.send(proto, t, b"DATA\r\n"), b"354 end data with <CR><LF>.<CR><LF>\r\n")
        out = self.send(proto, t, BODY + b".\r\n")
        self.assertTrue(out.startswith(b"250 2.0.0 OK queued as "), out)
        [message] = self.inbox()
        self.assertTrue(message.startswith(b"Return-Path: <bob@example.org>"))
        self.assertIn(b"Received: from c.example ([127.0.0.1])", message)
        self.assertIn(b"by mx.example.net (appnet) with SMTP id ", message)
        self.assertIn(b"for <Alice@LOCALHOST>", message)
        self.assertTrue(message.replace(b"\r\n", b"\n").endswith(b"Subject: hi\n\nHello\n"))
        self.assertNotIn(b"Message-ID", message)  # MX adds none
        self.assertEqual(self.send(proto, t, b"QUIT\r\n"), b"221 2.0.0 mx.example.net closing connection\r\n")
        self.assertTrue(t.disconnecting)
        self.assertEqual(self.stats["messages"], 1)

    def test_null_sender_and_postmaster(self) -> None:
        """MAIL FROM:<> (bounces) and RCPT TO:<Postmaster> are accepted."""
        self.db.add("postmaster", "pw")
        proto, t = self.connect()
        out = self.send(proto, t, b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n")
        self.assertEqual(self.codes(out), [b"250", b"250", b"250", b"354"])
        self.assertEqual(self.codes(self.send(proto, t, BODY + b".\r\n")), [b"250"])
        self.assertTrue(self.inbox("postmaster")[0].startswith(b"Return-Path: <>"))

    def test_small_commands(self) -> None:
        """NOOP, RSET, VRFY (252, no harvesting), HELP, EXPN (502)."""
        proto, t = self.connect()
        out = self.send(proto, t, b"NOOP\r\nRSET\r\nVRFY alice\r\nHELP\r\nEXPN staff\r\n")
        self.assertEqual(self.codes(out), [b"250", b"250", b"252", b"214", b"502"])
        self.assertIn(b"252 2.5.0 ", out)

    def test_rset_aborts_transaction(self) -> None:
        """RSET forgets the sender and recipients: RCPT then needs MAIL again."""
        proto, t = self.connect()
        out = self.send(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRSET\r\nRCPT TO:<alice@localhost>\r\n")
        self.assertEqual(self.codes(out), [b"250", b"250", b"250", b"503"])

    def test_unknown_user(self) -> None:
        """An unknown local user gets 550 5.1.1 at RCPT."""
        proto, t = self.connect()
        out = self.send(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<nobody@localhost>\r\n")
        self.assertTrue(out.endswith(b"550 5.1.1 <nobody@localhost>: no such user here\r\n"))

    def test_quota_full_at_rcpt(self) -> None:
        """A recipient the declared SIZE would take over quota gets 552 5.2.2 at RCPT."""
        self.store.deliver("carol", b"0123456789abcde")
        proto, t = self.connect()
        out = self.send(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c> SIZE=10\r\nRCPT TO:<carol@localhost>\r\n")
        self.assertTrue(out.endswith(b"552 5.2.2 <carol@localhost>: mailbox full\r\n"))

    def test_two_local_recipients(self) -> None:
        """One message to two users: one copy each, no 'for' clause, one 250."""
        proto, t = self.connect()
        out = self.send(
            proto, t,
            b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<alice@localhost>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n",
        )
        self.assertEqual(self.codes(out), [b"250", b"250", b"250", b"250", b"354"])
        self.assertEqual(self.codes(self.send(proto, t, BODY + b".\r\n")), [b"250"])
        for user in ("alice", "bob"):
            [message] = self.inbox(user)
            self.assertNotIn(b"\tfor <", message)


class PipeliningTests(SMTPTestMixin, SynchronousTestCase):
    """RFC 2920: replies in command order, one write per group."""

    def test_group_replied_in_one_write(self) -> None:
        """A pipelined group gets its replies in order, in a single write."""
        proto, t = self.connect(transport_class=CountingTransport)
        t.writes = 0
        out = self.send(proto, t, ENVELOPE)
        self.assertEqual(self.codes(out), [b"250", b"250", b"250", b"354"])
        self.assertEqual(t.writes, 1)

    def test_commands_wait_for_pending_delivery(self) -> None:
        """Commands after the final dot wait, unparsed, until delivery is durable."""
        pending: list[defer.Deferred[None]] = []
        self.store.deliver = lambda user, message, **kw: pending.append(defer.Deferred()) or pending[-1]
        proto, t = self.connect()
        self.send(proto, t, ENVELOPE)
        out = self.send(proto, t, BODY + b".\r\nMAIL FROM:<x@y.z>\r\nNOOP\r\nQUIT\r\n")
        self.assertEqual(out, b"")
        self.assertFalse(t.disconnecting)
        t.clear()
        pending[0].callback(None)
        out = t.value()
        self.assertEqual(self.codes(out), [b"250", b"250", b"250", b"221"])
        self.assertIn(b"queued as", out.split(b"\r\n")[0])
        self.assertTrue(t.disconnecting)

    def test_reading_pauses_behind_pending_delivery(self) -> None:
        """Over 1 MiB queued behind a pending delivery pauses reading; it resumes once processed."""
        pending: list[defer.Deferred[None]] = []
        self.store.deliver = lambda user, message, **kw: pending.append(defer.Deferred()) or pending[-1]
        proto, t = self.connect()
        self.send(proto, t, ENVELOPE)
        self.send(proto, t, BODY + b".\r\n")
        proto.dataReceived(b"NOOP\r\n" * 200_000)
        self.assertEqual(t.producerState, "paused")
        pending[0].callback(None)
        self.assertEqual(t.producerState, "producing")
        self.assertEqual(len(self.codes(t.value())), 1 + 200_000)

    def test_auth_pending_holds_mail(self) -> None:
        """MAIL pipelined behind AUTH is answered after the AUTH result."""
        original = self.portal.login
        gate: defer.Deferred[None] = defer.Deferred()
        self.portal.login = lambda *a: gate.addCallback(lambda _: original(*a))
        proto, t = self.connect(role=SUBMISSION)
        plain = base64.b64encode(b"\0alice\0secret")
        out = self.send(proto, t, b"EHLO c\r\nAUTH PLAIN " + plain + b"\r\nMAIL FROM:<alice@localhost>\r\n")
        self.assertEqual(self.codes(out), [b"250"])
        t.clear()
        gate.callback(None)
        self.assertEqual(self.codes(t.value()), [b"235", b"250"])


class DataTests(SMTPTestMixin, SynchronousTestCase):
    """DATA content: dot-stuffing, line ends, limits; nothing half-delivered."""

    def deliver(self, content: bytes, **kw) -> tuple[bytes, list[bytes]]:
        proto, t = self.connect(**kw)
        self.send(proto, t, ENVELOPE)
        out = self.send(proto, t, content)
        self.assertEqual(self.codes(self.send(proto, t, b"NOOP\r\n")), [b"250"])
        return out, self.inbox()

    def body_of(self, message: bytes) -> bytes:
        return message.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]

    def test_dot_unstuffing(self) -> None:
        """'..' at a line start loses one dot; a line '.' alone ends the message."""
        out, [message] = self.deliver(b"S: x\r\n\r\n..one\r\n...\r\nmid.dle\r\n.\r\nNOOP\r\n")
        self.assertEqual(self.codes(out), [b"250", b"250"])
        self.assertEqual(self.body_of(message), b".one\n..\nmid.dle\n")

    def test_missing_dot_stuffing(self) -> None:
        """A client that does not stuff: its '.' line ends the message, the rest are commands."""
        out, [message] = self.deliver(b"S: x\r\n\r\nbefore\r\n.\r\nafter\r\n")
        self.assertEqual(self.codes(out), [b"250", b"500"])
        self.assertEqual(self.body_of(message), b"before\n")

    def test_bare_lf_normalised(self) -> None:
        """Bare LF line ends are taken as line ends; LF.LF does not end DATA."""
        out, messages = self.deliver(b"S: x\n\nline\n.\nstill data\r\n.\r\n")
        self.assertEqual(self.codes(out), [b"250"])
        [message] = messages
        self.assertEqual(self.body_of(message), b"line\n\nstill data\n")

    def test_smuggling_variants_are_content(self) -> None:
        """CRLF.LF and LF.CRLF do not end DATA: a hidden second envelope stays content."""
        smuggled = b"S: x\r\n\r\nfirst\r\n.\nMAIL FROM:<evil@x.y>\r\nmore\n.\r\nlast\r\n.\r\n"
        out, [message] = self.deliver(smuggled)
        self.assertEqual(self.codes(out), [b"250"])
        self.assertEqual(self.body_of(message), b"first\n\nMAIL FROM:<evil@x.y>\nmore\n\nlast\n")

    def test_bare_cr_rejected(self) -> None:
        """A bare CR rejects the message (554 5.6.0); CR.CR does not end DATA."""
        out, messages = self.deliver(b"S: x\r\n\r\nbad\r.\rline\r\n.\r\n")
        self.assertEqual(out, b"554 5.6.0 bare CR in message (RFC 5321 2.3.8)\r\n")
        self.assertEqual(messages, [])

    def test_nul_rejected(self) -> None:
        """A NUL octet in the content rejects the message."""
        out, messages = self.deliver(b"S: x\r\n\r\nnul\0here\r\n.\r\n")
        self.assertEqual(out, b"554 5.6.0 NUL octet in message\r\n")
        self.assertEqual(messages, [])

    def test_long_line_rejected(self) -> None:
        """A content line over 1000 octets with its CRLF rejects the message; 998 is fine."""
        out, messages = self.deliver(b"S: x\r\n\r\n" + b"a" * 998 + b"\r\n.\r\n")
        self.assertEqual(self.codes(out), [b"250"])
        out, messages = self.deliver(b"S: x\r\n\r\n" + b"a" * 999 + b"\r\n.\r\n")
        self.assertEqual(out, b"554 5.6.0 message has a line longer than 1000 octets\r\n")
        self.assertEqual(len(messages), 1)  # only the first

    def test_message_over_size(self) -> None:
        """More octets than SIZE allows: 552 5.3.4 after the dot, nothing kept."""
        out, messages = self.deliver(b"S: x\r\n\r\n" + b"x" * 80 + b"\r\n" * 100 + b".\r\n", max_message_size=100)
        self.assertEqual(out, b"552 5.3.4 message size exceeds fixed maximum message size\r\n")
        self.assertEqual(messages, [])

    def test_empty_message(self) -> None:
        """A '.' right after 354 delivers an empty message (trace fields only)."""
        out, [message] = self.deliver(b".\r\n")
        self.assertEqual(self.codes(out), [b"250"])
        fields = [line for line in message.replace(b"\r\n", b"\n").split(b"\n") if line[:1] not in (b"\t", b"")]
        self.assertEqual([f.split(b":")[0] for f in fields], [b"Return-Path", b"Received"])

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
    def test_any_packet_split(self, cuts: list[int]) -> None:
        """However the content is cut into packets, the same message is delivered."""
        self.setUp()
        content = b"Subject: s\r\n\r\n..a\r\nb\r\n\r\n.\r\nNOOP\r\n"
        proto, t = self.connect()
        self.send(proto, t, ENVELOPE)
        t.clear()
        pos = 0
        for cut in cuts:
            proto.dataReceived(content[pos : pos + cut])
            pos += cut
        proto.dataReceived(content[pos:])
        self.assertEqual(self.codes(t.value()), [b"250", b"250"])
        [message] = self.inbox()
        self.assertEqual(self.body_of(message), b".a\nb\n\n")

    def test_unstuff(self) -> None:
        """unstuff: CRLF out, one leading dot per line removed, errors raised."""
        self.assertEqual(unstuff(b".a\r\nb\n..\r\n"), b"a\r\nb\r\n.\r\n")
        self.assertRaises(ContentError, unstuff, b"a\rb\r\n")
        self.assertRaises(ContentError, unstuff, b"a\0b\r\n")


class ChunkingTests(SMTPTestMixin, SynchronousTestCase):
    """RFC 3030 BDAT: binary chunks, pipelined, always consumed."""

    def test_pipelined_chunks(self) -> None:
        """Two chunks pipelined with the envelope: binary content kept as sent."""
        proto, t = self.connect()
        out = self.send(
            proto, t,
            b"EHLO c\r\nMAIL FROM:<a@b.c> BODY=8BITMIME\r\nRCPT TO:<alice@localhost>\r\n"
            b"BDAT 13\r\nS: x\r\n\r\nbin\r\nBDAT 6 LAST\r\n\xff.\r\n\r\nNOOP\r\n",
        )
        self.assertEqual(self.codes(out), [b"250", b"250", b"250", b"250", b"250", b"250"])
        self.assertIn(b"250 2.0.0 13 octets received\r\n", out)
        [message] = self.inbox()
        self.assertTrue(message.replace(b"\r\n", b"\n").endswith(b"S: x\n\nbin\n\xff.\n\n"))

    def test_bdat_without_transaction(self) -> None:
        """BDAT without MAIL: the chunk is consumed, 503, and the session goes on."""
        proto, t = self.connect()
        out = self.send(proto, t, b"EHLO c\r\nBDAT 10 LAST\r\nQUIT\r\nxxxxNOOP\r\n")
        self.assertEqual(self.codes(out), [b"250", b"503", b"250"])

    def test_bdat_over_size(self) -> None:
        """Chunks beyond the size limit: 552 5.3.4, nothing delivered."""
        proto, t = self.connect(max_message_size=10)
        out = self.send(
            proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<alice@localhost>\r\nBDAT 8\r\n12345678BDAT 8 LAST\r\n12345678"
        )
        self.assertEqual(self.codes(out), [b"250", b"250", b"250", b"250", b"552"])
        self.assertEqual(self.inbox(), [])

    def test_bdat_zero_last_and_syntax(self) -> None:
        """BDAT 0 LAST ends the message; a malformed BDAT gets 501."""
        proto, t = self.connect()
        out = self.send(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<alice@localhost>\r\nBDAT 3\r\nabcBDAT 0 LAST\r\nBDAT x\r\n")
        self.assertEqual(self.codes(out), [b"250", b"250", b"250", b"250", b"250", b"501"])
        self.assertTrue(self.inbox()[0].endswith(b"abc"))

    def test_data_after_bdat(self) -> None:
        """DATA after a BDAT chunk of the same transaction is out of order."""
        proto, t = self.connect()
        out = self.send(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<alice@localhost>\r\nBDAT 1\r\naDATA\r\n")
        self.assertEqual(self.codes(out)[-1], b"503")


class EnvelopeTests(SMTPTestMixin, SynchronousTestCase):
    """MAIL and RCPT: order, parameters, limits, relay rules."""

    def test_out_of_order(self) -> None:
        """MAIL before HELO, RCPT before MAIL, DATA before RCPT, nested MAIL: 503 5.5.1."""
        proto, t = self.connect()
        out = self.send(proto, t, b"MAIL FROM:<a@b.c>\r\n")
        self.assertEqual(out, b"503 5.5.1 send HELO or EHLO first\r\n")
        out = self.send(proto, t, b"EHLO c\r\nRCPT TO:<alice@localhost>\r\nDATA\r\nMAIL FROM:<a@b.c>\r\nDATA\r\nMAIL FROM:<a@b.c>\r\n")
        self.assertEqual(self.codes(out), [b"250", b"503", b"503", b"250", b"554", b"503"])
        self.assertIn(b"503 5.5.1 nested MAIL command", out)

    def test_recipient_limit(self) -> None:
        """The 101st recipient gets 452 4.5.3; the first 100 get the message."""
        proto, t = self.connect()
        rcpts = b"".join(b"RCPT TO:<alice@localhost>\r\n" for _ in range(101))
        out = self.send(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n" + rcpts + b"DATA\r\n")
        codes = self.codes(out)
        self.assertEqual(codes[:102], [b"250"] * 102)
        self.assertEqual(codes[102:], [b"452", b"354"])
        self.assertIn(b"452 4.5.3 too many recipients", out)

    def test_size_parameter(self) -> None:
        """MAIL SIZE= over the limit: 552 5.3.4 at MAIL; a bad SIZE value: 501."""
        proto, t = self.connect(max_message_size=1000)
        out = self.send(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c> SIZE=1001\r\nMAIL FROM:<a@b.c> SIZE=x\r\nMAIL FROM:<a@b.c> SIZE=1000\r\n")
        self.assertEqual(self.codes(out), [b"250", b"552", b"501", b"250"])
        self.assertIn(b"552 5.3.4 ", out)

    def test_parameters(self) -> None:
        """BODY=8BITMIME and AUTH=<> are accepted; unknown ones get 555; params need EHLO."""
        proto, t = self.connect()
        out = self.send(
            proto, t,
            b"EHLO c\r\nMAIL FROM:<a@b.c> BODY=BINARYMIME\r\nMAIL FROM:<a@b.c> FOO=1\r\n"
            b"MAIL FROM:<a@b.c> BODY=8BITMIME AUTH=<>\r\nRCPT TO:<alice@localhost> NOTIFY=NEVER\r\n",
        )
        self.assertEqual(self.codes(out), [b"250", b"555", b"555", b"250", b"555"])
        out = self.send(proto, t, b"HELO c\r\nMAIL FROM:<a@b.c> BODY=8BITMIME\r\n")
        self.assertEqual(self.codes(out), [b"250", b"555"])

    def test_syntax_errors(self) -> None:
        """Malformed paths get 501 with the sender or recipient status."""
        proto, t = self.connect()
        out = self.send(proto, t, b"EHLO c\r\nMAIL FROM:a@b.c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<@>\r\nRCPT alice\r\n")
        self.assertEqual(self.codes(out), [b"250", b"501", b"250", b"501", b"501"])
        self.assertIn(b"501 5.1.7 ", out)
        self.assertIn(b"501 5.1.3 ", out)

    def test_smtputf8(self) -> None:
        """A UTF-8 address needs SMTPUTF8 (553 5.6.7); with it, Received says UTF8SMTP."""
        proto, t = self.connect()
        out = self.send(proto, t, "EHLO c\r\nMAIL FROM:<jösé@exämple.org>\r\n".encode())
        self.assertEqual(self.codes(out), [b"250", b"553"])
        self.assertIn(b"553 5.6.7 ", out)
        out = self.send(
            proto, t,
            "MAIL FROM:<jösé@exämple.org> SMTPUTF8\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n".encode(),
        )
        self.assertEqual(self.codes(out), [b"250", b"250", b"354"])
        self.send(proto, t, "Subject: ünïcode\r\n\r\nhi\r\n.\r\n".encode())
        [message] = self.inbox()
        self.assertIn(b"with UTF8SMTP id", message)
        self.assertIn("Return-Path: <jösé@exämple.org>".encode(), message)

    def test_mx_never_relays(self) -> None:
        """The MX refuses remote recipients, even after AUTH: 550 5.7.1."""
        proto, t = self.connect()
        plain = base64.b64encode(b"\0alice\0secret")
        out = self.send(proto, t, b"EHLO c\r\nAUTH PLAIN " + plain + b"\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@example.com>\r\n")
        self.assertEqual(self.codes(out), [b"250", b"235", b"250", b"550"])
        self.assertIn(b"550 5.7.1 <x@example.com>: relay access denied", out)
        self.assertEqual(self.stats["relay_denied"], 1)

    def test_address_literal_refused(self) -> None:
        """Address literals are refused as recipients."""
        proto, t = self.connect()
        out = self.send(proto, t, b"EHLO c\r\nMAIL FROM:<a@[192.0.2.1]>\r\nRCPT TO:<alice@[127.0.0.1]>\r\n")
        self.assertEqual(self.codes(out), [b"250", b"250", b"550"])


class SubmissionTests(SMTPTestMixin, SynchronousTestCase):
    """The submission role: AUTH required, relay for authenticated users."""

    def login_plain(self, proto, t) -> bytes:
        return self.send(proto, t, b"EHLO c\r\nAUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n")

    def test_auth_required(self) -> None:
        """MAIL before AUTH on submission: 530 5.7.0."""
        proto, t = self.connect(role=SUBMISSION)
        out = self.send(proto, t, b"EHLO c\r\nMAIL FROM:<alice@localhost>\r\n")
        self.assertTrue(out.endswith(b"530 5.7.0 authentication required\r\n"))

    def test_submission_relays_and_completes_headers(self) -> None:
        """After AUTH, a remote recipient is queued; Message-ID and Date are added."""
        proto, t = self.connect(role=SUBMISSION)
        self.assertTrue(self.login_plain(proto, t).endswith(b"235 2.7.0 authentication successful\r\n"))
        out = self.send(
            proto, t,
            b"MAIL FROM:<alice@localhost>\r\nRCPT TO:<x@example.com>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n",
        )
        self.assertEqual(self.codes(out), [b"250", b"250", b"250", b"354"])
        self.assertEqual(self.codes(self.send(proto, t, BODY + b".\r\n")), [b"250"])
        [(sender, rcpts, message)] = self.queue.queued
        self.assertEqual((sender, rcpts), ("alice@localhost", ["x@example.com"]))
        self.assertIn(b"with ESMTPA id", message)
        self.assertIn(b"\r\nMessage-ID: <", message)
        self.assertIn(b"\r\nDate: ", message)
        self.assertNotIn(b"Return-Path", message)
        [local] = self.inbox("bob")
        self.assertTrue(local.startswith(b"Return-Path: <alice@localhost>"))

    def test_existing_headers_kept(self) -> None:
        """submission_headers adds nothing when Message-ID and Date are there."""
        msg = b"Date: x\r\nmessage-id: <a@b>\r\n\r\nbody\r\nDate: not a header\r\n"
        self.assertEqual(submission_headers(msg, "h"), b"")
        self.assertTrue(submission_headers(b"Subject: s\r\n\r\nDate: x\r\n", "h").startswith(b"Message-ID: <"))

    def test_auth_login(self) -> None:
        """AUTH LOGIN: two 334 challenges, then 235."""
        proto, t = self.connect(role=SUBMISSION)
        out = self.send(proto, t, b"EHLO c\r\nAUTH LOGIN\r\n")
        self.assertTrue(out.endswith(b"334 VXNlcm5hbWU6\r\n"))
        self.assertEqual(self.send(proto, t, base64.b64encode(b"alice") + b"\r\n"), b"334 UGFzc3dvcmQ6\r\n")
        self.assertEqual(self.codes(self.send(proto, t, base64.b64encode(b"secret") + b"\r\n")), [b"235"])
        self.assertEqual(self.stats["logins_ok"], 1)

    def test_auth_failures_close(self) -> None:
        """Wrong passwords get 535 5.7.8 after the delay; the third closes with 421."""
        proto, t = self.connect(role=SUBMISSION)
        bad = base64.b64encode(b"\0alice\0wrong")
        self.send(proto, t, b"EHLO c\r\n")
        for attempt in range(3):
            t.clear()
            proto.dataReceived(b"AUTH PLAIN " + bad + b"\r\n")
            self.assertEqual(t.value(), b"")
            self.clock.advance(1.0)
            self.assertIn(b"535 5.7.8 ", t.value())
        self.assertIn(b"421 4.7.0 ", t.value())
        self.assertTrue(t.disconnecting)
        self.assertEqual(self.stats["logins_failed"], 3)

    def test_auth_refused_without_tls_from_remote(self) -> None:
        """From a non-loopback address without TLS, AUTH is not offered and is refused."""
        proto, t = self.connect(peer="192.0.2.9", role=SUBMISSION, tls_options=object())
        out = self.send(proto, t, b"EHLO c\r\n")
        self.assertNotIn(b"AUTH", out)
        out = self.send(proto, t, b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n")
        self.assertEqual(out, b"538 5.7.11 encryption required for requested authentication mechanism\r\n")
        out = self.send(proto, t, b"MAIL FROM:<alice@localhost>\r\n")
        self.assertEqual(out, b"530 5.7.0 must issue a STARTTLS command first\r\n")

    def test_auth_over_implicit_tls(self) -> None:
        """On smtps (implicit TLS) a remote client may AUTH; Received says ESMTPSA."""
        proto, t = self.connect(peer="192.0.2.9", role=SUBMISSION, implicit_tls=True)
        out = self.send(proto, t, b"EHLO c\r\nAUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n")
        self.assertEqual(self.codes(out), [b"250", b"235"])
        self.send(proto, t, b"MAIL FROM:<alice@localhost>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
        self.send(proto, t, BODY + b".\r\n")
        self.assertIn(b"with ESMTPSA id", self.inbox("bob")[0])

    def test_sasl_cancel_and_bad_base64(self) -> None:
        """'*' cancels (501 5.0.0); bad base64 gets 501 5.5.2; unknown mechanism 504."""
        proto, t = self.connect(role=SUBMISSION)
        out = self.send(proto, t, b"EHLO c\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN !!!\r\nAUTH CRAM-MD5\r\n")
        self.assertEqual(self.codes(out), [b"250", b"334", b"501", b"501", b"504"])
        self.assertIn(b"501 5.0.0 ", out)
        self.assertIn(b"501 5.5.2 ", out)

    def test_starttls_resets_session(self) -> None:
        """STARTTLS: 220, TLS starts, plaintext after it is dropped, EHLO needed again."""
        options = object()
        proto, t = self.connect(peer="192.0.2.9", role=SUBMISSION, tls_options=options)
        out = self.send(proto, t, b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@x.y>\r\n")
        self.assertEqual(self.codes(out), [b"250", b"220"])
        self.assertIs(t.tls_started, options)
        out = self.send(proto, t, b"MAIL FROM:<alice@localhost>\r\n")
        self.assertEqual(out, b"503 5.5.1 send HELO or EHLO first\r\n")
        out = self.send(proto, t, b"EHLO c\r\n")
        self.assertNotIn(b"STARTTLS", out)
        self.assertIn(b"AUTH PLAIN LOGIN", out)

    def test_transcript_redacts(self) -> None:
        """The transcript hides AUTH data and summarises message content."""
        proto, t = self.connect(role=SUBMISSION, trace=True)
        self.login_plain(proto, t)
        self.send(proto, t, b"MAIL FROM:<alice@localhost>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
        self.send(proto, t, b"Subject: secret stuff\r\n\r\nbody\r\n.\r\n")
        text = "\n".join(self.trace)
        self.assertIn("AUTH PLAIN ****", text)
        self.assertNotIn(base64.b64encode(b"\0alice\0secret").decode(), text)
        self.assertNotIn("secret stuff", text)
        self.assertIn("message content", text)


class RobustnessTests(SMTPTestMixin, SynchronousTestCase):
    """Bad input: the protocol's own error, never a traceback, session alive or closed cleanly."""

    def test_overlong_command(self) -> None:
        """A command line over 1000 octets: 500 5.5.2, and the session goes on."""
        proto, t = self.connect()
        out = self.send(proto, t, b"NOOP " + b"x" * 1200 + b"\r\nNOOP\r\n")
        self.assertEqual(out, b"500 5.5.2 line too long\r\n250 2.0.0 OK\r\n")

    def test_unknown_command_and_nul(self) -> None:
        """Unknown commands get 500 5.5.1; NUL in a command 500 5.5.2."""
        proto, t = self.connect()
        out = self.send(proto, t, b"FOO bar\r\nNO\0OP\r\n\r\n")
        self.assertEqual(out, b"500 5.5.1 command unrecognized\r\n500 5.5.2 NUL octet in command\r\n500 5.5.1 command unrecognized\r\n")

    def test_too_many_errors(self) -> None:
        """After MAX_ERRORS errors the session ends with 421."""
        proto, t = self.connect()
        out = self.send(proto, t, b"BAD\r\n" * (MAX_ERRORS + 5))
        self.assertEqual(self.codes(out), [b"500"] * MAX_ERRORS + [b"421"])
        self.assertTrue(t.disconnecting)

    def test_idle_timeout(self) -> None:
        """A client that stalls gets 421 4.4.2 after idle_timeout, then the connection closes."""
        proto, t = self.connect(idle_timeout=300)
        self.send(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n")
        t.clear()
        self.clock.advance(299)
        self.assertEqual(t.value(), b"")
        self.clock.advance(2)
        self.assertEqual(t.value(), b"421 4.4.2 mx.example.net idle too long; closing connection\r\n")
        self.assertTrue(t.disconnecting)

    def test_stall_inside_data(self) -> None:
        """A stall in the middle of DATA times out too; nothing is delivered."""
        proto, t = self.connect(idle_timeout=300)
        self.send(proto, t, ENVELOPE + b"Subject: half\r\n")
        self.clock.advance(301)
        self.assertIn(b"421 4.4.2", t.value())
        proto.connectionLost(None)
        self.assertEqual(self.inbox(), [])

    def test_invalid_utf8_command(self) -> None:
        """A command argument that is not UTF-8 gets 500 5.5.2."""
        proto, t = self.connect()
        out = self.send(proto, t, b"EHLO \xff\xfe\r\n")
        self.assertEqual(out, b"500 5.5.2 command is not valid UTF-8\r\n")

    @settings(max_examples=150, deadline=None)
    @given(st.binary(max_size=3000))
    def test_garbage(self, data: bytes) -> None:
        """Any bytes get well-formed replies only, and nothing is delivered."""
        proto, t = self.connect()
        t.clear()
        proto.dataReceived(data)
        proto.dataReceived(b"\r\n")
        self.assertRegex(t.value(), REPLY)
        self.assertEqual(self.store._folders.get("alice"), None)


class DeliveryFailureTests(SMTPTestMixin, SynchronousTestCase):
    """Store failures: one reply per message, nothing reported delivered that was not."""

    def test_quota_at_delivery(self) -> None:
        """A quota error from the store for the only recipient: 552 5.2.2."""
        self.store.deliver = lambda user, message, **kw: defer.fail(QuotaExceeded(user))
        proto, t = self.connect()
        self.send(proto, t, ENVELOPE)
        self.assertEqual(self.send(proto, t, BODY + b".\r\n"), b"552 5.2.2 mailbox full\r\n")

    def test_all_fail(self) -> None:
        """Every copy failing with an unexpected error: 451 4.3.0, logged."""
        self.store.deliver = lambda user, message, **kw: defer.fail(OSError("disk"))
        proto, t = self.connect()
        self.send(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<alice@localhost>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
        self.assertEqual(self.send(proto, t, BODY + b".\r\n"), b"451 4.3.0 local delivery failed; try again later\r\n")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_partial_failure_queued(self) -> None:
        """One copy delivered, one failed: 250 (no duplicate on retry), the failed recipient queued for the relay."""
        real = self.store.deliver
        self.store.deliver = lambda user, message, **kw: defer.fail(OSError("disk")) if user == "bob" else real(user, message, **kw)
        proto, t = self.connect()
        self.send(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<alice@localhost>\r\nRCPT TO:<Bob@localhost>\r\nDATA\r\n")
        self.assertEqual(self.codes(self.send(proto, t, BODY + b".\r\n")), [b"250"])
        self.assertEqual(len(self.inbox()), 1)
        [(sender, rcpts, message)] = self.queue.queued
        self.assertEqual((sender, rcpts), ("a@b.c", ["Bob@localhost"]))
        self.assertTrue(message.startswith(b"Received: "))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_partial_failure_without_queue(self) -> None:
        """Without a queue a partial failure is accepted and logged."""
        self.delivery.queue = None
        real = self.store.deliver
        self.store.deliver = lambda user, message, **kw: defer.fail(OSError("disk")) if user == "bob" else real(user, message, **kw)
        proto, t = self.connect()
        self.send(proto, t, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<alice@localhost>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
        self.assertEqual(self.codes(self.send(proto, t, BODY + b".\r\n")), [b"250"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_store_raises_synchronously(self) -> None:
        """A store that raises instead of failing its Deferred: 451 4.3.0, logged, the session goes on."""

        def broken(user: str, message: bytes, **kw: object) -> defer.Deferred[None]:
            raise TypeError("bug")

        self.store.deliver = broken
        proto, t = self.connect()
        self.send(proto, t, ENVELOPE)
        out = self.send(proto, t, BODY + b".\r\nNOOP\r\n")
        self.assertEqual(out, b"451 4.3.0 internal server error; try again later\r\n250 2.0.0 OK\r\n")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertFalse(t.disconnecting)

    def test_bug_in_content_path_closes_cleanly(self) -> None:
        """An unexpected error while taking DATA content: 421, close, logged; nothing escapes dataReceived."""
        proto, t = self.connect()
        self.send(proto, t, ENVELOPE)
        self.patch(proto, "_data_received", lambda data: 1 / 0)
        out = self.send(proto, t, BODY + b".\r\n")
        self.assertEqual(out, b"421 4.3.0 mx.example.net internal error; closing connection\r\n")
        self.assertTrue(t.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_no_queue(self) -> None:
        """Without an outbound queue, a remote recipient on submission gets 451 4.3.2."""
        self.delivery.queue = None
        proto, t = self.connect(role=SUBMISSION)
        self.send(proto, t, b"EHLO c\r\nAUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n")
        out = self.send(proto, t, b"MAIL FROM:<alice@localhost>\r\nRCPT TO:<x@example.com>\r\n")
        self.assertEqual(self.codes(out), [b"250", b"451"])

    def test_factory_checks(self) -> None:
        """The factory refuses unknown roles and plaintext policies."""
        self.assertRaises(ValueError, SMTPServerFactory, self.delivery, role="relay", reactor=self.clock)
        self.assertRaises(ValueError, SMTPServerFactory, self.delivery, plaintext_auth="x", reactor=self.clock)
        self.assertEqual(SMTPServerFactory(self.delivery, role=MX, reactor=self.clock).role, MX)


class ConfigTests(SynchronousTestCase):
    """The [smtp] section: defaults and checks."""

    def test_defaults_and_local_domains(self) -> None:
        """Defaults are the documented ones; no local_domains means localhost and the host name."""
        from appnet.config import load_config
        from appnet.smtp.tap import local_domains

        config = load_config(overrides={"": {"hostname": "mail.example.net"}})
        smtp = config["smtp"]
        self.assertEqual(smtp["listen"], ["tcp:10025:interface=127.0.0.1"])
        self.assertEqual(smtp["submission_listen"], ["tcp:10587:interface=127.0.0.1"])
        self.assertEqual(smtp["listen_tls"], ["tcp:10465:interface=127.0.0.1"])
        self.assertEqual((smtp["max_recipients"], smtp["max_line"], smtp["idle_timeout"]), (100, 1000, 300))
        self.assertEqual(smtp["max_message_size"], 35 << 20)

        class Context:
            pass

        context = Context()
        context.config = config
        self.assertEqual(local_domains(context), ["localhost", "mail.example.net"])
        context.config = config.replace("smtp", local_domains=["Example.COM"])
        self.assertEqual(local_domains(context), ["example.com"])

    def test_checks(self) -> None:
        """Bad values are refused with the key named; good ones normalised."""
        from appnet.config import ConfigError, load_config

        good = {
            "smarthost": ["", "relay.example.net", "relay.example.net:587", "[2001:db8::1]:25", "[2001:db8::1]"],
            "retry_intervals": [[1], [60, 300]],
            "relay_tls": ["opportunistic", "required", "none"],
            "resolvers": [["127.0.0.1:10053", "192.0.2.1"]],
        }
        for key, values in good.items():
            for value in values:
                load_config(overrides={"smtp": {key: value}})
        bad = {
            "smarthost": ["bad host", "host:0", "host:x", "[nope]:25"],
            "retry_intervals": [[], [0], ["60"]],
            "relay_tls": ["always"],
            "max_recipients": [99],
            "max_line": [999],
            "local_domains": [["not a domain"], "example.com"],
            "resolvers": [["dns.example"]],
        }
        for key, values in bad.items():
            for value in values:
                with self.subTest(key=key, value=value):
                    with self.assertRaises(ConfigError) as e:
                        load_config(overrides={"smtp": {key: value}})
                    self.assertIn(f"smtp.{key}", str(e.exception))


class DateTests(SynchronousTestCase):
    """L{rfc5322_now} formats the current second, and only once per second."""

    def test_now(self) -> None:
        import email.utils

        from appnet.smtp import delivery

        calls: list[object] = []
        real = email.utils.formatdate
        self.patch(delivery.email.utils, "formatdate",
                   lambda *a, **k: calls.append(a) or real(*a, **k))
        self.patch(delivery, "_date_cache", (-1, ""))
        seconds = iter([1_800_000_000.1, 1_800_000_000.9, 1_800_000_001.2])
        self.patch(delivery.time, "time", lambda: next(seconds))
        first, second, third = delivery.rfc5322_now(), delivery.rfc5322_now(), delivery.rfc5322_now()
        self.assertEqual(first, second)
        self.assertNotEqual(second, third)
        self.assertEqual(len(calls), 2)
        parsed = email.utils.parsedate_to_datetime(third)
        self.assertEqual(parsed.timestamp(), 1_800_000_001)
