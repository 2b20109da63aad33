"""TLS settings of a proxy (`http.tls` / `grpc.tls`) turned into client credentials.

PEM values follow Centrifugo: each may be raw PEM text, base64-encoded PEM, or a file path.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from typing import Any

__all__ = ["load_pem", "ssl_context"]


def _is_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data and b"-----END " in data


def _parses_as_certificate(pem: bytes) -> bool:
    """Whether OpenSSL reads `pem` as certificates (to tell which half of a refused key pair
    is wrong: load_cert_chain's error does not say)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=pem.decode("ascii", "replace")
        )
    except ssl.SSLError:
        return False
    return True


def load_pem(value: str, what: str) -> bytes:
    """Resolve one PEM setting; raises ValueError naming `what` when it is unusable."""
    raw = value.encode()
    if _is_pem(raw):
        return raw
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if _is_pem(decoded):
        return decoded
    if os.path.isfile(value):
        with open(value, "rb") as f:
            content = f.read()
        if _is_pem(content):
            return content
        raise ValueError(f"{what}: file {value!r} contains invalid PEM data")
    raise ValueError(f"{what}: not raw PEM, base64-encoded PEM or a PEM file path")


def ssl_context(tls: Any, what: str) -> ssl.SSLContext | None:
    """A client SSLContext (an HTTP proxy, Redis), or None when `tls.enabled` is false.
    Raises ValueError naming the unusable key (`what.server_ca_pem`, ...)."""
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.server_ca_pem:
        cadata = load_pem(tls.server_ca_pem, f"{what}.server_ca_pem").decode()
        try:
            ctx.load_verify_locations(cadata=cadata)
        except ssl.SSLError as e:
            raise ValueError(f"{what}.server_ca_pem: invalid certificate ({e.reason})") from None
    if tls.cert_pem and tls.key_pem:
        cert = load_pem(tls.cert_pem, f"{what}.cert_pem")
        key = load_pem(tls.key_pem, f"{what}.key_pem")
        # The ssl module loads client certificates from files only.
        with tempfile.TemporaryDirectory() as d:
            cert_path = os.path.join(d, "cert.pem")
            key_path = os.path.join(d, "key.pem")
            with open(cert_path, "wb") as f:
                f.write(cert)
            with open(key_path, "wb") as f:
                f.write(key)
            try:
                ctx.load_cert_chain(cert_path, key_path)
            except ssl.SSLError as e:
                if not _parses_as_certificate(cert):
                    raise ValueError(f"{what}.cert_pem: invalid certificate") from None
                raise ValueError(
                    f"{what}.key_pem: not a private key matching {what}.cert_pem ({e.reason})"
                ) from None
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
