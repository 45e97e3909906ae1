"""
L{appnet.service.MailJournalService} on the real reactor: the SMTP service
opens the mailbox journal at start, checkpoints it while running, closes it
at stop; a second process on the same data directory falls back to
per-message fsyncs.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from appnet.config import load_config
from appnet.mailbox.journal import JOURNAL_DIR
from appnet.service import MailJournalService, make_service
from tests.integration.test_pop3_loopback import poll_until

LISTEN = {"listen": ["tcp:0:interface=127.0.0.1"], "listen_tls": [], "submission_listen": []}


class MailJournalServiceTests(TestCase):
    def build(self, data: str, **mail: object) -> object:
        config = load_config(data_dir=data, overrides={"smtp": LISTEN, "mail": mail})
        top = make_service(config, reactor, only=("smtp",))
        if not top.context.accounts.exists("alice"):  # type: ignore[attr-defined]
            top.context.accounts.add("alice", "pw-alice")  # type: ignore[attr-defined]
        top.startService()
        self.addCleanup(lambda: top.running and top.stopService())
        return top

    def journal_files(self, data: str) -> list[str]:
        return sorted(os.listdir(os.path.join(data, "mail", JOURNAL_DIR)))

    async def test_lifecycle(self) -> None:
        """Open at start, checkpointed when due, closed (nothing left) at stop."""
        data = os.path.abspath(self.mktemp())
        top = self.build(data, journal_checkpoint=0.1)
        store = top.context.mailbox_store  # type: ignore[attr-defined]
        self.assertIsNotNone(store.journal)
        await store.deliver("alice", b"Subject: one\n\nbody\n", assign_uid=False)
        self.assertIn("segment.2", self.journal_files(data))
        # The service's loop checkpoints it soon: the segment becomes a spare.
        await poll_until(lambda: not any(n.startswith("segment.") for n in self.journal_files(data)) or None,
                         timeout=10)
        await store.deliver("alice", b"Subject: two\n\nbody\n", assign_uid=False)
        await top.stopService()
        self.assertIsNone(store.journal)
        self.assertFalse(any(n.startswith("segment.") for n in self.journal_files(data)))
        self.assertEqual(len(os.listdir(os.path.join(data, "mail", "alice", "new"))), 2)

    async def test_second_process_falls_back(self) -> None:
        """While another store holds the journal, deliveries fsync each message."""
        data = os.path.abspath(self.mktemp())
        first = self.build(data)
        second = self.build(data)
        self.assertIsNotNone(first.context.mailbox_store.journal)  # type: ignore[attr-defined]
        store = second.context.mailbox_store  # type: ignore[attr-defined]
        self.assertIsNone(store.journal)
        info = await store.deliver("alice", b"Subject: direct\n\nbody\n")
        self.assertTrue(os.path.exists(os.path.join(data, "mail", "alice", "new", info.key)))
        self.flushLoggedErrors()
        await second.stopService()
        await first.stopService()

    def test_disabled(self) -> None:
        """C{[mail] journal = false}: no journal service at all."""
        data = os.path.abspath(self.mktemp())
        top = self.build(data, journal=False)
        self.assertRaises(KeyError, top.getServiceNamed, MailJournalService.name)
        self.assertIsNone(top.context.mailbox_store.journal)  # type: ignore[attr-defined]
        return top.stopService()
