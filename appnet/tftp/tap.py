"""
C{twistd appnet-tftp}: the TFTP server alone (and its part of C{twistd appnet}).
"""

from __future__ import annotations

from typing import Any

from twisted.application import service

from appnet.options import AppnetOptions
from appnet.service import AppnetContext, DatagramListenerService, make_service
from appnet.tftp.machine import TransferPolicy
from appnet.tftp.server import SERVER_WINDOW_BYTES, TFTPServerFactory

__all__ = ["Options", "makeService", "build_service"]


class Options(AppnetOptions):
    """Options for C{twistd appnet-tftp}: the shared ones plus overrides."""

    optFlags = [
        ["trace", "t", "log one line per transfer (options, bytes, duration)"],
        ["writable", "w", "accept uploads (create-only) into the upload directory"],
    ]

    def opt_listen(self, address: str) -> None:
        """TFTP UDP address (repeatable), e.g. udp:69:interface=0.0.0.0"""
        self.overrides.setdefault("tftp", {}).setdefault("listen", []).append(address)

    def opt_root(self, path: str) -> None:
        """directory of public/ to serve, e.g. /boot"""
        self.override("tftp", "root", path)

    def postOptions(self) -> None:
        if self["trace"]:
            self.override("tftp", "trace", True)
        if self["writable"]:
            self.override("tftp", "writable", True)
            self.override("files", "incoming", True)
        super().postOptions()


class _StopTransfers(service.Service):
    """Aborts the live transfers when the service stops."""

    def __init__(self, factory: TFTPServerFactory) -> None:
        self.factory = factory

    def stopService(self) -> Any:
        super().stopService()
        return self.factory.stop()


def build_service(context: AppnetContext, parent: service.MultiService) -> None:
    """
    Add the TFTP listeners for C{context} to C{parent}.

    Uploads (C{writable}) go to the anonymous view's drop box, so the
    config demands C{[files] incoming} with it (checked by
    L{appnet.config.load_config}).
    """
    cfg = context.config["tftp"]
    factory = TFTPServerFactory(
        context.file_store.view_for(None),
        root=cfg["root"],
        writable=cfg["writable"],
        upload_dir=cfg["upload_dir"],
        policy=TransferPolicy(
            timeout=float(cfg["timeout"]),
            retries=cfg["retries"],
            max_blksize=cfg["max_blksize"],
            max_windowsize=cfg["max_windowsize"],
            max_size=cfg["max_file_size"],
            max_window_bytes=SERVER_WINDOW_BYTES,
        ),
        max_transfers=cfg["max_transfers"],
        max_transfers_per_client=cfg["max_transfers_per_client"],
        stats=context.stats.service("tftp"),
        trace=cfg["trace"],
        max_threads=cfg["threads"],
        busy_poll=cfg["busy_poll"] / 1e6,
        reactor=context.reactor,
    )
    stopper = _StopTransfers(factory)
    stopper.setName("tftp-transfers")
    stopper.setServiceParent(parent)
    for description in cfg["listen"]:
        svc = DatagramListenerService(description, factory.buildProtocol(), context.reactor)
        svc.setName(f"tftp:{description}")
        svc.setServiceParent(parent)


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """Build the TFTP service from parsed options."""
    return make_service(options.config, reactor, only=("tftp",))
