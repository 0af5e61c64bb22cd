"""Certificates: the user's own, or a self-signed one made once and kept.

One certificate serves both HTTPS (WebCodecs needs a secure context anywhere but
localhost) and SPICE's TLS port. ``--tls auto`` keeps it in the user's config
directory so browsers and ``remote-viewer --spice-ca-file`` can be told to trust
it once. Only files and keys: the handshake itself is :mod:`.admission`'s.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger("saffron.tls")

VALID_DAYS = 825
"""The longest validity Apple's and Chrome's policies accept for a leaf certificate."""


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate, as browsers show it."""
        der = x509.load_pem_x509_certificate(self.cert.read_bytes()).fingerprint(hashes.SHA256())
        return ":".join(f"{b:02X}" for b in der)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "saffron"


def self_signed(directory: Path | None = None, hosts: list[str] | None = None) -> Certificate:
    """The self-signed certificate in ``directory``, made on first use."""
    directory = directory or config_dir()
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return Certificate(cert_path, key_path)
    directory.mkdir(parents=True, exist_ok=True)
    names = hosts or ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Saffron on {names[-1]}")])
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("made a self-signed certificate in %s", directory)
    return Certificate(cert_path, key_path)
