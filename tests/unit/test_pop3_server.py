"""
Unit tests for appnet.pop3.server: the POP3 dialogue over a StringTransport,
time from a MemoryReactorClock, mail in a MemoryMailboxStore.
"""

from __future__ import annotations

import base64
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.mail.pop3 import IMailbox
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from appnet import accounts
from appnet.accounts import AccountChecker, AccountDatabase, AppnetRealm, make_portal
from appnet.mailbox.memory import MemoryMailboxStore
from appnet.pop3.maildrop import Maildrop, maildrop_avatar_factory
from appnet.pop3.server import (
    FAST_SEND_LIMIT,
    MessageEncoder,
    POP3ServerFactory,
    encode_message,
)
from appnet.stats import ServiceStats

MSG1 = b"From: bob@example.org\nSubject: one\n\nHello\n.dotted line\n"
MSG2 = b"From: carol@example.org\nSubject: two\n\nLine 1\nLine 2\nLine 3\n"


def decode_multiline(body: bytes) -> bytes:
    """Undo POP3 multi-line framing: strip the terminator and dot-stuffing."""
    assert body.endswith(b".\r\n"), body[-20:]
    lines = body[:-3].split(b"\r\n")
    assert lines[-1] == b""
    return b"".join(
        (line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines[:-1]
    )


class TLSStringTransport(StringTransport):
    """A StringTransport that records startTLS."""

    tls_started = None

    def startTLS(self, options):
        self.tls_started = options


class POP3TestMixin:
    """Builds a POP3 server over memory stores with alice/secret."""

    def setUp(self) -> None:
        self.patch(accounts, "SCRYPT_N", 16)
        self.clock = MemoryReactorClock()
        directory = self.mktemp()
        os.makedirs(directory)
        self.db = AccountDatabase(os.path.join(directory, "users.json"))
        self.db.add("alice", "secret")
        self.db.add("bob", "hunter2")
        self.store = MemoryMailboxStore(user_exists=self.db.exists)
        self.store.deliver("alice", MSG1)
        self.store.deliver("alice", MSG2)
        realm = AppnetRealm()
        realm.register(IMailbox, maildrop_avatar_factory(self.store))
        checker = AccountChecker(
            self.db,
            failed_delay=1.0,
            reactor=self.clock,
            run_blocking=lambda f, *a: defer.maybeDeferred(f, *a),
        )
        self.portal = make_portal(realm, checker)
        self.stats = ServiceStats("pop3")

    def connect(self, peer: str = "127.0.0.1", tls: bool = False, **kw):
        kw.setdefault("reactor", self.clock)
        factory = POP3ServerFactory(self.portal, stats=self.stats, **kw)
        proto = factory.buildProtocol(IPv4Address("TCP", peer, 40000))
        transport = (TLSStringTransport if tls else StringTransport)(
            peerAddress=IPv4Address("TCP", peer, 40000)
        )
        proto.makeConnection(transport)
        return proto, transport

    def send(self, proto, transport, data: bytes) -> bytes:
        transport.clear()
        proto.dataReceived(data)
        return transport.value()

    def login(self, proto, transport, user=b"alice", password=b"secret") -> bytes:
        return self.send(proto, transport, b"USER " + user + b"\r\nPASS " + password + b"\r\n")


class DialogueTests(POP3TestMixin, SynchronousTestCase):
    """The RFC 1939 dialogue the textbook and the POP3 article walk through."""

    def test_greeting(self) -> None:
        """The server greets with +OK and its host name."""
        proto, t = self.connect()
        self.assertTrue(t.value().startswith(b"+OK localhost POP3 server"))
        self.assertTrue(t.value().endswith(b"\r\n"))

    def test_textbook_session(self) -> None:
        """USER, PASS, STAT, LIST, RETR, DELE, QUIT: deletion happens at QUIT."""
        proto, t = self.connect()
        out = self.login(proto, t)
        self.assertEqual(out, b"+OK send PASS\r\n+OK maildrop has 2 messages\r\n")
        s1, s2 = len(MSG1) + MSG1.count(b"\n"), len(MSG2) + MSG2.count(b"\n")
        self.assertEqual(self.send(proto, t, b"STAT\r\n"), b"+OK 2 %d\r\n" % (s1 + s2))
        self.assertEqual(
            self.send(proto, t, b"LIST\r\n"),
            b"+OK 2 messages (%d octets)\r\n1 %d\r\n2 %d\r\n.\r\n" % (s1 + s2, s1, s2),
        )
        out = self.send(proto, t, b"RETR 1\r\n")
        head, body = out.split(b"\r\n", 1)
        self.assertEqual(head, b"+OK %d octets" % s1)
        self.assertEqual(decode_multiline(body), MSG1.replace(b"\n", b"\r\n"))
        self.assertEqual(len(decode_multiline(body)), s1)
        self.assertEqual(self.send(proto, t, b"DELE 1\r\n"), b"+OK message 1 marked for deletion\r\n")
        self.assertEqual(len(self.store.folder("alice").messages()), 2, "deleted before QUIT")
        self.assertEqual(self.send(proto, t, b"STAT\r\n"), b"+OK 1 %d\r\n" % s2)
        out = self.send(proto, t, b"QUIT\r\n")
        self.assertTrue(out.startswith(b"+OK"))
        self.assertTrue(t.disconnecting)
        proto.connectionLost(None)
        remaining = self.store.folder("alice").messages()
        self.assertEqual([m.size for m in remaining], [len(MSG2)])

    def test_no_quit_no_deletion(self) -> None:
        """A session that drops without QUIT deletes nothing and frees the lock."""
        proto, t = self.connect()
        self.login(proto, t)
        self.send(proto, t, b"DELE 1\r\nDELE 2\r\n")
        proto.connectionLost(None)
        self.assertEqual(len(self.store.folder("alice").messages()), 2)
        proto2, t2 = self.connect()
        self.assertIn(b"+OK maildrop has 2", self.login(proto2, t2))

    def test_retrieved_marked_seen_at_quit(self) -> None:
        """RETR then QUIT flags the message \\Seen; unretrieved stay unseen."""
        proto, t = self.connect()
        self.login(proto, t)
        self.send(proto, t, b"RETR 2\r\nQUIT\r\n")
        flags = [m.flags for m in self.store.folder("alice").messages()]
        self.assertEqual(flags, [frozenset(), frozenset({"\\Seen"})])

    def test_rset(self) -> None:
        """RSET unmarks deletions, so QUIT deletes nothing."""
        proto, t = self.connect()
        self.login(proto, t)
        self.send(proto, t, b"DELE 1\r\n")
        self.assertEqual(self.send(proto, t, b"RSET\r\n"), b"+OK maildrop has 2 messages\r\n")
        self.send(proto, t, b"QUIT\r\n")
        self.assertEqual(len(self.store.folder("alice").messages()), 2)

    def test_top(self) -> None:
        """TOP n sends the header, the blank line and n body lines."""
        proto, t = self.connect()
        self.login(proto, t)
        out = self.send(proto, t, b"TOP 2 2\r\n")
        head, body = out.split(b"\r\n", 1)
        self.assertEqual(head, b"+OK top of message follows")
        self.assertEqual(
            decode_multiline(body),
            b"From: carol@example.org\r\nSubject: two\r\n\r\nLine 1\r\nLine 2\r\n",
        )
        out = self.send(proto, t, b"TOP 2 0\r\n")
        self.assertEqual(
            decode_multiline(out.split(b"\r\n", 1)[1]),
            b"From: carol@example.org\r\nSubject: two\r\n\r\n",
        )

    def test_uidl(self) -> None:
        """UIDL lists stable unique-ids of 1-70 printable characters."""
        proto, t = self.connect()
        self.login(proto, t)
        out = self.send(proto, t, b"UIDL\r\n").split(b"\r\n")
        self.assertEqual(out[0], b"+OK unique-id listing follows")
        ids = [line.split(b" ")[1] for line in out[1:3]]
        self.assertEqual(len(set(ids)), 2)
        for uid in ids:
            self.assertTrue(1 <= len(uid) <= 70 and all(0x21 <= c <= 0x7E for c in uid))
        self.assertEqual(self.send(proto, t, b"UIDL 2\r\n"), b"+OK 2 " + ids[1] + b"\r\n")

    def test_pipelining(self) -> None:
        """Commands sent in one packet are answered in order (RFC 2449 PIPELINING)."""
        proto, t = self.connect()
        t.clear()
        out = self.send(proto, t, b"USER alice\r\nPASS secret\r\nSTAT\r\nDELE 1\r\nQUIT\r\n")
        lines = out.split(b"\r\n")
        self.assertEqual(lines[0], b"+OK send PASS")
        self.assertEqual(lines[1], b"+OK maildrop has 2 messages")
        self.assertTrue(lines[2].startswith(b"+OK 2 "))
        self.assertEqual(lines[3], b"+OK message 1 marked for deletion")
        self.assertTrue(lines[4].startswith(b"+OK") and b"signing off" in lines[4])
        self.assertEqual(len(self.store.folder("alice").messages()), 1)

    def test_pipelined_commands_wait_for_slow_login(self) -> None:
        """STAT sent right behind PASS waits for the (delayed) login result."""
        proto, t = self.connect()
        out = self.send(proto, t, b"USER alice\r\nPASS wrong\r\nSTAT\r\n")
        self.assertEqual(out, b"+OK send PASS\r\n", "nothing before the login completes")
        t.clear()
        self.clock.advance(1.0)
        self.assertEqual(
            t.value(),
            b"-ERR [AUTH] authentication failed\r\n"
            b"-ERR command not valid in the AUTHORIZATION state\r\n",
        )

    def test_capa(self) -> None:
        """CAPA lists what works: USER and SASL on loopback, STLS when TLS is available."""
        proto, t = self.connect(tls_options=object())
        caps = self.send(proto, t, b"CAPA\r\n").split(b"\r\n")
        self.assertEqual(caps[0], b"+OK capability list follows")
        for cap in (b"TOP", b"UIDL", b"USER", b"RESP-CODES", b"AUTH-RESP-CODE",
                    b"PIPELINING", b"SASL PLAIN LOGIN", b"STLS"):
            self.assertIn(cap, caps)
        self.assertEqual(caps[-2:], [b".", b""])
        self.login(proto, t)
        caps = self.send(proto, t, b"CAPA\r\n").split(b"\r\n")
        self.assertNotIn(b"STLS", caps)
        self.assertNotIn(b"USER", caps)


class AuthTests(POP3TestMixin, SynchronousTestCase):
    """Logins: PASS, AUTH PLAIN/LOGIN, failures, locks, TLS policy."""

    def test_wrong_password_delayed_and_counted(self) -> None:
        """A failed login is answered only after the delay, and counted."""
        proto, t = self.connect()
        out = self.login(proto, t, password=b"nope")
        self.assertEqual(out, b"+OK send PASS\r\n")
        t.clear()
        self.clock.advance(0.99)
        self.assertEqual(t.value(), b"")
        self.clock.advance(0.01)
        self.assertEqual(t.value(), b"-ERR [AUTH] authentication failed\r\n")
        self.assertEqual(self.stats["logins_failed"], 1)
        self.assertEqual(self.stats["logins_ok"], 0)

    def test_unknown_user_indistinguishable(self) -> None:
        """An unknown user gets exactly the reply a wrong password gets."""
        replies = []
        for user, password in ((b"mallory", b"x"), (b"alice", b"x")):
            proto, t = self.connect()
            self.login(proto, t, user, password)
            t.clear()
            self.clock.advance(1)
            replies.append(t.value())
        self.assertEqual(replies[0], replies[1])

    def test_three_failures_close(self) -> None:
        """The third failed login in one session closes it."""
        proto, t = self.connect()
        for _ in range(3):
            self.login(proto, t, password=b"bad")
            self.clock.advance(1)
        self.assertTrue(t.disconnecting)
        self.assertIn(b"too many failed logins", t.value())

    def test_pass_without_user(self) -> None:
        """PASS before USER is a protocol error; the session goes on."""
        proto, t = self.connect()
        self.assertEqual(self.send(proto, t, b"PASS x\r\n"), b"-ERR USER required before PASS\r\n")
        self.assertEqual(self.send(proto, t, b"NOOP\r\n"), b"+OK\r\n")

    def test_password_with_spaces(self) -> None:
        """PASS takes the rest of the line, spaces included."""
        self.db.add("carol", "two words  here")
        proto, t = self.connect()
        out = self.login(proto, t, b"carol", b"two words  here")
        self.assertIn(b"+OK maildrop has 0 messages", out)

    def test_in_use(self) -> None:
        """A second session on a locked maildrop gets -ERR [IN-USE]."""
        proto, t = self.connect()
        self.login(proto, t)
        proto2, t2 = self.connect()
        out = self.login(proto2, t2)
        self.assertEqual(out, b"+OK send PASS\r\n-ERR [IN-USE] maildrop already locked by another session\r\n")
        self.send(proto, t, b"QUIT\r\n")
        proto.connectionLost(None)
        self.assertIn(b"+OK maildrop", self.login(proto2, t2))

    def test_quit_releases_before_reply(self) -> None:
        """
        The maildrop is free when QUIT's +OK goes out (UPDATE state, RFC
        1939 section 6), not only when the connection is gone: a client
        that logs in again at once must not find [IN-USE].
        """
        proto, t = self.connect()
        self.login(proto, t)
        self.assertTrue(self.send(proto, t, b"QUIT\r\n").startswith(b"+OK "))
        proto2, t2 = self.connect()
        self.assertIn(b"+OK maildrop has 2 messages", self.login(proto2, t2))

    def test_auth_plain_initial_response(self) -> None:
        """AUTH PLAIN with an initial response logs in (RFC 5034)."""
        proto, t = self.connect()
        blob = base64.b64encode(b"\0alice\0secret")
        self.assertIn(b"+OK maildrop has 2", self.send(proto, t, b"AUTH PLAIN " + blob + b"\r\n"))

    def test_auth_plain_challenge(self) -> None:
        """AUTH PLAIN without initial response gets an empty '+ ' challenge."""
        proto, t = self.connect()
        self.assertEqual(self.send(proto, t, b"AUTH PLAIN\r\n"), b"+ \r\n")
        out = self.send(proto, t, base64.b64encode(b"alice\0alice\0secret") + b"\r\n")
        self.assertIn(b"+OK maildrop", out)

    def test_auth_plain_other_authzid_refused(self) -> None:
        """An authorization identity other than the user is refused (no proxying)."""
        proto, t = self.connect()
        blob = base64.b64encode(b"bob\0alice\0secret")
        self.assertEqual(
            self.send(proto, t, b"AUTH PLAIN " + blob + b"\r\n"),
            b"-ERR [AUTH] malformed PLAIN response\r\n",
        )

    def test_auth_login(self) -> None:
        """AUTH LOGIN asks for user then password, base64 both ways."""
        proto, t = self.connect()
        self.assertEqual(self.send(proto, t, b"AUTH LOGIN\r\n"), b"+ VXNlcm5hbWU6\r\n")
        self.assertEqual(self.send(proto, t, base64.b64encode(b"alice") + b"\r\n"), b"+ UGFzc3dvcmQ6\r\n")
        self.assertIn(b"+OK maildrop", self.send(proto, t, base64.b64encode(b"secret") + b"\r\n"))

    def test_auth_cancel_and_garbage(self) -> None:
        """'*' cancels an AUTH exchange; bad base64 is refused; the session goes on."""
        proto, t = self.connect()
        self.send(proto, t, b"AUTH PLAIN\r\n")
        self.assertEqual(self.send(proto, t, b"*\r\n"), b"-ERR authentication cancelled\r\n")
        self.send(proto, t, b"AUTH PLAIN\r\n")
        self.assertEqual(self.send(proto, t, b"!!!notbase64\r\n"), b"-ERR [AUTH] invalid base64 in SASL response\r\n")
        self.assertEqual(self.send(proto, t, b"AUTH CRAM-MD5\r\n"), b"-ERR unsupported SASL mechanism\r\n")
        self.assertIn(b"+OK maildrop", self.login(proto, t))

    def test_plaintext_refused_from_remote_without_tls(self) -> None:
        """From a non-loopback address without TLS, USER and AUTH PLAIN are refused and not advertised."""
        proto, t = self.connect(peer="192.0.2.7", tls=True, tls_options=object())
        caps = self.send(proto, t, b"CAPA\r\n")
        self.assertNotIn(b"\r\nUSER\r\n", caps)
        self.assertIn(b"\r\nSTLS\r\n", caps)
        self.assertEqual(
            self.send(proto, t, b"USER alice\r\n"),
            b"-ERR [AUTH] plaintext authentication requires TLS: send STLS first\r\n",
        )
        self.send(proto, t, b"STLS\r\n")
        self.assertIsNotNone(t.tls_started)
        self.assertIn(b"+OK maildrop", self.login(proto, t))

    def test_apop_refused(self) -> None:
        """APOP is refused: passwords are stored only as salted hashes."""
        proto, t = self.connect()
        self.assertIn(b"-ERR [AUTH] APOP not supported", self.send(proto, t, b"APOP alice 0123\r\n"))


class STLSTests(POP3TestMixin, SynchronousTestCase):
    """STLS (RFC 2595)."""

    def test_stls_starts_tls(self) -> None:
        """STLS answers +OK then starts TLS with the factory's options."""
        options = object()
        proto, t = self.connect(tls=True, tls_options=options)
        self.assertEqual(self.send(proto, t, b"STLS\r\n"), b"+OK begin TLS negotiation\r\n")
        self.assertIs(t.tls_started, options)
        self.assertEqual(self.send(proto, t, b"STLS\r\n"), b"-ERR TLS already active\r\n")

    def test_no_command_injection(self) -> None:
        """Cleartext sent behind STLS in the same packet is discarded, not run."""
        proto, t = self.connect(tls=True, tls_options=object())
        out = self.send(proto, t, b"STLS\r\nUSER alice\r\nPASS secret\r\n")
        self.assertEqual(out, b"+OK begin TLS negotiation\r\n")
        self.assertEqual(self.send(proto, t, b"STAT\r\n"), b"-ERR command not valid in the AUTHORIZATION state\r\n")

    def test_stls_unavailable(self) -> None:
        """Without TLS configured STLS is refused and not advertised."""
        proto, t = self.connect()
        self.assertEqual(self.send(proto, t, b"STLS\r\n"), b"-ERR TLS not available\r\n")
        self.assertNotIn(b"STLS", self.send(proto, t, b"CAPA\r\n"))

    def test_stls_after_login_refused(self) -> None:
        """STLS is valid only in the AUTHORIZATION state."""
        proto, t = self.connect(tls=True, tls_options=object())
        self.login(proto, t)
        self.assertEqual(
            self.send(proto, t, b"STLS\r\n"), b"-ERR command not valid in the TRANSACTION state\r\n"
        )
        self.assertIsNone(t.tls_started)


class BadInputTests(POP3TestMixin, SynchronousTestCase):
    """Bad input gets -ERR and the session lives."""

    def assertAlive(self, proto, t) -> None:
        self.assertEqual(self.send(proto, t, b"NOOP\r\n"), b"+OK\r\n")
        self.assertFalse(t.disconnecting)

    def test_wrong_state(self) -> None:
        """TRANSACTION commands before login, USER after it: -ERR."""
        proto, t = self.connect()
        for cmd in (b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"RSET", b"UIDL", b"TOP 1 1"):
            self.assertEqual(
                self.send(proto, t, cmd + b"\r\n"),
                b"-ERR command not valid in the AUTHORIZATION state\r\n",
            )
        self.login(proto, t)
        self.assertEqual(
            self.send(proto, t, b"USER bob\r\n"), b"-ERR command not valid in the TRANSACTION state\r\n"
        )
        self.assertAlive(proto, t)

    def test_unknown_empty_and_garbage(self) -> None:
        """Unknown commands, empty lines and binary garbage get -ERR."""
        proto, t = self.connect()
        self.assertEqual(self.send(proto, t, b"XYZZY\r\n"), b"-ERR unknown command\r\n")
        self.assertEqual(self.send(proto, t, b"\r\n"), b"-ERR empty command\r\n")
        self.assertEqual(self.send(proto, t, b"\x00\xff\xfe\x80 \x01\r\n"), b"-ERR unknown command\r\n")
        self.assertEqual(self.send(proto, t, bytes(range(256)).replace(b"\n", b"") + b"\r\n"),
                         b"-ERR unknown command\r\n")
        self.assertAlive(proto, t)

    def test_overlong_line(self) -> None:
        """An overlong line gets one -ERR (even across packets); the next command works."""
        proto, t = self.connect(max_line=512)
        out = self.send(proto, t, b"USER " + b"a" * 600)
        self.assertEqual(out, b"-ERR line too long\r\n")
        self.assertEqual(self.send(proto, t, b"b" * 10000), b"")
        self.assertEqual(self.send(proto, t, b"c\r\nNOOP\r\n"), b"+OK\r\n")
        self.assertEqual(self.send(proto, t, b"X" * 600 + b"\r\n"), b"-ERR line too long\r\n")
        self.assertAlive(proto, t)

    def test_bare_lf_accepted(self) -> None:
        """Lines ending in a bare LF are accepted like CRLF."""
        proto, t = self.connect()
        self.assertIn(b"+OK maildrop", self.send(proto, t, b"USER alice\nPASS secret\n"))

    def test_bad_message_numbers(self) -> None:
        """Missing, zero, negative, huge, non-numeric and deleted message numbers: -ERR."""
        proto, t = self.connect()
        self.login(proto, t)
        cases = {
            b"RETR 3": b"-ERR no such message: 3",
            b"RETR 0": b"-ERR invalid message number: 0",
            b"RETR -1": b"-ERR invalid message number: -1",
            b"RETR abc": b"-ERR invalid message number: abc",
            b"RETR 99999999999999999999999": b"-ERR invalid message number: 99999999999999999999",
            b"RETR": b"-ERR wrong number of arguments for RETR",
            b"RETR 1 2": b"-ERR wrong number of arguments for RETR",
            b"DELE 7": b"-ERR no such message: 7",
            b"LIST 9": b"-ERR no such message: 9",
            b"UIDL x": b"-ERR invalid message number: x",
            b"TOP 1 -3": b"-ERR invalid line count: -3",
            b"TOP 1": b"-ERR wrong number of arguments for TOP",
        }
        for command, reply in cases.items():
            self.assertEqual(self.send(proto, t, command + b"\r\n"), reply + b"\r\n", command)
        self.send(proto, t, b"DELE 1\r\n")
        for command in (b"RETR 1", b"DELE 1", b"LIST 1", b"UIDL 1", b"TOP 1 1"):
            self.assertEqual(
                self.send(proto, t, command + b"\r\n"), b"-ERR message 1 already deleted\r\n", command
            )
        self.assertAlive(proto, t)

    def test_idle_timeout(self) -> None:
        """After the idle timeout the server says so and closes; nothing is deleted."""
        proto, t = self.connect()
        self.login(proto, t)
        self.send(proto, t, b"DELE 1\r\n")
        t.clear()
        self.clock.advance(599)
        self.assertFalse(t.disconnecting)
        self.clock.advance(1)
        self.assertEqual(t.value(), b"-ERR [SYS/TEMP] autologout: idle too long\r\n")
        self.assertTrue(t.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(len(self.store.folder("alice").messages()), 2)

    def test_message_vanished(self) -> None:
        """A message expunged underneath the session gets -ERR, not a crash."""
        proto, t = self.connect()
        self.login(proto, t)
        folder = self.store.folder("alice")
        folder.expunge([m.uid for m in folder.messages()][:1])
        out = self.send(proto, t, b"RETR 1\r\n")
        self.assertEqual(out, b"-ERR [SYS/TEMP] message 1 vanished from the maildrop\r\n")
        self.assertIn(b"+OK", self.send(proto, t, b"RETR 2\r\n"))


class TransferTests(POP3TestMixin, SynchronousTestCase):
    """Message transfer: framing, dot-stuffing, big messages."""

    def test_dot_stuffing_first_line_and_crlf_storage(self) -> None:
        """A leading dot on the first line is stuffed; stored CRLF is not doubled."""
        self.store.deliver("bob", b".first\r\n..second\r\nthird")
        proto, t = self.connect()
        self.login(proto, t, b"bob", b"hunter2")
        out = self.send(proto, t, b"RETR 1\r\n")
        self.assertEqual(out.split(b"\r\n", 1)[1], b"..first\r\n...second\r\nthird\r\n.\r\n")

    def test_large_message_streams(self) -> None:
        """A message over the fast-send limit streams through a producer, intact."""
        line = b"x" * 99 + b"\n"
        big = b"Subject: big\n\n" + b".dot\n" + line * ((FAST_SEND_LIMIT * 3) // 100)
        self.store.deliver("bob", big)
        proto, t = self.connect()
        self.login(proto, t, b"bob", b"hunter2")
        t.clear()
        proto.dataReceived(b"RETR 1\r\nNOOP\r\n")
        self.assertIsNotNone(t.producer)
        while t.producer is not None:
            t.producer.resumeProducing()
        out = t.value()
        head, body = out.split(b"\r\n", 1)
        self.assertEqual(head, b"+OK %d octets" % (len(big) + big.count(b"\n")))
        self.assertTrue(body.endswith(b".\r\n+OK\r\n"), "NOOP answered after the message")
        self.assertEqual(decode_multiline(body[: -len(b"+OK\r\n")]), big.replace(b"\n", b"\r\n"))

    @settings(max_examples=300)
    @given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=40), max_size=10))
    def test_encoder_chunking_matches_one_shot(self, data: bytes, cuts: list[int]) -> None:
        """Feeding a message in any chunks gives exactly what encode_message gives."""
        encoder = MessageEncoder()
        out, pos = [], 0
        for cut in cuts:
            out.append(encoder.feed(data[pos : pos + cut]))
            pos += cut
        out.append(encoder.feed(data[pos:]))
        out.append(encoder.finish())
        self.assertEqual(b"".join(out), encode_message(data))

    @given(st.lists(st.sampled_from([b"a", b".", b"\n", b"\r\n", b"..", b" "]), max_size=40))
    def test_encode_round_trip(self, parts: list[bytes]) -> None:
        """Undoing the framing gives the message with CRLF line ends, ending in CRLF."""
        data = b"".join(parts)
        expected = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if expected and not expected.endswith(b"\r\n"):
            expected += b"\r\n"
        encoded = encode_message(data)
        self.assertNotIn(b"\r\n.\r\n", encoded[:-3] if not encoded.startswith(b".\r\n") else b"")
        self.assertEqual(decode_multiline(encoded), expected)


class MaildropTests(POP3TestMixin, SynchronousTestCase):
    """The IMailbox avatar over the mailbox store."""

    def test_interface(self) -> None:
        """Maildrop provides twisted.mail.pop3.IMailbox."""
        lock = self.store.lock_maildrop("alice")
        self.assertTrue(verifyObject(IMailbox, Maildrop(lock)))

    def test_snapshot(self) -> None:
        """Mail arriving during a session does not renumber it (RFC 1939)."""
        proto, t = self.connect()
        self.login(proto, t)
        self.store.deliver("alice", b"Subject: late\n\nx\n")
        self.assertTrue(self.send(proto, t, b"STAT\r\n").startswith(b"+OK 2 "))


class TranscriptTests(POP3TestMixin, SynchronousTestCase):
    """trace = true: annotated, redacted transcripts."""

    def test_transcript(self) -> None:
        """Every line is logged with a note; the password never appears."""
        lines: list[str] = []
        proto, t = self.connect(trace=True, trace_emit=lines.append)
        self.send(proto, t, b"USER alice\r\nPASS secret\r\nRETR 1\r\nQUIT\r\n")
        text = "\n".join(lines)
        self.assertNotIn("secret", text)
        self.assertIn("C: PASS ****", text)
        self.assertRegex(text, r"C: RETR 1 +retrieve a whole message")
        self.assertRegex(text, r"S: \+OK .* +positive reply")
        self.assertIn("end the session; deletions take effect now", text)

    def test_transcript_redacts_sasl(self) -> None:
        """AUTH PLAIN initial responses and SASL lines are redacted."""
        lines: list[str] = []
        proto, t = self.connect(trace=True, trace_emit=lines.append)
        blob = base64.b64encode(b"\0alice\0secret")
        self.send(proto, t, b"AUTH PLAIN " + blob + b"\r\n")
        self.send(proto, t, b"QUIT\r\n")
        text = "\n".join(lines)
        self.assertNotIn(blob.decode(), text)
        self.assertIn("C: AUTH PLAIN ****", text)
