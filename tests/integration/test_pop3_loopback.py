"""
Integration tests for POP3 on loopback: appnet's client (L{fetch_mail})
against appnet's server (L{start_mail_server}) over real sockets, with STLS,
implicit TLS and plaintext, UIDL-based fetching, deletion at QUIT, refused
logins and the exclusive maildrop lock.

L{RawPOP3} and L{connect_raw} are also used by the interop tests to speak
POP3 line by line over a real socket.
"""

from __future__ import annotations

import collections
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, endpoints, error, protocol, task
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from appnet.testing import start_mail_server

USERS = {"alice": "wonderland", "bob": "builder"}

#: Lines starting with a dot, a line that is only a dot (the terminator if
#: not stuffed), and a header-body split: POP3 framing has to get all right.
DOTTED = (
    b"From: carol@example.org\n"
    b"To: alice@localhost\n"
    b"Subject: dots\n"
    b"\n"
    b"Hello Alice\n"
    b".a line starting with a dot\n"
    b"..two dots\n"
    b".\n"
    b"the end\n"
)

#: 8-bit bytes (not valid UTF-8 either) and a line of 990 octets (RFC 5322
#: allows 998; poplib refuses lines over 2048).
EIGHT_BIT = (
    b"From: dave@example.org\n"
    b"Subject: bytes\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: 8bit\n"
    b"\n"
    b"Gr\xc3\xbc\xc3\x9fe \xff\xfe\x80 raw bytes\n" + b"x" * 990 + b"\n"
)

PLAIN = b"From: erin@example.org\nSubject: three\n\nJust text.\n"


def lf(data: bytes) -> bytes:
    """Normalise line ends to LF, to compare a message across CRLF framing."""
    return data.replace(b"\r\n", b"\n")


def crlf(message: bytes) -> bytes:
    """A stored (LF) message as it travels: every line ending CRLF."""
    return lf(message).replace(b"\n", b"\r\n")


def large_message(size: int = 600 * 1024) -> bytes:
    """
    A message larger than the server's one-write limit (so it streams), full
    of lines that start with a dot so dot-stuffing meets chunk boundaries.
    """
    head = b"From: big@example.org\nSubject: large\n\n"
    lines = []
    n = 0
    total = len(head)
    while total < size:
        line = b".%06d %s\n" % (n, b"." * (n % 97))
        lines.append(line)
        total += len(line)
        n += 1
    return head + b"".join(lines)


def pop3_client() -> Any:
    """
    L{appnet.pop3.client}, imported by the tests that use it: if the client
    cannot be imported, those tests fail with the import error while the
    helpers here (shared with other test modules) still load.
    """
    from appnet.pop3 import client

    return client


def the_reactor() -> Any:
    """The global reactor (imported on use, never at module import)."""
    from twisted.internet import reactor

    return reactor


class RawPOP3(protocol.Protocol):
    """
    A line-at-a-time POP3 peer for tests: send anything, read replies.

    Every read fails with C{defer.TimeoutError} after C{timeout} seconds, or
    with the connection-lost reason if the server hangs up first.
    """

    timeout = 10.0

    def __init__(self) -> None:
        self._buffer = b""
        self._lines: collections.deque[bytes] = collections.deque()
        self._waiting: collections.deque[defer.Deferred] = collections.deque()
        self._lost: Failure | None = None
        self.closed: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            if self._waiting:
                self._waiting.popleft().callback(line)
            else:
                self._lines.append(line)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = reason
        while self._waiting:
            self._waiting.popleft().errback(reason)
        self.closed.callback(None)

    def send(self, data: bytes) -> None:
        """Write raw bytes."""
        self.transport.write(data)

    def read_line(self) -> defer.Deferred:
        """The next CRLF-terminated line (without the CRLF)."""
        if self._lines:
            return defer.succeed(self._lines.popleft())
        if self._lost is not None:
            return defer.fail(self._lost)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)

        def forget(f: Failure) -> Failure:
            if d in self._waiting:
                self._waiting.remove(d)
            return f

        d.addTimeout(self.timeout, the_reactor())
        d.addErrback(forget)
        return d

    async def command(self, line: bytes) -> bytes:
        """Send one command line, return the first line of the reply."""
        self.send(line + b"\r\n")
        return await self.read_line()

    async def read_multiline(self) -> list[bytes]:
        """The lines of a multi-line body up to (not including) the C{.}."""
        lines = []
        while True:
            line = await self.read_line()
            if line == b".":
                return lines
            lines.append(line[1:] if line.startswith(b".") else line)

    async def login(self, user: str, password: str) -> bytes:
        """USER then PASS; returns the PASS reply."""
        reply = await self.command(b"USER " + user.encode())
        if not reply.startswith(b"+OK"):
            return reply
        return await self.command(b"PASS " + password.encode())

    async def close(self) -> None:
        """Drop the connection (no QUIT) and wait until it is gone."""
        if self._lost is None:
            self.transport.abortConnection()
        await self.closed


async def connect_raw(
    testcase: TestCase, host: str, port: int, tls_options: Any = None
) -> tuple[RawPOP3, bytes]:
    """
    Connect a L{RawPOP3} (through TLS if C{tls_options}) and read the
    greeting; the connection is dropped at the test's cleanup.

    @return: C{(client, greeting line)}
    """
    endpoint: Any = endpoints.TCP4ClientEndpoint(the_reactor(), host, port, timeout=10)
    if tls_options is not None:
        endpoint = endpoints.wrapClientTLS(tls_options, endpoint)
    client = await endpoints.connectProtocol(endpoint, RawPOP3())
    testcase.addCleanup(client.close)
    greeting = await client.read_line()
    return client, greeting


async def poll_until(check: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """
    Call C{check()} (it may return a Deferred or coroutine) until it returns
    something true; fail with C{defer.TimeoutError} after C{timeout}.
    """
    reactor = the_reactor()
    deadline = reactor.seconds() + timeout
    while True:
        result = await defer.maybeDeferred(check)
        if result:
            return result
        if reactor.seconds() > deadline:
            raise defer.TimeoutError(f"condition not met within {timeout}s: {check!r}")
        await task.deferLater(reactor, interval, lambda: None)


class TranscriptCapture:
    """Collects the server's transcript lines logged while a test runs."""

    def __init__(self, testcase: TestCase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        testcase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict) -> None:
        if str(event.get("log_namespace", "")).startswith("appnet.pop3.transcript"):
            self.lines.append(str(event.get("line", "")))


class FetchMailTLSTests(TestCase):
    """L{fetch_mail} against appnet's server over each kind of transport."""

    timeout = 60

    async def setUp(self) -> None:
        self.capture = TranscriptCapture(self)
        self.server = await start_mail_server(self, users=USERS, trace=True)
        for message in (DOTTED, EIGHT_BIT, PLAIN):
            await self.server.deliver("alice", message)

    def assertFetchedAll(self, result: Any) -> None:
        self.assertEqual(result.total, 3)
        self.assertEqual([lf(m.data) for m in result.messages], [DOTTED, EIGHT_BIT, PLAIN])
        self.assertEqual([m.number for m in result.messages], [1, 2, 3])
        self.assertEqual(len({m.uid for m in result.messages}), 3)
        for m in result.messages:
            self.assertEqual(m.size, len(m.data), "LIST size is the CRLF size of the message")
        self.assertEqual(result.messages[0].message["Subject"], "dots")
        self.assertEqual(result.deleted, [])

    async def test_starttls(self) -> None:
        """
        fetch_mail with STLS, trusting the server's self-signed certificate,
        retrieves every message byte for byte; the server's transcript shows
        TLS started before the login; nothing is deleted.
        """
        result = await pop3_client().fetch_mail(
            self.server.host,
            self.server.pop3_port,
            "alice",
            USERS["alice"],
            tls="starttls",
            cafile=self.server.cert_path,
        )
        self.assertFetchedAll(result)
        tls_at = [i for i, line in enumerate(self.capture.lines) if "TLS started" in line]
        user_at = [i for i, line in enumerate(self.capture.lines) if line.startswith("C: USER")]
        self.assertTrue(tls_at and user_at, self.capture.lines)
        self.assertLess(tls_at[0], user_at[0])
        self.assertEqual(len(self.server.raw_received("alice")), 3)

    async def test_implicit_tls(self) -> None:
        """fetch_mail over implicit TLS (the pop3s port) retrieves every message intact."""
        result = await pop3_client().fetch_mail(
            self.server.host,
            self.server.pop3s_port,
            "alice",
            USERS["alice"],
            tls="implicit",
            cafile=self.server.cert_path,
        )
        self.assertFetchedAll(result)

    async def test_plaintext(self) -> None:
        """fetch_mail without TLS (allowed from loopback) retrieves every message intact."""
        result = await pop3_client().fetch_mail(
            self.server.host, self.server.pop3_port, "alice", USERS["alice"], tls="none"
        )
        self.assertFetchedAll(result)
        self.assertFalse(any("TLS started" in line for line in self.capture.lines))

    async def test_untrusted_certificate_refused(self) -> None:
        """
        With verification on and the self-signed certificate not trusted,
        STLS fails and fetch_mail never logs in: the certificate check is real.
        """
        client = pop3_client()
        with self.assertRaises(SSL.Error) as caught:
            await client.fetch_mail(
                self.server.host,
                self.server.pop3_port,
                "alice",
                USERS["alice"],
                tls="starttls",
                timeout=10,
            )
        self.assertIn("certificate verify failed", str(caught.exception))
        self.assertFalse(any(line.startswith("C: USER") for line in self.capture.lines))

    async def test_large_message_streams_intact_over_tls(self) -> None:
        """
        A message larger than the server's single-write limit (sent through a
        producer, in chunks) arrives intact over STLS, dot-stuffing and all.
        """
        big = large_message()
        await self.server.deliver("bob", big)
        result = await pop3_client().fetch_mail(
            self.server.host,
            self.server.pop3_port,
            "bob",
            USERS["bob"],
            tls="starttls",
            cafile=self.server.cert_path,
        )
        self.assertEqual(len(result.messages), 1)
        self.assertEqual(lf(result.messages[0].data), big)


class FetchMailBehaviourTests(TestCase):
    """UIDL-based fetching, deletion at QUIT, refused logins, the maildrop lock."""

    timeout = 60

    async def setUp(self) -> None:
        self.server = await start_mail_server(self, users=USERS)

    def fetch(self, user: str = "alice", **kwargs: Any) -> defer.Deferred:
        kwargs.setdefault("tls", "none")
        password = kwargs.pop("password", USERS.get(user, "x"))
        return pop3_client().fetch_mail(
            self.server.host, self.server.pop3_port, user, password, **kwargs
        )

    async def test_known_uids_fetches_only_new(self) -> None:
        """
        Given the UIDs of messages already seen, fetch_mail retrieves only the
        new ones; the UIDs of old messages are stable across sessions.
        """
        await self.server.deliver("alice", DOTTED)
        await self.server.deliver("alice", EIGHT_BIT)
        first = await self.fetch()
        seen = [m.uid for m in first.messages]
        self.assertEqual(len(seen), 2)
        await self.server.deliver("alice", PLAIN)
        second = await self.fetch(known_uids=seen)
        self.assertEqual(second.total, 3)
        self.assertEqual([lf(m.data) for m in second.messages], [PLAIN])
        self.assertEqual(second.messages[0].number, 3)
        self.assertNotIn(second.messages[0].uid, seen)
        third = await self.fetch(known_uids=seen + [second.messages[0].uid])
        self.assertEqual((third.total, third.messages), (3, []))
        again = await self.fetch()
        self.assertEqual([m.uid for m in again.messages][:2], seen)

    async def test_delete_after_quit(self) -> None:
        """
        With delete=True every retrieved message is deleted, and the deletion
        is applied (the QUIT/UPDATE state) by the time fetch_mail fires; other
        users' mail is untouched.
        """
        await self.server.deliver("alice", DOTTED)
        await self.server.deliver("alice", PLAIN)
        await self.server.deliver("bob", EIGHT_BIT)
        result = await self.fetch(delete=True)
        self.assertEqual([lf(m.data) for m in result.messages], [DOTTED, PLAIN])
        self.assertEqual(result.deleted, [m.uid for m in result.messages])
        self.assertEqual(self.server.raw_received("alice"), [])
        self.assertEqual([lf(m) for m in self.server.raw_received("bob")], [EIGHT_BIT])
        after = await self.fetch()
        self.assertEqual((after.total, after.messages), (0, []))

    async def test_delete_with_known_uids_deletes_only_fetched(self) -> None:
        """delete=True with known_uids deletes only the messages it retrieved."""
        await self.server.deliver("alice", DOTTED)
        first = await self.fetch()
        await self.server.deliver("alice", PLAIN)
        result = await self.fetch(delete=True, known_uids=[m.uid for m in first.messages])
        self.assertEqual([lf(m.data) for m in result.messages], [PLAIN])
        self.assertEqual([lf(m) for m in self.server.raw_received("alice")], [DOTTED])

    async def test_wrong_password(self) -> None:
        """A wrong password fails fetch_mail with POP3ClientError carrying [AUTH]."""
        await self.server.deliver("alice", PLAIN)
        with self.assertRaises(pop3_client().POP3ClientError) as caught:
            await self.fetch(password="not-the-password")
        self.assertIn("[AUTH]", str(caught.exception))
        self.assertEqual(len(self.server.raw_received("alice")), 1)

    async def test_unknown_user_looks_like_wrong_password(self) -> None:
        """An unknown user gets the very same [AUTH] refusal (no user enumeration)."""
        with self.assertRaises(pop3_client().POP3ClientError) as unknown:
            await self.fetch(user="mallory", password="whatever")
        with self.assertRaises(pop3_client().POP3ClientError) as wrong:
            await self.fetch(password="whatever")
        self.assertIn("[AUTH]", str(unknown.exception))
        self.assertEqual(str(unknown.exception), str(wrong.exception))

    async def test_second_session_gets_in_use(self) -> None:
        """
        While one session holds alice's maildrop, a second login gets [IN-USE];
        once the first QUITs, the second succeeds.
        """
        await self.server.deliver("alice", PLAIN)
        first, greeting = await connect_raw(self, self.server.host, self.server.pop3_port)
        self.assertTrue(greeting.startswith(b"+OK"), greeting)
        self.assertTrue((await first.login("alice", USERS["alice"])).startswith(b"+OK"))
        with self.assertRaises(pop3_client().POP3ClientError) as caught:
            await self.fetch()
        self.assertIn("[IN-USE]", str(caught.exception))
        self.assertTrue((await first.command(b"QUIT")).startswith(b"+OK"))
        await first.closed
        result = await self.fetch()
        self.assertEqual([lf(m.data) for m in result.messages], [PLAIN])

    async def test_in_use_is_per_user(self) -> None:
        """A session holding alice's maildrop does not lock out bob."""
        await self.server.deliver("bob", PLAIN)
        first, _ = await connect_raw(self, self.server.host, self.server.pop3_port)
        self.assertTrue((await first.login("alice", USERS["alice"])).startswith(b"+OK"))
        result = await self.fetch(user="bob")
        self.assertEqual(len(result.messages), 1)

    async def test_dropped_session_releases_lock_and_applies_nothing(self) -> None:
        """
        A session that marks a message deleted and then drops the connection
        without QUIT releases the maildrop lock, and the deletion is not
        applied (RFC 1939: no UPDATE state without QUIT).
        """
        await self.server.deliver("alice", DOTTED)
        await self.server.deliver("alice", PLAIN)
        first, _ = await connect_raw(self, self.server.host, self.server.pop3_port)
        self.assertTrue((await first.login("alice", USERS["alice"])).startswith(b"+OK"))
        self.assertTrue((await first.command(b"DELE 1")).startswith(b"+OK"))
        await first.close()

        async def fetched() -> Any:
            try:
                return await self.fetch()
            except pop3_client().POP3ClientError as e:
                if "[IN-USE]" in str(e):
                    return None
                raise

        result = await poll_until(fetched, timeout=10)
        self.assertEqual([lf(m.data) for m in result.messages], [DOTTED, PLAIN])

    async def test_pipelined_commands(self) -> None:
        """
        A whole session written in one go (RFC 2449 PIPELINING), including a
        PASS whose check completes later, is answered in order: the commands
        behind PASS wait for the login instead of failing.
        """
        await self.server.deliver("alice", DOTTED)
        await self.server.deliver("alice", PLAIN)
        client, _ = await connect_raw(self, self.server.host, self.server.pop3_port)
        client.send(
            b"USER alice\r\nPASS " + USERS["alice"].encode() + b"\r\n"
            b"STAT\r\nRETR 1\r\nDELE 1\r\nRETR 2\r\nLIST\r\nQUIT\r\n"
        )
        self.assertTrue((await client.read_line()).startswith(b"+OK"))  # USER
        self.assertTrue((await client.read_line()).startswith(b"+OK"))  # PASS
        stat = await client.read_line()
        self.assertEqual(stat.split()[:2], [b"+OK", b"2"])
        self.assertTrue((await client.read_line()).startswith(b"+OK"))
        self.assertEqual(b"".join(line + b"\n" for line in await client.read_multiline()), DOTTED)
        self.assertTrue((await client.read_line()).startswith(b"+OK"))  # DELE
        self.assertTrue((await client.read_line()).startswith(b"+OK"))
        self.assertEqual(b"".join(line + b"\n" for line in await client.read_multiline()), PLAIN)
        self.assertTrue((await client.read_line()).startswith(b"+OK"))
        self.assertEqual(await client.read_multiline(), [b"2 %d" % len(crlf(PLAIN))])
        self.assertTrue((await client.read_line()).startswith(b"+OK"))  # QUIT
        await client.closed
        self.assertEqual([lf(m) for m in self.server.raw_received("alice")], [PLAIN])

    async def test_connection_refused(self) -> None:
        """fetch_mail to a port nobody listens on fails with ConnectionRefusedError."""
        port = self.server.pop3_port
        await self.server.stop()
        with self.assertRaises(error.ConnectionRefusedError):
            await pop3_client().fetch_mail(
                self.server.host, port, "alice", USERS["alice"], tls="none"
            )
