"""
Command-line options shared by C{twistd appnet} and every C{twistd appnet-<proto>}.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from appnet.config import Config, ConfigError, load_config

__all__ = ["AppnetOptions"]


class AppnetOptions(usage.Options):
    """
    C{--config FILE} and C{--data DIR}; subclasses add their own flags and
    put them in C{self.overrides} (section -> key -> value).

    After parsing, C{self.config} is the checked L{Config}. A bad config
    ends the process with one line naming key, value and what is allowed.
    """

    optParameters = [
        ["config", "c", None, "TOML configuration file (default: built-in defaults)"],
        ["data", "d", None, "data directory (default: ./appnet-data or the config's data_dir)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.overrides: dict[str, dict[str, Any]] = {}
        self.config: Config | None = None

    def override(self, section: str, key: str, value: Any) -> None:
        """Set C{[section] key} from the command line."""
        self.overrides.setdefault(section, {})[key] = value

    def postOptions(self) -> None:
        try:
            self.config = load_config(self["config"], self["data"], self.overrides)
        except ConfigError as e:
            # One line, no usage dump and no traceback: twistd exits 1.
            sys.exit(f"appnet: {e}")
