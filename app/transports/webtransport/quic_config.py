"""The QUIC (HTTP/3) server configuration of the main port, from `http_server.tls`.

Centrifugo serves HTTP/3 with the external listener's `tls.Config` (internal/app/mux.go:
`h3Server.TLSConfig = addrTLSConfig`): the same certificate as HTTPS on that port. The
master has already loaded that certificate into an SSLContext before forking
(app/tls.py), so a bad one never gets here; aioquic does its own TLS 1.3 and wants the
certificate and key as `cryptography` objects, read here from the same PEM values.

`client_ca_pem` (mutual TLS) is refused with HTTP/3 at config validation: aioquic's server
never asks for a client certificate, so a WebTransport session would skip the check HTTPS
makes.
"""

from __future__ import annotations

from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509 import load_pem_x509_certificates

from app.config import ConfigError, TLSConfig
from app.tls import load_pem

# HTTP/3 datagrams must be on for browsers to open a WebTransport session (Chrome checks
# the peer's max_datagram_frame_size); the session never uses them.
MAX_DATAGRAM_FRAME_SIZE = 65536

# Seconds without a packet before a QUIC connection is dropped. Dead clients are found
# sooner by the protocol's ping/pong (client.ping_interval + client.pong_timeout).
IDLE_TIMEOUT = 60.0


def quic_configuration(tls: TLSConfig, what: str = "http_server.tls") -> QuicConfiguration:
    """The server configuration for `tls` (must be enabled with a certificate and key).
    Raises ConfigError naming the key at fault."""
    if not tls.enabled or not tls.cert_pem or not tls.key_pem:
        raise ConfigError("HTTP/3 requires TLS configured")
    try:
        certificates = load_pem_x509_certificates(load_pem(tls.cert_pem, f"{what}.cert_pem"))
        key = load_pem_private_key(load_pem(tls.key_pem, f"{what}.key_pem"), password=None)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    config = QuicConfiguration(
        is_client=False,
        alpn_protocols=list(H3_ALPN),
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
        idle_timeout=IDLE_TIMEOUT,
    )
    config.certificate = certificates[0]
    config.certificate_chain = certificates[1:]
    config.private_key = key
    return config
