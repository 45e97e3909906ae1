"""
Where an accepted message goes: local mailboxes or the outbound queue.

L{Delivery} decides at RCPT time whether a recipient is acceptable (a user
of a local domain, or any address when the session may relay) and, at the
end of DATA or BDAT, hands the message to the mailbox store
(L{appnet.mailbox.IMailboxStore.deliver}) and the outbound queue
(C{enqueue(sender, recipients, message)}), firing only once every copy is
durable. It also writes the trace fields: C{Received:} on every message
(RFC 5321 4.4, with the protocol names of RFC 3848 and RFC 6531),
C{Return-Path:} on local delivery, and C{Message-ID:}/C{Date:} on
submission when the client left them out (RFC 6409 8.2, 8.3).

Partial failure: one message with several local recipients is several
independent Maildir deliveries, which cannot be made atomic. When some
succeed and others fail, the message counts as accepted (the client must
not send it again to those who have it): the failed local recipients are
handed to the outbound queue, whose worker retries them and bounces to the
sender in the end (RFC 5321 6.1: once 250 is said, the server is
responsible). Without a queue, or if the queue itself failed, the failure
is only logged. When nothing was delivered, the whole
message fails with the first error: C{552 5.2.2} for a full mailbox,
C{451 4.3.0} for anything else. Quotas are checked at RCPT already, so a
full mailbox rarely gets that far.
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from appnet.errors import NoSuchUser, QuotaExceeded
from appnet.smtp.address import EnvelopeError, Mailbox, domain_key

__all__ = [
    "Delivery",
    "IOutboundQueue",
    "Recipient",
    "TraceInfo",
    "new_message_id",
    "received_header",
    "rfc5322_now",
    "submission_headers",
]

_log = Logger()


class IOutboundQueue(TypingProtocol):
    """What L{Delivery} needs of the outbound queue (L{appnet.smtp.queue})."""

    def enqueue(self, sender: str, recipients: list[str], message: bytes) -> defer.Deferred[str]:
        ...


@dataclass(frozen=True)
class Recipient:
    """
    An accepted recipient: its address as the client gave it, and the
    local user it belongs to, or L{None} for a remote address (queued).
    """

    address: str
    user: str | None


@dataclass(frozen=True)
class TraceInfo:
    """
    What the C{Received:} field says about the session.

    @ivar helo: the name the client gave in HELO/EHLO
    @ivar peer: the client's IP address
    @ivar protocol: the RFC 3848 name: C{SMTP}, C{ESMTP}, C{ESMTPSA}, C{UTF8SMTPS}...
    @ivar queue_id: this message's id, also in the 250 reply
    """

    helo: str
    peer: str
    protocol: str
    queue_id: str


_counter = 0
_date_cache: tuple[int, str] = (-1, "")


def rfc5322_now() -> str:
    """
    Now as an RFC 5322 date-time in local time (C{Received:}, C{Date:}).
    Formatted once per second: C{formatdate} cost a tenth of the session's
    CPU per message under load.
    """
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.formatdate(second, localtime=True))
    return _date_cache[1]


def new_message_id() -> str:
    """A short unique id for one accepted message (time, pid, counter)."""
    global _counter
    _counter = (_counter + 1) & 0xFFFFF
    return f"{int(time.time() * 1000):x}{os.getpid() & 0xFFFF:04x}{_counter:05x}"


def received_header(trace: TraceInfo, hostname: str, recipients: list[Recipient]) -> bytes:
    """
    The C{Received:} field (RFC 5321 4.4): C{from} the HELO name and the
    client's address literal, C{by} us, C{with} the protocol, C{id}, and
    C{for} the recipient when there is exactly one.
    """
    peer = trace.peer if ":" not in trace.peer else f"IPv6:{trace.peer}"
    helo = "".join(c if c.isprintable() and c not in "()\\" else "?" for c in trace.helo)[:100]
    field = (
        f"Received: from {helo} ([{peer}])\r\n\tby {hostname} (appnet) with {trace.protocol}"
        f" id {trace.queue_id}"
    )
    if len(recipients) == 1:
        field += f"\r\n\tfor <{recipients[0].address}>"
    field += f";\r\n\t{rfc5322_now()}\r\n"
    return field.encode("utf-8")


def _header_block(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[: end + 2]
    return b"\r\n" + head.lower()


def submission_headers(message: bytes, hostname: str) -> bytes:
    """
    The C{Message-ID:} and C{Date:} fields a submitted message lacks
    (RFC 6409 8.2, 8.3), found by scanning its header block only.
    """
    head = _header_block(message)
    added = b""
    if b"\r\nmessage-id:" not in head:
        added += b"Message-ID: " + email.utils.make_msgid(domain=hostname).encode() + b"\r\n"
    if b"\r\ndate:" not in head:
        added += b"Date: " + rfc5322_now().encode() + b"\r\n"
    return added


class Delivery:
    """
    Recipient policy and final delivery for one appnet instance.

    @param store: the mailbox store (C{deliver(user, message)}, C{quota(user)})
    @param user_exists: C{user_exists(name)}: is there such an account
    @param quota_for: the user's byte limit, or L{None} for none
    @param local_domains: domains delivered here (compared case-insensitively)
    @param hostname: our name in trace fields and generated Message-IDs
    @param queue: the outbound queue, or L{None} when relaying is unavailable
    """

    def __init__(
        self,
        store: Any,
        user_exists: Callable[[str], bool],
        quota_for: Callable[[str], int | None],
        local_domains: list[str],
        hostname: str,
        queue: IOutboundQueue | None = None,
    ) -> None:
        self.store = store
        self.user_exists = user_exists
        self.quota_for = quota_for
        self.local_domains = frozenset(domain_key(d) for d in local_domains)
        self.primary_domain = local_domains[0] if local_domains else hostname
        self.hostname = hostname
        self.queue = queue

    def is_local_domain(self, domain: str) -> bool:
        """True when mail for C{domain} is delivered here."""
        return domain_key(domain) in self.local_domains

    def recipient(self, mailbox: Mailbox | None, may_relay: bool, size: int = 0) -> Recipient:
        """
        Accept or refuse one RCPT.

        @param mailbox: the forward-path, or L{None} for the bare
            C{<Postmaster>}
        @param may_relay: the session is an authenticated submission
        @param size: the message size the client declared (0: unknown)
        @raise EnvelopeError: C{550 5.1.1} unknown user, C{550 5.7.1} relay
            denied, C{552 5.2.2} mailbox full, C{451 4.3.2} no queue
        """
        if mailbox is None:
            return self._local(f"postmaster@{self.primary_domain}", "postmaster", size)
        address = str(mailbox)
        if mailbox.is_literal:
            raise EnvelopeError(550, "5.1.2", "address literals are not accepted as recipients")
        if self.is_local_domain(mailbox.domain):
            local = mailbox.local.lower()
            if local.startswith('"') or not local.isascii():
                raise EnvelopeError(550, "5.1.1", f"<{address}>: no such user here")
            return self._local(address, local, size)
        if not may_relay:
            raise EnvelopeError(550, "5.7.1", f"<{address}>: relay access denied")
        if self.queue is None:
            raise EnvelopeError(451, "4.3.2", "outbound mail is not available; try again later")
        return Recipient(address, None)

    def _local(self, address: str, user: str, size: int) -> Recipient:
        if not self.user_exists(user):
            raise EnvelopeError(550, "5.1.1", f"<{address}>: no such user here")
        limit = self.quota_for(user)
        if limit is not None:
            used, _ = self.store.quota(user)
            if used + size > limit or used >= limit:
                raise EnvelopeError(552, "5.2.2", f"<{address}>: mailbox full")
        return Recipient(address, user)

    def deliver(self, sender: str, recipients: list[Recipient], message: bytes) -> defer.Deferred[None]:
        """
        Deliver C{message} (with its C{Received:} field already) to every
        recipient; fire once each copy is durable.

        @return: a Deferred firing with L{None} when the message is safe
            (every copy delivered or queued), or failing with
            L{EnvelopeError} when nothing was delivered
        """
        by_user: dict[str, list[str]] = {}
        for r in recipients:
            if r.user is not None:
                by_user.setdefault(r.user, []).append(r.address)
        remote = [r.address for r in recipients if r.user is None]
        pending: list[defer.Deferred[Any]] = []
        if by_user:
            local_copy = b"Return-Path: <" + sender.encode("utf-8") + b">\r\n" + message
            # The UID is the next scan's business (no UID-list rewrite per message).
            pending += [self.store.deliver(user, local_copy, assign_uid=False) for user in by_user]
        if remote:
            assert self.queue is not None  # recipient() refused them otherwise
            pending.append(defer.maybeDeferred(self.queue.enqueue, sender, remote, message))
        if len(pending) == 1:
            return pending[0].addCallbacks(lambda _: None, self._all_failed)
        d = defer.DeferredList(pending, consumeErrors=True)
        return d.addCallback(self._outcome, list(by_user.values()), sender, message)

    def _outcome(
        self, results: list[tuple[bool, Any]], local: list[list[str]], sender: str, message: bytes
    ) -> defer.Deferred[None] | None:
        failures = [r for ok, r in results if not ok]
        if not failures:
            return None
        if len(failures) == len(results):
            self._all_failed(failures[0])
        for failure in failures:
            _log.failure("SMTP delivery of one copy failed (others succeeded)", failure)
        retry = [addresses[0] for addresses, (ok, _) in zip(local, results) if not ok]
        queue_failed = len(results) > len(local) and not results[-1][0]
        if not retry or self.queue is None or queue_failed:
            # The others have the message, so a retry by the client would
            # duplicate it; the loss is logged above.
            return None
        # The relay worker retries local recipients and bounces in the end.
        return defer.maybeDeferred(self.queue.enqueue, sender, retry, message).addCallback(lambda _: None)

    @staticmethod
    def _all_failed(failure: Failure) -> None:
        if failure.check(QuotaExceeded):
            raise EnvelopeError(552, "5.2.2", "mailbox full")
        if failure.check(NoSuchUser):
            raise EnvelopeError(550, "5.1.1", "no such user here")
        _log.failure("SMTP delivery failed", failure)
        raise EnvelopeError(451, "4.3.0", "local delivery failed; try again later")
