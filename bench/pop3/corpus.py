"""
The benchmark's maildrop: C{count} messages of C{size} octets for one user,
written straight into a Maildir (no server involved).

Names follow Dovecot's own::

    <secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>,W=<crlf-size>:2,S

Every message is put in C{cur/} already flagged C{S} (seen): a POP3 server
marks retrieved messages seen at QUIT, so a maildrop written as new would be
renamed during the first session and differ from the second on. Written
this way, the first session leaves it exactly as it found it, and so does
every later one (the benchmark never sends DELE).

Content is deterministic (seeded), plain ASCII, LF line ends, and no line
starts with C{.}: every server's RETR of message C{n} must then put exactly
C{W=} + 3 octets (the C{.} CRLF terminator) after its status line, which
the client checks.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass

__all__ = ["Corpus", "make_message", "write_maildir", "copy_maildir"]

_WORDS = (
    "the quick brown fox jumps over lazy dog mail server twisted reactor "
    "deferred protocol factory transport maildir message octets retrieve "
    "loopback benchmark pipeline window session quit stat list uidl dovecot "
    "appnet stock python kernel socket buffer write read line header body"
).split()

#: Fixed so that every run writes the same names and the same bytes.
_BASE_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z
_HOST = "bench"
_PID = 4242


@dataclass(frozen=True)
class Corpus:
    """
    What was written.

    @ivar count: number of messages
    @ivar size: octets per message as stored (LF line ends)
    @ivar crlf_sizes: per message, its size with CRLF line ends (POP3 size)
    """

    count: int
    size: int
    crlf_sizes: tuple[int, ...]

    @property
    def expected_body_octets(self) -> int:
        """Octets after the status lines of all RETRs, terminators included."""
        return sum(self.crlf_sizes) + 3 * self.count


def make_message(n: int, count: int, size: int, rng: random.Random) -> bytes:
    """
    Message C{n} (1-based) of C{count}: headers, then text lines of at most
    72 characters, exactly C{size} octets with LF line ends.
    """
    head = (
        f"Return-Path: <bench@example.org>\n"
        f"Delivered-To: alice@localhost\n"
        f"Message-ID: <bench-{n}@example.org>\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\n"
        f"From: Bench Sender <bench@example.org>\n"
        f"To: Alice <alice@localhost>\n"
        f"Subject: benchmark message {n} of {count}\n"
        f"MIME-Version: 1.0\n"
        f"Content-Type: text/plain; charset=us-ascii\n"
        f"\n"
    ).encode("ascii")
    lines = []
    total = len(head)
    while total < size:
        words: list[str] = []
        length = 0
        while length < 64:
            word = rng.choice(_WORDS)
            words.append(word)
            length += len(word) + 1
        line = (" ".join(words)[:72] + "\n").encode("ascii")
        lines.append(line)
        total += len(line)
    data = head + b"".join(lines)
    if len(data) < size:
        raise ValueError(f"message size {size} is too small for the headers")
    # Cut to size; the last line then ends in LF (a cut never starts a line
    # with ".", since no word does).
    data = data[: size - 1] + b"\n"
    return data


def _crlf_size(data: bytes) -> int:
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def write_maildir(root: str, user: str, count: int, size: int, seed: int = 2) -> Corpus:
    """
    Write C{count} messages into the Maildir C{root/user} (created; it must
    not exist yet).

    @return: the L{Corpus} written
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    maildir = os.path.join(root, user)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub))
    rng = random.Random(seed)
    sizes = []
    cur = os.path.join(maildir, "cur")
    for n in range(1, count + 1):
        data = make_message(n, count, size, rng)
        wsize = _crlf_size(data)
        sizes.append(wsize)
        name = (
            f"{_BASE_TIME + n}.M{n % 1_000_000}P{_PID}Q{n}.{_HOST}"
            f",S={len(data)},W={wsize}:2,S"
        )
        with open(os.path.join(cur, name), "wb") as f:
            f.write(data)
    return Corpus(count=count, size=size, crlf_sizes=tuple(sizes))


def copy_maildir(source_root: str, dest_root: str, user: str) -> str:
    """
    Copy C{source_root/user} (messages only) to C{dest_root/user}, so each
    server reads its own identical maildrop and never another's index
    files. @return: the new maildir path
    """
    dest = os.path.join(dest_root, user)
    shutil.copytree(os.path.join(source_root, user), dest)
    return dest
