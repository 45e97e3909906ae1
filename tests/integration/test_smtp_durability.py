"""
A message acknowledged with 250 is on disk: C{twistd appnet-smtp} under
load from several sessions is killed with SIGKILL; nothing half-written is
in C{new/} or C{cur/}, and once the server is started again every message
any client saw acknowledged is in the Maildir, complete and once.

Deliveries go through the mailbox journal (L{appnet.mailbox.journal}): the
250 follows the flush of the message's journal record, and the file is
written into C{new/} just after, so the kill can come before some
acknowledged files exist; the restart's replay writes them. A kill keeps
the page cache, so to stand in for what a power cut would lose, the test
also deletes one message file and empties another before the restart, as a
lost rename and lost data would leave them: the replay must restore both.
"""

from __future__ import annotations

import os
import re
import smtplib
import threading

from twisted.internet import defer, error, threads
from twisted.trial.unittest import FailTest, TestCase

from appnet.mailbox import MaildirStore
from tests.integration.test_pop3_loopback import poll_until
from tests.integration.test_twistd import _STARTING_ON, add_user, start_twistd

SESSIONS = 4
PER_SESSION = 400
TRAILER = b"-- end of message %s --"
_REWROTE = re.compile(r"Journal replay rewrote (\d+) message file")


def message(ident: str) -> bytes:
    """A ~4 KB message whose last line names it, so a torn copy shows."""
    body = b"".join(b"line %d of %s\r\n" % (i, ident.encode()) for i in range(200))
    return (b"Subject: %s\r\n\r\n" % ident.encode()) + body + TRAILER % ident.encode() + b"\r\n"


class KillNineUnderLoadTests(TestCase):
    timeout = 240

    async def test_acknowledged_messages_survive_sigkill(self) -> None:
        tmp = os.path.abspath(self.mktemp())
        data = os.path.join(tmp, "data")
        os.makedirs(tmp)
        await add_user(data, "alice", "pw-alice")
        # No checkpoint during the test: every message stays in the journal.
        config = os.path.join(tmp, "appnet.toml")
        with open(config, "w") as f:
            f.write("[mail]\njournal_checkpoint = 60\n")
        proc = start_twistd(
            self,
            ["-n", "--pidfile=", "appnet-smtp", "--config", config, "--data", data,
             "--listen", "tcp:0:interface=127.0.0.1",
             "--submission-listen", "none", "--listen-tls", "none"],
            cwd=tmp,
        )

        def bound() -> int | None:
            if not proc.running:
                raise FailTest(f"twistd exited before listening:\n{proc.output}")
            found = _STARTING_ON.search(proc.output)
            return int(found.group(1)) if found else None

        port = await poll_until(bound, timeout=30)
        acknowledged: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def session(n: int) -> None:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                    for i in range(PER_SESSION):
                        if stop.is_set():
                            return
                        ident = f"s{n}-m{i}"
                        s.sendmail("load@example.org", ["alice@localhost"], message(ident))
                        with lock:
                            acknowledged.append(ident)
            except (smtplib.SMTPException, OSError):
                return  # the server was killed under us

        sessions = [threads.deferToThread(session, n) for n in range(SESSIONS)]
        await poll_until(lambda: len(acknowledged) >= 100 or None, timeout=120)
        proc.signal("KILL")
        reason = await proc.wait(20)
        self.assertIsInstance(reason, error.ProcessTerminated)
        stop.set()
        await defer.gatherResults(sessions)
        with lock:
            acked = set(acknowledged)
        self.assertGreaterEqual(len(acked), 100)
        self.assertLess(len(acked), SESSIONS * PER_SESSION, "killed too late to test anything")

        maildir = os.path.join(data, "mail", "alice")

        def stored_messages() -> dict[str, bytes]:
            stored: dict[str, bytes] = {}
            for sub in ("new", "cur"):
                for name in os.listdir(os.path.join(maildir, sub)):
                    with open(os.path.join(maildir, sub, name), "rb") as f:
                        raw = f.read().replace(b"\r\n", b"\n")  # Maildir keeps LF lines
                    subject = raw.split(b"\nSubject: ", 1)[1].split(b"\n", 1)[0].decode()
                    self.assertTrue(
                        raw.endswith(TRAILER % subject.encode() + b"\n"),
                        f"{sub}/{name} is not complete",
                    )
                    self.assertNotIn(subject, stored, "a message stored twice")
                    stored[subject] = raw
            return stored

        # Whatever is in the Maildir now is complete (the journal holds the
        # rest). What a power cut could also have lost: renames and data of
        # files not yet checkpointed; stand in for that with the newest two.
        before = stored_messages()
        newest = sorted(os.listdir(os.path.join(maildir, "new")),
                        key=lambda n: os.stat(os.path.join(maildir, "new", n)).st_mtime_ns)[-2:]
        os.unlink(os.path.join(maildir, "new", newest[0]))
        open(os.path.join(maildir, "new", newest[1]), "wb").close()
        restarted = start_twistd(
            self,
            ["-n", "--pidfile=", "appnet-smtp", "--config", config, "--data", data,
             "--listen", "tcp:0:interface=127.0.0.1",
             "--submission-listen", "none", "--listen-tls", "none"],
            cwd=tmp,
        )
        replayed = await poll_until(
            lambda: _REWROTE.search(restarted.output), timeout=30)
        # The two damaged files, plus any acknowledged one the kill came
        # before the writing of.
        self.assertGreaterEqual(int(replayed.group(1)), 2)
        stored = stored_messages()
        self.assertEqual(acked - set(stored), set(), "acknowledged messages lost")
        self.assertLessEqual(set(before), set(stored))

        # A fresh store sees every stored message once.
        store = MaildirStore(os.path.join(data, "mail"))
        self.assertEqual(len(store.folder("alice").messages()), len(stored))
