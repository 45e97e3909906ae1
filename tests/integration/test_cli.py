"""
The C{appnet} console command: accounts and local delivery, as operators and
scripts use them, including against a server that is already running.
"""

from __future__ import annotations

import json
import os
import poplib
import stat

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from appnet.testing import start_mail_server
from tests.support import appnet_argv, run_process

MESSAGE = b"From: bob@example.org\nTo: alice@localhost\nSubject: cli\n\nHello from a pipe.\n"


class UserCommandTests(TestCase):
    """appnet user add|passwd|del|list."""

    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())

    async def appnet(self, *args: str, stdin: bytes = b""):
        return await run_process(appnet_argv() + ["--data", self.data, *args], stdin=stdin)

    async def test_lifecycle(self) -> None:
        """add reads the password from a pipe; list, passwd and del work; the file is 0600 and holds no password."""
        done = await self.appnet("user", "add", "alice", stdin=b"s3cret pass\n")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"user alice added", done.stdout)
        await self.appnet("user", "add", "bob", "--quota", "10M", stdin=b"pw\n")
        listing = await self.appnet("user", "list")
        self.assertEqual(listing.stdout.decode().splitlines(), ["alice", f"bob\tquota={10 << 20}"])
        path = os.path.join(self.data, "users.json")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            text = f.read()
        self.assertNotIn("s3cret", text)
        self.assertTrue(json.loads(text)["users"]["alice"]["password"].startswith("scrypt$"))
        before = json.loads(text)["users"]["alice"]["password"]
        changed = await self.appnet("user", "passwd", "alice", stdin=b"new\n")
        self.assertEqual(changed.returncode, 0, changed.stderr)
        with open(path) as f:
            self.assertNotEqual(json.loads(f.read())["users"]["alice"]["password"], before)
        removed = await self.appnet("user", "del", "bob")
        self.assertEqual(removed.returncode, 0, removed.stderr)
        self.assertEqual((await self.appnet("user", "list")).stdout, b"alice\n")

    async def test_errors_are_one_line(self) -> None:
        """Duplicate, unknown and malformed users fail with one line and exit 1, no traceback."""
        await self.appnet("user", "add", "alice", stdin=b"pw\n")
        for args, fragment in (
            (("user", "add", "alice"), b"UserExists"),
            (("user", "del", "nobody"), b"NoSuchUser"),
            (("user", "add", "Bad/Name"), b"bad user name"),
            (("user", "add", "carol"), b"empty password"),
        ):
            done = await self.appnet(*args, stdin=b"pw\n" if args[-1] != "carol" else b"\n")
            self.assertEqual(done.returncode, 1, args)
            self.assertIn(fragment, done.stderr, args)
            self.assertNotIn(b"Traceback", done.stderr)
            self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)


class DeliverCommandTests(TestCase):
    """appnet mail deliver, against a server that is already running."""

    async def test_user_added_and_mail_delivered_while_running(self) -> None:
        """A user added and mail delivered by the command reach a running POP3 server at once."""
        server = await start_mail_server(self)
        argv = appnet_argv() + ["--data", server.data_dir]
        added = await run_process(argv + ["user", "add", "alice"], stdin=b"pw\n")
        self.assertEqual(added.returncode, 0, added.stderr)
        delivered = await run_process(argv + ["mail", "deliver", "alice"], stdin=MESSAGE)
        self.assertEqual(delivered.returncode, 0, delivered.stderr)
        self.assertIn(b"delivered to alice", delivered.stdout)

        def fetch() -> bytes:
            pop = poplib.POP3(server.host, server.pop3_port, timeout=10)
            try:
                pop.user("alice")
                pop.pass_("pw")
                return b"\r\n".join(pop.retr(1)[1])
            finally:
                pop.quit()

        data = await threads.deferToThread(fetch)
        self.assertEqual(data + b"\r\n", MESSAGE.replace(b"\n", b"\r\n"))

    async def test_deliver_to_unknown_user(self) -> None:
        """Delivery to an unknown user fails with one line and stores nothing."""
        data = os.path.abspath(self.mktemp())
        done = await run_process(appnet_argv() + ["--data", data, "mail", "deliver", "ghost"], stdin=MESSAGE)
        self.assertEqual(done.returncode, 1)
        self.assertIn(b"NoSuchUser", done.stderr)
        self.assertNotIn(b"Traceback", done.stderr)
        self.assertFalse(os.path.exists(os.path.join(data, "mail", "ghost", "new")))
