"""
Unit tests for appnet.progress: the client commands' progress bar.
"""

from __future__ import annotations

import io

from twisted.trial.unittest import SynchronousTestCase

from appnet.progress import progress_bar


class ProgressBarTests(SynchronousTestCase):
    """progress_bar."""

    def test_bar_and_count(self) -> None:
        """A known total draws a 30-column bar; an unknown one a count; the last update always shows."""
        out = io.StringIO()
        progress = progress_bar("messages", out=out)
        progress(3, 4)
        self.assertEqual(out.getvalue(), "\r[######################........] 3/4")
        progress(4, 4)
        self.assertTrue(out.getvalue().endswith("\r[##############################] 4/4"))
        out2 = io.StringIO()
        progress_bar("messages", out=out2)(7, None)
        self.assertEqual(out2.getvalue(), "\r7 messages")

    def test_bytes_show_rate(self) -> None:
        """Byte counts carry a MB/s rate."""
        out = io.StringIO()
        progress_bar(out=out)(1000, 2000)
        self.assertRegex(out.getvalue(), r"\] 1000/2000 [0-9.]+ MB/s$")
