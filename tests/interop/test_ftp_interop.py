"""
Interop tests for FTP: third-party clients against appnet's server.

 - curl: C{ftp://} listing and download (anonymous), C{-T} upload, C{-C -}
   resume both ways, C{--ftp-pasv} with EPSV on and off, C{--ftp-port}
   (EPRT and PORT), explicit FTPS (C{--ssl-reqd}) and implicit C{ftps://}
   with C{--cacert}, refused anonymous upload;
 - lftp: C{mirror} and C{mirror -R} of a tree, plain and with
   C{set ftp:ssl-force true};
 - Python's ftplib: C{FTP_TLS} with C{prot_p()}, C{mlsd()} facts,
   C{retrbinary(rest=)}, C{storbinary}, rename, delete, C{size()}.

Each test needs its tool (L{require_tool}): skipped when it is missing,
failed when C{APPNET_REQUIRE_INTEROP=1}. Blocking clients run in threads
(subprocesses via L{run_process}) so the reactor keeps serving.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import ssl

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from appnet.ftp.testing import start_ftp_server
from tests.support import require_tool, run_process

USERS = {"alice": "wonderland"}


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree_digests(root: str) -> dict[str, str]:
    """Relative path -> sha256 of every file under C{root}."""
    out = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            out[os.path.relpath(path, root)] = digest(path)
    return out


def make_tree(root: str) -> None:
    """A small tree: nested directories, an empty file, a 1 MiB file, UTF-8 names."""
    os.makedirs(os.path.join(root, "a", "b"), exist_ok=True)
    os.makedirs(os.path.join(root, "c"), exist_ok=True)
    files = {
        "top.txt": b"top\n",
        "a/one.bin": os.urandom(1 << 20),
        "a/b/deep.txt": b"deep\n",
        "c/empty": b"",
        "c/Gr\u00fc\u00dfe.txt": "gr\u00fc\u00dfe\n".encode(),
    }
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)


class FTPInteropBase(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.server = await start_ftp_server(self, USERS, incoming=True)
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        self.big = self.server.put(os.urandom(5_000_003), "public", "big.bin")
        self.server.put(b"hello\n", "public", "hello.txt")

    def url(self, path: str = "/", scheme: str = "ftp", host: str = "127.0.0.1") -> str:
        port = self.server.tls_port if scheme == "ftps" else self.server.port
        return f"{scheme}://{host}:{port}{path}"

    def local(self, name: str) -> str:
        return os.path.join(self.work, name)

    def home(self, *parts: str) -> str:
        return self.server.path("home", "alice", *parts)


class CurlTests(FTPInteropBase):
    """curl against appnet's FTP server."""

    async def curl(self, *args: str, ok: bool = True):
        curl = require_tool("curl")
        result = await run_process([curl, "-sS", "--max-time", "60", *args])
        if ok:
            self.assertEqual(result.returncode, 0, result.stderr.decode())
        return result

    async def test_anonymous_listing(self) -> None:
        """curl ftp://host/ lists public/ anonymously (the textbook's first session)."""
        result = await self.curl(self.url("/"))
        names = [line.split()[-1] for line in result.stdout.decode().splitlines()]
        self.assertEqual(names, ["big.bin", "hello.txt", "incoming"])

    async def test_download_modes(self) -> None:
        """Downloads are identical over EPSV, PASV (--disable-epsv), EPRT and PORT (--ftp-port)."""
        variants = {
            "epsv": ["--ftp-pasv"],
            "pasv": ["--ftp-pasv", "--disable-epsv"],
            "eprt": ["--ftp-port", "127.0.0.1"],
            "port": ["--ftp-port", "127.0.0.1", "--disable-eprt"],
        }
        for name, flags in variants.items():
            out = self.local(name)
            await self.curl(*flags, "-o", out, self.url("/big.bin"))
            self.assertEqual(digest(out), digest(self.big), name)

    async def test_upload_and_resume(self) -> None:
        """-T uploads; -C - resumes an interrupted download and an interrupted upload."""
        with open(self.big, "rb") as f:
            data = f.read()
        partial = self.local("partial")
        with open(partial, "wb") as f:
            f.write(data[:1_234_567])
        await self.curl("-C", "-", "-o", partial, self.url("/big.bin"))
        self.assertEqual(digest(partial), digest(self.big))

        os.makedirs(self.home(), exist_ok=True)
        with open(self.home("up.bin"), "wb") as f:
            f.write(data[:2_000_000])
        await self.curl("-u", "alice:wonderland", "-C", "-", "-T", self.big,
                        self.url("/up.bin"))
        self.assertEqual(digest(self.home("up.bin")), digest(self.big))

        await self.curl("-u", "alice:wonderland", "-T", self.big, self.url("/new.bin"))
        self.assertEqual(digest(self.home("new.bin")), digest(self.big))

    async def test_explicit_ftps(self) -> None:
        """--ssl-reqd: AUTH TLS, PROT P, upload and download verified against the server's certificate."""
        await self.curl("--ssl-reqd", "--cacert", self.server.cert, "-u", "alice:wonderland",
                        "-T", self.big, self.url("/tls.bin", host="localhost"))
        self.assertEqual(digest(self.home("tls.bin")), digest(self.big))
        out = self.local("tls.out")
        await self.curl("--ssl-reqd", "--cacert", self.server.cert, "-u", "alice:wonderland",
                        "-o", out, self.url("/tls.bin", host="localhost"))
        self.assertEqual(digest(out), digest(self.big))

    async def test_implicit_ftps(self) -> None:
        """ftps:// (implicit TLS) lists and downloads with resume."""
        result = await self.curl("--cacert", self.server.cert, self.url("/", "ftps", "localhost"))
        self.assertIn("hello.txt", result.stdout.decode())
        partial = self.local("p")
        with open(partial, "wb") as f:
            f.write(b"\0" * 0)
        await self.curl("--cacert", self.server.cert, "-C", "-", "-o", partial,
                        self.url("/big.bin", "ftps", "localhost"))
        self.assertEqual(digest(partial), digest(self.big))

    async def test_tls_session_reuse_required(self) -> None:
        """With require_tls_session_reuse, curl's data connections resume the session and work."""
        await self.server.stop()
        self.server = await start_ftp_server(
            self, USERS, overrides={"require_tls_session_reuse": True}
        )
        self.server.put(b"hello\n", "public", "hello.txt")
        result = await self.curl("--ssl-reqd", "--cacert", self.server.cert,
                                 self.url("/hello.txt", host="localhost"))
        self.assertEqual(result.stdout, b"hello\n")

    async def test_anonymous_upload_refused(self) -> None:
        """Anonymous -T outside incoming/ fails (550); into incoming/ it works."""
        result = await self.curl("-T", self.big, self.url("/x.bin"), ok=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertFalse(os.path.exists(self.server.path("public", "x.bin")))
        await self.curl("-T", self.big, self.url("/incoming/drop.bin"))
        self.assertEqual(digest(self.server.path("public", "incoming", "drop.bin")),
                         digest(self.big))

    async def test_traversal(self) -> None:
        """A traversal in the URL (sent as CWD ..) is refused and nothing leaks."""
        result = await self.curl("--path-as-is", self.url("/../../../etc/passwd"), ok=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn(b"root:", result.stdout)


class LftpTests(FTPInteropBase):
    """lftp mirror and mirror -R against appnet's FTP server."""

    async def lftp(self, script: str, tls: bool = False):
        lftp = require_tool("lftp")
        settings = "set net:max-retries 1; set net:timeout 20; "
        if tls:
            settings += (f"set ftp:ssl-force true; set ftp:ssl-protect-data true; "
                         f"set ssl:ca-file {self.server.cert}; ")
        else:
            settings += "set ftp:ssl-allow false; "
        # Settings must come before "open": lftp reads ssl:ca-file when it
        # first sets up TLS for a site.
        url = self.url("/", host="localhost" if tls else "127.0.0.1")
        result = await run_process(
            [lftp, "-c", f"{settings}open -u alice,wonderland {url}; {script}"],
            env={"HOME": self.work, "PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8"},
        )
        self.assertEqual(result.returncode, 0, result.stderr.decode() + result.stdout.decode())
        return result

    async def check_mirror(self, tls: bool) -> None:
        source = self.local("source")
        make_tree(source)
        await self.lftp(f"mirror -R {source} /tree", tls=tls)
        self.assertEqual(tree_digests(self.home("tree")), tree_digests(source))
        back = self.local("back")
        await self.lftp(f"mirror /tree {back}", tls=tls)
        self.assertEqual(tree_digests(back), tree_digests(source))

    async def test_mirror_both_ways(self) -> None:
        """mirror -R uploads a tree and mirror brings it back byte for byte."""
        await self.check_mirror(tls=False)

    async def test_mirror_both_ways_tls(self) -> None:
        """The same with ftp:ssl-force true (AUTH TLS, PROT P on every data connection)."""
        await self.check_mirror(tls=True)


class FtplibTests(FTPInteropBase):
    """Python's ftplib against appnet's FTP server."""

    def connect(self) -> ftplib.FTP_TLS:
        ctx = ssl.create_default_context(cafile=self.server.cert)
        ftp = ftplib.FTP_TLS(context=ctx, timeout=20)
        ftp.connect("localhost", self.server.port)
        ftp.login("alice", "wonderland")
        ftp.prot_p()
        return ftp

    async def test_ftp_tls_session(self) -> None:
        """FTP_TLS: upload, size, mlsd facts, rest= download, rename, delete, all under PROT P."""
        payload = os.urandom(700_000)

        def session() -> dict:
            ftp = self.connect()
            out: dict = {}
            ftp.mkd("docs")
            ftp.cwd("docs")
            ftp.storbinary("STOR data.bin", io.BytesIO(payload))
            out["size"] = ftp.size("data.bin")
            out["mlsd"] = dict(ftp.mlsd())
            tail = io.BytesIO()
            ftp.retrbinary("RETR data.bin", tail.write, rest=500_000)
            out["tail"] = tail.getvalue()
            ftp.rename("data.bin", "renamed.bin")
            out["nlst"] = ftp.nlst()
            ftp.delete("renamed.bin")
            ftp.cwd("/")
            ftp.rmd("docs")
            out["pwd"] = ftp.pwd()
            ftp.quit()
            return out

        out = await threads.deferToThread(session)
        self.assertEqual(out["size"], len(payload))
        facts = out["mlsd"]["data.bin"]
        self.assertEqual((facts["type"], facts["size"]), ("file", str(len(payload))))
        self.assertIn("w", facts["perm"])
        self.assertEqual(len(facts["modify"]), 14)
        self.assertEqual(out["tail"], payload[500_000:])
        self.assertEqual(out["nlst"], ["renamed.bin"])
        self.assertEqual(out["pwd"], "/")
        self.assertEqual(os.listdir(self.home()), [])

    async def test_anonymous_plain(self) -> None:
        """Plain ftplib: anonymous login, mlsd of public/, retrbinary with rest=."""

        def session() -> tuple:
            ftp = ftplib.FTP(timeout=20)
            ftp.connect("127.0.0.1", self.server.port)
            ftp.login()
            names = [name for name, facts in ftp.mlsd() if facts["type"] == "file"]
            out = io.BytesIO()
            ftp.retrbinary("RETR big.bin", out.write, rest=4_000_000)
            ftp.quit()
            return names, out.getvalue()

        names, tail = await threads.deferToThread(session)
        self.assertEqual(names, ["big.bin", "hello.txt"])
        with open(self.big, "rb") as f:
            self.assertEqual(tail, f.read()[4_000_000:])


class ClientAgainstVsftpdTests(TestCase):
    """appnet's FTP client against vsftpd, started here on a high port with
    FTPS and vsftpd's default C{require_ssl_reuse=YES}."""

    timeout = 60

    async def setUp(self) -> None:
        from appnet.ftp.testing import make_test_ca

        vsftpd = require_tool("vsftpd")
        if os.geteuid() != 0:
            from tests.support import interop_required

            reason = "vsftpd needs root to start (it chroots anonymous sessions)"
            if interop_required():
                raise AssertionError(reason + " (APPNET_REQUIRE_INTEROP=1)")
            self.skipTest(reason)
        self.work = os.path.abspath(self.mktemp())
        self.root = os.path.join(self.work, "root")
        os.makedirs(self.root)
        for path in (self.work, self.root, os.path.dirname(self.work)):
            os.chmod(path, 0o755)
        self.payload = os.urandom(1_500_000)
        with open(os.path.join(self.root, "pub.bin"), "wb") as f:
            f.write(self.payload)
        os.chmod(os.path.join(self.root, "pub.bin"), 0o644)
        self.ca, cert, key = make_test_ca(os.path.join(self.work, "ca"))
        os.makedirs("/var/run/vsftpd/empty", exist_ok=True)
        from tests.support import free_tcp_port

        self.port = free_tcp_port()
        conf = os.path.join(self.work, "vsftpd.conf")
        with open(conf, "w") as f:
            f.write(f"""listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={self.port}
background=NO
anonymous_enable=YES
anon_root={self.root}
no_anon_password=YES
local_enable=NO
ftp_username=ftp
seccomp_sandbox=NO
secure_chroot_dir=/var/run/vsftpd/empty
ssl_enable=YES
allow_anon_ssl=YES
force_anon_logins_ssl=YES
force_anon_data_ssl=YES
require_ssl_reuse=YES
ssl_ciphers=HIGH
rsa_cert_file={cert}
rsa_private_key_file={key}
""")
        import subprocess

        self.proc = subprocess.Popen([vsftpd, conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.addCleanup(self._stop)
        from tests.integration.test_pop3_loopback import poll_until

        await poll_until(self._listening)

    def _listening(self) -> bool:
        import socket

        try:
            # Loopback: refused or accepted at once, no waiting here.
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def _stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    async def test_list_and_download_over_ftps(self) -> None:
        """Explicit FTPS against vsftpd: MLSD listing and a resumed download work, since
        every data connection resumes the control connection's TLS session."""
        from appnet.ftp.client import connect

        session = await connect("localhost", self.port, tls="explicit", cafile=self.ca)
        self.addCleanup(lambda: session._control.transport.loseConnection())
        names = {e.name: e for e in await session.list("/")}
        self.assertEqual(names["pub.bin"].size, len(self.payload))
        local = os.path.join(self.work, "got.bin")
        with open(local, "wb") as f:
            f.write(self.payload[:500_000])
        got = await session.download("/pub.bin", local, resume=True)
        self.assertEqual(got, len(self.payload) - 500_000)
        with open(local, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).digest(),
                             hashlib.sha256(self.payload).digest())
        await session.quit()
