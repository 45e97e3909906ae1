"""
Helpers shared by appnet's own tests (not public API; see L{appnet.testing}).
"""

from __future__ import annotations

import os
import shutil
import socket

from twisted.trial.unittest import SkipTest


def interop_required() -> bool:
    """True when CI demands every interop test run (C{APPNET_REQUIRE_INTEROP=1})."""
    return os.environ.get("APPNET_REQUIRE_INTEROP", "") not in ("", "0")


def require_tool(*names: str) -> str:
    """
    Return the path of the first of C{names} found on C{PATH}.

    Skips the test with a reason when none is installed, or fails it when
    C{APPNET_REQUIRE_INTEROP=1} is set, so CI can never pass by skipping.
    """
    for name in names:
        path = shutil.which(name) or next(
            (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)),
            None,
        )
        if path:
            return path
    reason = f"interop tool not installed: {' or '.join(names)}"
    if interop_required():
        raise AssertionError(reason + " (APPNET_REQUIRE_INTEROP=1)")
    raise SkipTest(reason)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """
    A TCP port free right now, for third-party servers that cannot be told to
    bind port 0 and report it.
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
