"""
Delivery status notifications (RFC 3464): the bounce the relay sends back.

L{build_dsn} composes one C{multipart/report; report-type=delivery-status}
message with Python's C{email} package: a human-readable part, the
C{message/delivery-status} part (one per-message block, one block per failed
recipient) and the original message's header block as
C{text/rfc822-headers} (RFC 6522). It goes from C{MAILER-DAEMON@<hostname>}
and is sent with the null reverse-path, so it can never bounce in turn
(RFC 5321 §4.5.5).
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message

__all__ = ["FailedRecipient", "build_dsn", "status_of"]

#: The most of the original's header section a DSN returns.
MAX_HEADERS = 64 * 1024

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class FailedRecipient:
    """
    One recipient the relay gave up on.

    @ivar recipient: the address from the envelope (RCPT TO)
    @ivar code: the last SMTP reply code, or L{None} when the last error
        was not an SMTP reply (no route, connection refused, ...)
    @ivar text: the reply text (after the code) or the error's description
    @ivar expired: the message outlived the queue lifetime (the last error
        was temporary)
    """

    recipient: str
    code: int | None
    text: str
    expired: bool = False


def status_of(code: int | None, text: str, expired: bool = False) -> str:
    """
    The RFC 3463 status for a failure: the enhanced code the server gave,
    else one derived from the reply code; C{4.4.7} (delivery time expired)
    for a temporary error that outlived the queue.
    """
    match = _ENHANCED.match(text)
    if expired:
        return match.group(0) if match and match.group(1) == "4" else "4.4.7"
    if match and match.group(1) == "5":
        return match.group(0)
    return "5.0.0"


def _header_block(message: bytes) -> bytes:
    """
    The header section of C{message} (up to the first empty line), at most
    L{MAX_HEADERS} octets of it: a message without a body must not come
    back whole.
    """
    end = re.search(rb"\r?\n\r?\n", message)
    head = message if end is None else message[: end.start()]
    return head[:MAX_HEADERS].replace(b"\r\n", b"\n")


def build_dsn(
    *,
    hostname: str,
    sender: str,
    arrival: float,
    failures: list[FailedRecipient],
    original: bytes,
    now: float,
) -> bytes:
    """
    Compose the DSN for C{failures} of one message.

    @param hostname: our host name: the Reporting-MTA and the From domain
    @param sender: the original message's envelope sender (the DSN's To)
    @param arrival: when the original message was queued (POSIX time)
    @param failures: the recipients given up on (at least one)
    @param original: the original message, whose headers are returned
    @param now: the current time (POSIX), for Date and Last-Attempt-Date
    @return: the DSN as bytes with CRLF line ends
    """
    dsn = EmailMessage(policy=policy.SMTP)
    dsn["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    dsn["To"] = sender
    dsn["Subject"] = "Undelivered Mail Returned to Sender"
    dsn["Date"] = email.utils.formatdate(now, usegmt=True)
    dsn["Message-ID"] = email.utils.make_msgid(domain=hostname)
    dsn["Auto-Submitted"] = "auto-replied"  # RFC 3834: no automatic replies to this
    dsn.set_content(_human_text(hostname, failures))
    dsn.make_mixed()
    dsn.set_type("multipart/report")
    dsn.set_param("report-type", "delivery-status")
    for part in dsn.iter_parts():
        del part["MIME-Version"]
    dsn.attach(_status_part(hostname, arrival, failures, now))
    dsn.attach(_headers_part(_header_block(original)))
    return dsn.as_bytes()


def _human_text(hostname: str, failures: list[FailedRecipient]) -> str:
    lines = [
        f"This is the mail system at {hostname}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "It is attached below (headers only).",
        "",
    ]
    for f in failures:
        why = f"{f.code} {f.text}" if f.code is not None else f.text
        if f.expired:
            why = f"gave up retrying; last error: {why}"
        lines.append(f"<{f.recipient}>: {why}")
    return "\n".join(lines) + "\n"


def _status_part(hostname: str, arrival: float, failures: list[FailedRecipient], now: float) -> EmailMessage:
    per_message = Message(policy=policy.SMTP)
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    per_message["Arrival-Date"] = email.utils.formatdate(arrival, usegmt=True)
    blocks = [per_message]
    for f in failures:
        block = Message(policy=policy.SMTP)
        block["Final-Recipient"] = f"rfc822; {f.recipient}"
        block["Action"] = "failed"
        block["Status"] = status_of(f.code, f.text, f.expired)
        if f.code is not None:
            block["Diagnostic-Code"] = f"smtp; {f.code} {f.text}"
        else:
            block["Diagnostic-Code"] = f"X-appnet; {f.text}"
        block["Last-Attempt-Date"] = email.utils.formatdate(now, usegmt=True)
        blocks.append(block)
    part = EmailMessage(policy=policy.SMTP)
    part.set_type("message/delivery-status")
    part.set_payload(blocks)
    del part["MIME-Version"]
    return part


def _headers_part(headers: bytes) -> EmailMessage:
    part = EmailMessage(policy=policy.SMTP)
    text = headers.decode("utf-8", "replace") + "\n"
    # Non-ASCII (SMTPUTF8) headers are quoted-printable so the DSN stays 7-bit.
    cte = "7bit" if text.isascii() else "quoted-printable"
    part.set_content(text, subtype="rfc822-headers", cte=cte)
    del part["MIME-Version"]
    return part
