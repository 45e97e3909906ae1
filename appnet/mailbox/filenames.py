"""
Maildir message file names, flag letters and the Dovecot keywords file.

File names
==========
We write names as Dovecot does::

    <secs>.M<usecs>P<pid>Q<counter>.<host>,S=<size>,W=<crlf-size>:2,<flags>

The I{key} (L{MessageInfo.key}) is everything before C{:2,}; it never
changes for the life of the message, while the flags after C{:2,} do.
C{S=} is the size as stored (LF line ends) and C{W=} the size with CRLF line
ends, so a scan learns both without opening the file; names written by other
tools may lack them and then the store measures the file once.

In the host part C{/}, C{:} and C{,} are written C{\\057}, C{\\072} and
C{\\054} (the first two per the Maildir specification; the comma because it
starts the C{,S=} fields).

Flags
=====
C{D} \\Draft, C{F} \\Flagged, C{R} \\Answered, C{S} \\Seen, C{T} \\Deleted;
C{a}-C{z} are keywords, mapped to names by the folder's C{dovecot-keywords}
file (lines C{"<index> <name>"}, index 0 is C{a}), exactly as Dovecot does.
Letters we cannot show through IMAP (C{P} passed, other capitals, keyword
letters missing from C{dovecot-keywords}) are kept as they are whenever we
rewrite the flags. Letters are written sorted, as the specification asks.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections.abc import Iterable

from appnet.mailbox.errors import InvalidFlag, KeywordsLocked, TooManyKeywords

#: Maildir info letters of the IMAP system flags we store.
LETTER_FLAGS: dict[str, str] = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
_FLAG_LETTERS = {flag: letter for letter, flag in LETTER_FLAGS.items()}
_SYSTEM_FLAGS_BY_LOWER = {flag.lower(): flag for flag in _FLAG_LETTERS}

KEYWORDS_FILE = "dovecot-keywords"
_KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"

# An IMAP atom (RFC 3501 ATOM-CHAR): no SP, CTL, non-ASCII or atom-specials.
_KEYWORD_RE = re.compile(r'[^\x00-\x20\x7f-\U0010ffff(){%*"\\\]]+\Z')

# Dovecot waits this long for its keywords dotlock before assuming the
# holder died (maildir-keywords.c), and so do we.
_KEYWORDS_LOCK_STALE = 120.0
_KEYWORDS_LOCK_WAIT = 10.0

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def escape_hostname(host: str) -> str:
    """Spell a host name so it is safe inside a Maildir file name."""
    return (host.replace("/", "\\057").replace(":", "\\072")
            .replace(",", "\\054"))


def new_key(host: str, size: int, crlf_size: int,
            now: float | None = None) -> str:
    """
    Return a new unique Maildir key (base name without C{:2,}).

    @param host: the host name, already escaped (L{escape_hostname})
    @param size: stored size in octets, for C{S=}
    @param crlf_size: size with CRLF line ends, for C{W=}
    """
    if now is None:
        now = time.time()
    with _counter_lock:
        counter = next(_counter)
    secs = int(now)
    usecs = int((now - secs) * 1_000_000)
    return (f"{secs}.M{usecs}P{os.getpid()}Q{counter}.{host}"
            f",S={size},W={crlf_size}")


def split_name(name: str) -> tuple[str, str | None]:
    """
    Split a file name into its key and its flag letters.

    @return: C{(key, letters)}; C{letters} is C{None} when the name has no
        C{:2,} info (a fresh file in C{new/}) or an info we do not know
    """
    key, sep, info = name.partition(":")
    if sep and info.startswith("2,"):
        return key, info[2:]
    return key, None


_S_FIELD = re.compile(r",S=(\d+)(?=,|\Z)")
_W_FIELD = re.compile(r",W=(\d+)(?=,|\Z)")


def sizes_from_key(key: str) -> tuple[int | None, int | None]:
    """
    Return the C{(S=, W=)} sizes a key carries, C{None} where absent.
    """
    s = _S_FIELD.search(key)
    w = _W_FIELD.search(key)
    return (int(s.group(1)) if s else None, int(w.group(1)) if w else None)


def crlf_size(data: bytes) -> int:
    """
    The size of C{data} once every bare LF is written as CRLF (a CRLF already
    there stays as it is): POP3 LIST and IMAP RFC822.SIZE of a stored message.
    """
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def normalize_flags(flags: Iterable[str]) -> frozenset[str]:
    """
    Check flags for storing and return them with system flags in their
    canonical case.

    @raise InvalidFlag: an unknown or unsettable system flag (C{\\Recent}
        included) or a keyword that is not an IMAP atom
    """
    if isinstance(flags, str):
        raise InvalidFlag("flags must be a set of strings, not one string")
    result = set()
    for flag in flags:
        if not isinstance(flag, str):
            raise InvalidFlag(f"invalid flag: {flag!r}")
        if flag.startswith("\\"):
            canonical = _SYSTEM_FLAGS_BY_LOWER.get(flag.lower())
            if canonical is None:
                raise InvalidFlag(f"cannot store system flag {flag!r}")
            result.add(canonical)
        elif _KEYWORD_RE.match(flag):
            result.add(flag)
        else:
            raise InvalidFlag(f"invalid keyword: {flag!r}")
    return frozenset(result)


class KeywordsFile:
    """
    A folder's C{dovecot-keywords}: which keyword each letter C{a}-C{z}
    stands for.

    Reads are cached until the file changes. New keywords are added under
    Dovecot's own dotlock (C{dovecot-keywords.lock}, created exclusively,
    written, then renamed over the file) so Dovecot and we never lose each
    other's additions.
    """

    def __init__(self, folder_path: str) -> None:
        self.path = os.path.join(folder_path, KEYWORDS_FILE)
        self._signature: tuple[int, int, int] | None = None
        self._names: list[str | None] = []
        self._lock = threading.Lock()

    def names(self) -> list[str | None]:
        """
        The keyword of each letter, index 0 being C{a}; C{None} for a gap.
        """
        with self._lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self._signature, self._names = None, []
                return []
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
            if signature != self._signature:
                self._names = _read_keywords(self.path)
                self._signature = signature
            return list(self._names)

    def flags_of(self, letters: str, names: list[str | None] | None = None
                 ) -> tuple[frozenset[str], str]:
        """
        Translate info letters.

        @param names: the result of L{names}, when the caller already has it

        @return: C{(flags, kept)}: the IMAP flags, and the letters that have
            no IMAP meaning here and must survive a rewrite of the flags
        """
        flags = set()
        kept = []
        for letter in letters:
            flag = LETTER_FLAGS.get(letter)
            if flag is not None:
                flags.add(flag)
                continue
            if "a" <= letter <= "z":
                if names is None:
                    names = self.names()
                index = ord(letter) - ord("a")
                if index < len(names) and names[index] is not None:
                    flags.add(names[index])
                    continue
            kept.append(letter)
        return frozenset(flags), "".join(kept)

    def letters_for(self, flags: frozenset[str], kept: str = "") -> str:
        """
        Return the sorted info letters for already-normalised C{flags}, plus
        the C{kept} letters, adding unknown keywords to the file.

        @raise TooManyKeywords: no letter is left for a new keyword
        @raise KeywordsLocked: Dovecot's dotlock could not be taken
        """
        letters = set(kept)
        keywords = []
        for flag in flags:
            letter = _FLAG_LETTERS.get(flag)
            if letter is None:
                keywords.append(flag)
            else:
                letters.add(letter)
        if keywords:
            # Sorted, so new keywords get their letters in a stable order.
            letters.update(self._keyword_letters(sorted(keywords)))
        return "".join(sorted(letters))

    def _keyword_letters(self, keywords: list[str]) -> list[str]:
        names = self.names()
        missing = [k for k in keywords if k not in names]
        if missing:
            names = self._add(missing)
        return [_KEYWORD_LETTERS[names.index(k)] for k in keywords]

    def _add(self, keywords: list[str]) -> list[str | None]:
        lock_path = self.path + ".lock"
        fd = _take_dotlock(lock_path)
        try:
            # Re-read under the lock: Dovecot may have added some meanwhile.
            names = _read_keywords(self.path)
            for keyword in keywords:
                if keyword in names:
                    continue
                try:
                    index = names.index(None)
                    names[index] = keyword
                except ValueError:
                    if len(names) >= len(_KEYWORD_LETTERS):
                        raise TooManyKeywords(
                            f"no keyword letter left for {keyword!r}") from None
                    names.append(keyword)
            text = "".join(f"{i} {name}\n" for i, name in enumerate(names)
                           if name is not None)
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
            os.rename(lock_path, self.path)
        except BaseException:
            os.unlink(lock_path)
            raise
        finally:
            os.close(fd)
        return names


def _read_keywords(path: str) -> list[str | None]:
    names: list[str | None] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return names
    for line in lines:
        index_text, _, name = line.partition(" ")
        if not index_text.isdigit() or not name:
            continue
        index = int(index_text)
        if index >= len(_KEYWORD_LETTERS):
            continue
        names.extend([None] * (index + 1 - len(names)))
        names[index] = name
    return names


def _take_dotlock(lock_path: str) -> int:
    # A dotlock needs a poll; Dovecot polls too. The wait is bounded and
    # happens in a store thread, never on the reactor.
    deadline = time.monotonic() + _KEYWORDS_LOCK_WAIT
    while True:
        try:
            return os.open(lock_path,
                           os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                           0o600)
        except FileExistsError:
            pass
        try:
            age = time.time() - os.stat(lock_path).st_mtime
        except FileNotFoundError:
            continue
        if age > _KEYWORDS_LOCK_STALE:
            try:
                os.unlink(lock_path)
            except FileNotFoundError:
                pass
            continue
        if time.monotonic() > deadline:
            raise KeywordsLocked(f"{lock_path} is held by another process")
        time.sleep(0.01)
