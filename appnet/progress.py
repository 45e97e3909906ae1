"""
The progress bar the C{appnet} client commands draw on standard error.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

__all__ = ["progress_bar"]


def progress_bar(
    unit: str = "bytes", out: TextIO | None = None
) -> Callable[[int, int | None], None]:
    """
    A C{progress(done, total)} callback for the clients' C{progress=}
    parameter: a 30-column bar (or a count when the total is unknown), the
    rate for byte counts, redrawn at most ten times a second (and for the
    last count). The caller ends the line when the transfer ends.

    @param unit: C{"bytes"} (shows MB/s) or a noun such as C{"messages"}
    """
    started = time.monotonic()
    last = [0.0]

    def progress(done: int, total: int | None) -> None:
        stream = out if out is not None else sys.stderr
        now = time.monotonic()
        if now - last[0] < 0.1 and done != total:
            return
        last[0] = now
        if total:
            width = 30
            filled = width * min(done, total) // total
            line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        else:
            line = f"{done} {unit}"
        if unit == "bytes":
            line += f" {done / max(now - started, 1e-6) / 1e6:.1f} MB/s"
        stream.write("\r" + line)

    return progress
