"""
Our SMTP client (L{appnet.smtp.client.send_mail}) against third-party
servers: aiosmtpd (Python; STARTTLS, implicit TLS, AUTH, SMTPUTF8,
8BITMIME, several recipients) and Postfix's C{smtp-sink}.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

from twisted.internet import defer, endpoints, error, protocol, reactor, task, threads
from twisted.trial import unittest

from appnet import mime
from appnet.smtp.client import SMTPClientError, send_mail
from appnet.tls import ensure_certificate
from tests.support import (
    appnet_argv,
    free_tcp_port,
    interop_required,
    require_tool,
    run_process,
    subprocess_env,
)

# The aiosmtpd server the tests talk to: writes each message as N.eml with
# its envelope in N.json; refuses recipients at nobody@...; AUTH alice/secret.
_SERVER = r'''
import json, os, ssl, sys, threading
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

out, port, mode, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)

class Handler:
    async def handle_RCPT(self, server, session, envelope, address, options):
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        n = len(os.listdir(out)) // 2
        with open(os.path.join(out, f"{n}.eml"), "wb") as f:
            f.write(envelope.original_content)
        with open(os.path.join(out, f"{n}.json"), "w") as f:
            json.dump({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                       "options": envelope.mail_options,
                       "tls": server.transport.get_extra_info("ssl_object") is not None,
                       "user": session.auth_data.login.decode() if session.auth_data else None}, f)
        return f"250 2.0.0 queued as {n}"

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"alice", b"secret")
    return AuthResult(success=ok, handled=False, auth_data=auth_data)

kwargs = dict(enable_SMTPUTF8=True, authenticator=authenticator, auth_require_tls=True,
              decode_data=False)
if mode == "implicit":
    kwargs["ssl_context"] = context
    kwargs["auth_require_tls"] = False  # aiosmtpd only counts STARTTLS as TLS
else:
    kwargs["tls_context"] = context
    kwargs["require_starttls"] = mode == "starttls-required"
controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
'''


def _aiosmtpd_available() -> None:
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        reason = "aiosmtpd not installed (pip install appnet[test])"
        if interop_required():
            raise AssertionError(reason)
        raise unittest.SkipTest(reason)


def _messages(directory: str) -> list[tuple[dict, bytes]]:
    found = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json")),
                       key=lambda p: int(os.path.basename(p).split(".")[0])):
        with open(path) as f:
            envelope = json.load(f)
        with open(path[:-5] + ".eml", "rb") as f:
            found.append((envelope, f.read()))
    return found


class _Aiosmtpd(unittest.TestCase):
    """Runs the aiosmtpd server above for each test."""

    mode = "starttls"

    def setUp(self) -> defer.Deferred:
        _aiosmtpd_available()
        self.out = self.mktemp()
        os.makedirs(self.out)
        self.cert, key = ensure_certificate(self.mktemp(), "localhost")
        self.port = free_tcp_port()
        script = os.path.join(self.mktemp() + ".py")
        with open(script, "w") as f:
            f.write(_SERVER)
        self.server = subprocess.Popen(
            [sys.executable, script, self.out, str(self.port), self.mode, self.cert, key],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(self._stop)
        return threads.deferToThread(self.server.stdout.readline).addCallback(self._ready)

    def _ready(self, line: bytes) -> None:
        if line.strip() != b"ready":
            self.server.kill()
            self.fail(f"aiosmtpd did not start: {self.server.stderr.read()!r}")

    def _stop(self) -> None:
        self.server.stdin.close()
        try:
            self.server.wait(10)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        self.server.stdout.close()
        self.server.stderr.close()

    def send(self, sender: str, recipients: list[str], message, **kw) -> defer.Deferred:
        kw.setdefault("trust_root", self.cert)
        return send_mail("127.0.0.1", self.port, sender, recipients, message, reactor=reactor,
                         timeout=20, **kw)



class AiosmtpdTests(_Aiosmtpd):
    """send_mail against aiosmtpd in a subprocess."""

    @defer.inlineCallbacks
    def test_starttls_auth_several_recipients(self):
        """
        STARTTLS (certificate verified against the server's PEM), AUTH,
        three recipients of which one is refused: the other two get the
        message, the refusal is reported per recipient.
        """
        msg = mime.compose("alice@example.org", ["bob@example.org", "carol@example.org"],
                           "Hello", "Hi both.\n")
        result = yield self.send("alice@example.org",
                                 ["bob@example.org", "nobody@example.org", "carol@example.org"],
                                 msg, username="alice", password="secret")
        self.assertEqual(sorted(result.accepted), ["bob@example.org", "carol@example.org"])
        self.assertEqual(result.refused, {"nobody@example.org": (550, "5.1.1 no such user")})
        self.assertEqual(result.code, 250)
        [(envelope, data)] = _messages(self.out)
        self.assertEqual(envelope["to"], ["bob@example.org", "carol@example.org"])
        self.assertTrue(envelope["tls"])
        self.assertEqual(envelope["user"], "alice")
        self.assertIn(f"SIZE={len(mime.to_bytes(msg))}", envelope["options"])
        self.assertEqual(mime.body_text(mime.parse(data)), "Hi both.\n")

    @defer.inlineCallbacks
    def test_wrong_password(self):
        """A refused login is a permanent failure at the auth stage; nothing is sent."""
        with self.assertRaises(SMTPClientError) as caught:
            yield self.send("alice@example.org", ["bob@example.org"], b"Subject: x\r\n\r\nx\r\n",
                            username="alice", password="wrong")
        self.assertEqual(caught.exception.code, 535)
        self.assertTrue(caught.exception.permanent)
        self.assertEqual(caught.exception.stage, "auth")
        self.assertEqual(_messages(self.out), [])

    @defer.inlineCallbacks
    def test_smtputf8_and_8bitmime(self):
        """
        Non-ASCII addresses go with SMTPUTF8 and raw UTF-8 headers; an
        8-bit body goes with BODY=8BITMIME; the bytes arrive unchanged.
        """
        msg = mime.compose("jörg@exämple.org", "zoë@example.org", "Grüße", "Tschüß\n")
        result = yield self.send("jörg@exämple.org", ["zoë@example.org"], msg)
        self.assertEqual(list(result.accepted), ["zoë@example.org"])
        raw = "Subject: 8 bit\r\n\r\nnaïve café\r\n".encode()
        yield self.send("alice@example.org", ["bob@example.org"], raw)
        (env1, data1), (env2, data2) = _messages(self.out)
        self.assertIn("SMTPUTF8", env1["options"])
        self.assertEqual(env1["from"], "jörg@exämple.org")
        self.assertIn("From: jörg@exämple.org".encode(), data1)
        self.assertEqual(str(mime.parse(data1)["subject"]), "Grüße")
        self.assertIn("BODY=8BITMIME", env2["options"])
        self.assertNotIn("SMTPUTF8", env2["options"])
        self.assertEqual(data2, raw)

    @defer.inlineCallbacks
    def test_dot_stuffing_and_line_ends(self):
        """Lines starting with a dot and bare LF line ends arrive as CRLF text, dots intact."""
        raw = b"Subject: dots\n\n.\n..two\n.leading\nend"
        yield self.send("alice@example.org", ["bob@example.org"], raw)
        [(_, data)] = _messages(self.out)
        self.assertEqual(data, b"Subject: dots\r\n\r\n.\r\n..two\r\n.leading\r\nend\r\n")

    @defer.inlineCallbacks
    def test_untrusted_certificate(self):
        """Without the server's certificate as trust root, STARTTLS fails (transient)."""
        with self.assertRaises(SMTPClientError) as caught:
            yield self.send("alice@example.org", ["bob@example.org"], b"x\r\n", trust_root=None)
        self.assertFalse(caught.exception.permanent)
        self.assertEqual(_messages(self.out), [])

    @defer.inlineCallbacks
    def test_insecure(self):
        """verify=False accepts the self-signed certificate."""
        result = yield self.send("alice@example.org", ["bob@example.org"], b"x\r\n",
                                 trust_root=None, verify=False)
        self.assertEqual(result.code, 250)
        self.assertTrue(_messages(self.out)[0][0]["tls"])


class AiosmtpdImplicitTLSTests(AiosmtpdTests):
    """The same against aiosmtpd speaking TLS from the first byte (port 465 style)."""

    mode = "implicit"

    def send(self, sender: str, recipients: list[str], message, **kw) -> defer.Deferred:
        kw.setdefault("tls", "implicit")
        return super().send(sender, recipients, message, **kw)


class AiosmtpdPlaintextTests(AiosmtpdTests):
    """aiosmtpd with STARTTLS optional: the policies around cleartext."""

    mode = "starttls-optional"

    @defer.inlineCallbacks
    def test_no_tls(self):
        """tls="none" sends in cleartext."""
        yield self.send("alice@example.org", ["bob@example.org"], b"x\r\n", tls="none")
        self.assertFalse(_messages(self.out)[0][0]["tls"])

    @defer.inlineCallbacks
    def test_opportunistic_takes_tls(self):
        """tls="opportunistic" uses the offered STARTTLS without checking the certificate."""
        yield self.send("alice@example.org", ["bob@example.org"], b"x\r\n",
                        tls="opportunistic", trust_root=None)
        self.assertTrue(_messages(self.out)[0][0]["tls"])


class MailSendCommandTests(_Aiosmtpd):
    """C{appnet mail send} against aiosmtpd (STARTTLS required, AUTH)."""

    def mail_send(self, *argv: str, stdin: bytes, **env: str) -> defer.Deferred:
        base = ["mail", "send", "--server", f"127.0.0.1:{self.port}",
                "--cafile", os.path.abspath(self.cert),
                "--from", "alice@example.org", "--user", "alice"]
        environment = subprocess_env(**env)
        if "APPNET_PASSWORD" not in env:
            environment.pop("APPNET_PASSWORD", None)
        return run_process(appnet_argv() + base + list(argv), stdin=stdin, env=environment,
                           cwd=self.mktemp_dir())

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path

    @defer.inlineCallbacks
    def test_send_with_attachment(self):
        """
        Password piped before the body, two recipients (one refused), an
        attachment: one line per recipient, exit status 1 for the refusal,
        the message as composed arrives.
        """
        attachment = os.path.abspath(os.path.join(self.mktemp_dir(), "Übersicht.pdf"))
        with open(attachment, "wb") as f:
            f.write(b"%PDF-1.4 \x00\xff")
        done = yield self.mail_send("--to", "bob@example.org", "--to", "nobody@example.org",
                                    "--subject", "Grüße", "--attach", attachment,
                                    stdin="secret\nHallo Bob,\nbis später.\n".encode())
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertEqual(done.stdout.decode().splitlines()[:2], [
            "bob@example.org: accepted (250 2.1.5 OK)",
            "nobody@example.org: refused (550 5.1.1 no such user)",
        ])
        [(envelope, data)] = _messages(self.out)
        self.assertEqual((envelope["to"], envelope["user"], envelope["tls"]),
                         (["bob@example.org"], "alice", True))
        msg = mime.parse(data)
        self.assertEqual(msg["Subject"], "Grüße")
        self.assertEqual(mime.body_text(msg), "Hallo Bob,\nbis später.\n")
        self.assertEqual(mime.attachments(msg),
                         [("Übersicht.pdf", "application/pdf", b"%PDF-1.4 \x00\xff")])

    @defer.inlineCallbacks
    def test_password_from_environment(self):
        """APPNET_PASSWORD supplies the password; every recipient accepted: exit 0."""
        done = yield self.mail_send("--to", "bob@example.org", "--cc", "carol@example.org",
                                    stdin=b"body\n", APPNET_PASSWORD="secret")
        self.assertEqual(done.returncode, 0, done.stderr)
        [(envelope, data)] = _messages(self.out)
        self.assertEqual(envelope["to"], ["bob@example.org", "carol@example.org"])
        self.assertEqual(mime.parse(data)["Cc"], "carol@example.org")

    @defer.inlineCallbacks
    def test_failure_exit_status(self):
        """A refused login: one line on stderr naming the stage and the reply, exit 1."""
        done = yield self.mail_send("--to", "bob@example.org", stdin=b"wrong\nbody\n")
        self.assertEqual(done.returncode, 1)
        self.assertIn(b"appnet: mail send: auth: 535", done.stderr)
        self.assertNotIn(b"Traceback", done.stderr)
        self.assertEqual(_messages(self.out), [])


class SMTPSinkTests(unittest.TestCase):
    """send_mail against Postfix's smtp-sink (PIPELINING, 8BITMIME, SIZE)."""

    async def start_sink(self, *options: str) -> None:
        """Start smtp-sink on a free port; return once it accepts connections."""
        sink = require_tool("smtp-sink")
        self.port = free_tcp_port()
        argv = [sink, *options, f"127.0.0.1:{self.port}", "10"]
        if os.geteuid() == 0:
            argv[1:1] = ["-u", "root"]
        self.sink = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(self._stop)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        deadline = time.monotonic() + 10
        while True:  # poll with a bounded deadline
            try:
                probe = await endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
            except error.ConnectError:
                if self.sink.poll() is not None or time.monotonic() > deadline:
                    self.sink.kill()
                    self.fail(f"smtp-sink did not start: {self.sink.stderr.read()!r}")
                await task.deferLater(reactor, 0.05, lambda: None)
            else:
                probe.transport.loseConnection()
                return

    def _stop(self) -> None:
        self.sink.terminate()
        self.sink.wait()
        self.sink.stdout.close()
        self.sink.stderr.close()

    @defer.inlineCallbacks
    def test_pipelined_capture(self):
        """
        Several recipients, pipelined; smtp-sink's dump (-d) holds the
        message, every RCPT and our dot-stuffed lines undone.
        """
        dump = self.mktemp()
        os.makedirs(dump)
        yield defer.Deferred.fromCoroutine(self.start_sink("-d", os.path.join(dump, "%M.")))
        msg = mime.compose("alice@example.org", ["bob@example.org", "carol@example.org"],
                           "via sink", ".dotted first line\n\nnaïve\n")
        result = yield send_mail("127.0.0.1", self.port, "alice@example.org",
                                 ["bob@example.org", "carol@example.org", "dave@example.org"],
                                 msg, tls="none", reactor=reactor, timeout=20)
        self.assertEqual(len(result.accepted), 3)
        self.assertEqual(result.refused, {})
        self.assertEqual(result.code, 250)
        [path] = glob.glob(os.path.join(dump, "*"))
        with open(path, "rb") as f:
            dumped = f.read()
        for rcpt in (b"bob@example.org", b"carol@example.org", b"dave@example.org"):
            self.assertIn(b"X-Rcpt-Args: <" + rcpt, dumped.replace(b"X-Client-Proto", b""))
        self.assertIn(mime.to_bytes(msg).replace(b"\r\n", b"\n"), dumped.replace(b"\r\n", b"\n"))

    @defer.inlineCallbacks
    def test_hard_bounce_recipient(self):
        """
        smtp-sink refusing every RCPT (-f, which also turns PIPELINING off):
        every recipient refused, no DATA, no exception.
        """
        yield defer.Deferred.fromCoroutine(self.start_sink("-f", "rcpt", "-B", "550 5.1.1 refused by sink"))
        result = yield send_mail("127.0.0.1", self.port, "alice@example.org",
                                 ["bob@example.org", "carol@example.org"], b"x\r\n",
                                 tls="none", reactor=reactor, timeout=20)
        self.assertEqual(result.accepted, {})
        self.assertEqual(set(result.refused), {"bob@example.org", "carol@example.org"})
        self.assertEqual(result.refused["bob@example.org"], (550, "5.1.1 refused by sink"))
        self.assertIsNone(result.code)

    @defer.inlineCallbacks
    def test_soft_refused_mail(self):
        """A 4xx to MAIL FROM (-r mail) is a transient failure at the mail stage."""
        yield defer.Deferred.fromCoroutine(self.start_sink("-r", "mail"))
        with self.assertRaises(SMTPClientError) as caught:
            yield send_mail("127.0.0.1", self.port, "alice@example.org", ["bob@example.org"],
                            b"x\r\n", tls="none", reactor=reactor, timeout=20)
        self.assertEqual((caught.exception.code, caught.exception.permanent, caught.exception.stage),
                         (450, False, "mail"))


class AppnetServerTests(unittest.TestCase):
    """The client and C{appnet mail send} against appnet's own server (appnet.testing)."""

    async def setUp(self) -> None:
        from appnet.testing import start_mail_server

        self.server = await start_mail_server(
            self, users={"alice": "pw-alice", "bob": "pw-bob"})

    async def test_submission_starttls_auth(self):
        """
        Submission port: STARTTLS verified against the server's certificate,
        AUTH, a local recipient accepted and an unknown one refused; the
        message with its attachment reaches bob's INBOX.
        """
        msg = mime.compose("alice@localhost", ["bob@localhost"], "Grüße", "Hallo Bob\n",
                           attachments=[("data.bin", "application/octet-stream", b"\0\xff")])
        result = await send_mail(self.server.host, self.server.submission_port,
                                 "alice@localhost", ["bob@localhost", "nobody@localhost"], msg,
                                 username="alice", password="pw-alice",
                                 trust_root=self.server.cert_path, reactor=reactor, timeout=20)
        self.assertEqual(list(result.accepted), ["bob@localhost"])
        self.assertEqual(result.refused["nobody@localhost"][0], 550)
        self.assertEqual(result.code, 250)
        [received] = await self.server.wait_for("bob", 1)
        self.assertEqual(received["Subject"], "Grüße")
        self.assertEqual(mime.body_text(received), "Hallo Bob\n")
        self.assertEqual(mime.attachments(received),
                         [("data.bin", "application/octet-stream", b"\0\xff")])

    async def test_smtps_implicit(self):
        """The implicit-TLS port takes the same session."""
        result = await send_mail(self.server.host, self.server.smtps_port, "alice@localhost",
                                 ["bob@localhost"], b"Subject: tls\r\n\r\nimplicit\r\n",
                                 tls="implicit", username="alice", password="pw-alice",
                                 trust_root=self.server.cert_path, reactor=reactor, timeout=20)
        self.assertEqual(result.code, 250)
        [received] = await self.server.wait_for("bob", 1)
        self.assertEqual(mime.body_text(received), "implicit\n")

    async def test_mx_without_login(self):
        """The MX port takes mail for a local user with no login, in cleartext."""
        result = await send_mail(self.server.host, self.server.smtp_port, "carol@example.org",
                                 ["alice@localhost"], b"Subject: mx\r\n\r\n.dot\r\n",
                                 tls="none", reactor=reactor, timeout=20)
        self.assertEqual(list(result.accepted), ["alice@localhost"])
        [received] = await self.server.wait_for("alice", 1)
        self.assertEqual(mime.body_text(received), ".dot\n")

    async def test_mail_send_trusts_appnet_certificate(self):
        """
        C{appnet mail send} to a loopback server with no --cafile trusts the
        certificate in the data directory (appnet's own), so it just works.
        """
        cwd = self.mktemp()
        os.makedirs(cwd)
        done = await run_process(
            appnet_argv() + ["--data", os.path.abspath(self.server.data_dir), "mail", "send",
                             "--server", f"127.0.0.1:{self.server.submission_port}",
                             "--user", "alice", "--from", "alice@localhost",
                             "--to", "bob@localhost", "--subject", "cli"],
            stdin=b"from the command line\n", env=subprocess_env(APPNET_PASSWORD="pw-alice"),
            cwd=cwd)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"bob@localhost: accepted (250", done.stdout)
        [received] = await self.server.wait_for("bob", 1)
        self.assertEqual(mime.body_text(received), "from the command line\n")
