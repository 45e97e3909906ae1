"""
Unit tests for appnet.config: defaults, TOML overrides, and refusals that
name the key, the value and what is allowed.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from appnet.config import SCHEMA, ConfigError, load_config


class ConfigTests(SynchronousTestCase):
    """load_config."""

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self) -> None:
        """With no file: ./appnet-data, 127.0.0.1, standard port + 10000."""
        c = load_config()
        self.assertEqual(c.data_dir, "./appnet-data")
        self.assertEqual(c.hostname, "localhost")
        self.assertEqual(c["pop3"]["listen"], ["tcp:10110:interface=127.0.0.1"])
        self.assertEqual(c["pop3"]["listen_tls"], ["tcp:10995:interface=127.0.0.1"])
        self.assertFalse(c["pop3"]["trace"])
        self.assertEqual(c["pop3"]["idle_timeout"], 600)

    def test_every_default_passes_its_own_check(self) -> None:
        """Each default value is accepted by its key's check."""
        for section, keys in SCHEMA.items():
            for name, key in keys.items():
                if key.default is not None:
                    key.check(key.default)

    def test_file_overrides(self) -> None:
        """A TOML file overrides only what it names; a string listen becomes a list."""
        path = self.write(
            'hostname = "Mail.Example.org"\ndata_dir = "/tmp/x"\n'
            '[pop3]\nlisten = "tcp:110:interface=0.0.0.0"\ntrace = true\n'
            '[accounts]\ndefault_quota = "10M"\n'
        )
        c = load_config(path)
        self.assertEqual(c.hostname, "mail.example.org")
        self.assertEqual(c["pop3"]["listen"], ["tcp:110:interface=0.0.0.0"])
        self.assertTrue(c["pop3"]["trace"])
        self.assertEqual(c["pop3"]["idle_timeout"], 600)
        self.assertEqual(c["accounts"]["default_quota"], 10 << 20)
        self.assertEqual(c.path("users.json"), os.path.join("/tmp/x", "users.json"))

    def test_data_flag_and_overrides_win(self) -> None:
        """--data and command-line overrides beat the file."""
        path = self.write('data_dir = "/tmp/x"\n[pop3]\ntrace = false\n')
        c = load_config(path, "/srv/appnet", {"pop3": {"trace": True}})
        self.assertEqual(c.data_dir, "/srv/appnet")
        self.assertTrue(c["pop3"]["trace"])

    def assertRefused(self, text: str, key: str, fragment: str) -> None:
        with self.assertRaises(ConfigError) as cm:
            load_config(self.write(text))
        self.assertEqual(cm.exception.key, key)
        self.assertIn(fragment, str(cm.exception))
        self.assertNotIn("\n", str(cm.exception))

    def test_refusals(self) -> None:
        """Unknown keys and sections, bad types and ranges are refused by name."""
        self.assertRefused("[pop3]\nlistne = []\n", "pop3.listne", "unknown key")
        self.assertRefused("[pop4]\nx = 1\n", "pop4", "unknown section")
        self.assertRefused("[pop3]\ntrace = 'yes'\n", "pop3.trace", "true or false")
        self.assertRefused("[pop3]\nidle_timeout = 0\n", "pop3.idle_timeout", "1 to 86400")
        self.assertRefused("[pop3]\nlisten = ['tcp:99999']\n", "pop3.listen", "endpoint")
        self.assertRefused("[pop3]\nlisten = ['bogus:1']\n", "pop3.listen", "endpoint")
        self.assertRefused("hostname = 'bad host!'\n", "hostname", "DNS host name")
        self.assertRefused("[accounts]\ndefault_quota = '12Q'\n", "accounts.default_quota", "size")
        self.assertRefused("[pop3]\nplaintext_auth = 'never'\n", "pop3.plaintext_auth", "always")
        self.assertRefused("[tls]\ncert = '/x.pem'\n", "tls.key", "together")
        self.assertRefused("this is not toml", "--config", "valid TOML")

    def test_missing_file(self) -> None:
        """A missing --config file is refused with its path."""
        with self.assertRaises(ConfigError) as cm:
            load_config("/nonexistent/appnet.toml")
        self.assertIn("/nonexistent/appnet.toml", str(cm.exception))

    def test_replace(self) -> None:
        """Config.replace returns a checked copy, leaving the original alone."""
        c = load_config()
        c2 = c.replace("pop3", listen=["tcp:0:interface=127.0.0.1"])
        self.assertEqual(c2["pop3"]["listen"], ["tcp:0:interface=127.0.0.1"])
        self.assertEqual(c["pop3"]["listen"], ["tcp:10110:interface=127.0.0.1"])
        self.assertRaises(ConfigError, c.replace, "pop3", nope=1)


class DocsTests(SynchronousTestCase):
    """docs/config.md documents every key."""

    def test_reference_table_current(self) -> None:
        """The table in docs/config.md is exactly what the schema generates."""
        from appnet.config import schema_markdown

        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "..", "..", "docs", "config.md")) as f:
            text = f.read()
        table = text.split("<!-- schema:begin -->\n", 1)[1].split("<!-- schema:end -->", 1)[0]
        self.assertEqual(table.strip(), schema_markdown().strip())
