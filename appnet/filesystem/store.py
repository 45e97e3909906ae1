"""
The filesystem store on a host directory: L{FileStore}, its per-avatar
L{FileView}s and the L{FileWriter} uploads go through.

Layout under the store's root::

    public/             anonymous: read-only; users: read-only as /public
    public/incoming/    optional drop box: create new files, nothing else
    home/<user>/        the user's own tree, read-write, under a quota

Quota. Each home (and the drop box, with its own limit) is an account whose
usage is the sum of the sizes of its regular files, scanned once per
process on first need and then kept current by the store's own operations
(files changed behind appnet's back are seen after a restart). An upload
reserves its growth chunk by chunk as bytes arrive; a chunk that would take
usage plus every upload's reservation over the limit fails the upload,
which then undoes itself so that nothing of it stays counted:

  - a replacing write went to a hidden temporary file (C{.appnet-part-*},
    never listed, never addressable, never counted by the scan), which is
    removed; the old file was untouched;
  - an exclusive or appending write that created its file removes it;
  - an in-place write (REST offset, APPE) truncates the file back to its
    former size. Bytes it overwrote below that size stay overwritten: to
    keep them would need a copy of the file, and resuming clients write
    only past the end anyway.

A full disk (C{ENOSPC}, C{EDQUOT}) is reported as
L{appnet.errors.QuotaExceeded} too, and undone the same way.

All methods are synchronous; usage accounting is guarded by a lock, so a
protocol may call a view from a thread (C{deferToThread(view.list, ...)})
as well as from the reactor.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import secrets
import stat as statmod
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from appnet.errors import (
    NotFound,
    PathOutsideRoot,
    PermissionDenied,
    QuotaExceeded,
    StoreError,
)
from appnet.filesystem.interfaces import (
    AlreadyExists,
    DirectoryNotEmpty,
    FileInfo,
    IFileStore,
    IFileView,
    IFileWriter,
    InvalidOffset,
    IsADirectory,
    NotADirectory,
)
from appnet.filesystem.paths import (
    MAX_NAME_BYTES,
    is_valid_name,
    is_within,
    open_beneath,
    resolve_parts,
    split_virtual,
    stat_beneath,
)

__all__ = ["FileStore", "FileView", "FileWriter", "RESERVED_PREFIX"]

RESERVED_PREFIX = ".appnet-"
"""Names starting with this are appnet's own (temporary uploads): never
listed, and no virtual path may name them."""

_TEMP_PREFIX = RESERVED_PREFIX + "part-"

WRITE_BUFFER_SIZE = 256 * 1024
"""Uploads are buffered so that many small network chunks become few
large C{write} calls."""

_RW, _RO, _DROP = "rw", "ro", "dropbox"

# RFC 3659 perm facts by (area mode, kind, is the area's own root).
_PERMS = {
    (_RW, "file", False): "adfrw",
    (_RW, "dir", False): "cdeflmp",
    (_RW, "dir", True): "celmp",
    (_RO, "file", False): "r",
    (_RO, "dir", False): "el",
    (_RO, "dir", True): "el",
    (_DROP, "dir", True): "ce",
}

_OPEN_FLAGS = os.O_CLOEXEC | os.O_NONBLOCK


def _store_error(e: OSError, **overrides: type[StoreError]) -> StoreError:
    """
    Translate an C{OSError} into the store error a protocol understands.

    @param overrides: errno names (C{ENOTDIR=NotADirectory}) whose meaning
        depends on the operation
    """
    name = errno.errorcode.get(e.errno or 0, "")
    if name in overrides:
        return overrides[name](os.strerror(e.errno or 0))
    kind: type[StoreError] = {
        errno.ENOENT: NotFound,
        errno.ENOTDIR: NotFound,
        errno.EISDIR: IsADirectory,
        errno.EEXIST: AlreadyExists,
        errno.ENOTEMPTY: DirectoryNotEmpty,
        errno.EACCES: PermissionDenied,
        errno.EPERM: PermissionDenied,
        errno.EROFS: PermissionDenied,
        errno.ENAMETOOLONG: PermissionDenied,
        errno.ELOOP: PathOutsideRoot,
        errno.ENOSPC: QuotaExceeded,
        errno.EDQUOT: QuotaExceeded,
    }.get(e.errno or 0, StoreError)
    return kind(os.strerror(e.errno) if e.errno else str(e))


def _disk_usage(root: str) -> int:
    """Sum the sizes of the regular files below C{root}, without following
    symlinks and without appnet's temporary files."""
    total = 0
    pending = [root]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.name.startswith(_TEMP_PREFIX):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


class _Account:
    """
    The disk usage of one quota area (a home, or the drop box) and the
    reservations of the uploads in progress there.
    """

    def __init__(self, root: str, limit: Callable[[], int | None]) -> None:
        self._root = root
        self.limit = limit
        self._lock = threading.Lock()
        self._used: int | None = None
        self._reserved: dict[object, int] = {}
        self._reserved_total = 0

    def used(self) -> int:
        """Bytes in use, not counting uploads in progress."""
        with self._lock:
            if self._used is None:
                self._used = _disk_usage(self._root)
            return self._used

    def reserve(self, writer: object, amount: int, limit: int | None) -> None:
        """
        Set C{writer}'s reservation to C{amount} bytes.

        @raise QuotaExceeded: if growing it would exceed C{limit}
        """
        with self._lock:
            extra = amount - self._reserved.get(writer, 0)
            if extra > 0 and limit is not None:
                if self._used is None:
                    self._used = _disk_usage(self._root)
                if self._used + self._reserved_total + extra > limit:
                    raise QuotaExceeded(f"quota of {limit} bytes exceeded")
            self._reserved[writer] = amount
            self._reserved_total += extra

    def settle(self, writer: object, delta: int) -> None:
        """Drop C{writer}'s reservation and count C{delta} bytes as used."""
        with self._lock:
            self._reserved_total -= self._reserved.pop(writer, 0)
            if self._used is not None:
                self._used = max(0, self._used + delta)

    def release(self, writer: object) -> None:
        """Drop C{writer}'s reservation: its upload left nothing behind."""
        self.settle(writer, 0)

    def adjust(self, delta: int) -> None:
        """Count a change made by a rename or removal."""
        self.settle(None, delta)


_OPEN, _CLOSED, _FAILED, _ABORTED = "open", "closed", "failed", "aborted"


@implementer(IFileWriter)
class FileWriter:
    """
    An upload: the store's L{IFileWriter}. Made by L{FileView.open_write}
    and L{FileView.open_unique}, never directly.
    """

    def __init__(self, *, path: str, fd: int, target: str, temp: str | None,
                 position: int, size: int, counted: int, created: bool,
                 account: _Account | None) -> None:
        """
        @param path: the virtual path, for L{path}
        @param fd: the descriptor being written (owned from now on)
        @param target: host path of the final file
        @param temp: host path of the temporary file that replaces
            C{target} on close, or C{None} for a write in place
        @param position: offset of the first byte
        @param size: size of the file being written at the start
        @param counted: what the account counts for C{target} now
        @param created: whether opening created C{target} (so undo removes
            it)
        @param account: who pays, or C{None}
        """
        self.path = path
        self.error: StoreError | None = None
        self.bytes_written = 0
        self._fd = fd
        self._target = target
        self._temp = temp
        self._position = position
        self._size = size
        self._counted = counted
        self._created = created
        self._account = account
        self._producer: IPushProducer | None = None
        self._state = _OPEN
        try:
            # Asked once per upload: quota changes apply from the next one.
            self._limit = account.limit() if account is not None else None
            self._file = open(fd, "wb", buffering=WRITE_BUFFER_SIZE, closefd=False)
            if position:
                self._file.seek(position)
        except BaseException:
            self._file = io.BytesIO()  # so that _undo has something to close
            self._state = _ABORTED
            self._undo()
            raise

    # IConsumer

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """
        Register the source of the data (usually a data connection's
        transport), so that a failed upload can stop it.

        @raise ValueError: for a pull producer
        @raise RuntimeError: when one is registered already
        """
        if not streaming:
            raise ValueError("FileWriter accepts only streaming producers")
        if self._producer is not None:
            raise RuntimeError("a producer is registered already")
        self._producer = producer
        if self._state == _FAILED:
            self._stop_producer()

    def unregisterProducer(self) -> None:
        """Forget the producer (its data has all been written)."""
        self._producer = None

    def write(self, data: bytes) -> None:
        """
        Write a chunk, charging its growth to the quota. Never raises for
        storage errors: see L{IFileWriter}.

        @raise RuntimeError: after L{close} (a caller bug)
        """
        if self._state != _OPEN:
            if self._state == _CLOSED:
                raise RuntimeError("write after close")
            return
        if not data:
            return
        end = self._position + len(data)
        growth = max(self._size, end) - self._counted
        try:
            if self._account is not None:
                self._account.reserve(self, max(0, growth), self._limit)
            self._file.write(data)
        except QuotaExceeded as e:
            self._fail(e)
            return
        except OSError as e:
            self._fail(_store_error(e))
            return
        self._position = end
        self.bytes_written += len(data)

    # IFileWriter

    def close(self) -> defer.Deferred[int]:
        """See L{IFileWriter.close}."""
        if self._state == _OPEN:
            self._commit()
        if self._state == _CLOSED:
            return defer.succeed(self.bytes_written)
        if self._state == _FAILED:
            assert self.error is not None
            return defer.fail(self.error)
        return defer.fail(StoreError("upload aborted"))

    def abort(self, keep_partial: bool = False) -> None:
        """See L{IFileWriter.abort}."""
        if self._state != _OPEN:
            return
        if keep_partial:
            self._commit()
            return
        self._state = _ABORTED
        self._undo()

    # implementation

    def _commit(self) -> None:
        try:
            self._file.close()
            os.close(self._fd)
            self._fd = -1
            final = max(self._size, self._position)
            counted = self._counted
            if self._temp is not None:
                counted = self._replaced_size()
                os.replace(self._temp, self._target)
        except OSError as e:
            self._fail(_store_error(e))
            return
        except StoreError as e:
            self._fail(e)
            return
        self._state = _CLOSED
        self._producer = None
        if self._account is not None:
            self._account.settle(self, final - counted)

    def _replaced_size(self) -> int:
        """Size the account counts for the file about to be replaced (read
        again now: it may have changed during the upload)."""
        try:
            st = os.lstat(self._target)
        except FileNotFoundError:
            return 0
        if statmod.S_ISDIR(st.st_mode):
            raise IsADirectory(self.path)
        return st.st_size if statmod.S_ISREG(st.st_mode) else 0

    def _fail(self, error: StoreError) -> None:
        self.error = error
        self._state = _FAILED
        self._undo()
        self._stop_producer()

    def _stop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()

    def _undo(self) -> None:
        """Leave the disk as it was before the upload, as far as counted."""
        try:
            self._file.close()
        except OSError:
            pass  # Unflushed data is being thrown away anyway.
        try:
            if self._fd >= 0:
                if self._temp is None and not self._created:
                    os.ftruncate(self._fd, self._size)
                os.close(self._fd)
                self._fd = -1
            if self._temp is not None:
                os.unlink(self._temp)
            elif self._created:
                os.unlink(self._target)
        except OSError:
            pass  # Nothing better to do; the next usage scan will tell.
        if self._account is not None:
            self._account.release(self)


@dataclass(frozen=True)
class _Mount:
    """One area of a view: virtual prefix -> host directory, with a mode."""

    virtual: str
    root: str
    mode: str
    account: _Account | None = None
    hidden: tuple[str, ...] = ()
    """Real host paths below C{root} that belong to another area."""

    @property
    def depth(self) -> int:
        """Number of components in C{virtual}."""
        return 0 if self.virtual == "/" else self.virtual.count("/")


def _parent(virtual: str) -> str:
    return posixpath.dirname(virtual) or "/"


def _hides(mount: _Mount, host: str) -> bool:
    """Whether host path C{host} lies in an area C{mount} must not reach."""
    return any(is_within(h, host) for h in mount.hidden)


@implementer(IFileView)
class FileView:
    """
    One avatar's view of a L{FileStore} (see L{IFileView}). Made by
    L{FileStore.view_for}.
    """

    def __init__(self, user: str | None, mounts: list[_Mount]) -> None:
        self.user = user
        self._mounts = sorted(mounts, key=lambda m: m.depth, reverse=True)

    # locating

    def _route(self, path: str) -> tuple[str, _Mount, tuple[str, ...]]:
        """
        @return: the canonical virtual path, its area and its components
            below the area's root
        @raise PathOutsideRoot: see L{split_virtual}
        @raise PermissionDenied: names appnet's temporary files
        """
        parts = split_virtual(path)
        canonical = "/" + "/".join(parts)
        for mount in self._mounts:
            if mount.virtual == "/" or canonical == mount.virtual or \
                    canonical.startswith(mount.virtual + "/"):
                break
        else:  # pragma: no cover - every view has a "/" area
            raise PathOutsideRoot(path)
        rest = parts[mount.depth:]
        if any(name.startswith(RESERVED_PREFIX) for name in rest):
            raise PermissionDenied("reserved name")
        if mount.hidden and rest and _hides(mount, posixpath.join(mount.root, *rest)):
            raise PermissionDenied("path leads into another area")
        return canonical, mount, rest

    def _host(self, mount: _Mount, rest: tuple[str, ...]) -> str:
        """
        The host path of C{rest} in C{mount}, jailed (symlinks allowed
        while they stay inside, and out of other areas).

        @raise PathOutsideRoot: see L{resolve_parts}
        @raise PermissionDenied: leads into another area through a symlink
        """
        host = resolve_parts(mount.root, rest)
        if mount.hidden and rest and _hides(mount, os.path.realpath(host)):
            raise PermissionDenied("path leads into another area")
        return host

    def _locate(self, path: str) -> tuple[str, _Mount, str]:
        """
        @return: the canonical virtual path, its area and its host path
        @raise PathOutsideRoot: see L{resolve_path}
        @raise PermissionDenied: names appnet's temporary files, or leads
            into another area through a symlink
        """
        canonical, mount, rest = self._route(path)
        return canonical, mount, self._host(mount, rest)

    def _stat(self, mount: _Mount, rest: tuple[str, ...]) -> os.stat_result:
        """C{stat} (following symlinks) of C{rest} in C{mount}: without a
        symlink on the way, one walk and no C{realpath}."""
        try:
            st = stat_beneath(mount.root, rest)
            if st is None:
                st = os.stat(self._host(mount, rest))
        except OSError as e:
            raise _store_error(e) from None
        return st

    def _info(self, canonical: str, name: str, st: os.stat_result, mount: _Mount,
              is_root: bool) -> FileInfo | None:
        if statmod.S_ISDIR(st.st_mode):
            kind = "dir"
        elif statmod.S_ISREG(st.st_mode):
            kind = "file"
        else:
            return None
        return FileInfo(
            name=name,
            path=canonical,
            kind=kind,
            size=st.st_size,
            mtime=st.st_mtime,
            perm=_PERMS.get((mount.mode, kind, is_root), ""),
        )

    def _writable(self, canonical: str, mount: _Mount) -> None:
        """@raise PermissionDenied: unless the avatar may create C{canonical}"""
        if mount.mode == _RW:
            return
        if mount.mode == _DROP and _parent(canonical) == mount.virtual:
            return
        raise PermissionDenied("read-only" if mount.mode == _RO else "drop box")

    def _modifiable(self, canonical: str, mount: _Mount) -> None:
        """@raise PermissionDenied: unless C{canonical} may be changed or
        removed (only in a read-write area, never an area's root)"""
        if mount.mode != _RW:
            raise PermissionDenied("read-only" if mount.mode == _RO else "drop box")
        if canonical == mount.virtual:
            raise PermissionDenied("cannot change the root of an area")

    # reading

    def list(self, path: str = "/") -> list[FileInfo]:
        """See L{IFileView.list}."""
        canonical, mount, host = self._locate(path)
        if mount.mode == _DROP:
            raise PermissionDenied("a drop box cannot be listed")
        children = {posixpath.basename(m.virtual): m for m in self._mounts
                    if m.virtual != "/" and _parent(m.virtual) == canonical}
        prefix = canonical.rstrip("/") + "/"
        infos: list[FileInfo] = []
        try:
            entries = os.scandir(host)
        except OSError as e:
            raise _store_error(e, ENOTDIR=NotADirectory) from None
        with entries:
            for entry in entries:
                name = entry.name
                if (name in children or name.startswith(RESERVED_PREFIX)
                        or not is_valid_name(name)):
                    continue
                try:
                    if entry.is_symlink():
                        real = os.path.realpath(entry.path, strict=True)
                        if not is_within(mount.root, real) or any(
                                is_within(h, real) for h in mount.hidden):
                            continue
                    st = entry.stat()
                except OSError:
                    continue  # Dangling, looping or vanished meanwhile.
                info = self._info(prefix + name, name, st, mount, False)
                if info is not None:
                    infos.append(info)
        for name, child in children.items():
            try:
                info = self._info(prefix + name, name, os.stat(child.root), child,
                                  True)
            except OSError:
                continue
            if info is not None:
                infos.append(info)
        infos.sort(key=lambda i: i.name)
        return infos

    def stat(self, path: str) -> FileInfo:
        """See L{IFileView.stat}."""
        canonical, mount, rest = self._route(path)
        is_root = canonical == mount.virtual
        if mount.mode == _DROP and not is_root:
            raise PermissionDenied("drop box contents are not disclosed")
        st = self._stat(mount, rest)
        info = self._info(canonical, posixpath.basename(canonical), st, mount, is_root)
        if info is None:
            raise NotFound(canonical)
        return info

    def exists(self, path: str) -> bool:
        """See L{IFileView.exists}."""
        try:
            self.stat(path)
        except NotFound:
            return False
        return True

    def open_read(self, path: str, offset: int = 0) -> BinaryIO:
        """See L{IFileView.open_read}."""
        if offset < 0:
            raise ValueError("offset must not be negative")
        canonical, mount, rest = self._route(path)
        if mount.mode == _DROP:
            raise PermissionDenied("a drop box cannot be read")
        # O_NONBLOCK: a FIFO placed in the tree must not hang the reactor.
        flags = os.O_RDONLY | _OPEN_FLAGS
        try:
            fd = open_beneath(mount.root, rest, flags) if rest else None
            if fd is None:
                fd = os.open(self._host(mount, rest), flags)
        except OSError as e:
            raise _store_error(e) from None
        try:
            st = os.fstat(fd)
            if statmod.S_ISDIR(st.st_mode):
                raise IsADirectory(canonical)
            if not statmod.S_ISREG(st.st_mode):
                raise NotFound(canonical)
            if offset > st.st_size:
                raise InvalidOffset(f"offset {offset} beyond size {st.st_size}")
            # An explicit buffer size spares the isatty() ioctl of the default.
            f = os.fdopen(fd, "rb", buffering=io.DEFAULT_BUFFER_SIZE)
        except BaseException:
            os.close(fd)
            raise
        if offset:
            f.seek(offset)
        return f

    # writing

    def open_write(self, path: str, *, offset: int = 0, append: bool = False,
                   exclusive: bool = False) -> FileWriter:
        """See L{IFileView.open_write}."""
        if offset < 0:
            raise ValueError("offset must not be negative")
        if (offset > 0) + append + exclusive > 1:
            raise ValueError("give at most one of offset, append and exclusive")
        canonical, mount, host = self._locate(path)
        self._writable(canonical, mount)
        if canonical == mount.virtual:
            raise IsADirectory(canonical)
        if mount.mode == _DROP:
            if offset or append:
                raise PermissionDenied("a drop box takes new files only")
            exclusive = True
        if exclusive:
            return self._open_exclusive(canonical, mount, host)
        if offset or append:
            return self._open_in_place(canonical, mount, host, offset, append)
        return self._open_replacing(canonical, mount, host)

    def _open_exclusive(self, canonical: str, mount: _Mount, host: str) -> FileWriter:
        try:
            # O_EXCL also refuses a symlink (even a dangling one) at host.
            fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o666)
        except OSError as e:
            raise _store_error(e) from None
        return FileWriter(path=canonical, fd=fd, target=host, temp=None, position=0,
                          size=0, counted=0, created=True, account=mount.account)

    def _open_in_place(self, canonical: str, mount: _Mount, host: str,
                       offset: int, append: bool) -> FileWriter:
        try:
            fd = os.open(host, os.O_WRONLY | _OPEN_FLAGS)
        except FileNotFoundError:
            if not append:
                raise NotFound(canonical) from None
            return self._open_exclusive(canonical, mount, host)
        except OSError as e:
            raise _store_error(e) from None
        try:
            st = os.fstat(fd)
            if not statmod.S_ISREG(st.st_mode):
                raise PermissionDenied("not a regular file")
            if offset > st.st_size:
                raise InvalidOffset(f"offset {offset} beyond size {st.st_size}")
        except BaseException:
            os.close(fd)
            raise
        position = st.st_size if append else offset
        return FileWriter(path=canonical, fd=fd, target=host, temp=None,
                          position=position, size=st.st_size, counted=st.st_size,
                          created=False, account=mount.account)

    def _open_replacing(self, canonical: str, mount: _Mount, host: str) -> FileWriter:
        replaced = 0
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _store_error(e) from None
        else:
            if statmod.S_ISLNK(st.st_mode):
                try:
                    if statmod.S_ISDIR(os.stat(host).st_mode):
                        raise IsADirectory(canonical)
                except OSError:
                    pass  # A dangling link is simply replaced.
            elif statmod.S_ISDIR(st.st_mode):
                raise IsADirectory(canonical)
            elif statmod.S_ISREG(st.st_mode):
                replaced = st.st_size
        directory = posixpath.dirname(host)
        temp = posixpath.join(directory, _TEMP_PREFIX + secrets.token_hex(8))
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o666)
        except OSError as e:
            raise _store_error(e) from None
        return FileWriter(path=canonical, fd=fd, target=host, temp=temp, position=0,
                          size=0, counted=replaced, created=False,
                          account=mount.account)

    def open_unique(self, directory: str = "/", hint: str | None = None) -> FileWriter:
        """See L{IFileView.open_unique}."""
        canonical = "/" + "/".join(split_virtual(directory))
        base = hint or "upload"
        if split_virtual(base) != (base,):
            raise PathOutsideRoot("the name hint must be a single name")
        prefix = canonical.rstrip("/") + "/"
        for n in range(1000):
            name = base if n == 0 else f"{base}.{n}"
            if len(name.encode("utf-8")) > MAX_NAME_BYTES:
                break
            try:
                return self.open_write(prefix + name, exclusive=True)
            except AlreadyExists:
                continue
        # Pathological directory: fall back to a random name.
        name = f"{base[:MAX_NAME_BYTES // 2]}.{secrets.token_hex(8)}"
        return self.open_write(prefix + name, exclusive=True)

    # changing the tree

    def mkdir(self, path: str) -> None:
        """See L{IFileView.mkdir}."""
        canonical, mount, host = self._locate(path)
        if canonical == mount.virtual:
            raise AlreadyExists(canonical)
        if mount.mode != _RW:
            raise PermissionDenied("read-only" if mount.mode == _RO else "drop box")
        try:
            os.mkdir(host)
        except OSError as e:
            raise _store_error(e) from None

    def rmdir(self, path: str) -> None:
        """See L{IFileView.rmdir}."""
        canonical, mount, host = self._locate(path)
        self._modifiable(canonical, mount)
        try:
            os.rmdir(host)
        except OSError as e:
            raise _store_error(e, ENOTDIR=NotADirectory,
                               EEXIST=DirectoryNotEmpty) from None

    def remove(self, path: str) -> None:
        """See L{IFileView.remove}."""
        canonical, mount, host = self._locate(path)
        self._modifiable(canonical, mount)
        try:
            st = os.lstat(host)
            if statmod.S_ISDIR(st.st_mode):
                raise IsADirectory(canonical)
            os.unlink(host)
        except OSError as e:
            raise _store_error(e) from None
        if mount.account is not None and statmod.S_ISREG(st.st_mode):
            mount.account.adjust(-st.st_size)

    def rename(self, old: str, new: str) -> None:
        """See L{IFileView.rename}."""
        old_canonical, mount, old_host = self._locate(old)
        new_canonical, new_mount, new_host = self._locate(new)
        self._modifiable(old_canonical, mount)
        self._modifiable(new_canonical, new_mount)
        if new_mount is not mount:
            raise PermissionDenied("cannot move between areas")
        try:
            old_st = os.lstat(old_host)
        except OSError as e:
            raise _store_error(e) from None
        if old_canonical == new_canonical:
            return
        replaced = 0
        try:
            new_st = os.lstat(new_host)
        except OSError:
            pass
        else:
            if statmod.S_ISREG(new_st.st_mode) and not statmod.S_ISDIR(old_st.st_mode):
                replaced = new_st.st_size
        try:
            os.rename(old_host, new_host)
        except OSError as e:
            raise _store_error(
                e, ENOTDIR=NotADirectory, EEXIST=DirectoryNotEmpty,
                EINVAL=PermissionDenied,  # a directory into itself
            ) from None
        if replaced and mount.account is not None:
            mount.account.adjust(-replaced)


@implementer(IFileStore)
class FileStore:
    """
    The filesystem store on a host directory (see the module docstring).

    @ivar root: the real host path of the store's root
    """

    def __init__(self, root: str, *,
                 quota_for: Callable[[str], int | None] = lambda user: None,
                 incoming: bool = False,
                 incoming_limit: int | None = None) -> None:
        """
        Create C{public/} and C{home/} (and C{public/incoming/}) if missing.

        @param root: host directory holding the store
        @param quota_for: a user's quota in bytes, or C{None} for none;
            asked when each upload starts, so changes apply to the next one
        @param incoming: whether C{public/incoming/} is a drop box; when
            C{False}, whatever C{public/incoming/} holds is ordinary
            read-only public content
        @param incoming_limit: bytes the drop box may hold in all, or
            C{None} for no limit
        """
        os.makedirs(root, exist_ok=True)
        self.root = os.path.realpath(root)
        self._public = os.path.join(self.root, "public")
        self._home = os.path.join(self.root, "home")
        os.makedirs(self._public, exist_ok=True)
        os.makedirs(self._home, exist_ok=True)
        self._quota_for = quota_for
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self._incoming: _Mount | None = None
        public_real = os.path.realpath(self._public)
        hidden: tuple[str, ...] = ()
        if incoming:
            path = os.path.join(self._public, "incoming")
            os.makedirs(path, exist_ok=True)
            real = os.path.realpath(path)
            account = _Account(real, lambda: incoming_limit)
            self._incoming = _Mount("/incoming", real, _DROP, account)
            hidden = (real,)
        self._public_mount = _Mount("/", public_real, _RO, hidden=hidden)

    def _account(self, user: str, home: str) -> _Account:
        with self._lock:
            account = self._accounts.get(user)
            if account is None:
                account = _Account(home, lambda: self._quota_for(user))
                self._accounts[user] = account
            return account

    def _home_of(self, user: str) -> str:
        try:
            valid = split_virtual(user) == (user,)
        except PermissionDenied:
            valid = False
        if not valid or user.startswith("."):
            raise PermissionDenied(f"not a valid user name for a home: {user!r}")
        home = os.path.join(self._home, user)
        os.makedirs(home, exist_ok=True)
        return os.path.realpath(home)

    def view_for(self, user: str | None = None) -> FileView:
        """See L{IFileStore.view_for}."""
        if user is None:
            mounts = [self._public_mount]
            if self._incoming is not None:
                mounts.append(self._incoming)
            return FileView(None, mounts)
        home = self._home_of(user)
        public = self._public_mount
        mounts = [
            _Mount("/", home, _RW, self._account(user, home)),
            _Mount("/public", public.root, _RO, hidden=public.hidden),
        ]
        if self._incoming is not None:
            drop = self._incoming
            mounts.append(_Mount("/public/incoming", drop.root, _DROP, drop.account))
        return FileView(user, mounts)

    def quota(self, user: str) -> tuple[int, int | None]:
        """See L{IFileStore.quota}."""
        home = self._home_of(user)
        return self._account(user, home).used(), self._quota_for(user)
