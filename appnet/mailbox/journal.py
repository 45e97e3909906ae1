"""
The delivery journal: a write-ahead log that makes a batch of deliveries
durable with one C{fdatasync}.

Why
===
A Maildir delivery is durable once the message file and the directory entry
naming it are on disk: an fsync of the file and one of the directory, each
costing a filesystem journal commit and a cache flush (about 0.6 ms here
for both). Under SMTP load that is the whole budget. With the journal, a
batch of deliveries costs one C{fdatasync} of one appended file; the Maildir
files are written and renamed into place without fsync, and made durable
later, many at a time, by one C{syncfs} (a I{checkpoint}).

Order of one batch
==================
    1. one record per message (its path below the store root, its mtime,
       its bytes) is appended to the current segment, then C{fdatasync};
    2. the files are put in place without fsync: written to C{tmp/} and
       renamed into C{new/} (or C{cur/}).

The store (L{appnet.mailbox.maildir}) reports SMTP's deliveries as done
after step 1 and does step 2 in a job that follows; other deliveries write
to C{tmp/} before step 1 and report after step 2. Either way no file is
visible in a maildir before its record is durable, so every message there
not yet checkpointed has a durable record: after a crash, L{DeliveryJournal.open} replays the segments
and rewrites any file that is missing or whose bytes differ (a power cut
can leave a renamed file empty), then syncs the filesystem and removes the
segments. A record cut short by the crash fails its CRC and ends the replay:
its batch was never acknowledged.

Checkpoints
===========
L{DeliveryJournal.checkpoint} seals the current segment once it is older
than C{max_age} seconds or larger than L{DeliveryJournal.SEGMENT_BYTES},
waits until every batch written to it has put its files in place, calls
C{syncfs(2)} on the store's filesystem (C{os.sync} where there is none),
then retires the sealed segments (kept as spares, see I{Files}) and fsyncs
the journal directory.

Expunged messages
=================
A message expunged through the same store before its checkpoint gets a
I{tombstone} record (appended and fdatasynced before the file is removed),
so a replay does not bring it back. A message removed by another process
(Dovecot, a second appnet) within C{max_age} seconds of its delivery, just
before a power cut, can come back once: the journal errs on the side of
delivering twice, never of losing mail.

Files
=====
C{<root>/.appnet-journal/} (no user name starts with a dot) holds C{lock}
(an C{flock} held by the one store that writes the journal; another process
on the same root finds it taken and delivers with per-message fsyncs) and
C{segment.<n>} files of records::

    "AJ1" kind(1) segment(4) length(4) crc32(4) | path-length(2) mtime(8) path data

C{kind} is C{D} (delivered) or C{X} (expunged; no data); integers are big
endian, the mtime an IEEE double; the CRC covers everything after it.

Segments are preallocated (written with zeros and fsynced once) and, when
retired, kept as C{spare.<n>} for reuse: an append then overwrites blocks
the file already has, so its C{fdatasync} flushes data only, with no
filesystem journal commit, which would stall every file creation in the
maildirs meanwhile. A reused file still holds its old records after the new
ones; each record names its segment's number, numbers only grow (a new one
is higher than any file's in the directory), and a replay stops at the
first record of another number.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twisted.logger import Logger

from appnet.mailbox.names import validate_user_name
from appnet.mailbox.uidlist import fsync_directory

__all__ = [
    "DELIVERED",
    "EXPUNGED",
    "JOURNAL_DIR",
    "DeliveryJournal",
    "JournalBusy",
    "Record",
    "decode_records",
    "encode_record",
    "message_identity",
    "write_message_file",
]

_log = Logger()

JOURNAL_DIR = ".appnet-journal"
LOCK_FILE = "lock"
_SEGMENT = "segment."
DELIVERED = b"D"
EXPUNGED = b"X"
_SPARE = "spare."
_MAGIC = b"AJ1"
_HEADER = struct.Struct(">3scIII")
_BODY = struct.Struct(">Hd")

# Seams for the tests, which record the order of these calls.
_fdatasync = getattr(os, "fdatasync", os.fsync)
_fsync_directory = fsync_directory


def _find_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return getattr(libc, "syncfs", None)


_libc_syncfs = _find_syncfs()


def syncfs(path: str) -> None:
    """
    Flush everything written to the filesystem holding C{path}: data,
    metadata, the disk's cache (C{syncfs(2)}; C{os.sync} where the C
    library has none).
    """
    if _libc_syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc_syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


class JournalBusy(Exception):
    """Another process holds this store's journal."""


@dataclass(frozen=True)
class Record:
    """
    One journal entry.

    @ivar kind: L{DELIVERED} or L{EXPUNGED}
    @ivar path: the message file below the store root, C{/}-separated
        (C{alice/new/<key>}, C{alice/.Sent/cur/<key>:2,S})
    @ivar mtime: the file's mtime (its arrival date)
    @ivar data: the stored bytes (empty for L{EXPUNGED})
    """

    kind: bytes
    path: str
    mtime: float
    data: bytes = b""


def encode_record(record: Record, segment: int) -> bytes:
    """The bytes of one record in segment number C{segment}."""
    path = record.path.encode("utf-8")
    body = _BODY.pack(len(path), record.mtime) + path + record.data
    return _HEADER.pack(_MAGIC, record.kind, segment, len(body), zlib.crc32(body)) + body


def decode_records(buf: bytes, segment: int) -> tuple[list[Record], int]:
    """
    Decode the records of segment number C{segment} at the start of C{buf}.

    @return: the records, and the offset where they end (where the file's
        zeros, an older use's records or a torn write begin)
    """
    records: list[Record] = []
    offset = 0
    view = memoryview(buf)
    while offset + _HEADER.size <= len(buf):
        magic, kind, number, length, crc = _HEADER.unpack_from(buf, offset)
        start = offset + _HEADER.size
        body = view[start:start + length]
        if (magic != _MAGIC or kind not in (DELIVERED, EXPUNGED) or number != segment
                or len(body) != length or length < _BODY.size
                or zlib.crc32(body) != crc):
            break
        path_length, mtime = _BODY.unpack_from(body)
        end = _BODY.size + path_length
        if end > length:
            break
        try:
            path = bytes(body[_BODY.size:end]).decode("utf-8")
        except UnicodeDecodeError:
            break
        records.append(Record(kind, path, mtime, bytes(body[end:])))
        offset = start + length
    return records, offset


def message_identity(path: str) -> str:
    """
    What names one message whatever its flags: a record path without its
    C{new}/C{cur} part and info suffix (C{alice/.Sent/<key>}).
    """
    *folder, _, name = path.split("/")
    return "/".join([*folder, name.partition(":")[0]])


def write_message_file(folder: str, sub: str, name: str, data: bytes,
                       mtime: float | None = None, target: str | None = None) -> str:
    """
    Put a message into a maildir folder the Maildir way: write
    C{tmp/<key>}, then rename it to C{<sub>/<name>} (or C{target}). No
    fsync: the journal's record covers it until a checkpoint.

    @return: the path it now has
    """
    key = name.partition(":")[0]
    tmp = os.path.join(folder, "tmp", key)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(tmp), 0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)
    if target is None:
        target = os.path.join(folder, sub, name)
    try:
        os.rename(tmp, target)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(target), 0o700, exist_ok=True)
        os.rename(tmp, target)
    return target


class _Segment:
    """One journal file: its descriptor while open, and its accounting."""

    def __init__(self, number: int, path: str, fd: int, opened: float) -> None:
        self.number = number
        self.path = path
        self.fd = fd
        self.opened = opened
        self.size = 0
        self.records = 0
        self.pending = 0  # batches appended whose files are not yet renamed


class DeliveryJournal:
    """
    The write-ahead log of one L{appnet.mailbox.MaildirStore}; see the
    module docstring. Thread-safe: writers append from the store's threads,
    checkpoints run in another.
    """

    #: Each segment is preallocated to this size; one that fills up is
    #: sealed (a batch larger than this still goes into one segment).
    SEGMENT_BYTES = 8 << 20
    #: Retired segments kept for reuse.
    SPARES = 3

    def __init__(self, root: str, max_age: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """
        @param root: the store root (the journal lives in
            C{<root>/.appnet-journal})
        @param max_age: seconds a record may wait for its checkpoint
        """
        self.root = root
        self.path = os.path.join(root, JOURNAL_DIR)
        self.max_age = max_age
        self._monotonic = monotonic
        self._cond = threading.Condition()
        self._checkpointing = threading.Lock()
        self._lock_fd: int | None = None
        self._active: _Segment | None = None
        self._sealed: list[_Segment] = []
        self._next = 1
        self._spares: list[int] = []
        # message identity -> the segment holding it, until its checkpoint
        self._unsynced: dict[str, _Segment] = {}

    # -- opening and recovery ----------------------------------------------

    def open(self) -> int:
        """
        Take the journal (an exclusive C{flock}) and replay what a crash
        left in it.

        @return: how many message files the replay had to (re)write
        @raise JournalBusy: another process holds it
        """
        os.makedirs(self.path, 0o700, exist_ok=True)
        fd = os.open(os.path.join(self.path, LOCK_FILE),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalBusy(self.path) from None
        self._lock_fd = fd
        try:
            return self._recover()
        except BaseException:
            self._release_lock()
            raise

    def _numbers(self, prefix: str) -> list[int]:
        numbers = []
        for name in os.listdir(self.path):
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                numbers.append(int(name[len(prefix):]))
        return sorted(numbers)

    def _recover(self) -> int:
        numbers = self._numbers(_SEGMENT)
        self._spares = self._numbers(_SPARE)
        self._next = max(numbers + self._spares, default=0) + 1
        if not self._spares:
            self._make_spare()
        if not numbers:
            return 0
        records: list[Record] = []
        for number in numbers:
            with open(os.path.join(self.path, f"{_SEGMENT}{number}"), "rb") as f:
                records.extend(decode_records(f.read(), number)[0])
        expunged = {message_identity(r.path) for r in records if r.kind == EXPUNGED}
        restorer = _Restorer(self.root)
        rewritten = sum(restorer.restore(r) for r in records
                        if r.kind == DELIVERED
                        and message_identity(r.path) not in expunged)
        syncfs(self.root)
        for number in numbers:
            self._retire(number)
        _fsync_directory(self.path)
        if rewritten:
            _log.warn("Journal replay rewrote {count} message file(s) a crash "
                      "had lost or damaged", count=rewritten)
        return rewritten

    # -- appending -----------------------------------------------------------

    def _make_spare(self) -> None:
        """Create one preallocated spare (zeros, fsynced)."""
        number, self._next = self._next, self._next + 1
        path = os.path.join(self.path, f"{_SPARE}{number}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            zeros = bytes(1 << 20)
            for offset in range(0, self.SEGMENT_BYTES, len(zeros)):
                os.pwrite(fd, zeros[:self.SEGMENT_BYTES - offset], offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_directory(self.path)
        self._spares.append(number)

    def _retire(self, number: int) -> None:
        """Keep a checkpointed segment as a spare, or delete it."""
        path = os.path.join(self.path, f"{_SEGMENT}{number}")
        if len(self._spares) < self.SPARES and os.stat(path).st_size <= self.SEGMENT_BYTES:
            os.rename(path, os.path.join(self.path, f"{_SPARE}{number}"))
            self._spares.append(number)
        else:
            os.unlink(path)

    def _new_segment(self) -> _Segment:
        if not self._spares:
            self._make_spare()
        spare = self._spares.pop(0)
        number, self._next = self._next, self._next + 1
        path = os.path.join(self.path, f"{_SEGMENT}{number}")
        os.rename(os.path.join(self.path, f"{_SPARE}{spare}"), path)
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            _fsync_directory(self.path)
        except BaseException:
            os.close(fd)
            raise
        self._active = _Segment(number, path, fd, self._monotonic())
        return self._active

    def _seal(self) -> None:
        if self._active is not None:
            self._sealed.append(self._active)
            self._active = None

    def append(self, records: Iterable[Record]) -> _Segment:
        """
        Append records and make them durable; blocks.

        The caller renames the batch's files into place and then calls
        L{applied} with the returned segment (also when that fails).
        """
        records = list(records)
        size = sum(_HEADER.size + _BODY.size + len(r.path.encode("utf-8")) + len(r.data)
                   for r in records)
        with self._cond:
            if self._lock_fd is None:
                raise RuntimeError("the journal is not open")
            segment = self._active
            if segment is not None and segment.size + size > self.SEGMENT_BYTES and segment.records:
                self._seal()
                segment = None
            if segment is None:
                segment = self._new_segment()
            buf = b"".join(encode_record(r, segment.number) for r in records)
            written = 0
            try:
                view = memoryview(buf)
                while written < len(buf):
                    written += os.pwrite(segment.fd, view[written:], segment.size + written)
            except BaseException:
                # A record written in part is no record (its CRC fails), but
                # what follows it would never be read: write no more here.
                self._seal()
                raise
            segment.size += len(buf)
            segment.records += len(records)
            segment.pending += 1
            for record in records:
                self._unsynced[message_identity(record.path)] = segment
            if segment.size >= self.SEGMENT_BYTES:
                self._seal()
        try:
            # Outside the lock: another batch may append meanwhile, and one
            # flush then often covers both.
            _fdatasync(segment.fd)
        except BaseException:
            self.applied(segment)
            raise
        return segment

    def applied(self, segment: _Segment) -> None:
        """A batch appended to C{segment} has renamed its files (or failed)."""
        with self._cond:
            segment.pending -= 1
            self._cond.notify_all()

    def pending(self, paths: Iterable[str]) -> list[str]:
        """Those of C{paths} (record paths) not yet checkpointed."""
        with self._cond:
            return [p for p in paths if message_identity(p) in self._unsynced]

    def expunging(self, paths: Iterable[str]) -> None:
        """
        Write tombstones for these messages (record paths, with any flags),
        before their files are removed, so a replay does not restore them;
        blocks (one C{fdatasync}) if any is not checkpointed yet, else does
        nothing.
        """
        paths = self.pending(paths)
        if paths:
            self.applied(self.append(Record(EXPUNGED, p, 0.0) for p in paths))

    # -- checkpoints -----------------------------------------------------------

    def due(self) -> bool:
        """Whether L{checkpoint} has work: sealed segments, or an old one."""
        with self._cond:
            active = self._active
            return bool(self._sealed) or (
                active is not None and active.records > 0
                and self._monotonic() - active.opened >= self.max_age)

    #: How long a forced checkpoint waits for batches still renaming files.
    FORCE_WAIT = 30.0

    def checkpoint(self, force: bool = False) -> int:
        """
        Make the messages of sealed segments durable in their maildirs and
        retire those segments; blocks. The current segment is sealed first
        when it is older than C{max_age} (or always, with C{force}).

        Segments are retired oldest first, and only once every batch
        written to them has put its files in place (with C{force}, after
        waiting up to L{FORCE_WAIT} seconds for that); one still waiting,
        and those after it, stay for the next checkpoint or the replay.

        @return: how many segments were retired
        """
        with self._checkpointing:
            with self._cond:
                active = self._active
                if active is not None and active.records and (
                        force or self._monotonic() - active.opened >= self.max_age):
                    self._seal()
                if force:
                    self._cond.wait_for(lambda: not any(s.pending for s in self._sealed),
                                        self.FORCE_WAIT)
                count = 0
                while count < len(self._sealed) and not self._sealed[count].pending:
                    count += 1
                ready, self._sealed = self._sealed[:count], self._sealed[count:]
            if not ready:
                return 0
            try:
                syncfs(self.root)
            except BaseException:
                with self._cond:
                    self._sealed[:0] = ready
                raise
            with self._cond:
                for segment in ready:
                    os.close(segment.fd)
                    self._retire(segment.number)
            _fsync_directory(self.path)
            with self._cond:
                retired = {id(s) for s in ready}
                self._unsynced = {p: s for p, s in self._unsynced.items()
                                  if id(s) not in retired}
            return len(ready)

    def close(self) -> None:
        """Checkpoint everything and release the journal; blocks."""
        if self._lock_fd is None:
            return
        self.checkpoint(force=True)
        self._release_lock()

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)


class _Restorer:
    """Rewrites message files from journal records during a replay."""

    def __init__(self, root: str) -> None:
        self.root = root
        # folder directory -> {key: path of its file in new/ or cur/}
        self._index: dict[str, dict[str, str]] = {}

    def _folder_index(self, folder: str) -> dict[str, str]:
        index = self._index.get(folder)
        if index is None:
            index = self._index[folder] = {}
            for sub in ("new", "cur"):
                try:
                    with os.scandir(os.path.join(folder, sub)) as it:
                        for entry in it:
                            index[entry.name.partition(":")[0]] = entry.path
                except FileNotFoundError:
                    pass
        return index

    def _locate(self, path: str) -> tuple[str, str, str] | None:
        """(folder directory, sub, file name) of a record path, if sane."""
        parts = path.split("/")
        if len(parts) not in (3, 4):
            return None
        user, *folder, sub, name = parts
        try:
            validate_user_name(user)
        except ValueError:
            return None
        if (folder and (not folder[0].startswith(".") or folder[0] in (".", "..")
                        or folder[0] == JOURNAL_DIR)) or sub not in ("new", "cur"):
            return None
        if not name or name.startswith(".") or "\0" in name:
            return None
        return os.path.join(self.root, user, *folder), sub, name

    def restore(self, record: Record) -> int:
        """
        Make the record's file hold its bytes.

        @return: 1 if it had to be (re)written, else 0
        """
        located = self._locate(record.path)
        if located is None:
            _log.warn("Journal: skipping a record with a bad path {path!r}",
                      path=record.path)
            return 0
        folder, sub, name = located
        if not os.path.isdir(folder):
            return 0  # the folder was deleted, and its mail with it
        key = name.partition(":")[0]
        index = self._folder_index(folder)
        target = index.get(key)
        if target is not None:
            try:
                with open(target, "rb") as f:
                    if f.read(len(record.data) + 1) == record.data:
                        return 0
            except FileNotFoundError:
                target = None
        index[key] = write_message_file(folder, sub, name, record.data, record.mtime, target)
        return 1
