"""
Integration tests for the FTP server on loopback: real sockets, real TLS,
the sendfile data path. The client is Python's ftplib run in a thread (the
server runs in the reactor), plus a raw control connection where a test
needs to see exact replies.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import socket
import ssl

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from appnet.ftp import server as ftp_server
from appnet.ftp.testing import start_ftp_server

USERS = {"alice": "wonderland"}


class SessionReusingFTP_TLS(ftplib.FTP_TLS):
    """ftplib's FTP_TLS, but data connections resume the control connection's
    TLS session (RFC 4217 10.2), as curl and FileZilla do and ftplib does not."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


def client_context(cert: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert)


def in_thread(f, *args):
    return threads.deferToThread(f, *args)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RawControl:
    """A blocking control connection that returns raw reply lines."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> str:
        line = self.file.readline().decode()
        if line[3:4] == "-":
            code = line[:3]
            while True:
                more = self.file.readline().decode()
                line += more
                if more.startswith(code + " "):
                    break
        return line

    def send(self, command: str) -> str:
        self.sock.sendall(command.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class LoopbackTests(TestCase):
    """ftplib against appnet's FTP server over real loopback sockets."""

    timeout = 60

    async def setUp(self) -> None:
        self.server = await start_ftp_server(self, USERS, incoming=True, quota=50_000_000)
        self.big = os.urandom(8 * 1024 * 1024 + 123)
        self.server.put(self.big, "public", "big.bin")
        self.server.put(b"hello\n", "public", "hello.txt")

    def ftp(self, tls: bool = False, reuse: bool = False, user: str = "alice") -> ftplib.FTP:
        if tls:
            cls = SessionReusingFTP_TLS if reuse else ftplib.FTP_TLS
            ftp = cls(context=client_context(self.server.cert), timeout=10)
        else:
            ftp = ftplib.FTP(timeout=10)
        ftp.connect("127.0.0.1", self.server.port)
        if user == "anonymous":
            ftp.login()
        else:
            ftp.login(user, USERS[user])
        if tls:
            ftp.prot_p()
        return ftp

    async def test_sendfile_download(self) -> None:
        """An 8 MiB download over plain TCP arrives intact through the sendfile path."""
        used = []
        original = ftp_server._Sendfile.start
        self.patch(ftp_server._Sendfile, "start",
                   lambda self: used.append(True) or original(self))

        def fetch() -> bytes:
            ftp = self.ftp(user="anonymous")
            out = io.BytesIO()
            ftp.retrbinary("RETR big.bin", out.write)
            ftp.quit()
            return out.getvalue()

        data = await in_thread(fetch)
        self.assertEqual(sha(data), sha(self.big))
        self.assertEqual(used, [True])
        self.assertGreaterEqual(self.server.stats["bytes_out"], len(self.big))

    async def test_resume_download_rest_after_pasv(self) -> None:
        """REST after PASV then RETR resumes mid-file (the twisted/twisted#4819 deadlock is gone)."""

        def fetch() -> bytes:
            ftp = self.ftp(user="anonymous")
            out = io.BytesIO()
            ftp.retrbinary("RETR big.bin", out.write, rest=1_000_000)
            ftp.quit()
            return out.getvalue()

        data = await in_thread(fetch)
        self.assertEqual(sha(data), sha(self.big[1_000_000:]))

    async def test_tls_upload_download(self) -> None:
        """A user uploads and downloads over explicit FTPS with PROT P, and the bytes survive."""
        payload = os.urandom(3_000_000)

        def roundtrip() -> bytes:
            ftp = self.ftp(tls=True)
            ftp.storbinary("STOR up.bin", io.BytesIO(payload))
            out = io.BytesIO()
            ftp.retrbinary("RETR up.bin", out.write)
            ftp.quit()
            return out.getvalue()

        self.assertEqual(sha(await in_thread(roundtrip)), sha(payload))
        with open(self.server.path("home", "alice", "up.bin"), "rb") as f:
            self.assertEqual(sha(f.read()), sha(payload))

    async def test_active_mode_tls(self) -> None:
        """PORT with PROT P: the server connects to the client and is the TLS server
        on that connection (RFC 4217), both directions."""
        payload = os.urandom(400_000)

        def roundtrip() -> bytes:
            ftp = self.ftp(tls=True)
            ftp.set_pasv(False)
            ftp.storbinary("STOR active.bin", io.BytesIO(payload))
            out = io.BytesIO()
            ftp.retrbinary("RETR active.bin", out.write)
            ftp.quit()
            return out.getvalue()

        self.assertEqual(sha(await in_thread(roundtrip)), sha(payload))

    async def test_implicit_ftps(self) -> None:
        """The implicit-FTPS port speaks TLS from the first byte and serves a listing."""

        def listing() -> list:
            ctx = client_context(self.server.cert)
            raw = socket.create_connection(("127.0.0.1", self.server.tls_port), timeout=10)
            ftp = ftplib.FTP_TLS(context=ctx, timeout=10)
            ftp.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            ftp.host = "127.0.0.1"
            ftp.af = ftp.sock.family
            ftp.file = ftp.sock.makefile("r", encoding=ftp.encoding)
            ftp.welcome = ftp.getresp()
            ftp.login("alice", USERS["alice"])
            ftp.prot_p()
            names = [name for name, _ in ftp.mlsd("/public")]
            ftp.quit()
            return names

        self.assertEqual(await in_thread(listing), ["big.bin", "hello.txt", "incoming"])

    async def test_session_reuse_required(self) -> None:
        """With require_tls_session_reuse, a data connection resuming the control
        session works and one that does not is refused with 522."""
        await self.server.stop()
        self.server = await start_ftp_server(
            self, USERS, overrides={"require_tls_session_reuse": True}
        )
        self.server.put(b"hello\n", "public", "hello.txt")

        def reusing() -> bytes:
            ftp = self.ftp(tls=True, reuse=True)
            out = io.BytesIO()
            ftp.retrbinary("RETR /public/hello.txt", out.write)
            ftp.quit()
            return out.getvalue()

        def not_reusing() -> str:
            ftp = self.ftp(tls=True)
            try:
                ftp.retrbinary("RETR /public/hello.txt", lambda b: None)
            except (ftplib.error_perm, ftplib.error_temp) as e:
                return str(e)
            except (ssl.SSLError, OSError):
                # The server cut the handshake; its reply follows.
                try:
                    return ftp.getresp()
                except (ftplib.error_perm, ftplib.error_temp) as e:
                    return str(e)
            finally:
                ftp.close()
            return "transferred"

        self.assertEqual(await in_thread(reusing), b"hello\n")
        self.assertTrue((await in_thread(not_reusing)).startswith("522"))

    async def test_quota_exceeded(self) -> None:
        """An upload past the user's quota gets 552 and leaves no file behind."""
        await self.server.stop()
        self.server = await start_ftp_server(self, USERS, quota=100_000)

        def upload() -> str:
            ftp = self.ftp()
            try:
                try:
                    ftp.storbinary("STOR big", io.BytesIO(os.urandom(300_000)))
                except (BrokenPipeError, ConnectionResetError):
                    # The server closed the data connection at the limit
                    # before we finished sending; its reply is still due.
                    ftp.getresp()
            except ftplib.error_temp as e:
                return str(e)
            except ftplib.error_perm as e:
                return str(e)
            finally:
                ftp.close()
            return "stored"

        self.assertTrue((await in_thread(upload)).startswith("552"))
        self.assertEqual(os.listdir(self.server.path("home", "alice")), [])

    async def test_abort_download(self) -> None:
        """ABOR during a large download: 426 then 226, and the session goes on."""
        self.server.put(os.urandom(64 * 1024 * 1024), "public", "huge.bin")

        def abort() -> tuple:
            ftp = self.ftp(user="anonymous")
            conn = ftp.transfercmd("RETR huge.bin")
            conn.recv(65536)
            ftp.sock.sendall(b"ABOR\r\n")
            conn.close()
            replies = (ftp.getline(), ftp.getline())
            pwd = ftp.pwd()
            ftp.quit()
            return replies, pwd

        (first, second), pwd = await in_thread(abort)
        self.assertEqual((first[:3], second[:3]), ("426", "226"))
        self.assertEqual(pwd, "/")

    async def test_pipelined_store_of_small_files(self) -> None:
        """Fifty small files in one session each get 226 (data and control interleave right)."""

        def many() -> list:
            ftp = self.ftp()
            for i in range(50):
                ftp.storbinary(f"STOR f{i}", io.BytesIO(b"x" * i))
            names = ftp.nlst()
            ftp.quit()
            return names

        names = await in_thread(many)
        self.assertEqual(len(names), 51)  # the files and "public"

    async def test_small_files_in_one_session(self) -> None:
        """
        Small files of every size up to past the one-write limit (empty,
        64 KiB, 64 KiB + 1) download intact one after another in one
        session, each on a passive port of appnet's own (not listenTCP),
        each answered 150 then 226. The client connects before RETR (as
        ftplib does), so files of up to 4 KiB go on the bare socket: only
        the larger ones may need a transport.
        """
        ports, served = [], []
        original = ftp_server._PassivePort.__init__
        serve = ftp_server._PassivePort.serve

        def counting(port, *args):
            ports.append(port)
            original(port, *args)

        def serving(port, *args):
            served.append(port)
            serve(port, *args)

        self.patch(ftp_server._PassivePort, "__init__", counting)
        self.patch(ftp_server._PassivePort, "serve", serving)
        sizes = [0, 1, 1000, 4096, ftp_server.SMALL_FILE, ftp_server.SMALL_FILE + 1]
        files = {f"s{i}.bin": os.urandom(n) for i, n in enumerate(sizes)}
        for name, data in files.items():
            self.server.put(data, "public", name)

        def fetch_all() -> tuple[dict, list]:
            ftp = self.ftp(user="anonymous")
            got, replies = {}, []
            for _ in range(3):
                for name in files:
                    out = io.BytesIO()
                    replies.append(ftp.retrbinary(f"RETR {name}", out.write))
                    got[name] = out.getvalue()
            ftp.quit()
            return got, replies

        got, replies = await in_thread(fetch_all)
        self.assertEqual({n: sha(d) for n, d in got.items()},
                         {n: sha(d) for n, d in files.items()})
        self.assertEqual({r[:3] for r in replies}, {"226"})
        self.assertEqual(len(ports), 3 * len(files))
        self.assertLessEqual(len(served), 3 * 2)
        self.assertGreaterEqual(self.server.stats["bytes_out"], 3 * sum(sizes))

    async def test_passive_port_only_for_the_client(self) -> None:
        """
        A connection to the passive port from another address (127.0.0.2),
        made before the client's own, is closed unread; the client's own
        gets the file.
        """

        def steal_then_fetch() -> tuple[bytes, bytes, str, str]:
            control = RawControl("127.0.0.1", self.server.port)
            control.send("USER anonymous")
            control.send("PASS guest@")
            control.send("TYPE I")
            reply = control.send("EPSV")
            port = int(reply.split("|||")[1].split("|")[0])
            thief = socket.socket()
            thief.settimeout(10)
            thief.bind(("127.0.0.2", 0))
            thief.connect(("127.0.0.1", port))
            data = socket.create_connection(("127.0.0.1", port), timeout=10)
            first = control.send("RETR hello.txt")
            try:
                stolen = thief.recv(100)
            except ConnectionResetError:
                stolen = b""
            thief.close()
            received = b""
            while chunk := data.recv(65536):
                received += chunk
            data.close()
            last = control.reply()
            control.send("QUIT")
            control.close()
            return stolen, received, first, last

        stolen, received, first, last = await in_thread(steal_then_fetch)
        self.assertEqual(stolen, b"")
        self.assertEqual(received, b"hello\n")
        self.assertTrue(first.startswith("150"), first)
        self.assertTrue(last.startswith("226"), last)

    async def test_connection_limit_per_address(self) -> None:
        """Over the per-address connection limit a client is told 421 and closed."""
        await self.server.stop()
        self.server = await start_ftp_server(
            self, USERS, overrides={"max_connections_per_address": 1}
        )

        def two() -> str:
            first = RawControl("127.0.0.1", self.server.port)
            second = RawControl("127.0.0.1", self.server.port)
            greeting = second.greeting
            first.close()
            second.close()
            return greeting

        self.assertTrue((await in_thread(two)).startswith("421"))

    async def test_epsv_ipv6(self) -> None:
        """EPSV and EPRT work over an IPv6 control connection (RFC 2428)."""
        if not socket.has_ipv6:
            self.skipTest("no IPv6")
        try:
            socket.create_server(("::1", 0), family=socket.AF_INET6).close()
        except OSError:
            self.skipTest("no ::1")
        await self.server.stop()
        self.server = await start_ftp_server(
            self, USERS, overrides={"listen": ["tcp6:0:interface=\\:\\:1"]}
        )
        self.server.put(b"six\n", "public", "v6.txt")

        def fetch() -> tuple:
            ftp = ftplib.FTP(timeout=10)
            ftp.connect("::1", self.server.port)
            ftp.login()
            passive = io.BytesIO()
            ftp.retrbinary("RETR v6.txt", passive.write)
            ftp.set_pasv(False)
            active = io.BytesIO()
            ftp.retrbinary("RETR v6.txt", active.write)
            ftp.quit()
            return passive.getvalue(), active.getvalue()

        self.assertEqual(await in_thread(fetch), (b"six\n", b"six\n"))


class ClientTests(TestCase):
    """appnet's FTP client (L{appnet.ftp.client.connect}) against appnet's server."""

    timeout = 60

    async def setUp(self) -> None:
        from appnet.ftp.client import connect

        self.connect = connect
        self.server = await start_ftp_server(
            self, USERS, overrides={"require_tls_session_reuse": True}
        )
        self.payload = os.urandom(2_500_000)
        self.server.put(self.payload, "public", "data.bin")
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)

    async def session(self, tls: str = "explicit", user: str = "alice"):
        port = self.server.tls_port if tls == "implicit" else self.server.port
        password = USERS.get(user, "x@y")
        session = await self.connect("localhost", port, user, password, tls=tls,
                                     cafile=self.server.cert)
        self.addCleanup(lambda: session._control.transport.loseConnection())
        return session

    async def test_list_parses_mlsd(self) -> None:
        """list() returns MLSD entries as RemoteEntry objects with their facts."""
        session = await self.session()
        entries = {e.name: e for e in await session.list("/public")}
        self.assertEqual(entries["data.bin"].kind, "file")
        self.assertEqual(entries["data.bin"].size, len(self.payload))
        self.assertIn("r", entries["data.bin"].perm)
        self.assertIsNotNone(entries["data.bin"].modified)
        await session.quit()

    async def test_download_resume_with_progress(self) -> None:
        """download(resume=True) fetches only what is missing, over TLS data connections
        that resume the control session (the server requires it), reporting progress."""
        local = os.path.join(self.work, "data.bin")
        with open(local, "wb") as f:
            f.write(self.payload[:1_000_000])
        seen = []
        session = await self.session()
        got = await session.download("/public/data.bin", local, resume=True,
                                     progress=lambda done, total: seen.append((done, total)))
        self.assertEqual(got, len(self.payload) - 1_000_000)
        with open(local, "rb") as f:
            self.assertEqual(sha(f.read()), sha(self.payload))
        self.assertEqual(seen[-1], (len(self.payload), len(self.payload)))
        await session.quit()

    async def test_upload_resume(self) -> None:
        """upload(resume=True) over implicit FTPS sends only the tail the server lacks
        (its data connections resume the implicit control session)."""
        local = os.path.join(self.work, "up.bin")
        with open(local, "wb") as f:
            f.write(self.payload)
        os.makedirs(self.server.path("home", "alice"), exist_ok=True)
        with open(self.server.path("home", "alice", "up.bin"), "wb") as f:
            f.write(self.payload[:700_000])
        session = await self.session(tls="implicit")
        sent = await session.upload(local, "up.bin", resume=True)
        self.assertEqual(sent, len(self.payload) - 700_000)
        with open(self.server.path("home", "alice", "up.bin"), "rb") as f:
            self.assertEqual(sha(f.read()), sha(self.payload))
        await session.quit()

    async def test_errors(self) -> None:
        """A refused command raises FTPClientError with the reply code; a bad password too."""
        from appnet.ftp.client import FTPClientError

        session = await self.session(tls="none")
        with self.assertRaises(FTPClientError) as caught:
            await session.size("/nope")
        self.assertEqual(caught.exception.code, 550)
        await session.quit()
        with self.assertRaises(FTPClientError) as caught:
            await self.connect("127.0.0.1", self.server.port, "alice", "wrong", tls="none")
        self.assertEqual(caught.exception.code, 530)


class CommandLineTests(TestCase):
    """C{appnet ftp ls|get|put} as a user runs it, against appnet's server."""

    timeout = 60

    async def setUp(self) -> None:
        self.server = await start_ftp_server(self, USERS)
        self.payload = os.urandom(300_000)
        self.server.put(self.payload, "public", "data.bin")
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)

    async def appnet(self, *args: str, stdin: bytes = b""):
        from tests.support import appnet_argv, run_process, subprocess_env

        # The child must import this checkout, not an older editable build.
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        result = await run_process(appnet_argv() + ["ftp", *args], stdin=stdin, cwd=self.work,
                                   env=subprocess_env(PYTHONPATH=repo))
        self.assertEqual(result.returncode, 0, result.stderr.decode())
        return result

    def common(self, tls: str = "explicit") -> list[str]:
        port = self.server.tls_port if tls == "implicit" else self.server.port
        return ["--host", "localhost", "--port", str(port), "--tls", tls,
                "--cafile", self.server.cert]

    async def test_ls_get_put(self) -> None:
        """ls lists public/ anonymously; get downloads over FTPS; put uploads as a user
        (password read from stdin) over implicit FTPS."""
        listing = await self.appnet("ls", *self.common(), "/")
        self.assertIn("data.bin", listing.stdout.decode())
        await self.appnet("get", *self.common(), "data.bin", "got.bin")
        with open(os.path.join(self.work, "got.bin"), "rb") as f:
            self.assertEqual(sha(f.read()), sha(self.payload))
        await self.appnet("put", *self.common("implicit"), "--user", "alice",
                          "got.bin", "back.bin", stdin=b"wonderland\n")
        with open(self.server.path("home", "alice", "back.bin"), "rb") as f:
            self.assertEqual(sha(f.read()), sha(self.payload))
