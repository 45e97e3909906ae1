"""
Tests for L{appnet.smtp.queue}: the durable outbound queue on disk.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appnet.smtp import queue as queue_module
from appnet.smtp.queue import (
    DELIVERED,
    PENDING,
    OutboundQueue,
    QueueEntry,
    RecipientState,
)


def run_now(f: Any, *args: Any) -> defer.Deferred[Any]:
    """A C{run_blocking} that runs the work at once, in the test's thread."""
    return defer.maybeDeferred(f, *args)


def make_queue(test: SynchronousTestCase, directory: str | None = None, now: float = 1_700_000_000.0) -> OutboundQueue:
    """A queue in a temporary directory with a fixed clock."""
    return OutboundQueue(directory or test.mktemp(), run_blocking=run_now, now=lambda: now)


class EnqueueTests(SynchronousTestCase):
    """Enqueueing writes the message and its envelope durably."""

    def test_enqueue_then_load(self) -> None:
        """A queued message comes back from a scan with its envelope and bytes."""
        q = make_queue(self)
        queue_id = self.successResultOf(q.enqueue("a@example.org", ["b@example.net", "c@example.com"], b"Subject: x\r\n\r\nhi\r\n"))
        [entry] = self.successResultOf(q.load())
        self.assertEqual(entry.id, queue_id)
        self.assertEqual(entry.sender, "a@example.org")
        self.assertEqual(entry.arrival, 1_700_000_000.0)
        self.assertEqual(entry.size, 18)
        self.assertEqual([(r.address, r.state, r.attempts) for r in entry.recipients],
                         [("b@example.net", PENDING, 0), ("c@example.com", PENDING, 0)])
        self.assertEqual(entry.next_attempt(), 1_700_000_000.0)
        self.assertEqual(self.successResultOf(q.read_message(queue_id)), b"Subject: x\r\n\r\nhi\r\n")
        self.assertEqual(os.listdir(q.directory), [f"{queue_id}.msg"])

    def test_durable_before_acknowledged(self) -> None:
        """
        The message file is fsynced, renamed into place and the directory
        fsynced before the Deferred fires and before watchers hear of it.
        """
        calls: list[str] = []
        self.patch(queue_module, "_fsync", lambda fd: calls.append("fsync"))
        self.patch(queue_module, "_fsync_directory", lambda path: calls.append("fsync-dir"))
        real_rename = os.rename

        def rename(src: str, dst: str) -> None:
            calls.append("rename " + dst.rsplit(".", 1)[1])
            real_rename(src, dst)

        self.patch(queue_module, "_rename", rename)
        q = make_queue(self)
        q.watch(lambda entry: calls.append("watcher"))
        d = q.enqueue("a@example.org", ["b@example.net"], b"x")
        d.addCallback(lambda queue_id: calls.append("acknowledged"))
        self.successResultOf(d)
        self.assertEqual(calls, ["fsync", "rename msg", "fsync-dir", "watcher", "acknowledged"])

    def test_not_acknowledged_until_written(self) -> None:
        """With the disk work still running, the enqueue has not fired."""
        pending: list[Any] = []

        def later(f: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            pending.append((d, f, args))
            return d

        q = OutboundQueue(self.mktemp(), run_blocking=later)
        d = q.enqueue("a@example.org", ["b@example.net"], b"x")
        self.assertNoResult(d)
        waiting, f, args = pending.pop()
        waiting.callback(f(*args))
        self.assertTrue(self.successResultOf(d))

    def test_no_recipients(self) -> None:
        """A message without recipients is refused."""
        self.failureResultOf(make_queue(self).enqueue("a@example.org", [], b"x"), ValueError)

    def test_watchers(self) -> None:
        """Watchers get each new entry; an unwatched one no more."""
        q = make_queue(self)
        seen: list[str] = []
        watcher = lambda entry: seen.append(entry.id)
        q.watch(watcher)
        first = self.successResultOf(q.enqueue("", ["b@example.net"], b"x"))
        q.unwatch(watcher)
        self.successResultOf(q.enqueue("", ["b@example.net"], b"y"))
        self.assertEqual(seen, [first])


class StateTests(SynchronousTestCase):
    """The state file is replaced after each attempt; done messages go."""

    def test_update(self) -> None:
        """An updated entry is what the next scan reads."""
        q = make_queue(self)
        queue_id = self.successResultOf(q.enqueue("a@example.org", ["b@example.net", "c@example.net"], b"x"))
        [entry] = self.successResultOf(q.load())
        entry.recipients[0].state = DELIVERED
        entry.recipients[1].attempts = 1
        entry.recipients[1].next_attempt = 1_700_000_060.0
        entry.recipients[1].code = 451
        entry.recipients[1].error = "4.3.0 try later"
        self.successResultOf(q.update(entry))
        [again] = self.successResultOf(q.load())
        self.assertEqual(again, entry)
        self.assertEqual([r.address for r in again.pending()], ["c@example.net"])
        self.assertEqual(again.next_attempt(), 1_700_000_060.0)
        self.assertEqual(len(os.listdir(q.directory)), 2, "no temporary file left")
        self.assertEqual(queue_id, again.id)

    def test_remove(self) -> None:
        """A removed message leaves no file."""
        q = make_queue(self)
        queue_id = self.successResultOf(q.enqueue("a@example.org", ["b@example.net"], b"x"))
        self.successResultOf(q.remove(queue_id))
        self.assertEqual(os.listdir(q.directory), [])
        self.assertEqual(self.successResultOf(q.load()), [])

    def test_bad_id(self) -> None:
        """An id that is not ours never becomes a path."""
        self.failureResultOf(make_queue(self).read_message("../../etc/passwd"), ValueError)

    def test_json_round_trip(self) -> None:
        """An entry survives its JSON form; a foreign format is refused."""
        entry = QueueEntry("0000000001-" + "a" * 32, "", 1.5, 3, [RecipientState("x@y", attempts=2, code=421, error="busy")])
        self.assertEqual(QueueEntry.from_json(entry.to_json()), entry)
        self.assertRaises(ValueError, QueueEntry.from_json, b'{"format": 99}')
        self.assertRaises(ValueError, QueueEntry.from_json, b'{"format": 1, "id": "x"}')


class RecoveryTests(SynchronousTestCase):
    """What a kill -9 leaves is found again, and its leftovers cleaned."""

    def test_new_queue_object_finds_messages(self) -> None:
        """A queue dropped without any shutdown is fully there for its successor."""
        directory = self.mktemp()
        first = make_queue(self, directory)
        queue_id = self.successResultOf(first.enqueue("a@example.org", ["b@example.net"], b"body"))
        del first
        successor = make_queue(self, directory)
        [entry] = self.successResultOf(successor.load())
        self.assertEqual(entry.id, queue_id)
        self.assertEqual(self.successResultOf(successor.read_message(queue_id)), b"body")

    def test_leftovers_cleaned(self) -> None:
        """
        Half-written C{.tmp} files and a state file without its message (a
        crash inside enqueue, update or remove) are ignored, and removed once
        old enough that no enqueue can still be writing them; messages stay.
        """
        q = make_queue(self)
        queue_id = self.successResultOf(q.enqueue("a@example.org", ["b@example.net"], b"body"))
        lone_env = "1700000000-" + "2" * 32
        leftovers = [f"{lone_env}.env", f"{queue_id}.env.0123abcd.tmp", f"{queue_id}.msg.99999999.tmp"]
        for name in leftovers:
            with open(os.path.join(q.directory, name), "wb") as f:
                f.write(b"half")
        [entry] = self.successResultOf(q.load())
        self.assertEqual(entry.id, queue_id)
        self.assertEqual(len(os.listdir(q.directory)), 4, "young leftovers may be an enqueue in progress")
        old = time.time() - queue_module.LEFTOVER_AGE - 1
        for name in leftovers:
            os.utime(os.path.join(q.directory, name), (old, old))
        [entry] = self.successResultOf(q.load())
        self.assertEqual(entry.id, queue_id)
        self.assertEqual(os.listdir(q.directory), [f"{queue_id}.msg"])
        self.assertEqual(self.successResultOf(q.read_message(queue_id)), b"body")

    def test_corrupt_state_set_aside(self) -> None:
        """An unreadable state file is set aside with its message, not fatal."""
        q = make_queue(self)
        good = self.successResultOf(q.enqueue("a@example.org", ["b@example.net"], b"good"))
        bad = self.successResultOf(q.enqueue("a@example.org", ["b@example.net"], b"bad"))
        with open(os.path.join(q.directory, f"{bad}.env"), "wb") as f:
            f.write(b"not json")
        [entry] = self.successResultOf(q.load())
        self.assertEqual(entry.id, good)
        self.assertIn(f"{bad}.msg.corrupt", os.listdir(q.directory))
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        # A second scan leaves the set-aside files alone.
        self.successResultOf(q.load())
        self.assertIn(f"{bad}.env.corrupt", os.listdir(q.directory))


#: The queue module's disk operations, each a place a process can die.
SEAMS = {
    "_fsync": os.fsync,
    "_rename": os.rename,
    "_unlink": os.unlink,
    "_fsync_directory": queue_module.fsync_directory,
}


class Crash(BaseException):
    """The process dies here (BaseException: nothing may catch it)."""


def survived(d: defer.Deferred[Any]) -> bool:
    """Whether the operation finished (False: it died with L{Crash})."""
    results: list[Any] = []
    d.addBoth(results.append)
    if isinstance(results[0], Failure):
        results[0].trap(Crash)
        return False
    return True


class CrashPointTests(SynchronousTestCase):
    """
    Kill the process at each fsync and rename of enqueue, update and
    remove in turn: a fresh queue on the directory then holds the message
    whole (old or new state) or, only if never acknowledged or already
    finished, not at all.
    """

    def crash_at(self, step: int) -> None:
        """Make the C{step}-th fsync, rename or unlink die."""
        calls = [0]

        def seam(real: Any) -> Any:
            def wrapped(*args: Any) -> Any:
                calls[0] += 1
                if calls[0] == step:
                    raise Crash()
                return real(*args)

            return wrapped

        for name, real in SEAMS.items():
            self.patch(queue_module, name, seam(real))

    def successor(self, directory: str) -> list[QueueEntry]:
        """What a restarted queue finds, every leftover old enough to clean."""
        for name, real in SEAMS.items():
            self.patch(queue_module, name, real)
        self.patch(queue_module, "LEFTOVER_AGE", -10)
        entries = self.successResultOf(make_queue(self, directory).load())
        names = sorted(os.listdir(directory))
        self.assertEqual(sorted({n.split(".")[0] + ".msg" for n in names}), [n for n in names if n.endswith(".msg")])
        self.assertEqual(len({n.split(".")[0] for n in names}), len(entries), names)
        return entries

    def run_steps(self, operation: Any) -> int:
        """
        Run C{operation(step)} crashing at step 1, 2, ... until it
        completes; return the step it completed at.
        """
        for step in range(1, 20):
            if operation(step):
                return step
        self.fail("never completed")

    def test_enqueue(self) -> None:
        """A crash anywhere in enqueue: nothing, or (once acknowledged) the whole message."""

        def operation(step: int) -> bool:
            directory = self.mktemp()
            q = make_queue(self, directory)
            self.crash_at(step)
            acknowledged = survived(q.enqueue("a@example.org", ["b@example.net"], b"body"))
            entries = self.successor(directory)
            if acknowledged:
                self.assertEqual(len(entries), 1)
            for entry in entries:
                self.assertEqual(self.successResultOf(make_queue(self, directory).read_message(entry.id)), b"body")
            return acknowledged

        # The file's fsync, its rename, the directory's fsync.
        self.assertEqual(self.run_steps(operation), 4)

    def test_update_and_remove(self) -> None:
        """A crash in an update leaves the old or the new state; in a remove, all or nothing."""

        def operation(step: int) -> bool:
            directory = self.mktemp()
            q = make_queue(self, directory)
            queue_id = self.successResultOf(q.enqueue("a@example.org", ["b@example.net", "c@example.net"], b"body"))
            [entry] = self.successResultOf(q.load())
            entry.recipients[0].state = DELIVERED
            self.crash_at(step)
            finished = survived(q.update(entry)) and survived(q.remove(queue_id))
            entries = self.successor(directory)
            if finished:
                self.assertEqual(entries, [])
            for found in entries:
                self.assertIn([r.state for r in found.recipients], ([PENDING, PENDING], [DELIVERED, PENDING]))
            return finished

        # Update: fsync, rename, fsync dir; remove: two unlinks, fsync dir.
        self.assertEqual(self.run_steps(operation), 7)
