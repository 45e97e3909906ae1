"""
C{twistd appnet-pop3}: the POP3 server alone (and its part of C{twistd appnet}).
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.mail.pop3 import IMailbox

from appnet.options import AppnetOptions
from appnet.pop3.maildrop import maildrop_avatar_factory
from appnet.pop3.server import POP3ServerFactory
from appnet.service import AppnetContext, listen, make_service

__all__ = ["Options", "makeService", "build_service"]


class Options(AppnetOptions):
    """Options for C{twistd appnet-pop3}: the shared ones plus overrides."""

    optFlags = [["trace", "t", "log an annotated transcript of every session"]]

    def opt_listen(self, endpoint: str) -> None:
        """POP3 listen endpoint (repeatable), e.g. tcp:110:interface=0.0.0.0"""
        self.overrides.setdefault("pop3", {}).setdefault("listen", []).append(endpoint)

    def opt_listen_tls(self, endpoint: str) -> None:
        """implicit-TLS (pop3s) endpoint (repeatable); 'none' for none"""
        current = self.overrides.setdefault("pop3", {}).setdefault("listen_tls", [])
        if endpoint != "none":
            current.append(endpoint)

    def postOptions(self) -> None:
        if self["trace"]:
            self.override("pop3", "trace", True)
        super().postOptions()


def build_service(context: AppnetContext, parent: service.MultiService) -> None:
    """Add the POP3 and POP3S listeners for C{context} to C{parent}."""
    cfg = context.config["pop3"]
    context.realm.register(IMailbox, maildrop_avatar_factory(context.mailbox_store))
    stats = context.stats.service("pop3")

    def factory(implicit_tls: bool) -> POP3ServerFactory:
        return POP3ServerFactory(
            context.portal,
            stats=stats,
            tls_options=context.tls_options,
            implicit_tls=implicit_tls,
            hostname=context.config.hostname,
            idle_timeout=cfg["idle_timeout"],
            max_line=cfg["max_line"],
            plaintext_auth=cfg["plaintext_auth"],
            trace=cfg["trace"],
            reactor=context.reactor,
        )

    refusal = b"-ERR [SYS/TEMP] too many connections, try again later\r\n"
    listen(parent, context, "pop3", factory(False), refusal=refusal)
    if cfg["listen_tls"]:
        listen(parent, context, "pop3", factory(True), tls=True)


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """Build the POP3 service from parsed options."""
    return make_service(options.config, reactor, only=("pop3",))
