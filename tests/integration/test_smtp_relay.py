"""
The relay on real loopback sockets: appnet's queue and relay worker sending
to aiosmtpd (run as a separate process) by smarthost and by MX lookup
through appnet's own DNS server, retrying until the next hop comes up,
bouncing into a local mailbox, relaying between two appnet instances, and
a C{twistd appnet-smtp} killed with SIGKILL right after queueing a message.
"""

from __future__ import annotations

import email
import email.policy
import glob
import json
import os
import subprocess
import sys
from typing import Any

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from appnet.service import listening_ports
from appnet.testing import start_services
from tests.integration.test_pop3_loopback import poll_until
from tests.support import free_tcp_port, subprocess_env

LOCAL = "tcp:0:interface=127.0.0.1"

MESSAGE = (
    b"From: Alice <alice@localhost>\r\n"
    b"To: Bob <bob@remote.test>\r\n"
    b"Subject: relay test\r\n"
    b"Message-ID: <relay-test@localhost>\r\n"
    b"\r\n"
    b"Hello over the relay.\r\n"
    b".a line that needs dot-stuffing\r\n"
)

#: An aiosmtpd server in its own process: argv = port, output directory.
#: It refuses recipients named reject* (550) and later* (451) and writes
#: each message it accepts as one JSON file.
AIOSMTPD_SCRIPT = r"""
import json, os, sys, threading, uuid
from aiosmtpd.controller import Controller

class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("reject"):
            return "550 5.1.1 no such user"
        if address.startswith("later"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        record = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                  "data": envelope.original_content.decode("utf-8", "replace")}
        path = os.path.join(sys.argv[2], uuid.uuid4().hex)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path + ".json")
        return "250 2.0.0 queued"

controller = Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
"""


class Aiosmtpd:
    """An aiosmtpd process on a free loopback port, stopped at test end."""

    def __init__(self, test: TestCase, port: int | None = None) -> None:
        self.port = port or free_tcp_port()
        self.directory = os.path.abspath(test.mktemp())
        os.makedirs(self.directory)
        self.process = subprocess.Popen(
            [sys.executable, "-c", AIOSMTPD_SCRIPT, str(self.port), self.directory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=subprocess_env(),
        )
        test.addCleanup(self.stop)

    async def ready(self) -> Aiosmtpd:
        """Wait until it listens."""
        line = await threads.deferToThread(self.process.stdout.readline)  # type: ignore[union-attr]
        if line.strip() != b"ready":
            raise AssertionError(f"aiosmtpd did not start: {line!r}")
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()  # type: ignore[union-attr]
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def received(self) -> list[dict[str, Any]]:
        """The messages accepted so far."""
        records = []
        for path in sorted(glob.glob(os.path.join(self.directory, "*.json"))):
            with open(path) as f:
                records.append(json.load(f))
        return records


def start_appnet(test: TestCase, users: dict[str, str] | None = None, **smtp: Any) -> Any:
    """Start appnet's SMTP service (with its relay) on loopback port 0."""
    keys = {"listen": [LOCAL], "submission_listen": [LOCAL], "listen_tls": []}
    keys.update(smtp)
    top, _, _ = start_services(("smtp",), {"smtp": keys}, testcase=test, users=users)
    test.addCleanup(top.stopService)
    return top


def relay_of(top: Any) -> Any:
    return top.getServiceNamed("smtp-relay")


async def relay_idle(top: Any) -> None:
    """Wait until the relay's queue directory is empty."""
    await poll_until(lambda: not queued_files(relay_of(top).queue.directory), timeout=20)


def queued_files(queue_dir: str) -> list[str]:
    """The messages' files in a queue directory (not its lock)."""
    return [name for name in os.listdir(queue_dir) if name.endswith((".msg", ".env"))]


def write_file(path: str, text: str) -> str:
    """Write C{text} to C{path}; return C{path}."""
    with open(path, "w") as f:
        f.write(text)
    return path


def parsed(raw: bytes) -> Any:
    return email.message_from_bytes(raw, policy=email.policy.default)


def mailbox(top: Any, user: str) -> list[bytes]:
    """A user's messages in the appnet instance C{top}."""
    folder = top.context.mailbox_store.folder(user)
    return [folder.read_message(m.uid) for m in folder.messages()]


class AiosmtpdRelayTests(TestCase):
    """appnet relaying to aiosmtpd."""

    async def test_smarthost_and_bounce(self) -> None:
        """
        Through the smarthost, accepted recipients get the message intact in
        one transaction; the refused one is bounced with a DSN into the
        sender's local mailbox; the queue ends empty.
        """
        peer = await Aiosmtpd(self).ready()
        top = start_appnet(self, users={"alice": "pw"}, smarthost=f"127.0.0.1:{peer.port}")
        await relay_of(top).loaded
        await relay_of(top).queue.enqueue(
            "alice@localhost", ["bob@remote.test", "reject@remote.test", "carol@other.test"], MESSAGE
        )
        [record] = await poll_until(peer.received, timeout=20)
        self.assertEqual(record["mail_from"], "alice@localhost")
        self.assertEqual(record["rcpt_tos"], ["bob@remote.test", "carol@other.test"])
        self.assertEqual(record["data"].encode(), MESSAGE)
        [bounce] = await poll_until(lambda: mailbox(top, "alice"), timeout=20)
        report = parsed(bounce)
        self.assertEqual(report["Return-Path"], "<>")
        self.assertEqual(report.get_content_type(), "multipart/report")
        [status] = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
        per_rcpt = status.get_payload()[1:]
        self.assertEqual([b["Final-Recipient"] for b in per_rcpt], ["rfc822; reject@remote.test"])
        self.assertEqual(per_rcpt[0]["Diagnostic-Code"], "smtp; 550 5.1.1 no such user")
        await relay_idle(top)
        stats = top.context.stats.service("smtp-relay")
        self.assertEqual((stats["delivered"], stats["failed"], stats["bounces"]), (3, 1, 1))

    async def test_mx_lookup(self) -> None:
        """Without a smarthost, the relay finds the MX through appnet's DNS server."""
        from tests.integration.test_dns import start_dns

        peer = await Aiosmtpd(self).ready()
        zone = "$TTL 300\n@ IN SOA ns1 host 1 3600 900 604800 60\n  IN NS ns1\n  IN MX 10 mx1\nns1 IN A 127.0.0.1\nmx1 IN A 127.0.0.1\n"
        dns_server = await start_dns(self, zone_text=zone)
        top = start_appnet(self, relay_port=peer.port, resolvers=[f"127.0.0.1:{dns_server.udp_port}"])
        await relay_of(top).loaded
        await relay_of(top).queue.enqueue("alice@localhost", ["bob@example.org"], MESSAGE)
        [record] = await poll_until(peer.received, timeout=20)
        self.assertEqual(record["rcpt_tos"], ["bob@example.org"])
        await relay_idle(top)

    async def test_retry_until_peer_up(self) -> None:
        """A refused connection is retried; once the peer listens, the message goes."""
        port = free_tcp_port()
        top = start_appnet(self, smarthost=f"127.0.0.1:{port}", retry_intervals=[1])
        relay = relay_of(top)
        await relay.loaded
        queue_id = await relay.queue.enqueue("alice@localhost", ["bob@remote.test"], MESSAGE)

        def attempted() -> bool:
            [entry] = relay.pending()
            return entry.recipients[0].attempts >= 1

        await poll_until(attempted, timeout=20)
        [entry] = relay.pending()
        self.assertEqual(entry.id, queue_id)
        self.assertIn("refused", entry.recipients[0].error.lower())
        peer = await Aiosmtpd(self, port).ready()
        [record] = await poll_until(peer.received, timeout=20)
        self.assertEqual(record["rcpt_tos"], ["bob@remote.test"])
        await relay_idle(top)


    async def test_required_tls_refused(self) -> None:
        """With relay_tls required, a peer without STARTTLS gets nothing; the message waits."""
        peer = await Aiosmtpd(self).ready()
        top = start_appnet(self, smarthost=f"127.0.0.1:{peer.port}", relay_tls="required")
        relay = relay_of(top)
        await relay.loaded
        await relay.queue.enqueue("alice@localhost", ["bob@remote.test"], MESSAGE)
        await poll_until(lambda: relay.pending()[0].recipients[0].attempts, timeout=20)
        [entry] = relay.pending()
        self.assertEqual(entry.recipients[0].state, "pending")
        self.assertIn("STARTTLS", entry.recipients[0].error)
        self.assertEqual(peer.received(), [])


class TwoInstanceTests(TestCase):
    """One appnet instance relays to another, which delivers to its user."""

    async def test_relay_between_instances(self) -> None:
        """
        A's relay hands the message to B's MX listener; B delivers it to
        bob's mailbox with trace fields; B refusing an unknown user makes A
        bounce to its own local sender.
        """
        b = start_appnet(self, users={"bob": "pw"}, local_domains=["b.test"])
        b_port = listening_ports(b)["smtp"].getHost().port
        a = start_appnet(self, users={"alice": "pw"}, smarthost=f"127.0.0.1:{b_port}", local_domains=["a.test"])
        await relay_of(a).loaded
        await relay_of(a).queue.enqueue("alice@a.test", ["bob@b.test", "nobody@b.test"], MESSAGE)
        [raw] = await poll_until(lambda: mailbox(b, "bob"), timeout=20)
        message = parsed(raw)
        self.assertEqual(message["Return-Path"], "<alice@a.test>")
        self.assertIn("Received", message)
        self.assertEqual(message["Subject"], "relay test")
        self.assertIn(b"Hello over the relay.", raw)
        self.assertIn(b"\n.a line that needs dot-stuffing", raw)
        [bounce] = await poll_until(lambda: mailbox(a, "alice"), timeout=20)
        self.assertIn(b"Final-Recipient: rfc822; nobody@b.test", bounce)
        await relay_idle(a)
        self.assertEqual(len(mailbox(b, "bob")), 1)


class KillNineTests(TestCase):
    """A relaying C{twistd appnet-smtp} killed -9 loses nothing and sends once."""

    timeout = 120

    async def test_kill_after_queueing(self) -> None:
        """
        A accepts a message by submission for B while B is down and is killed
        with SIGKILL at once; restarted, and B started, the message reaches
        bob at B exactly once, and A's queue ends empty.
        """
        from appnet.smtp.client import send_mail
        from tests.integration.test_twistd import add_user, start_twistd

        cwd = os.path.abspath(self.mktemp())
        data_a = os.path.join(cwd, "a")
        os.makedirs(data_a)
        submission, b_port = free_tcp_port(), free_tcp_port()
        config = write_file(
            os.path.join(cwd, "a.toml"),
            'hostname = "a.test"\n[smtp]\n'
            f'listen = ["{LOCAL}"]\nlisten_tls = []\n'
            f'submission_listen = ["tcp:{submission}:interface=127.0.0.1"]\n'
            f'smarthost = "127.0.0.1:{b_port}"\nretry_intervals = [1]\nlocal_domains = ["a.test"]\n',
        )
        await add_user(data_a, "alice", "pw")
        args = ["-n", "--pidfile=", "appnet-smtp", "--config", config, "--data", data_a]

        async def start_a() -> Any:
            proc = start_twistd(self, args, cwd)
            await poll_until(lambda: not proc.running or f"starting on {submission}" in proc.output, timeout=30)
            self.assertTrue(proc.running, proc.output)
            return proc

        first = await start_a()
        result = await send_mail(
            "127.0.0.1", submission, "alice@a.test", ["bob@b.test"], MESSAGE, tls="none", username="alice", password="pw"
        )
        first.signal("KILL")
        await first.wait()
        self.assertEqual(list(result.accepted), ["bob@b.test"])
        queue_dir = os.path.join(data_a, "queue")
        self.assertEqual(len([n for n in queued_files(queue_dir) if n.endswith(".msg")]), 1)

        b = start_appnet(self, users={"bob": "pw"}, local_domains=["b.test"], listen=[f"tcp:{b_port}:interface=127.0.0.1"])
        second = await start_a()
        [raw] = await poll_until(lambda: mailbox(b, "bob"), timeout=30)
        self.assertIn(b"Hello over the relay.", raw)
        await poll_until(lambda: not queued_files(queue_dir), timeout=30)
        self.assertEqual(len(mailbox(b, "bob")), 1)
        second.signal("TERM")
        await second.wait()
