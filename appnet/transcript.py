"""
Annotated transcripts: every line of a dialogue, for learners and debugging.

With C{trace = true} in a service's section, each client line (C{C:}) and
server line (C{S:}) is logged with a short note of what it means, the way a
textbook walks through a session::

    C: RETR 1                 retrieve message 1
    S: +OK 4213 octets        positive reply

Passwords never reach the log: the protocol names which commands carry
secrets and L{Transcript} redacts them.
"""

from __future__ import annotations

from typing import Callable

from twisted.logger import Logger

__all__ = ["Transcript", "redact_words"]

Annotator = Callable[[str], str]


def redact_words(line: str, secret_from: int) -> str:
    """Replace everything after the first C{secret_from} words with C{****}."""
    parts = line.split(" ", secret_from)
    if len(parts) <= secret_from:
        return line
    return " ".join(parts[:secret_from] + ["****"])


class Transcript:
    """
    Logs one session's dialogue, annotated and redacted.

    @param service: e.g. C{pop3}
    @param peer: the client's address, e.g. C{127.0.0.1:53412}
    @param annotate_client: maps a (redacted) client line to its note
    @param annotate_server: maps a server line to its note
    @param redact: maps a client line to what may be logged
    @param log: a L{Logger}; C{emit} receives every formatted line instead
        when given (tests, the web console)
    """

    def __init__(
        self,
        service: str,
        peer: str,
        annotate_client: Annotator,
        annotate_server: Annotator,
        redact: Callable[[str], str] = lambda line: line,
        log: Logger | None = None,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        self.service = service
        self.peer = peer
        self.annotate_client = annotate_client
        self.annotate_server = annotate_server
        self.redact = redact
        self.log = log or Logger(namespace=f"appnet.{service}.transcript")
        self.emit = emit
        self.lines: list[str] = []
        self.max_kept = 1000

    def _write(self, direction: str, text: str, note: str) -> None:
        text = text if len(text) <= 200 else text[:200] + "..."
        line = f"{direction}: {text:<30} {note}".rstrip()
        if len(self.lines) < self.max_kept:
            self.lines.append(line)
        if self.emit is not None:
            self.emit(line)
        else:
            self.log.info("{peer} {line}", peer=self.peer, line=line)

    def client(self, raw: bytes | str) -> None:
        """Record a line the client sent (redacted before anything else)."""
        text = _text(raw)
        text = self.redact(text)
        self._write("C", text, self.annotate_client(text))

    def server(self, raw: bytes | str) -> None:
        """Record a line the server sent."""
        text = _text(raw)
        self._write("S", text, self.annotate_server(text))

    def event(self, note: str) -> None:
        """Record something that is not a line (TLS started, data sent)."""
        self._write("*", "", note)


def _text(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "backslashreplace")
    return raw.rstrip("\r\n")
