"""
The zope interfaces through which protocols reach the mailbox store.

SMTP delivers with L{IMailboxStore.deliver}; POP3 takes an exclusive
L{IMailboxStore.lock_maildrop} on INBOX and reads it through L{IFolder};
IMAP shares folders through the same L{IFolder} objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zope.interface import Attribute, Interface


@dataclass(frozen=True)
class MessageInfo:
    """
    One message in a folder, as the last scan saw it.

    @ivar uid: IMAP UID, stable for the life of the folder's UIDVALIDITY
    @ivar key: the Maildir unique name (the file's base name before C{:2,})
    @ivar size: size in octets of the message as stored (LF line ends)
    @ivar rfc822_size: size in octets with every line ending CRLF, as POP3
        LIST and IMAP RFC822.SIZE report it
    @ivar flags: IMAP system flags (C{\\Seen}, C{\\Answered}, C{\\Flagged},
        C{\\Deleted}, C{\\Draft}) and keywords, as a frozenset of str
    @ivar internal_date: POSIX time the message arrived
    @ivar recent: True while it sits in C{new/}
    """

    uid: int
    key: str
    size: int
    rfc822_size: int
    flags: frozenset[str] = field(default_factory=frozenset)
    internal_date: float = 0.0
    recent: bool = False


class IFolder(Interface):
    """One Maildir++ folder of one user."""

    name = Attribute("Folder name, C{INBOX} or e.g. C{Sent} or C{Work/2026}.")
    uidvalidity = Attribute("int: the folder's UIDVALIDITY.")

    def messages() -> list[MessageInfo]:
        """
        Rescan the folder and return its messages in ascending UID order.
        """

    def next_uid() -> int:
        """The UID the next message added to this folder will get."""

    def open_message(uid: int):
        """
        Open the message for reading in binary mode.

        @return: a binary file object; the caller closes it
        @raise NoSuchMessage: when it is gone
        """

    def read_message(uid: int) -> bytes:
        """
        Return the whole message as stored.

        @raise NoSuchMessage: when it is gone
        """

    def set_flags(uid: int, flags: frozenset[str]) -> MessageInfo:
        """
        Replace the message's flags (renames the file's info suffix; also
        moves it from C{new/} to C{cur/}).

        @raise NoSuchMessage: when it is gone
        """

    def add_message(message: bytes, flags: frozenset[str] = frozenset(),
                    internal_date: float | None = None) -> MessageInfo:
        """
        Store a message durably (tmp/, fsync, rename) and return its info.
        Blocking: call from a thread, or through L{IMailboxStore.deliver}.

        @raise QuotaExceeded: when it would exceed the owner's quota
        """

    def expunge(uids: list[int]) -> list[int]:
        """
        Remove these messages for good; return the UIDs actually removed.
        """


class IMaildropLock(Interface):
    """An exclusive hold on a user's INBOX for one POP3 session."""

    folder = Attribute("The locked L{IFolder} (INBOX).")

    def release() -> None:
        """Release the lock. Idempotent."""


class IMailboxStore(Interface):
    """Every user's mail, one Maildir++ per user."""

    def deliver(user: str, message: bytes, folder: str = "INBOX",
                flags: frozenset[str] = frozenset(), assign_uid: bool = True):
        """
        Deliver a message into a user's folder.

        With C{assign_uid=False} the store may leave numbering the message
        to the next scan of the folder (the L{MessageInfo}'s C{uid} is then
        0): for delivery agents that have no use for the UID.

        @return: a Deferred firing with the new L{MessageInfo} only once the
            message is durable on disk (written to tmp/, fsynced, renamed
            into new/ and the directory fsynced)
        @raise NoSuchUser: (as the Deferred's failure) unknown user
        @raise QuotaExceeded: (as the Deferred's failure) over quota
        """

    def folder(user: str, name: str = "INBOX") -> IFolder:
        """
        Return the user's folder (the user's maildir is created on demand).

        @raise NoSuchMailbox: the folder does not exist
        """

    def list_folders(user: str) -> list[str]:
        """Names of the user's folders, C{INBOX} first."""

    def create_folder(user: str, name: str) -> IFolder:
        """@raise MailboxExists: it exists already"""

    def delete_folder(user: str, name: str) -> None:
        """@raise NoSuchMailbox: it does not exist"""

    def rename_folder(user: str, old: str, new: str) -> None:
        """@raise NoSuchMailbox, MailboxExists:"""

    def lock_maildrop(user: str) -> IMaildropLock:
        """
        Take the exclusive POP3 lock on the user's INBOX (within this
        process and against other processes through a lock file).

        @raise MailboxLocked: another session holds it
        """

    def quota(user: str) -> tuple[int, int | None]:
        """Return (bytes used, byte limit or None for unlimited)."""
