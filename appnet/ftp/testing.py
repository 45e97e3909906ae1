"""
A real appnet FTP server inside a trial test, in one line::

    server = await start_ftp_server(self, users={"alice": "pw"}, incoming=True)
    # ftp://127.0.0.1:{server.port}/ and ftps://127.0.0.1:{server.tls_port}/

It listens on 127.0.0.1 port 0 (plain and implicit FTPS) over a temporary
data directory and stops when the test ends. C{server.files} is the store's
root on disk (C{public/}, C{home/<user>/}); C{server.cert} the PEM
certificate clients should trust.
"""

from __future__ import annotations

import os
from typing import Any


from appnet.testing import ServiceFixture, start_services

__all__ = ["start_ftp_server", "FTPServerFixture", "make_test_ca"]


def make_test_ca(directory: str, hostname: str = "localhost") -> tuple[str, str, str]:
    """
    Write a throw-away CA and a server certificate it signed (for
    C{hostname}, localhost, 127.0.0.1 and ::1) into C{directory}.

    Clients built on GnuTLS (lftp) refuse appnet's default self-signed
    certificate as a trust anchor because it is not a CA; a real chain
    works with every client.

    @return: C{(ca_pem, cert_pem, key_pem)} paths
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "appnet test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        names.append(x509.DNSName("localhost"))
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
              x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tuple(os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths  # type: ignore[return-value]


class FTPServerFixture(ServiceFixture):
    """
    A running FTP service.

    @ivar host: C{127.0.0.1}
    @ivar port: the plain (explicit FTPS capable) port
    @ivar tls_port: the implicit-FTPS port
    @ivar files: host path of the filesystem store's root
    @ivar cert: host path of the CA certificate (PEM) clients should trust
    @ivar context: the L{appnet.service.AppnetContext}
    """

    def __init__(self, top: Any, data_dir: str) -> None:
        super().__init__(top)
        self.data_dir = data_dir
        self.host = "127.0.0.1"
        self.port = top.getServiceNamed(self._name(top, "ftp:")).port.getHost().port
        self.tls_port = top.getServiceNamed(self._name(top, "ftp-tls:")).port.getHost().port
        self.files = self.context.file_store.root
        self.cert = os.path.join(data_dir, "test-ca", "ca.pem")
        self.stats = self.context.stats.service("ftp")

    @staticmethod
    def _name(top: Any, prefix: str) -> str:
        return next(s.name for s in top if s.name.startswith(prefix))

    def path(self, *parts: str) -> str:
        """Host path under the store's root (C{path("public", "a.txt")})."""
        return os.path.join(self.files, *parts)

    def put(self, data: bytes, *parts: str) -> str:
        """Create a file in the store (parents too); return its host path."""
        target = self.path(*parts)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
        return target


async def start_ftp_server(
    testcase: Any = None,
    users: dict[str, str] | None = None,
    *,
    data_dir: str | None = None,
    incoming: bool = False,
    quota: int | None = None,
    overrides: dict[str, Any] | None = None,
    reactor: Any = None,
) -> FTPServerFixture:
    """
    Start appnet's FTP service on loopback port 0.

    @param users: name -> password to create (cheap hashes: tests only)
    @param incoming: offer C{public/incoming/}
    @param quota: every user's byte quota
    @param overrides: more C{[ftp]} keys (C{require_tls}, C{passive_ports}...)
    """
    local = "tcp:0:interface=127.0.0.1"
    ftp = {"listen": [local], "listen_tls": [local]}
    ftp.update(overrides or {})

    def test_certificate(data_dir: str) -> dict[str, dict[str, Any]]:
        _ca, cert, key = make_test_ca(os.path.join(data_dir, "test-ca"))
        return {"tls": {"cert": cert, "key": key}}

    top, data_dir, reactor = start_services(
        ("ftp",),
        {
            "ftp": ftp,
            "files": {"incoming": incoming},
            "accounts": {"failed_login_delay": 0.0, "default_quota": quota},
        },
        testcase=testcase,
        users=users,
        data_dir=data_dir,
        reactor=reactor,
        before_config=test_certificate,
    )
    os.makedirs(os.path.join(top.context.file_store.root, "public"), exist_ok=True)
    fixture = FTPServerFixture(top, data_dir)
    if testcase is not None:
        testcase.addCleanup(fixture.stop)
    return fixture
