"""
The zope interfaces through which protocols reach the filesystem store.

A server holds an L{IFileStore}; after login it asks it for the avatar's
L{IFileView} (C{view_for(user)}, C{None} for anonymous) and works only in
that view's I{virtual} paths: C{str}, C{/}-separated, relative to the
avatar's root, checked by L{appnet.filesystem.paths.resolve_path}.

Every method of a view is synchronous and short (one or a few system calls,
a directory scan for L{IFileView.list}); the only long operations, reading
and writing file contents, are streamed (L{IFileWriter},
L{appnet.filesystem.streams.FileProducer}).

The store errors specific to files are defined here, below
L{appnet.errors.StoreError}, so that a protocol that maps only the general
errors still answers them sensibly.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IConsumer
from zope.interface import Attribute, Interface

from appnet.errors import StoreError

__all__ = [
    "AlreadyExists",
    "DirectoryNotEmpty",
    "FileInfo",
    "IFileStore",
    "IFileView",
    "IFileWriter",
    "InvalidOffset",
    "IsADirectory",
    "NotADirectory",
]


class AlreadyExists(StoreError):
    """The target exists and the operation must not replace it (C{mkdir},
    create-only writes; TFTP's "File already exists")."""


class DirectoryNotEmpty(StoreError):
    """C{rmdir} of a directory that still holds entries."""


class IsADirectory(StoreError):
    """A file operation named a directory."""


class NotADirectory(StoreError):
    """A directory operation named a file (or a path runs through a file)."""


class InvalidOffset(StoreError):
    """A read or write offset lies beyond the end of the file (FTP's 554
    for C{REST}, HTTP's 416)."""


@dataclass(frozen=True)
class FileInfo:
    """
    What a listing or C{stat} tells about one entry, enough for FTP's LIST,
    MLSD/MLST facts, SIZE and MDTM and HTTP's headers.

    @ivar name: the entry's name (C{""} for the avatar's root)
    @ivar path: its canonical virtual path (C{/}, C{/docs/a.txt})
    @ivar kind: C{"file"} or C{"dir"} (other kinds are never shown)
    @ivar size: size in bytes (of the target, for a symlink)
    @ivar mtime: POSIX time of the last modification
    @ivar perm: the RFC 3659 C{perm} fact for this avatar: letters from
        C{a} (append), C{c} (create files in), C{d} (delete), C{e} (enter),
        C{f} (rename), C{l} (list), C{m} (make directories in), C{p} (purge
        contents), C{r} (retrieve), C{w} (store); C{""} when it may do none
    """

    name: str
    path: str
    kind: str
    size: int
    mtime: float
    perm: str

    @property
    def is_dir(self) -> bool:
        """True for a directory."""
        return self.kind == "dir"


class IFileWriter(IConsumer):
    """
    An upload in progress: an C{IConsumer} whose C{write} puts bytes on disk
    and charges them to the owner's quota as they arrive.

    C{write} never raises: when a chunk would exceed the quota (or the disk
    fails) the writer undoes its work (see L{IFileView.open_write}), sets
    L{error}, stops its registered producer (a data connection's transport,
    so the connection closes) and drops any further data. The outcome is
    then reported by L{close}. Only streaming (push) producers are accepted,
    like C{twisted.protocols.ftp.FileConsumer}.
    """

    path = Attribute("str: the canonical virtual path being written.")
    error = Attribute(
        "The L{StoreError} (usually L{appnet.errors.QuotaExceeded}) that "
        "ended the upload early, or C{None}. TFTP checks it after each block."
    )
    bytes_written = Attribute("int: bytes accepted so far.")

    def close():
        """
        Finish the upload: flush, and make the file visible in its final
        form (rename into place for a replacing write).

        @return: a Deferred firing with L{bytes_written}, or failing with
            L{error} (or the error met while finishing, e.g.
            C{QuotaExceeded} for a full disk); idempotent
        """

    def abort(keep_partial: bool = False) -> None:
        """
        Give up the upload (the data connection broke, ABOR).

        @param keep_partial: keep what arrived so far (as if C{close} had
            been called), for clients that resume an upload with REST or
            APPE; by default the file is left as it was before
        """


class IFileView(Interface):
    """
    One avatar's view of the store; every path argument is virtual.

    Anonymous (C{user=None}) sees C{public/} as C{/}, read-only, and, when
    the store has a drop box, C{public/incoming/} as C{/incoming}. A user
    sees C{home/<user>/} as C{/}, read-write, and C{public/} as C{/public},
    read-only (its drop box as C{/public/incoming}); a real entry named
    C{public} in the home is shadowed. Other users' homes cannot be named.

    In a drop box the avatar may create new files and enter the directory,
    and nothing else: no listing, no C{stat} of its contents, no reading,
    overwriting, appending, renaming or deleting.

    @raise appnet.errors.PathOutsideRoot: (any method) the path tries to
        escape (see L{appnet.filesystem.paths})
    @raise appnet.errors.PermissionDenied: (any method) the avatar may not
        do this here, or the path names appnet's own temporary files
    """

    user = Attribute("str or None: the avatar's user name, None for anonymous.")

    def list(path: str = "/") -> list[FileInfo]:
        """
        The entries of a directory, sorted by name; entries that cannot be
        addressed (symlinks leading outside, special files, names that are
        not valid virtual names, appnet's temporary files) are left out.

        @raise NotFound: no such directory
        @raise NotADirectory: C{path} is a file
        """

    def stat(path: str) -> FileInfo:
        """
        @raise NotFound: no such file or directory
        """

    def exists(path: str) -> bool:
        """
        Whether C{path} names a file or directory this avatar may C{stat}.

        @raise appnet.errors.PermissionDenied: inside a drop box (existence
            there is not disclosed)
        """

    def open_read(path: str, offset: int = 0):
        """
        Open a regular file for reading.

        @param offset: where to start (FTP REST, HTTP Range)
        @return: a binary file object positioned at C{offset}; the caller
            owns it (closes it, or hands it to a producer that does). Use
            C{os.fstat(f.fileno())} for a size consistent with the contents.
        @raise NotFound: no such file
        @raise IsADirectory: C{path} is a directory
        @raise InvalidOffset: C{offset} is beyond the end of the file
        """

    def open_write(path: str, *, offset: int = 0, append: bool = False,
                   exclusive: bool = False) -> IFileWriter:
        """
        Start an upload.

          - default (FTP STOR, TFTP WRQ when replacing is allowed): the data
            goes to a hidden temporary file in the same directory that
            replaces the target atomically on C{close}; readers see the old
            file until then, and on failure the temporary file is removed.
          - C{offset} > 0 (FTP REST + STOR): write into the existing file in
            place from C{offset} (not truncated); on failure it is truncated
            back to its former size.
          - C{append} (FTP APPE): write in place at the end, creating the
            file if missing; on failure truncated back (or removed if it was
            created).
          - C{exclusive} (TFTP WRQ, drop boxes): create a new file, refusing
            an existing one, under its final name; removed on failure.
            Writes into a drop box are always exclusive.

        The quota counts a replacing write as its final size minus the size
        of the file it replaces, so replacing a file needs no room for both.

        @raise NotFound: the directory does not exist (or, with C{offset},
            the file)
        @raise IsADirectory: C{path} is a directory
        @raise AlreadyExists: C{exclusive} and the file exists
        @raise InvalidOffset: C{offset} beyond the end of the file
        @raise ValueError: C{offset} < 0, or more than one mode given
        """

    def open_unique(directory: str = "/", hint: str | None = None) -> IFileWriter:
        """
        Create a file with a name nobody else has (FTP STOU): C{hint} if it
        is free, else C{hint.1}, C{hint.2}, ... The name is taken at once
        (exclusive create), so concurrent calls never collide; the writer's
        C{path} tells which name was chosen.

        @raise NotFound: the directory does not exist
        """

    def mkdir(path: str) -> None:
        """
        @raise AlreadyExists: something exists at C{path}
        @raise NotFound: the parent does not exist
        """

    def rmdir(path: str) -> None:
        """
        @raise DirectoryNotEmpty: it holds entries
        @raise NotADirectory: C{path} is a file
        @raise NotFound: no such directory
        """

    def remove(path: str) -> None:
        """
        Delete a file (or a symlink, not its target).

        @raise IsADirectory: C{path} is a directory
        @raise NotFound: no such file
        """

    def rename(old: str, new: str) -> None:
        """
        Rename or move within one writable area. An existing file at C{new}
        is replaced, as POSIX C{rename} and most FTP servers do.

        @raise NotFound: C{old} does not exist
        @raise DirectoryNotEmpty: C{new} is a directory holding entries
        @raise IsADirectory: C{old} is a file and C{new} a directory
        @raise NotADirectory: C{old} is a directory and C{new} a file
        """


class IFileStore(Interface):
    """
    The filesystem store: C{public/} and C{home/<user>/} under one root.
    """

    root = Attribute("str: the real host path of the store's root directory.")

    def view_for(user: str | None = None) -> IFileView:
        """
        The view of an authenticated user (their home is created on demand),
        or of anonymous for C{None}.

        @raise appnet.errors.PermissionDenied: C{user} is not a name that can
            be a directory (empty, C{.}, holds C{/}...)
        """

    def quota(user: str) -> tuple[int, int | None]:
        """Return (bytes used in the user's home, byte limit or None)."""
