"""Certificates made at test time (the `cryptography` package): a CA and leaf certificates
it signs, or a self-signed one, written as PEM files for servers and clients under test.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "Leaf", "make_ca", "self_signed", "self_signed_pem"]

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Leaf:
    cert_pem: bytes
    key_pem: bytes
    cert_path: Path
    key_path: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _sans(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Leaf:
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = _key_pem(key)
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return Leaf(cert_pem, key_pem, cert_path, key_path)


@dataclass(frozen=True)
class CA:
    """A test certificate authority; `issue` signs server or client certificates."""

    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes
    cert_path: Path

    def issue(
        self,
        stem: str,
        hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
        client: bool = False,
    ) -> Leaf:
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(stem))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if hosts:
            builder = builder.add_extension(_sans(hosts), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _write(self.directory, stem, cert, key)

    def client_context(self, leaf: Leaf | None = None) -> ssl.SSLContext:
        """A client SSLContext trusting this CA, presenting `leaf` when given."""
        ctx = ssl.create_default_context(cafile=str(self.cert_path))
        if leaf is not None:
            ctx.load_cert_chain(str(leaf.cert_path), str(leaf.key_path))
        return ctx


def make_ca(directory: Path, name: str = "test-ca") -> CA:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    leaf = _write(directory, name, cert, key)
    return CA(directory, cert, key, leaf.cert_pem, leaf.cert_path)


def self_signed_pem(
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), cn: str = "self-signed"
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) signed by its own key: no CA vouches for it, and a client
    that trusts exactly this certificate (its own CA, `BasicConstraints(ca=True)`) accepts it."""
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + _DAY)
        .add_extension(_sans(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def self_signed(directory: Path, stem: str, hosts: tuple[str, ...] = ("127.0.0.1",)) -> Leaf:
    """`self_signed_pem` written as `<stem>.crt` / `<stem>.key` in `directory`."""
    cert_pem, key_pem = self_signed_pem(hosts, stem)
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return Leaf(cert_pem, key_pem, cert_path, key_path)
