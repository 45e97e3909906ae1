"""
Per-folder UID lists, the folder lock, and per-user UIDVALIDITY allocation.

C{appnet-uidlist}
=================
One per folder directory (next to its C{cur/}, C{new/}, C{tmp/}), UTF-8
text, C{\\n} line ends::

    appnet-uidlist 1
    uidvalidity 1795438520
    next-uid 43
    generation 17
    1 1795438520.M738923P7319Q1.vm,S=18,W=21
    7 1700000000.12345_1.mutt-host

The first line names the format and its version. Then the folder's
UIDVALIDITY, the UID the next message will get, a counter bumped by every
write, and one line per message: its UID, one space, its Maildir key (the
file name before C{:2,}), in ascending UID order. The four header lines are
the list's I{signature}: a process that cached the list re-reads it only
when they changed (C{generation} makes that exact, where inode numbers and
coarse file timestamps could repeat). UIDs are never reused: C{next-uid} only grows, and
an entry disappears only when its message is expunged. The file is replaced
as a whole (write C{appnet-uidlist.tmp}, fsync, rename, fsync the
directory), so a reader sees the old or the new list, never half of one. A
file that does not parse is replaced by a fresh list with a greater
UIDVALIDITY, which tells IMAP clients to forget their cache.

Locking
=======
Every read-modify-write of the list (and every rename or unlink of a message
file by this store) happens under L{folder_lock}: a per-folder
C{threading.Lock} for the threads of this process, then an exclusive
C{fcntl.flock} on C{appnet-uidlist.lock} for other processes. The lock file
is never deleted, since deleting a flock file lets two holders lock two
different files.

C{appnet-uidvalidity}
=====================
In each user's maildir root: the last UIDVALIDITY handed out to any of the
user's folders, as decimal text. A new folder list gets
C{max(now, last + 1)}, so a folder deleted and re-created within the same
second still gets a new UIDVALIDITY.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from appnet.errors import NoSuchMailbox

UIDLIST_FILE = "appnet-uidlist"
UIDLIST_LOCK_FILE = "appnet-uidlist.lock"
UIDVALIDITY_FILE = "appnet-uidvalidity"
_MAGIC = "appnet-uidlist 1"
_HEADER_LINES = 4
# Enough for the four header lines whatever the numbers.
_HEADER_PEEK = 128

_thread_locks: weakref.WeakValueDictionary[str, threading.Lock] = (
    weakref.WeakValueDictionary())
_thread_locks_guard = threading.Lock()


class CorruptUIDList(Exception):
    """The UID list file does not parse (internal; the store recovers)."""


@dataclass
class UIDList:
    """
    The parsed content of an C{appnet-uidlist} file.

    @ivar uids: Maildir key to UID
    """

    uidvalidity: int
    next_uid: int
    generation: int = 0
    uids: dict[str, int] = field(default_factory=dict)

    def assign(self, key: str) -> int:
        """Give C{key} the next UID (or return the one it has) and return it."""
        uid = self.uids.get(key)
        if uid is None:
            uid = self.uids[key] = self.next_uid
            self.next_uid += 1
        return uid


def fsync_directory(path: str) -> None:
    """Make the entries of directory C{path} durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _signature_of(data: bytes) -> bytes | None:
    parts = data.split(b"\n", _HEADER_LINES)
    if len(parts) <= _HEADER_LINES:
        return None
    return b"\n".join(parts[:_HEADER_LINES])


def peek_signature(folder_path: str) -> bytes | None:
    """
    Return the signature (header lines) of the folder's UID list, or
    C{None} when there is no list or its header is unreadable.
    """
    try:
        fd = os.open(os.path.join(folder_path, UIDLIST_FILE),
                     os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return _signature_of(os.pread(fd, _HEADER_PEEK, 0))
    finally:
        os.close(fd)


def read_uidlist(folder_path: str) -> tuple[UIDList | None, bytes | None]:
    """
    Read a folder's UID list.

    @return: C{(uidlist, signature)}, both C{None} when there is no file
    @raise CorruptUIDList: the file exists but does not parse
    """
    path = os.path.join(folder_path, UIDLIST_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, None
    return parse_uidlist(data), _signature_of(data)


def parse_uidlist(data: bytes) -> UIDList:
    """
    Parse the bytes of an C{appnet-uidlist} file.

    @raise CorruptUIDList: anything out of place, including a torn last line
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptUIDList(str(e)) from None
    if not text.endswith("\n"):
        raise CorruptUIDList("truncated")
    lines = text[:-1].split("\n")
    if len(lines) < _HEADER_LINES or lines[0] != _MAGIC:
        raise CorruptUIDList("bad header")
    try:
        header = [line.split(" ") for line in lines[1:_HEADER_LINES]]
        tags = [pair[0] for pair in header]
        if tags != ["uidvalidity", "next-uid", "generation"]:
            raise ValueError(lines[1:_HEADER_LINES])
        uidvalidity, next_uid, generation = (int(value)
                                             for _, value in header)
        uids: dict[str, int] = {}
        last = 0
        for line in lines[_HEADER_LINES:]:
            uid_text, key = line.split(" ", 1)
            uid = int(uid_text)
            if not last < uid < next_uid or not key or key in uids:
                raise ValueError(line)
            uids[key] = last = uid
    except ValueError as e:
        raise CorruptUIDList(str(e)) from None
    if not 0 < uidvalidity < 2**32:
        raise CorruptUIDList("uidvalidity out of range")
    return UIDList(uidvalidity, next_uid, generation, uids)


def format_uidlist(uidlist: UIDList) -> bytes:
    """Serialise a L{UIDList}; the inverse of L{parse_uidlist}."""
    lines = [_MAGIC, f"uidvalidity {uidlist.uidvalidity}",
             f"next-uid {uidlist.next_uid}",
             f"generation {uidlist.generation}"]
    entries = sorted(uidlist.uids.items(), key=lambda item: item[1])
    lines.extend(f"{uid} {key}" for key, uid in entries)
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_uidlist(folder_path: str, uidlist: UIDList) -> bytes:
    """
    Bump the list's generation and replace the folder's file durably. Call
    under L{folder_lock}.

    @return: the new signature
    """
    uidlist.generation += 1
    path = os.path.join(folder_path, UIDLIST_FILE)
    tmp = path + ".tmp"
    data = format_uidlist(uidlist)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    # Without this a crash could bring back the old list, and with it UIDs
    # already handed out to other messages.
    fsync_directory(folder_path)
    signature = _signature_of(data)
    assert signature is not None
    return signature


def _thread_lock(path: str) -> threading.Lock:
    with _thread_locks_guard:
        lock = _thread_locks.get(path)
        if lock is None:
            lock = _thread_locks[path] = threading.Lock()
        return lock


@contextmanager
def folder_lock(folder_path: str) -> Iterator[None]:
    """
    Hold the folder's lock against other threads and other processes.

    Not reentrant: code running under it must not take it again.

    @raise NoSuchMailbox: the folder directory is gone

    @param folder_path: the folder directory, as an absolute normalised path
        (the key of the in-process lock)
    """
    with _thread_lock(folder_path):
        try:
            fd = os.open(os.path.join(folder_path, UIDLIST_LOCK_FILE),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise NoSuchMailbox(folder_path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # also drops the flock


def allocate_uidvalidity(user_path: str) -> int:
    """
    Return a UIDVALIDITY never handed out before to a folder of this user.
    """
    fd = os.open(os.path.join(user_path, UIDVALIDITY_FILE),
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        last = int(text) if text.isdigit() else 0
        value = max(int(time.time()), last + 1)
        if value >= 2**32:
            # Past 2106 (or after 4e9 folder creations): start again at 1.
            value = 1
        data = f"{value}\n".encode("ascii")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        return value
    finally:
        os.close(fd)
