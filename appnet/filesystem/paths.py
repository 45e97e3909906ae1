"""
The one jail check every protocol's paths go through.

A I{virtual path} is what a client names: a C{str} of C{/}-separated
components relative to the avatar's root, where a leading C{/} means that
root (never the host's C{/}). L{resolve_path} turns it into a host path that
is guaranteed to lie inside the root, or raises.

Policy, in the order it is applied:

  1. The path must be a C{str}. Protocols decode bytes first, and they also
     undo their own escapes first: C{%2e%2e} is the HTTP server's job to
     decode, after which C{..} is caught here like any other C{..}. Nothing
     here expands C{~} or environment variables.
  2. It is normalised to Unicode NFC, so that a name typed as precomposed or
     decomposed characters names the same file; everything appnet creates is
     therefore NFC. (Names placed on disk in another form by an
     administrator cannot be addressed, and listings leave them out.)
  3. Rejected outright with L{PathOutsideRoot}: NUL, any other control
     character (C0, DEL, C1), unpaired surrogates (undecodable bytes),
     Unicode bidirectional overrides (they disguise names in listings),
     backslashes (a Windows separator: C{..\\..\\} must not become a
     traversal on a host or client that treats it as one), a Windows drive
     (C{C:}, C{c:foo}) as any component, and any component whose
     compatibility form (NFKC) is C{.} or C{..} or holds C{/} or C{\\}
     (C{\\u2025}, fullwidth C{\\uff0e\\uff0e}, C{\\uff0f}), so that no later
     NFKC step anywhere can turn a name into a traversal.
  4. Rejected with L{PermissionDenied}: a component longer than 255 bytes or
     a path longer than 4096 bytes in UTF-8 (the usual C{NAME_MAX} and
     C{PATH_MAX}).
  5. C{.} and empty components are dropped; C{..} removes the previous
     component, purely lexically (C{a/../b} is C{b}). A C{..} that would climb
     above the root is B{rejected} with L{PathOutsideRoot} rather than
     clamped: a client asking for C{../etc/passwd} is confused or hostile,
     and a clear refusal serves both better than a silently different file.
     Components made only of dots beyond two (C{....}) are ordinary names on
     POSIX and stay inside the root like any other name.
  6. Symbolic links (which only the host's administrator can create: no
     protocol offers a way to make one) are followed, but the real path of
     the result must stay inside the real path of the root: for an existing
     path its C{realpath}; for a missing one the C{realpath} of its deepest
     existing ancestor, with dangling links followed lexically (so a dangling
     link cannot be used to create a file outside). A symlink loop is
     rejected with L{PathOutsideRoot}.

How it is checked. The common case, a path with no symlink on the way, is
walked the way C{openat2(RESOLVE_BENEATH)} would (Python's standard library
has no C{openat2}): the root is opened once, then each component below it
with C{os.open(name, dir_fd=parent)} and C{O_NOFOLLOW} (L{open_beneath},
L{stat_beneath}), a handful of system calls in all and no window for a
directory swapped for a symlink meanwhile. Only when that walk meets a
symlink (or something that is not a directory) does the careful check
above run: C{realpath} of the result against C{realpath} of the root. The
real path of the root is never cached: it is read from the descriptor just
opened, so a root replaced or moved is seen at once.

Between the careful check and the later C{open} (symlinks on the way only)
a local user with write access to the store's directories could swap a
directory for a symlink, so the store's directories must be writable only
by appnet.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat as statmod
import unicodedata
from collections.abc import Sequence

from appnet.errors import PathOutsideRoot, PermissionDenied

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "is_valid_name",
    "is_within",
    "normalize_virtual",
    "open_beneath",
    "resolve_parts",
    "resolve_path",
    "split_virtual",
    "stat_beneath",
]

MAX_NAME_BYTES = 255
"""Longest component accepted, in UTF-8 bytes (Linux C{NAME_MAX})."""

MAX_PATH_BYTES = 4096
"""Longest virtual or host path accepted, in UTF-8 bytes (Linux C{PATH_MAX})."""

_DRIVE = re.compile(r"^[A-Za-z]:")

# Bidirectional embeddings, overrides and isolates: a name holding U+202E
# shows "evil\u202etxt.exe" as "evilexe.txt" in a listing.
_BIDI_CONTROLS = frozenset(
    "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _check_characters(text: str) -> None:
    """
    Reject characters no path of ours may hold.

    @raise PathOutsideRoot: for NUL, control characters, surrogates,
        backslashes and bidirectional controls
    """
    if text.isprintable() and "\\" not in text:
        # Fast path: printable text holds no Cc, Cs or Cf (bidi) characters.
        return
    for char in text:
        if char == "\x00":
            raise PathOutsideRoot("NUL in path")
        if char == "\\":
            raise PathOutsideRoot("backslash in path")
        category = unicodedata.category(char)
        if category == "Cc":
            raise PathOutsideRoot("control character in path")
        if category == "Cs":
            raise PathOutsideRoot("undecodable character in path")
        if char in _BIDI_CONTROLS:
            raise PathOutsideRoot("bidirectional control in path")


def _check_component(name: str) -> None:
    """
    Reject one name (already NFC, never C{.}, C{..} or empty).

    @raise PathOutsideRoot: when its compatibility form is a traversal
    @raise PermissionDenied: when it is longer than L{MAX_NAME_BYTES}
    """
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise PermissionDenied("name too long")
    if _DRIVE.match(name):
        # Checked on every component, not just the first, so that a name is
        # addressable everywhere or nowhere.
        raise PathOutsideRoot("Windows drive in path")
    if not name.isascii():
        compat = unicodedata.normalize("NFKC", name)
        if compat in (".", "..") or "/" in compat or "\\" in compat:
            raise PathOutsideRoot("name is a traversal in compatibility form")


def split_virtual(virtual_path: str) -> tuple[str, ...]:
    """
    Normalise a virtual path lexically and return its components.

    @param virtual_path: C{/}-separated, relative to the avatar's root; a
        leading C{/} means that root
    @return: the components, none of them empty, C{.} or C{..}; C{()} for the
        root itself
    @raise PathOutsideRoot: for every escape (see the module docstring)
    @raise PermissionDenied: for over-long names and paths
    @raise TypeError: when C{virtual_path} is not a C{str}
    """
    if not isinstance(virtual_path, str):
        raise TypeError(f"virtual path must be str, not {type(virtual_path).__name__}")
    # Every character is at least one UTF-8 byte: refuse huge input before
    # spending any work on it.
    if len(virtual_path) > MAX_PATH_BYTES:
        raise PermissionDenied("path too long")
    _check_characters(virtual_path)
    path = unicodedata.normalize("NFC", virtual_path)
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise PermissionDenied("path too long")
    parts: list[str] = []
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            if not parts:
                raise PathOutsideRoot("path climbs above its root")
            parts.pop()
            continue
        _check_component(name)
        parts.append(name)
    return tuple(parts)


def normalize_virtual(virtual_path: str, cwd: str = "/") -> str:
    """
    Join a path a client sent to its current directory and normalise it.

    FTP's C{CWD}/C{PWD} and the Telnet shell's C{cd} keep their current
    directory as the canonical string this returns.

    @param virtual_path: absolute (C{/a/b}) or relative to C{cwd}
    @param cwd: the client's current directory, a virtual path
    @return: the canonical absolute virtual path, e.g. C{/}, C{/a/b}
    @raise PathOutsideRoot: see L{split_virtual}
    @raise PermissionDenied: see L{split_virtual}
    """
    if not isinstance(virtual_path, str):
        raise TypeError(f"virtual path must be str, not {type(virtual_path).__name__}")
    if not virtual_path.startswith("/"):
        virtual_path = cwd.rstrip("/") + "/" + virtual_path
    return "/" + "/".join(split_virtual(virtual_path))


def is_valid_name(name: str) -> bool:
    """
    Whether C{name} can be addressed as one component of a virtual path
    exactly as it is (listings show only such names).

    @param name: a directory entry's name as C{os.scandir} returns it
    """
    if (name.isascii() and name.isprintable() and "\\" not in name
            and "/" not in name and name not in ("", ".", "..")
            and len(name) <= MAX_NAME_BYTES and not _DRIVE.match(name)):
        # Fast path for the common case, so that listing thousands of
        # entries costs little more than the scandir itself.
        return True
    try:
        return split_virtual(name) == (name,) and unicodedata.is_normalized("NFC", name)
    except (PermissionDenied, TypeError):
        return False


def is_within(root: str, path: str) -> bool:
    """
    Whether host path C{path} is C{root} or lies below it (lexically).

    @param root: an absolute, normalised host path
    @param path: an absolute, normalised host path
    """
    if path == root:
        return True
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path.startswith(prefix)


def _real(path: str) -> str:
    """
    The real path of C{path}: resolved fully when it exists, else through its
    deepest existing ancestor with dangling links followed lexically.

    @raise PathOutsideRoot: on a symlink loop
    @raise PermissionDenied: when a directory on the way cannot be searched
    """
    try:
        return os.path.realpath(path, strict=True)
    except (FileNotFoundError, NotADirectoryError):
        # Missing, or a dangling link on the way: the lexical resolution
        # below follows dangling links to where a create would land.
        return os.path.realpath(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PathOutsideRoot("symlink loop") from None
        if e.errno == errno.ENAMETOOLONG:
            raise PermissionDenied("path too long") from None
        raise PermissionDenied(os.strerror(e.errno or errno.EACCES)) from None


# Directories on the way are opened only to look names up in them: O_PATH
# (no read permission needed, nothing read), never following a symlink.
_WALK_FLAGS = (getattr(os, "O_PATH", 0) or os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
_STEP_FLAGS = _WALK_FLAGS | os.O_NOFOLLOW


def _open_root(root: str) -> int | None:
    """A descriptor of C{root} (symlinks in its own path followed: the jail
    is its real path), or C{None} when it cannot be opened."""
    try:
        return os.open(root, _WALK_FLAGS)
    except OSError:
        return None


def _descend(fd: int, names: Sequence[str]) -> int | None:
    """
    Walk C{names} down from directory C{fd} (which is consumed) without
    following any symlink.

    @return: a descriptor of the last directory, or C{None} when a symlink,
        a non-directory or an unsearchable directory is on the way (the
        careful check must decide)
    @raise FileNotFoundError: when a component is missing
    """
    for name in names:
        try:
            child = os.open(name, _STEP_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            os.close(fd)
            raise
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = child
    return fd


def open_beneath(root: str, parts: Sequence[str], flags: int, mode: int = 0o666) -> int | None:
    """
    Open C{root/parts...} without following any symlink below C{root}: the
    race-free common case of the jail.

    @param root: the jail's host directory
    @param parts: at least one component, as L{split_virtual} returns them
        (already checked)
    @param flags: C{os.open} flags for the last component (C{O_NOFOLLOW}
        and C{O_CLOEXEC} are added)
    @param mode: permissions of a file C{O_CREAT} makes
    @return: the descriptor, or C{None} when a symlink or a non-directory is
        on the way: the caller must then take L{resolve_path}'s careful way
    @raise OSError: opening the last component failed for any other reason
        than its being a symlink (C{ENOENT} also for a missing directory on
        the way)
    """
    fd = _open_root(root)
    if fd is None:
        return None
    fd = _descend(fd, parts[:-1])
    if fd is None:
        return None
    try:
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None
        if e.errno == errno.ENOTDIR and flags & os.O_DIRECTORY and statmod.S_ISLNK(
                os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode):
            return None  # O_DIRECTORY meeting a link says ENOTDIR, not ELOOP.
        raise
    finally:
        os.close(fd)


def stat_beneath(root: str, parts: Sequence[str]) -> os.stat_result | None:
    """
    C{stat} C{root/parts...} without following any symlink below C{root}.

    @param parts: components as L{split_virtual} returns them; C{()} for
        the root itself
    @return: the status, or C{None} when a symlink or a non-directory is on
        the way or at the end (the caller must take the careful way)
    @raise OSError: C{ENOENT} when missing, and other failures of the last
        C{stat}
    """
    if not parts:
        return os.stat(root)
    fd = _open_root(root)
    if fd is None:
        return None
    fd = _descend(fd, parts[:-1])
    if fd is None:
        return None
    try:
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)
    return None if statmod.S_ISLNK(st.st_mode) else st


def _descriptor_path(fd: int) -> str | None:
    """The real path of the directory open as C{fd} (Linux C{/proc}), or
    C{None} when it cannot be told."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    # A removed directory reads as "/x (deleted)"; anything odd is left to
    # the careful way.
    return path if path.startswith("/") and not path.endswith(" (deleted)") else None


def _plain(root: str, parts: Sequence[str]) -> str | None:
    """
    The host path of C{parts} below C{root} when no symlink lies on the way
    (the common case): the real path of the root read from its descriptor,
    joined to C{parts}; the walk stops at the first missing component.

    @return: the host path, or C{None} for the careful way
    """
    fd = _open_root(root)
    if fd is None:
        return None
    real_root = _descriptor_path(fd)
    if real_root is None:
        os.close(fd)
        return None
    try:
        fd = _descend(fd, parts[:-1])
        if fd is None:
            return None
        try:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        except OSError:
            return None
        finally:
            os.close(fd)
        if st is not None and statmod.S_ISLNK(st.st_mode):
            return None
    except FileNotFoundError:
        pass  # Missing from here down: nothing below can be a link.
    return posixpath.join(real_root, *parts)


def resolve_path(root: str, virtual_path: str) -> str:
    """
    Map a virtual path to a host path inside C{root}: the jail check.

    @param root: the host directory the virtual path is relative to (it may
        itself be or lie below a symlink; its real path is the jail)
    @param virtual_path: what the client sent (see the module docstring)
    @return: the absolute host path below the real path of C{root}, with
        symlinks in it left as they are (so that removing or renaming a link
        acts on the link); its real path is inside the root too
    @raise PathOutsideRoot: for every attempted escape
    @raise PermissionDenied: for over-long names or paths, and unsearchable
        directories
    """
    return resolve_parts(root, split_virtual(virtual_path))


def resolve_parts(root: str, parts: Sequence[str]) -> str:
    """
    L{resolve_path} for a path split already.

    @param root: see L{resolve_path}
    @param parts: components as L{split_virtual} returns them (checked)
    @return: see L{resolve_path}
    @raise PathOutsideRoot: when a symlink leads outside the root
    @raise PermissionDenied: for an over-long host path, and unsearchable
        directories
    """
    root = os.fspath(root)
    plain = _plain(root, parts) if parts else None
    if plain is not None:
        if len(os.fsencode(plain)) > MAX_PATH_BYTES:
            raise PermissionDenied("path too long")
        return plain
    real_root = _real(root)
    candidate = posixpath.join(real_root, *parts) if parts else real_root
    if len(os.fsencode(candidate)) > MAX_PATH_BYTES:
        raise PermissionDenied("path too long")
    if parts and not is_within(real_root, _real(candidate)):
        raise PathOutsideRoot("symlink leads outside the root")
    return candidate
