"""
C{twistd appnet-smtp}: the SMTP server alone (and its part of C{twistd appnet}).

Three kinds of listener share one L{Delivery}: MX (C{[smtp] listen}),
submission (C{submission_listen}) and smtps (C{listen_tls}, implicit TLS).
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.logger import Logger

from appnet.options import AppnetOptions
from appnet.service import AppnetContext, MailJournalService, listen, make_service
from appnet.smtp.delivery import Delivery, IOutboundQueue
from appnet.smtp.server import (
    MX,
    SUBMISSION,
    ISMTPSubmitter,
    SMTPServerFactory,
    Submitter,
)

__all__ = ["Options", "build_service", "local_domains", "makeService"]

_log = Logger()


class Options(AppnetOptions):
    """Options for C{twistd appnet-smtp}: the shared ones plus overrides."""

    optFlags = [["trace", "t", "log an annotated transcript of every session"]]

    def _append(self, key: str, value: str) -> None:
        current = self.overrides.setdefault("smtp", {}).setdefault(key, [])
        if value != "none":
            current.append(value)

    def opt_listen(self, endpoint: str) -> None:
        """MX listen endpoint (repeatable), e.g. tcp:25:interface=0.0.0.0"""
        self._append("listen", endpoint)

    def opt_submission_listen(self, endpoint: str) -> None:
        """submission endpoint (repeatable); 'none' for none"""
        self._append("submission_listen", endpoint)

    def opt_listen_tls(self, endpoint: str) -> None:
        """implicit-TLS (smtps) endpoint (repeatable); 'none' for none"""
        self._append("listen_tls", endpoint)

    def opt_local_domain(self, domain: str) -> None:
        """a domain delivered here (repeatable)"""
        self._append("local_domains", domain)

    def postOptions(self) -> None:
        if self["trace"]:
            self.override("smtp", "trace", True)
        super().postOptions()


def local_domains(context: AppnetContext) -> list[str]:
    """C{[smtp] local_domains}, or C{localhost} and the host name when empty."""
    configured = context.config["smtp"]["local_domains"]
    if configured:
        return list(configured)
    return list(dict.fromkeys(["localhost", context.config.hostname]))


def _outbound_queue(context: AppnetContext, parent: service.MultiService, delivery: Delivery) -> IOutboundQueue | None:
    try:
        from appnet.smtp.relay import build_relay
    except ImportError:
        _log.warn("appnet.smtp.relay not available: mail to remote domains is refused")
        return None
    return build_relay(context, parent, delivery.is_local_domain)


def build_service(context: AppnetContext, parent: service.MultiService) -> None:
    """Add the MX, submission and smtps listeners for C{context} to C{parent}."""
    cfg = context.config["smtp"]
    MailJournalService.install(context, parent)
    context.realm.register(ISMTPSubmitter, lambda name: (Submitter(name), lambda: None))
    delivery = Delivery(
        context.mailbox_store,
        user_exists=context.accounts.exists,
        quota_for=context.accounts.quota,
        local_domains=local_domains(context),
        hostname=context.config.hostname,
    )
    delivery.queue = _outbound_queue(context, parent, delivery)
    stats = context.stats.service("smtp")

    def factory(role: str, implicit_tls: bool) -> SMTPServerFactory:
        return SMTPServerFactory(
            delivery,
            role=role,
            portal=context.portal,
            stats=stats,
            tls_options=context.tls_options,
            implicit_tls=implicit_tls,
            hostname=context.config.hostname,
            idle_timeout=cfg["idle_timeout"],
            max_message_size=cfg["max_message_size"] or 0,
            max_recipients=cfg["max_recipients"],
            max_line=cfg["max_line"],
            plaintext_auth=cfg["plaintext_auth"],
            trace=cfg["trace"],
            reactor=context.reactor,
        )

    refusal = b"421 4.7.0 too many connections, try again later\r\n"
    listen(parent, context, "smtp", factory(MX, False), refusal=refusal)
    if cfg["submission_listen"]:
        listen(parent, context, "smtp", factory(SUBMISSION, False), refusal=refusal, endpoints_key="submission_listen")
    if cfg["listen_tls"]:
        listen(parent, context, "smtp", factory(SUBMISSION, True), tls=True)


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """Build the SMTP service from parsed options."""
    return make_service(options.config, reactor, only=("smtp",))
