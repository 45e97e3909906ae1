"""
C{twistd appnet-ftp}: the FTP server alone (and its part of C{twistd appnet}).
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import Portal
from twisted.protocols.ftp import IFTPShell

from appnet.ftp.server import FTPServerFactory, session_caching
from appnet.ftp.shell import shell_factory
from appnet.options import AppnetOptions
from appnet.service import AppnetContext, listen, make_service

__all__ = ["Options", "makeService", "build_service"]


class Options(AppnetOptions):
    """Options for C{twistd appnet-ftp}: the shared ones plus overrides."""

    optFlags = [
        ["trace", "t", "log an annotated transcript of every session"],
        ["no-anonymous", None, "refuse anonymous logins"],
    ]

    def opt_listen(self, endpoint: str) -> None:
        """FTP listen endpoint (repeatable), e.g. tcp:21:interface=0.0.0.0"""
        self.overrides.setdefault("ftp", {}).setdefault("listen", []).append(endpoint)

    def opt_listen_tls(self, endpoint: str) -> None:
        """implicit-FTPS endpoint (repeatable); 'none' for none"""
        current = self.overrides.setdefault("ftp", {}).setdefault("listen_tls", [])
        if endpoint != "none":
            current.append(endpoint)

    def opt_passive_ports(self, ports: str) -> None:
        """passive port range, e.g. 60000-60100"""
        self.override("ftp", "passive_ports", ports)

    def opt_masquerade_address(self, address: str) -> None:
        """IPv4 address to advertise in PASV replies (behind NAT)"""
        self.override("ftp", "masquerade_address", address)

    def postOptions(self) -> None:
        if self["trace"]:
            self.override("ftp", "trace", True)
        if self["no-anonymous"]:
            self.override("ftp", "anonymous", False)
        super().postOptions()


def build_service(context: AppnetContext, parent: service.MultiService) -> None:
    """Add the FTP and implicit-FTPS listeners for C{context} to C{parent}."""
    cfg = context.config["ftp"]
    context.realm.register(IFTPShell, shell_factory(context.file_store))
    # FTP's own portal: the shared realm and account checker, plus anonymous
    # (which no other protocol accepts).
    checkers: list[Any] = [context.checker]
    if cfg["anonymous"]:
        checkers.append(AllowAnonymousAccess())
    portal = Portal(context.realm, checkers)
    stats = context.stats.service("ftp")
    ports = cfg["passive_ports"]
    tls_options = session_caching(context.tls_options)

    def factory(implicit_tls: bool) -> FTPServerFactory:
        return FTPServerFactory(
            portal,
            stats=stats,
            anonymous=cfg["anonymous"],
            tls_options=tls_options,
            implicit_tls=implicit_tls,
            require_tls=cfg["require_tls"],
            require_tls_session_reuse=cfg["require_tls_session_reuse"],
            hostname=context.config.hostname,
            idle_timeout=cfg["idle_timeout"],
            data_timeout=cfg["data_timeout"],
            passive_ports=range(ports[0], ports[1] + 1) if ports else None,
            masquerade_address=cfg["masquerade_address"],
            trace=cfg["trace"],
            reactor=context.reactor,
        )

    refusal = b"421 too many connections, try again later\r\n"
    listen(parent, context, "ftp", factory(False), refusal=refusal)
    if cfg["listen_tls"]:
        listen(parent, context, "ftp", factory(True), tls=True, refusal=refusal,
               tls_options=tls_options)


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """Build the FTP service from parsed options."""
    return make_service(options.config, reactor, only=("ftp",))
