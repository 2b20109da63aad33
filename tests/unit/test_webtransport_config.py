"""WebTransport and HTTP/3 settings: what Centrifugo refuses at start (internal/app/mux.go)
is refused when the config loads, and both sections are no longer reported unsupported."""

from __future__ import annotations

import pytest

from app.config import ConfigError, load_config
from app.config.loader import load_config_report

TLS = {
    "CENTRIFUGO_HTTP_SERVER_TLS_ENABLED": "true",
    "CENTRIFUGO_HTTP_SERVER_TLS_CERT_PEM": "c",
    "CENTRIFUGO_HTTP_SERVER_TLS_KEY_PEM": "k",
}


def test_webtransport_needs_http3() -> None:
    with pytest.raises(
        ConfigError, match="can not enable webtransport without experimental HTTP/3"
    ):
        load_config(None, env={"CENTRIFUGO_WEBTRANSPORT_ENABLED": "true", **TLS})


def test_http3_needs_tls() -> None:
    with pytest.raises(ConfigError, match="HTTP/3 requires TLS configured"):
        load_config(None, env={"CENTRIFUGO_HTTP_SERVER_HTTP3_ENABLED": "true"})


def test_http3_refuses_client_certificates_it_would_not_check() -> None:
    env = {
        "CENTRIFUGO_HTTP_SERVER_HTTP3_ENABLED": "true",
        **TLS,
        "CENTRIFUGO_HTTP_SERVER_TLS_CLIENT_CA_PEM": "ca",
    }
    with pytest.raises(ConfigError, match="client_ca_pem"):
        load_config(None, env=env)


def test_enabled_with_tls_loads_and_is_supported() -> None:
    env = {
        "CENTRIFUGO_HTTP_SERVER_HTTP3_ENABLED": "true",
        "CENTRIFUGO_WEBTRANSPORT_ENABLED": "true",
        "CENTRIFUGO_WEBTRANSPORT_HANDLER_PREFIX": "/wt",
        **TLS,
    }
    cfg, report = load_config_report(None, env=env)
    assert cfg.webtransport.enabled and cfg.http_server.http3.enabled
    assert cfg.webtransport.handler_prefix == "/wt"
    assert not report.unsupported
