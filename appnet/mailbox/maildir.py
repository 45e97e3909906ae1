"""
The Maildir++ mailbox store: one Maildir++ per user under one root.

Layout
======
::

    <root>/<user>/                 INBOX: cur/ new/ tmp/
    <root>/<user>/.Sent/           folder "Sent" (Maildir++ dot-folder)
    <root>/<user>/.Work.2026/      folder "Work/2026"
    <root>/<user>/.Entw&APw-rfe/   folder "Entwürfe" (IMAP modified UTF-7)

Dovecot (C{mail_location = maildir:<root>/%u}, namespace separator C{/}),
mutt and mbsync read this layout as it is, and we read what they write. The
folder name rules (and why a C{.} inside a folder name is refused) are in
L{appnet.mailbox.names}; the file name and flag formats, including
Dovecot's C{dovecot-keywords}, in L{appnet.mailbox.filenames}; the UID list
and locking in L{appnet.mailbox.uidlist}.

Files of our own in each maildir, all ignored by other Maildir readers (they
only look into C{cur/}, C{new/} and dot-directories):

    - C{appnet-uidlist}, C{appnet-uidlist.lock}: per folder, UIDs and their
      lock;
    - C{appnet-uidvalidity}: per user, the last UIDVALIDITY handed out;
    - C{appnet-maildrop.lock}: per user, the POP3 maildrop lock
      (C{fcntl.flock}, so it dies with its holder).
    - C{maildirfolder}: the empty marker the Maildir++ specification asks for
      in every sub-folder.

Our UIDs are our own: Dovecot keeps its UIDs in C{dovecot-uidlist}, which
we neither read nor write, so the two number messages independently.

Messages
========
Stored with LF line ends: C{add_message} stores
C{message.replace(b"\\r\\n", b"\\n")}. C{size} is the stored length and
C{rfc822_size} the length once every bare LF becomes CRLF. Files written by
other tools are served exactly as they are on disk.

Delivery writes C{tmp/<key>}, fsyncs it, renames it into C{new/} (or into
C{cur/} with its info suffix when delivered with flags), fsyncs that
directory and only then returns. The quota (sum of the stored sizes of all
the user's folders, computed from C{S=} in file names) is checked before
anything is written; two deliveries racing past the check together can
overshoot it by one message each, as with Dovecot's Maildir++ quota.

With the store's journal open (L{MaildirStore.open_journal}, what the SMTP
service does), L{MaildirStore.deliver} instead makes a batch durable with
one record append and C{fdatasync} before the renames, and leaves the
files and directories to a later C{syncfs}; L{appnet.mailbox.journal} says
how a crash is recovered from.

Flag changes rename the file into C{cur/} and are not fsynced: a crash may
lose a flag change, never a message.

Blocking
========
Everything here blocks on the filesystem. L{MaildirStore.deliver} runs it
through C{run_blocking} (a thread by default); protocols call the other
methods from a thread too (or accept a short block for small operations).
A scan lists C{new/} and C{cur/} with C{os.scandir}, takes sizes from the
names, and stats each message once per store instance for its arrival date.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import IO, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from appnet.errors import (
    MailboxExists,
    MailboxLocked,
    NoSuchMailbox,
    NoSuchMessage,
    NoSuchUser,
    PermissionDenied,
    QuotaExceeded,
)
from appnet.mailbox.errors import InvalidFolderName
from appnet.mailbox.filenames import (
    KeywordsFile,
    crlf_size,
    escape_hostname,
    new_key,
    normalize_flags,
    sizes_from_key,
    split_name,
)
from appnet.mailbox.interfaces import (
    IFolder,
    IMailboxStore,
    IMaildropLock,
    MessageInfo,
)
from appnet.mailbox.journal import (
    DELIVERED,
    DeliveryJournal,
    Record,
    write_message_file,
)
from appnet.mailbox.names import (
    INBOX,
    folder_dir_name,
    folder_name_from_dir,
    normalize_folder_name,
    validate_user_name,
)
from appnet.mailbox.uidlist import (
    CorruptUIDList,
    UIDList,
    allocate_uidvalidity,
    folder_lock,
    fsync_directory,
    peek_signature,
    read_uidlist,
    write_uidlist,
)

_log = Logger()

MAILDROP_LOCK_FILE = "appnet-maildrop.lock"
MAILDIRFOLDER_FILE = "maildirfolder"
_SUBDIRS = ("cur", "new", "tmp")

# Listing again after a change younger than this could miss a second change
# stamped with the same (coarse) directory mtime.
_RACY_NS = 2_000_000_000

# Seams for the durability tests, which record the order of these calls.
_fsync = os.fsync
_fsync_directory = fsync_directory
_rename = os.rename

_held_maildrops: set[str] = set()
_held_maildrops_guard = threading.Lock()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _sync_and_close(fd: int, path: str) -> None:
    """fsync and close a message written to tmp/; on failure remove it."""
    try:
        _fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)


def _arrival_order(key: str) -> tuple[int, int, str]:
    # Keys start "<secs>.M<usecs>P..." (ours, Dovecot's) or "<secs>.<...>"
    # (older tools): number new files in arrival order where we can tell.
    secs, _, rest = key.partition(".")
    usecs = 0
    if rest.startswith("M"):
        digits = rest[1:].partition("P")[0]
        if digits.isdigit():
            usecs = int(digits)
    return (int(secs) if secs.isdigit() else 0, usecs, key)


def _measure_crlf_size(f: IO[bytes]) -> int:
    total = 0
    previous = b""
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            return total
        total += crlf_size(chunk)
        if previous == b"\r" and chunk[:1] == b"\n":
            total -= 1  # a CRLF split across two chunks was counted as LF
        previous = chunk[-1:]


class _FolderState:
    """
    What one store remembers about one folder directory, shared by every
    L{MaildirFolder} it hands out for it. Everything here is a cache that
    checks itself against the disk.

    @ivar locations: UID to C{(subdir, file name)} as last seen
    @ivar facts: key to C{(mtime, size, rfc822_size)}, measured once
    @ivar infos: C{(subdir, file name)} to the L{MessageInfo} last built
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.uidlist: UIDList | None = None
        self.signature: bytes | None = None
        self.locations: dict[int, tuple[str, str]] = {}
        self.facts: dict[str, tuple[float, int, int]] = {}
        self.infos: dict[tuple[str, str], MessageInfo] = {}
        self.infos_stamp: tuple[int, tuple[str | None, ...]] | None = None
        self.keywords = KeywordsFile(path)


@implementer(IFolder)
class MaildirFolder:
    """
    One Maildir++ folder of one user; see L{IFolder}.

    Get one from L{MaildirStore.folder}. Every method blocks on the
    filesystem and is safe to call from several threads and processes at
    once.

    @ivar name: the canonical folder name (C{INBOX}, C{Work/2026})
    @ivar user: the owner
    @ivar path: the folder's directory
    """

    def __init__(self, store: MaildirStore, user: str, name: str, path: str,
                 user_path: str, state: _FolderState) -> None:
        self._store = store
        self.user = user
        self.name = name
        self.path = path
        self._user_path = user_path
        self._state = state

    def __repr__(self) -> str:
        return f"<MaildirFolder {self.user}:{self.name} at {self.path}>"

    # -- the UID list ------------------------------------------------------

    @property
    def uidvalidity(self) -> int:
        """The folder's UIDVALIDITY (creates the UID list if needed)."""
        with folder_lock(self.path):
            return self._load_locked().uidvalidity

    def next_uid(self) -> int:
        """The UID the next message added to this folder will get."""
        with folder_lock(self.path):
            return self._load_locked().next_uid

    def _load_locked(self) -> UIDList:
        state = self._state
        signature = peek_signature(self.path)
        if (state.uidlist is not None and signature is not None
                and signature == state.signature):
            return state.uidlist
        try:
            uidlist, signature = read_uidlist(self.path)
        except CorruptUIDList as e:
            _log.warn("Replacing corrupt UID list of {folder!r}: {error}",
                      folder=self, error=str(e))
            uidlist = None
        if uidlist is None:
            # A new UIDVALIDITY tells clients every UID they knew is void.
            uidlist = UIDList(allocate_uidvalidity(self._user_path), 1)
            self._save_locked(uidlist)
        else:
            state.uidlist, state.signature = uidlist, signature
        return uidlist

    def _save_locked(self, uidlist: UIDList) -> None:
        state = self._state
        try:
            state.signature = write_uidlist(self.path, uidlist)
            state.uidlist = uidlist
        except BaseException:
            state.uidlist = state.signature = None
            raise

    # -- scanning ----------------------------------------------------------

    def _list_files(self) -> dict[str, tuple[str, str, os.DirEntry[str]]]:
        self._store._wait_visible(self.path)
        found: dict[str, tuple[str, str, os.DirEntry[str]]] = {}
        # new/ before cur/: a file moved from new/ to cur/ while we list is
        # then seen at least once, and cur/ (the later state) wins.
        for sub in ("new", "cur"):
            try:
                it = os.scandir(os.path.join(self.path, sub))
            except FileNotFoundError:
                if not os.path.isdir(self.path):
                    raise NoSuchMailbox(self.name) from None
                continue
            with it:
                for entry in it:
                    name = entry.name
                    # Dot files are not messages (Maildir spec); a key with
                    # a line break could not be written to the UID list.
                    if (name[0] == "." or "\n" in name or "\r" in name
                            or not entry.is_file(follow_symlinks=False)):
                        continue
                    found[name.partition(":")[0]] = (sub, name, entry)
        return found

    def _facts(self, key: str, sub: str, name: str,
               entry: os.DirEntry[str] | None = None
               ) -> tuple[float, int, int] | None:
        facts = self._state.facts
        fact = facts.get(key)
        if fact is not None:
            return fact
        size, vsize = sizes_from_key(key)
        try:
            if vsize is None:
                with open(os.path.join(self.path, sub, name), "rb") as f:
                    st = os.fstat(f.fileno())
                    vsize = _measure_crlf_size(f)
            elif entry is not None:
                st = entry.stat(follow_symlinks=False)
            else:
                st = os.stat(os.path.join(self.path, sub, name))
        except FileNotFoundError:
            return None
        if size is None:
            size = st.st_size
        fact = facts[key] = (st.st_mtime, size, vsize)
        return fact

    def _scan_locked(self) -> list[MessageInfo]:
        files = self._list_files()
        uidlist = self._load_locked()
        uids = uidlist.uids
        changed = False
        if any(key not in files for key in uids):
            # Another tool renaming a file while we list can hide it from
            # one listing; only forget a UID when a second listing agrees.
            files = self._list_files()
            for key in [key for key in uids if key not in files]:
                del uids[key]
                changed = True
        new_keys = [key for key in files if key not in uids]
        if new_keys:
            for key in sorted(new_keys, key=_arrival_order):
                uidlist.assign(key)
            changed = True
        if changed:
            self._save_locked(uidlist)

        state = self._state
        keywords = state.keywords
        keyword_names = keywords.names()
        # A MessageInfo is immutable and determined by its file name, the
        # UID of its key and the keyword letters: reuse last scan's objects.
        stamp = (uidlist.uidvalidity, tuple(keyword_names))
        previous = state.infos if state.infos_stamp == stamp else {}
        current: dict[tuple[str, str], MessageInfo] = {}
        flags_by_letters: dict[str | None, frozenset[str]] = {}
        locations: dict[int, tuple[str, str]] = {}
        infos = []
        for key, (sub, name, entry) in files.items():
            uid = uids[key]
            info = previous.get((sub, name))
            if info is None or info.uid != uid:
                fact = self._facts(key, sub, name, entry)
                if fact is None:
                    continue  # gone since we listed it; the next scan forgets it
                letters = split_name(name)[1]
                flags = flags_by_letters.get(letters)
                if flags is None:
                    flags = flags_by_letters[letters] = keywords.flags_of(
                        letters or "", keyword_names)[0]
                info = MessageInfo(uid, key, fact[1], fact[2], flags, fact[0],
                                   sub == "new")
            current[(sub, name)] = info
            locations[uid] = (sub, name)
            infos.append(info)
        infos.sort(key=lambda info: info.uid)
        state.locations = locations
        state.infos, state.infos_stamp = current, stamp
        if len(state.facts) > 2 * len(files) + 64:
            state.facts = {k: v for k, v in state.facts.items() if k in files}
        return infos

    def messages(self) -> list[MessageInfo]:
        """Rescan the folder; its messages in ascending UID order."""
        with folder_lock(self.path):
            return self._scan_locked()

    def _info(self, uid: int, sub: str, name: str) -> MessageInfo:
        key, letters = split_name(name)
        fact = self._facts(key, sub, name)
        if fact is None:
            raise NoSuchMessage(uid)
        flags = self._state.keywords.flags_of(letters or "")[0]
        return MessageInfo(uid, key, fact[1], fact[2], flags, fact[0],
                           sub == "new")

    # -- reading -----------------------------------------------------------

    def _open_fd(self, uid: int) -> tuple[int, str]:
        """An O_RDONLY descriptor for the message and its file name."""
        for attempt in range(3):
            location = self._state.locations.get(uid)
            if location is None or attempt:
                # Unknown to us yet, or moved (flags changed elsewhere).
                with folder_lock(self.path):
                    self._scan_locked()
                location = self._state.locations.get(uid)
                if location is None:
                    break
            try:
                return os.open(os.path.join(self.path, *location), os.O_RDONLY), location[1]
            except FileNotFoundError:
                continue
        raise NoSuchMessage(uid)

    def open_message(self, uid: int) -> IO[bytes]:
        """
        Open the message for reading in binary mode; the caller closes it.

        @raise NoSuchMessage: it is gone (expunged by another session)
        """
        fd, _ = self._open_fd(uid)
        return os.fdopen(fd, "rb")

    def read_message(self, uid: int) -> bytes:
        """
        The whole message as stored.

        @raise NoSuchMessage: it is gone
        """
        # POP3 and IMAP read every message whole: with the size known from
        # the name's S= this is open, one read, close - a third of the system
        # calls of open().read() (fstat, ioctl, lseek...).
        fd, name = self._open_fd(uid)
        try:
            fact = self._state.facts.get(split_name(name)[0])
            size = fact[1] if fact is not None else None
            if size is None:
                size = os.fstat(fd).st_size
            chunks = []
            while True:
                # Ask for one byte more than expected to see the end at once.
                chunk = os.read(fd, size + 1 if not chunks else 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        finally:
            os.close(fd)

    # -- changing ----------------------------------------------------------

    def set_flags(self, uid: int, flags: Iterable[str]) -> MessageInfo:
        """
        Replace the message's flags: rename it into C{cur/} with the new
        info suffix. Letters without IMAP meaning (C{P}, keywords Dovecot's
        file does not name) are kept. C{\\Recent} cannot be set.

        @raise NoSuchMessage: it is gone
        @raise InvalidFlag: a flag is not storable
        @raise TooManyKeywords: all 26 keyword letters are taken
        """
        wanted = normalize_flags(flags)
        keywords = self._state.keywords
        with folder_lock(self.path):
            for attempt in range(3):
                location = self._state.locations.get(uid)
                if location is None or attempt:
                    self._scan_locked()
                    location = self._state.locations.get(uid)
                    if location is None:
                        break
                sub, name = location
                key, letters = split_name(name)
                kept = keywords.flags_of(letters or "")[1]
                new_name = f"{key}:2,{keywords.letters_for(wanted, kept)}"
                if (sub, name) != ("cur", new_name):
                    try:
                        _rename(os.path.join(self.path, sub, name),
                                os.path.join(self.path, "cur", new_name))
                    except FileNotFoundError:
                        continue
                    self._state.locations[uid] = ("cur", new_name)
                return self._info(uid, "cur", new_name)
        raise NoSuchMessage(uid)

    def add_message(self, message: bytes, flags: Iterable[str] = frozenset(),
                    internal_date: float | None = None) -> MessageInfo:
        """
        Store a message durably and return its info; see L{IFolder}.

        The message is stored with CRLF turned into LF. Without flags it
        goes to C{new/} (recent); with flags straight to C{cur/}. When
        C{internal_date} is given it becomes the file's mtime, which is
        where Dovecot, too, keeps the arrival date.

        @raise QuotaExceeded: it would take the owner over quota (nothing
            is written)
        @raise InvalidFlag: a flag is not storable
        """
        staged = self._stage(message, flags, internal_date)
        results: list[MessageInfo | Exception | None] = [None]
        try:
            self._commit([(0, *staged)], results)
        except BaseException:
            _unlink_quietly(staged[0])
            raise
        if isinstance(results[0], Exception):
            raise results[0]
        assert results[0] is not None
        return results[0]

    def _stage(self, message: bytes, flags: Iterable[str], internal_date: float | None
               ) -> tuple[str, str, str, str, int, int, frozenset[str], float]:
        """
        Write one message to C{tmp/} and fsync it; L{_commit} puts it in
        place.
        """
        fd, staged, _ = self._write_tmp(message, flags, internal_date)
        _sync_and_close(fd, staged[0])
        return staged

    def _prepare(self, message: bytes) -> tuple[bytes, int, int]:
        """
        The message as stored (LF line ends), its size and CRLF size,
        once the owner's quota has room for it.
        """
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise TypeError(f"message must be bytes, not {type(message)}")
        data = bytes(message).replace(b"\r\n", b"\n")
        size, vsize = len(data), crlf_size(data)
        self._store._check_quota(self.user, size)
        return data, size, vsize

    def _write_tmp(self, message: bytes, flags: Iterable[str], internal_date: float | None
                   ) -> tuple[int, tuple[str, str, str, str, int, int, frozenset[str], float], bytes]:
        """
        Write one message to C{tmp/}, not yet fsynced: the caller fsyncs
        and closes the returned descriptor (L{_sync_and_close}). Also
        returns the bytes as stored.
        """
        wanted = normalize_flags(flags)
        data, size, vsize = self._prepare(message)
        letters = self._state.keywords.letters_for(wanted) if wanted else ""

        tmp_path, fd = self._create_tmp(size, vsize)
        key = os.path.basename(tmp_path)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if internal_date is not None:
                os.utime(fd, (internal_date, internal_date))
            mtime = os.fstat(fd).st_mtime
        except BaseException:
            os.close(fd)
            os.unlink(tmp_path)
            raise
        sub, name = ("cur", f"{key}:2,{letters}") if letters else ("new", key)
        return fd, (tmp_path, key, sub, name, size, vsize, wanted, mtime), data

    def _commit(self, staged: list[tuple[int, str, str, str, str, int, int, frozenset[str], float]],
                results: list[MessageInfo | Exception | None],
                assign_uid: bool = True, durable: bool = True) -> None:
        """
        Rename staged files into place, assign their UIDs, make it durable:
        one hold of the folder lock, one UID-list write and one fsync per
        target directory however many messages (group commit). Each
        message's result (its L{MessageInfo} or the exception) goes into
        C{results} at its index; staged files are removed on failure.

        @param assign_uid: when false, the UID list is not touched: the
            next scan numbers the files, as it does for mail any other
            delivery agent puts in C{new/}; the results' C{uid} is 0
        @param durable: when false, the directories are not fsynced (the
            store's journal holds the messages until its checkpoint)
        """
        moved: list[str] = []
        uids: list[int] = []
        try:
            # Renaming into new/ needs no lock (as for any other delivery
            # agent); the UID list does.
            with folder_lock(self.path) if assign_uid else contextlib.nullcontext():
                uidlist = self._load_locked() if assign_uid else None
                for _, tmp_path, key, sub, name, size, vsize, _, mtime in staged:
                    dest = os.path.join(self.path, sub, name)
                    _rename(tmp_path, dest)
                    moved.append(dest)
                    uids.append(uidlist.assign(key) if uidlist is not None else 0)
                if uidlist is not None:
                    self._save_locked(uidlist)
                    for uid, (_, _, key, sub, name, size, vsize, _, mtime) in zip(uids, staged):
                        self._state.locations[uid] = (sub, name)
                        # Under the lock: a scan may be pruning this dict.
                        self._state.facts[key] = (mtime, size, vsize)
            if durable:
                for sub in sorted({entry[3] for entry in staged}):
                    _fsync_directory(os.path.join(self.path, sub))
        except Exception as e:
            self._store._forget_ready(self.path)
            # Do not leave a message the caller was told failed: it would
            # be delivered twice when the sender retries.
            for entry in staged:
                _unlink_quietly(entry[1])
                results[entry[0]] = e
            for dest in moved:
                _unlink_quietly(dest)
            return
        except BaseException:
            for dest in moved:
                _unlink_quietly(dest)
            raise
        for sub in {entry[3] for entry in staged}:
            self._store._note_added(self.path, sub)
        for uid, (i, _, key, sub, _, size, vsize, wanted, mtime) in zip(uids, staged):
            results[i] = MessageInfo(uid, key, size, vsize, wanted, mtime, sub == "new")

    def _create_tmp(self, size: int, vsize: int) -> tuple[str, int]:
        tmp_dir = os.path.join(self.path, "tmp")
        for _ in range(100):
            path = os.path.join(tmp_dir, new_key(self._store.hostname, size,
                                                 vsize))
            try:
                return path, os.open(
                    path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                    0o600)
            except FileExistsError:
                continue  # the counter moves on
            except FileNotFoundError:
                if not os.path.isdir(self.path):
                    raise NoSuchMailbox(self.name) from None
                os.makedirs(tmp_dir, 0o700, exist_ok=True)
        raise OSError(f"cannot create a unique file in {tmp_dir}")

    def expunge(self, uids: Iterable[int]) -> list[int]:
        """
        Remove these messages for good.

        @return: the UIDs actually removed, ascending; a UID that is
            unknown or already gone (another session expunged it) is left
            out, not an error
        """
        wanted = list(dict.fromkeys(uids))
        removed: list[tuple[int, str]] = []
        with folder_lock(self.path):
            journal = self._store.journal
            if journal is not None:
                self._tombstone(journal, wanted)
            missing = [uid for uid in wanted if not self._unlink(uid, removed)]
            if missing:
                self._scan_locked()
                for uid in missing:
                    self._unlink(uid, removed)
            if removed:
                uidlist = self._load_locked()
                for uid, key in removed:
                    if uidlist.uids.get(key) == uid:
                        del uidlist.uids[key]
                self._save_locked(uidlist)
        return sorted(uid for uid, _ in removed)

    def _tombstone(self, journal: DeliveryJournal, uids: list[int]) -> None:
        # Before any file goes: a replay must not bring these back.
        if any(uid not in self._state.locations for uid in uids):
            self._scan_locked()
        locations = self._state.locations
        journal.expunging(self._store._record_path(self.path, *locations[uid])
                          for uid in uids if uid in locations)

    def _unlink(self, uid: int, removed: list[tuple[int, str]]) -> bool:
        location = self._state.locations.get(uid)
        if location is None:
            return False
        try:
            os.unlink(os.path.join(self.path, *location))
        except FileNotFoundError:
            return False
        del self._state.locations[uid]
        key = split_name(location[1])[0]
        self._state.facts.pop(key, None)
        removed.append((uid, key))
        return True


@implementer(IMaildropLock)
class MaildirMaildropLock:
    """
    The exclusive POP3 hold on one user's INBOX; see L{IMaildropLock}.

    Also a context manager. Dropping the last reference releases it too,
    but sessions should call L{release} when they end.

    @ivar folder: the locked INBOX
    """

    def __init__(self, folder: MaildirFolder, lock_path: str,
                 fd: int) -> None:
        self.folder = folder
        self._finalizer = weakref.finalize(self, _release_maildrop,
                                           lock_path, fd)

    @property
    def held(self) -> bool:
        """True until released."""
        return self._finalizer.alive

    def release(self) -> None:
        """Release the lock. Idempotent."""
        self._finalizer()

    def __enter__(self) -> MaildirMaildropLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _release_maildrop(lock_path: str, fd: int) -> None:
    with _held_maildrops_guard:
        # Close (dropping the flock) before forgetting the holder, or another
        # thread could see the name free yet fail the flock.
        os.close(fd)
        _held_maildrops.discard(lock_path)


@implementer(IMailboxStore)
class MaildirStore:
    """
    Every user's mail as one Maildir++ per user; see L{IMailboxStore} and
    this module's docstring.

    @ivar root: the directory holding one maildir per user
    @ivar hostname: the host part of new file names, escaped
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        quota_for: Callable[[str], int | None] | None = None,
        run_blocking: Callable[..., defer.Deferred[Any]] | None = None,
        hostname: str | None = None,
        user_exists: Callable[[str], bool] | None = None,
        run_writes: Callable[..., defer.Deferred[Any]] | None = None,
    ) -> None:
        """
        @param root: the directory holding C{<user>/} maildirs (created on
            demand)
        @param quota_for: the user's byte limit, C{None} for none; no
            callable means no quotas
        @param run_blocking: C{run_blocking(f, *args)} runs blocking work
            and returns a Deferred of its result; default
            L{appnet.workers.shared_workers} (threads of our own: lighter
            than Twisted's pool on this path)
        @param hostname: host name for new file names; default
            L{socket.gethostname}
        @param user_exists: tells L{deliver} whether an account exists;
            without it any well-formed user name is accepted
        @param run_writes: like C{run_blocking}, for deliveries
            (L{deliver}'s batches and the files the journal has made
            durable); default L{appnet.workers.shared_writer} when
            C{run_blocking} is defaulted too, else C{run_blocking}. One
            thread, not a pool: batches go one after another anyway (group
            commit), and every further thread taking turns with the
            reactor for the GIL cost more than it overlapped (see
            L{WRITERS})
        """
        self.root = os.path.realpath(os.fspath(root))
        self._quota_for = quota_for
        if run_writes is None and run_blocking is not None:
            run_writes = run_blocking
        if run_blocking is None:
            from appnet.workers import shared_workers
            run_blocking = shared_workers()
        if run_writes is None:
            from appnet.workers import shared_writer
            run_writes = shared_writer()
        self._run_blocking = run_blocking
        self._run_writes = run_writes
        self.hostname = escape_hostname(hostname or socket.gethostname())
        self._user_exists = user_exists
        # Group commit (see deliver): requests waiting for the next batch,
        # and how many batches are being written.
        self._pending: list[tuple[tuple[str, str, bytes, Iterable[str], bool], defer.Deferred[MessageInfo]]] = []
        self._writing = 0
        self._journal: DeliveryJournal | None = None
        # maildir directories known to have cur/, new/ and tmp/
        self._ready: set[str] = set()
        # Journalled deliveries acknowledged but not yet in their maildirs:
        # count per folder directory, and those whose writing failed.
        self._visible = threading.Condition()
        self._unseen: dict[str, int] = {}
        self._unmaterialized: list[tuple[DeliveryJournal, Any, list[tuple[str, str, Record]]]] = []
        self._states: dict[str, _FolderState] = {}
        self._states_guard = threading.Lock()
        # directory -> ((inode, mtime_ns), total stored size)
        self._usage_cache: dict[str, tuple[tuple[int, int], int]] = {}

    #: Batches of deliveries written at once (see L{deliver}). One: while
    #: it is flushed the next batch gathers. Two (on three pool threads)
    #: beat one when each batch fsynced its files; with the journal, one
    #: batch at a time on one writer thread delivered 1,408 / 1,671 /
    #: 1,533 msgs/s against 1,281 / 1,202 / 1,361 (smtp-source as in
    #: bench/smtp, interleaved), with a third of the C{futex} calls:
    #: threads taking turns for the GIL cost more than overlapping
    #: flushes saved.
    WRITERS = 1

    #: Largest message (stored bytes) delivered through the journal.
    JOURNAL_MAX = 1 << 20

    def __repr__(self) -> str:
        return f"<MaildirStore at {self.root}>"

    # -- paths -------------------------------------------------------------

    def _user_path(self, user: str) -> str:
        return os.path.join(self.root, validate_user_name(user))

    def _ensure_user(self, user: str) -> str:
        user_path = self._user_path(user)
        self._ensure_ready(user_path)
        return user_path

    def _ensure_ready(self, path: str) -> None:
        # Checked once per path: a directory removed behind our back shows
        # as a failed write, which forgets it (see _forget_ready).
        if path not in self._ready:
            _ensure_maildir(path)
            self._ready.add(path)

    def _forget_ready(self, path: str) -> None:
        self._ready.discard(path)
        self._ready.discard(os.path.dirname(path))

    def _folder_path(self, user_path: str, name: str) -> str:
        dir_name = folder_dir_name(name)
        return user_path if dir_name is None else os.path.join(user_path,
                                                               dir_name)

    def _state_for(self, path: str) -> _FolderState:
        with self._states_guard:
            state = self._states.get(path)
            if state is None:
                state = self._states[path] = _FolderState(path)
            return state

    def _forget_states(self, path: str) -> None:
        self._ready = {p for p in self._ready if p != path and not p.startswith(path + ".")}
        with self._states_guard:
            for known in list(self._states):
                if known == path or known.startswith(path + "."):
                    del self._states[known]

    # -- IMailboxStore -----------------------------------------------------

    def deliver(self, user: str, message: bytes, folder: str = INBOX,
                flags: Iterable[str] = frozenset(), assign_uid: bool = True
                ) -> defer.Deferred[MessageInfo]:
        """
        Deliver a message; see L{IMailboxStore.deliver}. All the work,
        including the C{user_exists} check, runs through C{run_blocking}.

        Group commit: deliveries are written in batches, at most L{WRITERS}
        batches at a time (each in its own thread); deliveries that arrive
        while those are busy wait and then go together as the next batch.
        A batch writes every message to C{tmp/}, fsyncs each file (each
        still writes its own data: with delayed allocation nothing of it
        was on disk yet), renames them into place, and fsyncs each target
        directory once: one directory fsync per batch instead of one per
        message, and one hand-off to a thread. Each Deferred fires only
        once its own file and the directory entry naming it are durable.
        With the journal open, a batch is instead one append and
        C{fdatasync} of the journal, then the renames (see
        L{appnet.mailbox.journal}); a delivery with C{assign_uid=False} and
        no flags (SMTP's) fires right after that flush, and its file is
        written into C{new/} by a job that follows: this store's readers
        wait for it, other processes see it a moment later.

        With C{assign_uid=False} (SMTP, which has no use for the UID) the
        UID list is left to the next scan, as for mail any other delivery
        agent drops into C{new/}: the list is rewritten whole, so writing
        it per batch costs time in proportion to the folder's size.

        @return: a Deferred firing with the L{MessageInfo} once the message
            is durable, or failing with L{NoSuchUser} (also for malformed
            names), L{NoSuchMailbox}, L{QuotaExceeded}
        """
        result: defer.Deferred[MessageInfo] = defer.Deferred()
        self._pending.append(((user, folder, message, flags, assign_uid), result))
        if self._writing < self.WRITERS:
            self._write_pending()
        return result

    def _write_pending(self) -> None:
        batch, self._pending = self._pending, []
        self._writing += 1

        def done(outcome: Any) -> None:
            self._writing -= 1
            if self._pending:
                self._write_pending()
            if isinstance(outcome, Failure):
                results, unseen = [outcome] * len(batch), None
            else:
                results, unseen = outcome
            for (_, d), result in zip(batch, results):
                if isinstance(result, (Exception, Failure)):
                    d.errback(result)
                else:
                    d.callback(result)
            if unseen is not None:
                # This batch's hold on its segment passes to _materialize.
                # Counted only now, when that job is under way: a reader on
                # this thread must not wait for a job not yet started.
                self._expect(unseen[2])
                defer.maybeDeferred(self._run_writes, self._materialize, *unseen
                                    ).addErrback(self._log_materialize_failure)

        requests = [request for request, _ in batch]
        defer.maybeDeferred(self._run_writes, self._write_batch, requests).addBoth(done)

    def _write_batch(self, requests: list[tuple[str, str, bytes, Iterable[str], bool]]
                     ) -> tuple[list[MessageInfo | Exception | None],
                                tuple[DeliveryJournal, Any, list[tuple[str, str, Record]]] | None]:
        """
        Deliver a batch (see L{deliver}); each request's L{MessageInfo} or
        exception goes at its index.

        With the journal open, messages up to L{JOURNAL_MAX} bytes go
        through it; larger ones (whose flush costs the same either way, and
        which would only be written twice) are fsynced as without it.
        Journalled deliveries with C{assign_uid=False} and no flags are not
        written to their maildirs here at all: the second value returned
        lists them (with their journal segment) for L{_materialize}.
        """
        results: list[MessageInfo | Exception | None] = [None] * len(requests)
        # (folder, assign_uid, journalled) -> (folder, staged entries)
        targets: dict[tuple[str, bool, bool], tuple[MaildirFolder, list[tuple[Any, ...]]]] = {}
        synced: list[tuple[int, int, str]] = []
        journalled: list[Record] = []
        unseen: list[tuple[str, str, Record]] = []
        journal = self._journal
        for i, (user, folder_name, message, flags, assign_uid) in enumerate(requests):
            try:
                validate_user_name(user)
                if self._user_exists is not None and not self._user_exists(user):
                    raise NoSuchUser(user)
                target = self.folder(user, folder_name)
                if (journal is not None and not assign_uid and not flags
                        and len(message) <= self.JOURNAL_MAX):
                    data, size, vsize = target._prepare(message)
                    key, now = new_key(self.hostname, size, vsize), time.time()
                    record = Record(DELIVERED, self._record_path(target.path, "new", key), now, data)
                    journalled.append(record)
                    unseen.append((target.path, key, record))
                    results[i] = MessageInfo(0, key, size, vsize, frozenset(), now, True)
                    continue
                fd, staged, data = target._write_tmp(message, flags, None)
            except Exception as e:
                results[i] = e
                self._ready.clear()  # maybe a maildir went missing: check again
                continue
            via_journal = journal is not None and len(data) <= self.JOURNAL_MAX
            targets.setdefault((target.path, assign_uid, via_journal),
                               (target, []))[1].append((i, *staged))
            if via_journal:
                os.close(fd)
                journalled.append(Record(DELIVERED, self._record_path(target.path, staged[2], staged[3]),
                                         staged[7], data))
            else:
                synced.append((i, fd, staged[0]))
        failed: set[int] = set()
        for i, fd, tmp_path in synced:
            try:
                _sync_and_close(fd, tmp_path)
            except Exception as e:
                results[i] = e
                failed.add(i)
        segment = None
        if journalled:
            assert journal is not None
            try:
                segment = journal.append(journalled)
            except Exception as e:
                for (_, _, via_journal), (_, entries) in targets.items():
                    if via_journal:
                        for entry in entries:
                            _unlink_quietly(entry[1])
                            results[entry[0]] = e
                            failed.add(entry[0])
                for i, result in enumerate(results):
                    if isinstance(result, MessageInfo):  # only early ones so far
                        results[i] = e
                unseen = []
        try:
            for (_, assign_uid, via_journal), (target, entries) in targets.items():
                entries = [entry for entry in entries if entry[0] not in failed]
                if entries:
                    target._commit(entries, results, assign_uid=assign_uid,
                                   durable=not via_journal)
        finally:
            if segment is not None and not unseen:
                journal.applied(segment)
        return results, ((journal, segment, unseen) if unseen else None)

    def _materialize(self, journal: DeliveryJournal, segment: Any,
                     unseen: list[tuple[str, str, Record]]) -> None:
        """
        Put journalled messages into their maildirs (write to C{tmp/},
        rename into C{new/}; no fsync: the next checkpoint syncs them). A
        failure leaves the rest for L{checkpoint} to retry; the segment
        is not released until all are in place.
        """
        try:
            while unseen:
                path, key, record = unseen[0]
                try:
                    write_message_file(path, "new", key, record.data)
                finally:
                    self._seen(path)
                unseen.pop(0)
        except Exception:
            with self._visible:
                self._unmaterialized.append((journal, segment, unseen))
            raise
        journal.applied(segment)

    def _expect(self, unseen: list[tuple[str, str, Record]]) -> None:
        with self._visible:
            for path, _, _ in unseen:
                self._unseen[path] = self._unseen.get(path, 0) + 1

    def _seen(self, path: str) -> None:
        with self._visible:
            left = self._unseen.get(path, 0) - 1
            if left > 0:
                self._unseen[path] = left
            else:
                self._unseen.pop(path, None)
            self._visible.notify_all()

    def _wait_visible(self, path: str, timeout: float = 10.0) -> None:
        """
        Wait until messages acknowledged for this folder directory are in
        it (readers in this process see their own deliveries at once).
        """
        if not self._unseen:
            return
        with self._visible:
            self._visible.wait_for(lambda: not self._unseen.get(path), timeout)

    @staticmethod
    def _log_materialize_failure(failure: Failure) -> None:
        _log.failure("Could not put a journalled message in its maildir yet "
                     "(retried at the next checkpoint; it is safe in the journal)", failure)

    def _retry_materialize(self) -> None:
        with self._visible:
            jobs, self._unmaterialized = self._unmaterialized, []
        for journal, segment, unseen in jobs:
            self._expect(unseen)
            try:
                self._materialize(journal, segment, unseen)
            except Exception:
                self._log_materialize_failure(Failure())

    def _record_path(self, folder_path: str, sub: str, name: str) -> str:
        """A message file's path below the root, as the journal names it."""
        return "/".join([folder_path[len(self.root) + 1:], sub, name])

    # -- the journal -------------------------------------------------------

    @property
    def journal(self) -> DeliveryJournal | None:
        """The open L{DeliveryJournal}, or C{None} (per-message fsyncs)."""
        return self._journal

    def open_journal(self, max_age: float = 1.0) -> int:
        """
        Deliver through a L{DeliveryJournal} from now on (one
        C{fdatasync} per batch instead of two fsyncs per message), after
        replaying what a crash left in it; blocks. Call L{checkpoint}
        every C{max_age} seconds or so and L{close_journal} at the end.

        @return: how many message files the replay rewrote
        @raise JournalBusy: another process delivers into this root with
            its journal (this store keeps per-message fsyncs)
        """
        journal = DeliveryJournal(self.root, max_age)
        rewritten = journal.open()
        self._journal = journal
        return rewritten

    def checkpoint(self, force: bool = False) -> int:
        """
        Make journalled deliveries durable in their maildirs when due (see
        L{DeliveryJournal.checkpoint}); blocks. No-op without a journal.

        @return: how many journal segments were retired
        """
        journal = self._journal
        if journal is None or not (force or journal.due()):
            return 0
        self._retry_materialize()
        return journal.checkpoint(force)

    def close_journal(self) -> None:
        """Checkpoint everything and stop using the journal; blocks."""
        journal = self._journal
        if journal is not None:
            try:
                self._retry_materialize()
            finally:
                self._journal = None
                journal.close()

    def folder(self, user: str, name: str = INBOX) -> MaildirFolder:
        """
        The user's folder; the user's maildir is created on demand (and a
        folder's missing C{cur/}, C{new/}, C{tmp/}, as Dovecot does).

        @raise NoSuchMailbox: the folder does not exist
        @raise InvalidUserName: malformed user name
        @raise InvalidFolderName: malformed folder name
        """
        name = normalize_folder_name(name)
        user_path = self._ensure_user(user)
        path = self._folder_path(user_path, name)
        if path != user_path and path not in self._ready:
            if not os.path.isdir(path):
                raise NoSuchMailbox(name)
            self._ensure_ready(path)
        return MaildirFolder(self, user, name, path, user_path,
                             self._state_for(path))

    def _folder_dirs(self, user_path: str) -> list[tuple[str, str]]:
        result = []
        with os.scandir(user_path) as it:
            for entry in it:
                if (entry.name.startswith(".")
                        and entry.is_dir(follow_symlinks=False)):
                    name = folder_name_from_dir(entry.name)
                    if name is not None:
                        result.append((name, entry.path))
        return result

    def list_folders(self, user: str) -> list[str]:
        """Names of the user's folders: C{INBOX}, then the rest sorted."""
        user_path = self._ensure_user(user)
        return [INBOX] + sorted(name for name, _ in
                                self._folder_dirs(user_path))

    def create_folder(self, user: str, name: str) -> MaildirFolder:
        """
        Create a folder (its parents are not created: Maildir++ needs none).

        @raise MailboxExists: it exists already (C{INBOX} always does)
        """
        name = normalize_folder_name(name)
        user_path = self._ensure_user(user)
        path = self._folder_path(user_path, name)
        if path == user_path:
            raise MailboxExists(name)
        try:
            # mkdir, not rename: renaming onto an empty directory succeeds.
            os.mkdir(path, 0o700)
        except FileExistsError:
            raise MailboxExists(name) from None
        _ensure_maildir(path)
        os.close(os.open(os.path.join(path, MAILDIRFOLDER_FILE),
                         os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        fsync_directory(user_path)
        return self.folder(user, name)

    def delete_folder(self, user: str, name: str) -> None:
        """
        Delete a folder and its messages. Its sub-folders stay (they are
        separate directories in Maildir++), as Dovecot does.

        @raise NoSuchMailbox: it does not exist
        @raise PermissionDenied: for C{INBOX}
        """
        name = normalize_folder_name(name)
        user_path = self._ensure_user(user)
        path = self._folder_path(user_path, name)
        if path == user_path:
            raise PermissionDenied("INBOX cannot be deleted")
        if not os.path.isdir(path) or os.path.islink(path):
            raise NoSuchMailbox(name)
        # Renamed away first so the folder vanishes at once for everyone;
        # "..name" is no valid folder directory, so nobody lists it.
        trash = os.path.join(user_path, f"..appnet-deleted.{uuid.uuid4().hex}")
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            raise NoSuchMailbox(name) from None
        self._forget_states(path)
        shutil.rmtree(trash, onerror=self._log_rmtree_error)

    @staticmethod
    def _log_rmtree_error(function: object, path: str,
                          exc_info: object) -> None:
        _log.warn("Could not remove {path} of a deleted folder", path=path)

    def rename_folder(self, user: str, old: str, new: str) -> None:
        """
        Rename a folder and all its sub-folders (IMAP RENAME). The UIDs and
        UIDVALIDITY move with it.

        @raise NoSuchMailbox: C{old} does not exist
        @raise MailboxExists: C{new} (or where a sub-folder would go) exists
        @raise PermissionDenied: C{old} is C{INBOX} (IMAP's move-all-mail
            rename of INBOX is not supported)
        @raise InvalidFolderName: C{new} is inside C{old}, or a name is bad
        """
        old = normalize_folder_name(old)
        new = normalize_folder_name(new)
        if old == INBOX:
            raise PermissionDenied("renaming INBOX is not supported")
        if new == INBOX or new == old:
            raise MailboxExists(new)
        if new.startswith(old + "/"):
            raise InvalidFolderName(f"cannot move {old!r} inside itself")
        user_path = self._ensure_user(user)
        old_path = self._folder_path(user_path, old)
        if not os.path.isdir(old_path):
            raise NoSuchMailbox(old)
        moves = [(old_path, self._folder_path(user_path, new))]
        for name, path in sorted(self._folder_dirs(user_path)):
            if name.startswith(old + "/"):
                target = normalize_folder_name(new + name[len(old):])
                moves.append((path, self._folder_path(user_path, target)))
        for _, target_path in moves:
            if os.path.lexists(target_path):
                raise MailboxExists(folder_name_from_dir(
                    os.path.basename(target_path)) or new)
        for source_path, target_path in moves:
            os.rename(source_path, target_path)
            self._forget_states(source_path)
        fsync_directory(user_path)

    def lock_maildrop(self, user: str) -> MaildirMaildropLock:
        """
        Take the exclusive POP3 lock on the user's INBOX: against this
        process (a registry of held locks) and other processes
        (C{fcntl.flock} on C{appnet-maildrop.lock}, freed by the kernel if
        the holder dies).

        @raise MailboxLocked: another session holds it
        """
        inbox = self.folder(user)
        lock_path = os.path.join(inbox.path, MAILDROP_LOCK_FILE)
        with _held_maildrops_guard:
            if lock_path in _held_maildrops:
                raise MailboxLocked(user)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise MailboxLocked(user) from None
            except BaseException:
                os.close(fd)
                raise
            _held_maildrops.add(lock_path)
        return MaildirMaildropLock(inbox, lock_path, fd)

    def quota(self, user: str) -> tuple[int, int | None]:
        """(bytes used by all the user's folders, byte limit or C{None})."""
        validate_user_name(user)
        limit = self._quota_for(user) if self._quota_for is not None else None
        return self._usage(user), limit

    # -- quota -------------------------------------------------------------

    def _check_quota(self, user: str, size: int) -> None:
        if self._quota_for is None:
            return
        limit = self._quota_for(user)
        if limit is None:
            return
        used = self._usage(user)
        if used + size > limit:
            raise QuotaExceeded(
                f"{user}: {used} + {size} bytes exceeds the {limit} byte quota")

    def _usage(self, user: str) -> int:
        user_path = self._user_path(user)
        if not os.path.isdir(user_path):
            return 0
        total = self._folder_usage(user_path)
        for _, path in self._folder_dirs(user_path):
            total += self._folder_usage(path)
        return total

    def _folder_usage(self, path: str) -> int:
        total = 0
        for sub in ("new", "cur"):
            directory = os.path.join(path, sub)
            now_ns = time.time_ns()
            try:
                st = os.stat(directory)
            except FileNotFoundError:
                continue
            signature = (st.st_ino, st.st_mtime_ns)
            cached = self._usage_cache.get(directory)
            if cached is not None and cached[0] == signature:
                total += cached[1]
                continue
            used = _directory_usage(directory)
            if now_ns - st.st_mtime_ns > _RACY_NS:
                self._usage_cache[directory] = (signature, used)
            else:
                self._usage_cache.pop(directory, None)
            total += used
        return total

    def _note_added(self, path: str, sub: str) -> None:
        # Our own addition changed the directory; its cached total is void.
        self._usage_cache.pop(os.path.join(path, sub), None)


def _directory_usage(directory: str) -> int:
    total = 0
    try:
        it = os.scandir(directory)
    except FileNotFoundError:
        return 0
    with it:
        for entry in it:
            name = entry.name
            if name[0] == ".":
                continue
            size = sizes_from_key(name.partition(":")[0])[0]
            if size is None:
                try:
                    size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
            total += size
    return total


def _ensure_maildir(path: str) -> None:
    for sub in _SUBDIRS:
        sub_path = os.path.join(path, sub)
        if not os.path.isdir(sub_path):
            os.makedirs(sub_path, 0o700, exist_ok=True)


__all__ = [
    "MAILDROP_LOCK_FILE",
    "MaildirFolder",
    "MaildirMaildropLock",
    "MaildirStore",
]
