"""
C{twistd appnet-dns}: the DNS server alone (and its part of C{twistd appnet}).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.logger import Logger

from appnet.dns.client import DNSClient, parse_server
from appnet.dns.forwarder import AnswerCache, Forwarder
from appnet.dns.notify import Notifier
from appnet.dns.server import (
    DNSDatagramProtocol,
    DNSEngine,
    DNSStreamFactory,
    RateLimiter,
    StreamCloser,
    ZoneWatcher,
    parse_networks,
)
from appnet.dns.zones import Zone, ZoneError, automatic_zone, load_zones
from appnet.options import AppnetOptions
from appnet.service import AppnetContext, DatagramListenerService, ListenerService, make_service
from appnet.stats import GuardedFactory

__all__ = ["Options", "makeService", "build_service", "own_domain"]

_log = Logger()


class Options(AppnetOptions):
    """Options for C{twistd appnet-dns}: the shared ones plus overrides."""

    optFlags = [["trace", "t", "log one line per query"]]

    def opt_listen_udp(self, endpoint: str) -> None:
        """UDP address (repeatable), e.g. udp:53:interface=0.0.0.0"""
        self.overrides.setdefault("dns", {}).setdefault("listen_udp", []).append(endpoint)

    def opt_listen_tcp(self, endpoint: str) -> None:
        """TCP endpoint (repeatable), e.g. tcp:53:interface=0.0.0.0"""
        self.overrides.setdefault("dns", {}).setdefault("listen_tcp", []).append(endpoint)

    def opt_zones(self, directory: str) -> None:
        """directory of zone files (ORIGIN.zone)"""
        self.override("dns", "zones_dir", directory)

    def opt_forwarder(self, server: str) -> None:
        """upstream server IP[:PORT] for other names (repeatable)"""
        self.overrides.setdefault("dns", {}).setdefault("forwarders", []).append(server)

    def postOptions(self) -> None:
        if self["trace"]:
            self.override("dns", "trace", True)
        super().postOptions()


def own_domain(config: Any) -> str:
    """C{dns.domain}, or the parent of C{hostname} (the hostname itself if it has one label)."""
    domain = config["dns"]["domain"]
    if domain:
        return domain
    host = config.hostname
    return host.split(".", 1)[1] if "." in host else host


def build_service(context: AppnetContext, parent: service.MultiService) -> DNSEngine:
    """Add the DNS listeners and the zone watcher for C{context} to C{parent}."""
    config = context.config
    cfg = config["dns"]
    stats = context.stats.service("dns")
    zones_dir = cfg["zones_dir"]
    if not os.path.isabs(zones_dir):
        zones_dir = config.path(zones_dir)

    def own_zone() -> Zone | None:
        try:
            return automatic_zone(
                own_domain(config), config.hostname, cfg["mail_host_address"], cfg["records"]
            )
        except ZoneError as e:
            _log.error("DNS automatic zone not served: {error}", error=str(e))
            return None

    zones, errors = load_zones(zones_dir, own_zone())
    for e in errors:
        _log.error("DNS zone not loaded: {error}", error=str(e))
    _log.info(
        "DNS zones: {zones}",
        zones=", ".join(f"{z.origin} (serial {z.serial}, {z.source})" for z in zones) or "none",
    )
    forwarder = None
    if cfg["forwarders"]:
        client = DNSClient(
            [parse_server(s) for s in cfg["forwarders"]],
            timeout=cfg["forward_timeout"],
            reactor=context.reactor,
        )
        forwarder = Forwarder(client, AnswerCache(cfg["cache_size"], context.reactor), stats)
    engine = DNSEngine(
        zones,
        forwarder=forwarder,
        allow_recursion=parse_networks(cfg["allow_recursion"]),
        allow_axfr=parse_networks(cfg["allow_axfr"]),
        max_udp_payload=cfg["max_udp_payload"],
        stats=stats,
        trace=cfg["trace"],
        rate_limit=RateLimiter(
            cfg["rate_limit"], parse_networks(cfg["rate_limit_exempt"]), context.reactor
        ),
    )
    for description in cfg["listen_udp"]:
        udp = DatagramListenerService(description, DNSDatagramProtocol(engine), context.reactor)
        udp.setName(f"dns:{description}")
        udp.setServiceParent(parent)
    stream_factory = DNSStreamFactory(engine, cfg["tcp_idle_timeout"])
    closer = StreamCloser(stream_factory)
    closer.setName("dns-tcp-connections")
    closer.setServiceParent(parent)
    factory = GuardedFactory(
        stream_factory,
        stats,
        max_connections=cfg["max_connections"],
        max_per_address=cfg["max_connections_per_address"],
    )
    for description in cfg["listen_tcp"]:
        tcp = ListenerService(description, factory, context.reactor)
        tcp.setName(f"dns-tcp:{description}")
        tcp.setServiceParent(parent)
    notifier = None
    if cfg["notify"]:
        notifier = Notifier([parse_server(s) for s in cfg["notify"]], context.reactor)
    watcher = ZoneWatcher(
        engine, zones_dir, own_zone, cfg["reload_interval"], context.reactor, notifier
    )
    watcher.setName("dns-zones")
    watcher.setServiceParent(parent)
    return engine


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """Build the DNS service from parsed options."""
    return make_service(options.config, reactor, only=("dns",))
