"""Start-up checks of the namespace options `subscription_type` and `auto_cache_recover`, as
Centrifugo's validateChannelOptions makes them (internal/config/validate.go), and that neither
is reported unsupported any more."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, load_config
from app.config.support import findings

HISTORY = {"history_size": 5, "history_ttl": "60s"}


# What each type needs besides itself (a map mode; the shared-poll key and refresh proxy).
NEEDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "map": ({"map": {"mode": "persistent"}}, {}),
    "map_clients": ({"map": {"mode": "ephemeral", "key_ttl": "60s"}}, {}),
    "map_users": ({"map": {"mode": "ephemeral", "key_ttl": "60s"}}, {}),
    "shared_poll": (
        {},
        {
            "shared_poll": {"hmac_secret_key": "k"},
            "channel": {"proxy": {"shared_poll_refresh": {"endpoint": "http://127.0.0.1:1"}}},
        },
    ),
}


def load(tmp_path: Path, ns: dict[str, Any], top: dict[str, Any] | None = None) -> Any:
    path = tmp_path / "config.json"
    data = dict(top or {})
    channel = {**data.get("channel", {}), "namespaces": [{"name": "ns", **ns}]}
    path.write_text(json.dumps({**data, "channel": channel}))
    return load_config(str(path), env={})


@pytest.mark.parametrize("value", ["stream", "map", "map_clients", "map_users", "shared_poll"])
def test_subscription_types_load(tmp_path: Path, value: str) -> None:
    ns, top = NEEDS.get(value, ({}, {}))
    cfg = load(tmp_path, {"subscription_type": value, **ns}, top)
    assert cfg.channel.namespaces[0].subscription_type == value
    assert [f.key for f in findings(cfg) if "subscription_type" in f.key] == []


def test_unknown_subscription_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"namespaces\[ns\]\.subscription_type: unknown 'strem'"):
        load(tmp_path, {"subscription_type": "strem"})


def test_auto_cache_recover_loads_with_forced_cache_recovery(tmp_path: Path) -> None:
    ns = {**HISTORY, "force_recovery": True, "force_recovery_mode": "cache"}
    cfg = load(tmp_path, {**ns, "auto_cache_recover": True})
    assert cfg.channel.namespaces[0].auto_cache_recover is True
    assert findings(cfg) == []


@pytest.mark.parametrize(
    "ns",
    [
        {**HISTORY, "force_recovery": True},  # stream mode
        {**HISTORY, "allow_recovery": True, "force_recovery_mode": "cache"},
        {"force_recovery_mode": "cache"},
    ],
)
def test_auto_cache_recover_needs_forced_cache_recovery(tmp_path: Path, ns: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="auto_cache_recover requires force_recovery"):
        load(tmp_path, {**ns, "auto_cache_recover": True})
