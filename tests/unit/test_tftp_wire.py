"""
Tests for L{appnet.tftp.wire}: the TFTP codec and netascii translation.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appnet.tftp import wire
from appnet.tftp.wire import (
    MAX_BLKSIZE,
    MAX_DATAGRAM_SIZE,
    Ack,
    Data,
    DecodeError,
    Error,
    ErrorCode,
    Mode,
    NetasciiDecoder,
    Opcode,
    OptionAck,
    ReadRequest,
    WriteRequest,
    decode,
    encode,
    netascii_decode,
    netascii_encode,
)

# Packets and their exact bytes; each row is checked in both directions.
WIRE_TABLE: list[tuple[bytes, wire.Packet]] = [
    (b"\x00\x01boot.img\x00octet\x00", ReadRequest("boot.img", Mode.OCTET)),
    (b"\x00\x02notes.txt\x00netascii\x00", WriteRequest("notes.txt", Mode.NETASCII)),
    (b"\x00\x01old\x00mail\x00", ReadRequest("old", Mode.MAIL)),
    (
        b"\x00\x01pxelinux.0\x00octet\x00tsize\x000\x00blksize\x001468\x00",
        ReadRequest("pxelinux.0", Mode.OCTET, {"tsize": "0", "blksize": "1468"}),
    ),
    (
        b"\x00\x02up\x00octet\x00windowsize\x0016\x00timeout\x003\x00",
        WriteRequest("up", Mode.OCTET, {"windowsize": "16", "timeout": "3"}),
    ),
    (b"\x00\x01caf\xc3\xa9\x00octet\x00", ReadRequest("caf\u00e9", Mode.OCTET)),
    (b"\x00\x01caf\xe9\x00octet\x00", ReadRequest("caf\udce9", Mode.OCTET)),
    (b"\x00\x03\x00\x01hello", Data(1, b"hello")),
    (b"\x00\x03\xff\xff", Data(65535, b"")),
    (b"\x00\x03\x00\x00" + b"\x00" * 8, Data(0, b"\x00" * 8)),
    (b"\x00\x04\x00\x00", Ack(0)),
    (b"\x00\x04\x12\x34", Ack(0x1234)),
    (b"\x00\x05\x00\x01File not found\x00", Error(ErrorCode.FILE_NOT_FOUND, "File not found")),
    (b"\x00\x05\x00\x08\x00", Error(ErrorCode.OPTION_REFUSED, "")),
    (b"\x00\x05\x01\x00private\x00", Error(256, "private")),
    (b"\x00\x06blksize\x00512\x00", OptionAck({"blksize": "512"})),
    (
        b"\x00\x06tsize\x001024\x00windowsize\x004\x00",
        OptionAck({"tsize": "1024", "windowsize": "4"}),
    ),
]

# Datagrams that are not TFTP packets, each with why.
MALFORMED_TABLE: list[tuple[bytes, str]] = [
    (b"", "empty"),
    (b"\x00", "truncated opcode"),
    (b"\x00\x00", "opcode 0"),
    (b"\x00\x07abc\x00", "opcode 7"),
    (b"\xff\xff", "opcode 65535"),
    (b"\x00\x01", "RRQ without a file name"),
    (b"\x00\x01file", "RRQ file name without NUL"),
    (b"\x00\x01file\x00", "RRQ without a mode"),
    (b"\x00\x01file\x00octet", "RRQ mode without NUL"),
    (b"\x00\x01\x00octet\x00", "RRQ with an empty file name"),
    (b"\x00\x01file\x00\x00", "RRQ with an empty mode"),
    (b"\x00\x01file\x00binary\x00", "RRQ with an unknown mode"),
    (b"\x00\x01file\x00oct\xe9t\x00", "RRQ with a non-ASCII mode"),
    (b"\x00\x01file\x00octet\x00blksize\x00", "option without a value"),
    (b"\x00\x01file\x00octet\x00blksize\x001468", "option value without NUL"),
    (b"\x00\x01file\x00octet\x00\x00512\x00", "empty option name"),
    (b"\x00\x01file\x00octet\x00blksize\x00\x00", "empty option value"),
    (b"\x00\x01file\x00octet\x00tsize\x000\x00TSIZE\x000\x00", "duplicate option"),
    (b"\x00\x02file\x00octet\x00bl\xffksize\x00512\x00", "non-ASCII option name"),
    (b"\x00\x02file\x00octet\x00blksize\x005\xff2\x00", "non-ASCII option value"),
    (b"\x00\x01file\x00octet\x00\x00", "trailing NUL padding"),
    (b"\x00\x03\x00", "DATA with a truncated block number"),
    (b"\x00\x03\x00\x01" + b"x" * (MAX_BLKSIZE + 1), "DATA payload over 65464 octets"),
    (b"\x00\x04\x00", "ACK truncated"),
    (b"\x00\x04\x00\x01\x00", "ACK with a trailing octet"),
    (b"\x00\x05\x00", "ERROR with a truncated code"),
    (b"\x00\x05\x00\x01", "ERROR without a message"),
    (b"\x00\x05\x00\x01oops", "ERROR message without NUL"),
    (b"\x00\x05\x00\x01oops\x00more\x00", "ERROR with data after the message"),
    (b"\x00\x06", "empty OACK"),
    (b"\x00\x06\x00", "OACK with an empty name and no value"),
    (b"\x00\x06blksize\x00", "OACK option without a value"),
    (b"\x00\x06blksize\x00512", "OACK value without NUL"),
    (b"\x00\x06blksize\x00512\x00BlkSize\x001024\x00", "OACK duplicate option"),
    (b"\x00\x01" + b"a" * MAX_DATAGRAM_SIZE + b"\x00octet\x00", "oversized request"),
]


class WireTableTests(SynchronousTestCase):
    """Known bytes decode to known packets and back."""

    def test_decode_table(self) -> None:
        """Every datagram in the table decodes to its packet."""
        for datagram, packet in WIRE_TABLE:
            self.assertEqual(decode(datagram), packet, datagram)

    def test_encode_table(self) -> None:
        """Every packet in the table encodes to its exact bytes."""
        for datagram, packet in WIRE_TABLE:
            self.assertEqual(encode(packet), datagram, packet)

    def test_malformed_table(self) -> None:
        """Every malformed datagram raises DecodeError, and nothing else."""
        for datagram, why in MALFORMED_TABLE:
            try:
                packet = decode(datagram)
            except DecodeError:
                continue
            self.fail(f"{why}: decoded as {packet!r}")

    def test_decode_error_is_value_error(self) -> None:
        """DecodeError is a ValueError, so generic callers can catch it too."""
        self.assertTrue(issubclass(DecodeError, ValueError))

    def test_case_insensitive_mode_and_option_names(self) -> None:
        """Modes and option names are case-insensitive and come out lower case;
        option values are kept as sent."""
        packet = decode(b"\x00\x01F\x00NetASCII\x00BLKSIZE\x00512\x00Foo\x00BaR\x00")
        self.assertEqual(
            packet, ReadRequest("F", Mode.NETASCII, {"blksize": "512", "foo": "BaR"})
        )

    def test_options_keep_their_order(self) -> None:
        """Options come out in the order they were sent, and encode so."""
        datagram = b"\x00\x06windowsize\x0016\x00blksize\x001468\x00tsize\x000\x00"
        packet = decode(datagram)
        assert isinstance(packet, OptionAck)
        self.assertEqual(list(packet.options), ["windowsize", "blksize", "tsize"])
        self.assertEqual(encode(packet), datagram)

    def test_unknown_error_code_kept(self) -> None:
        """Codes 0-8 become ErrorCode members; other codes stay plain ints."""
        self.assertIs(decode(b"\x00\x05\x00\x08\x00").code, ErrorCode.OPTION_REFUSED)
        code = decode(b"\x00\x05\x00\x09\x00").code
        self.assertEqual(code, 9)
        self.assertNotIsInstance(code, ErrorCode)

    def test_error_codes(self) -> None:
        """ErrorCode holds RFC 1350's codes 0-7 and RFC 2347's code 8."""
        self.assertEqual([int(c) for c in ErrorCode], list(range(9)))
        self.assertEqual(ErrorCode.OPTION_REFUSED, 8)
        self.assertEqual(ErrorCode.UNKNOWN_TID, 5)

    def test_opcodes(self) -> None:
        """Opcode holds RRQ..ERROR (RFC 1350) and OACK (RFC 2347)."""
        self.assertEqual([int(o) for o in Opcode], [1, 2, 3, 4, 5, 6])

    def test_largest_data(self) -> None:
        """A DATA packet with the largest RFC 2348 block round-trips."""
        packet = Data(7, b"z" * MAX_BLKSIZE)
        datagram = encode(packet)
        self.assertEqual(len(datagram), MAX_DATAGRAM_SIZE)
        self.assertEqual(decode(datagram), packet)

    def test_raw_filename_bytes_survive(self) -> None:
        """File name bytes that are not UTF-8 survive a round trip exactly,
        and decode the way os.fsdecode would on a UTF-8 system."""
        datagram = b"\x00\x01dir/\xff\xfe\x80name\x00octet\x00"
        packet = decode(datagram)
        assert isinstance(packet, ReadRequest)
        self.assertEqual(packet.filename, "dir/\udcff\udcfe\udc80name")
        self.assertEqual(encode(packet), datagram)

    def test_decode_accepts_bytes_like(self) -> None:
        """decode takes a memoryview as well as bytes."""
        self.assertEqual(decode(memoryview(b"\x00\x03\x00\x02ab")), Data(2, b"ab"))


class ConstructorTests(SynchronousTestCase):
    """Packets that could not be encoded cannot be built."""

    def test_request_validation(self) -> None:
        """Empty names, NULs, unknown modes, bad option names or values and
        duplicate option names raise ValueError."""
        bad = [
            lambda: ReadRequest(""),
            lambda: ReadRequest("a\0b"),
            lambda: ReadRequest("a", "binary"),
            lambda: ReadRequest("a", Mode.OCTET, {"": "1"}),
            lambda: ReadRequest("a", Mode.OCTET, {"x": ""}),
            lambda: ReadRequest("a", Mode.OCTET, {"x\0": "1"}),
            lambda: ReadRequest("a", Mode.OCTET, {"caf\u00e9": "1"}),
            lambda: WriteRequest("a", Mode.OCTET, {"Tsize": "1", "tsize": "2"}),
            lambda: ReadRequest("\udcc3\udca9"),  # would decode back as "é"
            lambda: ReadRequest("\ud800"),  # not encodable at all
        ]
        for make in bad:
            self.assertRaises(ValueError, make)

    def test_request_normalisation(self) -> None:
        """A mode given as a string in any case, and option names in any case,
        are normalised, so equal requests compare equal."""
        self.assertEqual(
            WriteRequest("f", "OCTET", {"BlkSize": "8"}),
            WriteRequest("f", Mode.OCTET, {"blksize": "8"}),
        )

    def test_request_copies_options(self) -> None:
        """A request keeps its own copy of the options dict."""
        options = {"blksize": "8"}
        request = ReadRequest("f", Mode.OCTET, options)
        options["tsize"] = "0"
        self.assertEqual(request.options, {"blksize": "8"})

    def test_block_and_payload_validation(self) -> None:
        """Block numbers outside 0-65535 and payloads over 65464 octets or not
        bytes raise ValueError."""
        self.assertRaises(ValueError, Data, -1, b"")
        self.assertRaises(ValueError, Data, 65536, b"")
        self.assertRaises(ValueError, Data, 1, b"x" * (MAX_BLKSIZE + 1))
        self.assertRaises(ValueError, Data, 1, "text")
        self.assertRaises(ValueError, Ack, 65536)
        self.assertRaises(ValueError, Ack, -1)

    def test_error_validation(self) -> None:
        """Error codes outside 0-65535 and messages with NUL raise ValueError."""
        self.assertRaises(ValueError, Error, 65536, "")
        self.assertRaises(ValueError, Error, -1, "")
        self.assertRaises(ValueError, Error, 0, "a\0b")

    def test_empty_option_ack(self) -> None:
        """An OACK needs at least one option."""
        self.assertRaises(ValueError, OptionAck, {})

    def test_encode_oversized(self) -> None:
        """A request that would not fit in one datagram cannot be encoded."""
        self.assertRaises(ValueError, encode, ReadRequest("a" * MAX_DATAGRAM_SIZE))

    def test_encode_rejects_non_packets(self) -> None:
        """encode refuses anything that is not a packet."""
        self.assertRaises(TypeError, encode, b"\x00\x04\x00\x00")

    def test_packets_are_hashable_and_frozen(self) -> None:
        """Packets are immutable; requests hash on name and mode."""
        request = ReadRequest("f", Mode.OCTET, {"blksize": "8"})
        self.assertEqual(hash(request), hash(ReadRequest("f", Mode.OCTET, {"tsize": "0"})))
        self.assertRaises(AttributeError, setattr, Ack(1), "block", 2)


# Strategies for valid packets.
_text_names = st.text(
    alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=40,
)
_raw_names = st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b)
_filenames = st.one_of(
    _text_names, _raw_names.map(lambda b: b.decode("utf-8", "surrogateescape"))
)
_ascii = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=12)
_options = st.dictionaries(_ascii.map(str.lower), _ascii, max_size=6)
_modes = st.sampled_from(list(Mode))
_blocks = st.integers(0, 0xFFFF)
_messages = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=60),
    st.binary(max_size=60).filter(lambda b: b"\0" not in b).map(
        lambda b: b.decode("utf-8", "surrogateescape")
    ),
)

PACKETS = st.one_of(
    st.builds(ReadRequest, _filenames, _modes, _options),
    st.builds(WriteRequest, _filenames, _modes, _options),
    st.builds(Data, _blocks, st.binary(max_size=600)),
    st.builds(Ack, _blocks),
    st.builds(Error, st.integers(0, 0xFFFF), _messages),
    st.builds(OptionAck, _options.filter(bool)),
)


class RoundTripTests(SynchronousTestCase):
    """Property tests: every packet type round-trips through bytes."""

    @settings(deadline=None)
    @given(st.builds(ReadRequest, _filenames, _modes, _options))
    def test_read_request(self, packet: ReadRequest) -> None:
        """Any valid RRQ survives encode then decode unchanged."""
        self.assertRoundTrip(packet)

    @settings(deadline=None)
    @given(st.builds(WriteRequest, _filenames, _modes, _options))
    def test_write_request(self, packet: WriteRequest) -> None:
        """Any valid WRQ survives encode then decode unchanged."""
        self.assertRoundTrip(packet)

    @settings(deadline=None)
    @given(st.builds(Data, _blocks, st.binary(max_size=2000)))
    def test_data(self, packet: Data) -> None:
        """Any DATA packet survives encode then decode unchanged."""
        self.assertRoundTrip(packet)

    @settings(deadline=None)
    @given(st.builds(Ack, _blocks))
    def test_ack(self, packet: Ack) -> None:
        """Any ACK survives encode then decode unchanged."""
        self.assertRoundTrip(packet)

    @settings(deadline=None)
    @given(st.builds(Error, st.integers(0, 0xFFFF), _messages))
    def test_error(self, packet: Error) -> None:
        """Any ERROR survives encode then decode unchanged."""
        self.assertRoundTrip(packet)

    @settings(deadline=None)
    @given(st.builds(OptionAck, _options.filter(bool)))
    def test_option_ack(self, packet: OptionAck) -> None:
        """Any OACK survives encode then decode unchanged, order included."""
        self.assertRoundTrip(packet)

    @settings(deadline=None)
    @given(PACKETS)
    def test_bytes_round_trip(self, packet: wire.Packet) -> None:
        """The bytes of any packet decode to something that encodes to the
        same bytes (encoding is canonical)."""
        datagram = encode(packet)
        self.assertEqual(encode(decode(datagram)), datagram)

    def assertRoundTrip(self, packet: wire.Packet) -> None:
        datagram = encode(packet)
        decoded = decode(datagram)
        self.assertEqual(decoded, packet)
        self.assertEqual(type(decoded), type(packet))
        if isinstance(packet, (ReadRequest, WriteRequest, OptionAck)):
            assert isinstance(decoded, type(packet))
            self.assertEqual(list(decoded.options.items()), list(packet.options.items()))


class FuzzTests(SynchronousTestCase):
    """Whatever arrives, decode returns a packet or raises DecodeError."""

    def assertDecodesOrRejects(self, datagram: bytes) -> None:
        try:
            packet = decode(datagram)
        except DecodeError:
            return
        # Whatever was accepted is a valid packet: it encodes, and the result
        # decodes to the same packet (names may have changed case).
        self.assertEqual(decode(encode(packet)), packet)

    @settings(deadline=None, max_examples=500)
    @given(st.binary(max_size=200))
    def test_random_bytes(self, datagram: bytes) -> None:
        """Random bytes never raise anything but DecodeError."""
        self.assertDecodesOrRejects(datagram)

    @settings(deadline=None, max_examples=500)
    @given(st.integers(1, 6), st.binary(max_size=100))
    def test_random_bodies(self, opcode: int, body: bytes) -> None:
        """A valid opcode with a random body never raises anything but
        DecodeError."""
        self.assertDecodesOrRejects(opcode.to_bytes(2, "big") + body)

    @settings(deadline=None, max_examples=300)
    @given(
        st.integers(1, 6),
        st.lists(st.sampled_from([b"", b"octet", b"NETASCII", b"blksize", b"8", b"\xff", b"x"]), max_size=8),
    )
    def test_random_fields(self, opcode: int, fields: list[bytes]) -> None:
        """Random runs of plausible NUL-separated fields never raise anything
        but DecodeError."""
        self.assertDecodesOrRejects(opcode.to_bytes(2, "big") + b"\0".join(fields) + b"\0")

    @settings(deadline=None, max_examples=300)
    @given(PACKETS, st.data())
    def test_mutated_packets(self, packet: wire.Packet, data: st.DataObject) -> None:
        """Valid packets, truncated or with one byte changed, never raise
        anything but DecodeError."""
        datagram = bytearray(encode(packet))
        cut = data.draw(st.integers(0, len(datagram)))
        self.assertDecodesOrRejects(bytes(datagram[:cut]))
        index = data.draw(st.integers(0, len(datagram) - 1))
        datagram[index] = data.draw(st.integers(0, 255))
        self.assertDecodesOrRejects(bytes(datagram))

    def test_oversized_datagram(self) -> None:
        """A datagram longer than the largest DATA packet is rejected."""
        self.assertRaises(DecodeError, decode, b"\x00\x03\x00\x01" + b"x" * 70000)


def _reference_decode(data: bytes) -> bytes:
    """Byte-at-a-time netascii decoding, the obvious way, to check against."""
    out = bytearray()
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == 13 and i + 1 < len(data) and data[i + 1] in (10, 0):
            out.append(10 if data[i + 1] == 10 else 13)
            i += 2
        else:
            out.append(byte)
            i += 1
    return bytes(out)


# Text that exercises line ends: mostly CR, LF, NUL and a few letters.
_texty = st.lists(st.sampled_from([b"\r", b"\n", b"\0", b"a", b"\r\n", b"\xff"]), max_size=60).map(
    b"".join
)


class NetasciiTests(SynchronousTestCase):
    """Netascii translation, whole and across block boundaries."""

    def test_examples(self) -> None:
        """LF is CR LF on the wire, CR is CR NUL, and back."""
        table = [
            (b"", b""),
            (b"a\nb", b"a\r\nb"),
            (b"a\rb", b"a\r\0b"),
            (b"\r\n", b"\r\0\r\n"),
            (b"\n\n", b"\r\n\r\n"),
            (b"\r", b"\r\0"),
            (b"\0", b"\0"),
        ]
        for local, netascii in table:
            self.assertEqual(netascii_encode(local), netascii, local)
            self.assertEqual(netascii_decode(netascii), local, netascii)

    def test_lenient_decoding(self) -> None:
        """A CR followed by anything but LF or NUL, or ending the file, is
        kept as it came."""
        self.assertEqual(netascii_decode(b"a\rb"), b"a\rb")
        self.assertEqual(netascii_decode(b"a\r"), b"a\r")
        self.assertEqual(netascii_decode(b"\r\r\n"), b"\r\n")
        self.assertEqual(netascii_decode(b"\r\r\0"), b"\r\r")

    def test_cr_at_block_end(self) -> None:
        """A CR that ends one block waits for the next to say what it was."""
        decoder = NetasciiDecoder()
        self.assertEqual(decoder.feed(b"line\r"), b"line")
        self.assertEqual(decoder.feed(b"\nnext\r"), b"\nnext")
        self.assertEqual(decoder.feed(b"\0"), b"\r")
        self.assertEqual(decoder.feed(b"end\r"), b"end")
        self.assertEqual(decoder.finish(), b"\r")
        self.assertEqual(decoder.finish(), b"")

    def test_empty_feeds(self) -> None:
        """Empty chunks (an empty final block) change nothing."""
        decoder = NetasciiDecoder()
        self.assertEqual(decoder.feed(b"x\r"), b"x")
        self.assertEqual(decoder.feed(b""), b"")
        self.assertEqual(decoder.feed(b"\n"), b"\n")

    @settings(deadline=None)
    @given(st.one_of(_texty, st.binary(max_size=80)))
    def test_round_trip(self, local: bytes) -> None:
        """Decoding what was encoded gives the original, for any bytes."""
        self.assertEqual(netascii_decode(netascii_encode(local)), local)

    @settings(deadline=None)
    @given(_texty)
    def test_round_trip_split_at_every_boundary(self, local: bytes) -> None:
        """Fed in two chunks split at every possible point, the decoder gives
        back the original."""
        encoded = netascii_encode(local)
        for cut in range(len(encoded) + 1):
            decoder = NetasciiDecoder()
            out = decoder.feed(encoded[:cut]) + decoder.feed(encoded[cut:]) + decoder.finish()
            self.assertEqual(out, local, cut)

    @settings(deadline=None)
    @given(_texty, st.integers(1, 9))
    def test_round_trip_in_blocks(self, local: bytes, size: int) -> None:
        """Encoded chunk by chunk and decoded in fixed-size blocks (as a
        transfer does), the text comes back unchanged."""
        encoded = b"".join(netascii_encode(local[i : i + 3]) for i in range(0, len(local), 3))
        self.assertEqual(encoded, netascii_encode(local))
        decoder = NetasciiDecoder()
        out = b"".join(decoder.feed(encoded[i : i + size]) for i in range(0, len(encoded), size))
        self.assertEqual(out + decoder.finish(), local)

    @settings(deadline=None)
    @given(st.one_of(_texty, st.binary(max_size=80)), st.data())
    def test_matches_reference_on_any_input(self, data: bytes, draw: st.DataObject) -> None:
        """On any bytes, not only valid netascii, split anywhere, the decoder
        agrees with a byte-at-a-time reference."""
        cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=4)))
        decoder = NetasciiDecoder()
        out = b""
        start = 0
        for cut in [*cuts, len(data)]:
            out += decoder.feed(data[start:cut])
            start = cut
        self.assertEqual(out + decoder.finish(), _reference_decode(data))
