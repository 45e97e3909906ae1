"""
Interop: maildirs written by L{MaildirStore} read correctly in a real
Dovecot (doveadm, dovecot-lda, its POP3 server), and what Dovecot writes
reads correctly in our store.
"""

from __future__ import annotations

import os
import poplib
import socket
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from appnet.errors import NoSuchMessage
from appnet.mailbox import MaildirStore, MessageInfo
from tests.interop._dovecot import (
    DovecotError,
    DovecotServer,
    require_dovecot,
    start_dovecot,
)

FIELDS = "uid flags size.physical size.virtual date.received.unixtime text"


def inline(f: Any, *args: Any) -> defer.Deferred[Any]:
    """Run blocking store work at once."""
    return defer.maybeDeferred(f, *args)


def dovecot_flags(record: dict[str, str]) -> frozenset[str]:
    """The flags doveadm reports, less the session flag \\Recent."""
    return frozenset(record["flags"].split()) - {"\\Recent"}


class MaildirInteropTests(SynchronousTestCase):
    """Our maildirs and Dovecot's are the same thing."""

    def setUp(self) -> None:
        require_dovecot()
        self.mail_root = os.path.abspath(self.mktemp())
        os.makedirs(self.mail_root)
        self.store = MaildirStore(self.mail_root, run_blocking=inline,
                                  hostname="appnet.test")
        self.dovecot: DovecotServer = start_dovecot(
            self.mail_root, {"alice": "secret", "bob": "hunter2"})
        self.addCleanup(self.dovecot.stop)

    def deliver(self, message: bytes, folder: str = "INBOX",
                user: str = "alice") -> MessageInfo:
        return self.successResultOf(
            self.store.deliver(user, message, folder))

    def assertSameMessages(self, folder: str, user: str = "alice") -> None:
        """
        Our listing of C{folder} and doveadm's agree on every message:
        content, stored and CRLF sizes, flags and arrival date.
        """
        ours = self.store.folder(user, folder)
        listed = ours.messages()
        records = self.dovecot.fetch(user, FIELDS, folder)
        self.assertEqual(len(records), len(listed))
        by_text = {record["text"]: record for record in records}
        self.assertEqual(len(by_text), len(records), "test messages differ")
        for info in listed:
            stored = ours.read_message(info.uid)
            record = by_text[stored.decode().rstrip("\n")]
            self.assertEqual(int(record["size.physical"]), info.size)
            self.assertEqual(int(record["size.virtual"]), info.rfc822_size)
            self.assertEqual(dovecot_flags(record), info.flags)
            self.assertEqual(int(record["date.received.unixtime"]),
                             int(info.internal_date))

    # appnet -> Dovecot ---------------------------------------------------

    def test_appnet_maildir_read_by_dovecot(self) -> None:
        """Folders (nested, non-ASCII), messages (CRLF and LF input),
        flags, keywords and dates we write are what Dovecot reads."""
        self.deliver(b"Subject: one\r\n\r\nfirst\r\n")
        self.deliver(b"Subject: two\n\nsecond\nline\n")
        self.store.create_folder("alice", "Work/2026")
        self.store.create_folder("alice", "Entwürfe")
        work = self.store.folder("alice", "Work/2026")
        dated = work.add_message(b"Subject: old\r\n\r\nthree\r\n",
                                 internal_date=1_600_000_000)
        work.set_flags(dated.uid, frozenset(
            {"\\Seen", "\\Flagged", "Junk", "$Label1"}))
        self.deliver(b"Subject: draft\r\n\r\nfour\r\n", "Entwürfe")
        self.store.folder("alice", "Entwürfe").set_flags(
            1, frozenset({"\\Draft", "\\Answered", "\\Deleted"}))

        listed = self.dovecot.doveadm("mailbox", "list", "-u", "alice")
        self.assertEqual(sorted(listed.split()),
                         sorted(["INBOX", "Work", "Work/2026", "Entwürfe"]))
        for folder in ("INBOX", "Work/2026", "Entwürfe"):
            with self.subTest(folder):
                self.assertSameMessages(folder)
        [old] = self.dovecot.fetch("alice", FIELDS, "Work/2026")
        self.assertEqual(old["date.received.unixtime"], "1600000000")

    def test_rename_and_delete_seen_by_dovecot(self) -> None:
        """Renaming a folder with a sub-folder, and deleting one, is what
        Dovecot then lists."""
        for name in ("Projects", "Projects/A", "Old"):
            self.store.create_folder("alice", name)
        self.deliver(b"Subject: a\n\nin A\n", "Projects/A")
        self.store.rename_folder("alice", "Projects", "Done")
        self.store.delete_folder("alice", "Old")
        listed = self.dovecot.doveadm("mailbox", "list", "-u", "alice")
        self.assertEqual(sorted(listed.split()),
                         ["Done", "Done/A", "INBOX"])
        self.assertSameMessages("Done/A")

    def test_pop3_retrieves_appnet_delivery(self) -> None:
        """Dovecot's POP3 server serves what our deliver() stored: LIST
        gives our rfc822_size and RETR the message with CRLF."""
        message = b"Subject: pop\r\n\r\nline 1\r\n.dot line\r\nline 3\r\n"
        info = self.deliver(message)
        self.dovecot.share_maildirs()
        pop = poplib.POP3(self.dovecot.host, self.dovecot.pop3_port,
                          timeout=30)
        self.addCleanup(pop.close)
        pop.user("alice")
        pop.pass_("secret")
        self.assertEqual(pop.stat(), (1, info.rfc822_size))
        self.assertEqual(pop.list(1), b"+OK 1 %d" % info.rfc822_size)
        _, lines, octets = pop.retr(1)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", message)
        self.assertEqual(octets, info.rfc822_size)
        pop.quit()

    def test_pop3_dele_seen_by_appnet(self) -> None:
        """A message deleted over Dovecot's POP3 is gone from our store;
        a stale listing gets NoSuchMessage, not a crash."""
        first = self.deliver(b"Subject: 1\n\none\n")
        second = self.deliver(b"Subject: 2\n\ntwo\n")
        folder = self.store.folder("alice")
        self.assertEqual(len(folder.messages()), 2)
        self.dovecot.share_maildirs()
        pop = poplib.POP3(self.dovecot.host, self.dovecot.pop3_port,
                          timeout=30)
        self.addCleanup(pop.close)
        pop.user("alice")
        pop.pass_("secret")
        pop.dele(1)
        pop.quit()
        self.assertRaises(NoSuchMessage, folder.read_message, first.uid)
        self.assertEqual([m.key for m in folder.messages()], [second.key])

    # Dovecot -> appnet ---------------------------------------------------

    def test_dovecot_maildir_read_by_appnet(self) -> None:
        """Folders Dovecot creates and messages it saves (CRLF input) and
        flags it sets are what our store lists."""
        adm = self.dovecot.doveadm
        adm("mailbox", "create", "-u", "alice", "Archive/2025", "Entwürfe")
        adm("save", "-u", "alice", input=b"Subject: a\r\n\r\nalpha\r\n")
        adm("save", "-u", "alice", input=b"Subject: b\n\nbeta\n")
        adm("save", "-u", "alice", "-m", "Archive/2025",
            input=b"Subject: c\r\n\r\ngamma\r\nmore\r\n")
        adm("save", "-u", "alice", "-m", "Entwürfe",
            input=b"Subject: d\r\n\r\ndelta\r\n")
        adm("flags", "add", "-u", "alice", "\\Seen \\Answered $Forwarded",
            "mailbox", "INBOX", "uid", "1")
        adm("flags", "add", "-u", "alice", "\\Flagged \\Draft Junk",
            "mailbox", "Archive/2025", "all")

        self.assertEqual(self.store.list_folders("alice"),
                         ["INBOX", "Archive/2025", "Entwürfe"])
        for folder in ("INBOX", "Archive/2025", "Entwürfe"):
            with self.subTest(folder):
                self.assertSameMessages(folder)
        [archived] = self.store.folder("alice", "Archive/2025").messages()
        self.assertEqual(archived.flags,
                         frozenset({"\\Flagged", "\\Draft", "Junk"}))
        self.assertEqual(self.store.folder("alice", "Archive/2025")
                         .read_message(archived.uid),
                         b"Subject: c\n\ngamma\nmore\n")

    def test_lda_delivery_gets_next_uid(self) -> None:
        """Mail another MDA (dovecot-lda) drops into new/ gets the next UID
        in our store, with the right sizes, and is recent."""
        mine = self.deliver(b"Subject: ours\n\n1\n")
        self.dovecot.lda("alice", b"Subject: lda\r\n\r\nfrom the LDA\r\n")
        listed = self.store.folder("alice").messages()
        self.assertEqual([m.uid for m in listed], [mine.uid, mine.uid + 1])
        lda = listed[1]
        self.assertTrue(lda.recent)
        self.assertEqual(self.store.folder("alice").read_message(lda.uid),
                         b"Subject: lda\n\nfrom the LDA\n")
        self.assertSameMessages("INBOX")

    def test_flags_both_ways(self) -> None:
        """Flags and keywords set by one side are seen by the other, and
        both share dovecot-keywords without clobbering letters."""
        info = self.deliver(b"Subject: f\n\nflags\n")
        folder = self.store.folder("alice")
        folder.set_flags(info.uid, frozenset({"\\Seen", "Ours"}))
        self.dovecot.doveadm("flags", "add", "-u", "alice",
                             "\\Answered Theirs", "mailbox", "INBOX", "all")
        [seen] = folder.messages()
        self.assertEqual(seen.flags, frozenset(
            {"\\Seen", "\\Answered", "Ours", "Theirs"}))
        folder.set_flags(info.uid, frozenset({"Theirs", "Third"}))
        [record] = self.dovecot.fetch("alice", "flags")
        self.assertEqual(dovecot_flags(record),
                         frozenset({"Theirs", "Third"}))

    def test_expunge_both_ways(self) -> None:
        """What Dovecot expunges vanishes from our store and what we
        expunge vanishes from Dovecot."""
        ours = [self.deliver(b"Subject: %d\n\n%d\n" % (i, i))
                for i in range(3)]
        self.dovecot.doveadm("expunge", "-u", "alice", "mailbox", "INBOX",
                             "header", "Subject", "1")
        folder = self.store.folder("alice")
        self.assertEqual([m.uid for m in folder.messages()],
                         [ours[0].uid, ours[2].uid])
        self.assertEqual(folder.expunge([ours[2].uid]), [ours[2].uid])
        records = self.dovecot.fetch("alice", "text")
        self.assertEqual([r["text"] for r in records], ["Subject: 0\n\n0"])


class DovecotHelperTests(SynchronousTestCase):
    """The reusable L{start_dovecot} helper behaves as documented."""

    def setUp(self) -> None:
        require_dovecot()
        self.mail_root = os.path.abspath(self.mktemp())

    def test_start_login_stop(self) -> None:
        """The server accepts the configured users on its POP3 port,
        rejects a wrong password, and stop() closes the port (twice is
        fine)."""
        server = start_dovecot(self.mail_root, {"carol": "pw1"})
        self.addCleanup(server.stop)
        self.assertTrue(server.running)
        pop = poplib.POP3(server.host, server.pop3_port, timeout=30)
        pop.user("carol")
        self.assertEqual(pop.pass_("pw1")[:3], b"+OK")
        self.assertEqual(pop.stat(), (0, 0))
        pop.quit()
        bad = poplib.POP3(server.host, server.pop3_port, timeout=30)
        self.addCleanup(bad.close)
        bad.user("carol")
        self.assertRaises(poplib.error_proto, bad.pass_, "wrong")
        server.stop()
        server.stop()
        self.assertFalse(server.running)
        self.assertRaises(OSError, socket.create_connection,
                          (server.host, server.pop3_port), 5)
        self.assertFalse(os.path.exists(server.workdir))

    def test_imap_port_only_when_served(self) -> None:
        """imap=False serves POP3 only and reports imap_port None."""
        server = start_dovecot(self.mail_root, {"carol": "pw1"}, imap=False)
        self.addCleanup(server.stop)
        self.assertIsNone(server.imap_port)
        with open(server.config_path) as f:
            self.assertIn("protocols = pop3\n", f.read())
        pop = poplib.POP3(server.host, server.pop3_port, timeout=30)
        self.addCleanup(pop.close)
        self.assertEqual(pop.getwelcome()[:3], b"+OK")

    def test_doveadm_failure_reported(self) -> None:
        """A failing doveadm run raises DovecotError carrying its
        stderr."""
        server = start_dovecot(self.mail_root, {"carol": "pw1"})
        self.addCleanup(server.stop)
        error = self.assertRaises(DovecotError, server.doveadm, "mailbox",
                                  "list", "-u", "nobody-here")
        self.assertIn("nobody-here", str(error))
