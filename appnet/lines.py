"""
Bounded line framing shared by appnet's line-based servers (POP3, FTP, SMTP).

Twisted's C{LineReceiver} and C{LineOnlyReceiver} drop the connection when a
line is too long and insist on CRLF. Our servers answer an overlong line with
the protocol's own error and keep the session, accept a bare LF too (as
Dovecot and Postfix do), and, after a STARTTLS-style upgrade, discard what
followed the upgrade command in cleartext (no command injection).
"""

from __future__ import annotations

__all__ = ["BoundedLines"]


class BoundedLines:
    """
    A mixin providing C{dataReceived} for line-based server protocols.

    The class using it defines C{lineReceived(line)} (without the line end),
    C{line_too_long()} (send the protocol's error once per overlong line),
    and C{max_line_length()}; it calls C{cut_after_this_line()} when a
    command switches the connection to TLS, and C{stop_after_this_line()}
    then C{take_unframed()} when what follows is not lines (SMTP DATA, BDAT).
    """

    _line_buffer = b""
    _discarding = False
    _cut = False
    _stop = False

    def max_line_length(self) -> int:
        raise NotImplementedError

    def line_too_long(self) -> None:
        raise NotImplementedError

    def cut_after_this_line(self) -> None:
        """Drop everything received after the current line (TLS starts)."""
        self._cut = True

    def stop_after_this_line(self) -> None:
        """
        Frame no more lines of this packet: the rest stays buffered for
        L{take_unframed} (SMTP's DATA and BDAT, or a command waiting for a
        Deferred while pipelined commands wait behind it).
        """
        self._stop = True

    def take_unframed(self) -> bytes:
        """Remove and return the bytes received but not framed yet."""
        rest, self._line_buffer = self._line_buffer, b""
        return rest

    def dataReceived(self, data: bytes) -> None:
        self._cut = self._stop = False
        buf = self._line_buffer + data if self._line_buffer else data
        start = 0
        limit = self.max_line_length()
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 1
            if self._discarding:
                # The tail of an overlong line already answered.
                self._discarding = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > limit:
                self.line_too_long()
                continue
            self.lineReceived(line)  # type: ignore[attr-defined]
            if self._stop:
                self._line_buffer = buf[start:]
                return
            if self._cut or self.transport.disconnecting:  # type: ignore[attr-defined]
                self._line_buffer = b""
                return
        rest = buf[start:]
        if len(rest) > limit:
            if not self._discarding:
                self.line_too_long()
                self._discarding = True
            rest = b""
        self._line_buffer = rest
