"""
Interop tests for POP3: third-party clients against appnet's server, and
appnet's client against Dovecot's POP3 server; plus bad input over a real
socket.

 - Python's C{poplib}: USER/PASS, STAT, LIST, RETR, DELE, QUIT, C{stls()},
   C{POP3_SSL}, C{capa()}, C{uidl()}, C{top()};
 - curl: C{pop3://} list, retrieve, C{-X DELE}, C{pop3s://}, C{--ssl-reqd};
 - fetchmail and getmail: retrieval into a local delivery agent;
 - L{appnet.pop3.client.fetch_mail} against Dovecot (C{tests/interop/_dovecot.py});
 - overlong lines, binary garbage, wrong-state commands, bad message numbers:
   each gets C{-ERR} and the session goes on.

Each test needs its tool (L{require_tool}): skipped when it is missing,
failed when C{APPNET_REQUIRE_INTEROP=1}. Blocking clients (poplib,
subprocesses) run in threads so the reactor keeps serving.
"""

from __future__ import annotations

import os
import poplib
import random
import re
import ssl
import stat
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, threads
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase

from appnet.testing import start_mail_server
from appnet.tls import ensure_certificate
from tests.integration.test_pop3_loopback import (
    DOTTED,
    EIGHT_BIT,
    PLAIN,
    connect_raw,
    crlf,
    large_message,
    lf,
    poll_until,
    pop3_client,
)
from tests.integration.test_twistd import decode, run_process
from tests.interop._dovecot import require_dovecot, start_dovecot
from tests.support import free_tcp_port, require_tool

USERS = {"alice": "wonderland", "bob": "builder"}
MESSAGES = [DOTTED, EIGHT_BIT, PLAIN]


_TRACE_HEADER = re.compile(rb"(?i)(received|return-path|delivered-to):")


def strip_trace_headers(data: bytes) -> bytes:
    """
    Remove the trace header fields a retrieval agent puts on top of a
    message (C{Received:}, C{Return-Path:}, C{Delivered-To:}) with their
    continuation lines, leaving the message as the server sent it.
    """
    lines = lf(data).split(b"\n")
    i = 0
    while i < len(lines) and _TRACE_HEADER.match(lines[i]):
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
    return b"\n".join(lines[i:])


def delivered_files(directory: str) -> list[bytes]:
    """The contents of every file an MDA wrote into C{directory}."""
    out = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out.append(f.read())
    return out


class _Served(TestCase):
    """A running appnet mail server with alice's three messages."""

    timeout = 120

    async def setUp(self) -> None:
        self.server = await start_mail_server(self, users=USERS)
        for message in MESSAGES:
            await self.server.deliver("alice", message)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting the server's self-signed certificate."""
        return ssl.create_default_context(cafile=self.server.cert_path)

    def in_thread(self, f: Any, *args: Any) -> defer.Deferred:
        return threads.deferToThread(f, *args)


class PoplibTests(_Served):
    """Python's poplib against appnet's server."""

    def _login(self, pop: poplib.POP3, user: str = "alice") -> bytes:
        pop.user(user)
        return pop.pass_(USERS[user])

    async def test_dialogue(self) -> None:
        """
        USER/PASS, STAT, LIST, RETR (bytes intact, dot-stuffing undone), DELE
        and QUIT; the deletion is applied by QUIT and only to that message.
        """

        def session() -> dict[str, Any]:
            pop = poplib.POP3(self.server.host, self.server.pop3_port, timeout=10)
            try:
                out: dict[str, Any] = {"welcome": pop.getwelcome()}
                out["pass"] = self._login(pop)
                out["stat"] = pop.stat()
                out["list"] = pop.list()[1]
                out["retr"] = [pop.retr(n)[1] for n in (1, 2, 3)]
                out["dele"] = pop.dele(2)
                out["stat_after_dele"] = pop.stat()
                out["quit"] = pop.quit()
                return out
            finally:
                pop.close()

        out = await self.in_thread(session)
        self.assertTrue(out["welcome"].startswith(b"+OK"))
        self.assertTrue(out["pass"].startswith(b"+OK"))
        sizes = [len(crlf(m)) for m in MESSAGES]
        self.assertEqual(out["stat"], (3, sum(sizes)))
        self.assertEqual(out["list"], [b"%d %d" % (n, s) for n, s in enumerate(sizes, 1)])
        self.assertEqual(
            [b"\r\n".join(lines) + b"\r\n" for lines in out["retr"]], [crlf(m) for m in MESSAGES]
        )
        self.assertTrue(out["dele"].startswith(b"+OK"))
        self.assertEqual(out["stat_after_dele"], (2, sizes[0] + sizes[2]))
        self.assertTrue(out["quit"].startswith(b"+OK"))
        self.assertEqual([lf(m) for m in self.server.raw_received("alice")], [DOTTED, PLAIN])

    async def test_rset_and_no_quit(self) -> None:
        """RSET unmarks deletions; a session closed without QUIT deletes nothing."""

        def session() -> tuple[Any, ...]:
            pop = poplib.POP3(self.server.host, self.server.pop3_port, timeout=10)
            try:
                self._login(pop)
                pop.dele(1)
                pop.rset()
                after_rset = pop.stat()
                pop.dele(1)
                pop.dele(3)
                return after_rset, pop.stat()
            finally:
                pop.close()  # no QUIT

        after_rset, after_dele = await self.in_thread(session)
        self.assertEqual(after_rset[0], 3)
        self.assertEqual(after_dele[0], 1)

        def count() -> int:
            pop = poplib.POP3(self.server.host, self.server.pop3_port, timeout=10)
            try:
                self._login(pop)
                return pop.stat()[0]
            except poplib.error_proto as e:
                if b"[IN-USE]" in e.args[0]:
                    return 0  # the old session is still being torn down
                raise
            finally:
                pop.close()

        self.assertEqual(await poll_until(lambda: self.in_thread(count)), 3)
        self.assertEqual(len(self.server.raw_received("alice")), 3)

    async def test_stls(self) -> None:
        """
        poplib's stls() with a context trusting the server certificate
        upgrades the session to TLS 1.2+; CAPA then stops offering STLS;
        login and RETR work over TLS and a second STLS is refused.
        """

        def session() -> dict[str, Any]:
            pop = poplib.POP3(self.server.host, self.server.pop3_port, timeout=10)
            try:
                out: dict[str, Any] = {"capa_before": pop.capa()}
                out["stls"] = pop.stls(self.ssl_context())
                out["version"] = pop.sock.version()
                out["capa_after"] = pop.capa()
                try:
                    pop._shortcmd("STLS")
                except poplib.error_proto as e:
                    out["stls_again"] = e.args[0]
                self._login(pop)
                out["retr"] = pop.retr(1)[1]
                pop.quit()
                return out
            finally:
                pop.close()

        out = await self.in_thread(session)
        self.assertIn("STLS", out["capa_before"])
        self.assertTrue(out["stls"].startswith(b"+OK"))
        self.assertIn(out["version"], ("TLSv1.2", "TLSv1.3"))
        self.assertNotIn("STLS", out["capa_after"])
        self.assertTrue(out["stls_again"].startswith(b"-ERR"))
        self.assertEqual(b"\r\n".join(out["retr"]) + b"\r\n", crlf(DOTTED))

    async def test_stls_untrusted_certificate(self) -> None:
        """poplib's stls() with the default trust store rejects the self-signed certificate."""

        def session() -> Exception | None:
            pop = poplib.POP3(self.server.host, self.server.pop3_port, timeout=10)
            try:
                pop.stls(ssl.create_default_context())
            except ssl.SSLError as e:
                return e
            finally:
                # poplib's close() trips over the socket the failed wrap detached.
                pop.file.close()
                pop.sock.close()
            return None

        refused = await self.in_thread(session)
        self.assertIsInstance(refused, ssl.SSLCertVerificationError)

    async def test_pop3_ssl(self) -> None:
        """POP3_SSL on the pop3s port: login, UIDL, RETR all, over TLS 1.2+; STLS not offered."""

        def session() -> dict[str, Any]:
            pop = poplib.POP3_SSL(
                self.server.host, self.server.pop3s_port, context=self.ssl_context(), timeout=10
            )
            try:
                out: dict[str, Any] = {"version": pop.sock.version(), "capa": pop.capa()}
                self._login(pop)
                out["uidl"] = pop.uidl()[1]
                out["retr"] = [pop.retr(n)[1] for n in (1, 2, 3)]
                pop.quit()
                return out
            finally:
                pop.close()

        out = await self.in_thread(session)
        self.assertIn(out["version"], ("TLSv1.2", "TLSv1.3"))
        self.assertNotIn("STLS", out["capa"])
        self.assertIn("USER", out["capa"])
        self.assertEqual(len(out["uidl"]), 3)
        self.assertEqual(
            [b"\r\n".join(r) + b"\r\n" for r in out["retr"]], [crlf(m) for m in MESSAGES]
        )

    async def test_capa(self) -> None:
        """capa() lists the extensions appnet implements (RFC 2449)."""

        def session() -> dict[str, list[str]]:
            pop = poplib.POP3(self.server.host, self.server.pop3_port, timeout=10)
            try:
                return pop.capa()
            finally:
                pop.quit()
                pop.close()

        capa = await self.in_thread(session)
        for name in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "USER", "STLS"):
            self.assertIn(name, capa)
        self.assertIn("PLAIN", capa["SASL"])

    async def test_uidl(self) -> None:
        """
        uidl() gives distinct unique-ids (RFC 1939: 1 to 70 printable
        characters) that stay the same in the next session, and uidl(n)
        agrees with the listing.
        """

        def session() -> tuple[list[bytes], bytes]:
            pop = poplib.POP3(self.server.host, self.server.pop3_port, timeout=10)
            try:
                self._login(pop)
                listing = pop.uidl()[1]
                one = pop.uidl(2)
                pop.quit()
                return listing, one
            finally:
                pop.close()

        listing, one = await self.in_thread(session)
        again, _ = await self.in_thread(session)
        self.assertEqual(listing, again)
        numbers = [line.split()[0] for line in listing]
        uids = [line.split()[1] for line in listing]
        self.assertEqual(numbers, [b"1", b"2", b"3"])
        self.assertEqual(len(set(uids)), 3)
        for uid in uids:
            self.assertRegex(uid, rb"^[\x21-\x7e]{1,70}$")
        self.assertEqual(one, b"+OK 2 " + uids[1])

    async def test_top(self) -> None:
        """
        top(n, 0) gives the header and the blank line; top(n, k) adds k body
        lines, dot-stuffing undone.
        """

        def session() -> tuple[list[bytes], list[bytes]]:
            pop = poplib.POP3(self.server.host, self.server.pop3_port, timeout=10)
            try:
                self._login(pop)
                zero = pop.top(1, 0)[1]
                three = pop.top(1, 3)[1]
                pop.quit()
                return zero, three
            finally:
                pop.close()

        zero, three = await self.in_thread(session)
        head, body = DOTTED.split(b"\n\n", 1)
        self.assertEqual(zero, head.split(b"\n") + [b""])
        self.assertEqual(three, head.split(b"\n") + [b""] + body.split(b"\n")[:3])
        self.assertEqual(three[-2:], [b".a line starting with a dot", b"..two dots"])


class CurlTests(_Served):
    """curl's pop3:// and pop3s:// against appnet's server."""

    def setUp(self) -> defer.Deferred:
        self.curl = require_tool("curl")
        return super().setUp()

    def url(self, scheme: str = "pop3", path: str = "/", user: str = "alice") -> str:
        port = self.server.pop3s_port if scheme == "pop3s" else self.server.pop3_port
        return f"{scheme}://{user}:{USERS[user]}@{self.server.host}:{port}{path}"

    async def run_curl(self, *args: str) -> Any:
        return await run_process([self.curl, "-sS", "--max-time", "30", *args], timeout=60)

    async def test_list(self) -> None:
        """C{curl pop3://alice:pw@host:port/} prints the LIST scan listing."""
        done = await self.run_curl(self.url())
        self.assertEqual(done.returncode, 0, decode(done))
        expected = b"".join(b"%d %d\r\n" % (n, len(crlf(m))) for n, m in enumerate(MESSAGES, 1))
        self.assertEqual(done.stdout, expected)

    async def test_retrieve(self) -> None:
        """C{curl pop3://.../N} prints message N byte for byte (CRLF lines, dots intact)."""
        for n, message in enumerate(MESSAGES, 1):
            done = await self.run_curl(self.url(path=f"/{n}"))
            self.assertEqual(done.returncode, 0, decode(done))
            self.assertEqual(done.stdout, crlf(message))

    async def test_retrieve_large(self) -> None:
        """
        A 600 KB message of dot-led lines (streamed by the server in chunks)
        comes out of curl byte for byte, over plain POP3 and over pop3s.
        """
        big = large_message()
        await self.server.deliver("bob", big)
        plain = await self.run_curl(self.url(path="/1", user="bob"))
        self.assertEqual(plain.returncode, 0, decode(plain)[1])
        self.assertEqual(plain.stdout, crlf(big))
        tls = await self.run_curl("--cacert", self.server.cert_path, self.url("pop3s", "/1", "bob"))
        self.assertEqual(tls.returncode, 0, decode(tls)[1])
        self.assertEqual(tls.stdout, crlf(big))

    async def test_retrieve_missing(self) -> None:
        """Retrieving a message that does not exist makes curl fail (the server said -ERR)."""
        done = await self.run_curl(self.url(path="/9"))
        self.assertNotEqual(done.returncode, 0)
        self.assertEqual(done.stdout, b"")

    async def test_dele(self) -> None:
        """
        C{curl -X DELE -I pop3://.../2} deletes message 2: once curl has sent
        QUIT, the store holds only messages 1 and 3 and a new listing shows two.
        """
        done = await self.run_curl("-X", "DELE", "-I", self.url(path="/2"))
        self.assertEqual(done.returncode, 0, decode(done))
        await poll_until(lambda: len(self.server.raw_received("alice")) == 2)
        self.assertEqual([lf(m) for m in self.server.raw_received("alice")], [DOTTED, PLAIN])
        listing = await self.run_curl(self.url())
        self.assertEqual(
            listing.stdout,
            b"1 %d\r\n2 %d\r\n" % (len(crlf(DOTTED)), len(crlf(PLAIN))),
        )

    async def test_pop3s(self) -> None:
        """C{curl --cacert CERT pop3s://...} lists and retrieves over implicit TLS."""
        done = await self.run_curl("--cacert", self.server.cert_path, self.url("pop3s", "/2"))
        self.assertEqual(done.returncode, 0, decode(done))
        self.assertEqual(done.stdout, crlf(EIGHT_BIT))
        listing = await self.run_curl("--cacert", self.server.cert_path, self.url("pop3s"))
        self.assertEqual(listing.returncode, 0, decode(listing))
        self.assertEqual(len(listing.stdout.splitlines()), 3)

    async def test_pop3s_untrusted(self) -> None:
        """Without --cacert, curl refuses the self-signed certificate (exit 60)."""
        done = await self.run_curl(self.url("pop3s", "/1"))
        self.assertEqual(done.returncode, 60, decode(done))

    async def test_ssl_reqd_uses_stls(self) -> None:
        """
        C{curl --ssl-reqd pop3://...} upgrades with STLS (seen in its verbose
        output) before it authenticates, then retrieves the message intact.
        """
        done = await self.run_curl(
            "-v", "--ssl-reqd", "--cacert", self.server.cert_path, self.url(path="/1")
        )
        out, err = decode(done)
        self.assertEqual(done.returncode, 0, err)
        self.assertEqual(done.stdout, crlf(DOTTED))
        self.assertIn("> STLS", err)
        self.assertLess(err.index("> STLS"), err.index("> AUTH"))

    async def test_auth_login(self) -> None:
        """curl with C{--login-options AUTH=LOGIN} logs in with SASL LOGIN and lists."""
        done = await self.run_curl("-v", "--login-options", "AUTH=LOGIN", self.url())
        out, err = decode(done)
        self.assertEqual(done.returncode, 0, err)
        self.assertIn("> AUTH LOGIN", err)
        self.assertEqual(len(done.stdout.splitlines()), 3)

    async def test_wrong_password(self) -> None:
        """A wrong password makes curl fail with its login-denied exit code (67)."""
        port = self.server.pop3_port
        done = await self.run_curl(f"pop3://alice:wrong@{self.server.host}:{port}/")
        self.assertEqual(done.returncode, 67, decode(done))


class FetchmailTests(_Served):
    """fetchmail retrieving from appnet's server into a delivery agent."""

    def setUp(self) -> defer.Deferred:
        self.fetchmail = require_tool("fetchmail")
        self.home = os.path.abspath(self.mktemp())
        self.out = os.path.join(self.home, "delivered")
        os.makedirs(self.out)
        os.chmod(self.home, 0o700)
        self.mda = os.path.join(self.home, "mda.sh")
        with open(self.mda, "w") as f:
            f.write(f'#!/bin/sh\nexec cat > "$(mktemp {self.out}/msg.XXXXXX)"\n')
        os.chmod(self.mda, 0o700)
        return super().setUp()

    async def run_fetchmail(
        self, options: str, port: int | None = None, server_options: str = ""
    ) -> Any:
        """
        Write a 0600 rc file polling alice (C{server_options} on the poll
        line, C{options} among the user's) and run fetchmail once.

        @return: the finished process, its stdout and stderr joined
        """
        rc = os.path.join(self.home, "fetchmailrc")
        with open(rc, "w") as f:
            f.write(
                "set no bouncemail\n"
                f"poll localhost via {self.server.host} with proto POP3"
                f" port {port or self.server.pop3_port} {server_options}\n"
                f'  user "alice" there with password "{USERS["alice"]}"\n'
                f'  mda "{self.mda}"\n'
                f"  {options}\n"
            )
        os.chmod(rc, stat.S_IRUSR | stat.S_IWUSR)
        env = dict(os.environ, HOME=self.home, FETCHMAILHOME=self.home)
        done = await run_process(
            [self.fetchmail, "-f", rc, "--nodetach", "--norewrite", "-v"],
            env=env,
            cwd=self.home,
            timeout=60,
        )
        done.log = "\n".join(decode(done))
        return done

    def tls(self) -> str:
        return (
            f'sslproto "tls1.2+" sslcertck sslcommonname "localhost"'
            f' sslcertfile "{self.server.cert_path}"'
        )

    def assertDelivered(self, expected: list[bytes]) -> None:
        got = [strip_trace_headers(m) for m in delivered_files(self.out)]
        self.assertEqual(sorted(got), sorted(lf(m) for m in expected))

    async def test_stls_fetch_and_delete(self) -> None:
        """
        fetchmail upgrades with STLS (verifying the certificate), retrieves
        the three messages intact into the MDA and, by default, deletes them:
        the server's maildrop is empty afterwards.
        """
        done = await self.run_fetchmail(f"fetchall {self.tls()}")
        self.assertEqual(done.returncode, 0, done.log)
        self.assertIn("POP3> STLS", done.log)
        self.assertIn("upgrade to TLS succeeded", done.log)
        self.assertLess(done.log.index("upgrade to TLS succeeded"), done.log.index("POP3> USER"))
        self.assertDelivered(MESSAGES)
        self.assertEqual(self.server.raw_received("alice"), [])

    async def test_plain_keep_and_uidl(self) -> None:
        """
        Plaintext from loopback with C{keep uidl}: fetchmail retrieves all
        three and leaves them; after one more arrives, the next run fetches
        only that one (UIDLs stable across sessions); a third run finds no
        new mail (exit 1).
        """
        options = "sslproto '' keep"
        first = await self.run_fetchmail(options, server_options="uidl")
        self.assertEqual(first.returncode, 0, first.log)
        self.assertNotIn("POP3> STLS", first.log)
        self.assertIn("POP3> UIDL", first.log)
        self.assertDelivered(MESSAGES)
        self.assertEqual(len(self.server.raw_received("alice")), 3)
        new = b"From: frank@example.org\nSubject: four\n\nNew mail.\n"
        await self.server.deliver("alice", new)
        second = await self.run_fetchmail(options, server_options="uidl")
        self.assertEqual(second.returncode, 0, second.log)
        self.assertDelivered(MESSAGES + [new])
        third = await self.run_fetchmail(options, server_options="uidl")
        self.assertEqual(third.returncode, 1, third.log)
        self.assertEqual(len(delivered_files(self.out)), 4)

    async def test_implicit_tls(self) -> None:
        """fetchmail with C{ssl} on the pop3s port retrieves the messages intact."""
        done = await self.run_fetchmail(
            f'ssl sslcertck sslcommonname "localhost" sslcertfile "{self.server.cert_path}" keep',
            port=self.server.pop3s_port,
        )
        self.assertEqual(done.returncode, 0, done.log)
        self.assertDelivered(MESSAGES)


class GetmailTests(_Served):
    """getmail6 retrieving over POP3-SSL from appnet's server."""

    def setUp(self) -> defer.Deferred:
        self.getmail = require_tool("getmail")
        return super().setUp()

    async def test_pop3_ssl_fetch_and_delete(self) -> None:
        """
        getmail's SimplePOP3SSLRetriever (certificate checked against the
        server's) delivers the three messages intact to an external MDA and
        deletes them from the server.
        """
        home = os.path.abspath(self.mktemp())
        out = os.path.join(home, "delivered")
        os.makedirs(out)
        rc = os.path.join(home, "getmailrc")
        with open(rc, "w") as f:
            f.write(
                "[retriever]\n"
                "type = SimplePOP3SSLRetriever\n"
                f"server = {self.server.host}\n"
                f"port = {self.server.pop3s_port}\n"
                "username = alice\n"
                f"password = {USERS['alice']}\n"
                f"ca_certs = {self.server.cert_path}\n"
                "\n[destination]\n"
                "type = MDA_external\n"
                "path = /bin/sh\n"
                f'arguments = ("-c", "exec cat > $(mktemp {out}/msg.XXXXXX)")\n'
                "allow_root_commands = true\n"
                "unixfrom = false\n"
                "\n[options]\n"
                "read_all = true\n"
                "delete = true\n"
                "received = false\n"
                "delivered_to = false\n"
                "verbose = 2\n"
            )
        done = await run_process(
            [self.getmail, "--getmaildir", home, "--rcfile", rc],
            # getmail runs on the system's Python: trial -j's workers put our
            # interpreter's sys.path (lib-dynload included) in PYTHONPATH.
            env={**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")},
                 "HOME": home},
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, decode(done))
        got = [strip_trace_headers(m) for m in delivered_files(out)]
        self.assertEqual(sorted(got), sorted(MESSAGES))
        self.assertEqual(self.server.raw_received("alice"), [])


class BadInputTests(_Served):
    """
    Hostile or broken input over a real socket: every bad line gets C{-ERR}
    and the session goes on (a following NOOP gets C{+OK}).
    """

    async def connect(self, tls: bool = False) -> Any:
        if tls:
            with open(self.server.cert_path, "rb") as f:
                trust = Certificate.loadPEM(f.read())
            options = optionsForClientTLS("localhost", trustRoot=trust)
            client, greeting = await connect_raw(
                self, self.server.host, self.server.pop3s_port, options
            )
        else:
            client, greeting = await connect_raw(self, self.server.host, self.server.pop3_port)
        self.assertTrue(greeting.startswith(b"+OK"), greeting)
        return client

    async def assertAlive(self, client: Any) -> None:
        self.assertTrue((await client.command(b"NOOP")).startswith(b"+OK"))

    async def assertERR(self, client: Any, line: bytes) -> None:
        reply = await client.command(line)
        self.assertTrue(reply.startswith(b"-ERR"), (line[:60], reply))

    async def test_overlong_line(self) -> None:
        """
        100 KB without a newline is answered with -ERR before the line even
        ends (the buffer is bounded); after the newline the session goes on.
        """
        client = await self.connect()
        client.send(b"USER " + b"a" * 100_000)
        reply = await client.read_line()
        self.assertTrue(reply.startswith(b"-ERR"), reply)
        client.send(b"\r\n")
        await self.assertAlive(client)
        self.assertTrue((await client.login("alice", USERS["alice"])).startswith(b"+OK"))
        client.send(b"RETR " + b"1" * 100_000 + b"\r\n")
        self.assertTrue((await client.read_line()).startswith(b"-ERR"))
        await self.assertAlive(client)

    async def test_overlong_line_over_tls(self) -> None:
        """The same bound holds inside implicit TLS."""
        client = await self.connect(tls=True)
        client.send(b"x" * 100_000)
        self.assertTrue((await client.read_line()).startswith(b"-ERR"))
        client.send(b"\r\n")
        await self.assertAlive(client)

    async def test_binary_garbage(self) -> None:
        """
        NUL bytes, invalid UTF-8, a TLS ClientHello prefix, an HTTP request
        and 8 KB of seeded random bytes: every line gets -ERR, in order, and
        the session still works (login, STAT).
        """
        client = await self.connect()
        for line in (
            b"\x00\x00\x00",
            b"\xff\xfe\xfd garbage \x80\x81",
            b"\xc3\x28\xa0\xa1",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1",
            b"",
            b"   ",
            b"\r\r\r",
        ):
            await self.assertERR(client, line)
        await self.assertAlive(client)
        noise = random.Random(1939).randbytes(8192).replace(b"\n", b"") + b"\n"
        noise = b"\n".join(noise[i : i + 512] for i in range(0, len(noise), 512))
        client.send(noise)
        for _ in range(noise.count(b"\n")):
            reply = await client.read_line()
            self.assertTrue(reply.startswith(b"-ERR"), reply)
        await self.assertAlive(client)
        self.assertTrue((await client.login("alice", USERS["alice"])).startswith(b"+OK"))
        total = sum(len(crlf(m)) for m in MESSAGES)
        self.assertEqual(await client.command(b"STAT"), b"+OK 3 %d" % total)

    async def test_wrong_state_commands(self) -> None:
        """
        Transaction commands before login, and login commands after it, get
        -ERR; PASS without USER gets -ERR; the session goes on each time.
        """
        client = await self.connect()
        for line in (b"STAT", b"LIST", b"LIST 1", b"RETR 1", b"DELE 1", b"UIDL", b"TOP 1 1"):
            await self.assertERR(client, line)
        await self.assertERR(client, b"RSET")
        await self.assertERR(client, b"PASS " + USERS["alice"].encode())
        await self.assertAlive(client)
        self.assertTrue((await client.login("alice", USERS["alice"])).startswith(b"+OK"))
        for line in (b"USER alice", b"PASS x", b"STLS", b"AUTH PLAIN", b"APOP alice 0123abcd"):
            await self.assertERR(client, line)
        await self.assertAlive(client)
        self.assertTrue((await client.command(b"STAT")).startswith(b"+OK 3 "))

    async def test_bad_message_numbers(self) -> None:
        """
        RETR/LIST/UIDL/TOP/DELE of a missing message, a deleted one, and
        absurd numbers (0, negative, huge, not a number, extra arguments)
        each get -ERR; only the one good DELE is applied at QUIT.
        """
        client = await self.connect()
        self.assertTrue((await client.login("alice", USERS["alice"])).startswith(b"+OK"))
        self.assertTrue((await client.command(b"DELE 2")).startswith(b"+OK"))
        for line in (
            b"RETR 4",
            b"RETR 2",
            b"DELE 2",
            b"LIST 2",
            b"UIDL 2",
            b"TOP 2 0",
            b"RETR 0",
            b"RETR -1",
            b"RETR +1",
            b"RETR 1.0",
            b"RETR 0x1",
            b"RETR one",
            b"RETR " + b"9" * 40,
            b"LIST 4294967297",
            b"DELE 18446744073709551617",
            b"TOP 1 -1",
            b"TOP 1 " + b"9" * 40,
            b"TOP 1",
            b"RETR 1 2",
            b"RETR",
            b"DELE",
        ):
            await self.assertERR(client, line)
        await self.assertAlive(client)
        self.assertEqual((await client.command(b"STAT")).split()[:2], [b"+OK", b"2"])
        self.assertTrue((await client.command(b"QUIT")).startswith(b"+OK"))
        await client.closed
        self.assertEqual([lf(m) for m in self.server.raw_received("alice")], [DOTTED, PLAIN])

    async def test_bad_sasl(self) -> None:
        """Invalid base64 and malformed PLAIN responses get -ERR [AUTH]; the session goes on."""
        client = await self.connect()
        await self.assertERR(client, b"AUTH PLAIN !!!notbase64!!!")
        await self.assertERR(client, b"AUTH PLAIN " + b"bm8gbnVscyBoZXJl")  # "no nuls here"
        await self.assertERR(client, b"AUTH CRAM-MD5")
        self.assertTrue((await client.command(b"AUTH PLAIN")).startswith(b"+"))
        await self.assertERR(client, b"*")  # cancelled
        await self.assertAlive(client)

    async def test_failed_logins_close_session(self) -> None:
        """Three wrong passwords get -ERR [AUTH] each, then the server hangs up."""
        client = await self.connect()
        for _ in range(3):
            reply = await client.login("alice", "wrong")
            self.assertTrue(reply.startswith(b"-ERR [AUTH]"), reply)
        self.assertTrue((await client.read_line()).startswith(b"-ERR"))
        await client.closed

    async def test_stls_discards_injected_plaintext(self) -> None:
        """
        Commands pipelined in cleartext behind STLS are discarded, not run
        inside the TLS session (RFC 2595 section 3.1: command injection).
        """
        client = await self.connect()
        client.send(b"STLS\r\nUSER alice\r\nPASS " + USERS["alice"].encode() + b"\r\nNOOP\r\n")
        self.assertTrue((await client.read_line()).startswith(b"+OK"))
        with open(self.server.cert_path, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        client.transport.startTLS(optionsForClientTLS("localhost", trustRoot=trust))
        # The first reply inside TLS must answer this STAT, which is refused
        # because the injected USER/PASS never ran.
        reply = await client.command(b"STAT")
        self.assertTrue(reply.startswith(b"-ERR"), reply)
        await self.assertAlive(client)


class DovecotTests(TestCase):
    """
    appnet's POP3 client (L{fetch_mail}) against Dovecot's POP3 server,
    started by C{tests/interop/_dovecot.py} with TLS added (STLS on the POP3
    port and a pop3s listener, certificate made by L{ensure_certificate});
    mail delivered with Dovecot's own LDA.
    """

    timeout = 120

    async def setUp(self) -> None:
        require_dovecot()
        self.client = pop3_client()
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        self.cert, key = ensure_certificate(os.path.join(tmp, "tls"), "localhost")
        self.pop3s_port = free_tcp_port()
        tls_config = (
            "ssl = yes\n"
            f"ssl_cert = <{self.cert}\n"
            f"ssl_key = <{key}\n"
            "service pop3-login {\n"
            "  inet_listener pop3s {\n"
            "    address = 127.0.0.1\n"
            f"    port = {self.pop3s_port}\n"
            "    ssl = yes\n"
            "  }\n"
            "}\n"
        )
        self.dovecot = await threads.deferToThread(
            start_dovecot, os.path.join(tmp, "mail"), USERS, imap=False, extra_config=tls_config
        )
        self.addCleanup(threads.deferToThread, self.dovecot.stop)

    async def deliver(self, user: str, *messages: bytes) -> None:
        for message in messages:
            await threads.deferToThread(self.dovecot.lda, user, message)

    def fetch(self, user: str = "alice", **kwargs: Any) -> defer.Deferred:
        kwargs.setdefault("tls", "none")
        password = kwargs.pop("password", USERS[user])
        port = self.pop3s_port if kwargs["tls"] == "implicit" else self.dovecot.pop3_port
        return self.client.fetch_mail(self.dovecot.host, port, user, password, **kwargs)

    async def test_fetch_all(self) -> None:
        """fetch_mail retrieves every message Dovecot holds, byte for byte, with Dovecot's UIDLs."""
        await self.deliver("alice", *MESSAGES)
        result = await self.fetch()
        self.assertEqual(result.total, 3)
        self.assertEqual([lf(m.data) for m in result.messages], MESSAGES)
        self.assertEqual([m.size for m in result.messages], [len(crlf(m)) for m in MESSAGES])
        self.assertEqual(len({m.uid for m in result.messages}), 3)
        self.assertEqual(result.deleted, [])
        again = await self.fetch()
        self.assertEqual([m.uid for m in again.messages], [m.uid for m in result.messages])

    async def test_large_message(self) -> None:
        """A 600 KB message of dot-led lines from Dovecot arrives intact (dot-unstuffing)."""
        big = large_message()
        await self.deliver("bob", big)
        result = await self.fetch("bob")
        self.assertEqual([lf(m.data) for m in result.messages], [big])

    async def test_fetch_new_by_uidl(self) -> None:
        """With known_uids from a first fetch, the second retrieves only what arrived since."""
        await self.deliver("alice", DOTTED, EIGHT_BIT)
        first = await self.fetch()
        await self.deliver("alice", PLAIN)
        second = await self.fetch(known_uids=[m.uid for m in first.messages])
        self.assertEqual(second.total, 3)
        self.assertEqual([lf(m.data) for m in second.messages], [PLAIN])
        self.assertEqual(second.messages[0].number, 3)

    async def test_delete(self) -> None:
        """
        delete=True removes the retrieved messages from Dovecot (applied at
        QUIT): a new session finds none and doveadm sees an empty INBOX.
        """
        await self.deliver("alice", DOTTED, PLAIN)
        await self.deliver("bob", EIGHT_BIT)
        result = await self.fetch(delete=True)
        self.assertEqual(len(result.deleted), 2)
        after = await self.fetch()
        self.assertEqual((after.total, after.messages), (0, []))
        remaining = await threads.deferToThread(self.dovecot.fetch, "alice", "uid")
        self.assertEqual(remaining, [])
        bob = await self.fetch("bob")
        self.assertEqual([lf(m.data) for m in bob.messages], [EIGHT_BIT])

    async def test_starttls(self) -> None:
        """
        fetch_mail's STLS path works with Dovecot (certificate verified):
        Dovecot logs the login as made over TLS.
        """
        await self.deliver("alice", *MESSAGES)
        result = await self.fetch(tls="starttls", cafile=self.cert)
        self.assertEqual([lf(m.data) for m in result.messages], MESSAGES)
        logins = [line for line in self.dovecot.log().splitlines() if "Login: user=<alice>" in line]
        self.assertEqual(len(logins), 1, self.dovecot.log())
        self.assertIn(", TLS", logins[0])

    async def test_implicit_tls(self) -> None:
        """fetch_mail over implicit TLS to Dovecot's pop3s listener retrieves every message."""
        await self.deliver("alice", *MESSAGES)
        result = await self.fetch(tls="implicit", cafile=self.cert)
        self.assertEqual([lf(m.data) for m in result.messages], MESSAGES)

    async def test_untrusted_certificate(self) -> None:
        """Without the CA file, fetch_mail refuses Dovecot's certificate and never logs in."""
        with self.assertRaises(SSL.Error):
            await self.fetch(tls="starttls")
        self.assertNotIn("Login: user=<alice>", self.dovecot.log())

    async def test_wrong_password(self) -> None:
        """Dovecot's refusal reaches the caller as POP3ClientError with its [AUTH] code."""
        with self.assertRaises(self.client.POP3ClientError) as caught:
            await self.fetch(password="wrong")
        self.assertIn("[AUTH]", str(caught.exception))
