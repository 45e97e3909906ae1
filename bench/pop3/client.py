"""
The POP3 benchmark's load clients: one login, RETR of every message, QUIT.

L{pipelined_session} is the measuring client. It is a blocking raw socket
that keeps C{window} RETR commands outstanding (RFC 2449 PIPELINING): it
sends the first C{window} in one write, then, after each C{recv}, one write
with as many new commands as responses it completed. Responses are framed
with C{bytes.find} on C{CRLF} (status line) and C{CRLF . CRLF} (end of the
multi-line body), so the per-message cost on the client side is a couple of
C-level searches: the client is far from being the bottleneck, which the
C{client_cpu} it reports shows (its C{msgs / client_cpu} is the rate it
could sustain against an infinitely fast server).

L{poplib_session} is the reference client the issue quoted numbers with:
Python's C{poplib}, one command at a time.

Both check what they got: every RETR must be C{+OK} and the octets after
the status lines must add up to what the corpus says (no server may lose or
add a byte), else the result says so.

Run alone::

    python bench/pop3/client.py --port 10110 --user alice --password pw --messages 2000
"""

from __future__ import annotations

import argparse
import os
import poplib
import socket
import sys
import time
from dataclasses import dataclass

__all__ = ["SessionResult", "pipelined_session", "poplib_session"]


@dataclass
class SessionResult:
    """
    One measured session.

    @ivar messages: RETRs answered C{+OK}
    @ivar errors: RETRs answered C{-ERR}
    @ivar body_octets: octets after the RETR status lines, terminators included
    @ivar wall: seconds from connect to the QUIT reply
    @ivar login: seconds from connect to the PASS reply
    @ivar client_cpu: CPU seconds this client process used meanwhile
    """

    client: str
    messages: int
    errors: int
    body_octets: int
    wall: float
    login: float
    client_cpu: float

    @property
    def rate(self) -> float:
        """Messages per second over the whole session."""
        return self.messages / self.wall if self.wall > 0 else 0.0

    @property
    def retr_rate(self) -> float:
        """Messages per second after login (RETRs and QUIT only)."""
        span = self.wall - self.login
        return self.messages / span if span > 0 else 0.0


class BenchError(Exception):
    """The server misbehaved or was too slow."""


class _Lines:
    """Blocking line reader for the login phase."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.buf = b""
        self.deadline = deadline

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if time.monotonic() > self.deadline:
                raise BenchError("deadline passed waiting for a line")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError(f"connection closed; got {self.buf[:200]!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def ok(self, what: str) -> bytes:
        line = self.line()
        if not line.startswith(b"+OK"):
            raise BenchError(f"{what}: {line[:200]!r}")
        return line


def pipelined_session(
    host: str,
    port: int,
    user: str,
    password: str,
    count: int,
    window: int = 64,
    timeout: float = 120.0,
) -> SessionResult:
    """
    Log in, RETR messages 1..C{count} with C{window} commands in flight,
    QUIT. Bounded: C{count} commands, and C{timeout} seconds for the whole
    session (and for any single C{recv}).

    @raise BenchError: on a refused login, a closed connection or timeout
    """
    if window < 1:
        raise ValueError("window must be at least 1")
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = _Lines(sock, deadline)
        lines.ok("greeting")
        # USER and PASS one at a time, as clients do (Dovecot answers a
        # pipelined PASS ~30 ms late).
        sock.sendall(b"USER %s\r\n" % user.encode())
        lines.ok("USER")
        sock.sendall(b"PASS %s\r\n" % password.encode())
        lines.ok("PASS")
        t_login = time.perf_counter()

        commands = [b"RETR %d\r\n" % n for n in range(1, count + 1)]
        sent = min(window, count)
        sock.sendall(b"".join(commands[:sent]))
        buf = bytearray(lines.buf)
        pos = 0  # start of the next unparsed response in buf
        scan = -1  # where to resume the search for the body's end
        done = ok = errors = body = 0
        recv = sock.recv
        while done < count:
            # Parse every complete response in buf.
            completed = 0
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                if buf.startswith(b"+OK", pos):
                    end = buf.find(b"\r\n.\r\n", max(eol, scan))
                    if end < 0:
                        scan = max(eol, len(buf) - 4)
                        break
                    body += end + 5 - (eol + 2)
                    pos = end + 5
                    ok += 1
                else:
                    pos = eol + 2
                    errors += 1
                scan = -1
                completed += 1
            done += completed
            if pos:
                del buf[:pos]
                if scan >= 0:
                    scan -= pos
                pos = 0
            if completed and sent < count:
                more = min(completed, count - sent)
                sock.sendall(b"".join(commands[sent : sent + more]))
                sent += more
            if done >= count:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"deadline passed after {done} of {count} messages")
            chunk = recv(262144)
            if not chunk:
                raise BenchError(f"connection closed after {done} of {count} messages")
            buf += chunk
        sock.sendall(b"QUIT\r\n")
        lines.buf = bytes(buf)
        lines.ok("QUIT")
    finally:
        sock.close()
    wall = time.perf_counter() - t0
    return SessionResult(
        client=f"pipelined/{window}",
        messages=ok,
        errors=errors,
        body_octets=body,
        wall=wall,
        login=t_login - t0,
        client_cpu=time.process_time() - cpu0,
    )


def poplib_session(
    host: str, port: int, user: str, password: str, count: int, timeout: float = 120.0
) -> SessionResult:
    """
    The same session with Python's C{poplib}: one RETR at a time, as most
    simple clients do. C{poplib} leaves Nagle on, as the issue's figures had.
    """
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    ok = errors = body = 0
    p = poplib.POP3(host, port, timeout=timeout)
    try:
        p.user(user)
        p.pass_(password)
        t_login = time.perf_counter()
        for n in range(1, count + 1):
            if time.monotonic() > deadline:
                raise BenchError(f"deadline passed after {n - 1} of {count} messages")
            try:
                _resp, msg_lines, _octets = p.retr(n)
            except poplib.error_proto:
                errors += 1
                continue
            ok += 1
            # poplib strips CRLFs and un-stuffs dots; count what was on the
            # wire: each line + CRLF (a stuffed dot was one more), then ".\r\n".
            body += sum(len(line) + 2 + line.startswith(b".") for line in msg_lines) + 3
        p.quit()
    finally:
        p.close()
    wall = time.perf_counter() - t0
    return SessionResult(
        client="poplib",
        messages=ok,
        errors=errors,
        body_octets=body,
        wall=wall,
        login=t_login - t0,
        client_cpu=time.process_time() - cpu0,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="POP3 load client: login, RETR 1..N, QUIT")
    p.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", default="alice")
    p.add_argument("--password", default=os.environ.get("BENCH_PASSWORD", "bench-pw"))
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--window", type=int, default=64, help="RETRs in flight")
    p.add_argument("--poplib", action="store_true", help="use poplib instead")
    p.add_argument("--reps", type=int, default=1)
    args = p.parse_args(argv)
    for _ in range(args.reps):
        if args.poplib:
            r = poplib_session(args.host, args.port, args.user, args.password, args.messages)
        else:
            r = pipelined_session(
                args.host, args.port, args.user, args.password, args.messages, args.window
            )
        print(
            f"{r.client}: {r.messages} msgs ({r.errors} -ERR, {r.body_octets} body octets) "
            f"in {r.wall:.3f} s = {r.rate:,.0f} msgs/s; login {r.login * 1000:.1f} ms; "
            f"client CPU {r.client_cpu:.3f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
