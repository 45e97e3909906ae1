"""
Interop tests for appnet's SMTP server with third-party clients:

 - swaks: AUTH PLAIN and LOGIN over STARTTLS on submission, implicit TLS,
   PIPELINING, 8-bit bodies, relay refused on the MX, unknown users;
 - Python's C{smtplib}: C{send_message} with SMTPUTF8 (non-ASCII
   addresses), STARTTLS + AUTH on submission, C{SMTP_SSL}, a message over
   SIZE;
 - curl: C{smtp://} with C{--mail-from}/C{--mail-rcpt} and C{-T}, and
   submission with C{--ssl-reqd};
 - end to end: what swaks submitted comes back from curl C{pop3://} byte
   for byte, apart from the trace header fields appnet put on top.

Each test needs its tool (L{require_tool}): skipped when it is missing,
failed when C{APPNET_REQUIRE_INTEROP=1}. Blocking clients run in threads
(or subprocesses) so the reactor keeps serving.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from typing import Any

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from appnet.testing import start_mail_server
from tests.interop.test_pop3_interop import strip_trace_headers
from tests.support import require_tool, run_process

USERS = {"alice": "wonderland", "bob": "builder"}

#: A message as a user agent would write it: CRLF lines, a dot line that
#: must be stuffed on the wire, 8-bit UTF-8 in the body.
SUBMITTED = (
    b"From: Alice <alice@localhost>\r\n"
    b"To: Bob <bob@localhost>\r\n"
    b"Subject: interop\r\n"
    b"Date: Mon, 23 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <interop-1@localhost>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe aus dem Wunderland.\r\n"
    b".\r\n"
    b"..two dots\r\n"
    b"last line\r\n"
)


class _SMTPServerCase(TestCase):
    """A mail server with alice and bob for each test."""

    async def setUp(self) -> None:
        self.server = await start_mail_server(self, users=USERS)
        self.host = self.server.host

    def written(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path


class SwaksTests(_SMTPServerCase):
    """swaks (the Swiss Army Knife for SMTP) against each listener."""

    def message_file(self) -> str:
        """
        SUBMITTED for C{--data}: swaks dot-stuffs it and ends it with
        CRLF . CRLF itself, so the file goes without its last CRLF.
        """
        return self.written(SUBMITTED[:-2])

    def setUp(self) -> Any:
        self.swaks = require_tool("swaks")
        return super().setUp()

    async def run_swaks(self, port: int, *args: str) -> tuple[int, str]:
        done = await run_process(
            [self.swaks, "--server", f"{self.host}:{port}", "--timeout", "30", *args],
            timeout=60,
        )
        return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace")

    async def submit(self, *args: str) -> tuple[int, str]:
        return await self.run_swaks(
            self.server.submission_port, "--tls", "--auth-user", "alice",
            "--auth-password", USERS["alice"], "-f", "alice@localhost", *args,
        )

    async def test_auth_plain_over_starttls(self) -> None:
        """STARTTLS, AUTH PLAIN, and the message is in bob's INBOX."""
        rc, out = await self.submit("--auth", "PLAIN", "-t", "bob@localhost",
                                    "--data", self.message_file())
        self.assertEqual(rc, 0, out)
        self.assertIn("235 2.7.0", out)
        [msg] = self.server.received("bob")
        self.assertEqual(msg["Subject"], "interop")
        self.assertIn("ESMTPSA", msg["Received"])

    async def test_auth_login_over_starttls(self) -> None:
        """AUTH LOGIN works the same way."""
        rc, out = await self.submit("--auth", "LOGIN", "-t", "bob@localhost")
        self.assertEqual(rc, 0, out)
        self.assertIn("235 2.7.0", out)
        self.assertEqual(len(self.server.received("bob")), 1)

    async def test_implicit_tls(self) -> None:
        """smtps: TLS from the first octet, then AUTH."""
        rc, out = await self.run_swaks(
            self.server.smtps_port, "--tls-on-connect", "--auth", "PLAIN",
            "--auth-user", "bob", "--auth-password", USERS["bob"],
            "-f", "bob@localhost", "-t", "alice@localhost",
        )
        self.assertEqual(rc, 0, out)
        self.assertEqual(len(self.server.received("alice")), 1)

    async def test_pipelining_two_recipients(self) -> None:
        """With --pipeline, MAIL, both RCPTs and DATA go in one write."""
        rc, out = await self.run_swaks(
            self.server.smtp_port, "--pipeline", "-f", "carol@example.org",
            "-t", "alice@localhost,bob@localhost",
        )
        self.assertEqual(rc, 0, out)
        self.assertIn("PIPELINING", out)
        self.assertEqual(len(self.server.received("alice")), 1)
        self.assertEqual(len(self.server.received("bob")), 1)

    async def test_eight_bit_body_kept(self) -> None:
        """An 8-bit body arrives octet for octet (after the trace headers)."""
        rc, out = await self.run_swaks(
            self.server.smtp_port, "-f", "carol@example.org", "-t", "bob@localhost",
            "--data", self.message_file(),
        )
        self.assertEqual(rc, 0, out)
        [raw] = self.server.raw_received("bob")
        self.assertEqual(strip_trace_headers(raw).replace(b"\n", b"\r\n"), SUBMITTED)

    async def test_mx_refuses_relay(self) -> None:
        """The MX listener never relays: a remote recipient gets 5.7.1."""
        rc, out = await self.run_swaks(
            self.server.smtp_port, "-f", "carol@example.org", "-t", "dave@example.com",
        )
        self.assertNotEqual(rc, 0, out)
        self.assertRegex(out, r"<\*\* +5\d\d 5\.7\.1")

    async def test_unknown_user(self) -> None:
        """An unknown local user gets 550 5.1.1 at RCPT."""
        rc, out = await self.run_swaks(
            self.server.smtp_port, "-f", "carol@example.org", "-t", "nobody@localhost",
        )
        self.assertNotEqual(rc, 0, out)
        self.assertIn("550 5.1.1", out)

    async def test_submission_requires_auth(self) -> None:
        """Submission refuses MAIL before AUTH (530 5.7.0)."""
        rc, out = await self.run_swaks(
            self.server.submission_port, "--tls", "-f", "alice@localhost", "-t", "bob@localhost",
        )
        self.assertNotEqual(rc, 0, out)
        self.assertIn("530 5.7.0", out)
        self.assertEqual(self.server.received("bob"), [])

    async def test_end_to_end_through_curl_pop3(self) -> None:
        """
        swaks -> submission (STARTTLS, AUTH) -> bob's INBOX -> curl pop3://:
        the octets swaks sent come back intact under appnet's trace headers.
        """
        curl = require_tool("curl")
        rc, out = await self.submit("--auth", "PLAIN", "-t", "bob@localhost",
                                    "--data", self.message_file())
        self.assertEqual(rc, 0, out)
        done = await run_process(
            [curl, "-sS", "--max-time", "30",
             f"pop3://bob:{USERS['bob']}@{self.host}:{self.server.pop3_port}/1"],
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        fetched = done.stdout
        self.assertTrue(fetched.startswith(b"Return-Path: <alice@localhost>\r\n"), fetched[:200])
        self.assertEqual(strip_trace_headers(fetched).replace(b"\n", b"\r\n"), SUBMITTED)


class SmtplibTests(_SMTPServerCase):
    """Python's smtplib."""

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.server.cert_path)
        context.check_hostname = False
        return context

    async def test_send_message_smtputf8(self) -> None:
        """
        smtplib's C{send_message} uses SMTPUTF8 by itself for a non-ASCII
        sender; the message arrives with its UTF-8 header intact.
        """
        msg = EmailMessage()
        msg["From"] = "José <josé@exämple.org>"
        msg["To"] = "alice@localhost"
        msg["Subject"] = "Grüße ✉"
        msg.set_content("Hallo Alice, schöne Grüße.\n")

        def send() -> dict:
            with smtplib.SMTP(self.host, self.server.smtp_port, timeout=30) as s:
                s.ehlo()
                self.assertTrue(s.has_extn("smtputf8"))
                return s.send_message(msg)

        async def check() -> None:
            refused = await threads.deferToThread(send)
            self.assertEqual(refused, {})
            [got] = self.server.received("alice")
            self.assertEqual(got["From"], "José <josé@exämple.org>")
            self.assertEqual(got["Subject"], "Grüße ✉")
            self.assertIn("schöne", got.get_content())
            self.assertIn("UTF8SMTP", got["Received"])

        await check()

    async def test_starttls_login_two_recipients(self) -> None:
        """Submission: STARTTLS, login, one message for alice and bob."""

        def send() -> dict:
            with smtplib.SMTP(self.host, self.server.submission_port, timeout=30) as s:
                s.starttls(context=self.tls_context())
                s.login("alice", USERS["alice"])
                return s.sendmail("alice@localhost", ["alice@localhost", "bob@localhost"],
                                  b"Subject: both\r\n\r\nhello\r\n")

        async def check() -> None:
            self.assertEqual(await threads.deferToThread(send), {})
            self.assertEqual(self.server.received("alice")[0]["Subject"], "both")
            self.assertEqual(self.server.received("bob")[0]["Subject"], "both")

        await check()

    async def test_smtps(self) -> None:
        """C{SMTP_SSL} on the implicit-TLS port."""

        def send() -> dict:
            with smtplib.SMTP_SSL(self.host, self.server.smtps_port, timeout=30,
                                  context=self.tls_context()) as s:
                s.login("bob", USERS["bob"])
                return s.sendmail("bob@localhost", ["alice@localhost"], b"Subject: s\r\n\r\nx\r\n")

        async def check() -> None:
            self.assertEqual(await threads.deferToThread(send), {})
            self.assertEqual(len(self.server.received("alice")), 1)

        await check()

    async def test_message_over_size(self) -> None:
        """A message larger than the advertised SIZE gets 552 5.3.4, nothing stored."""

        def send() -> Any:
            with smtplib.SMTP(self.host, self.server.smtp_port, timeout=30) as s:
                s.ehlo()
                limit = int(s.esmtp_features["size"])
                body = b"x" * 998 + b"\r\n"
                message = b"Subject: big\r\n\r\n" + body * (limit // len(body) + 2)
                # Send DATA without the SIZE parameter, so the server must
                # count the octets itself.
                s.mail("carol@example.org")
                s.rcpt("alice@localhost")
                return s.data(message)

        async def check() -> None:
            code, text = await threads.deferToThread(send)
            self.assertEqual(code, 552)
            self.assertIn(b"5.3.4", text)
            self.assertEqual(self.server.received("alice"), [])

        await check()


class CurlTests(_SMTPServerCase):
    """curl's smtp:// and smtps:// uploads."""

    def setUp(self) -> Any:
        self.curl = require_tool("curl")
        return super().setUp()

    async def test_curl_smtp_upload(self) -> None:
        """C{curl smtp:// --mail-from --mail-rcpt -T file} on the MX."""
        done = await run_process(
            [self.curl, "-sS", "--max-time", "30", f"smtp://{self.host}:{self.server.smtp_port}",
             "--mail-from", "carol@example.org", "--mail-rcpt", "alice@localhost",
             "--mail-rcpt", "bob@localhost", "-T", self.written(SUBMITTED)],
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        for user in ("alice", "bob"):
            [raw] = self.server.raw_received(user)
            self.assertEqual(strip_trace_headers(raw).replace(b"\n", b"\r\n"), SUBMITTED)

    async def test_curl_submission_ssl_reqd(self) -> None:
        """curl with C{--ssl-reqd} and C{--user} on submission: STARTTLS + AUTH."""
        done = await run_process(
            [self.curl, "-sS", "--max-time", "30", "--ssl-reqd", "--cacert", self.server.cert_path,
             "-k", "--user", f"alice:{USERS['alice']}",
             f"smtp://{self.host}:{self.server.submission_port}",
             "--mail-from", "alice@localhost", "--mail-rcpt", "bob@localhost",
             "-T", self.written(SUBMITTED)],
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(len(self.server.received("bob")), 1)

