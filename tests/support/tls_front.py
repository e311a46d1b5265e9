"""A TLS-terminating front (socat) for an HTTP server: how a hospital puts HTTPS before its PACS.

Debian's Orthanc 1.10 crashes on its own HTTPS socket in this environment, so the DICOMweb TLS test
puts socat in front of it, as nginx or a load balancer would be in production.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.net import free_port, wait_for_port

SOCAT = shutil.which("socat")


def socat_available() -> bool:
    return SOCAT is not None


@contextmanager
def tls_front(backend_port: int, pem: Path) -> Iterator[int]:
    """HTTPS on a free port of 127.0.0.1, forwarded to http://127.0.0.1:backend_port; yields the port."""
    assert SOCAT is not None, "socat is not installed"
    port = free_port()
    listen = f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={pem},verify=0"
    proc = subprocess.Popen(
        [SOCAT, listen, f"TCP:127.0.0.1:{backend_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, timeout=15)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def self_signed_pem(path: Path, host: str = "localhost") -> Path:
    """A certificate for `host` and its key in one PEM file (socat's cert= takes both)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem)
    return path
