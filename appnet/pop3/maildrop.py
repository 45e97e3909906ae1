"""
A user's INBOX seen as a POP3 maildrop (C{twisted.mail.pop3.IMailbox}).

The session takes the exclusive maildrop lock at login and a snapshot of the
INBOX: message numbers stay fixed for the whole session (RFC 1939 section 4)
even if new mail arrives. DELE only marks; nothing touches the disk until
L{Maildrop.sync} (the UPDATE state, entered by QUIT): then marked messages
are expunged and retrieved ones flagged C{\\Seen}. A session that ends any
other way (timeout, dropped connection, kill -9) changes nothing.
"""

from __future__ import annotations

from typing import IO, Callable

from twisted.mail.pop3 import IMailbox
from zope.interface import implementer

from appnet.errors import NoSuchMessage
from appnet.mailbox.interfaces import IMailboxStore, IMaildropLock, MessageInfo

__all__ = ["Maildrop", "maildrop_avatar_factory", "uidl_for"]


def uidl_for(uidvalidity: int, uid: int) -> bytes:
    """
    The POP3 unique-id of a message: 16 hex digits from UIDVALIDITY and UID,
    as Dovecot's C{%08Xv%08Xu} does, so it never changes while the message
    exists and is never reused (RFC 1939 section 7).
    """
    return b"%08x%08x" % (uidvalidity, uid)


@implementer(IMailbox)
class Maildrop:
    """
    One POP3 session's view of a user's INBOX.

    @param lock: the exclusive maildrop lock (released on logout)
    """

    def __init__(self, lock: IMaildropLock) -> None:
        self._lock = lock
        self._folder = lock.folder
        self._messages: list[MessageInfo] = self._folder.messages()
        self._deleted: set[int] = set()
        self._retrieved: set[int] = set()
        self._uidvalidity = self._folder.uidvalidity

    def _info(self, i: int) -> MessageInfo:
        if not 0 <= i < len(self._messages):
            raise ValueError(f"no message {i + 1}")
        return self._messages[i]

    # IMailbox: sizes of deleted messages are 0 (the interface's convention).
    def listMessages(self, i: int | None = None):
        """The size of message C{i}, or of every message (0 if deleted)."""
        if i is None:
            return [
                0 if n in self._deleted else m.rfc822_size
                for n, m in enumerate(self._messages)
            ]
        info = self._info(i)
        return 0 if i in self._deleted else info.rfc822_size

    def is_deleted(self, i: int) -> bool:
        """True if message C{i} (0-based) is marked for deletion."""
        self._info(i)
        return i in self._deleted

    def getMessage(self, i: int) -> IO[bytes]:
        """
        Open message C{i} for reading.

        @raise ValueError: no such message, or it is deleted
        @raise NoSuchMessage: it vanished from the disk
        """
        info = self._info(i)
        if i in self._deleted:
            raise ValueError(f"message {i + 1} is deleted")
        f = self._folder.open_message(info.uid)
        self._retrieved.add(i)
        return f

    def read_message(self, i: int) -> bytes:
        """The whole of message C{i}, as stored (a fast path for small ones)."""
        info = self._info(i)
        if i in self._deleted:
            raise ValueError(f"message {i + 1} is deleted")
        data = self._folder.read_message(info.uid)
        self._retrieved.add(i)
        return data

    def getUidl(self, i: int) -> bytes:
        """The unique-id of message C{i}; ValueError if deleted or absent."""
        info = self._info(i)
        if i in self._deleted:
            raise ValueError(f"message {i + 1} is deleted")
        return uidl_for(self._uidvalidity, info.uid)

    def deleteMessage(self, i: int) -> None:
        """Mark message C{i} for deletion at QUIT."""
        self._info(i)
        if i in self._deleted:
            raise ValueError(f"message {i + 1} already deleted")
        self._deleted.add(i)

    def undeleteMessages(self) -> None:
        """Unmark every message (RSET)."""
        self._deleted.clear()

    def sync(self) -> None:
        """
        Enter the UPDATE state: expunge marked messages, flag retrieved ones
        C{\\Seen}. Messages that vanished meanwhile are skipped.
        """
        self._folder.expunge([self._messages[i].uid for i in sorted(self._deleted)])
        for i in sorted(self._retrieved - self._deleted):
            info = self._messages[i]
            if "\\Seen" in info.flags:
                continue
            try:
                self._folder.set_flags(info.uid, info.flags | {"\\Seen"})
            except NoSuchMessage:
                pass
        self._deleted.clear()
        self._retrieved.clear()

    def logout(self) -> None:
        """Release the maildrop lock (no changes are applied here)."""
        self._lock.release()


def maildrop_avatar_factory(
    store: IMailboxStore,
) -> Callable[[str], tuple[Maildrop, Callable[[], None]]]:
    """
    A factory for L{appnet.accounts.AppnetRealm.register}: locks the user's
    maildrop and returns C{(maildrop, logout)}.

    @raise MailboxLocked: another session holds the maildrop
    """

    def factory(user: str) -> tuple[Maildrop, Callable[[], None]]:
        lock = store.lock_maildrop(user)
        try:
            maildrop = Maildrop(lock)
        except BaseException:
            lock.release()
            raise
        return maildrop, maildrop.logout

    return factory
