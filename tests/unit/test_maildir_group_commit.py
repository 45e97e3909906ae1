"""
Unit tests for L{MaildirStore.deliver}'s group commit and its
C{assign_uid=False} path (what SMTP uses): deliveries that arrive while a
batch is being written go together as the next batch (each file fsynced,
then renamed, then one fsync of the directory), and no Deferred fires
before the directory fsync that covers its own message.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from appnet.errors import QuotaExceeded
from appnet.mailbox import MaildirStore, maildir, uidlist
from appnet.mailbox.uidlist import UIDLIST_FILE
from tests.support import ManualRunner


class GroupCommitTests(SynchronousTestCase):
    """Deliveries into one folder share commits; durability per message holds."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.runner = ManualRunner()
        self.patch(MaildirStore, "WRITERS", 1)
        self.store = MaildirStore(self.root, run_blocking=self.runner, hostname="h")
        self.events: list[tuple[str, str]] = []

        def fsync(fd: int) -> None:
            self.events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
            os.fsync(fd)

        def rename(src: str, dst: str) -> None:
            self.events.append(("rename", os.path.basename(dst)))
            os.rename(src, dst)

        def fsync_directory(path: str) -> None:
            self.events.append(("fsync-dir", os.path.basename(path)))
            uidlist.fsync_directory(path)

        self.patch(maildir, "_fsync", fsync)
        self.patch(maildir, "_rename", rename)
        self.patch(maildir, "_fsync_directory", fsync_directory)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, "alice", *parts)

    def fired(self, d: defer.Deferred[Any], name: str) -> None:
        d.addCallback(lambda info: self.events.append(("fired", name)) or info)

    def test_batches_and_durability_order(self) -> None:
        """
        Three deliveries: the first is written alone; the two that arrived
        while it was being written go together (two fsyncs, two renames,
        one fsync of new/); each Deferred fires only after its file's
        fsync, its rename and the fsync of new/ that follows.
        """
        ds = [self.store.deliver("alice", b"m%d\n" % i) for i in range(3)]
        for i, d in enumerate(ds):
            self.fired(d, f"m{i}")
        self.assertEqual(len(self.runner.jobs), 1)  # m1 and m2 wait for m0's batch
        self.runner.run_next()  # batch m0 -> fires m0, queues the m1+m2 batch
        self.assertEqual(len(self.runner.jobs), 1)
        self.runner.run_next()  # batch m1 + m2
        self.assertEqual(self.runner.jobs, [])
        infos = [self.successResultOf(d) for d in ds]
        kinds = [e[0] for e in self.events]
        self.assertEqual(
            kinds,
            ["fsync", "rename", "fsync-dir", "fired",
             "fsync", "fsync", "rename", "rename", "fsync-dir", "fired", "fired"],
        )
        self.assertEqual([i.uid for i in infos], [1, 2, 3])
        self.assertEqual(sorted(os.listdir(self.path("new"))), sorted(i.key for i in infos))
        self.assertEqual(os.listdir(self.path("tmp")), [])

    def test_failed_fsync_fails_that_message_alone(self) -> None:
        """A message whose fsync fails is removed and fails; the rest of its batch is delivered."""
        calls = []

        def fsync(fd: int) -> None:
            calls.append(fd)
            if len(calls) == 2:
                raise OSError(5, "Input/output error")
            os.fsync(fd)

        self.patch(maildir, "_fsync", fsync)
        first = self.store.deliver("alice", b"first\n")
        ds = [self.store.deliver("alice", b"m%d\n" % i) for i in range(2)]
        while self.runner.jobs:
            self.runner.run_next()
        self.successResultOf(first)
        self.failureResultOf(ds[0], OSError)
        self.assertEqual(self.successResultOf(ds[1]).size, 3)
        self.assertEqual(len(os.listdir(self.path("new"))), 2)
        self.assertEqual(os.listdir(self.path("tmp")), [])

    def test_failure_in_one_stage_spares_the_others(self) -> None:
        """A message refused while staging (quota) fails alone; the others are delivered."""
        self.store = MaildirStore(self.root, run_blocking=self.runner, hostname="h", quota_for=lambda user: 100)
        big = self.store.deliver("alice", b"x" * 200)
        small = self.store.deliver("alice", b"small\n")
        while self.runner.jobs:
            self.runner.run_next()
        self.failureResultOf(big, QuotaExceeded)
        self.assertEqual(self.successResultOf(small).size, 6)
        self.assertEqual(len(os.listdir(self.path("new"))), 1)

    def test_two_writers(self) -> None:
        """
        With two writers, two batches are written at once and the
        deliveries that arrive meanwhile wait for the first to finish.
        """
        self.patch(MaildirStore, "WRITERS", 2)
        ds = [self.store.deliver("alice", b"m%d\n" % i) for i in range(4)]
        self.assertEqual(len(self.runner.jobs), 2)  # m0 and m1, each a batch
        self.runner.run_next()  # m0 done -> m2 + m3 go as one batch
        self.assertEqual(len(self.runner.jobs), 2)
        while self.runner.jobs:
            self.runner.run_next()
        self.assertEqual(len({self.successResultOf(d).uid for d in ds}), 4)
        self.assertEqual(len(os.listdir(self.path("new"))), 4)

    def test_failed_commit_leaves_nothing(self) -> None:
        """When the rename fails, every message of the batch fails and tmp/ and new/ stay empty."""

        def failing_rename(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        self.patch(maildir, "_rename", failing_rename)
        ds = [self.store.deliver("alice", b"m%d\n" % i) for i in range(2)]
        while self.runner.jobs:
            self.runner.run_next()
        for d in ds:
            self.failureResultOf(d, OSError)
        self.assertEqual(os.listdir(self.path("tmp")), [])
        self.assertEqual(os.listdir(self.path("new")), [])


class UnnumberedDeliveryTests(SynchronousTestCase):
    """C{assign_uid=False}: durable in new/ at once, numbered by the next scan."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.store = MaildirStore(self.root, run_blocking=lambda f, *a: defer.maybeDeferred(f, *a), hostname="h")

    def test_numbered_by_next_scan(self) -> None:
        """The UID list is not written at delivery; the next scan gives UIDs in arrival order."""
        infos = [self.successResultOf(self.store.deliver("alice", b"m%d\n" % i, assign_uid=False)) for i in range(3)]
        self.assertEqual([i.uid for i in infos], [0, 0, 0])
        folder_path = os.path.join(self.root, "alice")
        self.assertFalse(os.path.exists(os.path.join(folder_path, UIDLIST_FILE)))
        listed = self.store.folder("alice").messages()
        self.assertEqual([m.key for m in listed], [i.key for i in infos])
        self.assertEqual([m.uid for m in listed], [1, 2, 3])
        folder = self.store.folder("alice")
        self.assertEqual([folder.read_message(m.uid) for m in listed], [b"m0\n", b"m1\n", b"m2\n"])

    def test_mixed_with_numbered(self) -> None:
        """Unnumbered and numbered deliveries into one folder never share a UID."""
        self.successResultOf(self.store.deliver("alice", b"a\n", assign_uid=False))
        numbered = self.successResultOf(self.store.deliver("alice", b"b\n"))
        self.successResultOf(self.store.deliver("alice", b"c\n", assign_uid=False))
        listed = self.store.folder("alice").messages()
        uids = [m.uid for m in listed]
        self.assertEqual(len(set(uids)), 3)
        self.assertIn(numbered.uid, uids)
        self.assertEqual(self.store.folder("alice").read_message(numbered.uid), b"b\n")
