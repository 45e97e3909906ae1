"""
User and folder names of the mailbox store, and their Maildir++ spelling.

User names
==========
1 to 64 characters from lowercase ASCII letters, digits, C{.}, C{_} and
C{-}, not starting with C{.} (so never C{.} or C{..}); anything else raises
L{InvalidUserName}, which is both a L{NoSuchUser} (no such account can
exist) and a L{ValueError}.

Folder names
============
API names are Unicode with C{/} as the hierarchy separator: C{INBOX},
C{Sent}, C{Work/2026}. C{INBOX} in any case is the user's maildir root, and
a first component spelled C{inbox} in any case is canonicalised to C{INBOX}
(C{inbox/x} is C{INBOX/x}). Every other folder is a Maildir++ dot-folder
inside the root: the components are encoded in IMAP modified UTF-7
(RFC 3501 section 5.1.3, as Dovecot stores them) and joined with C{.}::

    Sent         <-> .Sent
    Work/2026    <-> .Work.2026
    Entwürfe     <-> .Entw&APw-rfe
    R&D          <-> .R&-D

Because C{.} is the separator on disk, a C{.} inside a component would make
C{a.b} and C{a/b} the same directory, so we reject it rather than invent an
escape other Maildir readers would not know. That one rule also rules out
C{.} and C{..}. We also reject: the empty name, empty components (a leading
or trailing C{/}, C{a//b}), control characters (U+0000-U+001F, U+007F, so
NUL), C{*} and C{%} (IMAP LIST wildcards: a client could never name such a
folder), lone surrogates, and names whose directory name would exceed 255
bytes. Each of these raises L{InvalidFolderName}.

On-disk directories that do not decode to a valid name under these rules
(foreign tools, C{..} tricks, non-canonical UTF-7) are ignored when
listing rather than guessed at.
"""

from __future__ import annotations

import base64
import re

from appnet.mailbox.errors import InvalidFolderName, InvalidUserName

INBOX = "INBOX"

#: Longest directory name most filesystems allow (NAME_MAX).
_NAME_MAX = 255

_USER_RE = re.compile(r"[a-z0-9_-][a-z0-9._-]{0,63}\Z")

# Characters a folder component may not contain. "/" separates components,
# "." separates them on disk; C0 controls and DEL; IMAP LIST wildcards.
_BAD_COMPONENT_CHARS = re.compile(r"[./\x00-\x1f\x7f*%\ud800-\udfff]")

_B64_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"
)


def validate_user_name(user: str) -> str:
    """
    Check a user name and return it.

    @raise InvalidUserName: it breaks the rules in this module's docstring
    """
    if not isinstance(user, str) or not _USER_RE.match(user):
        raise InvalidUserName(f"invalid user name: {user!r}")
    return user


def encode_mutf7(text: str) -> str:
    """
    Encode text in IMAP modified UTF-7 (RFC 3501 section 5.1.3).

    @raise UnicodeEncodeError: the text holds lone surrogates
    """
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            raw = "".join(run).encode("utf-16-be")
            b64 = base64.b64encode(raw).decode("ascii").rstrip("=")
            out.append("&" + b64.replace("/", ",") + "-")
            run.clear()

    for ch in text:
        if "\x20" <= ch <= "\x7e":
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """
    Decode IMAP modified UTF-7, accepting only the canonical spelling (the
    one L{encode_mutf7} produces), so each name has exactly one encoding.

    @raise ValueError: malformed or non-canonical input
    """
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if not "\x20" <= ch <= "\x7e":
            raise ValueError(f"raw non-ASCII or control character in {text!r}")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise ValueError(f"unterminated shift in {text!r}")
        chunk = text[i + 1:end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        if len(chunk) % 4 == 1 or not _B64_CHARS.issuperset(chunk):
            raise ValueError(f"bad base64 in {text!r}")
        raw = base64.b64decode(
            chunk.replace(",", "/") + "=" * (-len(chunk) % 4))
        if len(raw) % 2:
            raise ValueError(f"odd UTF-16 length in {text!r}")
        out.append(raw.decode("utf-16-be"))  # strict: rejects lone surrogates
    decoded = "".join(out)
    # Non-zero padding bits, printable ASCII inside a shift, or adjacent
    # shifts all decode fine but are not canonical; one round trip catches
    # every such case.
    if encode_mutf7(decoded) != text:
        raise ValueError(f"non-canonical modified UTF-7: {text!r}")
    return decoded


def normalize_folder_name(name: str) -> str:
    """
    Check a folder name and return its canonical spelling (C{INBOX} in
    capitals as the first component).

    @raise InvalidFolderName: it breaks the rules in this module's docstring
    """
    if not isinstance(name, str) or not name:
        raise InvalidFolderName(f"invalid folder name: {name!r}")
    components = name.split("/")
    for component in components:
        if not component or _BAD_COMPONENT_CHARS.search(component):
            raise InvalidFolderName(f"invalid folder name: {name!r}")
    if components[0].upper() == INBOX:
        components[0] = INBOX
    canonical = "/".join(components)
    if canonical != INBOX and len(folder_dir_name(canonical).encode()) > _NAME_MAX:
        raise InvalidFolderName(f"folder name too long: {name!r}")
    return canonical


def folder_dir_name(name: str) -> str | None:
    """
    Return the Maildir++ directory name of a canonical folder name, or
    C{None} for C{INBOX} (the maildir root itself).
    """
    if name == INBOX:
        return None
    return "." + ".".join(encode_mutf7(c) for c in name.split("/"))


def folder_name_from_dir(dir_name: str) -> str | None:
    """
    Return the folder name a Maildir++ directory name stands for, or C{None}
    when it is not a valid folder directory under this module's rules.
    """
    if len(dir_name) < 2 or dir_name[0] != ".":
        return None
    try:
        name = "/".join(decode_mutf7(c) for c in dir_name[1:].split("."))
        canonical = normalize_folder_name(name)
    except (ValueError, InvalidFolderName):
        return None
    if canonical == INBOX or folder_dir_name(canonical) != dir_name:
        return None
    return canonical
