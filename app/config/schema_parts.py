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
    cert_pem: str = ""
    key_pem: str = ""
    server_ca_pem: str = ""
    client_ca_pem: str = ""
    insecure_skip_verify: bool = False
    server_name: str = ""


@dataclass(frozen=True, slots=True)
class TLSAutocertConfig(Section):
    enabled: bool = False
    host_whitelist: tuple[str, ...] = ()
    cache_dir: str = ""
    email: str = ""
    server_name: str = ""
    http: bool = False
    http_addr: str = ":80"


@dataclass(frozen=True, slots=True)
class EnabledConfig(Section):
    enabled: bool = False


@dataclass(frozen=True, slots=True)
class ProxyHTTPConfig(Section):
    tls: TLSConfig = subsection(TLSConfig)
    static_headers: dict[str, str] = empty_map()
    # [{status_code, to_error{code,message,temporary}, to_disconnect{code,reason}}]
    status_to_code_transforms: tuple[dict[str, Any], ...] = object_list()


@dataclass(frozen=True, slots=True)
class ProxyGRPCConfig(Section):
    tls: TLSConfig = subsection(TLSConfig)
    credentials_key: str = ""
    credentials_value: str = ""
    compression: bool = False
    static_metadata: dict[str, str] = empty_map()


@dataclass(frozen=True, slots=True)
class ProxyConfig(Section):
    endpoint: str = ""
    timeout: Duration = Duration(1.0)
    http_headers: tuple[str, ...] = ()
    grpc_metadata: tuple[str, ...] = ()
    emulated_headers: tuple[str, ...] = ()
    binary_encoding: bool = False
    include_connection_meta: bool = False
    http: ProxyHTTPConfig = subsection(ProxyHTTPConfig)
    grpc: ProxyGRPCConfig = subsection(ProxyGRPCConfig)


@dataclass(frozen=True, slots=True)
class NamedProxyConfig(ProxyConfig):
    name: str = ""


@dataclass(frozen=True, slots=True)
class EnabledProxyConfig(ProxyConfig):
    enabled: bool = False


@dataclass(frozen=True, slots=True)
class CodeTransformsConfig(Section):
    enabled: bool = False
    # [{code, to{code, reason}}] (client) / [{code, to{status_code, body}}] (uni_sse, uni_http_stream)
    transforms: tuple[dict[str, Any], ...] = object_list()
