"""
Interop tests for TFTP: third-party clients against our server (tftp-hpa's
C{tftp}, C{atftp}, C{curl}), and our client against tftpd-hpa (C{in.tftpd}).

Each tool runs as a subprocess in a thread with a bounded time, while the
reactor serves. Missing tools skip the test, or fail it under
C{APPNET_REQUIRE_INTEROP=1} (see L{tests.support.require_tool}). Debian
packages: C{tftp-hpa tftpd-hpa atftp curl}.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from appnet.tftp import client
from appnet.tftp.machine import RemoteError, RequestedOptions, TransferPolicy
from tests.integration.test_tftp import TFTPServerFixture, patterned, poll
from tests.support import require_tool

SIZES = (0, 512, 513, 1_500_000)


def run(argv: list[str], cwd: str, timeout: float = 60) -> defer.Deferred:
    """Run a tool to completion in a thread; fires with its CompletedProcess."""
    return threads.deferToThread(
        subprocess.run, argv, cwd=cwd, stdin=subprocess.DEVNULL,
        capture_output=True, timeout=timeout,
    )


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class ClientsAgainstOurServerTests(TestCase):
    """
    tftp-hpa, atftp and curl fetch from (and send to) our server, with
    every transfer on the reactor.
    """

    max_threads = 0

    def setUp(self) -> None:
        self.server = TFTPServerFixture(self, writable=True, max_threads=self.max_threads)
        self.work = os.path.realpath(self.mktemp())
        os.makedirs(self.work)
        self.files = {size: patterned(size) for size in SIZES}
        for size, data in self.files.items():
            self.server.publish(f"f{size}", data)

    def local(self, name: str) -> str:
        return os.path.join(self.work, name)

    async def test_tftp_hpa_get(self) -> None:
        """tftp-hpa (RFC 1350, no options) downloads every size byte-identical."""
        tftp = require_tool("tftp")
        for size, data in self.files.items():
            done = await run([tftp, "-m", "binary", "127.0.0.1", str(self.server.port),
                              "-c", "get", f"f{size}", f"hpa{size}"], self.work)
            self.assertEqual(read(self.local(f"hpa{size}")), data, (size, done.stdout))

    async def test_tftp_hpa_netascii(self) -> None:
        """tftp-hpa in ascii mode gets a text file back with its own line ends."""
        tftp = require_tool("tftp")
        text = b"one\ntwo\r\nthree\rfour\n" * 100
        self.server.publish("text", text)
        await run([tftp, "-m", "ascii", "127.0.0.1", str(self.server.port),
                   "-c", "get", "text", "text.out"], self.work)
        self.assertEqual(read(self.local("text.out")), text)

    async def test_tftp_hpa_put(self) -> None:
        """tftp-hpa uploads into the drop box; the file is byte-identical."""
        tftp = require_tool("tftp")
        data = self.files[1_500_000]
        with open(self.local("up.bin"), "wb") as f:
            f.write(data)
        await run([tftp, "-m", "binary", "127.0.0.1", str(self.server.port),
                   "-c", "put", "up.bin", "hpa-up.bin"], self.work)
        path = os.path.join(self.server.incoming, "hpa-up.bin")
        await poll(lambda: os.path.exists(path))
        self.assertEqual(read(path), data)

    async def test_tftp_hpa_missing(self) -> None:
        """tftp-hpa reports our ERROR 1 for a missing file."""
        tftp = require_tool("tftp")
        done = await run([tftp, "-m", "binary", "127.0.0.1", str(self.server.port),
                          "-c", "get", "missing", "m"], self.work)
        self.assertIn(b"Error code 1", done.stdout + done.stderr)

    async def test_atftp_options(self) -> None:
        """
        atftp with blksize 1468, tsize and windowsize 16 (and with no
        options) downloads every size byte-identical; the server's transcript
        shows the options were agreed.
        """
        atftp = require_tool("atftp")
        option_sets = ([], ["--option", "blksize 1468", "--option", "tsize",
                            "--option", "windowsize 16"])
        for index, options in enumerate(option_sets):
            for size, data in self.files.items():
                name = f"at{index}-{size}"
                done = await run([atftp, *options, "-g", "-r", f"f{size}", "-l", name,
                                  "127.0.0.1", str(self.server.port)], self.work)
                self.assertEqual(read(self.local(name)), data, (options, size, done.stderr))
        windowed = [line for line in self.server.lines if "windowsize=16" in line]
        self.assertEqual(len(windowed), len(SIZES))
        self.assertIn("blksize=1468", windowed[-1])
        self.assertIn("tsize=1500000", windowed[-1])

    async def test_atftp_largest_block(self) -> None:
        """atftp with blksize 65464 gets a large file byte-identical."""
        atftp = require_tool("atftp")
        await run([atftp, "--option", "blksize 65464", "-g", "-r", "f1500000", "-l", "big",
                   "127.0.0.1", str(self.server.port)], self.work)
        self.assertEqual(read(self.local("big")), self.files[1_500_000])

    async def test_atftp_put(self) -> None:
        """atftp uploads with blksize and tsize; the file is byte-identical."""
        atftp = require_tool("atftp")
        data = self.files[1_500_000]
        with open(self.local("up.bin"), "wb") as f:
            f.write(data)
        await run([atftp, "--option", "blksize 1468", "--option", "tsize", "-p",
                   "-l", "up.bin", "-r", "atftp-up.bin", "127.0.0.1", str(self.server.port)],
                  self.work)
        path = os.path.join(self.server.incoming, "atftp-up.bin")
        await poll(lambda: os.path.exists(path))
        self.assertEqual(read(path), data)

    async def test_curl(self) -> None:
        """
        curl's tftp:// with and without --tftp-blksize downloads byte-identical.

        Not an empty file: curl 7.88 fails those against tftpd-hpa just the
        same ("getpeername() failed", curl/curl#11332 hides the real error).
        """
        curl = require_tool("curl")
        for blksize in ([], ["--tftp-blksize", "1468"], ["--tftp-blksize", "8192"]):
            for size, data in self.files.items():
                if size == 0:
                    continue
                name = f"curl{size}-{len(blksize)}"
                done = await run([curl, "-sS", *blksize, "-o", name,
                                  f"tftp://127.0.0.1:{self.server.port}/f{size}"], self.work)
                self.assertEqual(done.returncode, 0, done.stderr)
                self.assertEqual(read(self.local(name)), data, (blksize, size))

    async def test_curl_missing(self) -> None:
        """curl reports our ERROR 1 as "file not found" (exit 68)."""
        curl = require_tool("curl")
        done = await run([curl, "-sS", "-o", "x", f"tftp://127.0.0.1:{self.server.port}/nope"],
                         self.work)
        self.assertEqual(done.returncode, 68, done.stderr)


def _sudo_or_skip() -> list[str]:
    """C{["sudo", "-n"]} when password-less sudo works, else skip (or fail)."""
    from tests.support import interop_required
    from twisted.trial.unittest import SkipTest

    try:
        ok = subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if ok:
        return ["sudo", "-n"]
    reason = "in.tftpd needs root (or password-less sudo) to chroot and drop privileges"
    if interop_required():
        raise AssertionError(reason + " (APPNET_REQUIRE_INTEROP=1)")
    raise SkipTest(reason)


def free_udp_port() -> int:
    """A UDP port free right now on 127.0.0.1, for in.tftpd's -a."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedClientsAgainstOurServerTests(ClientsAgainstOurServerTests):
    """The same, with downloads on threads of their own (the deployed default)."""

    max_threads = 4


class OurClientAgainstTftpdHpaTests(TestCase):
    """Our client against tftpd-hpa (C{in.tftpd -L}) on a high port."""

    def setUp(self) -> None:
        tftpd = require_tool("in.tftpd")
        self.root = os.path.realpath(self.mktemp())
        os.makedirs(self.root)
        os.chmod(self.root, 0o777)
        self.port = free_udp_port()
        # in.tftpd chroots (-s) and drops privileges with setgroups: it only
        # serves when started as root (here with -u root, so it can read
        # the test's files), else through password-less sudo.
        prefix = [] if os.geteuid() == 0 else _sudo_or_skip()
        self.process = subprocess.Popen(
            [*prefix, tftpd, "-L", "-c", "-s", self.root, "-a", f"127.0.0.1:{self.port}",
             "-u", "root"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(self._stop)

    def _stop(self) -> None:
        # SIGTERM: sudo passes it on to in.tftpd (it could not pass SIGKILL).
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def publish(self, name: str, data: bytes) -> None:
        with open(os.path.join(self.root, name), "wb") as f:
            f.write(data)

    async def fetch(self, name: str, options: RequestedOptions) -> tuple[bytes, Any]:
        sink = io.BytesIO()
        # Generous retries: the first request may beat in.tftpd's bind.
        result = await client.get("127.0.0.1", self.port, name, sink, options=options,
                                  policy=TransferPolicy(timeout=0.5, retries=10, dally=0))
        await result.closed
        return sink.getvalue(), result

    async def test_get(self) -> None:
        """
        Every size arrives byte-identical with no options, and with
        blksize 1468 + tsize + windowsize 16 (tftpd-hpa 5.2 grants the first
        two and ignores windowsize, which our client accepts).
        """
        for size in SIZES:
            self.publish(f"f{size}", patterned(size))
        for options in (RequestedOptions(),
                        RequestedOptions(blksize=1468, tsize=True, windowsize=16)):
            for size in SIZES:
                got, result = await self.fetch(f"f{size}", options)
                self.assertEqual(got, patterned(size), (options, size))
            if options.blksize:
                self.assertEqual(result.stats.options.blksize, 1468)
                self.assertEqual(result.stats.options.tsize, SIZES[-1])

    async def test_put(self) -> None:
        """Our client uploads to tftpd-hpa (-c); the file is byte-identical."""
        data = patterned(700_000)
        await self.fetch_ready()
        result = await client.put("127.0.0.1", self.port, "ours.bin", io.BytesIO(data),
                                  size=len(data), options=RequestedOptions(blksize=1468, tsize=True),
                                  policy=TransferPolicy(timeout=0.5, retries=10, dally=0))
        await result.closed
        self.assertEqual(read(os.path.join(self.root, "ours.bin")), data)

    async def test_missing(self) -> None:
        """tftpd-hpa's ERROR 1 fails our Deferred with L{RemoteError} code 1."""
        with self.assertRaises(RemoteError) as caught:
            await self.fetch("missing", RequestedOptions())
        self.assertEqual(caught.exception.code, 1)

    async def fetch_ready(self) -> None:
        """Wait until in.tftpd answers (a small download)."""
        self.publish("ready", b"ready")
        got, _ = await self.fetch("ready", RequestedOptions())
        self.assertEqual(got, b"ready")
