"""
The root of appnet's exception tree.

Protocols map these to their own wire errors (C{-ERR}, 550, C{NO}, RCODE,
TFTP ERROR); anything not derived from L{AppnetError} is treated as a bug on
our side and answered with a generic temporary failure.
"""


class AppnetError(Exception):
    """Base class of every error appnet raises on purpose."""


class ConfigError(AppnetError):
    """
    A configuration value is invalid.

    @ivar key: dotted key, e.g. C{pop3.listen}
    @ivar value: the offending value
    @ivar allowed: a short description of what is allowed
    """

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"config: {key} = {value!r}: {allowed}")


class ProtocolError(AppnetError):
    """A protocol-level failure."""


class PeerError(ProtocolError):
    """The peer broke the protocol (bad syntax, wrong state, too long)."""


class ServerError(ProtocolError):
    """We failed to honour a valid request (our fault, usually temporary)."""


class StoreError(AppnetError):
    """Base class of the mailbox and filesystem store errors."""


class NoSuchUser(StoreError):
    """The named account does not exist."""


class UserExists(StoreError):
    """An account with that name already exists."""


class NoSuchMailbox(StoreError):
    """The named mailbox folder does not exist."""


class MailboxExists(StoreError):
    """A mailbox folder with that name already exists."""


class NoSuchMessage(StoreError):
    """The message (by UID or key) does not exist (any more)."""


class MailboxLocked(StoreError):
    """The maildrop is held exclusively by another session (POP3 [IN-USE])."""


class PermissionDenied(StoreError):
    """The avatar may not do this to this object."""


class PathOutsideRoot(PermissionDenied):
    """A path tried to escape its root (C{..}, absolute, symlink, NUL...)."""


class NotFound(StoreError):
    """A file or directory does not exist."""


class QuotaExceeded(StoreError):
    """The write would take the account over its quota."""
