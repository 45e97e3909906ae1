"""
Assembly: a checked L{Config} becomes a running C{MultiService}.

L{AppnetContext} holds what every service shares (accounts, the cred portal,
the mailbox store, stats, TLS options); each protocol package's C{tap}
module adds its listeners to a C{MultiService} with C{build_service(context,
parent)}. L{make_service} builds the whole suite, as C{twistd appnet} runs it.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python.failure import Failure

from appnet.accounts import AccountChecker, AccountDatabase, AppnetRealm, make_portal
from appnet.config import SERVICES, Config
from appnet.stats import GuardedFactory, StatsRegistry

__all__ = ["AppnetContext", "DatagramListenerService", "ListenerService", "MailJournalService", "listen", "listening_ports", "make_service"]

_log = Logger()


class AppnetContext:
    """
    The shared service layer of one appnet process.

    @ivar config: the checked configuration
    @ivar accounts: the L{AccountDatabase}
    @ivar realm: the L{AppnetRealm} protocols register avatars with
    @ivar portal: the cred portal every protocol logs in through
    @ivar mailbox_store: the L{appnet.mailbox.MaildirStore}
    @ivar file_store: the L{appnet.filesystem.FileStore} (C{<data_dir>/files})
    @ivar stats: the L{StatsRegistry}
    """

    def __init__(self, config: Config, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        from appnet.mailbox import MaildirStore

        self.config = config
        self.reactor = reactor
        os.makedirs(config.data_dir, mode=0o750, exist_ok=True)
        self.accounts = AccountDatabase(
            config.path("users.json"), config["accounts"]["default_quota"]
        )
        self.stats = StatsRegistry()
        self.realm = AppnetRealm()
        self.checker = AccountChecker(
            self.accounts,
            failed_delay=config["accounts"]["failed_login_delay"],
            reactor=reactor,
            cache_ttl=config["accounts"]["auth_cache_ttl"],
        )
        self.portal = make_portal(self.realm, self.checker)
        self.mailbox_store = MaildirStore(
            config.path("mail"),
            quota_for=self.accounts.quota,
            user_exists=self.accounts.exists,
            hostname=config.hostname,
        )
        from appnet.filesystem import FileStore

        self.file_store = FileStore(
            config.path("files"),
            quota_for=self.accounts.quota,
            incoming=config["files"]["incoming"],
            incoming_limit=config["files"]["incoming_limit"],
        )
        self._tls_options: Any = None

    @property
    def tls_options(self) -> Any:
        """Server TLS options (the self-signed pair is made on first use)."""
        if self._tls_options is None:
            from appnet.tls import server_tls_options

            self._tls_options = server_tls_options(self.config)
        return self._tls_options


class MailJournalService(service.Service):
    """
    Runs the mailbox store's delivery journal while the services that
    deliver mail run: opens it (replaying what a crash left) at start-up,
    checkpoints it every C{[mail] journal_checkpoint} seconds in a thread,
    and checkpoints and closes it at shutdown. See
    L{appnet.mailbox.journal}.

    Add it with L{MailJournalService.install}: one per process.
    """

    name = "mail-journal"

    def __init__(self, context: AppnetContext) -> None:
        self.context = context
        self._loop: Any = None
        self._running_checkpoint: defer.Deferred | None = None

    @classmethod
    def install(cls, context: AppnetContext, parent: service.MultiService) -> None:
        """Add the journal service to C{parent} unless disabled or there."""
        if not context.config["mail"]["journal"]:
            return
        try:
            parent.getServiceNamed(cls.name)
        except KeyError:
            cls(context).setServiceParent(parent)

    def startService(self) -> None:
        from twisted.internet.task import LoopingCall

        from appnet.mailbox.journal import JournalBusy

        super().startService()
        store = self.context.mailbox_store
        max_age = self.context.config["mail"]["journal_checkpoint"]
        try:
            store.open_journal(max_age)  # logs what its replay restored
        except JournalBusy:
            _log.warn("Another process holds the mail journal in {path}; delivering "
                      "with an fsync per message", path=store.root)
            return
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.context.reactor
        self._loop.start(max(max_age / 2, 0.05), now=False)

    def _tick(self) -> None:
        store = self.context.mailbox_store
        if self._running_checkpoint is not None or store.journal is None or not store.journal.due():
            return
        from twisted.internet.threads import deferToThreadPool

        reactor = self.context.reactor
        d = deferToThreadPool(reactor, reactor.getThreadPool(), store.checkpoint)
        self._running_checkpoint = d

        def done(result: Any) -> None:
            self._running_checkpoint = None
            if isinstance(result, Failure):
                _log.failure("Mail journal checkpoint failed; retrying", result)

        d.addBoth(done)

    def stopService(self) -> defer.Deferred | None:
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is None:
            return None
        loop.stop()
        from twisted.internet.threads import deferToThreadPool

        reactor = self.context.reactor
        pending = self._running_checkpoint or defer.succeed(None)
        store = self.context.mailbox_store
        return pending.addBoth(lambda _: deferToThreadPool(reactor, reactor.getThreadPool(),
                                                            store.close_journal))


class _Listener(service.Service):
    """
    A service that listens while running and tells where (C{port}, and
    C{listening}, a Deferred); a failed bind at start-up raises, so twistd
    exits with it. Subclasses define C{_bind()}.
    """

    description: str
    reactor: Any

    def __init__(self) -> None:
        self.port: Any = None
        self.listening: defer.Deferred = defer.Deferred()

    def _bind(self) -> Any:
        raise NotImplementedError

    def privilegedStartService(self) -> None:
        # Bind before twistd drops privileges (ports below 1024).
        self._listen()
        super().privilegedStartService()

    def startService(self) -> None:
        self._listen()
        super().startService()

    def _listen(self) -> None:
        if self.port is None:
            self.port = self._bind()
            self.listening.callback(self.port)

    def stopService(self) -> defer.Deferred | None:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            self.listening = defer.Deferred()
            return defer.maybeDeferred(port.stopListening)
        return None


class ListenerService(_Listener):
    """
    Listens on one stream endpoint string (C{tcp:}, C{unix:}, C{systemd:}...).

    Unlike C{strports.service}, it tells which port it bound, so a test can
    listen on port 0.
    """

    def __init__(self, description: str, factory: Any, reactor: Any) -> None:
        super().__init__()
        self.description = description
        self.factory = factory
        self.reactor = reactor

    def _bind(self) -> Any:
        endpoint = endpoints.serverFromString(self.reactor, self.description)
        outcome: list[Any] = []
        endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise RuntimeError(f"{self.description}: endpoint did not bind synchronously")
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]


class DatagramListenerService(_Listener):
    """
    Listens on one UDP address (C{udp:PORT[:interface=ADDR]}).

    Twisted has no UDP endpoints, so this parses the same form the config
    uses and calls C{reactor.listenUDP}.
    """

    def __init__(self, description: str, protocol: Any, reactor: Any) -> None:
        super().__init__()
        self.description = description
        self.protocol = protocol
        self.reactor = reactor
        kind, _, rest = description.partition(":")
        # Colons inside values are escaped as in endpoint strings (\\: for IPv6).
        fields = re.split(r"(?<!\\):", rest)
        if kind != "udp" or not fields or not fields[0].isdigit():
            raise ValueError(f"not a UDP address: {description!r}")
        self.port_number = int(fields[0])
        self.interface = ""
        for field in fields[1:]:
            key, _, value = field.partition("=")
            if key == "interface":
                self.interface = value.replace("\\:", ":")
            else:
                raise ValueError(f"unknown UDP option {key!r} in {description!r}")

    def _bind(self) -> Any:
        return self.reactor.listenUDP(self.port_number, self.protocol, interface=self.interface)


def listening_ports(top: service.MultiService) -> dict[str, Any]:
    """
    Service name -> bound port of every running L{ListenerService} under
    C{top}; names are C{pop3}, C{pop3-tls}, ... (the first endpoint of each).
    """
    ports: dict[str, Any] = {}
    for svc in top:
        if isinstance(svc, _Listener) and svc.port is not None:
            ports.setdefault(svc.name.split(":", 1)[0], svc.port)
    return ports


def listen(
    parent: service.MultiService,
    context: AppnetContext,
    name: str,
    factory: Any,
    *,
    tls: bool = False,
    refusal: bytes = b"",
    tls_options: Any = None,
    endpoints_key: str | None = None,
) -> None:
    """
    Add one listener per endpoint of C{[name] listen} (or C{listen_tls}
    when C{tls}) to C{parent}, each guarded by the service's connection
    limits and counted in its stats.

    @param tls_options: server TLS options for C{tls} listeners instead of
        C{context.tls_options} (FTPS needs a session cache)
    @param endpoints_key: read the endpoints from this key instead (SMTP's
        C{submission_listen}); the listeners are named C{<name>-<key>}
    """
    section = context.config[name]
    guarded = GuardedFactory(
        factory,
        context.stats.service(name),
        max_connections=section["max_connections"],
        max_per_address=section["max_connections_per_address"],
        refusal=refusal,
    )
    if tls:
        from appnet.tls import implicit_tls_factory

        outer: Any = implicit_tls_factory(guarded, tls_options or context.tls_options)
        endpoints = section["listen_tls"]
    else:
        outer = guarded
        endpoints = section["listen"]
    label = f"{name}-tls" if tls else name
    if endpoints_key is not None:
        endpoints = section[endpoints_key]
        label = f"{name}-{endpoints_key}"
    for description in endpoints:
        svc = ListenerService(description, outer, context.reactor)
        svc.setName(f"{label}:{description}")
        svc.setServiceParent(parent)


def make_service(config: Config, reactor: Any = None, only: tuple[str, ...] | None = None) -> service.MultiService:
    """
    Build every enabled service (or just C{only}) over one shared context.

    @return: a C{MultiService}; its C{context} attribute is the
        L{AppnetContext}
    """
    context = AppnetContext(config, reactor)
    top = service.MultiService()
    top.context = context  # type: ignore[attr-defined]
    for name in only or SERVICES:
        if not config[name]["enabled"] and only is None:
            continue
        tap = importlib.import_module(f"appnet.{name}.tap")
        tap.build_service(context, top)
    return top
