"""
Unit tests for L{appnet.mailbox.journal}: the record codec, the order of a
journalled delivery (records durable before any file is visible), replay
after a crash (lost, emptied and intact files; torn tails; tombstones;
reused segments) and checkpoints.

A "crash" here is a store dropped without L{MaildirStore.close_journal}:
its lock is released as the kernel would, and what a power cut would have
lost is removed or damaged by hand before a new store opens the journal.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from appnet.mailbox import MaildirStore, journal, maildir
from appnet.mailbox.journal import (
    DELIVERED,
    EXPUNGED,
    JOURNAL_DIR,
    DeliveryJournal,
    JournalBusy,
    Record,
    decode_records,
    encode_record,
    message_identity,
)
from tests.support import ManualRunner

paths = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
records = st.builds(Record, st.sampled_from([DELIVERED, EXPUNGED]), paths,
                    st.floats(allow_nan=False), st.binary(max_size=300))


class CodecTests(SynchronousTestCase):
    """Records round-trip; anything else ends the valid part, never raises."""

    @given(st.lists(records, max_size=5), st.integers(0, 2**32 - 1))
    def test_round_trip(self, rs: list[Record], number: int) -> None:
        """Encoded records of one segment decode to themselves."""
        buf = b"".join(encode_record(r, number) for r in rs)
        self.assertEqual(decode_records(buf, number), (rs, len(buf)))

    @given(st.lists(records, min_size=1, max_size=4), st.data())
    def test_torn_tail(self, rs: list[Record], data: Any) -> None:
        """A record cut anywhere ends the replay just before it."""
        encoded = [encode_record(r, 7) for r in rs]
        whole = b"".join(encoded[:-1])
        cut = data.draw(st.integers(0, len(encoded[-1]) - 1))
        self.assertEqual(decode_records(whole + encoded[-1][:cut], 7),
                         (rs[:-1], len(whole)))

    @given(st.lists(records, min_size=1, max_size=3))
    def test_other_segment_number_ends_it(self, rs: list[Record]) -> None:
        """What an earlier use of a reused file left is not read."""
        fresh = encode_record(rs[0], 9)
        stale = b"".join(encode_record(r, 8) for r in rs)
        self.assertEqual(decode_records(fresh + stale, 9), (rs[:1], len(fresh)))

    @given(st.binary(max_size=500))
    def test_garbage(self, buf: bytes) -> None:
        """Random bytes give no records or a prefix of valid ones; never an exception."""
        found, end = decode_records(buf, 1)
        self.assertLessEqual(end, len(buf))
        self.assertEqual(b"".join(encode_record(r, 1) for r in found), buf[:end])

    def test_flipped_byte(self) -> None:
        """A changed byte in the body fails the CRC."""
        buf = bytearray(encode_record(Record(DELIVERED, "a/new/k", 1.0, b"hello"), 1))
        buf[-1] ^= 1
        self.assertEqual(decode_records(bytes(buf), 1), ([], 0))

    def test_identity(self) -> None:
        """A message keeps its identity in new/, in cur/ and with any flags."""
        self.assertEqual(message_identity("alice/new/k1"), "alice/k1")
        self.assertEqual(message_identity("alice/.Sent/cur/k1:2,RS"), "alice/.Sent/k1")


def run_now(f: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


class JournalledStoreTests(SynchronousTestCase):
    """A store delivering through its journal, and its replay after crashes."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.events: list[str] = []
        real_fdatasync, real_rename = journal._fdatasync, maildir._rename

        def fdatasync(fd: int) -> None:
            self.events.append("fdatasync")
            real_fdatasync(fd)

        def rename(src: str, dst: str) -> None:
            self.events.append("rename")
            real_rename(src, dst)

        def no_fsync(*args: Any) -> None:
            self.fail("a journalled delivery fsynced a message or directory")

        self.patch(journal, "_fdatasync", fdatasync)
        self.patch(maildir, "_rename", rename)
        self.patch(maildir, "_fsync", no_fsync)
        self.patch(maildir, "_fsync_directory", no_fsync)
        self.store = self.open_store()

    def open_store(self) -> MaildirStore:
        store = MaildirStore(self.root, run_blocking=run_now, hostname="h")
        self.restored = store.open_journal(max_age=60)
        return store

    def crash(self) -> MaildirStore:
        """Drop the store as a crash would, and open a new one on its root."""
        assert self.store.journal is not None
        self.store.journal._release_lock()
        self.store = self.open_store()
        return self.store

    def deliver(self, body: bytes, **kwargs: Any) -> Any:
        d = self.store.deliver("alice", body, **kwargs)
        d.addCallback(lambda info: self.events.append("fired") or info)
        return self.successResultOf(d)

    def new(self) -> str:
        return os.path.join(self.root, "alice", "new")

    def contents(self) -> list[bytes]:
        out = []
        for sub in ("new", "cur"):
            for name in sorted(os.listdir(os.path.join(self.root, "alice", sub))):
                with open(os.path.join(self.root, "alice", sub, name), "rb") as f:
                    out.append(f.read())
        return sorted(out)

    def segments(self) -> list[str]:
        return sorted(n for n in os.listdir(os.path.join(self.root, JOURNAL_DIR))
                      if n.startswith("segment."))

    def test_order(self) -> None:
        """The record is flushed before the file appears; then the Deferred fires."""
        info = self.deliver(b"one\r\n")
        self.assertEqual(self.events, ["fdatasync", "rename", "fired"])
        self.assertEqual(os.listdir(self.new()), [info.key])
        self.assertEqual(self.contents(), [b"one\n"])
        self.assertEqual(os.listdir(os.path.join(self.root, "alice", "tmp")), [])

    def test_replay_restores_lost_and_damaged_files(self) -> None:
        """
        After a crash, a message whose file is gone (its rename lost) or
        empty (its data lost) is rewritten from the journal, with its
        arrival time; an intact one is left alone.
        """
        infos = [self.deliver(b"message %d\n" % i) for i in range(3)]
        os.unlink(os.path.join(self.new(), infos[0].key))
        with open(os.path.join(self.new(), infos[1].key), "wb"):
            pass
        intact = os.stat(os.path.join(self.new(), infos[2].key))
        self.crash()
        self.assertEqual(self.restored, 2)
        self.assertEqual(self.contents(), [b"message 0\n", b"message 1\n", b"message 2\n"])
        restored = os.stat(os.path.join(self.new(), infos[0].key))
        self.assertEqual(restored.st_mtime, infos[0].internal_date)
        self.assertEqual(os.stat(os.path.join(self.new(), infos[2].key)).st_ino, intact.st_ino)
        self.assertEqual(self.segments(), [])  # replayed, synced, retired

    def test_replay_keeps_flags(self) -> None:
        """A damaged message already moved to cur/ with flags is rewritten there."""
        info = self.deliver(b"flagged\n")
        folder = self.store.folder("alice")
        folder.messages()
        folder.set_flags(info.uid or folder.messages()[0].uid, {"\\Seen"})
        (name,) = os.listdir(os.path.join(self.root, "alice", "cur"))
        with open(os.path.join(self.root, "alice", "cur", name), "wb") as f:
            f.write(b"junk")
        self.crash()
        self.assertEqual(os.listdir(os.path.join(self.root, "alice", "cur")), [name])
        self.assertEqual(os.listdir(self.new()), [])
        self.assertEqual(self.contents(), [b"flagged\n"])

    def test_torn_tail_is_ignored(self) -> None:
        """Half a record (a batch never acknowledged) restores nothing."""
        self.deliver(b"kept\n")
        (segment,) = self.segments()
        record = encode_record(Record(DELIVERED, "alice/new/never", 0.0, b"half"), 1)
        size = self.store.journal._active.size
        with open(os.path.join(self.root, JOURNAL_DIR, segment), "r+b") as f:
            f.seek(size)
            f.write(record[:-2])
        self.crash()
        self.assertEqual(self.contents(), [b"kept\n"])

    def test_expunged_message_stays_expunged(self) -> None:
        """An expunge through the store writes a tombstone first: no resurrection."""
        self.deliver(b"gone\n")
        self.deliver(b"stays\n")
        folder = self.store.folder("alice")
        uids = [m.uid for m in folder.messages()]
        self.events.clear()
        folder.expunge(uids[:1])
        self.assertEqual(self.events, ["fdatasync"])
        # A power cut loses the second file; only it comes back.
        os.unlink(os.path.join(self.new(), os.listdir(self.new())[0]))
        self.crash()
        self.assertEqual(self.contents(), [b"stays\n"])

    def test_checkpoint(self) -> None:
        """After a checkpoint nothing is replayed: the maildir files are durable."""
        self.deliver(b"one\n")
        self.assertEqual(self.store.checkpoint(), 0)  # not due yet (max_age 60)
        self.assertEqual(self.store.checkpoint(force=True), 1)
        self.assertEqual(self.segments(), [])
        events = len(self.events)
        self.store.folder("alice").expunge([m.uid for m in self.store.folder("alice").messages()])
        self.assertEqual(len(self.events), events)  # no tombstone needed
        self.crash()
        self.assertEqual(self.restored, 0)
        self.assertEqual(self.contents(), [])

    def test_age_seals_and_due(self) -> None:
        """A segment older than max_age makes the journal due."""
        clock = [0.0]
        store = self.store
        store.close_journal()
        store._journal = DeliveryJournal(self.root, max_age=1.0, monotonic=lambda: clock[0])
        store._journal.open()
        self.assertFalse(store.journal.due())
        self.deliver(b"one\n")
        self.assertFalse(store.journal.due())
        clock[0] = 1.5
        self.assertTrue(store.journal.due())
        self.assertEqual(store.checkpoint(), 1)
        self.assertFalse(store.journal.due())

    def test_full_segment_is_sealed_and_reused(self) -> None:
        """
        A full segment is sealed; once checkpointed it is reused, and the
        records its first use left are never replayed.
        """
        self.patch(DeliveryJournal, "SEGMENT_BYTES", 1 << 16)
        big = b"x" * 20000 + b"\n"
        first = [self.deliver(big) for _ in range(5)]  # fills more than one segment
        self.assertGreaterEqual(len(self.store.journal._sealed), 1)
        self.store.checkpoint(force=True)
        for info in first:  # expunged by another process: no tombstones
            os.unlink(os.path.join(self.new(), info.key))
        self.deliver(b"after reuse\n")
        self.crash()
        self.assertEqual(self.contents(), [b"after reuse\n"])

    def test_unlink_by_another_process_comes_back(self) -> None:
        """
        A message removed behind the store's back before its checkpoint is
        restored: the journal delivers twice rather than lose mail.
        """
        info = self.deliver(b"again\n")
        os.unlink(os.path.join(self.new(), info.key))
        self.crash()
        self.assertEqual(self.contents(), [b"again\n"])

    def test_busy(self) -> None:
        """A second journal on the same root is refused while the first is held."""
        self.assertRaises(JournalBusy, DeliveryJournal(self.root).open)

    def test_close_retires_everything(self) -> None:
        """A clean close leaves spares only, and the next open replays nothing."""
        self.deliver(b"one\n")
        self.store.close_journal()
        self.assertIsNone(self.store.journal)
        self.assertEqual(self.segments(), [])
        self.store = self.open_store()
        self.assertEqual(self.restored, 0)

    def test_failed_append_fails_the_batch(self) -> None:
        """If the journal cannot be written, the batch fails and leaves no file."""

        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        self.patch(journal, "_fdatasync", broken)
        failure = self.failureResultOf(self.store.deliver("alice", b"lost\n"), OSError)
        self.assertEqual(failure.value.errno, 5)
        self.assertEqual(os.listdir(self.new()), [])
        self.assertEqual(os.listdir(os.path.join(self.root, "alice", "tmp")), [])

    def test_large_message_bypasses_the_journal(self) -> None:
        """A message over JOURNAL_MAX is fsynced as without a journal, in the same batch."""
        self.patch(MaildirStore, "JOURNAL_MAX", 100)
        fsynced: list[str] = []
        self.patch(maildir, "_fsync", lambda fd: fsynced.append("file"))
        self.patch(maildir, "_fsync_directory", lambda path: fsynced.append(os.path.basename(path)))
        self.deliver(b"small\n")
        self.assertEqual(fsynced, [])
        self.deliver(b"x" * 200 + b"\n")
        self.assertEqual(fsynced, ["file", "new"])
        self.assertEqual(self.store.journal.pending(["alice/new/" + n for n in os.listdir(self.new())]),
                         ["alice/new/" + n for n in os.listdir(self.new()) if "S=6," in n])


class AcknowledgedBeforeVisibleTests(SynchronousTestCase):
    """
    SMTP's deliveries (C{assign_uid=False}, no flags) through the journal:
    the Deferred fires once the record is flushed; the file is written and
    renamed into C{new/} just after, by a separate job; readers in this
    process wait for it.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.runner = ManualRunner()
        self.store = MaildirStore(self.root, run_blocking=self.runner, hostname="h")
        self.store.open_journal(max_age=60)
        self.new = os.path.join(self.root, "alice", "new")

    def deliver(self, body: bytes) -> Any:
        d = self.store.deliver("alice", body, assign_uid=False)
        self.runner.run_next()  # the batch: journal append + fdatasync
        return self.successResultOf(d)

    def test_fires_then_file_appears(self) -> None:
        """The Deferred fires with the info before the file exists; the next job writes it."""
        info = self.deliver(b"hello\r\n")
        self.assertEqual((info.uid, info.size, info.rfc822_size), (0, 6, 7))
        self.assertEqual(os.listdir(self.new), [])
        self.assertEqual(len(self.runner.jobs), 1)  # the materialization
        self.runner.run_next()
        self.assertEqual(os.listdir(self.new), [info.key])
        with open(os.path.join(self.new, info.key), "rb") as f:
            self.assertEqual(f.read(), b"hello\n")

    def test_reader_waits_for_acknowledged_messages(self) -> None:
        """A scan in another thread does not miss a message already acknowledged."""
        import threading

        self.deliver(b"hello\n")
        seen: list[int] = []
        reader = threading.Thread(target=lambda: seen.append(len(self.store.folder("alice").messages())))
        reader.start()
        self.runner.run_next()
        reader.join(30)
        self.assertEqual(seen, [1])

    def test_crash_before_the_file_is_written(self) -> None:
        """The journal record alone brings the message back after a crash."""
        info = self.deliver(b"only in the journal\n")
        self.store.journal._release_lock()
        store = MaildirStore(self.root, run_blocking=self.runner, hostname="h")
        self.assertEqual(store.open_journal(), 1)
        with open(os.path.join(self.new, info.key), "rb") as f:
            self.assertEqual(f.read(), b"only in the journal\n")

    def test_failed_write_is_retried_at_checkpoint(self) -> None:
        """A file that could not be written yet is retried; its segment waits for it."""
        calls = []

        def flaky(*args: Any, **kwargs: Any) -> str:
            calls.append(args)
            if len(calls) == 1:
                raise OSError(28, "No space left on device")
            return journal.write_message_file(*args, **kwargs)

        self.patch(maildir, "write_message_file", flaky)
        info = self.deliver(b"retry me\n")
        self.runner.run_next()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(os.listdir(self.new), [])
        self.assertEqual(self.store.journal.checkpoint(force=False), 0)
        self.assertEqual(self.store.checkpoint(force=True), 1)
        self.assertEqual(os.listdir(self.new), [info.key])

    def test_close_puts_everything_in_place(self) -> None:
        """Closing the journal writes what was still pending, then retires it."""
        import threading

        info = self.deliver(b"pending at close\n")
        job = self.runner.jobs.pop(0)
        closer = threading.Thread(target=self.store.close_journal)
        closer.start()  # waits for the pending batch, then checkpoints
        defer.maybeDeferred(job[0], *job[1])
        closer.join(30)
        self.assertFalse(closer.is_alive())
        self.assertEqual(os.listdir(self.new), [info.key])
        self.assertFalse([n for n in os.listdir(os.path.join(self.root, JOURNAL_DIR))
                          if n.startswith("segment.")])
