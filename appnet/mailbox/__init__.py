"""
The mailbox store: every user's mail, one Maildir++ per user.

Protocols use it through L{IMailboxStore} and L{IFolder}; L{MaildirStore}
is the implementation (see L{appnet.mailbox.maildir} for the on-disk
layout).
"""

from appnet.mailbox.errors import (
    InvalidFlag,
    InvalidFolderName,
    InvalidUserName,
    KeywordsLocked,
    TooManyKeywords,
)
from appnet.mailbox.interfaces import (
    IFolder,
    IMaildropLock,
    IMailboxStore,
    MessageInfo,
)
from appnet.mailbox.maildir import (
    MaildirFolder,
    MaildirMaildropLock,
    MaildirStore,
)

__all__ = [
    "IFolder",
    "IMaildropLock",
    "IMailboxStore",
    "InvalidFlag",
    "InvalidFolderName",
    "InvalidUserName",
    "KeywordsLocked",
    "MaildirFolder",
    "MaildirMaildropLock",
    "MaildirStore",
    "MessageInfo",
    "TooManyKeywords",
]
