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

Between this check and the later C{open} a local user with write access to
the store's directories could swap a directory for a symlink; Python's
standard library has no C{openat2(RESOLVE_BENEATH)} to close that window, so
the store's directories must be writable only by appnet.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import unicodedata

from appnet.errors import PathOutsideRoot, PermissionDenied

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "is_valid_name",
    "is_within",
    "normalize_virtual",
    "resolve_path",
    "split_virtual",
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
    parts = split_virtual(virtual_path)
    real_root = _real(os.fspath(root))
    candidate = posixpath.join(real_root, *parts) if parts else real_root
    if len(os.fsencode(candidate)) > MAX_PATH_BYTES:
        raise PermissionDenied("path too long")
    if parts and not is_within(real_root, _real(candidate)):
        raise PathOutsideRoot("symlink leads outside the root")
    return candidate
