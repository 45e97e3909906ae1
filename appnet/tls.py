"""
TLS for every appnet service: one certificate, from config or self-signed.

With C{tls.cert} and C{tls.key} configured, those PEM files are used. With
none, a self-signed certificate for the configured host name (and
C{localhost}, 127.0.0.1, ::1) is generated once into C{<data_dir>/tls/} and
reused on every start, so STLS/STARTTLS and implicit TLS work out of the box.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.protocols.tls import TLSMemoryBIOFactory

from appnet.errors import ConfigError

__all__ = ["ensure_certificate", "server_tls_options", "implicit_tls_factory"]


def ensure_certificate(data_dir: str, hostname: str) -> tuple[str, str]:
    """
    Return C{(cert_path, key_path)} of the self-signed certificate in
    C{<data_dir>/tls/}, generating it (ECDSA P-256, ten years) if absent.
    """
    directory = os.path.join(data_dir, "tls")
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        alt_names.append(x509.DNSName("localhost"))
    alt_names += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_tmp, cert_tmp = key_path + ".tmp", cert_path + ".tmp"
    fd = os.open(key_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cert_tmp, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(key_tmp, key_path)
    os.replace(cert_tmp, cert_path)
    return cert_path, key_path


def server_tls_options(config) -> ssl.CertificateOptions:
    """
    The server-side TLS context factory for C{config} (an
    L{appnet.config.Config}), generating the self-signed pair if needed.

    @raise ConfigError: the configured files cannot be read or do not match
    """
    cert_path, key_path = config["tls"]["cert"], config["tls"]["key"]
    if cert_path is None:
        cert_path, key_path = ensure_certificate(config.data_dir, config.hostname)
    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
        pem = ssl.PrivateCertificate.loadPEM(key_pem + b"\n" + cert_pem)
        chain = [
            ssl.Certificate.loadPEM(c).original
            for c in _split_pem(cert_pem)[1:]
        ]
    except OSError as e:
        raise ConfigError("tls.cert", cert_path, f"readable PEM files ({e.strerror})")
    except Exception as e:  # OpenSSL's errors carry no common base we can name
        raise ConfigError("tls.cert", cert_path, f"a PEM certificate matching tls.key ({e})")
    return ssl.CertificateOptions(
        privateKey=pem.privateKey.original,
        certificate=pem.original,
        extraCertChain=chain or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def _split_pem(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [part + marker for part in data.split(marker) if b"-----BEGIN CERTIFICATE" in part]


def implicit_tls_factory(factory, options: ssl.CertificateOptions):
    """Wrap a server factory so every connection starts with a TLS handshake."""
    return TLSMemoryBIOFactory(options, False, factory)
