"""The small pieces of the config schema that several sections share: TLS, proxies, code
transforms. See app/config/section.py for what a section class is."""

from dataclasses import dataclass
from typing import Any

from app.config.section import Duration, Section, empty_map, object_list, subsection

__all__ = [
    "TLSConfig",
    "TLSAutocertConfig",
    "EnabledConfig",
    "ProxyHTTPConfig",
    "ProxyGRPCConfig",
    "ProxyConfig",
    "NamedProxyConfig",
    "EnabledProxyConfig",
    "CodeTransformsConfig",
]


@dataclass(frozen=True, slots=True)
class TLSConfig(Section):
    enabled: bool = False
    """Turns TLS on for this connection or listener."""
    cert_pem: str = ""
    """Certificate in PEM form: a file path, the PEM text itself, or that text base64-encoded."""
    key_pem: str = ""
    """Private key of `cert_pem`, in PEM form: a file path, the PEM text itself, or that text
    base64-encoded."""
    server_ca_pem: str = ""
    """CA certificate (PEM: path, text or base64) a client uses to verify the server it dials.
    Empty: the system roots."""
    client_ca_pem: str = ""
    """CA certificate (PEM: path, text or base64) a server uses to verify client certificates.
    Setting it turns on mutual TLS: clients must present a certificate it signed."""
    insecure_skip_verify: bool = False
    """Skip verifying the server's certificate chain and host name when dialling. Insecure: for
    tests only."""
    server_name: str = ""
    """Server name sent as SNI and checked against the certificate the server returns."""


@dataclass(frozen=True, slots=True)
class TLSAutocertConfig(Section):
    enabled: bool = False
    """Obtain certificates automatically from an ACME provider (Let's Encrypt)."""
    host_whitelist: tuple[str, ...] = ()
    """Host names certificates may be requested for. Empty allows any host, which production should
    avoid."""
    cache_dir: str = ""
    """Directory where issued certificates are kept, so a restart does not request them again."""
    email: str = ""
    """Contact address given to the ACME provider (expiry notices, account registration)."""
    server_name: str = ""
    """Server name (SNI) the certificate is requested for."""
    http: bool = False
    """Answer ACME `http-01` challenges on a plain HTTP listener instead of using `tls-alpn-01`."""
    http_addr: str = ":80"
    """Address of the `http-01` challenge listener. Default `:80`."""


@dataclass(frozen=True, slots=True)
class EnabledConfig(Section):
    enabled: bool = False
    """Turns this feature on."""


@dataclass(frozen=True, slots=True)
class ProxyHTTPConfig(Section):
    tls: TLSConfig = subsection(TLSConfig)
    """TLS of the connections to an HTTP proxy endpoint (`https://`)."""
    static_headers: dict[str, str] = empty_map()
    """Headers added to every HTTP proxy request. A header of the client's request with the same
    name wins."""
    # [{status_code, to_error{code,message,temporary}, to_disconnect{code,reason}}]
    status_to_code_transforms: tuple[dict[str, Any], ...] = object_list()
    """Rules turning an HTTP status of the backend into a protocol error or a disconnect for the
    client: a list of `{"status_code", "to_error": {"code", "message", "temporary"},
    "to_disconnect": {"code", "reason"}}`."""


@dataclass(frozen=True, slots=True)
class ProxyGRPCConfig(Section):
    tls: TLSConfig = subsection(TLSConfig)
    """TLS of the connections to a gRPC proxy endpoint."""
    credentials_key: str = ""
    """Metadata key of per-call credentials sent with every gRPC proxy call (paired with
    `credentials_value`)."""
    credentials_value: str = ""
    """Value sent under `credentials_key` with every gRPC proxy call."""
    compression: bool = False
    """Gzip-compress gRPC proxy calls."""
    static_metadata: dict[str, str] = empty_map()
    """Metadata added to every gRPC proxy call. Metadata of the client's request with the same key
    wins."""


@dataclass(frozen=True, slots=True)
class ProxyConfig(Section):
    endpoint: str = ""
    """Backend address: an `http://` or `https://` URL (e.g.
    `http://localhost:3000/centrifugo/connect`) or `grpc://host:port` for a gRPC proxy."""
    timeout: Duration = Duration(1.0)
    """How long one proxy request to the backend may take. Default `1s`."""
    http_headers: tuple[str, ...] = ()
    """Names of the connection request's own HTTP headers forwarded to the backend (as metadata to a
    gRPC proxy). Trust them only when a reverse proxy clients cannot bypass sets them; headers a
    client sends through headers emulation belong in `emulated_headers`."""
    grpc_metadata: tuple[str, ...] = ()
    """Keys of the incoming gRPC metadata forwarded to the backend (as HTTP headers to an HTTP
    proxy)."""
    emulated_headers: tuple[str, ...] = ()
    """Names taken from the headers a client sends inside its connect command (headers emulation)
    and forwarded to the backend. The client controls them: list only what the backend validates
    itself. A name in `http_headers` too prefers the transport's value."""
    binary_encoding: bool = False
    """Send publication data base64-encoded in proxy requests (for binary payloads that are not
    JSON)."""
    include_connection_meta: bool = False
    """Add the connection's `meta` to proxy requests (the connect proxy is where it is set, so not
    there)."""
    http: ProxyHTTPConfig = subsection(ProxyHTTPConfig)
    """Options used when `endpoint` is an HTTP URL."""
    grpc: ProxyGRPCConfig = subsection(ProxyGRPCConfig)
    """Options used when `endpoint` is a gRPC address."""


@dataclass(frozen=True, slots=True)
class NamedProxyConfig(ProxyConfig):
    name: str = ""
    """Name of this proxy, unique among `proxies`; namespaces and RPC namespaces pick it with their
    `*_proxy_name` options."""


@dataclass(frozen=True, slots=True)
class EnabledProxyConfig(ProxyConfig):
    enabled: bool = False
    """Turns this proxy on: its events go to the backend at `endpoint`."""


@dataclass(frozen=True, slots=True)
class CodeTransformsConfig(Section):
    enabled: bool = False
    """Turns the `transforms` rules on."""
    # [{code, to{code, reason}}] (client) / [{code, to{status_code, body}}] (uni_sse, uni_http_stream)
    transforms: tuple[dict[str, Any], ...] = object_list()
    """The rules, each for one connect error code: `{"code", "to": {"code", "reason"}}` mapping it
    to a disconnect (client section) or `{"code", "to": {"status_code", "body"}}` mapping it to an
    HTTP response (`uni_sse`, `uni_http_stream`)."""
