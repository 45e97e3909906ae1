"""
Tests for L{appnet.mailbox}: the store contract as a reusable mixin
(L{MailboxStoreTestsMixin}), run against L{MaildirStore}, and the Maildir
specifics (file names, flags letters, UID list, locks across processes).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from appnet.errors import (
    MailboxExists,
    MailboxLocked,
    NoSuchMailbox,
    NoSuchMessage,
    NoSuchUser,
    PermissionDenied,
    QuotaExceeded,
    StoreError,
)
from appnet.mailbox import (
    IFolder,
    IMaildropLock,
    IMailboxStore,
    InvalidFlag,
    InvalidFolderName,
    InvalidUserName,
    KeywordsLocked,
    MaildirStore,
    MessageInfo,
    TooManyKeywords,
)
from appnet.mailbox import filenames, maildir, names, uidlist

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nbody line\r\n"


def inline(f: Any, *args: Any) -> defer.Deferred[Any]:
    """A C{run_blocking} that runs the work at once, for unit tests."""
    return defer.maybeDeferred(f, *args)


def to_crlf(data: bytes) -> bytes:
    """Every bare LF written as CRLF: the form POP3 and IMAP send."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


BAD_FOLDER_NAMES = [
    ("empty", ""),
    ("dot dot", ".."),
    ("dot", "."),
    ("dot dot component", "a/../b"),
    ("dot in component", "a.b"),
    ("leading dot", ".hidden"),
    ("leading slash", "/Sent"),
    ("trailing slash", "Sent/"),
    ("empty component", "a//b"),
    ("NUL", "a\x00b"),
    ("newline", "a\nb"),
    ("DEL", "a\x7fb"),
    ("IMAP wildcard *", "a*"),
    ("IMAP wildcard %", "a%b"),
    ("lone surrogate", "a\ud800b"),
    ("too long", "x" * 300),
]

BAD_USER_NAMES = [
    ("empty", ""),
    ("upper case", "Alice"),
    ("leading dot", ".alice"),
    ("dot dot", ".."),
    ("slash", "a/b"),
    ("NUL", "a\x00"),
    ("space", "a b"),
    ("non-ASCII", "jürgen"),
    ("too long", "a" * 65),
]


class MailboxStoreTestsMixin:
    """
    The behaviour every L{IMailboxStore} implementation must show. Mix into
    a L{SynchronousTestCase} and define L{make_store}.
    """

    def make_store(self, quota_for: Any = None,
                   user_exists: Any = None) -> Any:
        """
        Return a new store instance over this test's backing data: every
        call within one test sees the same mail. Blocking work runs inline.
        """
        raise NotImplementedError

    # helpers -------------------------------------------------------------

    def deliver(self, store: Any, user: str, message: bytes,
                folder: str = "INBOX", flags: Any = frozenset()
                ) -> MessageInfo:
        return self.successResultOf(  # type: ignore[attr-defined]
            store.deliver(user, message, folder, flags))

    def setUp(self) -> None:
        self.store = self.make_store()

    # interfaces ----------------------------------------------------------

    def test_provides_interfaces(self) -> None:
        """The store, its folders and its maildrop locks provide their
        interfaces."""
        self.assertTrue(verifyObject(IMailboxStore, self.store))
        self.assertTrue(verifyObject(IFolder, self.store.folder("alice")))
        lock = self.store.lock_maildrop("alice")
        self.addCleanup(lock.release)
        self.assertTrue(verifyObject(IMaildropLock, lock))

    # delivery and sizes --------------------------------------------------

    def test_deliver_lists_message(self) -> None:
        """A delivered message is listed with its UID, LF-stored size and
        CRLF size, no flags, recent."""
        info = self.deliver(self.store, "alice", MESSAGE)
        stored = MESSAGE.replace(b"\r\n", b"\n")
        [listed] = self.store.folder("alice").messages()
        self.assertEqual(listed, info)
        self.assertEqual(listed.size, len(stored))
        self.assertEqual(listed.rfc822_size, len(MESSAGE))
        self.assertEqual(listed.flags, frozenset())
        self.assertTrue(listed.recent)
        self.assertEqual(self.store.folder("alice").read_message(info.uid),
                         stored)

    def test_crlf_stored_as_lf(self) -> None:
        """CRLF line ends are stored as LF; the CRLF size is the original
        size of an all-CRLF message."""
        info = self.deliver(self.store, "alice", b"a\r\nb\r\n\r\nc\r\n")
        self.assertEqual(self.store.folder("alice").read_message(info.uid),
                         b"a\nb\n\nc\n")
        self.assertEqual((info.size, info.rfc822_size), (7, 11))

    def test_lf_message_sizes(self) -> None:
        """An LF-only message is stored as it is; its CRLF size counts one
        more octet per line."""
        info = self.deliver(self.store, "alice", b"a\nb\n\nc")
        self.assertEqual(self.store.folder("alice").read_message(info.uid),
                         b"a\nb\n\nc")
        self.assertEqual((info.size, info.rfc822_size), (6, 9))

    def test_bare_cr_kept(self) -> None:
        """A CR not followed by LF is message data and is kept."""
        info = self.deliver(self.store, "alice", b"a\rb\r\n")
        self.assertEqual(self.store.folder("alice").read_message(info.uid),
                         b"a\rb\n")
        self.assertEqual(info.rfc822_size, 5)

    def test_open_message_binary(self) -> None:
        """open_message returns a binary file of the stored message."""
        info = self.deliver(self.store, "alice", b"\x00\xff\n")
        with self.store.folder("alice").open_message(info.uid) as f:
            self.assertEqual(f.read(), b"\x00\xff\n")

    def test_deliver_to_folder(self) -> None:
        """deliver can target an existing folder, leaving INBOX alone."""
        self.store.create_folder("alice", "Lists/Twisted")
        info = self.deliver(self.store, "alice", MESSAGE, "Lists/Twisted")
        self.assertEqual(
            self.store.folder("alice", "Lists/Twisted").messages(), [info])
        self.assertEqual(self.store.folder("alice").messages(), [])

    def test_deliver_missing_folder(self) -> None:
        """deliver into a folder that does not exist fails NoSuchMailbox."""
        self.failureResultOf(  # type: ignore[attr-defined]
            self.store.deliver("alice", MESSAGE, "Nope"), NoSuchMailbox)

    def test_deliver_with_flags(self) -> None:
        """Flags given to deliver are stored; such a message is not
        recent."""
        info = self.deliver(self.store, "alice", MESSAGE,
                            flags=frozenset({"\\Seen", "Junk"}))
        [listed] = self.store.folder("alice").messages()
        self.assertEqual(listed.flags, frozenset({"\\Seen", "Junk"}))
        self.assertEqual(info, listed)
        self.assertFalse(listed.recent)

    def test_add_message_internal_date(self) -> None:
        """add_message keeps a given internal date (whole seconds at
        least)."""
        folder = self.store.folder("alice")
        info = folder.add_message(MESSAGE, internal_date=1_000_000_000.0)
        self.assertEqual(int(info.internal_date), 1_000_000_000)
        [listed] = self.make_store().folder("alice").messages()
        self.assertEqual(int(listed.internal_date), 1_000_000_000)

    def test_add_message_rejects_text(self) -> None:
        """Messages are bytes; a str is a caller bug, reported as
        TypeError."""
        self.assertRaises(TypeError, self.store.folder("alice").add_message,
                          "text")

    # UIDs ----------------------------------------------------------------

    def test_uids_ascend(self) -> None:
        """UIDs ascend in delivery order and messages() lists them in that
        order."""
        uids = [self.deliver(self.store, "alice", MESSAGE).uid
                for _ in range(5)]
        self.assertEqual(uids, sorted(set(uids)))
        self.assertEqual([m.uid for m in self.store.folder("alice").messages()],
                         uids)

    def test_uids_stable_across_instances(self) -> None:
        """A new store instance sees the same UID for each message and the
        same UIDVALIDITY."""
        infos = [self.deliver(self.store, "alice", b"m%d\n" % i)
                 for i in range(3)]
        folder = self.store.folder("alice")
        other = self.make_store().folder("alice")
        self.assertEqual(other.messages(), infos)
        self.assertEqual(other.uidvalidity, folder.uidvalidity)
        self.assertEqual(other.next_uid(), infos[-1].uid + 1)

    def test_uids_stable_across_flag_changes(self) -> None:
        """Changing flags (a file rename) keeps the UID, and a later scan
        still maps it to the same message."""
        infos = [self.deliver(self.store, "alice", b"m%d\n" % i)
                 for i in range(3)]
        folder = self.store.folder("alice")
        folder.set_flags(infos[1].uid, frozenset({"\\Seen"}))
        folder.set_flags(infos[1].uid, frozenset({"\\Seen", "\\Answered"}))
        listed = self.make_store().folder("alice").messages()
        self.assertEqual([m.uid for m in listed], [i.uid for i in infos])
        self.assertEqual(folder.read_message(infos[1].uid), b"m1\n")

    def test_uids_not_reused_after_expunge(self) -> None:
        """Expunging the newest message does not let its UID be handed out
        again."""
        folder = self.store.folder("alice")
        first = folder.add_message(b"1\n")
        last = folder.add_message(b"2\n")
        folder.expunge([last.uid])
        again = self.make_store().folder("alice").add_message(b"3\n")
        self.assertGreater(again.uid, last.uid)
        self.assertGreater(last.uid, first.uid)

    def test_next_uid(self) -> None:
        """next_uid is the UID the next added message gets."""
        folder = self.store.folder("alice")
        expected = folder.next_uid()
        self.assertEqual(folder.add_message(MESSAGE).uid, expected)
        self.assertEqual(folder.next_uid(), expected + 1)

    def test_uidvalidity_per_folder_stable(self) -> None:
        """UIDVALIDITY is a positive 32-bit number that stays put while the
        folder lives."""
        self.store.create_folder("alice", "Sent")
        for name in ("INBOX", "Sent"):
            value = self.store.folder("alice", name).uidvalidity
            self.assertTrue(0 < value < 2**32)
            self.deliver(self.store, "alice", MESSAGE, name)
            self.assertEqual(
                self.make_store().folder("alice", name).uidvalidity, value)

    def test_uidvalidity_changes_when_recreated(self) -> None:
        """A folder deleted and created again under the same name (even in
        the same second) gets a new UIDVALIDITY."""
        old = self.store.create_folder("alice", "Tmp").uidvalidity
        self.store.delete_folder("alice", "Tmp")
        new = self.store.create_folder("alice", "Tmp").uidvalidity
        self.assertNotEqual(old, new)

    # flags ---------------------------------------------------------------

    def test_flags_round_trip(self) -> None:
        """Every system flag and keywords survive set_flags and a new store
        instance."""
        info = self.deliver(self.store, "alice", MESSAGE)
        flags = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted",
                           "\\Draft", "$Forwarded", "Junk"})
        changed = self.store.folder("alice").set_flags(info.uid, flags)
        self.assertEqual(changed.flags, flags)
        self.assertEqual(changed.uid, info.uid)
        [listed] = self.make_store().folder("alice").messages()
        self.assertEqual(listed.flags, flags)
        cleared = self.store.folder("alice").set_flags(info.uid, frozenset())
        self.assertEqual(cleared.flags, frozenset())
        self.assertEqual(self.store.folder("alice").messages()[0].flags,
                         frozenset())

    def test_system_flags_case_insensitive(self) -> None:
        """System flags are matched without regard to case and come back in
        their canonical spelling."""
        info = self.deliver(self.store, "alice", MESSAGE)
        changed = self.store.folder("alice").set_flags(
            info.uid, frozenset({"\\SEEN", "\\flagged"}))
        self.assertEqual(changed.flags, frozenset({"\\Seen", "\\Flagged"}))

    def test_set_flags_clears_recent(self) -> None:
        """Setting flags, even none, moves a message out of recent."""
        info = self.deliver(self.store, "alice", MESSAGE)
        self.assertTrue(info.recent)
        changed = self.store.folder("alice").set_flags(info.uid, frozenset())
        self.assertFalse(changed.recent)
        self.assertFalse(self.store.folder("alice").messages()[0].recent)

    def test_invalid_flags_rejected(self) -> None:
        """Unknown or unsettable system flags and non-atom keywords raise
        InvalidFlag (a ValueError) and change nothing."""
        info = self.deliver(self.store, "alice", MESSAGE)
        folder = self.store.folder("alice")
        for bad in ({"\\Recent"}, {"\\Bogus"}, {"two words"}, {""},
                    {"a(b"}, {"caf\xe9"}, {"a]"}, "\\Seen"):
            with self.subTest(flags=bad):  # type: ignore[attr-defined]
                self.assertRaises(InvalidFlag, folder.set_flags, info.uid,
                                  bad)
                self.assertRaises(ValueError, folder.add_message, MESSAGE,
                                  bad)
        self.assertEqual(folder.messages(), [info])

    def test_set_flags_unknown_uid(self) -> None:
        """set_flags on a UID the folder never had raises NoSuchMessage."""
        self.assertRaises(NoSuchMessage,
                          self.store.folder("alice").set_flags, 99,
                          frozenset())

    # folders -------------------------------------------------------------

    def test_inbox_always_listed(self) -> None:
        """A user with no mail yet has exactly INBOX."""
        self.assertEqual(self.store.list_folders("alice"), ["INBOX"])

    def test_create_list_delete_folders(self) -> None:
        """Created folders are listed INBOX first then sorted; a deleted
        one disappears with its messages."""
        for name in ("Sent", "Work/2026", "Archive", "Entwürfe"):
            self.store.create_folder("alice", name)
        self.deliver(self.store, "alice", MESSAGE, "Sent")
        self.assertEqual(self.store.list_folders("alice"),
                         ["INBOX", "Archive", "Entwürfe", "Sent",
                          "Work/2026"])
        self.store.delete_folder("alice", "Sent")
        self.assertEqual(self.store.list_folders("alice"),
                         ["INBOX", "Archive", "Entwürfe", "Work/2026"])
        self.assertRaises(NoSuchMailbox, self.store.folder, "alice", "Sent")
        self.assertEqual(self.store.quota("alice")[0], 0)

    def test_create_returns_usable_folder(self) -> None:
        """create_folder returns the new, empty folder."""
        folder = self.store.create_folder("alice", "Sent")
        self.assertEqual(folder.name, "Sent")
        self.assertEqual(folder.messages(), [])
        folder.add_message(MESSAGE)
        self.assertEqual(len(self.store.folder("alice", "Sent").messages()),
                         1)

    def test_create_existing(self) -> None:
        """Creating an existing folder, or INBOX, raises MailboxExists."""
        self.store.create_folder("alice", "Sent")
        self.assertRaises(MailboxExists, self.store.create_folder, "alice",
                          "Sent")
        self.assertRaises(MailboxExists, self.store.create_folder, "alice",
                          "INBOX")
        self.assertRaises(MailboxExists, self.store.create_folder, "alice",
                          "inbox")

    def test_folder_missing(self) -> None:
        """folder() on a folder that does not exist raises NoSuchMailbox."""
        self.assertRaises(NoSuchMailbox, self.store.folder, "alice", "Nope")

    def test_inbox_any_case(self) -> None:
        """INBOX is found in any case and named INBOX."""
        self.deliver(self.store, "alice", MESSAGE)
        folder = self.store.folder("alice", "inBox")
        self.assertEqual(folder.name, "INBOX")
        self.assertEqual(len(folder.messages()), 1)

    def test_delete_missing(self) -> None:
        """Deleting a folder that does not exist raises NoSuchMailbox."""
        self.assertRaises(NoSuchMailbox, self.store.delete_folder, "alice",
                          "Nope")

    def test_delete_inbox(self) -> None:
        """INBOX cannot be deleted."""
        self.assertRaises(PermissionDenied, self.store.delete_folder,
                          "alice", "INBOX")

    def test_delete_keeps_subfolders(self) -> None:
        """Deleting a parent leaves its sub-folders (IMAP: inferiors
        stay)."""
        self.store.create_folder("alice", "Work")
        self.store.create_folder("alice", "Work/2026")
        self.store.delete_folder("alice", "Work")
        self.assertEqual(self.store.list_folders("alice"),
                         ["INBOX", "Work/2026"])

    def test_rename_keeps_messages_and_uids(self) -> None:
        """A renamed folder keeps its messages, UIDs and UIDVALIDITY; the
        old name is gone."""
        folder = self.store.create_folder("alice", "Old")
        info = folder.add_message(MESSAGE)
        uidvalidity = folder.uidvalidity
        self.store.rename_folder("alice", "Old", "New/Name")
        self.assertEqual(self.store.list_folders("alice"),
                         ["INBOX", "New/Name"])
        renamed = self.store.folder("alice", "New/Name")
        self.assertEqual(renamed.messages(), [info])
        self.assertEqual(renamed.uidvalidity, uidvalidity)
        self.assertRaises(NoSuchMailbox, self.store.folder, "alice", "Old")

    def test_rename_moves_subfolders(self) -> None:
        """Renaming a folder renames its sub-folders with it."""
        for name in ("Work", "Work/2025", "Work/2025/Q4", "Workshop"):
            self.store.create_folder("alice", name)
        self.store.rename_folder("alice", "Work", "Jobs")
        self.assertEqual(self.store.list_folders("alice"),
                         ["INBOX", "Jobs", "Jobs/2025", "Jobs/2025/Q4",
                          "Workshop"])

    def test_rename_errors(self) -> None:
        """rename_folder refuses a missing source, an existing target
        (including a sub-folder's), INBOX, and moving a folder into
        itself, changing nothing."""
        for name in ("A", "A/x", "B", "C/x"):
            self.store.create_folder("alice", name)
        before = self.store.list_folders("alice")
        cases = [
            ("Nope", "Z", NoSuchMailbox),
            ("A", "B", MailboxExists),
            ("A", "A", MailboxExists),
            ("A", "C", MailboxExists),  # A/x would land on C/x
            ("A", "INBOX", MailboxExists),
            ("INBOX", "Z", PermissionDenied),
            ("A", "A/y", InvalidFolderName),
        ]
        for old, new, error in cases:
            with self.subTest(old=old, new=new):  # type: ignore[attr-defined]
                self.assertRaises(error, self.store.rename_folder, "alice",
                                  old, new)
        self.assertEqual(self.store.list_folders("alice"), before)

    def test_bad_folder_names(self) -> None:
        """Every malformed folder name is refused by every folder operation
        with InvalidFolderName (a ValueError and a StoreError)."""
        self.store.create_folder("alice", "Good")
        for label, name in BAD_FOLDER_NAMES:
            with self.subTest(label):  # type: ignore[attr-defined]
                for call in (
                    lambda: self.store.folder("alice", name),
                    lambda: self.store.create_folder("alice", name),
                    lambda: self.store.delete_folder("alice", name),
                    lambda: self.store.rename_folder("alice", "Good", name),
                    lambda: self.store.rename_folder("alice", name, "Other"),
                ):
                    error = self.assertRaises(InvalidFolderName, call)
                    self.assertIsInstance(error, ValueError)
                    self.assertIsInstance(error, StoreError)
                f = self.failureResultOf(  # type: ignore[attr-defined]
                    self.store.deliver("alice", MESSAGE, name))
                f.trap(InvalidFolderName)
        self.assertEqual(self.store.list_folders("alice"), ["INBOX", "Good"])

    def test_unicode_folder_names(self) -> None:
        """Non-ASCII, ampersand and punctuation folder names round-trip
        through create and list."""
        wanted = ["Entwürfe", "台北/日本語", "R&D", "~peter", "a-b_c d!"]
        for name in wanted:
            self.store.create_folder("alice", name)
        self.assertEqual(self.make_store().list_folders("alice"),
                         ["INBOX"] + sorted(wanted))
        for name in wanted:
            self.assertEqual(self.store.folder("alice", name).name, name)

    # users ---------------------------------------------------------------

    def test_bad_user_names(self) -> None:
        """Malformed user names raise InvalidUserName (a NoSuchUser and a
        ValueError), and deliver fails with it."""
        for label, user in BAD_USER_NAMES:
            with self.subTest(label):  # type: ignore[attr-defined]
                for call in (lambda: self.store.folder(user),
                             lambda: self.store.list_folders(user),
                             lambda: self.store.create_folder(user, "X"),
                             lambda: self.store.lock_maildrop(user),
                             lambda: self.store.quota(user)):
                    error = self.assertRaises(InvalidUserName, call)
                    self.assertIsInstance(error, NoSuchUser)
                    self.assertIsInstance(error, ValueError)
                self.failureResultOf(  # type: ignore[attr-defined]
                    self.store.deliver(user, MESSAGE), NoSuchUser)

    def test_good_user_names(self) -> None:
        """Lowercase letters, digits, dot, underscore and dash are
        accepted, up to 64 characters."""
        for user in ("a", "bob.smith", "x_y-z", "0day", "a" * 64, "a..b"):
            with self.subTest(user):  # type: ignore[attr-defined]
                self.deliver(self.store, user, MESSAGE)
                self.assertEqual(len(self.store.folder(user).messages()), 1)

    def test_unknown_user(self) -> None:
        """With user_exists, deliver to an unknown user fails NoSuchUser
        and stores nothing; known users get their mail."""
        store = self.make_store(user_exists=lambda user: user == "alice")
        self.failureResultOf(  # type: ignore[attr-defined]
            store.deliver("mallory", MESSAGE), NoSuchUser)
        self.deliver(store, "alice", MESSAGE)
        self.assertEqual(store.quota("mallory")[0], 0)

    def test_users_separate(self) -> None:
        """One user's mail is not another's."""
        self.deliver(self.store, "alice", MESSAGE)
        self.assertEqual(self.store.folder("bob").messages(), [])

    # quota ---------------------------------------------------------------

    def test_quota_unlimited(self) -> None:
        """Without quota_for the limit is None and usage still counts."""
        self.deliver(self.store, "alice", b"12345\n")
        self.assertEqual(self.store.quota("alice"), (6, None))

    def test_quota_counts_all_folders(self) -> None:
        """Usage is the sum of stored sizes over every folder."""
        store = self.make_store(quota_for=lambda user: 1000)
        store.create_folder("alice", "Sent")
        self.deliver(store, "alice", b"a" * 10 + b"\r\n")
        self.deliver(store, "alice", b"b" * 20 + b"\n", "Sent")
        self.assertEqual(store.quota("alice"), (11 + 21, 1000))

    def test_quota_exceeded(self) -> None:
        """A delivery that would go over quota fails QuotaExceeded and
        stores nothing; one that fits exactly succeeds."""
        store = self.make_store(quota_for=lambda user: 100)
        self.deliver(store, "alice", b"x" * 59 + b"\n")
        self.failureResultOf(  # type: ignore[attr-defined]
            store.deliver("alice", b"y" * 41), QuotaExceeded)
        self.assertRaises(QuotaExceeded,
                          store.folder("alice").add_message, b"y" * 41)
        self.assertEqual(store.quota("alice"), (60, 100))
        self.assertEqual(len(store.folder("alice").messages()), 1)
        self.deliver(store, "alice", b"z" * 40)
        self.assertEqual(store.quota("alice"), (100, 100))

    def test_quota_freed_by_expunge(self) -> None:
        """Expunged messages stop counting against the quota."""
        store = self.make_store(quota_for=lambda user: 100)
        info = self.deliver(store, "alice", b"x" * 80)
        self.failureResultOf(  # type: ignore[attr-defined]
            store.deliver("alice", b"y" * 80), QuotaExceeded)
        store.folder("alice").expunge([info.uid])
        self.deliver(store, "alice", b"y" * 80)

    # maildrop lock -------------------------------------------------------

    def test_lock_exclusive(self) -> None:
        """A second maildrop lock on the same user raises MailboxLocked,
        from the same or another store instance."""
        lock = self.store.lock_maildrop("alice")
        self.addCleanup(lock.release)
        self.assertRaises(MailboxLocked, self.store.lock_maildrop, "alice")
        self.assertRaises(MailboxLocked, self.make_store().lock_maildrop,
                          "alice")

    def test_lock_release_relock(self) -> None:
        """After release the maildrop can be locked again; release is
        idempotent."""
        lock = self.store.lock_maildrop("alice")
        lock.release()
        lock.release()
        again = self.store.lock_maildrop("alice")
        self.addCleanup(again.release)
        lock.release()  # a stale handle must not free the new holder
        self.assertRaises(MailboxLocked, self.store.lock_maildrop, "alice")

    def test_lock_per_user(self) -> None:
        """Locks of different users are independent."""
        a = self.store.lock_maildrop("alice")
        self.addCleanup(a.release)
        b = self.store.lock_maildrop("bob")
        self.addCleanup(b.release)

    def test_lock_folder_is_inbox(self) -> None:
        """The lock's folder is the user's INBOX, readable under the
        lock."""
        info = self.deliver(self.store, "alice", MESSAGE)
        lock = self.store.lock_maildrop("alice")
        self.addCleanup(lock.release)
        self.assertEqual(lock.folder.name, "INBOX")
        self.assertEqual(lock.folder.messages(), [info])

    def test_deliver_while_locked(self) -> None:
        """Delivery is not blocked by a POP3 maildrop lock."""
        lock = self.store.lock_maildrop("alice")
        self.addCleanup(lock.release)
        self.deliver(self.store, "alice", MESSAGE)
        self.assertEqual(len(lock.folder.messages()), 1)

    # expunge and races ---------------------------------------------------

    def test_expunge(self) -> None:
        """expunge removes the messages and returns the UIDs removed;
        unknown UIDs are left out."""
        folder = self.store.folder("alice")
        infos = [folder.add_message(b"m%d\n" % i) for i in range(4)]
        removed = folder.expunge([infos[2].uid, infos[0].uid, 999])
        self.assertEqual(removed, [infos[0].uid, infos[2].uid])
        self.assertEqual([m.uid for m in folder.messages()],
                         [infos[1].uid, infos[3].uid])
        self.assertEqual(folder.expunge([infos[0].uid]), [])
        self.assertRaises(NoSuchMessage, folder.read_message, infos[0].uid)

    def test_expunged_elsewhere(self) -> None:
        """When another session expunges a message this session listed,
        open/read/set_flags raise NoSuchMessage and expunge skips it."""
        mine = self.store.folder("alice")
        info = mine.add_message(MESSAGE)
        keep = mine.add_message(b"other\n")
        self.assertEqual(len(mine.messages()), 2)
        theirs = self.make_store().folder("alice")
        self.assertEqual(theirs.expunge([info.uid]), [info.uid])
        self.assertRaises(NoSuchMessage, mine.open_message, info.uid)
        self.assertRaises(NoSuchMessage, mine.read_message, info.uid)
        self.assertRaises(NoSuchMessage, mine.set_flags, info.uid,
                          frozenset({"\\Seen"}))
        self.assertEqual(mine.expunge([info.uid]), [])
        self.assertEqual(mine.messages(), [keep])

    def test_flags_changed_elsewhere(self) -> None:
        """A message whose flags another session changed (its file renamed)
        is still read and re-flagged by UID."""
        mine = self.store.folder("alice")
        info = mine.add_message(MESSAGE)
        mine.messages()
        self.make_store().folder("alice").set_flags(
            info.uid, frozenset({"\\Seen"}))
        self.assertEqual(mine.read_message(info.uid),
                         MESSAGE.replace(b"\r\n", b"\n"))
        changed = mine.set_flags(info.uid,
                                 frozenset({"\\Seen", "\\Flagged"}))
        self.assertEqual(changed.flags, frozenset({"\\Seen", "\\Flagged"}))

    def test_folder_deleted_underneath(self) -> None:
        """A folder object whose folder was deleted raises NoSuchMailbox,
        not a crash."""
        folder = self.store.create_folder("alice", "Gone")
        folder.add_message(MESSAGE)
        self.make_store().delete_folder("alice", "Gone")
        self.assertRaises(NoSuchMailbox, folder.messages)
        self.assertRaises(NoSuchMailbox, folder.add_message, MESSAGE)

    # concurrency ---------------------------------------------------------

    def test_concurrent_adds(self) -> None:
        """200 messages added from 8 threads at once, while 2 more threads
        rescan, get 200 distinct UIDs that a fresh instance agrees with."""
        folder = self.store.folder("alice")
        uidvalidity = folder.uidvalidity
        done = threading.Event()

        def scan() -> int:
            scans = 0
            while not done.is_set():
                self.make_store().folder("alice").messages()
                scans += 1
            return scans

        with ThreadPoolExecutor(10) as pool:
            scanners = [pool.submit(scan) for _ in range(2)]
            adds = [pool.submit(folder.add_message, b"message %d\n" % i)
                    for i in range(200)]
            infos = [f.result() for f in adds]
            done.set()
            for scanner in scanners:
                scanner.result()
        self.assertEqual(len({info.uid for info in infos}), 200)
        fresh = self.make_store().folder("alice")
        self.assertEqual(sorted((i.uid, i.key) for i in infos),
                         [(m.uid, m.key) for m in fresh.messages()])
        self.assertEqual(fresh.uidvalidity, uidvalidity)

    # properties ----------------------------------------------------------

    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(message=st.binary(max_size=2000) | st.lists(
        st.sampled_from([b"\r\n", b"\n", b"\r", b"x", b".", b"\r\r\n"]),
        max_size=40).map(b"".join))
    def test_any_message_round_trips(self, message: bytes) -> None:
        """
        For any bytes M: reading back gives exactly
        M.replace(b"\\r\\n", b"\\n"); size is its length and rfc822_size the
        length of that with every bare LF written as CRLF.
        """
        folder = self.store.folder("alice")
        info = folder.add_message(message)
        stored = message.replace(b"\r\n", b"\n")
        self.assertEqual(folder.read_message(info.uid), stored)
        self.assertEqual(info.size, len(stored))
        self.assertEqual(info.rfc822_size, len(to_crlf(stored)))
        [listed] = [m for m in folder.messages() if m.uid == info.uid]
        self.assertEqual(listed, info)


class MaildirStoreTests(MailboxStoreTestsMixin, SynchronousTestCase):
    """The store contract, run against L{MaildirStore}."""

    def make_store(self, quota_for: Any = None,
                   user_exists: Any = None) -> MaildirStore:
        if not hasattr(self, "root"):
            self.root = self.mktemp()
        return MaildirStore(self.root, quota_for=quota_for,
                            run_blocking=inline, hostname="test.host",
                            user_exists=user_exists)

    def test_runners(self) -> None:
        """
        By default reads run on the shared pool and deliveries on the one
        shared writer thread; a store given C{run_blocking} alone runs
        both with it, and C{run_writes} overrides the second.
        """
        from appnet.workers import shared_workers, shared_writer

        store = MaildirStore(self.mktemp())
        self.assertIs(store._run_blocking, shared_workers())
        self.assertIs(store._run_writes, shared_writer())
        store = MaildirStore(self.mktemp(), run_blocking=inline)
        self.assertIs(store._run_writes, inline)
        writes: list[Any] = []

        def record(f: Any, *args: Any) -> Any:
            writes.append(f.__name__)
            return inline(f, *args)

        store = MaildirStore(self.mktemp(), run_blocking=inline, run_writes=record)
        self.successResultOf(store.deliver("alice", b"Subject: x\r\n\r\nbody\r\n"))
        self.assertEqual(writes, ["_write_batch"])
        self.assertEqual(len(store.folder("alice").messages()), 1)


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    """Start a Python child running C{code} with appnet importable."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


_HOLD_FLOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""

_TRY_FLOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("got it")
except BlockingIOError:
    print("busy")
"""

_ADD_MESSAGES = """
import sys
from appnet.mailbox import MaildirStore
folder = MaildirStore(sys.argv[1], hostname="child").folder("alice")
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[2])):
    info = folder.add_message(b"child message %d\\n" % i)
    print(info.uid, info.key, flush=True)
"""


class MaildirLayoutTests(SynchronousTestCase):
    """What L{MaildirStore} writes on disk and how it reads other tools'
    files."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.store = self.make_store()
        self.store.folder("alice")

    def make_store(self, **kwargs: Any) -> MaildirStore:
        kwargs.setdefault("hostname", "test.host")
        return MaildirStore(self.root, run_blocking=inline, **kwargs)

    def deliver(self, message: bytes, folder: str = "INBOX",
                flags: Any = frozenset(), user: str = "alice"
                ) -> MessageInfo:
        return self.successResultOf(
            self.store.deliver(user, message, folder, flags))

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, "alice", *parts)

    def put(self, sub: str, name: str, data: bytes,
            folder: str = "") -> str:
        """Write a message file as another tool would."""
        path = self.path(folder, sub, name) if folder else self.path(sub, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    # layout --------------------------------------------------------------

    def test_user_maildir_created(self) -> None:
        """A user's maildir (cur, new, tmp) appears on first use."""
        self.store.folder("alice")
        for sub in ("cur", "new", "tmp"):
            self.assertTrue(os.path.isdir(self.path(sub)))

    def test_deliver_durable_layout(self) -> None:
        """After deliver fires, the message is one file in new/ with the
        stored bytes, and tmp/ is empty."""
        info = self.deliver(MESSAGE)
        self.assertEqual(os.listdir(self.path("new")), [info.key])
        self.assertEqual(os.listdir(self.path("tmp")), [])
        with open(self.path("new", info.key), "rb") as f:
            self.assertEqual(f.read(), MESSAGE.replace(b"\r\n", b"\n"))

    def test_deliver_fsync_order(self) -> None:
        """deliver fsyncs the file in tmp/, renames it into new/, fsyncs
        new/, and only then fires."""
        events: list[tuple[str, str]] = []

        def fsync(fd: int) -> None:
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            os.fsync(fd)

        def rename(src: str, dst: str) -> None:
            events.append(("rename", dst))
            os.rename(src, dst)

        def fsync_directory(path: str) -> None:
            events.append(("fsync-dir", path))
            uidlist.fsync_directory(path)

        self.patch(maildir, "_fsync", fsync)
        self.patch(maildir, "_rename", rename)
        self.patch(maildir, "_fsync_directory", fsync_directory)
        d = self.store.deliver("alice", MESSAGE)
        d.addCallback(lambda info: events.append(("fired", info.key)))
        self.successResultOf(d)
        key = events[-1][1]
        self.assertEqual(events, [
            ("fsync", self.path("tmp", key)),
            ("rename", self.path("new", key)),
            ("fsync-dir", self.path("new")),
            ("fired", key),
        ])

    def test_file_name_format(self) -> None:
        """New files are named <secs>.M<usecs>P<pid>Q<n>.<host>,S=,W= with
        the host's / : , escaped."""
        store = self.make_store(hostname="a/b:c,d")
        info = self.successResultOf(store.deliver("alice", b"ab\r\ncd\n"))
        self.assertRegex(
            info.key,
            r"^\d+\.M\d+P%dQ\d+\.a\\057b\\072c\\054d,S=6,W=8$" % os.getpid())
        self.assertEqual((info.size, info.rfc822_size), (6, 8))

    def test_flags_in_info_suffix(self) -> None:
        """set_flags renames new/<key> to cur/<key>:2,<sorted letters>."""
        info = self.deliver(MESSAGE)
        self.store.folder("alice").set_flags(info.uid, frozenset(
            {"\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted"}))
        self.assertEqual(os.listdir(self.path("new")), [])
        self.assertEqual(os.listdir(self.path("cur")),
                         [info.key + ":2,DFRST"])

    def test_deliver_with_flags_to_cur(self) -> None:
        """A message delivered with flags goes straight to cur/ with its
        info suffix."""
        info = self.deliver(MESSAGE, flags=frozenset({"\\Seen"}))
        self.assertEqual(os.listdir(self.path("cur")), [info.key + ":2,S"])
        self.assertEqual(os.listdir(self.path("new")), [])

    def test_quota_exceeded_leaves_nothing(self) -> None:
        """A delivery refused for quota leaves nothing in tmp/ or new/."""
        self.store = self.make_store(quota_for=lambda user: 10)
        self.failureResultOf(self.store.deliver("alice", b"x" * 11),
                             QuotaExceeded)
        for sub in ("tmp", "new", "cur"):
            self.assertEqual(os.listdir(self.path(sub)), [])

    def test_failed_write_leaves_nothing(self) -> None:
        """If the fsync fails, the error reaches the caller and tmp/ is
        left empty."""
        def failing_fsync(fd: int) -> None:
            raise OSError(5, "I/O error")

        self.patch(maildir, "_fsync", failing_fsync)
        self.failureResultOf(self.store.deliver("alice", MESSAGE), OSError)
        self.assertEqual(os.listdir(self.path("tmp")), [])
        self.assertEqual(os.listdir(self.path("new")), [])

    def test_folder_directory_names(self) -> None:
        """Folders are Maildir++ dot-directories in modified UTF-7, each
        with a maildirfolder marker."""
        table = [
            ("Sent", ".Sent"),
            ("Work/2026", ".Work.2026"),
            ("Entwürfe", ".Entw&APw-rfe"),
            ("R&D", ".R&-D"),
            ("台北/日本語", ".&U,BTFw-.&ZeVnLIqe-"),
            ("inbox/x", ".INBOX.x"),
        ]
        for name, dir_name in table:
            with self.subTest(name):
                self.store.create_folder("alice", name)
                self.assertTrue(os.path.isdir(self.path(dir_name, "cur")))
                self.assertTrue(os.path.isfile(
                    self.path(dir_name, "maildirfolder")))

    def test_foreign_directories_ignored(self) -> None:
        """Dot-directories that are not canonical folder names, and dot
        files, are not listed."""
        for name in ("..x", ".a..b", ".&Jjo", ".&AGE-", ".bad&", ".x."):
            os.makedirs(self.path(name, "cur"))
        self.put("", ".notadir", b"")
        os.makedirs(self.path(".Real", "cur"))
        self.assertEqual(self.store.list_folders("alice"), ["INBOX", "Real"])

    def test_folder_missing_subdirs_created(self) -> None:
        """A folder directory without cur/new/tmp (made by another tool) is
        completed on use, as Dovecot does."""
        os.makedirs(self.path(".Bare"))
        self.assertEqual(self.store.folder("alice", "Bare").messages(), [])
        self.assertTrue(os.path.isdir(self.path(".Bare", "tmp")))

    # other tools' files --------------------------------------------------

    def test_external_file_gets_fresh_uid(self) -> None:
        """A file another MDA drops into new/ gets the next UID on the next
        scan, with sizes measured from the file."""
        first = self.deliver(MESSAGE)
        self.put("new", "1700000000.12345_1.mutt", b"a\nb\r\nc\n")
        listed = self.store.folder("alice").messages()
        self.assertEqual(len(listed), 2)
        external = listed[1]
        self.assertEqual(external.uid, first.uid + 1)
        self.assertEqual(external.key, "1700000000.12345_1.mutt")
        self.assertEqual((external.size, external.rfc822_size), (7, 9))
        self.assertTrue(external.recent)
        self.assertEqual(self.store.folder("alice").read_message(external.uid),
                         b"a\nb\r\nc\n")
        after = self.store.folder("alice").add_message(MESSAGE)
        self.assertEqual(after.uid, external.uid + 1)

    def test_sizes_taken_from_name(self) -> None:
        """S= and W= in a name are trusted: the scan does not read the
        file."""
        self.put("cur", "1700000000.M1P2.h,S=5,W=6:2,S", b"not five")
        [info] = self.store.folder("alice").messages()
        self.assertEqual((info.size, info.rfc822_size), (5, 6))
        self.assertEqual(info.flags, frozenset({"\\Seen"}))

    def test_size_without_w(self) -> None:
        """With S= but no W=, the CRLF size is measured, S= still used."""
        self.put("new", "1700000000.M1P2.h,S=4", b"a\nb\n")
        [info] = self.store.folder("alice").messages()
        self.assertEqual((info.size, info.rfc822_size), (4, 6))

    def test_large_external_file_crlf_across_chunks(self) -> None:
        """Measuring a big foreign file counts a CRLF split across read
        chunks once."""
        data = b"x" * ((1 << 20) - 1) + b"\r\n" + b"y\n"
        self.put("new", "1700000000.big", data)
        [info] = self.store.folder("alice").messages()
        self.assertEqual(info.rfc822_size, len(data) + 1)

    def test_flags_in_new(self) -> None:
        """A file in new/ with an info suffix (Dovecot leaves them there)
        has its flags and is recent."""
        self.put("new", "1700000000.M1P2.h,S=2,W=3:2,FS", b"x\n")
        [info] = self.store.folder("alice").messages()
        self.assertEqual(info.flags, frozenset({"\\Seen", "\\Flagged"}))
        self.assertTrue(info.recent)

    def test_same_key_in_new_and_cur(self) -> None:
        """If one key sits in both new/ and cur/ (caught mid-move), it is
        one message, as in cur/."""
        self.put("new", "1700000000.M1P2.h,S=2,W=3", b"x\n")
        self.put("cur", "1700000000.M1P2.h,S=2,W=3:2,S", b"x\n")
        [info] = self.store.folder("alice").messages()
        self.assertEqual(info.flags, frozenset({"\\Seen"}))

    def test_dot_files_and_odd_names_skipped(self) -> None:
        """Dot files, sub-directories and names with line breaks are not
        messages."""
        self.put("new", ".hidden", b"x")
        self.put("new", "17.bad\nname", b"x")
        os.mkdir(self.path("cur", "17.dir"))
        self.assertEqual(self.store.folder("alice").messages(), [])

    def test_passed_and_unknown_letters_kept(self) -> None:
        """P and letters with no IMAP meaning here (no dovecot-keywords
        entry) survive a flag change; only the letters we own change."""
        self.put("cur", "1700000000.M1P2.h,S=2,W=3:2,PSXz", b"x\n")
        folder = self.store.folder("alice")
        [info] = folder.messages()
        self.assertEqual(info.flags, frozenset({"\\Seen"}))
        folder.set_flags(info.uid, frozenset({"\\Flagged"}))
        self.assertEqual(os.listdir(self.path("cur")),
                         ["1700000000.M1P2.h,S=2,W=3:2,FPXz"])

    def test_keywords_written_dovecot_style(self) -> None:
        """New keywords are added to dovecot-keywords (index 0 = a) and
        stored as their letters."""
        info = self.deliver(MESSAGE)
        self.store.folder("alice").set_flags(
            info.uid, frozenset({"\\Seen", "$Label1", "Junk"}))
        with open(self.path("dovecot-keywords")) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines, ["0 $Label1", "1 Junk"])
        self.assertEqual(os.listdir(self.path("cur")),
                         [info.key + ":2,Sab"])
        self.assertFalse(os.path.exists(self.path("dovecot-keywords.lock")))

    def test_keywords_read_from_dovecot_file(self) -> None:
        """Keyword letters are named by an existing dovecot-keywords, and a
        new keyword takes the first free index."""
        self.put("", "dovecot-keywords", b"0 $Forwarded\n2 Junk\n")
        self.put("cur", "1700000000.M1P2.h,S=2,W=3:2,Sac", b"x\n")
        folder = self.store.folder("alice")
        [info] = folder.messages()
        self.assertEqual(info.flags,
                         frozenset({"\\Seen", "$Forwarded", "Junk"}))
        folder.set_flags(info.uid, info.flags | {"NonJunk"})
        with open(self.path("dovecot-keywords")) as f:
            self.assertEqual(f.read(), "0 $Forwarded\n1 NonJunk\n2 Junk\n")
        self.assertEqual(os.listdir(self.path("cur")),
                         ["1700000000.M1P2.h,S=2,W=3:2,Sabc"])

    def test_too_many_keywords(self) -> None:
        """26 keywords fit in a folder; the 27th raises TooManyKeywords."""
        info = self.deliver(MESSAGE)
        folder = self.store.folder("alice")
        many = frozenset(f"kw{i}" for i in range(26))
        self.assertEqual(folder.set_flags(info.uid, many).flags, many)
        self.assertRaises(TooManyKeywords, folder.set_flags, info.uid,
                          frozenset({"kw26"}))
        self.assertFalse(os.path.exists(self.path("dovecot-keywords.lock")))

    def test_keywords_lock_held(self) -> None:
        """While Dovecot holds dovecot-keywords.lock, adding a keyword
        gives up with KeywordsLocked (a MailboxLocked) after the wait."""
        self.patch(filenames, "_KEYWORDS_LOCK_WAIT", 0.0)
        info = self.deliver(MESSAGE)
        self.put("", "dovecot-keywords.lock", b"")
        error = self.assertRaises(KeywordsLocked,
                                  self.store.folder("alice").set_flags,
                                  info.uid, frozenset({"Junk"}))
        self.assertIsInstance(error, MailboxLocked)

    def test_keywords_stale_lock_broken(self) -> None:
        """A dovecot-keywords.lock older than Dovecot's stale timeout is
        broken and the keyword added."""
        info = self.deliver(MESSAGE)
        lock = self.put("", "dovecot-keywords.lock", b"")
        os.utime(lock, (1_000_000_000, 1_000_000_000))
        changed = self.store.folder("alice").set_flags(
            info.uid, frozenset({"Junk"}))
        self.assertEqual(changed.flags, frozenset({"Junk"}))

    def test_vanished_file(self) -> None:
        """A file removed behind the store's back disappears from the
        listing, reads raise NoSuchMessage, and its UID is not reused."""
        folder = self.store.folder("alice")
        info = folder.add_message(MESSAGE)
        folder.messages()
        os.unlink(self.path("new", info.key))
        self.assertEqual(folder.messages(), [])
        self.assertRaises(NoSuchMessage, folder.read_message, info.uid)
        self.assertGreater(folder.add_message(MESSAGE).uid, info.uid)

    # UID list ------------------------------------------------------------

    def test_uidlist_format(self) -> None:
        """appnet-uidlist holds the documented header and one "uid key"
        line per message."""
        folder = self.store.folder("alice")
        infos = [folder.add_message(b"%d\n" % i) for i in range(2)]
        with open(self.path("appnet-uidlist")) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "appnet-uidlist 1")
        self.assertEqual(lines[1], f"uidvalidity {folder.uidvalidity}")
        self.assertEqual(lines[2], f"next-uid {infos[-1].uid + 1}")
        self.assertRegex(lines[3], r"^generation \d+$")
        self.assertEqual(lines[4:], [f"{i.uid} {i.key}" for i in infos])

    def test_uidlist_round_trip(self) -> None:
        """format_uidlist and parse_uidlist are inverses."""
        original = uidlist.UIDList(42, 10, 3, {"a b": 1, "c": 7})
        parsed = uidlist.parse_uidlist(uidlist.format_uidlist(original))
        self.assertEqual(parsed, original)

    def test_uidlist_corrupt(self) -> None:
        """Corrupt lists (torn, bad header, UIDs out of order) do not
        parse."""
        for data in (b"", b"appnet-uidlist 1\nuidvalidity 5\n",
                     b"garbage\n",
                     b"appnet-uidlist 1\nuidvalidity 5\nnext-uid 9\n"
                     b"generation 1\n2 a\n1 b\n",
                     b"appnet-uidlist 1\nuidvalidity 5\nnext-uid 9\n"
                     b"generation 1\n9 a\n",
                     b"appnet-uidlist 1\nuidvalidity 5\nnext-uid 9\n"
                     b"generation 1\n1 a"):
            with self.subTest(data=data):
                self.assertRaises(uidlist.CorruptUIDList,
                                  uidlist.parse_uidlist, data)

    def test_corrupt_uidlist_replaced(self) -> None:
        """A corrupt UID list is replaced with a new, greater UIDVALIDITY
        and every message numbered again."""
        folder = self.store.folder("alice")
        folder.add_message(MESSAGE)
        old = folder.uidvalidity
        self.put("", "appnet-uidlist", b"garbage")
        fresh = self.make_store().folder("alice")
        [info] = fresh.messages()
        self.assertGreater(fresh.uidvalidity, old)
        self.assertEqual(info.uid, 1)

    def test_uidvalidity_file(self) -> None:
        """appnet-uidvalidity records the last UIDVALIDITY handed out, and
        each new folder gets a greater one."""
        values = [self.store.create_folder("alice", f"F{i}").uidvalidity
                  for i in range(3)]
        self.assertEqual(values, sorted(set(values)))
        with open(self.path("appnet-uidvalidity")) as f:
            self.assertEqual(int(f.read()), values[-1])

    def test_concurrent_processes(self) -> None:
        """Two other processes and this one adding to the same folder at
        once never hand out a UID twice, and the list stays intact."""
        children = [_child(_ADD_MESSAGES, self.root, "40") for _ in range(2)]
        for child in children:
            self.addCleanup(child.wait)
            self.assertEqual(child.stdout.readline(), "ready\n")
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        folder = self.store.folder("alice")
        with ThreadPoolExecutor(4) as pool:
            mine = list(pool.map(lambda i: folder.add_message(b"%d\n" % i),
                                 range(40)))
        seen = {(info.uid, info.key) for info in mine}
        for child in children:
            out, _ = child.communicate()
            for line in out.splitlines():
                uid, key = line.split(" ")
                seen.add((int(uid), key))
        self.assertEqual(len(seen), 120)
        self.assertEqual(len({uid for uid, _ in seen}), 120)
        with open(self.path("appnet-uidlist"), "rb") as f:
            on_disk = uidlist.parse_uidlist(f.read())
        self.assertEqual(on_disk.uidvalidity, folder.uidvalidity)
        self.assertEqual(sorted(seen), sorted(
            (uid, key) for key, uid in on_disk.uids.items()))
        listed = self.make_store().folder("alice").messages()
        self.assertEqual(sorted(seen), [(m.uid, m.key) for m in listed])

    # maildrop lock across processes --------------------------------------

    def lock_path(self) -> str:
        self.store.folder("alice")
        return self.path(maildir.MAILDROP_LOCK_FILE)

    def test_lock_held_by_other_process(self) -> None:
        """While another process holds the maildrop flock we raise
        MailboxLocked; once it exits we get the lock."""
        child = _child(_HOLD_FLOCK, self.lock_path())
        self.addCleanup(child.wait)
        self.assertEqual(child.stdout.readline(), "locked\n")
        self.assertRaises(MailboxLocked, self.store.lock_maildrop, "alice")
        child.stdin.close()
        child.wait()
        self.store.lock_maildrop("alice").release()

    def test_lock_freed_when_holder_dies(self) -> None:
        """A holder killed outright (SIGKILL) frees the lock: the kernel
        drops its flock."""
        child = _child(_HOLD_FLOCK, self.lock_path())
        self.addCleanup(child.stdin.close)
        self.assertEqual(child.stdout.readline(), "locked\n")
        child.send_signal(signal.SIGKILL)
        child.wait()
        self.store.lock_maildrop("alice").release()

    def test_lock_excludes_other_process(self) -> None:
        """While we hold the lock another process cannot flock it; after
        release it can."""
        path = self.lock_path()
        lock = self.store.lock_maildrop("alice")
        out, _ = _child(_TRY_FLOCK, path).communicate()
        self.assertEqual(out, "busy\n")
        lock.release()
        out, _ = _child(_TRY_FLOCK, path).communicate()
        self.assertEqual(out, "got it\n")

    def test_lock_context_manager(self) -> None:
        """The lock is a context manager that releases on exit, and
        reports whether it is held."""
        with self.store.lock_maildrop("alice") as lock:
            self.assertTrue(lock.held)
            self.assertRaises(MailboxLocked, self.store.lock_maildrop,
                              "alice")
        self.assertFalse(lock.held)
        self.store.lock_maildrop("alice").release()

    def test_lock_released_when_dropped(self) -> None:
        """A lock object nobody references any more releases the lock."""
        self.store.lock_maildrop("alice")
        self.store.lock_maildrop("alice").release()


class FolderNameTests(SynchronousTestCase):
    """Modified UTF-7 and the folder name <-> directory mapping."""

    VECTORS = [
        ("", ""),
        ("INBOX", "INBOX"),
        ("&", "&-"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("台北", "&U,BTFw-"),
        ("日本語", "&ZeVnLIqe-"),
        ("~peter", "~peter"),
        ("a&b€", "a&-b&IKw-"),
        ("😀", "&2D3eAA-"),
    ]

    def test_vectors(self) -> None:
        """Known modified UTF-7 spellings (RFC 3501's among them) encode
        and decode both ways."""
        for text, encoded in self.VECTORS:
            with self.subTest(text):
                self.assertEqual(names.encode_mutf7(text), encoded)
                self.assertEqual(names.decode_mutf7(encoded), text)

    def test_invalid_mutf7(self) -> None:
        """Malformed or non-canonical modified UTF-7 is refused."""
        for bad in ("&Jjo", "&U,BTFw", "&AGE-", "&U,BTFw-&ZeVnLIqe-",
                    "\xe9", "a\x00", "&ZeV-", "&U,BTFx-", "&2D0-",
                    "&*-"):
            with self.subTest(bad):
                self.assertRaises(ValueError, names.decode_mutf7, bad)

    @given(st.text())
    def test_mutf7_round_trip(self, text: str) -> None:
        """Any text without lone surrogates encodes to printable ASCII and
        decodes back to itself."""
        try:
            text.encode("utf-16-be")
        except UnicodeEncodeError:
            return
        encoded = names.encode_mutf7(text)
        self.assertTrue(all("\x20" <= c <= "\x7e" for c in encoded))
        self.assertEqual(names.decode_mutf7(encoded), text)

    @given(st.lists(
        st.text(st.characters(blacklist_categories=("Cs", "Cc"),
                              blacklist_characters="./*%\x7f"),
                min_size=1, max_size=12),
        min_size=1, max_size=4))
    def test_folder_name_round_trip(self, components: list[str]) -> None:
        """Every valid folder name maps to a dot-directory without "/" that
        maps back to the same name."""
        name = "/".join(components)
        if name.upper() == "INBOX":
            return
        canonical = names.normalize_folder_name(name)
        dir_name = names.folder_dir_name(canonical)
        self.assertTrue(dir_name.startswith("."))
        self.assertNotIn("/", dir_name)
        self.assertEqual(dir_name.count("."), len(components))
        self.assertEqual(names.folder_name_from_dir(dir_name), canonical)

    def test_inbox_has_no_directory(self) -> None:
        """INBOX is the maildir root: it has no dot-directory."""
        self.assertIsNone(names.folder_dir_name("INBOX"))
        self.assertEqual(names.normalize_folder_name("Inbox"), "INBOX")
        self.assertIsNone(names.folder_name_from_dir(".INBOX"))


class FileNameTests(SynchronousTestCase):
    """Parsing and writing Maildir file names and flags."""

    def test_split_name(self) -> None:
        """A name splits into key and letters; no or unknown info gives
        None letters."""
        table = [
            ("123.M1P2.h,S=5,W=6:2,FS", ("123.M1P2.h,S=5,W=6", "FS")),
            ("123.M1P2.h:2,", ("123.M1P2.h", "")),
            ("123.M1P2.h", ("123.M1P2.h", None)),
            ("123.M1P2.h:1,exp", ("123.M1P2.h", None)),
        ]
        for name, expected in table:
            with self.subTest(name):
                self.assertEqual(filenames.split_name(name), expected)

    def test_sizes_from_key(self) -> None:
        """S= and W= are read where present and well-formed."""
        table = [
            ("1.M1P2.h,S=5,W=6", (5, 6)),
            ("1.M1P2.h,W=6,S=5", (5, 6)),
            ("1.M1P2.h,S=5", (5, None)),
            ("1.M1P2.h", (None, None)),
            ("1.M1P2.h,S=x,W=", (None, None)),
            ("1.M1P2.h,S=5x", (None, None)),
        ]
        for key, expected in table:
            with self.subTest(key):
                self.assertEqual(filenames.sizes_from_key(key), expected)

    @given(st.binary())
    def test_crlf_size(self, data: bytes) -> None:
        """crlf_size is the length once every bare LF becomes CRLF."""
        self.assertEqual(filenames.crlf_size(data), len(to_crlf(data)))

    def test_unique_keys(self) -> None:
        """Keys made in the same instant still differ (the Q counter)."""
        keys = {filenames.new_key("h", 1, 1, now=1.5) for _ in range(100)}
        self.assertEqual(len(keys), 100)
