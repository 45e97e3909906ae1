"""
The relay worker: delivers what L{appnet.smtp.queue} holds.

For each queued message the worker groups the recipients that are due by
domain. Local domains go straight to the mailbox store (that is how bounces
to our own users arrive); the others go to the smarthost when one is set,
else to the domain's MX hosts in preference order (RFC 5321 §5.1: the
domain's own address when it has no MX; a null MX, RFC 7505, refuses all
mail), looked up with L{appnet.dns.client}. Each recipient then stands:

    - 2xx: delivered;
    - 5xx, or no such domain: failed now;
    - 4xx or no answer (connection refused, timeout, DNS trouble): tried
      again after the next of C{smtp.retry_intervals} (the last repeats;
      RFC 5321 §4.5.4.1), and failed once the message is older than
      C{smtp.queue_lifetime}.

Failed recipients of a message with a sender get one RFC 3464 DSN
(L{appnet.smtp.dsn}) per attempt, queued like any message from the null
sender, which is never bounced (RFC 5321 §4.5.5). The state is written
after every attempt (see L{appnet.smtp.queue} for what a crash can and
cannot do); a restart loads the queue and carries on where the files say.

At most C{concurrency} SMTP deliveries run at once; the worker sleeps on
one timer per message between attempts and wakes when a message is queued.
Only the holder of the queue's worker lock delivers; a relay in another
process sharing the directory stands by until the lock is free, and the
holder finds that process's messages by rescanning the directory.
"""

from __future__ import annotations

import copy
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from appnet.dns.client import DNSClient, DNSError, NXDomain, parse_server
from appnet.errors import AppnetError, NoSuchUser, QuotaExceeded
from appnet.smtp import dsn
from appnet.smtp.client import deliver_to_hosts
from appnet.smtp.queue import (
    DELIVERED,
    FAILED,
    PENDING,
    OutboundQueue,
    QueueEntry,
    RecipientState,
    WorkerLock,
)

__all__ = [
    "MXResolver",
    "RelayService",
    "RelaySettings",
    "RouteError",
    "build_relay",
    "local_delivery",
    "system_nameservers",
]

_log = Logger()

Hosts = list[tuple[str, int]]

#: smtp.relay_tls -> the client's C{tls} argument
_CLIENT_TLS = {"opportunistic": "opportunistic", "required": "starttls", "none": "none"}


class RouteError(AppnetError):
    """
    No host to deliver to.

    @ivar permanent: retrying cannot help (no such domain, null MX)
    @ivar code: an SMTP reply code to report, or L{None}
    @ivar text: what went wrong, starting with an enhanced status code
    """

    def __init__(self, text: str, *, permanent: bool, code: int | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.permanent = permanent
        self.code = code


@dataclass(frozen=True)
class RelaySettings:
    """
    The relay's part of the configuration.

    @ivar hostname: our name: HELO, DSN Reporting-MTA and From
    @ivar smarthost: C{(host, port)} to send everything remote to, or
        L{None} for MX delivery
    @ivar relay_port: the port of MX hosts (25 but in tests)
    @ivar relay_tls: C{"opportunistic"}, C{"required"} or C{"none"}
    @ivar queue_lifetime: seconds before a temporary failure is final
    @ivar retry_intervals: seconds between attempts; the last repeats
    @ivar resolvers: DNS servers, C{(host, port)}; empty: resolv.conf's
    @ivar concurrency: SMTP deliveries at once
    @ivar rescan_interval: seconds between scans of the queue directory
        for messages queued by other processes (and, on a standby, between
        tries to take over)
    """

    hostname: str
    smarthost: tuple[str, int] | None = None
    relay_port: int = 25
    relay_tls: str = "opportunistic"
    queue_lifetime: float = 432000
    retry_intervals: tuple[float, ...] = (60, 300, 900, 1800, 3600)
    resolvers: tuple[tuple[str, int], ...] = ()
    concurrency: int = 10
    rescan_interval: float = 60

    @classmethod
    def from_config(cls, config: Any) -> RelaySettings:
        """The settings from a checked L{appnet.config.Config}'s C{[smtp]}."""
        smtp = config["smtp"]
        smarthost = smtp["smarthost"]
        return cls(
            hostname=config.hostname,
            smarthost=parse_server(smarthost, 25) if smarthost else None,
            relay_port=smtp["relay_port"],
            relay_tls=smtp["relay_tls"],
            queue_lifetime=smtp["queue_lifetime"],
            retry_intervals=tuple(smtp["retry_intervals"]),
            resolvers=tuple(parse_server(s) for s in smtp["resolvers"]),
        )

    def retry_after(self, attempts: int) -> float:
        """Seconds to wait after the C{attempts}-th failed attempt."""
        return self.retry_intervals[min(attempts, len(self.retry_intervals)) - 1]


def system_nameservers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The C{nameserver} lines of resolv.conf (C{127.0.0.1:53} if none)."""
    servers = []
    try:
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    servers.append((fields[1].split("%")[0], 53))
    except OSError:
        pass
    return servers or [("127.0.0.1", 53)]


class MXResolver:
    """
    Where to deliver mail for a domain (RFC 5321 §5.1), as addresses.

    The exchange names are resolved here too, through the same DNS client,
    so a test's or a site's own DNS answers for them as well.
    """

    def __init__(self, client: Any, port: int) -> None:
        """
        @param client: an L{appnet.dns.client.DNSClient}
        @param port: the SMTP port of every MX host
        """
        self.client = client
        self.port = port

    async def hosts(self, domain: str) -> Hosts:
        """
        The addresses to try for C{domain}, best first.

        @raise RouteError: a null MX or no such domain (permanent), or no
            usable answer (temporary)
        """
        if domain.startswith("[") and domain.endswith("]"):
            literal = domain[1:-1]
            return [(literal[5:] if literal.lower().startswith("ipv6:") else literal, self.port)]
        try:
            records = [r for r in await self.client.resolve(domain, "MX") if r.type == "MX"]
        except NXDomain:
            raise RouteError(f"5.1.2 domain {domain} does not exist", permanent=True) from None
        except DNSError as e:
            raise RouteError(f"4.4.3 MX lookup for {domain} failed: {e}", permanent=False) from None
        if any(str(r.rdata.exchange) == "." for r in records):
            raise RouteError(f"5.1.10 {domain} accepts no mail (null MX)", permanent=True, code=556)
        if not records:
            exchanges = [domain]  # the implicit MX
        else:
            random.shuffle(records)  # equal preferences in random order
            records.sort(key=lambda r: r.rdata.preference)
            exchanges = [str(r.rdata.exchange).rstrip(".") for r in records]
        hosts: Hosts = []
        for name in exchanges:
            for rdtype in ("A", "AAAA"):
                try:
                    answer = await self.client.resolve(name, rdtype)
                except DNSError:
                    continue
                hosts += [(r.data, self.port) for r in answer if r.type == rdtype]
        if not hosts:
            raise RouteError(f"4.4.4 no address for the mail hosts of {domain}", permanent=False)
        return hosts


def local_delivery(store: Any) -> Callable[[str, str, bytes], defer.Deferred[Any]]:
    """
    C{deliver(sender, recipient, message)} into C{store}'s mailbox of the
    recipient's local part, with a C{Return-Path:} (RFC 5321 §4.4).
    """

    def deliver(sender: str, recipient: str, message: bytes) -> defer.Deferred[Any]:
        user = recipient.rpartition("@")[0].lower()  # as the server's RCPT check
        return store.deliver(user, b"Return-Path: <" + sender.encode("utf-8") + b">\r\n" + message)

    return deliver


@dataclass(frozen=True)
class _Outcome:
    state: str  # DELIVERED, FAILED or PENDING (try again)
    code: int | None
    text: str


#: Failures of a delivery that are the network's doing, not a bug of ours.
_EXPECTED = (error.ConnectError, error.ConnectionLost, error.TimeoutError, defer.CancelledError, DNSError)


def _outcome_of_failure(reason: Failure, queue_id: str) -> _Outcome:
    value = reason.value
    permanent = getattr(value, "permanent", None)
    if permanent is not None:  # RouteError, the client's SMTPClientError
        return _Outcome(FAILED if permanent else PENDING, getattr(value, "code", None), str(getattr(value, "text", value)))
    if not reason.check(*_EXPECTED):
        _log.failure("relay {queue_id}: unexpected error; will retry", reason, queue_id=queue_id)
    return _Outcome(PENDING, None, str(value) or type(value).__name__)


class RelayService(service.Service):
    """
    Runs the relay worker over an L{OutboundQueue} while running.

    @ivar queue: the queue
    @ivar settings: the L{RelaySettings}
    """

    def __init__(
        self,
        queue: OutboundQueue,
        settings: RelaySettings,
        *,
        send: Callable[..., defer.Deferred[Any]],
        resolve_mx: Callable[[str], Any],
        deliver_local: Callable[[str, str, bytes], defer.Deferred[Any]],
        is_local_domain: Callable[[str], bool],
        clock: Any,
        stats: Any = None,
    ) -> None:
        """
        @param send: C{send(hosts, sender, recipients, message, tls=, helo=)}
            returning a Deferred of a result with C{accepted} and C{refused}
            (recipient -> (code, text)), as
            L{appnet.smtp.client.deliver_to_hosts}; it fails with an error
            having C{code}, C{text} and C{permanent} for a session failure
        @param resolve_mx: C{domain -> awaitable list of (host, port)},
            raising L{RouteError}; see L{MXResolver.hosts}
        @param deliver_local: C{(sender, recipient, message) -> Deferred},
            see L{local_delivery}
        @param is_local_domain: whether a domain is ours
        @param clock: C{callLater} and C{seconds}, the reactor in production
        @param stats: an L{appnet.stats.ServiceStats} to count into
        """
        self.queue = queue
        self.settings = settings
        self._send = send
        self._resolve_mx = resolve_mx
        self._deliver_local = deliver_local
        self._is_local_domain = is_local_domain
        self._clock = clock
        self._stats = stats
        self._slots = defer.DeferredSemaphore(settings.concurrency)
        self._entries: dict[str, QueueEntry] = {}
        self._timers: dict[str, Any] = {}
        self._attempts: dict[str, defer.Deferred[None]] = {}
        self._sending: set[defer.Deferred[Any]] = set()
        self._poll: task.LoopingCall | None = None
        self._lock: WorkerLock | None = None
        self._standby = False
        #: fires with the number of queued messages once this worker holds
        #: the queue and has loaded it
        self.loaded: defer.Deferred[int] = defer.Deferred()

    def startService(self) -> None:
        """
        Take the queue's worker lock (or wait for it, as a standby), load
        the queue and schedule every message in it; rescan it every
        C{rescan_interval} for messages other processes queued.
        """
        super().startService()
        self._poll = task.LoopingCall(self._tick)
        self._poll.clock = self._clock
        running = self._poll.start(self.settings.rescan_interval, now=True)
        running.addErrback(lambda reason: _log.failure("relay: stopped working {queue}", reason, queue=self.queue))

    def stopService(self) -> defer.Deferred[Any]:
        """Stop: no new attempts; running ones are interrupted and recorded."""
        super().stopService()
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if self._lock is not None:
            self.queue.unwatch(self._enqueued)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for sending in list(self._sending):
            sending.cancel()
        self._entries.clear()
        self.loaded = defer.Deferred()

        def release(result: Any) -> Any:
            # Only once the interrupted attempts have recorded their state.
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            return result

        return defer.DeferredList(list(self._attempts.values())).addBoth(release)

    def _tick(self) -> defer.Deferred[None] | None:
        if self._lock is None:
            self._lock = self.queue.try_worker_lock()
            if self._lock is None:
                if not self._standby:
                    _log.info("relay: another process works {queue}; standing by", queue=self.queue)
                    self._standby = True
                return None
            self._standby = False
            self.queue.watch(self._enqueued)

        def schedule(entries: list[QueueEntry]) -> None:
            if not self.running:
                return  # stopped while the scan ran
            for entry in entries:
                if entry.id not in self._entries:
                    self._enqueued(entry)
            if not self.loaded.called:
                _log.info("relay: {count} messages in the queue", count=len(self._entries))
                self.loaded.callback(len(self._entries))

        def failed(reason: Failure) -> None:
            _log.failure("relay: cannot read the queue {queue}", reason, queue=self.queue)
            self._count("errors")

        return self.queue.load(known=self._entries.keys()).addCallbacks(schedule, failed)

    def pending(self) -> list[QueueEntry]:
        """The messages the worker holds (for tests and the console)."""
        return list(self._entries.values())

    def _count(self, counter: str) -> None:
        if self._stats is not None:
            self._stats.incr(counter)

    def _enqueued(self, entry: QueueEntry) -> None:
        self._entries[entry.id] = entry
        self._schedule(entry)

    def _schedule(self, entry: QueueEntry) -> None:
        due = entry.next_attempt()
        if due is None or not self.running:
            return
        old = self._timers.pop(entry.id, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, due - self._clock.seconds())
        self._timers[entry.id] = self._clock.callLater(delay, self._wake, entry.id)

    def _wake(self, queue_id: str) -> None:
        self._timers.pop(queue_id, None)
        entry = self._entries.get(queue_id)
        if entry is None or queue_id in self._attempts:
            return  # gone, or being tried: that attempt reschedules it
        attempt = defer.Deferred.fromCoroutine(self._attempt(entry))

        def failed(reason: Failure) -> None:
            _log.failure("relay {queue_id}: attempt failed", reason, queue_id=queue_id)
            self._count("errors")
            # The state on disk is unchanged: try the whole attempt again later.
            for r in entry.pending():
                r.next_attempt = self._clock.seconds() + self.settings.retry_intervals[0]

        def done(_: Any) -> None:
            del self._attempts[queue_id]
            if queue_id in self._entries:
                self._schedule(self._entries[queue_id])

        self._attempts[queue_id] = attempt
        attempt.addErrback(failed).addBoth(done)

    async def _attempt(self, entry: QueueEntry) -> None:
        now = self._clock.seconds()
        due = [r for r in entry.pending() if r.next_attempt <= now]
        if not due:
            return
        try:
            message = await self.queue.read_message(entry.id)
        except FileNotFoundError:
            # Finished while a rescan was reading it: a stale copy.
            self._entries.pop(entry.id, None)
            return
        groups: dict[tuple[str, str], list[RecipientState]] = {}
        for r in due:
            domain = r.address.rpartition("@")[2].lower()
            if self._is_local_domain(domain):
                route = "local"
            elif self.settings.smarthost is not None:
                route, domain = "smarthost", "{}:{}".format(*self.settings.smarthost)
            else:
                route = "mx"
            groups.setdefault((route, domain), []).append(r)
        results = await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(self._deliver_group(entry, route, domain, rcpts, message))
                for (route, domain), rcpts in groups.items()
            ],
            consumeErrors=True,
        )
        outcomes = {address: outcome for result in results for address, outcome in result.items()}
        await self._record(entry, due, outcomes, message)

    async def _deliver_group(
        self, entry: QueueEntry, route: str, domain: str, rcpts: list[RecipientState], message: bytes
    ) -> dict[str, _Outcome]:
        addresses = [r.address for r in rcpts]
        hosts: Hosts = []
        if route == "local":
            outcomes = await self._deliver_locally(entry.id, entry.sender, addresses, message)
        else:
            try:
                if route == "smarthost":
                    hosts = [self.settings.smarthost]  # type: ignore[list-item]
                else:
                    hosts = await self._resolve_mx(domain)
                outcomes = await self._slots.run(
                    lambda: defer.Deferred.fromCoroutine(self._send_to(hosts, entry.sender, addresses, message))
                )
            except Exception:  # noqa: BLE001 - every failure is an outcome; unexpected ones are logged
                failure = _outcome_of_failure(Failure(), entry.id)
                outcomes = {a: failure for a in addresses}
        self._count("attempts")
        _log.info(
            "relay {queue_id} {route} {domain} via {hosts}: {summary}",
            queue_id=entry.id,
            route=route,
            domain=domain,
            hosts=",".join(f"{h}:{p}" for h, p in hosts) or "-",
            summary="; ".join(f"<{a}> {o.state} {o.code or '-'} {o.text}" for a, o in outcomes.items()),
            outcomes={a: (o.state, o.code, o.text) for a, o in outcomes.items()},
        )
        return outcomes

    async def _send_to(self, hosts: Hosts, sender: str, addresses: list[str], message: bytes) -> dict[str, _Outcome]:
        if not self.running:  # stopped while waiting for a slot
            raise defer.CancelledError("relay stopped")
        sending = self._send(
            hosts,
            sender,
            addresses,
            message,
            tls=_CLIENT_TLS[self.settings.relay_tls],
            # An MX's certificate cannot be checked without DANE or
            # MTA-STS; a configured smarthost's name can.
            verify=self.settings.smarthost is not None and self.settings.relay_tls == "required",
            helo=self.settings.hostname,
        )
        self._sending.add(sending)
        try:
            result = await sending
        finally:
            self._sending.discard(sending)
        outcomes = {}
        for address in addresses:
            if address in result.accepted:
                code, text = result.accepted[address]
                outcomes[address] = _Outcome(DELIVERED, code, text)
            elif address in result.refused:
                code, text = result.refused[address]
                outcomes[address] = _Outcome(FAILED if code >= 500 else PENDING, code, text)
            else:
                outcomes[address] = _Outcome(PENDING, None, "no reply for this recipient")
        return outcomes

    async def _deliver_locally(
        self, queue_id: str, sender: str, addresses: list[str], message: bytes
    ) -> dict[str, _Outcome]:
        outcomes = {}
        for address in addresses:
            try:
                await self._deliver_local(sender, address, message)
            except NoSuchUser:
                outcomes[address] = _Outcome(FAILED, 550, "5.1.1 no such user here")
            except QuotaExceeded:
                outcomes[address] = _Outcome(PENDING, 452, "4.2.2 mailbox full")
            except Exception:  # noqa: BLE001 - retried like any temporary failure, and logged
                _log.failure("relay {queue_id}: local delivery to {address} failed", queue_id=queue_id, address=address)
                outcomes[address] = _Outcome(PENDING, 451, "4.3.0 local delivery failed")
            else:
                outcomes[address] = _Outcome(DELIVERED, 250, "2.0.0 delivered to mailbox")
        return outcomes

    async def _record(
        self, entry: QueueEntry, tried: list[RecipientState], outcomes: dict[str, _Outcome], message: bytes
    ) -> None:
        # Work on a copy: if the bounce or the write fails, the worker keeps
        # the state that is on disk and tries the whole attempt again.
        now = self._clock.seconds()
        expires = entry.arrival + self.settings.queue_lifetime
        updated = copy.deepcopy(entry)
        tried_now = {r.address for r in tried}
        failures: list[dsn.FailedRecipient] = []
        for r in updated.recipients:
            if r.address not in tried_now:
                continue
            outcome = outcomes[r.address]
            r.attempts += 1
            r.code, r.error = outcome.code, outcome.text
            expired = outcome.state == PENDING and now >= expires
            if outcome.state == FAILED or expired:
                failures.append(dsn.FailedRecipient(r.address, outcome.code, outcome.text, expired=expired))
            if expired:
                r.state = FAILED
                self._count("expired")
            else:
                r.state = outcome.state
                r.next_attempt = min(now + self.settings.retry_after(r.attempts), expires)
            self._count({DELIVERED: "delivered", FAILED: "failed", PENDING: "deferred"}[r.state])
        if failures:
            await self._bounce(updated, failures, message, now)
        if updated.pending():
            await self.queue.update(updated)
            if entry.id in self._entries:
                self._entries[entry.id] = updated
        else:
            await self.queue.remove(entry.id)
            self._entries.pop(entry.id, None)

    async def _bounce(self, entry: QueueEntry, failures: list[dsn.FailedRecipient], message: bytes, now: float) -> None:
        if not entry.sender:
            # RFC 5321 §4.5.5: a bounce (null sender) is never bounced.
            _log.warn(
                "relay {queue_id}: dropped a bounce undeliverable to {recipients}",
                queue_id=entry.id,
                recipients=", ".join(f.recipient for f in failures),
            )
            self._count("bounces_dropped")
            return
        report = dsn.build_dsn(
            hostname=self.settings.hostname,
            sender=entry.sender,
            arrival=entry.arrival,
            failures=failures,
            original=message,
            now=now,
        )
        # Queued before the failures are written: a crash in between
        # bounces twice rather than never.
        bounce_id = await self.queue.enqueue("", [entry.sender], report)
        self._count("bounces")
        _log.info("relay {queue_id}: bounced to <{sender}> as {bounce_id}", queue_id=entry.id, sender=entry.sender, bounce_id=bounce_id)


def build_relay(context: Any, parent: service.MultiService, is_local_domain: Callable[[str], bool]) -> OutboundQueue:
    """
    Create the outbound queue at C{<data_dir>/queue} and add the
    L{RelayService} (named C{smtp-relay}) working it to C{parent}.

    @param context: the L{appnet.service.AppnetContext}
    @param is_local_domain: whether a (lower-case) domain is ours
    @return: the queue, to L{OutboundQueue.enqueue} into
    """
    settings = RelaySettings.from_config(context.config)
    queue = OutboundQueue(context.config.path("queue"), now=context.reactor.seconds)
    dns_client = DNSClient(list(settings.resolvers) or system_nameservers(), reactor=context.reactor)
    relay = RelayService(
        queue,
        settings,
        send=functools.partial(deliver_to_hosts, reactor=context.reactor),
        resolve_mx=MXResolver(dns_client, settings.relay_port).hosts,
        deliver_local=local_delivery(context.mailbox_store),
        is_local_domain=is_local_domain,
        clock=context.reactor,
        stats=context.stats.service("smtp-relay"),
    )
    relay.setName("smtp-relay")
    relay.setServiceParent(parent)
    return queue
