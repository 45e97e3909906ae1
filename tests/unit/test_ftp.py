"""
Unit tests for appnet.ftp: the server dialogue over a StringTransport, data
connections joined by hand from a MemoryReactorClock's recorded listeners
and connectors, files in a FileStore on a temp dir.
"""

from __future__ import annotations

import errno
import os
import socket
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.checkers import ANONYMOUS, AllowAnonymousAccess
from twisted.cred.portal import Portal
from twisted.internet import defer, error, ssl, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.ftp import IFTPShell
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from appnet import accounts
from appnet.accounts import AccountChecker, AccountDatabase, AppnetRealm
from appnet.filesystem import FileInfo, FileStore
from appnet.ftp import server as ftp_server
from appnet.ftp.server import FTPServerFactory, list_line, mlsx_facts
from appnet.ftp.shell import FTPShell, shell_factory
from appnet.sockets import ReplySender
from appnet.stats import ServiceStats

#: Strings that try to leave the avatar's root, as clients send them.
TRAVERSALS = [
    "../etc/passwd",
    "../../../../etc/passwd",
    "/../etc",
    "..",
    "a/../../etc",
    "..\\..\\etc",
    "\\etc\\passwd",
    "C:\\Windows",
    "x\x00y",
    "\u2025",  # two-dot leader: ".." under NFKC
    "a" * 300,
]


class NoDelayTransport(StringTransport):
    """A StringTransport that records TCP_NODELAY and startTLS."""

    nodelay = False
    tls_started = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled

    def startTLS(self, options: object) -> None:
        self.tls_started = options


CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)
SERVER = IPv4Address("TCP", "127.0.0.1", 21)


class FTPTestMixin:
    """An FTP server over a temp store, alice/secret, anonymous and incoming."""

    quota: int | None = None

    def setUp(self) -> None:
        self.patch(accounts, "SCRYPT_N", 16)
        self.clock = MemoryReactorClock()
        self.root = self.mktemp()
        self.store = FileStore(self.root, quota_for=lambda user: self.quota, incoming=True)
        db = AccountDatabase(self.mktemp())
        db.add("alice", "secret")
        checker = AccountChecker(
            db, failed_delay=0, reactor=self.clock,
            run_blocking=lambda f, *a: defer.maybeDeferred(f, *a),
        )
        realm = AppnetRealm()
        realm.register(IFTPShell, shell_factory(self.store))
        self.portal = Portal(realm, [checker, AllowAnonymousAccess()])
        self.cooperator = task.Cooperator(
            scheduler=lambda f: self.clock.callLater(0, f), started=True
        )
        self.stats = ServiceStats("ftp")
        self.factory = FTPServerFactory(
            self.portal, stats=self.stats, reactor=self.clock, cooperator=self.cooperator,
            tls_options=ssl.CertificateOptions(), **self.factory_options(),
        )
        self.proto, self.transport = self.connect()

    def factory_options(self) -> dict:
        return {}

    def connect(self) -> tuple:
        proto = self.factory.buildProtocol(CLIENT)
        transport = NoDelayTransport(hostAddress=SERVER, peerAddress=CLIENT)
        proto.makeConnection(transport)
        return proto, transport

    def send(self, line: str, proto=None, transport=None) -> list[str]:
        """Send one command; return the reply lines it produced."""
        proto = proto or self.proto
        transport = transport or self.transport
        transport.clear()
        proto.dataReceived(line.encode("utf-8", "surrogateescape") + b"\r\n")
        self.clock.advance(0)
        return self.lines(transport)

    def lines(self, transport=None) -> list[str]:
        transport = transport or self.transport
        return transport.value().decode("utf-8", "replace").splitlines()

    def login(self, user: str = "alice", password: str = "secret") -> None:
        self.send(f"USER {user}")
        reply = self.send(f"PASS {password}")
        assert reply[-1].startswith("230"), reply

    def public(self, name: str, data: bytes) -> str:
        path = os.path.join(self.store.root, "public", name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def home(self, *parts: str) -> str:
        return os.path.join(self.store.root, "home", "alice", *parts)

    def pasv_channel(self, peer: IPv4Address = CLIENT):
        """Accept the data connection the last PASV/EPSV set up."""
        factory = self.clock.tcpServers[-1][1]
        proto = factory.buildProtocol(peer)
        transport = NoDelayTransport(hostAddress=SERVER, peerAddress=peer)
        proto.makeConnection(transport)
        return proto, transport

    def run_clock(self) -> None:
        for _ in range(50):
            self.clock.advance(0)

    def finish(self, channel, transport) -> None:
        """Let the data connection close (the server called loseConnection)."""
        self.run_clock()
        channel.connectionLost(Failure(error.ConnectionDone()))
        self.run_clock()


class GreetingAndLoginTests(FTPTestMixin, SynchronousTestCase):
    """The 220/331/230 dialogue, anonymous and users, and its limits."""

    def test_greeting_and_nodelay(self) -> None:
        """The server greets with 220 and sets TCP_NODELAY on the control connection."""
        self.assertTrue(self.lines()[0].startswith("220 "))
        self.assertTrue(self.transport.nodelay)

    def test_anonymous_login(self) -> None:
        """C{anonymous} with any e-mail address as password logs in (331, 230)."""
        self.assertTrue(self.send("USER anonymous")[0].startswith("331 "))
        self.assertTrue(self.send("PASS guest@example.org")[0].startswith("230 "))
        self.assertIsNone(self.proto.shell.user)
        self.assertEqual(self.stats["logins_ok"], 1)

    def test_user_login(self) -> None:
        """A user logs in through the cred portal and gets their own view."""
        self.login()
        self.assertEqual(self.proto.shell.user, "alice")

    def test_bad_password(self) -> None:
        """A wrong password gets 530 and the session may try again."""
        self.send("USER alice")
        self.assertEqual(self.send("PASS wrong")[0][:3], "530")
        self.assertFalse(self.transport.disconnecting)
        self.login()

    def test_three_failures_close(self) -> None:
        """After three failed logins the server says 530 and hangs up."""
        for _ in range(3):
            self.send("USER alice")
            reply = self.send("PASS wrong")
        self.assertEqual(reply[0][:3], "530")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.stats["logins_failed"], 3)

    def test_commands_need_login(self) -> None:
        """Commands other than the login and TLS ones get 530 before login."""
        for command in ("PWD", "LIST", "RETR x", "PASV", "CWD /"):
            self.assertEqual(self.send(command)[0][:3], "530", command)

    def test_pass_without_user(self) -> None:
        """PASS before USER is a bad sequence (503)."""
        self.assertEqual(self.send("PASS x")[0][:3], "503")

    def test_anonymous_refused_when_disabled(self) -> None:
        """With anonymous off, C{anonymous} is an ordinary user name that fails."""
        self.factory.anonymous = False
        self.send("USER anonymous")
        self.assertEqual(self.send("PASS x@y")[0][:3], "530")

    def test_unknown_command(self) -> None:
        """An unknown command gets 502 and the session goes on."""
        self.assertEqual(self.send("XYZZY")[0][:3], "502")
        self.assertEqual(self.send("NOOP")[0][:3], "200")

    def test_line_too_long(self) -> None:
        """An over-long line gets 500 and the next command is served."""
        self.proto.dataReceived(b"NOOP " + b"x" * 10000 + b"\r\nNOOP\r\n")
        codes = [line[:3] for line in self.lines()]
        self.assertEqual(codes[-2:], ["500", "200"])

    def test_idle_timeout(self) -> None:
        """An idle session is told 421 and closed after idle_timeout."""
        self.clock.advance(self.factory.idle_timeout + 1)
        self.assertTrue(self.lines()[-1].startswith("421"))
        self.assertTrue(self.transport.disconnecting)

    def test_quit(self) -> None:
        """QUIT says 221 and closes."""
        self.assertEqual(self.send("QUIT")[0][:3], "221")
        self.assertTrue(self.transport.disconnecting)

    def test_transcript_redacts_password(self) -> None:
        """With trace on, the transcript annotates lines and never shows the password."""
        emitted: list[str] = []
        self.factory.trace = True
        self.factory.trace_emit = emitted.append
        proto, transport = self.connect()
        self.send("USER alice", proto, transport)
        self.send("PASS secret", proto, transport)
        text = "\n".join(emitted)
        self.assertNotIn("secret", text)
        self.assertIn("PASS ****", text)
        self.assertIn("user name", text)


class FeatureTests(FTPTestMixin, SynchronousTestCase):
    """FEAT/OPTS (RFC 2389, 2640, 3659) and informational commands."""

    def test_feat_lists_what_works(self) -> None:
        """FEAT names exactly the extensions implemented, before login too."""
        reply = self.send("FEAT")
        self.assertEqual(reply[0], "211-Extensions supported:")
        self.assertEqual(reply[-1], "211 End")
        self.assertEqual(
            [line.strip() for line in reply[1:-1]],
            ["AUTH TLS", "PBSZ", "PROT", "EPRT", "EPSV", "MDTM",
             "MLST type*;size*;modify*;perm*;", "PASV", "REST STREAM", "SIZE", "TVFS", "UTF8"],
        )

    def test_feat_without_tls(self) -> None:
        """Without TLS options AUTH TLS, PBSZ and PROT are not offered, and AUTH gets 502."""
        self.factory.tls_options = None
        self.assertNotIn(" AUTH TLS", self.send("FEAT"))
        self.assertEqual(self.send("AUTH TLS")[0][:3], "502")

    def test_opts_utf8(self) -> None:
        """OPTS UTF8 ON is accepted (RFC 2640); OFF is refused, names stay UTF-8."""
        self.assertEqual(self.send("OPTS UTF8 ON")[0][:3], "200")
        self.assertEqual(self.send("OPTS UTF8 OFF")[0][:3], "504")

    def test_opts_mlst(self) -> None:
        """OPTS MLST selects facts; FEAT and MLST then show only those."""
        self.login()
        self.assertEqual(self.send("OPTS MLST size;type;")[0], "200 MLST OPTS type;size;")
        self.assertIn(" MLST type*;size*;modify;perm;", self.send("FEAT"))
        self.public("a.txt", b"abc")
        reply = self.send("MLST /public/a.txt")
        self.assertEqual(reply[1], " type=file;size=3; /public/a.txt")

    def test_syst_type_stru_mode(self) -> None:
        """SYST, TYPE A/I, STRU F and MODE S are accepted; other values get 504."""
        self.login()
        self.assertEqual(self.send("SYST")[0], "215 UNIX Type: L8")
        self.assertEqual(self.send("TYPE A")[0][:3], "200")
        self.assertEqual(self.send("TYPE I")[0][:3], "200")
        self.assertEqual(self.send("TYPE E")[0][:3], "504")
        self.assertEqual(self.send("STRU R")[0][:3], "504")
        self.assertEqual(self.send("MODE B")[0][:3], "504")

    def test_missing_argument(self) -> None:
        """A command that needs an argument gets 501 without one."""
        self.login()
        for command in ("RETR", "STOR", "CWD", "MKD", "SIZE", "REST"):
            self.assertEqual(self.send(command)[0][:3], "501", command)


class PathTests(FTPTestMixin, SynchronousTestCase):
    """Navigation, files and directories through the store's jail."""

    def setUp(self) -> None:
        super().setUp()
        self.login()

    def test_pwd_cwd_cdup(self) -> None:
        """CWD changes the directory PWD shows; CDUP goes back; CWD to a file is 550."""
        self.assertEqual(self.send("PWD")[0], '257 "/" is the current directory')
        self.public("f", b"")
        self.assertEqual(self.send("CWD public")[0][:3], "250")
        self.assertEqual(self.send("PWD")[0], '257 "/public" is the current directory')
        self.assertEqual(self.send("CWD f")[0][:3], "550")
        self.assertEqual(self.send("CDUP")[0][:3], "250")
        self.assertEqual(self.send("XPWD")[0], '257 "/" is the current directory')

    def test_traversal_refused(self) -> None:
        """Every traversal string over CWD/RETR/STOR/RNFR/MKD/MLST/DELE/SIZE/RMD gets 550 and touches nothing."""
        outside = os.path.dirname(os.path.abspath(self.store.root))
        before = sorted(os.listdir(outside))
        for command in ("CWD", "RETR", "STOR", "APPE", "RNFR", "MKD", "MLST", "DELE",
                        "SIZE", "MDTM", "RMD", "LIST", "MLSD"):
            if command in ("RETR", "STOR", "APPE", "LIST", "MLSD"):
                self.send("PASV")
            for path in TRAVERSALS:
                reply = self.send(f"{command} {path}")
                self.assertEqual(reply[-1][:3], "550", f"{command} {path!r}: {reply}")
        self.assertEqual(sorted(os.listdir(outside)), before)
        self.assertEqual(self.send("PWD")[0], '257 "/" is the current directory')

    def test_mkd_rmd_dele_rename(self) -> None:
        """MKD/RMD/DELE/RNFR+RNTO act on the user's home."""
        self.assertEqual(self.send("MKD docs")[0], '257 "/docs" created')
        self.assertTrue(os.path.isdir(self.home("docs")))
        with open(self.home("docs", "a"), "wb") as f:
            f.write(b"x")
        self.assertEqual(self.send("RMD docs")[0][:3], "550")
        self.assertEqual(self.send("RNFR docs/a")[0][:3], "350")
        self.assertEqual(self.send("RNTO b")[0][:3], "250")
        self.assertTrue(os.path.exists(self.home("b")))
        self.assertEqual(self.send("DELE b")[0][:3], "250")
        self.assertEqual(self.send("RMD docs")[0][:3], "250")
        self.assertEqual(os.listdir(self.home()), [])

    def test_rnto_without_rnfr(self) -> None:
        """RNTO without RNFR just before it is a bad sequence (503)."""
        self.public("a", b"")
        self.send("RNFR /public/a")
        self.send("NOOP")
        self.assertEqual(self.send("RNTO b")[0][:3], "503")

    def test_public_is_read_only(self) -> None:
        """A user cannot delete, rename or make directories in /public (550)."""
        self.public("a", b"")
        self.assertEqual(self.send("DELE /public/a")[0][:3], "550")
        self.assertEqual(self.send("MKD /public/new")[0][:3], "550")

    def test_size_and_mdtm(self) -> None:
        """SIZE is the exact transfer size in TYPE I and TYPE A (LF becomes CRLF); MDTM is UTC."""
        path = self.public("t.txt", b"one\ntwo\r\nthree\n")
        os.utime(path, (0, 1700000000))
        self.assertEqual(self.send("SIZE /public/t.txt")[0], "213 15")
        self.send("TYPE A")
        self.assertEqual(self.send("SIZE /public/t.txt")[0], "213 17")
        self.assertEqual(self.send("MDTM /public/t.txt")[0], "213 20231114221320")
        self.assertEqual(self.send("SIZE /public")[0][:3], "550")
        self.assertEqual(self.send("SIZE /public/none")[0][:3], "550")

    def test_mlst(self) -> None:
        """MLST answers a 250 multi-line reply with the RFC 3659 facts of one entry."""
        path = self.public("m", b"12345")
        os.utime(path, (0, 0))
        reply = self.send("MLST /public/m")
        self.assertEqual(reply, ["250-Listing /public/m",
                                 " type=file;size=5;modify=19700101000000;perm=r; /public/m",
                                 "250 End"])

    def test_utf8_names(self) -> None:
        """Names are UTF-8 both ways (RFC 2640)."""
        self.assertEqual(self.send("MKD Grüße")[0], '257 "/Grüße" created')
        self.assertTrue(os.path.isdir(self.home("Grüße")))

    def test_stat(self) -> None:
        """STAT alone reports the session; STAT path lists over the control connection."""
        self.assertEqual(self.send("STAT")[0][:4], "211-")
        self.public("s", b"")
        reply = self.send("STAT /public")
        self.assertEqual(reply[0][:4], "213-")
        self.assertTrue(any(line.endswith(" s") for line in reply[1:-1]), reply)


class DataConnectionTests(FTPTestMixin, SynchronousTestCase):
    """PASV/EPSV/PORT/EPRT, transfers, resume, quota, aborts."""

    quota = 1000

    def setUp(self) -> None:
        super().setUp()
        self.login()

    def test_pasv_reply_and_nodelay(self) -> None:
        """PASV answers 227 with the control connection's address; the data connection gets TCP_NODELAY."""
        reply = self.send("PASV")
        self.assertEqual(reply[0], "227 Entering Passive Mode (127,0,0,1,0,0)")
        self.assertEqual(self.clock.tcpServers[-1][3], "127.0.0.1")
        _channel, transport = self.pasv_channel()
        self.assertTrue(transport.nodelay)

    def test_masquerade_and_port_range(self) -> None:
        """PASV advertises the masquerade address and listens on the configured range."""
        self.factory.masquerade_address = "203.0.113.7"
        self.factory.passive_ports = range(60000, 60001)
        reply = self.send("PASV")
        self.assertTrue(reply[0].startswith("227 Entering Passive Mode (203,0,113,7,"), reply)
        self.assertEqual(self.clock.tcpServers[-1][0], 60000)

    def test_epsv(self) -> None:
        """EPSV answers 229 (|||port|); EPSV ALL then refuses PASV and PORT."""
        self.assertEqual(self.send("EPSV")[0], "229 Entering Extended Passive Mode (|||0|)")
        self.assertEqual(self.send("EPSV ALL")[0][:3], "200")
        self.assertEqual(self.send("PASV")[0][:3], "503")
        self.assertEqual(self.send("PORT 127,0,0,1,200,10")[0][:3], "503")

    def test_rest_after_pasv_not_deadlocked(self) -> None:
        """
        REST after PASV is answered before any data connection exists
        (twisted/twisted#4819: Twisted's FTP stops reading until it does).
        """
        self.send("PASV")
        self.assertEqual(self.send("REST 5")[0][:3], "350")
        self.assertEqual(self.send("TYPE I")[0][:3], "200")

    def test_retr_with_rest(self) -> None:
        """RETR after REST sends the file from the offset: 150, data, 226 after the close."""
        self.public("f.bin", b"0123456789")
        self.send("PASV")
        self.send("REST 4")
        channel, transport = self.pasv_channel()
        reply = self.send("RETR /public/f.bin")
        self.assertEqual(reply[0][:3], "150")
        self.finish(channel, transport)
        self.assertEqual(transport.value(), b"456789")
        self.assertEqual(self.lines()[-1][:3], "226")

    def test_retr_waits_for_connection(self) -> None:
        """RETR before the client connects says 150 and sends once the connection arrives."""
        self.public("f", b"data")
        self.send("EPSV")
        self.assertEqual(self.send("RETR /public/f")[0][:3], "150")
        channel, transport = self.pasv_channel()
        self.finish(channel, transport)
        self.assertEqual(transport.value(), b"data")
        self.assertEqual(self.lines()[-1][:3], "226")

    def test_idle_timeout_after_transfers(self) -> None:
        """
        The idle timeout, off while a transfer runs, is back after it:
        both for one done at once and for one that waited for its data
        connection.
        """
        self.public("f", b"data")
        self.send("PASV")
        channel, transport = self.pasv_channel()
        self.send("RETR /public/f")
        self.finish(channel, transport)
        self.send("EPSV")
        self.send("RETR /public/f")
        self.clock.advance(self.factory.data_timeout - 1)
        channel, transport = self.pasv_channel()
        self.finish(channel, transport)
        self.assertEqual(self.lines()[-1][:3], "226")
        self.clock.advance(self.factory.idle_timeout - 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(self.lines()[-1].startswith("421"), self.lines())
        self.assertTrue(self.transport.disconnecting)

    def test_rest_beyond_end(self) -> None:
        """REST past the end of the file makes RETR fail with 554."""
        self.public("f", b"abc")
        self.send("PASV")
        self.send("REST 10")
        self.assertEqual(self.send("RETR /public/f")[-1][:3], "554")

    def test_retr_ascii(self) -> None:
        """TYPE A downloads turn LF into CRLF."""
        self.public("t", b"a\nb\r\n")
        self.send("TYPE A")
        self.send("PASV")
        channel, transport = self.pasv_channel()
        self.send("RETR /public/t")
        self.finish(channel, transport)
        self.assertEqual(transport.value(), b"a\r\nb\r\n")

    def test_no_data_connection(self) -> None:
        """RETR without PASV/PORT gets 425."""
        self.public("f", b"")
        self.assertEqual(self.send("RETR /public/f")[0][:3], "425")

    def test_data_connection_timeout(self) -> None:
        """A client that never connects gets 425 after data_timeout."""
        self.public("f", b"x")
        self.send("PASV")
        self.send("RETR /public/f")
        self.clock.advance(self.factory.data_timeout + 1)
        self.assertEqual(self.lines()[-1][:3], "425")

    def test_stor_appe_rest(self) -> None:
        """STOR creates, REST+STOR resumes in place, APPE appends."""
        self.send("PASV")
        channel, transport = self.pasv_channel()
        self.send("STOR up.txt")
        channel.dataReceived(b"hello ")
        self.finish(channel, transport)
        self.assertEqual(self.lines()[-1][:3], "226")
        self.send("PASV")
        self.send("REST 6")
        channel, transport = self.pasv_channel()
        self.send("STOR up.txt")
        channel.dataReceived(b"world")
        self.finish(channel, transport)
        self.send("PASV")
        channel, transport = self.pasv_channel()
        self.send("APPE up.txt")
        channel.dataReceived(b"!")
        self.finish(channel, transport)
        with open(self.home("up.txt"), "rb") as f:
            self.assertEqual(f.read(), b"hello world!")

    def test_stou(self) -> None:
        """STOU stores under a new name and tells it (150 FILE: and 226)."""
        with open(self.home("n"), "wb") as f:
            f.write(b"old")
        self.send("PASV")
        channel, transport = self.pasv_channel()
        reply = self.send("STOU n")
        self.assertEqual(reply[0], "150 FILE: n.1")
        channel.dataReceived(b"new")
        self.finish(channel, transport)
        self.assertIn("n.1", self.lines()[-1])
        with open(self.home("n.1"), "rb") as f:
            self.assertEqual(f.read(), b"new")

    def test_data_before_attach_is_kept(self) -> None:
        """Bytes the client sends on the data connection before STOR's 150 are not lost."""
        self.send("PASV")
        channel, transport = self.pasv_channel()
        channel.dataReceived(b"early ")
        self.send("STOR e")
        channel.dataReceived(b"late")
        self.finish(channel, transport)
        with open(self.home("e"), "rb") as f:
            self.assertEqual(f.read(), b"early late")

    def test_quota_552(self) -> None:
        """An upload over the quota gets 552 and leaves no file counted."""
        self.send("PASV")
        channel, transport = self.pasv_channel()
        self.send("STOR big")
        channel.dataReceived(b"x" * 600)
        channel.dataReceived(b"x" * 600)
        self.finish(channel, transport)
        self.assertEqual(self.lines()[-1][:3], "552")
        self.assertFalse(os.path.exists(self.home("big")))
        self.assertEqual(self.store.quota("alice")[0], 0)

    def test_list_nlst_mlsd(self) -> None:
        """LIST sends ls -l lines, NLST names, MLSD RFC 3659 facts, each ending 226."""
        self.public("a.txt", b"abc")
        os.mkdir(os.path.join(self.store.root, "public", "dir"))
        expected = {
            "LIST -la /public": lambda body: body[0].startswith("-r--r--r--") and body[0].endswith(" a.txt"),
            "NLST /public": lambda body: body == ["a.txt", "dir", "incoming"],
            "MLSD /public": lambda body: body[0].startswith("type=file;size=3;modify=")
            and body[0].endswith(";perm=r; a.txt") and body[1].startswith("type=dir;"),
        }
        for command, check in expected.items():
            self.send("PASV")
            channel, transport = self.pasv_channel()
            self.send(command)
            self.finish(channel, transport)
            body = transport.value().decode().splitlines()
            self.assertTrue(check(body), f"{command}: {body}")
            self.assertEqual(self.lines()[-1][:3], "226")

    def test_mlsd_of_file(self) -> None:
        """MLSD of a file is 550 (RFC 3659: it lists directories)."""
        self.public("a", b"")
        self.send("PASV")
        self.assertEqual(self.send("MLSD /public/a")[-1][:3], "550")

    def test_pipelined_commands_wait_for_transfer(self) -> None:
        """Commands pipelined behind a transfer are answered after its 226, in order."""
        self.public("f", b"x")
        self.send("PASV")
        channel, transport = self.pasv_channel()
        self.transport.clear()
        self.proto.dataReceived(b"RETR /public/f\r\nNOOP\r\nPWD\r\n")
        self.finish(channel, transport)
        self.assertEqual([line[:3] for line in self.lines()], ["150", "226", "200", "257"])

    def test_abor_during_transfer(self) -> None:
        """ABOR while a transfer waits for its connection: 426 for the transfer, then 226."""
        self.public("f", b"x")
        self.send("PASV")
        self.send("RETR /public/f")
        self.transport.clear()
        self.proto.dataReceived(b"ABOR\r\n")
        self.run_clock()
        self.assertEqual([line[:3] for line in self.lines()], ["426", "226"])
        self.assertEqual(self.send("NOOP")[0][:3], "200")

    def test_abor_idle(self) -> None:
        """ABOR with no transfer gets 226."""
        self.assertEqual(self.send("ABOR")[0][:3], "226")

    def test_port_same_address(self) -> None:
        """PORT/EPRT to the client's own address say 200 and connect there, IPv6 form too."""
        self.assertEqual(self.send("PORT 127,0,0,1,200,10")[0][:3], "200")
        host, port = self.clock.tcpClients[-1][:2]
        self.assertEqual((host, port), ("127.0.0.1", 200 * 256 + 10))
        self.assertEqual(self.send("EPRT |1|127.0.0.1|6000|")[0][:3], "200")
        self.assertEqual(self.clock.tcpClients[-1][:2], ("127.0.0.1", 6000))

    def test_port_bounce_refused(self) -> None:
        """PORT/EPRT to another address or a privileged port get 501 (no bounce attacks)."""
        self.assertEqual(self.send("PORT 10,0,0,1,200,10")[0][:3], "501")
        self.assertEqual(self.send("EPRT |2|::1|6000|")[0][:3], "501")
        self.assertEqual(self.send("PORT 127,0,0,1,0,25")[0][:3], "501")
        self.assertEqual(self.send("PORT 1,2,3")[0][:3], "501")
        self.assertEqual(self.clock.tcpClients, [])

    def test_passive_connection_from_elsewhere(self) -> None:
        """A data connection to the passive port from another address is dropped."""
        self.public("f", b"x")
        self.send("PASV")
        _stranger, transport = self.pasv_channel(IPv4Address("TCP", "10.9.9.9", 1))
        self.assertTrue(transport.disconnecting)
        channel, transport = self.pasv_channel()
        self.send("RETR /public/f")
        self.finish(channel, transport)
        self.assertEqual(transport.value(), b"x")

    def test_stats_count_data_bytes(self) -> None:
        """Data connection bytes are counted in the service's stats."""
        self.public("f", b"x" * 100)
        self.send("PASV")
        channel, transport = self.pasv_channel()
        self.send("RETR /public/f")
        self.finish(channel, transport)
        self.assertGreaterEqual(self.stats["bytes_out"], 100)


class AnonymousTests(FTPTestMixin, SynchronousTestCase):
    """What anonymous may do: read public/, drop files in incoming/."""

    def setUp(self) -> None:
        super().setUp()
        self.login("anonymous", "me@example.org")

    def test_write_outside_incoming_refused(self) -> None:
        """Anonymous STOR/MKD/DELE outside incoming/ get 550."""
        self.public("a", b"")
        self.send("PASV")
        self.assertEqual(self.send("STOR x")[-1][:3], "550")
        self.assertEqual(self.send("MKD d")[0][:3], "550")
        self.assertEqual(self.send("DELE a")[0][:3], "550")
        self.assertEqual(sorted(os.listdir(os.path.join(self.store.root, "public"))),
                         ["a", "incoming"])

    def test_drop_box(self) -> None:
        """Anonymous may upload into incoming/ but not list it or read back."""
        self.send("PASV")
        channel, transport = self.pasv_channel()
        self.send("STOR /incoming/drop.txt")
        channel.dataReceived(b"secret")
        self.finish(channel, transport)
        self.assertEqual(self.lines()[-1][:3], "226")
        self.send("PASV")
        self.assertEqual(self.send("LIST /incoming")[-1][:3], "550")
        self.send("PASV")
        self.assertEqual(self.send("RETR /incoming/drop.txt")[-1][:3], "550")


class TLSTests(FTPTestMixin, SynchronousTestCase):
    """AUTH TLS, PBSZ, PROT, CCC (RFC 4217)."""

    def test_auth_tls(self) -> None:
        """AUTH TLS says 234 and starts TLS with the factory's options."""
        self.assertEqual(self.send("AUTH TLS")[0][:3], "234")
        self.assertIs(self.transport.tls_started, self.factory.tls_options)

    def test_plaintext_after_auth_dropped(self) -> None:
        """Commands sent in cleartext behind AUTH TLS (one packet) are discarded."""
        self.transport.clear()
        self.proto.dataReceived(b"AUTH TLS\r\nUSER alice\r\n")
        self.assertEqual([line[:3] for line in self.lines()], ["234"])
        self.assertEqual(self.proto.state, self.proto.UNAUTH)

    def test_pbsz_prot_order(self) -> None:
        """PBSZ and PROT need AUTH TLS first (503); then PBSZ 0, PROT P/C work, S/E are 536."""
        self.assertEqual(self.send("PBSZ 0")[0][:3], "503")
        self.assertEqual(self.send("PROT P")[0][:3], "503")
        self.send("AUTH TLS")
        self.assertEqual(self.send("PBSZ 0")[0], "200 PBSZ=0")
        self.assertEqual(self.send("PROT S")[0][:3], "536")
        self.assertEqual(self.send("PROT C")[0][:3], "200")
        self.assertEqual(self.send("PROT P")[0][:3], "200")

    def test_ccc_refused(self) -> None:
        """CCC is refused (534): the control connection stays protected."""
        self.send("AUTH TLS")
        self.assertEqual(self.send("CCC")[0][:3], "534")

    def test_prot_p_wraps_data_in_tls(self) -> None:
        """After PROT P the passive data listener is wrapped in TLS (server side)."""
        self.send("AUTH TLS")
        self.send("PBSZ 0")
        self.send("PROT P")
        self.login()
        self.send("PASV")
        factory = self.clock.tcpServers[-1][1]
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        self.assertEqual(type(factory.wrappedFactory).__name__, "_DataFactory")

    def test_require_tls(self) -> None:
        """With require_tls, USER before AUTH TLS gets 530; anonymous is exempt."""
        self.factory.require_tls = True
        self.assertEqual(self.send("USER alice")[0][:3], "530")
        self.assertEqual(self.send("USER anonymous")[0][:3], "331")

    def test_require_tls_protects_data(self) -> None:
        """With require_tls, a user's transfer before PROT P gets 521, and PROT C 534."""
        self.factory.require_tls = True
        self.send("AUTH TLS")
        self.send("PBSZ 0")
        self.login()
        self.assertEqual(self.send("PROT C")[0][:3], "534")
        self.send("PASV")
        self.assertEqual(self.send("LIST")[-1][:3], "521")
        self.send("PROT P")
        self.send("PASV")
        self.assertEqual(self.send("LIST")[0][:3], "150")


class ShellTests(FTPTestMixin, SynchronousTestCase):
    """The IFTPShell avatar over a FileView."""

    def test_interface(self) -> None:
        """FTPShell provides Twisted's IFTPShell."""
        self.assertTrue(verifyObject(IFTPShell, FTPShell(self.store.view_for("alice"))))

    def test_factory(self) -> None:
        """The realm factory gives anonymous the public view and a user their home."""
        factory = shell_factory(self.store)
        self.assertIsNone(factory(ANONYMOUS)[0].user)
        self.assertEqual(factory("alice")[0].user, "alice")

    def test_twisted_calls(self) -> None:
        """The IFTPShell methods work in segments and map store errors to Twisted's."""
        from twisted.protocols import ftp

        shell = FTPShell(self.store.view_for("alice"))
        self.successResultOf(shell.makeDirectory(["d"]))
        self.successResultOf(shell.access(["d"]))
        names = [name for name, _ in self.successResultOf(shell.list([], ("size",)))]
        self.assertEqual(names, ["d", "public"])
        self.failureResultOf(shell.access(["..", "x"]), ftp.PermissionDeniedError)
        self.failureResultOf(shell.stat(["nope"], ("size",)), ftp.FileNotFoundError)


class FormatTests(SynchronousTestCase):
    """The pure formatting functions."""

    def test_mlsx_facts(self) -> None:
        """Facts come in RFC 3659 form, each ending with a semicolon."""
        info = FileInfo("a", "/a", "file", 7, 0.0, "adfrw")
        self.assertEqual(mlsx_facts(info), "type=file;size=7;modify=19700101000000;perm=adfrw;")
        self.assertEqual(mlsx_facts(info, ("size",)), "size=7;")

    def test_list_line(self) -> None:
        """LIST lines have the ls -l shape clients parse (year for old files)."""
        old = FileInfo("a b", "/a b", "file", 7, 0.0, "r")
        self.assertEqual(list_line(old, "ftp", now=time.time()),
                         "-r--r--r--   1 ftp      ftp                 7 Jan  1  1970 a b")
        d = FileInfo("d", "/d", "dir", 4096, 0.0, "elcm")
        self.assertTrue(list_line(d, "alice").startswith("drwxrwxr-x"))


class ClientParsingTests(SynchronousTestCase):
    """The client's MLSD parsing."""

    def test_parse_mlsx(self) -> None:
        """An MLSD line becomes a RemoteEntry with typed size/time and every fact."""
        from appnet.ftp.client import parse_mlsx

        entry = parse_mlsx("type=file;size=12;modify=19700101000010;perm=r;UNIX.mode=0644; a b.txt")
        self.assertEqual((entry.name, entry.kind, entry.size, entry.modified, entry.perm),
                         ("a b.txt", "file", 12, 10.0, "r"))
        self.assertEqual(entry.facts["unix.mode"], "0644")

    def test_parse_mlsx_sparse(self) -> None:
        """Missing facts give None, not errors (servers choose what they send)."""
        from appnet.ftp.client import parse_mlsx

        entry = parse_mlsx("type=dir; docs")
        self.assertEqual((entry.name, entry.kind, entry.size, entry.modified), ("docs", "dir", None, None))


class TapTests(SynchronousTestCase):
    """C{appnet.ftp.tap}: config becomes listeners and a configured factory."""

    def build(self, **ftp):
        from appnet.config import load_config
        from appnet.service import make_service

        self.patch(accounts, "SCRYPT_N", 16)
        clock = MemoryReactorClock()
        ftp.setdefault("listen", ["tcp:0:interface=127.0.0.1"])
        ftp.setdefault("listen_tls", ["tcp:0:interface=127.0.0.1"])
        config = load_config(data_dir=self.mktemp(), overrides={"ftp": ftp})
        top = make_service(config, clock, only=("ftp",))
        top.startService()
        self.addCleanup(top.stopService)
        factories = [entry[1] for entry in clock.tcpServers]
        inner = [getattr(f, "wrappedFactory", f) for f in factories]
        inner = [getattr(f, "wrappedFactory", f) for f in inner]
        return top, clock, factories, inner

    def test_listeners_and_settings(self) -> None:
        """Plain and implicit-TLS listeners are made, with passive range and masquerade applied."""
        _top, _clock, factories, inner = self.build(
            passive_ports="60000-60009", masquerade_address="203.0.113.7"
        )
        self.assertEqual(len(factories), 2)
        self.assertEqual([f.implicit_tls for f in inner], [False, True])
        self.assertIsInstance(factories[1], TLSMemoryBIOFactory)
        self.assertEqual(inner[0].passive_ports, range(60000, 60010))
        self.assertEqual(inner[0].masquerade_address, "203.0.113.7")

    def test_ftps_options_cache_sessions_tls12(self) -> None:
        """FTPS uses TLS options with a session cache and TLS 1.2 at most; the
        options other services share are left alone."""
        from OpenSSL import SSL

        top, _clock, factories, inner = self.build()
        ours = inner[0].tls_options
        self.assertIsNot(ours, top.context.tls_options)
        self.assertTrue(ours.enableSessions)
        self.assertTrue(ours._options & SSL.OP_NO_TLSv1_3)
        self.assertFalse(top.context.tls_options.enableSessions)

    def test_anonymous_through_portal(self) -> None:
        """The FTP portal logs anonymous in to the public view, and only when enabled."""
        from twisted.cred.credentials import Anonymous

        _top, _clock, _f, inner = self.build()
        _iface, shell, _logout = self.successResultOf(
            inner[0].portal.login(Anonymous(), None, IFTPShell)
        )
        self.assertIsNone(shell.user)
        _top, _clock, _f, inner = self.build(anonymous=False)
        self.failureResultOf(inner[0].portal.login(Anonymous(), None, IFTPShell))


class RoundTripTests(SynchronousTestCase):
    """The server's MLSD formatting read back by the client's parser."""

    @given(
        name=st.text(
            alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1
        ).filter(lambda n: n.strip() == n and "/" not in n and n not in (".", "..")),
        size=st.integers(min_value=0, max_value=2**63),
        mtime=st.integers(min_value=0, max_value=2**33),
        kind=st.sampled_from(["file", "dir"]),
        perm=st.sampled_from(["", "r", "el", "adfrw", "cdeflmp"]),
    )
    @settings(max_examples=200, deadline=None)
    def test_mlsx_round_trip(self, name, size, mtime, kind, perm) -> None:
        """Any listable name, size, time and perm survive mlsx_facts then parse_mlsx."""
        from appnet.ftp.client import parse_mlsx

        info = FileInfo(name, "/" + name, kind, size, float(mtime), perm)
        entry = parse_mlsx(f"{mlsx_facts(info)} {name}")
        self.assertEqual((entry.name, entry.kind, entry.size, entry.modified, entry.perm),
                         (name, kind, size, float(mtime), perm))


class ASCIIUploadTests(FTPTestMixin, SynchronousTestCase):
    """TYPE A uploads."""

    def test_stor_ascii_converts_crlf(self) -> None:
        """A TYPE A upload is stored with LF line ends, even with CRLF split across chunks."""
        self.login()
        self.send("TYPE A")
        self.send("PASV")
        channel, transport = self.pasv_channel()
        self.send("STOR t.txt")
        channel.dataReceived(b"one\r")
        channel.dataReceived(b"\ntwo\r\n")
        self.finish(channel, transport)
        with open(self.home("t.txt"), "rb") as f:
            self.assertEqual(f.read(), b"one\ntwo\n")


class _Session:
    """What a L{ftp_server._DataFactory} needs of its control session."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.lost: list[object] = []
        self.factory = FTPServerFactory(None, reactor=reactor)

    def data_channel_lost(self, data: object, channel: object) -> None:
        self.lost.append(channel)


class PassivePortTests(SynchronousTestCase):
    """
    appnet's own passive data port (used on real reactors in place of
    C{listenTCP}), on a real loopback socket watched by a memory reactor.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.data = ftp_server._DataFactory(_Session(self.reactor), "127.0.0.1")
        self.failures: list[Failure] = []
        self.port = ftp_server._PassivePort(self.reactor, self.data, "127.0.0.1", 0,
                                            self.failures.append)
        self.data.listening_port = self.port
        self.addCleanup(self.port.stopListening)
        self.clients: list[socket.socket] = []

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        client = socket.socket()
        self.clients.append(client)
        self.addCleanup(client.close)
        client.settimeout(5)
        client.bind((source, 0))
        client.connect(("127.0.0.1", self.port.getHost().port))
        return client

    def test_waiting_connection_taken_at_once(self) -> None:
        """
        Before the transfer command the reactor does not watch the port; a
        connection already made then is accepted on the spot (no reactor
        turn), with TCP_NODELAY, and the port closes without the reactor
        ever watching it.
        """
        self.assertNotIn(self.port, self.reactor.readers)
        self.connect()
        self.data.accept()
        channel = self.successResultOf(self.data.wait())
        self.assertEqual(channel.transport.getPeer().host, "127.0.0.1")
        self.assertTrue(channel.transport.getTcpNoDelay())
        self.assertIsNone(self.port.socket)
        self.assertNotIn(self.port, self.reactor.readers)
        self.assertIsNone(self.data.listening_port)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_late_client(self) -> None:
        """
        With no connection waiting at the transfer command, the reactor
        watches the port until the client comes, then stops.
        """
        self.data.accept()
        self.assertIsNone(self.data.channel)
        self.assertIn(self.port, self.reactor.readers)
        d = self.data.wait()
        self.assertNoResult(d)
        self.connect()
        self.port.doRead()
        self.assertIsNotNone(self.successResultOf(d))
        self.assertNotIn(self.port, self.reactor.readers)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_client_never_comes(self) -> None:
        """
        The client has C{data_timeout} from the transfer command to
        connect; then the transfer fails and the port closes.
        """
        self.data.accept()
        d = self.data.wait()
        self.reactor.advance(self.data.session.factory.data_timeout - 1)
        self.assertNoResult(d)
        self.reactor.advance(2)
        self.failureResultOf(d, error.TimeoutError)
        self.assertIsNone(self.port.socket)
        self.assertNotIn(self.port, self.reactor.readers)

    def test_other_address_refused(self) -> None:
        """
        A connection from another address than the client's is closed
        unread, and the client's own is still taken afterwards.
        """
        thief = self.connect("127.0.0.2")
        self.data.accept()
        self.assertIsNone(self.data.channel)
        self.reactor.advance(0)
        try:
            stolen = thief.recv(10)
        except ConnectionResetError:
            stolen = b""
        self.assertEqual(stolen, b"")
        self.connect()
        self.port.doRead()
        self.assertIsNotNone(self.data.channel)

    def test_take_bare_socket(self) -> None:
        """
        C{take} hands over the client's waiting connection as a bare
        non-blocking socket (no transport, no channel); a stranger's is
        refused on the way; with nothing waiting it gives None.
        """
        self.assertIsNone(self.port.take())
        thief = self.connect("127.0.0.2")
        client = self.connect()
        sock, peer = self.port.take()
        self.addCleanup(sock.close)
        self.assertEqual(peer[0], "127.0.0.1")
        self.assertEqual(sock.getpeername(), client.getsockname())
        self.assertFalse(sock.getblocking())
        self.assertIsNone(self.data.channel)
        self.reactor.advance(0)
        try:
            stolen = thief.recv(10)
        except ConnectionResetError:
            stolen = b""
        self.assertEqual(stolen, b"")
        self.assertIsNone(self.port.take())

    def test_accept_failure_fails_the_transfer(self) -> None:
        """
        Out of descriptors, the port stops listening (a waiting connection
        would keep waking the reactor) and the transfer is told.
        """

        class Exhausted:
            def accept(self) -> None:
                raise OSError(errno.EMFILE, "Too many open files")

            def close(self) -> None:
                pass

        real, self.port.socket = self.port.socket, Exhausted()
        self.addCleanup(real.close)
        self.port.doRead()
        self.assertEqual([f.value.errno for f in self.failures], [errno.EMFILE])
        self.assertIsNone(self.port.socket)
        self.assertNotIn(self.port, self.reactor.readers)

    def test_port_taken(self) -> None:
        """A port in use raises C{CannotListenError} (PASV tries the next)."""
        self.assertRaises(error.CannotListenError, ftp_server._PassivePort, self.reactor,
                          self.data, "127.0.0.1", self.port.getHost().port,
                          self.failures.append)


class SendNowTests(SynchronousTestCase):
    """A small file's data leaves at once and the stream ends with it."""

    def setUp(self) -> None:
        ours, self.peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(self.peer.close)
        ours.setblocking(False)
        self.peer.setblocking(False)
        self.sock = ours

    def drain(self) -> tuple[bytes, bool]:
        """Everything the peer can read now, and whether it saw the end."""
        received = b""
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return received, False
            if not chunk:
                return received, True
            received += chunk

    def test_all_sent_then_end(self) -> None:
        """What fits the socket goes at once, followed by the end (FIN)."""
        self.assertEqual(ftp_server._send_now(self.sock, b"hello"), 5)
        self.assertEqual(self.drain(), (b"hello", True))

    def test_partly_sent_keeps_stream_open(self) -> None:
        """
        When the socket takes only part, the count says how much, and the
        stream stays open for Twisted's buffer to send the rest.
        """
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = os.urandom(4 << 20)
        sent = ftp_server._send_now(self.sock, data)
        self.assertLess(sent, len(data))
        received, ended = self.drain()
        self.assertEqual(received, data[:sent])
        self.assertFalse(ended)

    def test_peer_gone(self) -> None:
        """A socket whose peer is gone takes nothing and raises nothing."""
        self.peer.close()
        self.assertEqual(ftp_server._send_now(self.sock, b"x" * 100), 0)


class ReplySendTests(FTPTestMixin, SynchronousTestCase):
    """
    Replies on a plain TCP control connection go straight to its socket
    (here one end of a socketpair standing in for Twisted's connection);
    what the socket does not take goes through the transport, and so does
    every later reply, in order.
    """

    def setUp(self) -> None:
        super().setUp()
        ours, self.peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(self.peer.close)
        ours.setblocking(False)
        self.peer.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.pushed = 0

        class Connection:
            socket = ours
            disconnecting = False
            TLS = False

            def doWrite(conn) -> None:
                self.pushed += 1

        self.proto._control_socket = Connection()
        self.proto._replies_out = ReplySender(self.transport, self.proto.factory.stats)
        self.proto._replies_out.tcp = Connection()
        self.proto._replies_out._direct = True
        self.transport.clear()

    def received(self) -> bytes:
        data = b""
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return data
            data += chunk

    def test_replies_of_one_read_in_one_send(self) -> None:
        """Two commands in one read: both replies reach the socket together,
        none through the transport, counted in the stats."""
        before = self.stats["bytes_out"]
        self.proto.dataReceived(b"NOOP\r\nSYST\r\n")
        got = self.received()
        self.assertEqual(got.decode().splitlines(), ["200 NOOP ok", "215 UNIX Type: L8"])
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.stats["bytes_out"] - before, len(got))

    def test_backlog_goes_through_the_transport(self) -> None:
        """A reply bigger than the socket takes: the rest, and the next
        replies, go through the transport (pushed at once), in order."""
        self.proto.reply_multi(214, "help", ["x" * 100] * 2000, "end")
        direct = self.received()
        self.assertTrue(direct.startswith(b"214-help\r\n"))
        self.assertGreater(len(self.transport.value()), 0)
        self.assertEqual(self.pushed, 1)
        self.send("NOOP")
        self.assertEqual(self.received(), b"")
        self.assertTrue(self.transport.value().endswith(b"200 NOOP ok\r\n"))


class _DownloadSession(_Session):
    """What a L{ftp_server._Download} needs of its control session."""

    binary = True

    def __init__(self, reactor: MemoryReactorClock) -> None:
        super().__init__(reactor)
        self.later: list = []

    def after_replies(self, work) -> None:
        self.later.append(work)

    def replies_sent(self) -> None:
        for work in self.later:
            work()


class SmallFileTests(SynchronousTestCase):
    """
    A small binary file to a client already connected to the passive port
    goes on the bare socket in the transfer command's turn; when the
    socket takes only part of it, the connection gets its transport and
    the rest follows.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.session = _DownloadSession(self.reactor)
        self.data = ftp_server._DataFactory(self.session, "127.0.0.1")
        self.port = ftp_server._PassivePort(self.reactor, self.data, "127.0.0.1", 0,
                                            lambda failure: None)
        self.data.listening_port = self.port
        self.addCleanup(self.port.stopListening)

    def download(self, content: bytes, client: socket.socket):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        client.connect(("127.0.0.1", self.port.getHost().port))
        file = open(path, "rb")  # noqa: SIM115 - the transfer closes it
        self.addCleanup(file.close)
        transfer = ftp_server._Download(self.session, self.data, file, 0)
        return transfer, transfer.run()

    def client(self) -> socket.socket:
        client = socket.socket()
        self.addCleanup(client.close)
        client.settimeout(5)
        return client

    def test_bare_socket(self) -> None:
        """226 at once, the data then the end on the client's side, no
        transport made; the socket and the port close after the replies."""
        content = os.urandom(3000)
        client = self.client()
        transfer, outcome = self.download(content, client)
        self.assertEqual(outcome, (226,))
        self.assertIsNone(self.data.channel)
        self.assertTrue(transfer.file.closed)
        self.assertIsNotNone(self.port.socket)
        self.session.replies_sent()
        self.assertIsNone(self.port.socket)
        received = b""
        while chunk := client.recv(1 << 16):
            received += chunk
        self.assertEqual(received, content)
        self.assertEqual(self.session.factory.stats["bytes_out"], len(content))

    def test_socket_takes_part(self) -> None:
        """
        A socket that takes only part (a client not reading, small
        buffers): the connection is served a transport and the transfer
        goes on from where the bare send stopped.
        """
        content = os.urandom(ftp_server.SMALL_FILE)
        self.port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client = self.client()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        transfer, outcome = self.download(content, client)
        self.assertIsInstance(outcome, defer.Deferred)
        self.assertIsNotNone(self.data.channel)
        sent_bare = self.session.factory.stats["bytes_out"]
        self.assertGreater(transfer.offset, 0)
        self.assertEqual(transfer.offset, sent_bare)
        self.assertLess(sent_bare, len(content))
        self.session.replies_sent()
        received = b""
        channel = self.data.channel
        while len(received) < len(content):
            channel.transport.doWrite()
            received += client.recv(1 << 16)
        self.assertEqual(received, content)
