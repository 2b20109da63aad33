"""TLS settings (Centrifugo's `TLSConfig` blocks) turned into SSL contexts.

PEM values follow Centrifugo: each may be raw PEM text, base64-encoded PEM, or a file path
(`load_pem`). `ssl_context` is the client side (HTTP proxies, Redis); `server_context` the
server side of a listener.

HTTP listeners (`http_server.tls`, `http_server.internal_tls`, `tls_external`), as in Centrifugo (`internal/app/mux.go`): the main port serves `http_server.tls`; a separate
internal port serves `internal_tls` when that is enabled, else `tls` unless `tls_external`
(TLS on the external port only). Certificates and keys are PEM text, base64-encoded PEM or
file paths (`load_pem`); `client_ca_pem` turns on client certificate verification (mutual
TLS). The contexts are built once in the master before workers fork, so a missing file or a
key that does not match its certificate stops start-up with one line naming the key.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from typing import Any

from app.config import Config, ConfigError, TLSConfig

__all__ = ["load_pem", "ssl_context", "server_context", "listener_contexts"]


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


def _load_cert_chain(ctx: ssl.SSLContext, tls: Any, what: str) -> None:
    """Load `tls.cert_pem` + `tls.key_pem` into `ctx`; ValueError naming the key at fault."""
    cert = load_pem(tls.cert_pem, f"{what}.cert_pem")
    key = load_pem(tls.key_pem, f"{what}.key_pem")
    # The ssl module loads a certificate chain from files only; the files live only for the
    # call (private key material is not left on disk).
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
        _load_cert_chain(ctx, tls, what)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def server_context(tls: TLSConfig, what: str) -> ssl.SSLContext | None:
    """The server-side SSLContext of `tls`, None when it is not enabled. Raises ConfigError
    naming `what` (e.g. "http_server.tls") when the certificate cannot be used."""
    if not tls.enabled:
        return None
    if not tls.cert_pem or not tls.key_pem:
        raise ConfigError(f"{what}: cert_pem and key_pem are required when TLS is enabled")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # Centrifugo's MinVersion
    # HTTP/1.1 only: a client offering h2 must not pick it (WebSocket needs HTTP/1.1 here).
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        _load_cert_chain(ctx, tls, what)
        if tls.client_ca_pem:
            client_ca = load_pem(tls.client_ca_pem, f"{what}.client_ca_pem")
            try:
                ctx.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
            except ssl.SSLError as e:
                raise ValueError(
                    f"{what}.client_ca_pem: invalid certificate ({e.reason})"
                ) from None
            ctx.verify_mode = ssl.CERT_REQUIRED
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return ctx


def listener_contexts(cfg: Config) -> dict[int, ssl.SSLContext | None]:
    """The SSLContext (or None) of each HTTP listener, by port."""
    server = cfg.http_server
    main = server_context(server.tls, "http_server.tls")
    out: dict[int, ssl.SSLContext | None] = {server.port: main}
    if server.internal_port and server.internal_port != server.port:
        if server.internal_tls.enabled:
            out[server.internal_port] = server_context(
                server.internal_tls, "http_server.internal_tls"
            )
        else:
            out[server.internal_port] = None if server.tls_external else main
    return out
