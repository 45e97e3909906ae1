"""
Unit tests for appnet.tls: the self-signed certificate and configured PEM files.
"""

from __future__ import annotations

import os
import stat

from cryptography import x509
from twisted.internet import ssl
from twisted.trial.unittest import SynchronousTestCase

from appnet.config import ConfigError, load_config
from appnet.tls import ensure_certificate, server_tls_options


class TLSTests(SynchronousTestCase):
    """ensure_certificate and server_tls_options."""

    def test_self_signed_generated_once(self) -> None:
        """The pair is made once (key 0600) and reused; it names host, localhost and loopback IPs."""
        d = self.mktemp()
        cert, key = ensure_certificate(d, "mail.example.org")
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        with open(cert, "rb") as f:
            first = f.read()
        self.assertEqual(ensure_certificate(d, "mail.example.org"), (cert, key))
        with open(cert, "rb") as f:
            self.assertEqual(f.read(), first)
        parsed = x509.load_pem_x509_certificate(first)
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(
            san.get_values_for_type(x509.DNSName), ["mail.example.org", "localhost"]
        )
        self.assertEqual(
            [str(ip) for ip in san.get_values_for_type(x509.IPAddress)], ["127.0.0.1", "::1"]
        )

    def test_options_from_defaults(self) -> None:
        """With no [tls] keys, options come from the generated pair."""
        d = self.mktemp()
        options = server_tls_options(load_config(data_dir=d))
        self.assertIsInstance(options, ssl.CertificateOptions)
        self.assertTrue(os.path.exists(os.path.join(d, "tls", "cert.pem")))

    def test_configured_files(self) -> None:
        """Configured PEM files are used; a missing or mismatched pair is a ConfigError."""
        d = self.mktemp()
        cert, key = ensure_certificate(d, "a.example")
        other_cert, other_key = ensure_certificate(self.mktemp(), "b.example")
        config = self.mktemp()
        with open(config, "w") as f:
            f.write(f'[tls]\ncert = "{cert}"\nkey = "{key}"\n')
        self.assertIsInstance(server_tls_options(load_config(config)), ssl.CertificateOptions)
        with open(config, "w") as f:
            f.write(f'[tls]\ncert = "{cert}"\nkey = "{other_key}"\n')
        self.assertRaises(ConfigError, server_tls_options, load_config(config))
        with open(config, "w") as f:
            f.write(f'[tls]\ncert = "/nonexistent.pem"\nkey = "{key}"\n')
        with self.assertRaises(ConfigError) as cm:
            server_tls_options(load_config(config))
        self.assertEqual(cm.exception.key, "tls.cert")
