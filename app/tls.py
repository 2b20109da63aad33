"""TLS for the HTTP listeners: `http_server.tls`, `http_server.internal_tls`, `tls_external`.

As in Centrifugo (`internal/app/mux.go`): the main port serves `http_server.tls`; a separate
internal port serves `internal_tls` when that is enabled, else `tls` unless `tls_external`
(TLS on the external port only). Certificates and keys are PEM text, base64-encoded PEM or
file paths (`load_pem`); `client_ca_pem` turns on client certificate verification (mutual
TLS). The contexts are built once in the master before workers fork, so a missing file or a
key that does not match its certificate stops start-up with one line naming the key.
"""

from __future__ import annotations

import os
import ssl
import tempfile

from app.config import Config, ConfigError, TLSConfig
from app.proxy.tls import load_pem

__all__ = ["server_context", "listener_contexts"]


def server_context(tls: TLSConfig, what: str) -> ssl.SSLContext | None:
    """The server-side SSLContext of `tls`, None when it is not enabled. Raises ConfigError
    naming `what` (e.g. "http_server.tls") when the certificate cannot be used."""
    if not tls.enabled:
        return None
    if not tls.cert_pem or not tls.key_pem:
        raise ConfigError(f"{what}: cert_pem and key_pem are required when TLS is enabled")
    try:
        cert = load_pem(tls.cert_pem, f"{what}.cert_pem")
        key = load_pem(tls.key_pem, f"{what}.key_pem")
        client_ca = (
            load_pem(tls.client_ca_pem, f"{what}.client_ca_pem") if tls.client_ca_pem else None
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # Centrifugo's MinVersion
    # HTTP/1.1 only: a client offering h2 must not pick it (WebSocket needs HTTP/1.1 here).
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        # The ssl module loads a certificate chain from files only; the files live only for
        # the call (private key material is not left on disk).
        with tempfile.TemporaryDirectory() as d:
            cert_path = os.path.join(d, "cert.pem")
            key_path = os.path.join(d, "key.pem")
            with open(cert_path, "wb") as f:
                f.write(cert)
            with open(key_path, "wb") as f:
                f.write(key)
            ctx.load_cert_chain(cert_path, key_path)
        if client_ca is not None:
            ctx.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except ssl.SSLError as e:
        raise ConfigError(f"{what}: certificate or key unusable: {e.reason or e}") from None
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
