"""
The TFTP codec: datagrams to typed packets and back, and netascii translation.

Pure functions and frozen dataclasses, standard library only (no Twisted, no
I/O), so that L{appnet.tftp.machine} and the tests can use them anywhere.

Packets (RFC 1350, RFC 2347)::

    RRQ/WRQ  | 01/02 | filename | 0 | mode | 0 | opt1 | 0 | value1 | 0 | ...
    DATA     | 03 | block | payload (0 to 65464 octets)
    ACK      | 04 | block
    ERROR    | 05 | code | message | 0
    OACK     | 06 | opt1 | 0 | value1 | 0 | ...

Decisions where the RFCs leave room (all enforced by L{decode}, and by the
dataclasses' constructors so that anything that can be built can be encoded):

  - B{File names and error messages} are netascii on paper, but real clients
    send UTF-8 and the occasional raw Latin-1 byte. They are decoded the way
    Python decodes POSIX file names (UTF-8 with C{surrogateescape}, i.e.
    C{os.fsdecode} on a UTF-8 system): UTF-8 names read naturally, any other
    byte except NUL survives the round trip exactly, and the filesystem store
    sees the same name the disk holds. A file name may not be empty.
  - B{Modes, option names and option values} are ASCII. Modes and option
    names are case-insensitive (RFC 1350, RFC 2347) and are normalised to
    lower case; option values are kept as sent. An option name that appears
    twice (in any case), or an empty name or value, is malformed.
  - B{Sizes}: a datagram may be at most L{MAX_DATAGRAM_SIZE} octets (a DATA
    packet with the largest RFC 2348 block). RFC 2347 caps requests at 512
    octets, but tftpd-hpa accepts requests up to a full datagram, and so do
    we: a long path is not worth a failed boot.
  - B{Strictness}: every string must end in its NUL and nothing may follow
    the last one; an ACK is exactly four octets. Anything else raises
    L{DecodeError}, the one error L{decode} raises.
  - B{Error codes} outside 0-8 are kept as plain integers (a peer may use
    private codes); the known ones become L{ErrorCode} members.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass, field
from typing import Union

__all__ = [
    "DEFAULT_BLKSIZE",
    "MAX_BLKSIZE",
    "MAX_BLOCK",
    "MAX_DATAGRAM_SIZE",
    "MIN_BLKSIZE",
    "Ack",
    "Data",
    "DecodeError",
    "Error",
    "ErrorCode",
    "Mode",
    "NetasciiDecoder",
    "Opcode",
    "OptionAck",
    "Packet",
    "ReadRequest",
    "WriteRequest",
    "decode",
    "encode",
    "netascii_decode",
    "netascii_encode",
]

MIN_BLKSIZE = 8
"""Smallest block size RFC 2348 allows."""

MAX_BLKSIZE = 65464
"""Largest block size RFC 2348 allows."""

DEFAULT_BLKSIZE = 512
"""The RFC 1350 block size, used when no C{blksize} option was agreed."""

MAX_BLOCK = 0xFFFF
"""Largest block number; the next block is numbered 0 again."""

MAX_DATAGRAM_SIZE = 4 + MAX_BLKSIZE
"""Largest datagram L{decode} accepts and L{encode} produces."""

_HEADER = struct.Struct("!H")
_HEADER_BLOCK = struct.Struct("!HH")

_TEXT_ENCODING = "utf-8"
_TEXT_ERRORS = "surrogateescape"


class DecodeError(ValueError):
    """
    A datagram is not a well-formed TFTP packet.

    The only exception L{decode} raises, whatever the bytes.
    """


class Opcode(enum.IntEnum):
    """Packet types (RFC 1350, and OACK from RFC 2347)."""

    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(enum.IntEnum):
    """ERROR packet codes (RFC 1350, and 8 from RFC 2347)."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


class Mode(enum.StrEnum):
    """Transfer modes (RFC 1350); C{mail} is obsolete but well-formed."""

    NETASCII = "netascii"
    OCTET = "octet"
    MAIL = "mail"


def _text_to_bytes(text: str, what: str) -> bytes:
    """
    Encode a file name or message, insisting on the canonical form.

    @raise ValueError: if C{text} holds a NUL, cannot be encoded, or is not
        what decoding its own encoding gives back (a round trip would change
        it, e.g. escaped bytes that spell valid UTF-8).
    """
    if "\0" in text:
        raise ValueError(f"{what} contains NUL")
    try:
        raw = text.encode(_TEXT_ENCODING, _TEXT_ERRORS)
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} cannot be encoded: {e}") from None
    if raw.decode(_TEXT_ENCODING, _TEXT_ERRORS) != text:
        raise ValueError(f"{what} is not in canonical form: {text!r}")
    return raw


def _ascii_to_bytes(text: str, what: str) -> bytes:
    """
    Encode a mode, option name or option value.

    @raise ValueError: if C{text} is empty, holds a NUL or is not ASCII.
    """
    if not text:
        raise ValueError(f"{what} is empty")
    if "\0" in text:
        raise ValueError(f"{what} contains NUL")
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not ASCII: {text!r}") from None


def _check_block(block: int) -> None:
    if not isinstance(block, int) or not 0 <= block <= MAX_BLOCK:
        raise ValueError(f"block number out of range 0-{MAX_BLOCK}: {block!r}")


def _normalise_options(options: dict[str, str]) -> dict[str, str]:
    """
    Return a lower-cased copy of C{options}, order kept.

    @raise ValueError: on a duplicate (case-insensitive) or invalid name or
        value.
    """
    normalised: dict[str, str] = {}
    for name, value in options.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(f"option names and values are str: {name!r}={value!r}")
        _ascii_to_bytes(name, "option name")
        _ascii_to_bytes(value, f"value of option {name!r}")
        key = name.lower()
        if key in normalised:
            raise ValueError(f"duplicate option: {name!r}")
        normalised[key] = value
    return normalised


def _coerce_mode(mode: Mode | str) -> Mode:
    if isinstance(mode, Mode):
        return mode
    try:
        return Mode(mode.lower())
    except (ValueError, AttributeError):
        raise ValueError(f"unknown mode: {mode!r}") from None


@dataclass(frozen=True)
class ReadRequest:
    """
    RRQ: the client asks to read C{filename}.

    @ivar filename: the requested name, as sent (see the module docstring).
    @ivar mode: the transfer mode (the constructor also takes its name, in
        any case).
    @ivar options: RFC 2347 options, names lower-cased, in the order sent.
    """

    filename: str
    mode: Mode = Mode.OCTET
    options: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _init_request(self)


@dataclass(frozen=True)
class WriteRequest:
    """
    WRQ: the client asks to write C{filename}.

    @ivar filename: the requested name, as sent (see the module docstring).
    @ivar mode: the transfer mode (the constructor also takes its name, in
        any case).
    @ivar options: RFC 2347 options, names lower-cased, in the order sent.
    """

    filename: str
    mode: Mode = Mode.OCTET
    options: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _init_request(self)


def _init_request(request: ReadRequest | WriteRequest) -> None:
    if not isinstance(request.filename, str) or not request.filename:
        raise ValueError(f"file name must be a non-empty str: {request.filename!r}")
    _text_to_bytes(request.filename, "file name")
    # Frozen dataclasses are set through object.__setattr__; normalising here
    # means equal requests compare equal however they were spelt.
    object.__setattr__(request, "mode", _coerce_mode(request.mode))
    object.__setattr__(request, "options", _normalise_options(request.options))


@dataclass(frozen=True)
class Data:
    """
    DATA: one block of the file.

    @ivar block: the block number, 0-65535 (it wraps to 0 after 65535).
    @ivar payload: 0 to L{MAX_BLKSIZE} octets; shorter than the agreed block
        size means this is the last block.
    """

    block: int
    payload: bytes

    def __post_init__(self) -> None:
        _check_block(self.block)
        if not isinstance(self.payload, bytes):
            raise ValueError(f"payload must be bytes: {type(self.payload).__name__}")
        if len(self.payload) > MAX_BLKSIZE:
            raise ValueError(f"payload longer than {MAX_BLKSIZE} octets")


@dataclass(frozen=True)
class Ack:
    """
    ACK: everything up to and including C{block} arrived.

    @ivar block: the block number, 0-65535; 0 answers a WRQ without options.
    """

    block: int

    def __post_init__(self) -> None:
        _check_block(self.block)


@dataclass(frozen=True)
class Error:
    """
    ERROR: the sender gives up on the transfer.

    @ivar code: an L{ErrorCode} when known, else the integer sent (0-65535).
    @ivar message: human-readable text, may be empty.
    """

    code: int
    message: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.code, int) or not 0 <= self.code <= 0xFFFF:
            raise ValueError(f"error code out of range 0-65535: {self.code!r}")
        try:
            object.__setattr__(self, "code", ErrorCode(self.code))
        except ValueError:
            pass  # a private code: kept as the integer sent
        if not isinstance(self.message, str):
            raise ValueError(f"message must be str: {self.message!r}")
        _text_to_bytes(self.message, "error message")


@dataclass(frozen=True)
class OptionAck:
    """
    OACK: the server accepts these options (RFC 2347), in the order sent.

    @ivar options: at least one option; names lower-cased.
    """

    options: dict[str, str] = field(hash=False)

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError("an OACK carries at least one option")
        object.__setattr__(self, "options", _normalise_options(self.options))


Packet = Union[ReadRequest, WriteRequest, Data, Ack, Error, OptionAck]
"""Any TFTP packet."""


def _encode_options(options: dict[str, str]) -> list[bytes]:
    parts = []
    for name, value in options.items():
        parts.append(name.encode("ascii"))
        parts.append(value.encode("ascii"))
    return parts


def encode(packet: Packet) -> bytes:
    """
    Serialise a packet.

    @param packet: any L{Packet}; its constructor has already validated it.
    @return: the datagram.
    @raise ValueError: if the datagram would exceed L{MAX_DATAGRAM_SIZE}
        (very long file names or option lists).
    """
    if isinstance(packet, Data):
        # The hot path of every transfer: no intermediate list.
        return _HEADER_BLOCK.pack(Opcode.DATA, packet.block) + packet.payload
    if isinstance(packet, Ack):
        return _HEADER_BLOCK.pack(Opcode.ACK, packet.block)
    if isinstance(packet, (ReadRequest, WriteRequest)):
        opcode = Opcode.RRQ if isinstance(packet, ReadRequest) else Opcode.WRQ
        fields = [
            packet.filename.encode(_TEXT_ENCODING, _TEXT_ERRORS),
            packet.mode.value.encode("ascii"),
            *_encode_options(packet.options),
        ]
        datagram = _HEADER.pack(opcode) + b"\0".join(fields) + b"\0"
    elif isinstance(packet, Error):
        datagram = (
            _HEADER_BLOCK.pack(Opcode.ERROR, packet.code)
            + packet.message.encode(_TEXT_ENCODING, _TEXT_ERRORS)
            + b"\0"
        )
    elif isinstance(packet, OptionAck):
        datagram = (
            _HEADER.pack(Opcode.OACK) + b"\0".join(_encode_options(packet.options)) + b"\0"
        )
    else:
        raise TypeError(f"not a TFTP packet: {packet!r}")
    if len(datagram) > MAX_DATAGRAM_SIZE:
        raise ValueError(f"packet too large: {len(datagram)} > {MAX_DATAGRAM_SIZE} octets")
    return datagram


def _split_strings(body: bytes, what: str) -> list[bytes]:
    """
    Split a run of NUL-terminated strings.

    @raise DecodeError: if C{body} is empty or its last string lacks a NUL.
    """
    if not body:
        raise DecodeError(f"{what}: truncated")
    if not body.endswith(b"\0"):
        raise DecodeError(f"{what}: missing NUL terminator")
    return body[:-1].split(b"\0")


def _decode_ascii(raw: bytes, what: str) -> str:
    if not raw:
        raise DecodeError(f"empty {what}")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError(f"{what} is not ASCII: {raw!r}") from None


def _decode_options(fields: list[bytes], what: str) -> dict[str, str]:
    if len(fields) % 2:
        raise DecodeError(f"{what}: option {fields[-1]!r} has no value")
    options: dict[str, str] = {}
    for i in range(0, len(fields), 2):
        name = _decode_ascii(fields[i], "option name").lower()
        value = _decode_ascii(fields[i + 1], f"value of option {name!r}")
        if name in options:
            raise DecodeError(f"{what}: duplicate option {name!r}")
        options[name] = value
    return options


def _decode_request(body: bytes, opcode: Opcode) -> ReadRequest | WriteRequest:
    what = opcode.name
    fields = _split_strings(body, what)
    if len(fields) < 2:
        raise DecodeError(f"{what}: no mode")
    raw_name, raw_mode, *raw_options = fields
    if not raw_name:
        raise DecodeError(f"{what}: empty file name")
    filename = raw_name.decode(_TEXT_ENCODING, _TEXT_ERRORS)
    try:
        mode = Mode(_decode_ascii(raw_mode, "mode").lower())
    except ValueError:
        raise DecodeError(f"{what}: unknown mode {raw_mode!r}") from None
    options = _decode_options(raw_options, what)
    cls = ReadRequest if opcode is Opcode.RRQ else WriteRequest
    return cls(filename, mode, options)


def decode(datagram: bytes | memoryview) -> Packet:
    """
    Parse one datagram.

    @param datagram: the bytes of one UDP datagram (or a buffer over them).
    @return: the packet.
    @raise DecodeError: if the datagram is not a well-formed TFTP packet (and
        never any other exception).
    """
    if not isinstance(datagram, bytes):
        datagram = bytes(datagram)  # e.g. a memoryview; slicing must give bytes
    size = len(datagram)
    if size > MAX_DATAGRAM_SIZE:
        raise DecodeError(f"datagram too large: {size} > {MAX_DATAGRAM_SIZE} octets")
    if size < 2:
        raise DecodeError("truncated: no opcode")
    (raw_opcode,) = _HEADER.unpack_from(datagram)
    try:
        opcode = Opcode(raw_opcode)
    except ValueError:
        raise DecodeError(f"unknown opcode {raw_opcode}") from None
    if opcode is Opcode.DATA:
        if size < 4:
            raise DecodeError("DATA: truncated block number")
        # Size already bounded above, so the payload is within MAX_BLKSIZE.
        return Data(_HEADER_BLOCK.unpack_from(datagram)[1], datagram[4:])
    if opcode is Opcode.ACK:
        if size != 4:
            raise DecodeError(f"ACK: must be 4 octets, got {size}")
        return Ack(_HEADER_BLOCK.unpack_from(datagram)[1])
    if opcode is Opcode.ERROR:
        if size < 4:
            raise DecodeError("ERROR: truncated code")
        (code,) = _HEADER.unpack_from(datagram, 2)
        fields = _split_strings(datagram[4:], "ERROR")
        if len(fields) != 1:
            raise DecodeError("ERROR: data after the message")
        return Error(code, fields[0].decode(_TEXT_ENCODING, _TEXT_ERRORS))
    if opcode is Opcode.OACK:
        fields = _split_strings(datagram[2:], "OACK")
        return OptionAck(_decode_options(fields, "OACK"))
    return _decode_request(datagram[2:], opcode)


# Netascii (RFC 764 via RFC 1350): end of line is CR LF on the wire, a bare CR
# is CR NUL. Locally (POSIX) end of line is LF.

_NETASCII_WIRE = re.compile(b"\r[\n\0]")
_NETASCII_LOCAL = {b"\r\n": b"\n", b"\r\0": b"\r"}


def netascii_encode(data: bytes) -> bytes:
    """
    Translate local bytes to netascii: LF becomes CR LF, CR becomes CR NUL.

    Each input byte translates on its own, so a file may be encoded chunk by
    chunk with any split and the concatenated results are the same; cutting
    the output into blocks (which may split a CR LF pair) is the sender's job.

    @param data: local bytes (POSIX line ends).
    @return: the netascii bytes, at most twice as long.
    """
    # CR first, so that the CRs added for LF are not escaped again.
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


def _netascii_translate(wire: bytes) -> bytes:
    return _NETASCII_WIRE.sub(lambda m: _NETASCII_LOCAL[m.group()], wire)


class NetasciiDecoder:
    """
    Incremental netascii to local translation: CR LF to LF, CR NUL to CR.

    Feed the blocks in order; a CR that ends one block is held back until the
    next block says what it was. A CR followed by anything else is not
    netascii, but is kept as it came (leniency costs nothing here), as is a
    CR that ends the file. Holds at most one byte between calls.
    """

    def __init__(self) -> None:
        self._pending_cr = False

    def feed(self, data: bytes) -> bytes:
        """
        Translate the next chunk.

        @param data: the next netascii bytes, split anywhere.
        @return: the local bytes that are certain so far.
        """
        if self._pending_cr:
            data = b"\r" + data
            self._pending_cr = False
        if data.endswith(b"\r"):
            # A CR CR at the end: the first is a bare CR, already decidable;
            # only the final CR waits for its partner.
            self._pending_cr = True
            data = data[:-1]
        return _netascii_translate(data)

    def finish(self) -> bytes:
        """
        End of the file: release a held-back CR.

        @return: C{b"\\r"} or C{b""}.
        """
        if self._pending_cr:
            self._pending_cr = False
            return b"\r"
        return b""


def netascii_decode(data: bytes) -> bytes:
    """
    Translate a complete netascii buffer to local bytes.

    @param data: the whole netascii text.
    @return: the local bytes.
    """
    decoder = NetasciiDecoder()
    return decoder.feed(data) + decoder.finish()
