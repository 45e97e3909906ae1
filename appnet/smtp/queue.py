"""
The durable outbound mail queue: messages waiting to be relayed.

Layout
======
One directory (C{<data_dir>/queue}) with one or two files per message::

    <id>.msg      one line of JSON, the envelope as queued (see
                  L{QueueEntry}), then the message exactly as accepted
    <id>.env      the delivery state, the same JSON, once an attempt has
                  been recorded
    *.tmp         files being written; never read
    relay.lock    flock()ed by the one relay worker of this queue

Durability
==========
L{OutboundQueue.enqueue} writes C{<id>.msg} to a C{.tmp} name, fsyncs it,
renames it into place and fsyncs the directory (one file fsync, one
directory fsync); only then does its Deferred fire, and only then may the
SMTP server say 250. A message is queued exactly when its C{.msg} exists;
its state is the C{.env} if there is one, else the envelope in the C{.msg}.

After each delivery attempt the state is written to C{.env} the same way
(C{.tmp}, fsync, rename over, fsync the directory), so a kill -9 leaves the
old state or the new one, never a torn one. C{remove} unlinks C{.msg}
first, then C{.env}.

A scan (L{OutboundQueue.load}) ignores C{.tmp} files and a C{.env} without
its C{.msg}, and removes them once older than L{LEFTOVER_AGE} (a younger
C{.tmp} may be an enqueue in progress, in this process or another one).
They can only be left by a crash inside C{enqueue} (never acknowledged, so
the client still holds the message), an update (the old state stands) or
C{remove} (already finished), so removing them loses nothing.

The cost of this is at-least-once delivery: a crash after the next hop
accepted a message but before the new state reached the disk sends it again
after a restart. RFC 5321 §6.1 forbids losing an accepted message to a
crash; an occasional duplicate is the price.

Everything here blocks on the filesystem and runs through C{run_blocking}
(a thread by default), as L{appnet.mailbox.maildir} does.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from appnet.mailbox.uidlist import fsync_directory

__all__ = ["DELIVERED", "FAILED", "PENDING", "OutboundQueue", "QueueEntry", "RecipientState", "WorkerLock"]

_log = Logger()

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"

_FORMAT = 1

#: The worker lock's file in the queue directory.
LOCK_FILE = "relay.lock"

#: Seconds after which a C{.tmp} file or half a message is a crash's leftover.
LEFTOVER_AGE = 3600

# Seams for the durability tests, which record the order of these calls.
_fsync = os.fsync
_fsync_directory = fsync_directory
_rename = os.rename
_unlink = os.unlink
_ID = re.compile(r"^[0-9]{10}-[0-9a-f]{32}$")


@dataclass
class RecipientState:
    """
    Where one recipient of a queued message stands.

    @ivar address: the envelope recipient
    @ivar state: L{PENDING}, L{DELIVERED} or L{FAILED}
    @ivar attempts: delivery attempts made so far
    @ivar next_attempt: when to try next (POSIX time)
    @ivar code: the last SMTP reply code, L{None} for none (or a non-SMTP
        error)
    @ivar error: the last reply text or error description
    """

    address: str
    state: str = PENDING
    attempts: int = 0
    next_attempt: float = 0.0
    code: int | None = None
    error: str = ""


@dataclass
class QueueEntry:
    """
    The envelope and delivery state of one queued message (the C{.env} file).

    @ivar id: the queue id (also the file names' stem)
    @ivar sender: the envelope sender; C{""} is the null reverse-path
    @ivar arrival: when it was queued (POSIX time)
    @ivar size: the message's length in bytes
    @ivar recipients: one L{RecipientState} per envelope recipient
    """

    id: str
    sender: str
    arrival: float
    size: int
    recipients: list[RecipientState] = field(default_factory=list)

    def pending(self) -> list[RecipientState]:
        """The recipients still to deliver."""
        return [r for r in self.recipients if r.state == PENDING]

    def next_attempt(self) -> float | None:
        """When the earliest pending recipient is due, L{None} when done."""
        return min((r.next_attempt for r in self.pending()), default=None)

    def to_json(self) -> bytes:
        """The entry as one line of JSON (a C{.env} file, a C{.msg} file's first line)."""
        return json.dumps({"format": _FORMAT, **asdict(self)}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> QueueEntry:
        """
        Parse a C{.env} file.

        @raise ValueError: not one we wrote
        """
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.pop("format", None) != _FORMAT:
            raise ValueError("unknown queue file format")
        try:
            recipients = [RecipientState(**r) for r in raw.pop("recipients")]
            return cls(recipients=recipients, **raw)
        except (KeyError, TypeError) as e:
            raise ValueError(f"bad queue entry: {e}") from None


class WorkerLock:
    """The held worker lock of a queue (see L{OutboundQueue.try_worker_lock})."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another worker take over. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class OutboundQueue:
    """
    The queue directory; see this module's docstring.

    Watchers (L{watch}) hear of each message once it is durable, which is
    how the relay worker learns of new mail without polling.
    """

    def __init__(
        self,
        directory: str,
        *,
        run_blocking: Callable[..., defer.Deferred[Any]] | None = None,
        now: Callable[[], float] | None = None,
    ) -> None:
        """
        @param directory: the queue directory (created if missing)
        @param run_blocking: C{run_blocking(f, *args)} runs blocking work and
            returns a Deferred of its result; default
            L{twisted.internet.threads.deferToThread}
        @param now: the clock for arrival times; default L{time.time}
        """
        if run_blocking is None:
            from twisted.internet.threads import deferToThread

            run_blocking = deferToThread
        if now is None:
            now = time.time
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._run_blocking = run_blocking
        self._now = now
        self._watchers: list[Callable[[QueueEntry], None]] = []

    def __repr__(self) -> str:
        return f"<OutboundQueue at {self.directory}>"

    def watch(self, watcher: Callable[[QueueEntry], None]) -> None:
        """Call C{watcher(entry)} for each message enqueued from now on."""
        self._watchers.append(watcher)

    def unwatch(self, watcher: Callable[[QueueEntry], None]) -> None:
        """Stop calling C{watcher}."""
        self._watchers.remove(watcher)

    def enqueue(self, sender: str, recipients: list[str], message: bytes) -> defer.Deferred[str]:
        """
        Queue a message for C{recipients}.

        @return: a Deferred firing with the queue id once the message and
            its envelope are durable
        """
        if not recipients:
            return defer.fail(ValueError("a queued message needs a recipient"))
        now = self._now()
        entry = QueueEntry(
            id=f"{int(now):010d}-{uuid.uuid4().hex}",
            sender=sender,
            arrival=now,
            size=len(message),
            recipients=[RecipientState(r, next_attempt=now) for r in recipients],
        )

        def durable(_: None) -> str:
            for watcher in list(self._watchers):
                watcher(entry)
            return entry.id

        d = defer.maybeDeferred(self._run_blocking, self._write_new, entry, message)
        return d.addCallback(durable)

    def load(self, known: Collection[str] = frozenset()) -> defer.Deferred[list[QueueEntry]]:
        """
        Scan the directory, clean what a crash left, and return every
        queued message's entry, oldest first.

        @param known: ids the caller holds already; not read again
        """
        return defer.maybeDeferred(self._run_blocking, self._scan, frozenset(known))

    def try_worker_lock(self) -> WorkerLock | None:
        """
        Take the queue's worker lock (an exclusive C{flock} on
        C{relay.lock}), or return L{None} when another worker holds it. The
        kernel drops it when its holder dies.
        """
        fd = os.open(os.path.join(self.directory, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return WorkerLock(fd)

    def read_message(self, queue_id: str) -> defer.Deferred[bytes]:
        """The bytes of a queued message."""
        return defer.maybeDeferred(lambda: self._run_blocking(self._read_message, self._path(queue_id, "msg")))

    def update(self, entry: QueueEntry) -> defer.Deferred[None]:
        """Replace a message's state on disk atomically and durably."""
        return defer.maybeDeferred(self._run_blocking, self._write_entry, entry)

    def remove(self, queue_id: str) -> defer.Deferred[None]:
        """Forget a message whose recipients are all done."""
        return defer.maybeDeferred(self._run_blocking, self._remove, queue_id)

    # -- blocking work -----------------------------------------------------

    def _path(self, queue_id: str, kind: str) -> str:
        if not _ID.match(queue_id):
            raise ValueError(f"not a queue id: {queue_id!r}")
        return os.path.join(self.directory, f"{queue_id}.{kind}")

    @staticmethod
    def _read_message(path: str) -> bytes:
        with open(path, "rb") as f:
            f.readline()  # the envelope as queued
            return f.read()

    def _read_entry(self, queue_id: str, updated: bool) -> QueueEntry:
        if updated:
            with open(self._path(queue_id, "env"), "rb") as f:
                return QueueEntry.from_json(f.read())
        with open(self._path(queue_id, "msg"), "rb") as f:
            return QueueEntry.from_json(f.readline())

    def _write_tmp(self, final: str, data: bytes) -> str:
        tmp = f"{final}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            _fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def _write_new(self, entry: QueueEntry, message: bytes) -> None:
        msg_path = self._path(entry.id, "msg")
        _rename(self._write_tmp(msg_path, entry.to_json() + b"\n" + message), msg_path)
        _fsync_directory(self.directory)

    def _write_entry(self, entry: QueueEntry) -> None:
        env_path = self._path(entry.id, "env")
        _rename(self._write_tmp(env_path, entry.to_json()), env_path)
        _fsync_directory(self.directory)

    def _remove(self, queue_id: str) -> None:
        for kind in ("msg", "env"):
            try:
                _unlink(self._path(queue_id, kind))
            except FileNotFoundError:
                pass
        _fsync_directory(self.directory)

    def _scan(self, known: frozenset[str]) -> list[QueueEntry]:
        kinds: dict[str, set[str]] = {}
        leftovers = []
        for name in os.listdir(self.directory):
            stem, _, kind = name.partition(".")
            if name.endswith(".tmp"):
                leftovers.append(name)
            elif _ID.match(stem) and kind in ("msg", "env"):
                kinds.setdefault(stem, set()).add(kind)
        entries = []
        for queue_id, present in sorted(kinds.items()):
            if "msg" not in present:
                leftovers.append(f"{queue_id}.env")  # of a removal
                continue
            if queue_id in known:
                continue
            try:
                entry = self._read_entry(queue_id, updated="env" in present)
            except FileNotFoundError:
                continue  # finished and removed since the listing
            except ValueError as e:
                # Not torn (renames are atomic): a file someone else wrote.
                # Set it aside for a human rather than stop the relay.
                _log.error("queue: {id}: unreadable state ({error}); set aside", id=queue_id, error=e)
                for kind in present:
                    os.rename(self._path(queue_id, kind), self._path(queue_id, kind) + ".corrupt")
                continue
            entries.append(entry)
        self._remove_leftovers(leftovers)
        return entries

    def _remove_leftovers(self, names: list[str]) -> None:
        # A fresh half may be an enqueue in progress (in this process or
        # another one sharing the directory): only old ones are a crash's.
        horizon = time.time() - LEFTOVER_AGE
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                if os.stat(path).st_mtime < horizon:
                    _log.info("queue: removing {name}, left by a crash", name=name)
                    os.unlink(path)
            except FileNotFoundError:
                pass
