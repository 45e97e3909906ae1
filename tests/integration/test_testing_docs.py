"""
docs/testing.md's complete example runs as written: its Python block is
saved as a test module and run by trial in a child process.
"""

from __future__ import annotations

import os
import re
import sys

from twisted.trial.unittest import TestCase

from tests.integration.test_twistd import decode
from tests.support import REPO_ROOT, run_process, subprocess_env

DOC = os.path.join(REPO_ROOT, "docs", "testing.md")


def example_code() -> str:
    """The first Python block under '## A complete example'."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    section = text.split("## A complete example", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "no python block in the example section"
    return match.group(1)


class DocumentedExampleTests(TestCase):
    async def test_example_passes(self) -> None:
        """trial runs the example's two tests and both pass."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "test_welcome.py"), "w", encoding="utf-8") as f:
            f.write(example_code())
        done = await run_process(
            [sys.executable, "-m", "twisted.trial", "test_welcome"],
            cwd=directory,
            env=subprocess_env(),
            timeout=120,
        )
        out, err = decode(done)
        self.assertEqual(done.returncode, 0, out + err)
        self.assertIn("PASSED (successes=2)", out)
