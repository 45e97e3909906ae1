"""
Mailbox store errors that refine the classes of L{appnet.errors}.

Each one derives from an L{appnet.errors.StoreError} class, so protocols that
map store errors to the wire handle them with no extra code; the ones caused
by a malformed argument also derive from L{ValueError}.
"""

from __future__ import annotations

from appnet.errors import MailboxLocked, NoSuchUser, StoreError


class InvalidUserName(NoSuchUser, ValueError):
    """
    The user name is malformed, so no such user can exist.

    Allowed: 1 to 64 of lowercase ASCII letters, digits, C{.}, C{_}, C{-},
    not starting with C{.}.
    """


class InvalidFolderName(StoreError, ValueError):
    """
    The folder name is malformed or cannot be stored unambiguously.

    See L{appnet.mailbox.names} for the rules.
    """


class InvalidFlag(StoreError, ValueError):
    """
    A flag is not a settable IMAP system flag nor a valid keyword atom.
    """


class TooManyKeywords(StoreError):
    """
    The folder has used all 26 Maildir keyword letters (C{a}-C{z}), so a new
    keyword cannot be stored in the file name.
    """


class KeywordsLocked(MailboxLocked):
    """
    The Dovecot-compatible C{dovecot-keywords.lock} stayed taken for longer
    than we are prepared to wait.
    """
