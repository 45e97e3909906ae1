"""
Sans-IO TFTP transfers: one L{Sender} or L{Receiver} per transfer.

A machine holds all of a transfer's protocol state and does no I/O: no
sockets, no clock, no Deferreds. Time is passed in, datagrams and timer
expiries come in, and a list of actions comes out. The file is read through a
L{Source} (C{read(n) -> bytes}) and written through a L{Sink}
(C{write(bytes)}), one block at a time, so a server streams from disk.

Which machine for which job::

    server answering RRQ     Sender.serve(request, source, size=..., policy=...)
    server answering WRQ     Receiver.serve(request, sink, policy=...)
    client GET               Receiver.get(filename, sink, mode=..., options=..., policy=...)
    client PUT               Sender.put(filename, source, size=..., mode=..., options=..., policy=...)

What it covers: RFC 1350 lock-step; RFC 2347 option negotiation (a server
acknowledges the options it takes and ignores the rest; a client accepts the
subset the server acknowledged and answers anything it did not ask for, or a
value out of bounds, with ERROR 8); C{blksize} (RFC 2348), C{tsize} and
C{timeout} (RFC 2349), C{windowsize} (RFC 7440); block numbers that wrap from
65535 to 0; netascii; retransmission on timeout with a retry limit.

Driving a machine (the contract C{server.py} and C{client.py} implement)
=======================================================================

  1. Build the machine, call C{start(now)} and carry out the actions.
  2. For each datagram from the peer: C{datagram_received(data, now)}.
  3. When the last L{SetTimer} deadline passes: C{timer_fired(now)}. A timer
     that fires early or late is harmless: the machine checks C{now}.
  4. Carry out the actions in order:
       - L{Send}: write the datagram to the peer (see TIDs below);
       - L{SetTimer}: (re)schedule the single timer for C{deadline}; it
         replaces any earlier one;
       - L{Done}: the transfer succeeded; a receiver reports it I{before}
         the final ACK in the same list, so the owner can commit the file
         (fsync, rename) before the peer is told it arrived;
       - L{Failed}: the transfer failed; any ERROR for the peer is already
         in a preceding L{Send};
       - L{Close}: the machine is finished: cancel the timer and release
         the port. Always the last action the machine ever returns. A
         receiver returns L{Close} some time after L{Done}: it lingers
         ("dallies") to re-acknowledge a final block whose ACK was lost.
  5. Optionally, the lock-step fast path: offer each datagram to
     C{fast_ack(data, now)} first; when it returns a datagram, send it and
     (re)arm the timer for C{deadline}, and skip C{datagram_received}.
     Call C{read_ahead()} after carrying out each batch of actions, so the
     next block is read while the peer is busy. Both are exactly
     equivalent to the general path (tests run transfers both ways).
     A datagram from the fast path (returned, or in a later L{Send} that
     repeats it) may be a buffer the machine refills once its block is
     acknowledged: send it (or copy it) before the next call into the
     machine, as a socket's C{sendto} does.
  6. Exceptions: nothing the peer sends makes a machine raise. The machine
     raises only on misuse by our own code (C{datagram_received} before
     C{start}, a source returning more than asked): those are bugs.

Transfer identifiers (TIDs)
---------------------------
A TID is a UDP port; checking it is the protocol layer's job, because the
machine never sees addresses. What the layer needs:

  - A server machine is created for one client address; the layer sends
    from a fresh ephemeral port and feeds the machine only datagrams from
    that client address and port.
  - A client machine starts by sending its request to the server's well-known
    port. Until L{Transfer.established} is true, the layer sends the machine's
    datagrams there and feeds it datagrams from any port of the server's
    host. The call that makes C{established} true (a valid first answer:
    OACK, the first DATA or ACK 0) fixes the peer: the layer must lock onto
    that datagram's source address I{before} carrying out the call's actions
    (which may be an ERROR 8 meant for it). Before then the machine ignores
    anything that is not a valid answer, and never sends anything but its
    request.
  - A datagram from any other address is answered with
    L{UNKNOWN_TID_DATAGRAM} (ERROR 5) and not given to the machine (RFC 1350:
    it must not disturb the transfer).
  - A server layer should drop a repeated request (same client address, same
    bytes) while the transfer it started is alive: it is the client's
    retransmission, not a new transfer.

Windows, duplicates and the Sorcerer's Apprentice
-------------------------------------------------
The sender keeps the unacknowledged window (at most C{windowsize} blocks,
bounded by L{TransferPolicy.max_window_bytes}) and sends it whole. An ACK for
a block inside the window moves the window to the block after it and sends
from there: blocks already sent are sent again (RFC 7440 go-back). A repeat
of the ACK the window already starts after is ignored: answering it is the
Sorcerer's Apprentice bug (RFC 1123 section 4.2.3.1), where each duplicate
ACK doubles the traffic for the rest of the transfer. Only the sender's timer
sends the window again then.

The receiver writes blocks in order only (nothing out of order is buffered).
It acknowledges every C{windowsize} blocks and the last one; on a block from
further on in the window it acknowledges the last in-order block once, so the
sender can go back without waiting for its timer; on a repeat of the last
block it received it repeats that ACK (that repeat is the sender's
retransmission after our ACK was lost); older blocks are ignored. On its own
timeout it acknowledges the last in-order block again.

Every other packet that is not in a state's transition table is a protocol
error: the machine answers ERROR 4 and fails. Exceptions: before a client
transfer is established, and while a receiver dallies, strays are ignored.
"""

from __future__ import annotations

import enum
import errno
import re
import struct
from collections import deque
from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol, Union

from appnet.tftp import wire
from appnet.tftp.wire import (
    DEFAULT_BLKSIZE,
    MAX_BLKSIZE,
    MAX_BLOCK,
    MIN_BLKSIZE,
    Ack,
    Data,
    DecodeError,
    Error,
    ErrorCode,
    Mode,
    NetasciiDecoder,
    OptionAck,
    Packet,
    ReadRequest,
    WriteRequest,
    netascii_encode,
)

__all__ = [
    "UNKNOWN_TID_DATAGRAM",
    "Action",
    "Close",
    "Done",
    "Failed",
    "LimitExceeded",
    "LocalIOError",
    "NegotiatedOptions",
    "PeerProtocolError",
    "Receiver",
    "RemoteError",
    "RequestedOptions",
    "Send",
    "Sender",
    "SetTimer",
    "Sink",
    "Source",
    "State",
    "TimedOut",
    "Transfer",
    "TransferError",
    "TransferPolicy",
    "TransferStats",
    "error_datagram",
]

MAX_TIMEOUT_OPTION = 255
"""Largest C{timeout} option value, in seconds (RFC 2349)."""

MAX_WINDOWSIZE = 65535
"""Largest C{windowsize} option value (RFC 7440)."""

_ERROR_MESSAGE_LIMIT = 200

_DATA_OPCODE = wire.encode(Data(0, b""))[:2]
_DATA = int.from_bytes(_DATA_OPCODE, "big")
_DATA_HEADER = struct.Struct("!HH")
_DATA_HEADER_SIZE = _DATA_HEADER.size
_ACK_OPCODE = wire.encode(Ack(0))[:2]
_BLOCK_NUMBER = struct.Struct("!H").pack


def error_datagram(code: int, message: str) -> bytes:
    """
    An ERROR datagram, whatever the message holds.

    For the protocol layer's refusals (file not found, access violation...)
    sent before any machine exists.

    @param code: an L{ErrorCode} (or any 0-65535 integer).
    @param message: human-readable text; cut to 200 characters, and dropped
        if it cannot be encoded.
    @return: the datagram.
    """
    try:
        return wire.encode(Error(code, message[:_ERROR_MESSAGE_LIMIT]))
    except ValueError:
        return wire.encode(Error(code, ""))


UNKNOWN_TID_DATAGRAM = error_datagram(ErrorCode.UNKNOWN_TID, "unknown transfer ID")
"""ERROR 5: the answer to a datagram from an address that is not the peer."""


class Source(Protocol):
    """
    Where a L{Sender} reads the file from (a binary file object will do).
    If it also has C{readinto(buffer) -> int}, the lock-step fast path
    (L{Sender.read_ahead}) reads with that, straight into its datagrams.
    """

    def read(self, size: int) -> bytes:
        """
        @return: up to C{size} bytes; C{b""} only at the end of the file.
        @raise OSError: on a read error (the transfer fails with an ERROR).
        """


class Sink(Protocol):
    """Where a L{Receiver} writes the file to (a binary file object will do)."""

    def write(self, data: bytes) -> object:
        """
        Write all of C{data}.

        @raise OSError: on a write error (C{ENOSPC} and C{EDQUOT} become
            ERROR 3, C{EACCES}, C{EPERM} and C{EROFS} ERROR 2).
        """


class TransferError(Exception):
    """
    Why a transfer failed; carried by L{Failed}.

    @ivar code: the TFTP error code sent or received.
    @ivar message: the text sent or received.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"TFTP error {int(code)}: {message}")
        self.code = code
        self.message = message


class RemoteError(TransferError):
    """The peer sent an ERROR packet (code 8: it refused our options)."""


class TimedOut(TransferError):
    """The peer stopped answering: the retry limit is exhausted."""


class PeerProtocolError(TransferError):
    """
    The peer broke the protocol: we sent it ERROR 4, or ERROR 8 for an
    option acknowledgement we did not ask for or cannot accept.
    """


class LimitExceeded(TransferError):
    """The file is larger than L{TransferPolicy.max_size}: we sent ERROR 3."""


class LocalIOError(TransferError):
    """Our L{Source} or L{Sink} raised C{OSError} (kept as C{__cause__})."""


@dataclass(frozen=True)
class RequestedOptions:
    """
    The options a client asks for; C{None} or C{False} leaves one out.

    @ivar blksize: block size, 8-65464 (RFC 2348).
    @ivar windowsize: blocks per window, 1-65535 (RFC 7440).
    @ivar timeout: retransmission timeout in seconds, 1-255 (RFC 2349).
    @ivar tsize: ask for (GET) or announce (PUT, octet mode) the file size.
    """

    blksize: int | None = None
    windowsize: int | None = None
    timeout: int | None = None
    tsize: bool = False

    def __post_init__(self) -> None:
        _check_range("blksize", self.blksize, MIN_BLKSIZE, MAX_BLKSIZE)
        _check_range("windowsize", self.windowsize, 1, MAX_WINDOWSIZE)
        _check_range("timeout", self.timeout, 1, MAX_TIMEOUT_OPTION)


def _check_range(name: str, value: int | None, low: int, high: int) -> None:
    if value is not None and (not isinstance(value, int) or not low <= value <= high):
        raise ValueError(f"{name} must be an integer in {low}-{high}: {value!r}")


@dataclass(frozen=True)
class NegotiatedOptions:
    """
    The options a transfer runs with (the defaults when none were agreed).

    @ivar blksize: block size in octets.
    @ivar windowsize: blocks sent before an ACK is awaited.
    @ivar timeout: agreed retransmission timeout in seconds, or C{None}
        (then L{TransferPolicy.timeout} applies).
    @ivar tsize: the agreed file size, or C{None} when unknown.
    """

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: int | None = None
    tsize: int | None = None


@dataclass(frozen=True)
class TransferPolicy:
    """
    Local limits and timing for one transfer (the same object can serve many).

    @ivar timeout: seconds between retransmissions unless a C{timeout} option
        was agreed.
    @ivar retries: retransmissions of one packet before giving up.
    @ivar dally: seconds a receiver lingers after the final ACK to repeat it
        if the final block comes again; at least two retransmission
        intervals are used. 0 closes at once.
    @ivar max_blksize: largest block size a server grants.
    @ivar max_windowsize: largest window a server grants.
    @ivar max_window_bytes: a sender's window buffer bound; a server lowers
        C{windowsize} to fit, a client refuses to ask for more.
    @ivar max_size: largest file a receiver accepts (checked against C{tsize}
        up front and against the bytes written), or C{None}.
    """

    timeout: float = 1.0
    retries: int = 5
    dally: float = 5.0
    max_blksize: int = MAX_BLKSIZE
    max_windowsize: int = 64
    max_window_bytes: int = 4 * 1024 * 1024
    max_size: int | None = None

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive: {self.timeout!r}")
        if self.retries < 0:
            raise ValueError(f"retries must not be negative: {self.retries!r}")
        if self.dally < 0:
            raise ValueError(f"dally must not be negative: {self.dally!r}")
        _check_range("max_blksize", self.max_blksize, MIN_BLKSIZE, MAX_BLKSIZE)
        _check_range("max_windowsize", self.max_windowsize, 1, MAX_WINDOWSIZE)
        if self.max_window_bytes < MIN_BLKSIZE:
            raise ValueError(f"max_window_bytes too small: {self.max_window_bytes!r}")
        if self.max_size is not None and self.max_size < 0:
            raise ValueError(f"max_size must not be negative: {self.max_size!r}")


@dataclass(frozen=True)
class TransferStats:
    """
    What a transfer did, for transcripts and counters.

    @ivar options: the options it ran with.
    @ivar file_bytes: bytes read from the source or written to the sink
        (local form, before or after netascii translation).
    @ivar blocks: DATA blocks acknowledged (sender) or received (receiver).
    @ivar retransmissions: datagrams this side sent more than once.
    @ivar started: the C{now} given to C{start}.
    @ivar finished: the C{now} of L{Done} or L{Failed}.
    """

    options: NegotiatedOptions
    file_bytes: int
    blocks: int
    retransmissions: int
    started: float
    finished: float

    @property
    def duration(self) -> float:
        """Seconds from start to end."""
        return self.finished - self.started


@dataclass(frozen=True)
class Send:
    """
    Send C{datagram} to the peer (at once: a fast-path buffer is refilled
    once its block is acknowledged, see the module docstring).
    """

    datagram: bytes | bytearray


@dataclass(frozen=True)
class SetTimer:
    """Call C{timer_fired} at C{deadline}; replaces any earlier timer."""

    deadline: float


@dataclass(frozen=True)
class Done:
    """The transfer succeeded."""

    stats: TransferStats


@dataclass(frozen=True)
class Failed:
    """The transfer failed because of C{error}."""

    error: TransferError
    stats: TransferStats


@dataclass(frozen=True)
class Close:
    """The machine is finished: cancel the timer, release the port."""


Action = Union[Send, SetTimer, Done, Failed, Close]
"""Anything a machine asks its owner to do."""


class State(enum.Enum):
    """Where a transfer is."""

    IDLE = "idle"
    """Built, C{start} not called yet."""
    REQUESTING = "requesting"
    """Client: request sent, no answer yet."""
    NEGOTIATING = "negotiating"
    """Server sender: OACK sent, waiting for ACK 0."""
    SENDING = "sending"
    """Sender: DATA flowing."""
    RECEIVING = "receiving"
    """Receiver: waiting for or receiving DATA."""
    DALLYING = "dallying"
    """Receiver: done, lingering to repeat the final ACK."""
    CLOSED = "closed"
    """Finished; everything is ignored."""


_DECIMAL = re.compile(r"[0-9]{1,20}")


def _parse_uint(text: str) -> int | None:
    """A decimal option value, or C{None} (bounded: no giant integers)."""
    if _DECIMAL.fullmatch(text) is None:
        return None
    return int(text)


def _local_io_error(error: OSError) -> LocalIOError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        code = ErrorCode.DISK_FULL
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        code = ErrorCode.ACCESS_VIOLATION
    else:
        code = ErrorCode.NOT_DEFINED
    # strerror only: the peer must not learn our paths.
    failure = LocalIOError(code, error.strerror or "I/O error")
    failure.__cause__ = error
    return failure


_Handler = Callable[..., list[Action]]


class Transfer:
    """
    What L{Sender} and L{Receiver} share: dispatch, timers, retries, failure.

    Use the class methods of L{Sender} and L{Receiver} to build one.
    """

    _packet_table: ClassVar[dict[tuple[State, type], _Handler]] = {}
    _timer_table: ClassVar[dict[State, _Handler]] = {}
    _sending: ClassVar[bool]

    def __init__(
        self,
        *,
        request: ReadRequest | WriteRequest,
        is_client: bool,
        requested: RequestedOptions | None,
        policy: TransferPolicy,
    ) -> None:
        self._request = request
        self._request_datagram = wire.encode(request) if is_client else b""
        self._mode = request.mode
        self._is_client = is_client
        self._requested = requested
        self._policy = policy
        self._options = NegotiatedOptions()
        self._state = State.IDLE
        self._established = not is_client
        self._deadline: float | None = None
        self._timeouts = 0
        self._retransmissions = 0
        self._file_bytes = 0
        self._started = 0.0
        self._ended = 0.0

    # Public face

    @property
    def state(self) -> State:
        """Where the transfer is."""
        return self._state

    @property
    def established(self) -> bool:
        """
        True once the peer's TID is known: from the start for a server, from
        the first valid answer for a client (see the module docstring).
        """
        return self._established

    @property
    def options(self) -> NegotiatedOptions:
        """The options in force (the defaults until negotiated)."""
        return self._options

    @property
    def transferred(self) -> int:
        """File bytes read or written so far, for progress reports."""
        return self._file_bytes

    @property
    def expected_size(self) -> int | None:
        """The file size announced by C{tsize}, or C{None}."""
        return self._options.tsize

    @property
    def deadline(self) -> float | None:
        """When the machine wants C{timer_fired}, or C{None}."""
        return self._deadline

    def start(self, now: float) -> list[Action]:
        """
        Begin: a client sends its request, a server its first answer.

        @param now: the current time in seconds.
        @return: actions to carry out.
        @raise RuntimeError: if already started.
        """
        if self._state is not State.IDLE:
            raise RuntimeError("transfer already started")
        self._started = now
        return self._guard(now, self._start, now)

    def datagram_received(self, datagram: bytes, now: float) -> list[Action]:
        """
        Handle one datagram from the peer.

        @param datagram: the raw bytes, not yet decoded.
        @param now: the current time in seconds.
        @return: actions to carry out.
        @raise RuntimeError: if C{start} was not called.
        """
        if self._state is State.IDLE:
            raise RuntimeError("start() the transfer first")
        if self._state is State.CLOSED:
            return []
        try:
            packet = wire.decode(datagram)
        except DecodeError as e:
            return self._guard(now, self._on_malformed, e, now)
        handler = self._packet_table.get((self._state, type(packet)))
        if handler is None:
            return self._guard(now, self._on_unexpected, packet, now)
        return self._guard(now, handler, self, packet, now)

    def fast_ack(self, datagram: bytes, now: float) -> bytes | None:
        """
        The in-order ACK fast path of a lock-step sender; see L{Sender.fast_ack}.

        @return: C{None} here: a receiver has no fast path.
        """
        return None

    def read_ahead(self) -> None:
        """
        Read what the fast path needs next; see L{Sender.read_ahead}. A
        no-op here.
        """

    def timer_fired(self, now: float) -> list[Action]:
        """
        Handle the timer set by the last L{SetTimer}.

        @param now: the current time in seconds; before the deadline nothing
            happens.
        @return: actions to carry out.
        """
        if self._deadline is None or now < self._deadline:
            return []
        return self._guard(now, self._timer_table[self._state], self, now)

    # Shared machinery

    def _start(self, now: float) -> list[Action]:
        raise NotImplementedError()

    def _blocks_done(self) -> int:
        raise NotImplementedError()

    def _guard(self, now: float, handler: _Handler, *args: object) -> list[Action]:
        """Run a handler; turn the failures it signals into actions."""
        try:
            return handler(*args)
        except TransferError as e:
            return self._fail(e, now)
        except OSError as e:
            return self._fail(_local_io_error(e), now)

    def _stats(self) -> TransferStats:
        return TransferStats(
            options=self._options,
            file_bytes=self._file_bytes,
            blocks=self._blocks_done(),
            retransmissions=self._retransmissions,
            started=self._started,
            finished=self._ended,
        )

    def _close(self) -> Close:
        self._state = State.CLOSED
        self._deadline = None
        return Close()

    def _fail(self, error: TransferError, now: float) -> list[Action]:
        actions: list[Action] = []
        # Never answer an ERROR with an ERROR, and never send one before the
        # peer is known (it would go to the server's well-known port).
        if self._established and not isinstance(error, RemoteError):
            actions.append(Send(error_datagram(error.code, error.message)))
        self._ended = now
        actions.append(Failed(error, self._stats()))
        actions.append(self._close())
        return actions

    def _succeed(self, now: float) -> Done:
        self._ended = now
        return Done(self._stats())

    @property
    def _interval(self) -> float:
        if self._options.timeout is not None:
            return float(self._options.timeout)
        return self._policy.timeout

    def _arm(self, now: float, delay: float | None = None) -> SetTimer:
        self._deadline = now + (self._interval if delay is None else delay)
        return SetTimer(self._deadline)

    def _count_timeout(self) -> None:
        self._timeouts += 1
        if self._timeouts > self._policy.retries:
            raise TimedOut(
                ErrorCode.NOT_DEFINED,
                f"timed out after {self._policy.retries} retransmissions",
            )

    def _resend(self, now: float, datagram: bytes) -> list[Action]:
        self._count_timeout()
        self._retransmissions += 1
        return [Send(datagram), self._arm(now)]

    def _tolerates_strays(self) -> bool:
        # Before the peer is known anything may arrive from anyone; after the
        # end, late duplicates are normal. Neither is worth an ERROR.
        return self._state in (State.REQUESTING, State.DALLYING)

    def _on_malformed(self, error: DecodeError, now: float) -> list[Action]:
        if self._tolerates_strays():
            return []
        raise PeerProtocolError(ErrorCode.ILLEGAL_OPERATION, f"malformed packet: {error}")

    def _on_unexpected(self, packet: Packet, now: float) -> list[Action]:
        if self._tolerates_strays():
            return []
        raise PeerProtocolError(
            ErrorCode.ILLEGAL_OPERATION,
            f"unexpected {type(packet).__name__} while {self._state.value}",
        )

    def _on_error(self, packet: Error, now: float) -> list[Action]:
        raise RemoteError(packet.code, packet.message)

    def _on_request_timeout(self, now: float) -> list[Action]:
        return self._resend(now, self._request_datagram)

    def _check_mode(self) -> None:
        if self._mode is Mode.MAIL:
            raise PeerProtocolError(ErrorCode.ILLEGAL_OPERATION, "mail mode is not supported")

    def _negotiate_as_server(self, size: int | None) -> dict[str, str]:
        """
        Choose the options to grant (RFC 2347: ignore what we do not take).

        Sets L{options}; returns what to put in the OACK, in request order
        (empty: no OACK).

        @raise LimitExceeded: a WRQ announces a file over C{max_size}.
        """
        policy = self._policy
        granted: dict[str, int] = {}
        for name, raw in self._request.options.items():
            value = _parse_uint(raw)
            if value is None:
                continue  # not a number: ignored, like an unknown option
            if name == "blksize" and value >= MIN_BLKSIZE:
                # RFC 2348: a server may answer with a smaller block size.
                granted[name] = min(value, policy.max_blksize)
            elif name == "timeout" and 1 <= value <= MAX_TIMEOUT_OPTION:
                granted[name] = value
            elif name == "windowsize" and 1 <= value <= MAX_WINDOWSIZE:
                granted[name] = min(value, policy.max_windowsize)
            elif name == "tsize":
                if self._sending:
                    # The size of a netascii file on the wire is not known
                    # without reading it all: tftpd-hpa leaves tsize out too.
                    if size is not None and self._mode is Mode.OCTET:
                        granted[name] = size
                else:
                    if policy.max_size is not None and value > policy.max_size:
                        raise LimitExceeded(
                            ErrorCode.DISK_FULL,
                            f"file too large: {value} > {policy.max_size} octets",
                        )
                    granted[name] = value
        blksize = granted.get("blksize", DEFAULT_BLKSIZE)
        if "windowsize" in granted and self._sending:
            # The window is buffered for retransmission: keep it bounded.
            granted["windowsize"] = max(
                1, min(granted["windowsize"], policy.max_window_bytes // blksize)
            )
        self._options = NegotiatedOptions(
            blksize=blksize,
            windowsize=granted.get("windowsize", 1),
            timeout=granted.get("timeout"),
            tsize=granted.get("tsize"),
        )
        return {name: str(value) for name, value in granted.items()}

    def _negotiate_as_client(self, offered: dict[str, str]) -> None:
        """
        Accept the subset of our options the server acknowledged.

        @raise PeerProtocolError: (ERROR 8) an option we did not ask for, or
            a value we cannot accept.
        @raise LimitExceeded: (ERROR 3) a GET's C{tsize} is over C{max_size}.
        """
        asked = self._request.options
        requested = self._requested
        assert requested is not None
        values: dict[str, int] = {}
        for name, raw in offered.items():
            value = _parse_uint(raw)
            if name not in asked:
                ok = False
            elif value is None:
                ok = False
            elif name == "blksize":
                ok = MIN_BLKSIZE <= value <= (requested.blksize or 0)
            elif name == "windowsize":
                ok = 1 <= value <= (requested.windowsize or 0)
            elif name == "timeout":
                # RFC 2349: the server must answer with the value asked for.
                ok = value == requested.timeout
            elif name == "tsize":
                ok = not self._sending or value == int(asked["tsize"])
            else:
                ok = False
            if not ok:
                raise PeerProtocolError(
                    ErrorCode.OPTION_REFUSED, f"unacceptable option {name}={raw}"
                )
            assert value is not None
            values[name] = value
        tsize = values.get("tsize")
        if not self._sending and tsize is not None:
            self._check_size(tsize)
        self._options = NegotiatedOptions(
            blksize=values.get("blksize", DEFAULT_BLKSIZE),
            windowsize=values.get("windowsize", 1),
            timeout=values.get("timeout"),
            tsize=tsize,
        )

    def _check_size(self, size: int) -> None:
        limit = self._policy.max_size
        if limit is not None and size > limit:
            raise LimitExceeded(ErrorCode.DISK_FULL, f"file too large: over {limit} octets")


def _client_request_options(
    options: RequestedOptions, size: int | None, sending: bool
) -> dict[str, str]:
    wanted: dict[str, str] = {}
    if options.blksize is not None:
        wanted["blksize"] = str(options.blksize)
    if options.tsize:
        wanted["tsize"] = str(size) if sending else "0"
    if options.timeout is not None:
        wanted["timeout"] = str(options.timeout)
    if options.windowsize is not None:
        wanted["windowsize"] = str(options.windowsize)
    return wanted


class Sender(Transfer):
    """
    Sends a file: a server answering RRQ, or a client's PUT.

    Build one with L{Sender.serve} or L{Sender.put}.
    """

    _sending = True

    def __init__(
        self,
        source: Source,
        *,
        request: ReadRequest | WriteRequest,
        is_client: bool,
        size: int | None,
        requested: RequestedOptions | None,
        policy: TransferPolicy,
    ) -> None:
        super().__init__(
            request=request, is_client=is_client, requested=requested, policy=policy
        )
        self._source = source
        self._size = size
        self._netascii = request.mode is Mode.NETASCII
        # Netascii output not yet cut into a block: under three blocks.
        self._pending = bytearray()
        self._eof = False
        # Encoded DATA datagrams for blocks base .. base + len - 1, kept for
        # retransmission; at most one window.
        self._window: deque[bytes | bytearray] = deque()
        self._base = 1
        self._sent_upto = 0
        self._final: int | None = None
        self._oack = b""
        # The fast path (fast_ack): the ACK that moves a lock-step transfer
        # on, and the source's next chunk read ahead (or the OSError the
        # read raised, raised again where the read would have been), with
        # the DATA datagram fast_ack sends when that chunk is a full block.
        # A source with readinto() reads straight into such a datagram, in
        # one of two buffers that take turns (the spare is the one whose
        # block was acknowledged last).
        self._fast_ack: bytes | None = None
        self._ahead: bytes | memoryview | OSError | None = None
        self._ahead_datagram: bytes | bytearray | None = None
        self._readinto = getattr(source, "readinto", None)
        self._spare: bytearray | None = None

    @classmethod
    def serve(
        cls,
        request: ReadRequest,
        source: Source,
        *,
        size: int | None = None,
        policy: TransferPolicy = TransferPolicy(),
    ) -> Sender:
        """
        Answer a read request.

        @param request: the decoded RRQ.
        @param source: the opened file.
        @param size: the file's size in octets, reported for C{tsize} in
            octet mode; C{None} if unknown.
        @param policy: limits and timing.
        """
        return cls(
            source, request=request, is_client=False, size=size, requested=None, policy=policy
        )

    @classmethod
    def put(
        cls,
        filename: str,
        source: Source,
        *,
        size: int | None = None,
        mode: Mode = Mode.OCTET,
        options: RequestedOptions = RequestedOptions(),
        policy: TransferPolicy = TransferPolicy(),
    ) -> Sender:
        """
        Write a file to a server.

        @param filename: the name to ask for.
        @param source: the file to send.
        @param size: its size, needed for C{options.tsize}.
        @param mode: octet or netascii.
        @param options: the options to ask for.
        @param policy: limits and timing.
        @raise ValueError: bad mode, C{tsize} without a size or in netascii
            mode, or a window larger than C{policy.max_window_bytes}.
        """
        if mode not in (Mode.OCTET, Mode.NETASCII):
            raise ValueError(f"unsupported mode: {mode}")
        if options.tsize and (size is None or mode is not Mode.OCTET):
            raise ValueError("tsize needs the size of a file sent in octet mode")
        window = (options.blksize or DEFAULT_BLKSIZE) * (options.windowsize or 1)
        if window > policy.max_window_bytes:
            raise ValueError(f"window of {window} octets exceeds max_window_bytes")
        request = WriteRequest(filename, mode, _client_request_options(options, size, True))
        return cls(
            source, request=request, is_client=True, size=size, requested=options, policy=policy
        )

    def _blocks_done(self) -> int:
        return self._base - 1

    def _start(self, now: float) -> list[Action]:
        if self._is_client:
            self._state = State.REQUESTING
            return [Send(self._request_datagram), self._arm(now)]
        self._check_mode()
        granted = self._negotiate_as_server(self._size)
        if granted:
            self._state = State.NEGOTIATING
            self._oack = wire.encode(OptionAck(granted))
            return [Send(self._oack), self._arm(now)]
        self._state = State.SENDING
        return self._send_window(self._base, now)

    # The in-order ACK fast path

    def fast_ack(self, datagram: bytes, now: float) -> bytes | None:
        """
        The in-order ACK fast path of a lock-step transfer.

        When C{datagram} is exactly the ACK of the one block in flight of an
        octet-mode transfer with C{windowsize} 1, the file goes on, and
        L{read_ahead} has the next full block ready, this does what
        L{datagram_received} would (move the window on, count, re-arm the
        timer for L{deadline}) without decoding a packet or building
        actions, and returns the DATA datagram to send. In every other case
        (duplicates, stale or partial ACKs, the last block, netascii, a
        short or failed read, anything else) it changes nothing and returns
        C{None}: give the datagram to L{datagram_received}.

        @param datagram: the raw bytes from the peer.
        @param now: the current time in seconds.
        @return: the next DATA datagram, or C{None}.
        """
        following = self._ahead_datagram
        if datagram != self._fast_ack or following is None:
            return None
        # _on_ack and _send_window for exactly this case.
        self._ahead = self._ahead_datagram = None
        self._file_bytes += self._options.blksize
        acknowledged = self._window[0]
        if type(acknowledged) is bytearray:
            self._spare = acknowledged  # sent, acknowledged: free to refill
        self._window[0] = following
        self._base = self._sent_upto = self._base + 1
        self._timeouts = 0
        self._fast_ack = _ACK_OPCODE + following[2:4]
        self._deadline = now + self._interval
        return following

    def read_ahead(self) -> None:
        """
        Read the source's next chunk now, while the peer is busy with the
        block just sent, so that L{fast_ack} needs no I/O.

        Only while the fast path is armed (lock-step, octet, more to come),
        and only the read the next block would make anyway: the file is
        read in the same order, just earlier (with C{readinto} when the
        source has it, C{read} otherwise). A read error is kept and raised
        where the read would have been.

        The next DATA datagram is built here too, off the path from ACK to
        DATA: with C{readinto}, the file is read straight into it, behind
        its header, in a buffer the machine reuses once that block is
        acknowledged (see the module docstring: carry out a L{Send} before
        the next call into the machine).
        """
        if self._fast_ack is None or self._ahead is not None or self._eof:
            return
        blksize = self._options.blksize
        readinto = self._readinto
        if readinto is None or self._pending:
            try:
                ahead = self._ahead = self._source.read(blksize)
            except OSError as e:
                self._ahead = e
                return
            if type(ahead) is bytes and len(ahead) == blksize and not self._pending:
                number = _BLOCK_NUMBER((self._base + 1) & MAX_BLOCK)
                self._ahead_datagram = _DATA_OPCODE + number + ahead
            return
        buffer = self._spare
        self._spare = None
        if buffer is None:
            buffer = bytearray(_DATA_HEADER_SIZE + blksize)
        payload = memoryview(buffer)[_DATA_HEADER_SIZE:]
        try:
            count = readinto(payload)
        except OSError as e:
            self._ahead = e
            return
        if count is None:  # nothing yet (a non-blocking source): read later
            self._spare = buffer
        elif count == blksize:
            _DATA_HEADER.pack_into(buffer, 0, _DATA, (self._base + 1) & MAX_BLOCK)
            self._ahead = payload
            self._ahead_datagram = buffer
        else:
            # The end of the file (or a short read): the general path.
            self._ahead = bytes(payload[:count])
            self._spare = buffer

    def _read_chunk(self, size: int) -> bytes:
        ahead = self._ahead
        if ahead is None:
            return self._source.read(size)
        self._ahead = self._ahead_datagram = None
        if isinstance(ahead, OSError):
            raise ahead
        return bytes(ahead)  # a memoryview after readinto; no copy of bytes

    def _close(self) -> Close:
        self._fast_ack = None
        return super()._close()

    def _read_payload(self) -> bytes:
        """The next block's payload: a full block, or a short one at the end."""
        blksize = self._options.blksize
        pending = self._pending
        while len(pending) < blksize and not self._eof:
            chunk = self._read_chunk(blksize)
            if len(chunk) > blksize:
                raise ValueError(f"source returned {len(chunk)} bytes, asked for {blksize}")
            if not chunk:
                self._eof = True
                break
            self._file_bytes += len(chunk)
            if self._netascii:
                pending += netascii_encode(chunk)
            elif not pending and len(chunk) == blksize:
                return bytes(chunk)  # the common case: no copy through the buffer
            else:
                pending += chunk
        payload = bytes(pending[:blksize])
        del pending[:blksize]
        return payload

    def _send_window(self, first: int, now: float) -> list[Action]:
        """Send blocks C{first} to the window's end, reading new ones as needed."""
        actions: list[Action] = []
        last = self._base + self._options.windowsize - 1
        block = first
        while block <= last and (self._final is None or block <= self._final):
            index = block - self._base
            if index < len(self._window):
                datagram = self._window[index]
            else:
                payload = self._read_payload()
                if len(payload) < self._options.blksize:
                    self._final = block
                datagram = wire.encode(Data(block & MAX_BLOCK, payload))
                self._window.append(datagram)
            if block <= self._sent_upto:
                self._retransmissions += 1
            else:
                self._sent_upto = block
            actions.append(Send(datagram))
            block += 1
        if self._options.windowsize == 1 and self._final is None and not self._netascii:
            self._fast_ack = _ACK_OPCODE + _BLOCK_NUMBER(self._sent_upto & MAX_BLOCK)
        else:
            self._fast_ack = None
        actions.append(self._arm(now))
        return actions

    def _resolve_ack(self, wire_block: int) -> int | None:
        """
        The absolute block an ACK refers to, if it is the block just before
        the window or inside what was sent; C{None} otherwise.
        """
        before = self._base - 1
        offset = (wire_block - before) & MAX_BLOCK
        if offset <= self._sent_upto - before:
            return before + offset
        return None

    # Transitions

    def _on_plain_answer(self, packet: Ack, now: float) -> list[Action]:
        # Client PUT: ACK 0 means the server ignored our options, if any.
        if packet.block != 0:
            return []
        self._established = True
        self._timeouts = 0
        self._state = State.SENDING
        return self._send_window(self._base, now)

    def _on_option_ack(self, packet: OptionAck, now: float) -> list[Action]:
        # Client PUT: the OACK stands for ACK 0 (RFC 2347).
        self._established = True
        self._timeouts = 0
        self._negotiate_as_client(packet.options)
        self._state = State.SENDING
        return self._send_window(self._base, now)

    def _on_options_confirmed(self, packet: Ack, now: float) -> list[Action]:
        # Server after OACK: ACK 0 means the client accepts our options.
        if packet.block != 0:
            return self._on_unexpected(packet, now)
        self._timeouts = 0
        self._state = State.SENDING
        return self._send_window(self._base, now)

    def _on_ack(self, packet: Ack, now: float) -> list[Action]:
        acked = self._resolve_ack(packet.block)
        if acked is None or acked == self._base - 1:
            # Stale, or a repeat of the ACK the window already starts after.
            # Sending anything now is the Sorcerer's Apprentice bug; the
            # timer covers a real loss.
            return []
        for _ in range(acked - self._base + 1):
            self._window.popleft()
        self._base = acked + 1
        self._timeouts = 0
        if acked == self._final:
            return [self._succeed(now), self._close()]
        # After a partial ACK the blocks from base on are sent again (go-back).
        return self._send_window(self._base, now)

    def _on_repeated_option_ack(self, packet: OptionAck, now: float) -> list[Action]:
        if self._is_client:
            # The server repeated its OACK before our first DATA reached it:
            # a duplicate ACK 0, which must not trigger a retransmission.
            return []
        return self._on_unexpected(packet, now)

    def _on_negotiating_timeout(self, now: float) -> list[Action]:
        return self._resend(now, self._oack)

    def _on_sending_timeout(self, now: float) -> list[Action]:
        self._count_timeout()
        return self._send_window(self._base, now)

    _packet_table = {
        (State.REQUESTING, Ack): _on_plain_answer,
        (State.REQUESTING, OptionAck): _on_option_ack,
        (State.REQUESTING, Error): Transfer._on_error,
        (State.NEGOTIATING, Ack): _on_options_confirmed,
        (State.NEGOTIATING, Error): Transfer._on_error,
        (State.SENDING, Ack): _on_ack,
        (State.SENDING, OptionAck): _on_repeated_option_ack,
        (State.SENDING, Error): Transfer._on_error,
    }
    _timer_table = {
        State.REQUESTING: Transfer._on_request_timeout,
        State.NEGOTIATING: _on_negotiating_timeout,
        State.SENDING: _on_sending_timeout,
    }


class Receiver(Transfer):
    """
    Receives a file: a server answering WRQ, or a client's GET.

    Build one with L{Receiver.serve} or L{Receiver.get}.
    """

    _sending = False

    def __init__(
        self,
        sink: Sink,
        *,
        request: ReadRequest | WriteRequest,
        is_client: bool,
        requested: RequestedOptions | None,
        policy: TransferPolicy,
    ) -> None:
        super().__init__(
            request=request, is_client=is_client, requested=requested, policy=policy
        )
        self._sink = sink
        self._decoder = NetasciiDecoder() if request.mode is Mode.NETASCII else None
        self._last = 0  # absolute number of the last block received in order
        self._since_ack = 0
        self._acked_current = True
        self._oack: bytes | None = None

    @classmethod
    def serve(
        cls,
        request: WriteRequest,
        sink: Sink,
        *,
        policy: TransferPolicy = TransferPolicy(),
    ) -> Receiver:
        """
        Answer a write request.

        @param request: the decoded WRQ.
        @param sink: the file to write (create-only: the server's business).
        @param policy: limits (C{max_size}) and timing.
        """
        return cls(sink, request=request, is_client=False, requested=None, policy=policy)

    @classmethod
    def get(
        cls,
        filename: str,
        sink: Sink,
        *,
        mode: Mode = Mode.OCTET,
        options: RequestedOptions = RequestedOptions(),
        policy: TransferPolicy = TransferPolicy(),
    ) -> Receiver:
        """
        Read a file from a server.

        @param filename: the name to ask for.
        @param sink: where to write it.
        @param mode: octet or netascii.
        @param options: the options to ask for.
        @param policy: limits (C{max_size}) and timing.
        @raise ValueError: unsupported mode.
        """
        if mode not in (Mode.OCTET, Mode.NETASCII):
            raise ValueError(f"unsupported mode: {mode}")
        request = ReadRequest(filename, mode, _client_request_options(options, None, False))
        return cls(sink, request=request, is_client=True, requested=options, policy=policy)

    def _blocks_done(self) -> int:
        return self._last

    def _start(self, now: float) -> list[Action]:
        if self._is_client:
            self._state = State.REQUESTING
            return [Send(self._request_datagram), self._arm(now)]
        self._check_mode()
        granted = self._negotiate_as_server(None)
        if granted:
            self._oack = wire.encode(OptionAck(granted))
        self._state = State.RECEIVING
        return [self._send_ack(), self._arm(now)]

    def _ack_datagram(self) -> bytes:
        if self._last == 0 and self._oack is not None:
            return self._oack  # a server's OACK stands for ACK 0
        return wire.encode(Ack(self._last & MAX_BLOCK))

    def _send_ack(self, retransmission: bool = False) -> Send:
        self._since_ack = 0
        self._acked_current = True
        if retransmission:
            self._retransmissions += 1
        return Send(self._ack_datagram())

    def _write(self, data: bytes) -> None:
        if data:
            self._check_size(self._file_bytes + len(data))
            self._sink.write(data)
            self._file_bytes += len(data)

    def _accept(self, payload: bytes, now: float) -> list[Action]:
        self._write(self._decoder.feed(payload) if self._decoder else payload)
        self._last += 1
        self._timeouts = 0
        self._acked_current = False
        self._since_ack += 1
        if len(payload) < self._options.blksize:
            return self._finish(now)
        actions: list[Action] = []
        if self._since_ack >= self._options.windowsize:
            actions.append(self._send_ack())
        actions.append(self._arm(now))
        return actions

    def _finish(self, now: float) -> list[Action]:
        if self._decoder:
            self._write(self._decoder.finish())
        done = self._succeed(now)
        actions: list[Action] = [done, self._send_ack()]
        if self._policy.dally == 0:
            actions.append(self._close())
        else:
            self._state = State.DALLYING
            actions.append(self._arm(now, self._dally_time))
        return actions

    @property
    def _dally_time(self) -> float:
        # Long enough for the peer's next retransmission of the final block.
        return max(self._policy.dally, 2 * self._interval)

    # Transitions

    def _on_first_data(self, packet: Data, now: float) -> list[Action]:
        # Client GET: DATA 1 straight away means no options were taken.
        if packet.block != 1:
            return []
        self._established = True
        self._state = State.RECEIVING
        return self._on_data(packet, now)

    def _on_option_ack(self, packet: OptionAck, now: float) -> list[Action]:
        self._established = True
        self._timeouts = 0
        self._negotiate_as_client(packet.options)
        self._state = State.RECEIVING
        return [self._send_ack(), self._arm(now)]

    def _on_data(self, packet: Data, now: float) -> list[Action]:
        blksize = self._options.blksize
        if len(packet.payload) > blksize:
            raise PeerProtocolError(
                ErrorCode.ILLEGAL_OPERATION,
                f"DATA block {packet.block} is longer than the block size {blksize}",
            )
        distance = (packet.block - (self._last + 1)) & MAX_BLOCK
        if distance == 0:
            return self._accept(packet.payload, now)
        if distance < self._options.windowsize:
            # Further on in the window: a block was lost or overtaken. Say
            # once where we are, so the sender goes back without waiting for
            # its timer; the block itself is dropped (nothing is buffered).
            if self._acked_current:
                return []
            return [self._send_ack(), self._arm(now)]
        if distance == MAX_BLOCK and self._last > 0:
            # The last block we have, again: the sender did not get our ACK.
            # Having just answered, our own timeout would only repeat it.
            return [self._send_ack(retransmission=True), self._arm(now)]
        return []  # older still: a stale duplicate

    def _on_repeated_option_ack(self, packet: OptionAck, now: float) -> list[Action]:
        if not self._is_client:
            return self._on_unexpected(packet, now)
        if self._last == 0:
            # Our ACK 0 was lost and the server repeats its OACK.
            return [self._send_ack(retransmission=True)]
        return []

    def _on_data_while_dallying(self, packet: Data, now: float) -> list[Action]:
        if (packet.block - self._last) & MAX_BLOCK != 0:
            return []
        # The final block again: our final ACK was lost. Repeat it and wait
        # for the next retransmission as long again.
        return [self._send_ack(retransmission=True), self._arm(now, self._dally_time)]

    def _on_error_while_dallying(self, packet: Error, now: float) -> list[Action]:
        # The file is complete and Done was reported; the peer gave up on our
        # final ACK. Nothing left to do.
        return [self._close()]

    def _on_receiving_timeout(self, now: float) -> list[Action]:
        self._count_timeout()
        return [self._send_ack(retransmission=True), self._arm(now)]

    def _on_dally_timeout(self, now: float) -> list[Action]:
        return [self._close()]

    _packet_table = {
        (State.REQUESTING, Data): _on_first_data,
        (State.REQUESTING, OptionAck): _on_option_ack,
        (State.REQUESTING, Error): Transfer._on_error,
        (State.RECEIVING, Data): _on_data,
        (State.RECEIVING, OptionAck): _on_repeated_option_ack,
        (State.RECEIVING, Error): Transfer._on_error,
        (State.DALLYING, Data): _on_data_while_dallying,
        (State.DALLYING, Error): _on_error_while_dallying,
    }
    _timer_table = {
        State.REQUESTING: Transfer._on_request_timeout,
        State.RECEIVING: _on_receiving_timeout,
        State.DALLYING: _on_dally_timeout,
    }
