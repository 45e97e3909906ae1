"""
The FTP avatar: an C{IFTPShell} over one L{appnet.filesystem.FileView}.

The realm hands L{FTPShell} to the FTP server after login (anonymous or a
user). It implements Twisted's C{IFTPShell} (segment lists, Deferreds), so
anything written for Twisted's FTP can drive it, and carries the avatar's
L{view} for what C{IFTPShell} cannot express (offsets, append, unique names,
RFC 3659 facts), which L{appnet.ftp.server.FTPServer} uses directly.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.cred.checkers import ANONYMOUS
from twisted.internet import defer
from twisted.protocols import ftp as _tftp
from twisted.python.filepath import Permissions
from zope.interface import implementer

from appnet.errors import NotFound, PermissionDenied, StoreError
from appnet.filesystem import FileInfo, IFileStore, IFileView, IsADirectory, NotADirectory

__all__ = ["FTPShell", "shell_factory"]


def _path(segments: list[str]) -> str:
    return "/" + "/".join(segments)


def _twisted_error(e: StoreError) -> Exception:
    """Map a store error to Twisted's FTP error (which carries its reply code)."""
    if isinstance(e, PermissionDenied):
        return _tftp.PermissionDeniedError(str(e))
    if isinstance(e, NotFound):
        return _tftp.FileNotFoundError(str(e))
    if isinstance(e, IsADirectory):
        return _tftp.IsADirectoryError(str(e))
    if isinstance(e, NotADirectory):
        return _tftp.IsNotADirectoryError(str(e))
    return _tftp.FileNotFoundError(str(e))


def _call(f: Callable[..., Any], *args: Any) -> defer.Deferred:
    try:
        return defer.succeed(f(*args))
    except StoreError as e:
        return defer.fail(_twisted_error(e))


def _stat_keys(info: FileInfo, keys: tuple[str, ...], user: str | None) -> list[Any]:
    mode = 0o755 if info.is_dir else 0o644
    if "w" not in info.perm and "c" not in info.perm:
        mode &= ~0o222
    values = {
        "size": info.size,
        "directory": info.is_dir,
        "permissions": Permissions(mode),
        "hardlinks": 1,
        "modified": info.mtime,
        "owner": user or "ftp",
        "group": user or "ftp",
    }
    return [values[k] for k in keys]


@implementer(_tftp.IReadFile)
class _ReadFile:
    def __init__(self, file: Any) -> None:
        self._file = file

    def send(self, consumer: Any) -> defer.Deferred:
        from appnet.filesystem import stream_file

        return stream_file(self._file, consumer)


@implementer(_tftp.IWriteFile)
class _WriteFile:
    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def receive(self) -> defer.Deferred:
        return defer.succeed(self._writer)

    def close(self) -> defer.Deferred:
        return self._writer.close()


@implementer(_tftp.IFTPShell)
class FTPShell:
    """
    One logged-in FTP avatar.

    @ivar view: the avatar's L{IFileView} (virtual paths)
    @ivar user: the user name, C{None} for anonymous
    """

    def __init__(self, view: IFileView) -> None:
        self.view = view
        self.user = view.user

    # IFTPShell, for code written against Twisted's interface

    def makeDirectory(self, path: list[str]) -> defer.Deferred:
        return _call(self.view.mkdir, _path(path))

    def removeDirectory(self, path: list[str]) -> defer.Deferred:
        return _call(self.view.rmdir, _path(path))

    def removeFile(self, path: list[str]) -> defer.Deferred:
        return _call(self.view.remove, _path(path))

    def rename(self, fromPath: list[str], toPath: list[str]) -> defer.Deferred:
        return _call(self.view.rename, _path(fromPath), _path(toPath))

    def access(self, path: list[str]) -> defer.Deferred:
        def check() -> None:
            if not self.view.stat(_path(path)).is_dir:
                raise NotADirectory(_path(path))

        return _call(check)

    def stat(self, path: list[str], keys: tuple[str, ...] = ()) -> defer.Deferred:
        return _call(lambda: _stat_keys(self.view.stat(_path(path)), keys, self.user))

    def list(self, path: list[str], keys: tuple[str, ...] = ()) -> defer.Deferred:
        def listing() -> list[tuple[str, list[Any]]]:
            return [(i.name, _stat_keys(i, keys, self.user)) for i in self.view.list(_path(path))]

        return _call(listing)

    def openForReading(self, path: list[str]) -> defer.Deferred:
        return _call(lambda: _ReadFile(self.view.open_read(_path(path))))

    def openForWriting(self, path: list[str]) -> defer.Deferred:
        return _call(lambda: _WriteFile(self.view.open_write(_path(path))))


def shell_factory(store: IFileStore) -> Callable[[Any], tuple[FTPShell, Callable[[], None]]]:
    """
    The realm's avatar factory for C{IFTPShell}: the avatar ID C{ANONYMOUS}
    gets the anonymous view, a user name that user's view.
    """

    def factory(avatar_id: Any) -> tuple[FTPShell, Callable[[], None]]:
        user = None if avatar_id is ANONYMOUS or avatar_id == () else avatar_id
        return FTPShell(store.view_for(user)), lambda: None

    return factory
