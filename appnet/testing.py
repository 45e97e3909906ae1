"""
Real appnet servers inside your trial tests, in one line.

    from appnet.testing import start_mail_server

    class MyTests(unittest.TestCase):
        async def test_signup_mail(self):
            server = await start_mail_server(self, users={"alice": "pw"})
            # ... point the code under test at server.host, server.smtp_port ...
            [message] = await server.wait_for("alice", 1)
            self.assertEqual(message["Subject"], "Welcome")

L{start_mail_server} starts the mail services (SMTP: MX, submission and
smtps; POP3 and POP3S) on 127.0.0.1, port 0, over a temporary data
directory with the users you name, and stops them when the test ends (it
registers C{addCleanup} on the test case you pass). C{received(user)}
returns the user's messages parsed with Python's C{email} package;
C{wait_for(user, count)} is a Deferred that fires once that many have
arrived. See docs/testing.md.
"""

from __future__ import annotations

import email
import email.policy
import os
import tempfile
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer, task

from appnet import accounts
from appnet.config import load_config
from appnet.service import listening_ports, make_service

__all__ = ["start_mail_server", "start_services", "MailServerFixture", "ServiceFixture", "MAIL_SERVICES"]

#: The services L{start_mail_server} starts.
MAIL_SERVICES = ("smtp", "pop3")


def start_services(
    only: tuple[str, ...],
    overrides: dict[str, dict[str, Any]],
    *,
    testcase: Any = None,
    users: dict[str, str] | None = None,
    data_dir: str | None = None,
    reactor: Any = None,
    fast_hashes: bool = True,
    before_config: Any = None,
) -> tuple[Any, str, Any]:
    """
    Build and start some of appnet's services over a temporary data dir,
    the building block of every C{start_*_server} fixture.

    @param only: the services to start, e.g. C{("pop3",)}
    @param overrides: section -> key -> value, on top of built-in defaults
        (listen on C{tcp:0:interface=127.0.0.1} here)
    @param users: name -> password to create
    @param fast_hashes: hash passwords cheaply (tests only)
    @param before_config: called with the data dir before the config is
        loaded; may return more overrides (e.g. a test certificate)
    @return: C{(top service, data_dir, reactor)}
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    if data_dir is None:
        if testcase is not None:
            data_dir = os.path.abspath(testcase.mktemp())
        else:
            data_dir = tempfile.mkdtemp(prefix="appnet-test-")
    os.makedirs(data_dir, exist_ok=True)
    overrides = {section: dict(keys) for section, keys in overrides.items()}
    if before_config is not None:
        for section, keys in (before_config(data_dir) or {}).items():
            overrides.setdefault(section, {}).update(keys)
    config = load_config(data_dir=data_dir, overrides=overrides)
    top = make_service(config, reactor, only=only)
    saved = accounts.SCRYPT_N
    if fast_hashes:
        accounts.SCRYPT_N = 1 << 4
    try:
        for name, password in (users or {}).items():
            top.context.accounts.add(name, password)
    finally:
        accounts.SCRYPT_N = saved
    top.startService()
    return top, data_dir, reactor


class ServiceFixture:
    """Base of the test fixtures: running services that stop at test end."""

    def __init__(self, top: Any) -> None:
        self._top = top
        self.context = top.context

    def stop(self) -> defer.Deferred:
        """Stop every service (also done for you at the end of the test)."""
        if not self._top.running:
            return defer.succeed(None)
        return defer.maybeDeferred(self._top.stopService)


class MailServerFixture(ServiceFixture):
    """
    Running mail services for one test.

    @ivar host: C{"127.0.0.1"}
    @ivar smtp_port: the SMTP MX port (mail for local users from anyone)
    @ivar submission_port: the submission port (STARTTLS, AUTH required)
    @ivar smtps_port: the implicit-TLS submission port
    @ivar pop3_port: the POP3 (STLS-capable) port
    @ivar pop3s_port: the implicit-TLS POP3 port
    @ivar data_dir: the temporary data directory
    @ivar cert_path: the server's self-signed certificate (PEM), to trust
    @ivar context: the L{appnet.service.AppnetContext}
    """

    host = "127.0.0.1"

    def __init__(self, top: Any, data_dir: str, reactor: Any) -> None:
        super().__init__(top)
        self.data_dir = data_dir
        self.reactor = reactor
        ports = listening_ports(top)
        self.ports = {name: port.getHost().port for name, port in ports.items()}
        self.smtp_port = self.ports.get("smtp")
        self.submission_port = self.ports.get("smtp-submission_listen")
        self.smtps_port = self.ports.get("smtp-tls")
        self.pop3_port = self.ports.get("pop3")
        self.pop3s_port = self.ports.get("pop3-tls")
        self.cert_path = os.path.join(data_dir, "tls", "cert.pem")

    def add_user(self, name: str, password: str, quota: int | None = None) -> None:
        """Create an account."""
        self.context.accounts.add(name, password, quota)

    def deliver(self, user: str, message: bytes | EmailMessage) -> defer.Deferred:
        """Put a message straight into a user's INBOX (no SMTP involved)."""
        if isinstance(message, EmailMessage):
            message = message.as_bytes(policy=email.policy.SMTP)
        return self.context.mailbox_store.deliver(user, message)

    def raw_received(self, user: str, folder: str = "INBOX") -> list[bytes]:
        """The user's messages as stored, oldest first."""
        f = self.context.mailbox_store.folder(user, folder)
        return [f.read_message(m.uid) for m in f.messages()]

    def received(self, user: str, folder: str = "INBOX") -> list[EmailMessage]:
        """The user's messages, parsed, oldest first."""
        return [
            email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
            for raw in self.raw_received(user, folder)
        ]

    def wait_for(self, user: str, count: int, timeout: float = 10.0) -> defer.Deferred:
        """
        Fire with L{received} once the user has at least C{count} messages;
        fail with C{defer.TimeoutError} after C{timeout} seconds.
        """

        async def poll() -> list[EmailMessage]:
            while True:
                messages = self.received(user)
                if len(messages) >= count:
                    return messages
                await task.deferLater(self.reactor, 0.02, lambda: None)

        d = defer.Deferred.fromCoroutine(poll())
        d.addTimeout(timeout, self.reactor)
        return d



async def start_mail_server(
    testcase: Any = None,
    users: dict[str, str] | None = None,
    data_dir: str | None = None,
    trace: bool = False,
    reactor: Any = None,
    fast_hashes: bool = True,
    failed_login_delay: float = 0.0,
    local_domains: tuple[str, ...] = (),
    config: dict[str, dict[str, Any]] | None = None,
) -> MailServerFixture:
    """
    Start appnet's mail services on loopback port 0.

    @param testcase: a trial test case; the servers stop at its cleanup and
        the data dir lives under its temp dir
    @param users: name -> password to create
    @param trace: log annotated transcripts of every session
    @param fast_hashes: hash passwords cheaply (tests only) so creating
        users costs microseconds, not scrypt's full cost
    @param failed_login_delay: seconds a failed login waits (0 in tests)
    @param local_domains: the mail domains delivered locally (default:
        C{localhost} and the host name), e.g. C{("example.com",)} so that
        C{alice@example.com} reaches user C{alice}
    @param config: more settings, section -> key -> value, as in the TOML
        file (e.g. C{{"smtp": {"max_message_size": 10_000}}})
    @return: (via await / Deferred) the running L{MailServerFixture}
    """
    local = "tcp:0:interface=127.0.0.1"
    overrides: dict[str, dict[str, Any]] = {
        "smtp": {
            "listen": [local],
            "submission_listen": [local],
            "listen_tls": [local],
            "local_domains": list(local_domains),
            "trace": trace,
        },
        "pop3": {"listen": [local], "listen_tls": [local], "trace": trace},
        "accounts": {"failed_login_delay": float(failed_login_delay)},
    }
    for section, keys in (config or {}).items():
        overrides.setdefault(section, {}).update(keys)
    top, data_dir, reactor = start_services(
        MAIL_SERVICES,
        overrides,
        testcase=testcase,
        users=users,
        data_dir=data_dir,
        reactor=reactor,
        fast_hashes=fast_hashes,
    )
    fixture = MailServerFixture(top, data_dir, reactor)
    if testcase is not None:
        testcase.addCleanup(fixture.stop)
    return fixture
