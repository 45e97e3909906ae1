"""
An in-memory L{IMailboxStore}, for tests (yours and ours).

It behaves like L{appnet.mailbox.MaildirStore} (UIDs, flags, quota, the
maildrop lock, LF storage) but keeps nothing on disk, so protocol tests run
without a temp dir and C{deliver} fires synchronously.
"""

from __future__ import annotations

import io
import time
from typing import Callable

from twisted.internet import defer
from zope.interface import implementer

from appnet.errors import (
    MailboxExists,
    MailboxLocked,
    NoSuchMailbox,
    NoSuchMessage,
    NoSuchUser,
    QuotaExceeded,
)
from appnet.mailbox.interfaces import IFolder, IMailboxStore, IMaildropLock, MessageInfo

__all__ = ["MemoryMailboxStore"]


@implementer(IFolder)
class _MemoryFolder:
    def __init__(self, store: "MemoryMailboxStore", user: str, name: str) -> None:
        self._store = store
        self.user = user
        self.name = name
        self.uidvalidity = int(time.time())
        self._next = 1
        self._data: dict[int, bytes] = {}
        self._info: dict[int, MessageInfo] = {}

    def messages(self) -> list[MessageInfo]:
        return [self._info[uid] for uid in sorted(self._info)]

    def next_uid(self) -> int:
        return self._next

    def _get(self, uid: int) -> bytes:
        try:
            return self._data[uid]
        except KeyError:
            raise NoSuchMessage(uid) from None

    def open_message(self, uid: int):
        return io.BytesIO(self._get(uid))

    def read_message(self, uid: int) -> bytes:
        return self._get(uid)

    def set_flags(self, uid: int, flags: frozenset[str]) -> MessageInfo:
        self._get(uid)
        old = self._info[uid]
        info = self._info[uid] = MessageInfo(
            old.uid, old.key, old.size, old.rfc822_size, frozenset(flags), old.internal_date, False
        )
        return info

    def add_message(self, message: bytes, flags: frozenset[str] = frozenset(),
                    internal_date: float | None = None) -> MessageInfo:
        data = message.replace(b"\r\n", b"\n")
        used, limit = self._store.quota(self.user)
        if limit is not None and used + len(data) > limit:
            raise QuotaExceeded(f"{self.user}: {used} + {len(data)} > {limit}")
        uid = self._next
        self._next += 1
        self._data[uid] = data
        info = self._info[uid] = MessageInfo(
            uid,
            f"mem{uid}",
            len(data),
            len(data) + data.count(b"\n"),
            frozenset(flags),
            internal_date if internal_date is not None else time.time(),
            not flags,
        )
        return info

    def expunge(self, uids: list[int]) -> list[int]:
        gone = [uid for uid in uids if uid in self._data]
        for uid in gone:
            del self._data[uid], self._info[uid]
        return gone


@implementer(IMaildropLock)
class _MemoryLock:
    def __init__(self, store: "MemoryMailboxStore", user: str, folder: _MemoryFolder) -> None:
        self._store = store
        self._user = user
        self.folder = folder

    def release(self) -> None:
        self._store._locked.discard(self._user)


@implementer(IMailboxStore)
class MemoryMailboxStore:
    """
    Mail kept in memory.

    @param quota_for: user -> byte limit or None
    @param user_exists: user -> bool; by default every user exists
    """

    def __init__(
        self,
        quota_for: Callable[[str], int | None] = lambda user: None,
        user_exists: Callable[[str], bool] = lambda user: True,
    ) -> None:
        self.quota_for = quota_for
        self.user_exists = user_exists
        self._folders: dict[str, dict[str, _MemoryFolder]] = {}
        self._locked: set[str] = set()

    def _user(self, user: str) -> dict[str, _MemoryFolder]:
        if not self.user_exists(user):
            raise NoSuchUser(user)
        folders = self._folders.get(user)
        if folders is None:
            folders = self._folders[user] = {"INBOX": _MemoryFolder(self, user, "INBOX")}
        return folders

    def deliver(self, user: str, message: bytes, folder: str = "INBOX",
                flags: frozenset[str] = frozenset(), assign_uid: bool = True) -> defer.Deferred:
        return defer.maybeDeferred(lambda: self.folder(user, folder).add_message(message, flags))

    def folder(self, user: str, name: str = "INBOX") -> _MemoryFolder:
        try:
            return self._user(user)[name]
        except KeyError:
            raise NoSuchMailbox(name) from None

    def list_folders(self, user: str) -> list[str]:
        names = sorted(self._user(user))
        names.remove("INBOX")
        return ["INBOX"] + names

    def create_folder(self, user: str, name: str) -> _MemoryFolder:
        folders = self._user(user)
        if name in folders:
            raise MailboxExists(name)
        folders[name] = _MemoryFolder(self, user, name)
        return folders[name]

    def delete_folder(self, user: str, name: str) -> None:
        folders = self._user(user)
        if name not in folders or name == "INBOX":
            raise NoSuchMailbox(name)
        del folders[name]

    def rename_folder(self, user: str, old: str, new: str) -> None:
        folders = self._user(user)
        if old not in folders:
            raise NoSuchMailbox(old)
        if new in folders:
            raise MailboxExists(new)
        folders[new] = folders.pop(old)
        folders[new].name = new

    def lock_maildrop(self, user: str) -> _MemoryLock:
        inbox = self.folder(user)
        if user in self._locked:
            raise MailboxLocked(user)
        self._locked.add(user)
        return _MemoryLock(self, user, inbox)

    def quota(self, user: str) -> tuple[int, int | None]:
        used = sum(
            len(data) for f in self._folders.get(user, {}).values() for data in f._data.values()
        )
        return used, self.quota_for(user)
