"""
Small helpers the benchmark runners share: free ports, waiting for a server
to greet, the load average.
"""

from __future__ import annotations

import socket
import time

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_greeting(port: int, deadline: float = 20.0) -> bytes:
    """
    Wait until a server on C{port} accepts a connection and sends its first
    octets (a greeting); return them.

    @raise RuntimeError: nothing greeted within C{deadline} seconds
    """
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                data = s.recv(512)
                if data:
                    return data
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no server greeted on port {port} within {deadline} s")


def loadavg() -> float:
    """The 1-minute load average (other work on the machine skews timings)."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])
