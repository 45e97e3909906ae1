"""
Tests for L{appnet.smtp.relay} and L{appnet.smtp.dsn}: the relay worker on
a fake clock with a fake SMTP sender, MX resolver and mailbox store.
"""

from __future__ import annotations

import email
import email.policy
import os
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer, error, task
from twisted.trial.unittest import SynchronousTestCase

from appnet.dns.client import DNSTimeout, NXDomain, Record
from appnet.errors import NoSuchUser, QuotaExceeded
from appnet.smtp import dsn
from appnet.smtp.queue import PENDING, OutboundQueue
from appnet.smtp.relay import (
    MXResolver,
    RelayService,
    RelaySettings,
    RouteError,
    local_delivery,
    system_nameservers,
)
from appnet.stats import ServiceStats
from tests.unit.test_smtp_queue import run_now

ORIGINAL = b"From: Alice <alice@local.test>\r\nTo: bob@remote.test\r\nSubject: greetings\r\n\r\nHello Bob\r\n"


@dataclass
class SendResult:
    """What the client's C{deliver_to_hosts} gives (per-recipient replies)."""

    accepted: dict[str, tuple[int, str]] = field(default_factory=dict)
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)


class SessionError(Exception):
    """A session-level failure, shaped as the client's C{SMTPClientError}."""

    def __init__(self, code: int, text: str, permanent: bool) -> None:
        super().__init__(f"{code} {text}")
        self.code, self.text, self.permanent = code, text, permanent


@dataclass
class Sent:
    """One call of the fake sender."""

    hosts: list[tuple[str, int]]
    sender: str
    recipients: list[str]
    message: bytes
    options: dict[str, Any]
    result: defer.Deferred[SendResult]

    def answer(self, **replies: tuple[int, str]) -> None:
        """Reply per recipient (keyword: the local part); 250 if not named."""
        result = SendResult()
        for rcpt in self.recipients:
            code, text = replies.get(rcpt.split("@")[0], (250, "2.1.5 ok"))
            (result.accepted if code < 300 else result.refused)[rcpt] = (code, text)
        self.result.callback(result)


class Harness:
    """A relay over a temporary queue, with every outside part faked."""

    def __init__(self, test: SynchronousTestCase, directory: str | None = None, **settings: Any) -> None:
        self.test = test
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.directory = directory or test.mktemp()
        self.queue = OutboundQueue(self.directory, run_blocking=run_now, now=self.clock.seconds)
        self.sent: list[Sent] = []
        self.local: list[tuple[str, str, bytes]] = []
        self.local_users = {"alice", "carol"}
        self.local_errors: list[Exception] = []
        self.mx: dict[str, Any] = {}
        self.stats = ServiceStats("smtp-relay")
        options: dict[str, Any] = {"hostname": "relay.local.test", "retry_intervals": (60, 300, 900)}
        options.update(settings)
        self.relay = RelayService(
            self.queue,
            RelaySettings(**options),
            send=self.send,
            resolve_mx=self.resolve_mx,
            deliver_local=self.deliver_local,
            is_local_domain=lambda domain: domain == "local.test",
            clock=self.clock,
            stats=self.stats,
        )

    def send(self, hosts: list[tuple[str, int]], sender: str, recipients: list[str], message: bytes, **kw: Any) -> defer.Deferred[SendResult]:
        d: defer.Deferred[SendResult] = defer.Deferred()
        self.sent.append(Sent(hosts, sender, recipients, message, kw, d))
        return d

    def resolve_mx(self, domain: str) -> defer.Deferred[list[tuple[str, int]]]:
        answer = self.mx.get(domain, [(f"mx.{domain}", 25)])
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)

    def deliver_local(self, sender: str, recipient: str, message: bytes) -> defer.Deferred[None]:
        if self.local_errors:
            return defer.fail(self.local_errors.pop(0))
        user = recipient.split("@")[0]
        if user not in self.local_users:
            return defer.fail(NoSuchUser(user))
        self.local.append((sender, recipient, message))
        return defer.succeed(None)

    def start(self) -> Harness:
        self.relay.startService()
        self.test.successResultOf(self.relay.loaded)
        return self

    def crash(self) -> None:
        """Die as by kill -9: nothing is stopped; the kernel drops the flock."""
        self.relay._lock.release()  # type: ignore[union-attr]

    def enqueue(self, recipients: list[str], sender: str = "alice@local.test", message: bytes = ORIGINAL) -> str:
        return self.test.successResultOf(self.queue.enqueue(sender, recipients, message))

    def run_due(self) -> None:
        """Let timers that are due now fire."""
        self.clock.advance(0)

    def entries(self) -> list[Any]:
        return self.test.successResultOf(self.queue.load())


def parse(message: bytes) -> EmailMessage:
    return email.message_from_bytes(message, policy=email.policy.default)  # type: ignore[return-value]


def status_blocks(report: EmailMessage) -> list[Any]:
    [part] = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
    return part.get_payload()


class DeliveryTests(SynchronousTestCase):
    """Routing: MX per domain, smarthost, local domains."""

    def test_grouped_by_domain(self) -> None:
        """Recipients go one session per domain, to that domain's MX hosts."""
        h = Harness(self).start()
        h.mx["remote.test"] = [("192.0.2.1", 25), ("192.0.2.2", 25)]
        h.enqueue(["bob@remote.test", "dave@other.test", "eve@remote.test"])
        h.run_due()
        self.assertEqual(sorted((s.hosts[0][0], tuple(s.recipients)) for s in h.sent),
                         [("192.0.2.1", ("bob@remote.test", "eve@remote.test")), ("mx.other.test", ("dave@other.test",))])
        self.assertEqual(h.sent[0].hosts, [("192.0.2.1", 25), ("192.0.2.2", 25)])
        self.assertEqual(h.sent[0].sender, "alice@local.test")
        self.assertEqual(h.sent[0].message, ORIGINAL)
        self.assertEqual(h.sent[0].options, {"tls": "opportunistic", "verify": False, "helo": "relay.local.test"})
        for s in h.sent:
            s.answer()
        self.assertEqual(h.entries(), [])
        self.assertEqual(h.relay.pending(), [])
        self.assertEqual(h.stats["delivered"], 3)
        self.assertEqual(h.stats["attempts"], 2)

    def test_smarthost(self) -> None:
        """With a smarthost, every remote recipient goes there in one session."""
        h = Harness(self, smarthost=("127.0.0.1", 2525), relay_tls="required").start()
        h.enqueue(["bob@remote.test", "dave@other.test"])
        h.run_due()
        [s] = h.sent
        self.assertEqual(s.hosts, [("127.0.0.1", 2525)])
        self.assertEqual(s.recipients, ["bob@remote.test", "dave@other.test"])
        self.assertEqual((s.options["tls"], s.options["verify"]), ("starttls", True))

    def test_local_domain(self) -> None:
        """Recipients in a local domain go to the mailbox store, not SMTP."""
        h = Harness(self).start()
        h.enqueue(["carol@local.test"], sender="bob@remote.test")
        h.run_due()
        self.assertEqual(h.sent, [])
        self.assertEqual(h.local, [("bob@remote.test", "carol@local.test", ORIGINAL)])
        self.assertEqual(h.entries(), [])

    def test_local_failures(self) -> None:
        """A full local mailbox is retried; a broken store is logged and retried."""
        h = Harness(self).start()
        h.local_errors += [QuotaExceeded("carol"), OSError(5, "Input/output error")]
        h.enqueue(["carol@local.test"], sender="bob@remote.test")
        h.run_due()
        [entry] = h.entries()
        self.assertEqual((entry.recipients[0].state, entry.recipients[0].code), (PENDING, 452))
        h.clock.advance(60)
        [entry] = h.entries()
        self.assertEqual((entry.recipients[0].state, entry.recipients[0].code), (PENDING, 451))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_concurrency_limit(self) -> None:
        """No more than C{concurrency} sessions run at once; the next waits for a slot."""
        h = Harness(self, concurrency=2).start()
        for n in range(4):
            h.enqueue([f"bob@d{n}.test"])
        h.run_due()
        self.assertEqual(len(h.sent), 2)
        h.sent[0].answer()
        self.assertEqual(len(h.sent), 3)
        for s in h.sent[1:]:
            s.answer()
        self.assertEqual(len(h.sent), 4)


class RetryTests(SynchronousTestCase):
    """Temporary failures are retried on the configured schedule, then given up."""

    def attempt_times(self, h: Harness, until: float) -> list[float]:
        """Answer every attempt with 451 and return when each was made."""
        times = []
        start = h.clock.seconds()
        while h.clock.seconds() - start <= until:
            h.run_due()
            while h.sent:
                times.append(h.clock.seconds() - start)
                h.sent.pop().answer(bob=(451, "4.3.0 try again later"))
            h.clock.advance(1)
        return times

    def test_schedule(self) -> None:
        """Attempts follow C{retry_intervals}, the last interval repeating."""
        h = Harness(self).start()
        h.enqueue(["bob@remote.test"])
        self.assertEqual(self.attempt_times(h, 3000), [0, 60, 360, 1260, 2160])
        [entry] = h.entries()
        [r] = entry.recipients
        self.assertEqual((r.state, r.attempts, r.code, r.error), (PENDING, 5, 451, "4.3.0 try again later"))
        self.assertEqual(r.next_attempt, entry.arrival + 2160 + 900)
        self.assertEqual(h.stats["deferred"], 5)

    def test_connection_error_retried(self) -> None:
        """A host that cannot be reached is tried again later."""
        h = Harness(self).start()
        h.enqueue(["bob@remote.test"])
        h.run_due()
        h.sent.pop().result.errback(error.ConnectionRefusedError("192.0.2.1"))
        [entry] = h.entries()
        self.assertEqual(entry.recipients[0].state, PENDING)
        self.assertIn("Connection was refused", entry.recipients[0].error)
        h.clock.advance(59)
        self.assertEqual(h.sent, [])
        h.clock.advance(1)
        self.assertEqual(len(h.sent), 1)

    def test_unexpected_error_logged(self) -> None:
        """An error that is no network failure is logged, and the recipient retried."""
        h = Harness(self).start()
        h.enqueue(["bob@remote.test"])
        h.run_due()
        h.sent.pop().result.errback(ZeroDivisionError("a bug"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        [entry] = h.entries()
        self.assertEqual((entry.recipients[0].state, entry.recipients[0].error), (PENDING, "a bug"))

    def test_give_up(self) -> None:
        """
        Past C{queue_lifetime} a temporary failure is final (one last try at
        the deadline) and the sender gets a DSN saying so.
        """
        h = Harness(self, queue_lifetime=1000, smarthost=("192.0.2.9", 25)).start()
        h.enqueue(["bob@remote.test"])
        self.assertEqual(self.attempt_times(h, 2000), [0, 60, 360, 1000])
        [bounce] = h.local
        self.assertEqual(bounce[:2], ("", "alice@local.test"))
        [_, per_rcpt] = status_blocks(parse(bounce[2]))
        self.assertEqual(per_rcpt["Action"], "failed")
        self.assertEqual(per_rcpt["Status"], "4.3.0")
        self.assertEqual(per_rcpt["Diagnostic-Code"], "smtp; 451 4.3.0 try again later")
        self.assertEqual(h.entries(), [])
        self.assertEqual(h.stats["expired"], 1)

    def test_partial_retry(self) -> None:
        """Only the recipients still pending are tried again."""
        h = Harness(self).start()
        h.enqueue(["bob@remote.test", "eve@remote.test"])
        h.run_due()
        h.sent.pop().answer(eve=(452, "4.2.2 mailbox full"))
        h.clock.advance(60)
        [again] = h.sent
        self.assertEqual(again.recipients, ["eve@remote.test"])


class BounceTests(SynchronousTestCase):
    """Permanent failures bounce once, as an RFC 3464 DSN, never to the null sender."""

    def test_partial_failure(self) -> None:
        """One refused recipient of two: one DSN naming only it; the other delivered."""
        h = Harness(self).start()
        h.enqueue(["bob@remote.test", "nobody@remote.test"])
        h.run_due()
        h.sent.pop().answer(nobody=(550, "5.1.1 no such user"))
        h.run_due()
        self.assertEqual(h.entries(), [], "the original is done; the DSN delivered")
        [(sender, recipient, raw)] = h.local
        self.assertEqual((sender, recipient), ("", "alice@local.test"))
        report = parse(raw)
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        self.assertEqual(report["From"], "Mail Delivery System <MAILER-DAEMON@relay.local.test>")
        self.assertEqual(report["To"], "alice@local.test")
        self.assertEqual(report["Auto-Submitted"], "auto-replied")
        types = [p.get_content_type() for p in report.iter_parts()]
        self.assertEqual(types, ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        human = next(report.iter_parts()).get_content()
        self.assertIn("<nobody@remote.test>: 550 5.1.1 no such user", human)
        self.assertNotIn("bob@", human)
        per_message, *per_rcpt = status_blocks(report)
        self.assertEqual(per_message["Reporting-MTA"], "dns; relay.local.test")
        self.assertEqual(per_message["Arrival-Date"], "Tue, 14 Nov 2023 22:13:20 GMT")
        self.assertEqual(len(per_rcpt), 1)
        self.assertEqual(per_rcpt[0]["Final-Recipient"], "rfc822; nobody@remote.test")
        self.assertEqual(per_rcpt[0]["Action"], "failed")
        self.assertEqual(per_rcpt[0]["Status"], "5.1.1")
        self.assertEqual(per_rcpt[0]["Diagnostic-Code"], "smtp; 550 5.1.1 no such user")
        headers = list(report.iter_parts())[2].get_content()
        self.assertIn("Subject: greetings", headers)
        self.assertNotIn("Hello Bob", headers)
        self.assertEqual((h.stats["delivered"], h.stats["failed"], h.stats["bounces"]), (2, 1, 1))

    def test_null_sender_not_bounced(self) -> None:
        """A message from the null sender that fails is dropped, no DSN."""
        h = Harness(self).start()
        h.enqueue(["nobody@remote.test"], sender="")
        h.run_due()
        h.sent.pop().answer(nobody=(550, "5.1.1 no such user"))
        self.assertEqual(h.entries(), [])
        self.assertEqual((h.sent, h.local), ([], []))
        self.assertEqual(h.stats["bounces"], 0)
        self.assertEqual(h.stats["bounces_dropped"], 1)

    def test_session_refused(self) -> None:
        """A permanent session failure (e.g. 554 at MAIL) fails the whole group."""
        h = Harness(self).start()
        h.enqueue(["bob@remote.test", "eve@remote.test"], sender="zed@elsewhere.test")
        h.run_due()
        h.sent.pop().result.errback(SessionError(554, "5.7.1 go away", permanent=True))
        h.run_due()
        [bounce] = h.sent
        self.assertEqual((bounce.sender, bounce.recipients, bounce.hosts), ("", ["zed@elsewhere.test"], [("mx.elsewhere.test", 25)]))
        statuses = [b["Status"] for b in status_blocks(parse(bounce.message))[1:]]
        self.assertEqual(statuses, ["5.7.1", "5.7.1"])

    def test_null_mx(self) -> None:
        """A domain refusing mail by null MX fails at once with 5.1.10."""
        h = Harness(self).start()
        h.mx["nomail.test"] = RouteError("5.1.10 nomail.test accepts no mail (null MX)", permanent=True, code=556)
        h.enqueue(["bob@nomail.test"])
        h.run_due()
        [(_, _, raw)] = h.local
        [rcpt] = status_blocks(parse(raw))[1:]
        self.assertEqual(rcpt["Status"], "5.1.10")

    def test_unknown_local_user(self) -> None:
        """An unknown local recipient bounces to a remote sender; a bounce to one is dropped."""
        h = Harness(self).start()
        h.enqueue(["ghost@local.test"], sender="bob@remote.test")
        h.run_due()
        [bounce] = h.sent
        self.assertEqual(bounce.recipients, ["bob@remote.test"])
        [rcpt] = status_blocks(parse(bounce.message))[1:]
        self.assertEqual(rcpt["Final-Recipient"], "rfc822; ghost@local.test")
        self.assertEqual(rcpt["Status"], "5.1.1")
        h.enqueue(["ghost@local.test"], sender="")
        h.run_due()
        self.assertEqual(len(h.sent), 1, "no bounce of a bounce")
        self.assertEqual(len(h.entries()), 1, "only the first DSN is left, in flight")


class RestartTests(SynchronousTestCase):
    """A relay on the same directory carries on after a crash or a stop."""

    def test_resume_after_crash(self) -> None:
        """
        A relay dropped mid-attempt (no stop: a kill -9) leaves the message
        queued; a new relay on the directory sends it.
        """
        first = Harness(self).start()
        queue_id = first.enqueue(["bob@remote.test"])
        first.run_due()
        self.assertEqual(len(first.sent), 1)
        directory = first.directory
        first.crash()
        del first
        second = Harness(self, directory=directory)
        second.start()
        second.run_due()
        [s] = second.sent
        self.assertEqual(s.recipients, ["bob@remote.test"])
        self.assertEqual(s.message, ORIGINAL)
        s.answer()
        self.assertEqual(second.entries(), [])
        self.assertEqual(len(second.sent), 1)
        self.assertTrue(queue_id)

    def test_resume_keeps_schedule(self) -> None:
        """After a deferral, a restarted relay waits for the recorded next attempt."""
        first = Harness(self).start()
        first.enqueue(["bob@remote.test"])
        first.run_due()
        first.sent.pop().answer(bob=(421, "4.4.2 closing"))
        first.crash()
        second = Harness(self, directory=first.directory)
        second.clock.advance(10)
        second.start()
        second.clock.advance(49)
        self.assertEqual(second.sent, [])
        second.clock.advance(1)
        self.assertEqual(len(second.sent), 1)
        [entry] = second.entries()
        self.assertEqual(entry.recipients[0].attempts, 1)

    def test_one_worker_per_queue(self) -> None:
        """
        A second relay on the same queue stands by: the first delivers what
        the second's process queues (found by its rescan), and the second
        takes over once the first stops.
        """
        first = Harness(self).start()
        second = Harness(self, directory=first.directory)
        second.relay.startService()
        self.assertNoResult(second.relay.loaded)
        second.enqueue(["bob@remote.test"])
        second.clock.advance(60)
        self.assertEqual(second.sent, [])
        first.clock.advance(60)
        self.assertEqual(len(first.sent), 1)
        self.successResultOf(first.relay.stopService())
        [entry] = second.entries()
        self.assertEqual(entry.recipients[0].attempts, 1, "the interrupted attempt is recorded")
        second.clock.advance(60)
        self.assertEqual(self.successResultOf(second.relay.loaded), 1)
        second.clock.advance(60)
        [taken_over] = second.sent
        taken_over.answer()
        self.assertEqual(second.entries(), [])

    def test_vanished_message_dropped(self) -> None:
        """A message whose files are gone (finished meanwhile) is dropped quietly."""
        h = Harness(self).start()
        queue_id = h.enqueue(["bob@remote.test"])
        self.successResultOf(h.queue.remove(queue_id))
        h.run_due()
        self.assertEqual((h.sent, h.relay.pending()), ([], []))

    def test_stop_interrupts(self) -> None:
        """Stopping cancels a session in progress; it counts as a deferral and is kept."""
        h = Harness(self).start()
        h.enqueue(["bob@remote.test"])
        h.run_due()
        self.assertEqual(len(h.sent), 1)
        stopped = h.relay.stopService()
        self.successResultOf(stopped)
        [entry] = h.entries()
        self.assertEqual((entry.recipients[0].state, entry.recipients[0].attempts), (PENDING, 1))
        self.assertEqual(entry.recipients[0].error, "CancelledError")
        h.clock.advance(3600)
        self.assertEqual(len(h.sent), 1, "nothing runs once stopped")

    def test_enqueue_while_loading(self) -> None:
        """
        A message queued while the start-up scan runs is seen by both the
        scan and the watcher, yet sent once.
        """
        h = Harness(self)
        work: list[Any] = []

        def later(f: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            work.append(lambda: d.callback(f(*args)))
            return d

        h.queue._run_blocking = later
        h.relay.startService()
        scan = work.pop(0)
        enqueued = h.queue.enqueue("alice@local.test", ["bob@remote.test"], ORIGINAL)
        work.pop(0)()
        self.successResultOf(enqueued)
        scan()
        self.assertEqual(self.successResultOf(h.relay.loaded), 1)
        h.run_due()
        work.pop(0)()  # read the message
        self.assertEqual(len(h.sent), 1)
        h.clock.advance(3600)
        self.assertEqual(len(h.sent), 1)

    def test_failed_attempt_retried(self) -> None:
        """
        When the state cannot be written, the attempt is logged, the state
        on disk stays as it was, and the message is tried again later.
        """
        h = Harness(self).start()
        h.enqueue(["bob@remote.test"])
        h.queue.update = lambda entry: defer.fail(OSError(28, "No space left on device"))  # type: ignore[method-assign]
        h.run_due()
        h.sent.pop().answer(bob=(451, "4.3.0 later"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        [entry] = h.entries()
        self.assertEqual(entry.recipients[0].attempts, 0)
        self.assertEqual(h.stats["errors"], 1)
        h.clock.advance(60)
        self.assertEqual(len(h.sent), 1)


class FakeDNS:
    """A DNS client answering from a table; exceptions are raised."""

    def __init__(self, table: dict[tuple[str, str], Any]) -> None:
        self.table = table

    def resolve(self, name: str, rdtype: str) -> defer.Deferred[list[Record]]:
        answer = self.table.get((name, rdtype), [])
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)


def mx(preference: int, exchange: str) -> Record:
    import dns.rdata

    rdata = dns.rdata.from_text("IN", "MX", f"{preference} {exchange}")
    return Record("d.test.", "MX", 300, rdata.to_text(), rdata)


def a(address: str, rdtype: str = "A") -> Record:
    return Record("x.", rdtype, 300, address, None)


class MXResolverTests(SynchronousTestCase):
    """MX lookup per RFC 5321 §5.1 and RFC 7505."""

    def hosts(self, table: dict[tuple[str, str], Any], domain: str = "d.test") -> Any:
        return defer.Deferred.fromCoroutine(MXResolver(FakeDNS(table), 2525).hosts(domain))

    def test_preference_order(self) -> None:
        """Exchanges in preference order, each with its addresses."""
        table = {
            ("d.test", "MX"): [mx(20, "b.d.test."), mx(10, "a.d.test.")],
            ("a.d.test", "A"): [a("192.0.2.1")],
            ("a.d.test", "AAAA"): [a("2001:db8::1", "AAAA")],
            ("b.d.test", "A"): [a("192.0.2.2")],
        }
        self.assertEqual(self.successResultOf(self.hosts(table)),
                         [("192.0.2.1", 2525), ("2001:db8::1", 2525), ("192.0.2.2", 2525)])

    def test_implicit_mx(self) -> None:
        """No MX: the domain's own address is the mail host."""
        table = {("d.test", "A"): [a("192.0.2.3")]}
        self.assertEqual(self.successResultOf(self.hosts(table)), [("192.0.2.3", 2525)])

    def test_null_mx(self) -> None:
        """A null MX is a permanent failure with 556 5.1.10."""
        failure = self.failureResultOf(self.hosts({("d.test", "MX"): [mx(0, ".")]}), RouteError)
        self.assertTrue(failure.value.permanent)
        self.assertEqual((failure.value.code, failure.value.text[:6]), (556, "5.1.10"))

    def test_nxdomain(self) -> None:
        """A domain that does not exist is a permanent failure."""
        failure = self.failureResultOf(self.hosts({("d.test", "MX"): NXDomain("d.test", "MX")}), RouteError)
        self.assertTrue(failure.value.permanent)

    def test_timeout(self) -> None:
        """No DNS answer is temporary; so is an MX without addresses."""
        failure = self.failureResultOf(self.hosts({("d.test", "MX"): DNSTimeout("d.test", "MX")}), RouteError)
        self.assertFalse(failure.value.permanent)
        failure = self.failureResultOf(self.hosts({("d.test", "MX"): [mx(10, "gone.d.test.")]}), RouteError)
        self.assertFalse(failure.value.permanent)

    def test_address_literal(self) -> None:
        """C{user@[192.0.2.4]} goes to that address without DNS."""
        self.assertEqual(self.successResultOf(self.hosts({}, "[192.0.2.4]")), [("192.0.2.4", 2525)])
        self.assertEqual(self.successResultOf(self.hosts({}, "[IPv6:2001:db8::4]")), [("2001:db8::4", 2525)])


class SettingsTests(SynchronousTestCase):
    """Small pieces: config, assembly, local delivery, resolv.conf, DSN status codes."""

    def test_from_config(self) -> None:
        """The [smtp] keys become settings; a smarthost without port means 25."""
        from appnet.config import load_config

        config = load_config(
            data_dir=self.mktemp(),
            overrides={
                "": {"hostname": "mx.example.org"},
                "smtp": {"smarthost": "relay.example.net", "resolvers": ["192.0.2.53:5353"], "retry_intervals": [5, 10]},
            },
        )
        settings = RelaySettings.from_config(config)
        self.assertEqual(settings.hostname, "mx.example.org")
        self.assertEqual(settings.smarthost, ("relay.example.net", 25))
        self.assertEqual(settings.resolvers, (("192.0.2.53", 5353),))
        self.assertEqual(settings.retry_intervals, (5, 10))
        self.assertEqual((settings.relay_port, settings.relay_tls, settings.queue_lifetime), (25, "opportunistic", 432000))

    def test_build_relay(self) -> None:
        """build_relay makes the queue under the data dir and a named relay service."""
        from twisted.application.service import MultiService

        from appnet.config import load_config
        from appnet.service import AppnetContext
        from appnet.smtp.relay import build_relay

        data_dir = self.mktemp()
        context = AppnetContext(load_config(data_dir=data_dir), reactor=task.Clock())
        parent = MultiService()
        queue = build_relay(context, parent, lambda domain: domain == "localhost")
        self.assertEqual(queue.directory, os.path.abspath(os.path.join(data_dir, "queue")))
        self.assertIs(parent.getServiceNamed("smtp-relay").queue, queue)

    def test_local_delivery(self) -> None:
        """Local delivery goes to the lower-cased local part, with a Return-Path."""
        delivered: list[tuple[str, bytes]] = []

        class Store:
            def deliver(self, user: str, message: bytes) -> defer.Deferred[None]:
                delivered.append((user, message))
                return defer.succeed(None)

        self.successResultOf(local_delivery(Store())("", "Alice@localhost", b"Subject: x\r\n\r\n"))
        self.assertEqual(delivered, [("alice", b"Return-Path: <>\r\nSubject: x\r\n\r\n")])

    def test_retry_after(self) -> None:
        """The n-th failure waits the n-th interval; the last repeats."""
        settings = RelaySettings("h", retry_intervals=(60, 300))
        self.assertEqual([settings.retry_after(n) for n in (1, 2, 3, 9)], [60, 300, 300, 300])

    def test_resolv_conf(self) -> None:
        """C{nameserver} lines are read; a missing file means 127.0.0.1."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n")
        self.assertEqual(system_nameservers(path), [("192.0.2.53", 53), ("fe80::1", 53)])
        self.assertEqual(system_nameservers(path + ".missing"), [("127.0.0.1", 53)])

    def test_status_of(self) -> None:
        """The enhanced code given is kept; otherwise one fits the failure."""
        self.assertEqual(dsn.status_of(550, "5.1.1 unknown"), "5.1.1")
        self.assertEqual(dsn.status_of(550, "unknown"), "5.0.0")
        self.assertEqual(dsn.status_of(None, "refused", expired=True), "4.4.7")
        self.assertEqual(dsn.status_of(451, "4.3.0 later", expired=True), "4.3.0")

    def test_headers_only_bounded(self) -> None:
        """A message with no body returns at most MAX_HEADERS octets of it."""
        raw = dsn.build_dsn(
            hostname="h.test",
            sender="a@b.test",
            arrival=0,
            failures=[dsn.FailedRecipient("c@d.test", 550, "5.1.1 unknown")],
            original=b"Subject: x\r\n" + b"X-Long: y\r\n" * 100_000,
            now=0,
        )
        headers = list(parse(raw).iter_parts())[2].get_content().replace("\r\n", "\n")
        self.assertTrue(headers.startswith("Subject: x\nX-Long: y\n"))
        self.assertLessEqual(len(headers), dsn.MAX_HEADERS + 1)

    def test_utf8_headers(self) -> None:
        """Non-ASCII original headers are returned quoted-printable, the DSN stays 7-bit."""
        raw = dsn.build_dsn(
            hostname="h.test",
            sender="a@b.test",
            arrival=0,
            failures=[dsn.FailedRecipient("c@d.test", None, "connection refused", expired=True)],
            original="Subject: Grüße\n\nbody\n".encode(),
            now=0,
        )
        self.assertTrue(raw.isascii())
        report = parse(raw)
        headers = list(report.iter_parts())[2]
        self.assertEqual(headers["Content-Transfer-Encoding"], "quoted-printable")
        self.assertIn("Subject: Grüße", headers.get_content())
        [rcpt] = status_blocks(report)[1:]
        self.assertEqual(rcpt["Diagnostic-Code"], "X-appnet; connection refused")
