"""
Unit tests for appnet.smtp.address: RFC 5321 paths and MAIL/RCPT
parameters, RFC 6531 UTF-8 addresses; tables and hypothesis properties.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appnet.smtp.address import (
    EnvelopeError,
    Mailbox,
    domain_key,
    parse_mail,
    parse_parameters,
    parse_rcpt,
)

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
atoms = st.text(alphabet=ATEXT, min_size=1, max_size=10)
local_parts = st.lists(atoms, min_size=1, max_size=4).map(".".join).filter(lambda s: len(s) <= 64)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
keywords = st.from_regex(r"[A-Z0-9][A-Z0-9-]{0,8}", fullmatch=True)
values = st.text(alphabet=[chr(c) for c in range(33, 127) if chr(c) != "="], min_size=1, max_size=12)


class PathTests(SynchronousTestCase):
    """MAIL FROM and RCPT TO paths."""

    def test_valid_paths(self) -> None:
        """Dot-strings, quoted strings, literals, source routes, a space after the colon."""
        table = [
            ("FROM:<alice@example.org>", Mailbox("alice", "example.org")),
            ("from:<a.b+c@sub.example.org>", Mailbox("a.b+c", "sub.example.org")),
            ('FROM:<"john doe"@example.org>', Mailbox('"john doe"', "example.org")),
            ('FROM:<"a>b"@example.org>', Mailbox('"a>b"', "example.org")),
            ("FROM:<bob@[192.0.2.1]>", Mailbox("bob", "[192.0.2.1]")),
            ("FROM:<bob@[IPv6:2001:db8::1]>", Mailbox("bob", "[IPv6:2001:db8::1]")),
            ("FROM:<@relay.example,@b.example:bob@example.org>", Mailbox("bob", "example.org")),
            ("FROM: <bob@example.org>", Mailbox("bob", "example.org")),
        ]
        for arg, expected in table:
            with self.subTest(arg):
                self.assertEqual(parse_mail(arg).sender, expected)

    def test_null_sender_and_postmaster(self) -> None:
        """<> is the null reverse-path; RCPT TO:<Postmaster> is special."""
        self.assertIsNone(parse_mail("FROM:<>").sender)
        rcpt = parse_rcpt("TO:<PostMaster>", False)
        self.assertTrue(rcpt.postmaster)
        self.assertIsNone(rcpt.recipient)
        self.assertRaises(EnvelopeError, parse_rcpt, "TO:<>", False)

    def test_invalid_paths(self) -> None:
        """Malformed paths give 501 with 5.1.7 (sender) or 5.1.3 (recipient)."""
        for arg in ["FROM:alice@example.org", "FROM:<alice@example.org", "FROM:<alice>",
                    "FROM:<@example.org>", "FROM:<a..b@example.org>", "FROM:<a@-bad.org>",
                    "FROM:<a@[300.1.1.1]>", 'FROM:<"unterminated@example.org>',
                    "FROM:<a@b.org>junk", "FROM:<" + "a" * 65 + "@example.org>",
                    "FROM:<a@" + "b" * 300 + ">"]:
            with self.subTest(arg):
                with self.assertRaises(EnvelopeError) as e:
                    parse_mail(arg)
                self.assertEqual((e.exception.code, e.exception.status), (501, "5.1.7"))
        with self.assertRaises(EnvelopeError) as e:
            parse_rcpt("TO:<a b@example.org>", False)
        self.assertEqual(e.exception.status, "5.1.3")
        with self.assertRaises(EnvelopeError) as e:
            parse_mail("TO:<a@b.c>")
        self.assertEqual((e.exception.code, e.exception.status), (501, "5.5.4"))

    def test_utf8_needs_smtputf8(self) -> None:
        """UTF-8 addresses: 553 5.6.7 without SMTPUTF8, accepted with it (RFC 6531)."""
        with self.assertRaises(EnvelopeError) as e:
            parse_mail("FROM:<jösé@exämple.org>")
        self.assertEqual((e.exception.code, e.exception.status), (553, "5.6.7"))
        mail = parse_mail("FROM:<jösé@exämple.org> SMTPUTF8")
        self.assertEqual(mail.sender, Mailbox("jösé", "exämple.org"))
        self.assertFalse(mail.sender.is_ascii)
        self.assertEqual(parse_rcpt("TO:<用户@例子.广告>", True).recipient, Mailbox("用户", "例子.广告"))
        self.assertRaises(EnvelopeError, parse_rcpt, "TO:<用户@例子.广告>", False)

    def test_domain_key(self) -> None:
        """Domains compare case-insensitively, U-labels as A-labels."""
        self.assertEqual(domain_key("Example.ORG."), "example.org")
        self.assertEqual(domain_key("exämple.org"), domain_key("xn--exmple-cua.org"))

    @given(local_parts, domains)
    def test_roundtrip(self, local: str, domain: str) -> None:
        """Every RFC 5321 dot-string mailbox parses back to itself, in MAIL and RCPT."""
        mailbox = Mailbox(local, domain)
        self.assertEqual(parse_mail(f"FROM:<{mailbox}>").sender, mailbox)
        self.assertEqual(parse_rcpt(f"TO:<{mailbox}>", False).recipient, mailbox)

    @given(st.text(max_size=300))
    def test_never_crashes(self, text: str) -> None:
        """Any text either parses or raises EnvelopeError with a 5xx reply."""
        for parse in (lambda: parse_mail("FROM:" + text), lambda: parse_rcpt("TO:" + text, True)):
            try:
                parse()
            except EnvelopeError as e:
                self.assertTrue(500 <= e.code < 600, e)


class ParameterTests(SynchronousTestCase):
    """esmtp-keyword[=esmtp-value] parameters."""

    def test_parameters(self) -> None:
        """Keywords are upper-cased; a bare keyword has the value None."""
        mail = parse_mail("FROM:<a@b.c> size=100 BODY=8BITMIME SMTPUTF8")
        self.assertEqual(mail.params, {"SIZE": "100", "BODY": "8BITMIME", "SMTPUTF8": None})

    def test_bad_parameters(self) -> None:
        """Malformed or repeated parameters get 501 5.5.4."""
        for text in ["=x", "-A=1", "A=", "A=b=c", "SIZE=1 SIZE=2", "A=\x01"]:
            with self.subTest(text):
                with self.assertRaises(EnvelopeError) as e:
                    parse_parameters(text)
                self.assertEqual((e.exception.code, e.exception.status), (501, "5.5.4"))

    @given(st.dictionaries(keywords, st.one_of(st.none(), values), max_size=5))
    def test_parameters_roundtrip(self, params: dict[str, str | None]) -> None:
        """Formatted parameters parse back to the same mapping."""
        text = " ".join(k if v is None else f"{k}={v}" for k, v in params.items())
        self.assertEqual(parse_parameters(text), params)
