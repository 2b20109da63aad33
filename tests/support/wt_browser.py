"""Headless Chromium that opens WebTransport sessions to a test server with a self-signed
certificate: the launch flags, and the page-side alternative.

WebTransport always runs over QUIC and Chromium verifies the server's certificate for it; a
certificate made by the test (tests/support/tls_certs.py) chains to no root it knows. Two ways
through, both checked against Debian's Chromium 156 (headless, under Playwright) and an aioquic
HTTP/3 server on 127.0.0.1:

- Launch flags (`launch_args`), which leave the page's code as a deployment has it, so
  centrifuge-js runs unchanged:
  `--origin-to-force-quic-on=127.0.0.1:PORT` together with
  `--ignore-certificate-errors-spki-list=<base64 SHA-256 of the certificate's SPKI>`.
  The SPKI list alone is not enough: without the forced-QUIC origin the handshake fails with
  `QUIC_TLS_CERTIFICATE_UNKNOWN` (CERTIFICATE_VERIFY_FAILED); with both, a wrong SPKI hash
  still fails that way, so the certificate is really checked. `--enable-quic` is not needed
  (QUIC is on by default; the admin UI test's `--disable-quic` must not be passed).
- `serverCertificateHashes` (`hash_pinning_script`): the W3C option of `new WebTransport(url,
  options)`, for an ECDSA certificate valid for at most 14 days (tls_certs' are valid for two
  days). centrifuge-js builds `new this.options.webtransport(url)` from `globalThis.WebTransport`
  with no options (src/transport_webtransport.ts, centrifuge.ts), so the option can only reach it
  through a page script that replaces `globalThis.WebTransport` before the SDK runs.

The page itself must be a secure context (`WebTransport` is undefined on `about:blank` or a
`data:` page): serve it from `http://127.0.0.1:<port>/` (loopback origins are trustworthy).
Without a stateless reset from the server (aioquic sends none), Chromium notices a killed
server process whose UDP port stays open elsewhere (a SO_REUSEPORT group, or a gunicorn master
holding the socket) only when it sends: its blackhole detection closes the session 6-10 s after
the first unanswered packet ("Connection lost"; measured 6.4 s against the echo server, ~10 s
against the app); a port no process listens on fails at once (ICMP port unreachable).
"""

from __future__ import annotations

import base64
import hashlib
import json

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "CHROMIUM",
    "BASE_ARGS",
    "spki_sha256_base64",
    "cert_sha256",
    "launch_args",
    "hash_pinning_script",
]

CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright's own downloads are never used
# As the admin UI test's, without `--disable-quic` (WebTransport is QUIC).
BASE_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _cert(cert_pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert_pem)


def spki_sha256_base64(cert_pem: bytes) -> str:
    """Base64 of the SHA-256 of the certificate's DER SubjectPublicKeyInfo (the form
    `--ignore-certificate-errors-spki-list` takes)."""
    spki = (
        _cert(cert_pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def cert_sha256(cert_pem: bytes) -> bytes:
    """SHA-256 of the whole DER certificate (the `serverCertificateHashes` value)."""
    return hashlib.sha256(_cert(cert_pem).public_bytes(serialization.Encoding.DER)).digest()


def launch_args(cert_pem: bytes, host: str, port: int) -> list[str]:
    """Chromium arguments that accept `cert_pem` for WebTransport to `host:port`."""
    return [
        *BASE_ARGS,
        f"--origin-to-force-quic-on={host}:{port}",
        f"--ignore-certificate-errors-spki-list={spki_sha256_base64(cert_pem)}",
    ]


def hash_pinning_script(cert_pem: bytes) -> str:
    """A page init script (Playwright `add_init_script`) after which every
    `new WebTransport(url)` pins `cert_pem` through `serverCertificateHashes`, for a browser
    started without `launch_args`."""
    digest = json.dumps(list(cert_sha256(cert_pem)))
    return (
        "(() => {\n"
        "  const Native = globalThis.WebTransport;\n"
        f"  const value = new Uint8Array({digest});\n"
        "  globalThis.WebTransport = class extends Native {\n"
        "    constructor(url, options) {\n"
        "      const hashes = [{algorithm: 'sha-256', value}];\n"
        "      super(url, {...(options || {}), serverCertificateHashes: hashes});\n"
        "    }\n"
        "  };\n"
        "})();\n"
    )
