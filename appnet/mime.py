"""
Compose and parse e-mail messages with Python's C{email} package.

Nothing here writes MIME by hand: L{compose} builds an
C{email.message.EmailMessage} (text, an optional HTML alternative,
attachments), C{email} encodes non-ASCII headers per RFC 2047 and
attachment file names per RFC 2231, and L{to_bytes} serializes with
C{email.policy.SMTP} (CRLF line ends) or, for a server that speaks
SMTPUTF8 (RFC 6531), C{email.policy.SMTPUTF8}::

    msg = compose("alice@example.org", ["bob@example.org"], "Grüße", "Hallo Bob!\\n",
                  attachments=[attachment_from_path("report.pdf")])
    data = to_bytes(msg)
    again = parse(data)
    body_text(again), attachments(again)

Composed messages are 7-bit clean (quoted-printable or base64 for non-ASCII
text), so any server takes them; only a non-ASCII I{address} needs SMTPUTF8
(L{needs_smtputf8}).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import mimetypes
import os
from collections.abc import Iterable, Mapping, Sequence
from email.message import EmailMessage
from typing import NamedTuple

__all__ = [
    "ADDRESS_HEADERS",
    "Attachment",
    "attachment_from_path",
    "attachments",
    "body_text",
    "compose",
    "needs_smtputf8",
    "parse",
    "to_bytes",
]

#: Headers holding addresses: a non-ASCII address in them needs SMTPUTF8,
#: since RFC 2047 encoded words may not stand in an address.
ADDRESS_HEADERS = ("from", "sender", "reply-to", "to", "cc", "bcc")

# Non-ASCII text becomes quoted-printable or base64, never 8bit.
_COMPOSE_POLICY = email.policy.default.clone(cte_type="7bit")


class Attachment(NamedTuple):
    """One attachment: its file name, MIME type (C{"image/png"}) and bytes."""

    filename: str
    content_type: str
    data: bytes


def _addresses(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _msgid_domain(sender: str) -> str:
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2]
    try:
        return domain.encode("idna").decode("ascii") if domain else "localhost"
    except UnicodeError:
        return "localhost"


def compose(
    sender: str,
    to: str | Sequence[str],
    subject: str,
    text: str,
    *,
    html: str | None = None,
    attachments: Iterable[Attachment | tuple[str, str, bytes]] = (),
    cc: str | Sequence[str] = (),
    headers: Mapping[str, str] | None = None,
    date: str | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    """
    Build a message: a text body, an optional HTML alternative and attachments.

    @param sender: the From address, C{"Alice <alice@example.org>"} or bare
    @param to: one address or a list
    @param attachments: L{Attachment}s or C{(filename, content_type, bytes)}
    @param headers: extra header fields (C{Reply-To}, C{In-Reply-To}, ...);
        one named like a field set here replaces it
    @param date: the C{Date} value; the current local time when omitted
    @param message_id: the C{Message-ID}; a fresh one in the sender's domain
        when omitted
    @raise ValueError: a header value holds a line break, or a content type
        is not C{type/subtype}
    """
    msg = EmailMessage(policy=_COMPOSE_POLICY)
    msg["From"] = sender
    msg["To"] = ", ".join(_addresses(to))
    if cc:
        msg["Cc"] = ", ".join(_addresses(cc))
    msg["Subject"] = subject
    msg["Date"] = date or email.utils.formatdate(localtime=True)
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain=_msgid_domain(sender))
    for name, value in (headers or {}).items():
        if name in msg:
            msg.replace_header(name, value)
        else:
            msg[name] = value
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, content_type, data in attachments:
        maintype, slash, subtype = content_type.partition("/")
        if not (slash and maintype and subtype):
            raise ValueError(f"bad content type {content_type!r}: want type/subtype")
        msg.add_attachment(bytes(data), maintype=maintype, subtype=subtype, filename=filename)
    return msg


def attachment_from_path(path: str | os.PathLike[str]) -> Attachment:
    """
    Read a file as an L{Attachment}, its type guessed from its name
    (C{application/octet-stream} when unknown).
    """
    content_type, encoding = mimetypes.guess_type(os.fspath(path))
    if content_type is None or encoding is not None:
        # report.txt.gz is gzip data, not text
        content_type = "application/octet-stream"
    with open(path, "rb") as f:
        data = f.read()
    return Attachment(os.path.basename(os.fspath(path)), content_type, data)


def parse(data: bytes) -> EmailMessage:
    """Parse a message (CRLF or LF line ends) with C{email.policy.default}."""
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def body_text(msg: EmailMessage) -> str:
    """
    The message's main text: its text/plain body, else its text/html body,
    else C{""}; line ends as C{"\\n"}.
    """
    body = msg.get_body(preferencelist=("plain", "html"))
    return "" if body is None else body.get_content().replace("\r\n", "\n")


def attachments(msg: EmailMessage) -> list[Attachment]:
    """Every attachment as an L{Attachment} (file name C{""} when it has none)."""
    found = []
    for part in msg.iter_attachments():
        data = part.get_payload(decode=True)
        found.append(Attachment(_filename(part), part.get_content_type(), data or b""))
    return found


def _filename(part: EmailMessage) -> str:
    # Read from the parsed parameters: Message.get_filename() unquotes once
    # more, so a name like '"a"' would lose its quotes.
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        params = getattr(part.get(header), "params", None)
        if params and params.get(param):
            return params[param]
    return ""


def to_bytes(msg: EmailMessage, *, smtputf8: bool = False) -> bytes:
    """
    Serialize for SMTP: CRLF line ends; non-ASCII headers as RFC 2047
    encoded words, or raw UTF-8 with C{smtputf8=True} (RFC 6532).
    """
    return msg.as_bytes(policy=email.policy.SMTPUTF8 if smtputf8 else email.policy.SMTP)


def needs_smtputf8(sender: str, recipients: Iterable[str], msg: EmailMessage | bytes) -> bool:
    """
    True if sending this needs the SMTPUTF8 extension (RFC 6531): a
    non-ASCII envelope address, a non-ASCII address in an address header,
    or (for raw bytes) any 8-bit byte in the header section.
    """
    if not sender.isascii() or not all(r.isascii() for r in recipients):
        return True
    if isinstance(msg, (bytes, bytearray, memoryview)):
        raw = bytes(msg)
        end = raw.find(b"\n\n")
        crlf_end = raw.find(b"\r\n\r\n")
        ends = [i for i in (end, crlf_end) if i >= 0]
        return not raw[: min(ends) if ends else len(raw)].isascii()
    for name in ADDRESS_HEADERS:
        for value in msg.get_all(name, ()):
            for address in getattr(value, "addresses", ()):
                if not address.addr_spec.isascii():
                    return True
    return False
