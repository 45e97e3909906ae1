"""
SMTP envelope syntax: the paths and parameters of MAIL and RCPT.

RFC 5321 section 4.1.2 gives the grammar (C{Reverse-path}, C{Forward-path},
C{Mailbox}, C{Mail-parameters}); RFC 6531 widens local parts and domains to
UTF-8 when the transaction carries C{SMTPUTF8}. Parsing is pure: text in, a
L{MailCommand} or L{RcptCommand} out, or an L{EnvelopeError} carrying the
reply the server sends.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

__all__ = [
    "EnvelopeError",
    "MailCommand",
    "Mailbox",
    "RcptCommand",
    "domain_key",
    "parse_mail",
    "parse_parameters",
    "parse_rcpt",
]

#: RFC 5321 4.5.3.1.3: a path is at most 256 octets with its angle brackets.
MAX_PATH = 256
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255

_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*\Z")
_DOT_STRING_UTF8 = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*\Z")
# qtextSMTP (32-33, 35-91, 93-126) or quoted-pairSMTP ("\" 32-126).
_QUOTED = re.compile(r'"(?:[ !#-\[\]-~]|\\[ -~])*"\Z')
_QUOTED_UTF8 = re.compile(r'"(?:[ !#-\[\]-~\u0080-\U0010ffff]|\\[ -~])*"\Z')
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
# esmtp-value: any CHAR but "=", SP and controls (RFC 6531 adds UTF-8).
_VALUE = re.compile(r"[!-<>-~]+\Z")
_VALUE_UTF8 = re.compile(r"[!-<>-~\u0080-\U0010ffff]+\Z")


class EnvelopeError(ValueError):
    """
    A MAIL or RCPT command the server refuses, with the reply to send.

    @ivar code: the reply code (501, 553, 555...)
    @ivar status: the enhanced status code (RFC 3463), e.g. C{"5.1.3"}
    @ivar text: the reply text
    """

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(f"{code} {status} {text}")
        self.code = code
        self.status = status
        self.text = text


@dataclass(frozen=True)
class Mailbox:
    """
    A mailbox C{local@domain}; C{domain} is an address literal in brackets
    (C{[192.0.2.1]}) or a domain name as the client wrote it.
    """

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def is_ascii(self) -> bool:
        return self.local.isascii() and self.domain.isascii()

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")


@dataclass(frozen=True)
class MailCommand:
    """
    A parsed C{MAIL FROM}: the reverse-path (L{None} for the null path
    C{<>}) and the parameters, keyword upper-cased -> value (L{None} when
    the parameter has no value).
    """

    sender: Mailbox | None
    params: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class RcptCommand:
    """
    A parsed C{RCPT TO}: the forward-path and its parameters.
    C{postmaster} is true for the bare C{<Postmaster>} (RFC 5321 4.1.1.3).
    """

    recipient: Mailbox | None
    params: dict[str, str | None] = field(default_factory=dict)
    postmaster: bool = False


def domain_key(domain: str) -> str:
    """
    A domain name in the form used to compare it: lower case, no trailing
    dot, U-labels turned into A-labels (IDNA).
    """
    domain = domain.rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def _syntax(is_sender: bool, what: str) -> EnvelopeError:
    if is_sender:
        return EnvelopeError(501, "5.1.7", f"bad sender address syntax: {what}")
    return EnvelopeError(501, "5.1.3", f"bad recipient address syntax: {what}")


def _check_domain(domain: str, utf8: bool, is_sender: bool) -> None:
    if domain.startswith("["):
        if not domain.endswith("]"):
            raise _syntax(is_sender, "unterminated address literal")
        literal = domain[1:-1]
        try:
            if literal[:5].upper() == "IPV6:":
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            raise _syntax(is_sender, "bad address literal") from None
        return
    if not domain or len(domain.encode("utf-8")) > MAX_DOMAIN:
        raise _syntax(is_sender, "bad domain")
    for label in domain.split("."):
        if label.isascii():
            if not _LABEL.match(label):
                raise _syntax(is_sender, "bad domain")
        elif not utf8:
            raise EnvelopeError(553, "5.6.7", "non-ASCII address needs the SMTPUTF8 parameter")
        else:
            try:
                encoded = label.encode("idna")
            except UnicodeError:
                raise _syntax(is_sender, "bad internationalized domain") from None
            if not 0 < len(encoded) <= 63:
                raise _syntax(is_sender, "bad internationalized domain")


def _parse_mailbox(text: str, utf8: bool, is_sender: bool) -> Mailbox:
    at = text.rfind("@")
    if at <= 0:
        raise _syntax(is_sender, "a mailbox is local-part@domain")
    local, domain = text[:at], text[at + 1 :]
    if local.startswith('"'):
        if not (_QUOTED_UTF8 if utf8 else _QUOTED).match(local):
            if not local.isascii() and not utf8:
                raise EnvelopeError(553, "5.6.7", "non-ASCII address needs the SMTPUTF8 parameter")
            raise _syntax(is_sender, "bad quoted local part")
    elif not (_DOT_STRING_UTF8 if utf8 else _DOT_STRING).match(local):
        if not local.isascii() and not utf8:
            raise EnvelopeError(553, "5.6.7", "non-ASCII address needs the SMTPUTF8 parameter")
        raise _syntax(is_sender, "bad local part")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise _syntax(is_sender, "local part longer than 64 octets")
    _check_domain(domain, utf8, is_sender)
    return Mailbox(local, domain)


def _split_path(arg: str, prefix: str, is_sender: bool) -> tuple[str, str]:
    """Split C{FROM:<path> params} into the text inside the brackets and the rest."""
    if arg[: len(prefix)].upper() != prefix:
        raise EnvelopeError(501, "5.5.4", f"syntax: {prefix}<address> [parameters]")
    rest = arg[len(prefix) :].lstrip(" ")  # Postfix and Exim allow "FROM: <a@b>"
    if not rest.startswith("<"):
        raise _syntax(is_sender, "the address must be in angle brackets")
    if rest.startswith('<"'):
        # A quoted local part may hold ">".
        end = rest.find(">", _closing_quote(rest, 2, is_sender))
    else:
        end = rest.find(">")
    if end < 0:
        raise _syntax(is_sender, "missing '>'")
    if end + 1 > MAX_PATH:
        raise _syntax(is_sender, "path longer than 256 octets")
    path, params = rest[1:end], rest[end + 1 :]
    if params and not params.startswith(" "):
        raise _syntax(is_sender, "text after '>'")
    if path.startswith("@"):
        # A source route (RFC 5321 4.1.1.3, appendix C): accepted, ignored.
        colon = path.find(":")
        if colon < 0:
            raise _syntax(is_sender, "bad source route")
        path = path[colon + 1 :]
    return path, params.strip(" ")


def _closing_quote(text: str, start: int, is_sender: bool) -> int:
    i = start
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    raise _syntax(is_sender, "unterminated quoted local part")


def parse_parameters(text: str, utf8_ok: bool = True) -> dict[str, str | None]:
    """
    Parse C{KEY[=VALUE] ...} (RFC 5321 C{Mail-parameters}).

    @raise EnvelopeError: C{501 5.5.4} for malformed or repeated parameters
    """
    params: dict[str, str | None] = {}
    for word in text.split(" "):
        if not word:
            continue
        key, eq, value = word.partition("=")
        if not _KEYWORD.match(key) or (eq and not (_VALUE_UTF8 if utf8_ok else _VALUE).match(value)):
            raise EnvelopeError(501, "5.5.4", f"bad parameter syntax: {word[:40]}")
        key = key.upper()
        if key in params:
            raise EnvelopeError(501, "5.5.4", f"repeated parameter: {key}")
        params[key] = value if eq else None
    return params


def parse_mail(arg: str) -> MailCommand:
    """
    Parse the argument of C{MAIL} (C{FROM:<path> params}).

    UTF-8 in the path is accepted only with the C{SMTPUTF8} parameter
    (RFC 6531 3.4), which follows the path on the same line.

    @raise EnvelopeError: with the reply to send
    """
    path, rest = _split_path(arg, "FROM:", True)
    params = parse_parameters(rest)
    if not path:
        return MailCommand(None, params)
    return MailCommand(_parse_mailbox(path, "SMTPUTF8" in params, True), params)


def parse_rcpt(arg: str, utf8: bool) -> RcptCommand:
    """
    Parse the argument of C{RCPT} (C{TO:<path> params}).

    @param utf8: the transaction's C{MAIL} carried C{SMTPUTF8}
    @raise EnvelopeError: with the reply to send
    """
    path, rest = _split_path(arg, "TO:", False)
    params = parse_parameters(rest, utf8)
    if path.lower() == "postmaster":
        return RcptCommand(None, params, postmaster=True)
    if not path:
        raise _syntax(False, "empty recipient")
    return RcptCommand(_parse_mailbox(path, utf8, False), params)
