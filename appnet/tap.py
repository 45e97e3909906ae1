"""
C{twistd appnet}: every enabled service in one process.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service

from appnet.options import AppnetOptions
from appnet.service import make_service

__all__ = ["Options", "makeService"]


class Options(AppnetOptions):
    """Options for C{twistd appnet}."""

    longdesc = (
        "Run appnet's whole suite (see docs/config.md). With no --config, "
        "built-in defaults: data in ./appnet-data, every service on "
        "127.0.0.1 at its standard port + 10000."
    )


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """Build the suite from parsed options."""
    return make_service(options.config, reactor)
