"""
Integration tests for appnet's ESMTP server on loopback: Python's smtplib
(in a thread) and a raw pipelining client against the MX, submission and
smtps listeners started by L{start_mail_server}, over real sockets and a
real Maildir; and C{twistd appnet-smtp} as a process.
"""

from __future__ import annotations

import os
import re
import smtplib
import ssl
from email.message import EmailMessage

from twisted.internet import defer, endpoints, error, protocol, threads
from twisted.trial.unittest import FailTest, TestCase

from appnet.mailbox import MaildirStore
from appnet.testing import start_mail_server
from tests.integration.test_pop3_loopback import poll_until
from tests.integration.test_twistd import add_user, start_twistd

USERS = {"alice": "wonderland", "bob": "builder"}


class RawSMTP(protocol.Protocol):
    """Sends bytes as given and collects every reply until the server closes."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(self.received)


async def raw_session(port: int, data: bytes) -> bytes:
    """Connect, send C{data} in one write, return everything the server said."""
    from twisted.internet import reactor

    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    proto = await endpoints.connectProtocol(endpoint, RawSMTP())
    proto.transport.write(data)
    return await proto.closed


def message(subject: str, to: str = "alice@localhost", body: str = "Hello.\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "carol@example.org"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


def reply_codes(transcript: bytes) -> list[bytes]:
    return [line[:3] for line in transcript.split(b"\r\n") if line[3:4] == b" "]


class LoopbackTests(TestCase):
    """Real clients, real sockets, real Maildir."""

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.server.cert_path)

    async def test_mx_with_smtplib(self) -> None:
        """smtplib to the MX: the message arrives with Return-Path and Received added."""
        self.server = await start_mail_server(self, users=USERS)

        def send() -> dict:
            with smtplib.SMTP(self.server.host, self.server.smtp_port) as client:
                return client.send_message(message("via MX"), "carol@example.org", ["alice@localhost"])

        refused = await threads.deferToThread(send)
        self.assertEqual(refused, {})
        [received] = self.server.received("alice")
        self.assertEqual(received["Subject"], "via MX")
        self.assertEqual(received["Return-Path"], "<carol@example.org>")
        self.assertIn("by localhost (appnet) with ESMTP id", received["Received"])
        self.assertEqual(received.get_content(), "Hello.\n")

    async def test_submission_starttls_auth(self) -> None:
        """smtplib on submission: STARTTLS, AUTH, then Message-ID and Date are added."""
        self.server = await start_mail_server(self, users=USERS)

        def send() -> None:
            with smtplib.SMTP(self.server.host, self.server.submission_port) as client:
                client.starttls(context=self.tls_context())
                client.login("alice", "wonderland")
                client.sendmail("alice@localhost", ["bob@localhost"], b"Subject: bare\r\n\r\nno id\r\n")

        await threads.deferToThread(send)
        [received] = self.server.received("bob")
        self.assertIn("with ESMTPSA id", received["Received"])
        self.assertTrue(received["Message-ID"].endswith("@localhost>"))
        self.assertIsNotNone(received["Date"])

    async def test_submission_refuses_unauthenticated(self) -> None:
        """Without AUTH, submission refuses MAIL with 530."""
        self.server = await start_mail_server(self, users=USERS)

        def send() -> tuple[int, bytes]:
            with smtplib.SMTP(self.server.host, self.server.submission_port) as client:
                client.ehlo()
                return client.mail("alice@localhost")

        code, _ = await threads.deferToThread(send)
        self.assertEqual(code, 530)
        self.assertEqual(self.server.received("bob"), [])

    async def test_smtps_and_smtputf8(self) -> None:
        """smtplib over implicit TLS with SMTPUTF8: a UTF-8 sender and subject arrive intact."""
        self.server = await start_mail_server(self, users=USERS)
        msg = message("grüße", to="bob@localhost")
        msg.replace_header("From", "jösé@exämple.org")

        def send() -> None:
            with smtplib.SMTP_SSL(self.server.host, self.server.smtps_port, context=self.tls_context()) as client:
                client.login("bob", "builder")
                client.send_message(msg, "jösé@exämple.org", ["bob@localhost"])

        await threads.deferToThread(send)
        [received] = self.server.received("bob")
        self.assertEqual(received["Subject"], "grüße")
        self.assertEqual(received["Return-Path"], "<jösé@exämple.org>")
        self.assertIn("with UTF8SMTPSA id", received["Received"])

    async def test_mx_refuses_relay(self) -> None:
        """The MX answers 550 5.7.1 for a remote recipient; local ones still get the mail."""
        self.server = await start_mail_server(self, users=USERS)

        def send() -> dict:
            with smtplib.SMTP(self.server.host, self.server.smtp_port) as client:
                return client.send_message(
                    message("relay?"), "carol@example.org", ["x@example.com", "alice@localhost"]
                )

        refused = await threads.deferToThread(send)
        self.assertEqual(list(refused), ["x@example.com"])
        self.assertEqual(refused["x@example.com"][0], 550)
        self.assertEqual(len(self.server.received("alice")), 1)

    async def test_pipelined_chunking(self) -> None:
        """One write with the whole session, BDAT chunks included: every reply in order."""
        self.server = await start_mail_server(self, users=USERS)
        body = b"Subject: chunked\r\n\r\nfirst part, "
        session = (
            b"EHLO raw.example\r\nMAIL FROM:<carol@example.org> BODY=8BITMIME\r\n"
            b"RCPT TO:<alice@localhost>\r\nRCPT TO:<nobody@localhost>\r\nRCPT TO:<bob@localhost>\r\n"
            b"BDAT %d\r\n%sBDAT 12 LAST\r\nsecond part\nQUIT\r\n" % (len(body), body)
        )
        transcript = await raw_session(self.server.smtp_port, session)
        self.assertEqual(
            reply_codes(transcript), [b"220", b"250", b"250", b"250", b"550", b"250", b"250", b"250", b"221"]
        )
        for user in ("alice", "bob"):
            [received] = self.server.received(user)
            self.assertEqual(received.get_content(), "first part, second part\n")

    async def test_oversized_message(self) -> None:
        """Over max_message_size: 552 5.3.4 after the dot, nothing delivered, the session goes on."""
        self.server = await start_mail_server(self, users=USERS, config={"smtp": {"max_message_size": 1000}})
        big = b"Subject: big\r\n\r\n" + b"0123456789" * 150 + b"\r\n"
        session = (
            b"EHLO raw\r\nMAIL FROM:<c@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n"
            + big + b".\r\nNOOP\r\nQUIT\r\n"
        )
        transcript = await raw_session(self.server.smtp_port, session)
        self.assertIn(b"250-SIZE 1000\r\n", transcript)
        self.assertEqual(reply_codes(transcript)[-4:], [b"354", b"552", b"250", b"221"])
        self.assertEqual(self.server.received("alice"), [])


class TwistdSMTPTests(TestCase):
    """C{twistd appnet-smtp} on its own."""

    timeout = 120

    async def test_appnet_smtp_serves(self) -> None:
        """
        C{twistd -n appnet-smtp} with an MX on port 0 (no submission, no
        smtps) accepts a message for a user made with C{appnet user add},
        delivers it into the user's Maildir, and stops cleanly on SIGTERM.
        """
        tmp = os.path.abspath(self.mktemp())
        data = os.path.join(tmp, "data")
        os.makedirs(tmp)
        await add_user(data, "alice", "wonderland")
        proc = start_twistd(
            self,
            ["-n", "--pidfile=", "appnet-smtp", "--data", data, "--listen", "tcp:0:interface=127.0.0.1",
             "--submission-listen", "none", "--listen-tls", "none"],
            cwd=tmp,
        )

        def bound() -> int | None:
            if not proc.running:
                raise FailTest(f"twistd exited:\n{proc.output}")
            found = re.search(r"SMTPServerFactory.* starting on (\d+)", proc.output)
            return int(found.group(1)) if found else None

        port = await poll_until(bound, timeout=30)

        def send() -> dict:
            with smtplib.SMTP("127.0.0.1", port) as client:
                return client.sendmail("carol@example.org", ["alice@localhost"], b"Subject: t\r\n\r\nvia twistd\r\n")

        self.assertEqual(await threads.deferToThread(send), {})
        folder = MaildirStore(os.path.join(data, "mail")).folder("alice")
        # Another process: the file appears just after the 250 (which
        # followed the journal flush; see docs/smtp.md, Durability).
        [info] = await poll_until(lambda: folder.messages() or None, timeout=10)
        self.assertTrue(folder.read_message(info.uid).endswith(b"\n\nvia twistd\n"))
        proc.signal("TERM")
        reason = await proc.wait(20)
        if not isinstance(reason, error.ProcessDone):
            self.assertIsInstance(reason, error.ProcessTerminated, proc.output)
        self.assertIn("Server Shut Down.", proc.output)
        self.assertNotIn("Traceback", proc.output)
