"""
A transfer on a thread of its own (private): the server's fast lane.

In lock-step TFTP every block waits for one round trip, so the time from the
peer's ACK arriving to our next DATA leaving is the throughput. On the
reactor that time includes a trip through the event loop (C{epoll_wait},
C{doRead}, the protocol) and a sleep between blocks: measured alone, the
loop costs a bare Twisted UDP echo about 15% against tftpd-hpa. Here one
transfer's own socket (its TID) is served by one thread that drives the same
sans-IO machine synchronously (its
L{fast_ack<appnet.tftp.machine.Transfer.fast_ack>} first) and waits for the
next datagram I{inside} C{recvfrom} on that socket: the cheapest wait there
is (in a stand-alone loop, a non-blocking read that fails first and a
C{poll} before the read again took a third more CPU per block, and 10-15%
of the throughput, at blksize 1468 and 65464). Right after sending,
it may also poll for the answer for a few tens of microseconds before it
goes to sleep: on loopback with a CPU to spare, the ACK is often there by
then, and a wake-up is saved.

The thread owns the machine, the socket's receiving side and the source
while it runs. It talks to the reactor only through C{callFromThread}: the
outcome (L{Done} or L{Failed}), a datagram from a wrong TID, a crash, and
its exit. The socket is created and closed by the owner, in the reactor
thread; L{TransferThread.stop} only asks the thread to end and the exit
callback says when it has. A sleeping thread wakes at the machine's
deadline and at least every L{WAKE_INTERVAL} to see such a request (a
lock-step transfer in progress sees it at its next datagram).
L{TransferThread.release} asks it to end without a word to the peer, so
that the owner can carry the same machine and socket on on the reactor:
when several transfers share the process, one event loop serves them with
less CPU than threads contending for the GIL.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable

from twisted.python.failure import Failure

from appnet.tftp._udp import ERROR_OPCODE, MAX_PACKET_SIZE
from appnet.tftp.machine import (
    UNKNOWN_TID_DATAGRAM,
    Action,
    Close,
    Done,
    Failed,
    Send,
    Transfer,
    error_datagram,
)

__all__ = [
    "BUSY_POLL_SKIP",
    "WAKE_INTERVAL",
    "TransferThread",
    "bind_transfer_socket",
    "threads_supported",
]

BUSY_POLL_SKIP = 15
"""After a busy poll that found nothing (the answer took longer than the
budget: a real network, or a slow peer), this many waits go straight to
sleep before one polls again, so that a transfer that cannot gain from
polling spends at most 1/16 of a budget per block on it."""

WAKE_INTERVAL = 0.1
"""Seconds a transfer thread sleeps in C{recvfrom} at most before it looks
at L{TransferThread.stop} and L{TransferThread.release} requests."""

_TIMEVAL = struct.Struct("@ll")


def threads_supported() -> bool:
    """
    Whether this platform has what L{TransferThread} uses: a receive
    timeout (C{SO_RCVTIMEO}, taken as a C{struct timeval}) and
    C{MSG_DONTWAIT}, as Linux and the BSDs have.
    """
    return (
        os.name == "posix"
        and sys.platform != "cygwin"
        and hasattr(socket, "SO_RCVTIMEO")
        and hasattr(socket, "MSG_DONTWAIT")
    )


def bind_transfer_socket(interface: str) -> socket.socket:
    """
    A non-blocking UDP socket on a fresh ephemeral port of C{interface}.

    @raise OSError: no port could be bound
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((interface or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class TransferThread:
    """
    Runs one sans-IO L{Transfer} with its peer on C{sock}, in a new thread.

    Everything C{on_*} is called in the reactor thread (through
    C{call_from_thread}), in the order the thread saw it:

      - C{on_outcome(action)}: the machine's L{Done} or L{Failed};
      - C{on_unknown_tid()}: a datagram came from another address (it was
        answered with ERROR 5 unless it was an ERROR or from port 0);
      - C{on_crash(failure)}: our own bug; the thread has stopped driving
        the machine (the owner answers the peer and cleans up);
      - C{on_exit()}: always, last: the thread is about to end.

    @param machine: a transfer, not yet started
    @param sock: its non-blocking socket (see L{bind_transfer_socket}),
        owned and closed by the caller after C{on_exit}; the thread makes
        it blocking while it runs, and non-blocking again before it exits
    @param peer: the only address the machine hears from and sends to
    @param clock: the time in seconds, as the machine sees it
    @param busy_poll: seconds to poll for the answer after a send before
        sleeping (0: sleep at once)
    @param alone: whether this is the server's only live transfer; polling
        happens only then (with others live, a polling thread takes CPU and
        the GIL from them)
    """

    def __init__(
        self,
        machine: Transfer,
        sock: socket.socket,
        peer: Any,
        *,
        clock: Callable[[], float],
        busy_poll: float,
        alone: Callable[[], bool],
        call_from_thread: Callable[..., None],
        on_outcome: Callable[[Action], None],
        on_unknown_tid: Callable[[], None],
        on_crash: Callable[[Failure], None],
        on_exit: Callable[[], None],
    ) -> None:
        self.machine = machine
        self.peer = peer
        self._sock = sock
        self._clock = clock
        self._busy_poll = busy_poll
        self._alone = alone
        self._skip = 0
        self._call = call_from_thread
        self._on_outcome = on_outcome
        self._on_unknown_tid = on_unknown_tid
        self._on_crash = on_crash
        self._on_exit = on_exit
        self._finished = False
        self._stop: tuple[int, str] | None = None
        self.released = False
        self.stopped = False  # the thread sent the ERROR stop() asked for
        self._receive_timeout = 0.0  # the socket's SO_RCVTIMEO, once set
        self._thread = threading.Thread(
            target=self._run, name=f"tftp-transfer-{peer[0]}:{peer[1]}", daemon=True
        )

    def start(self) -> None:
        """Start the thread (and the machine, in it)."""
        self._thread.start()

    def stop(self, code: int, message: str) -> None:
        """
        Ask the thread to send ERROR C{code} to the peer and end. Returns at
        once; C{on_exit} follows (unless it already has), within
        L{WAKE_INTERVAL}.
        """
        if self._stop is None:
            self._stop = (code, message)

    def release(self) -> None:
        """
        Ask the thread to stop driving the machine and end, leaving the
        machine, the socket and whatever is queued on it as they are, for
        the owner to carry on with. Returns at once; C{on_exit} follows
        (unless it already has), within L{WAKE_INTERVAL}. A datagram the
        thread has already read is handled first: none is lost.
        """
        self.released = True

    def join(self) -> None:
        """Wait for the thread (after C{on_exit}: a matter of microseconds)."""
        self._thread.join()

    # The thread

    def _run(self) -> None:
        try:
            self._sock.setblocking(True)
            machine = self.machine
            clock = self._clock
            peer = self.peer
            send = self._sock.sendto
            fast_ack = machine.fast_ack
            read_ahead = machine.read_ahead
            self._perform(machine.start(clock()))
            read_ahead()
            # One clock reading per datagram: the one taken when it arrived
            # also serves the deadline check after it (microseconds early).
            now = clock()
            while not (self._finished or self.released):
                deadline = machine.deadline
                if deadline is not None and now >= deadline:
                    self._perform(machine.timer_fired(now))
                    now = clock()
                    continue
                received = self._receive(None if deadline is None else deadline - now)
                now = clock()
                if self._stop is not None:
                    code, message = self._stop
                    self._send(error_datagram(code, message))
                    self.stopped = True
                    break
                if received is None:
                    continue  # woken up, or the deadline passed
                datagram, addr = received
                # An IPv6 source comes with flow info and scope; the peer
                # (from Twisted) is (host, port).
                if addr != peer and addr[:2] != peer:
                    self._unknown_tid(datagram, addr)
                    continue
                following = fast_ack(datagram, now)
                if following is None:
                    self._perform(machine.datagram_received(datagram, now))
                else:
                    try:
                        send(following, peer)
                    except OSError:
                        pass  # lost: the timer resends
                read_ahead()
        except Exception:
            self._call(self._on_crash, Failure())
        finally:
            try:
                self._sock.setblocking(False)  # as the owner gave it
            except OSError:
                pass
            self._call(self._on_exit)

    def _receive(self, timeout: float | None) -> tuple[bytes, Any] | None:
        """
        The next datagram, or C{None} after C{timeout} seconds (or
        L{WAKE_INTERVAL}, whichever is shorter; a little later is harmless).
        """
        sock = self._sock
        budget = self._busy_poll
        if not budget:
            pass
        elif self._skip:
            self._skip -= 1
        elif self._alone():
            clock = time.perf_counter
            end = clock() + budget
            while clock() < end:
                try:
                    return sock.recvfrom(MAX_PACKET_SIZE, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
            self._skip = BUSY_POLL_SKIP
        # Whole milliseconds, at least one (a zero timeout never expires);
        # set only when it changes, which in a transfer under way is never.
        if timeout is None or timeout >= WAKE_INTERVAL:
            wait = WAKE_INTERVAL
        else:
            wait = max(0.001, round(timeout, 3))
        if wait != self._receive_timeout:
            seconds = int(wait)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                _TIMEVAL.pack(seconds, round((wait - seconds) * 1_000_000)),
            )
            self._receive_timeout = wait
        try:
            return sock.recvfrom(MAX_PACKET_SIZE)
        except BlockingIOError:
            return None  # the timeout passed

    def _unknown_tid(self, datagram: bytes, addr: Any) -> None:
        # RFC 1350: answer a stranger with ERROR 5, never disturb the
        # transfer; never answer an ERROR (two servers could loop).
        if datagram[:2] != ERROR_OPCODE and addr[1] != 0:
            self._send(UNKNOWN_TID_DATAGRAM, addr)
        self._call(self._on_unknown_tid)

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action.datagram)
            elif isinstance(action, (Done, Failed)):
                self._call(self._on_outcome, action)
            elif isinstance(action, Close):
                self._finished = True
            # SetTimer: the loop reads machine.deadline before every wait.

    def _send(self, datagram: bytes, addr: Any = None) -> None:
        try:
            self._sock.sendto(datagram, self.peer if addr is None else addr)
        except OSError:
            # A full socket buffer or an unreachable peer is a lost packet:
            # the machine's timer resends.
            pass

