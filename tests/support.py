"""
Helpers shared by appnet's own tests (not public API; see L{appnet.testing}).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from typing import Any

from twisted.internet import defer, threads
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


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python: ours, with the repo root on PYTHONPATH."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + path if path else "")
    env.update(extra)
    return env


def twistd_argv() -> list[str]:
    """The twistd next to this Python, or twistd run through this Python."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def appnet_argv() -> list[str]:
    """The C{appnet} console command, run through this Python."""
    return [sys.executable, "-m", "appnet.cli"]


def run_process(
    argv: list[str],
    *,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 60,
) -> defer.Deferred:
    """
    Run a command to completion in a thread (the reactor keeps serving).

    @return: a Deferred firing with the C{subprocess.CompletedProcess}
        (bytes stdout and stderr); it fails with C{subprocess.TimeoutExpired}
        (the child killed) after C{timeout} seconds
    """
    return threads.deferToThread(
        subprocess.run,
        argv,
        input=stdin,
        capture_output=True,
        env=env if env is not None else subprocess_env(),
        cwd=cwd,
        timeout=timeout,
    )


class ManualRunner:
    """A C{run_blocking} that queues the work until the test runs it."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def __call__(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.jobs.append((f, args, d))
        return d

    def run_next(self) -> None:
        f, args, d = self.jobs.pop(0)
        defer.maybeDeferred(f, *args).chainDeferred(d)
