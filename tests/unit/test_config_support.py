"""Config honesty: every key of Centrifugo's schema is ours and either works or is reported.

tests/data/centrifugo_v6_keys.txt is Centrifugo v6.9.1's own key list, read from its Go
sources by tools/centrifugo_keys.py. The lists checked here are derived from our schema
(app/config/schema.py) and app/config/support.py, so README's table cannot drift from them.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.config import Config, ConfigError, load_config, load_config_report
from app.config import support as config_support
from app.config.section import key_specs
from tests.e2e.helpers import deep_merge

ROOT = Path(__file__).resolve().parents[2]
CENTRIFUGO_KEYS = (ROOT / "tests" / "data" / "centrifugo_v6_keys.txt").read_text().split()
# Kinds whose value is a free-form object or list of objects: any key below them is theirs.
_OPAQUE = ("map", "objlist", "strmap")


def _our_leaves(cls: type = Config, item: bool = False, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, f in key_specs(cls, item).items():
        path = prefix + name
        if f.kind == "section":
            out.update(_our_leaves(f.cls, False, path + "."))
        elif f.kind == "seclist":
            out.update(_our_leaves(f.cls, True, path + "[]."))
        else:
            out[path] = f
    return out


OUR = _our_leaves()


def _covered(key: str) -> bool:
    if key in OUR:
        return True
    return any(
        key.startswith(p + ".") or key.startswith(p + "[]")
        for p, f in OUR.items()
        if f.kind in _OPAQUE
    )


def test_every_centrifugo_key_is_in_our_schema() -> None:
    assert len(CENTRIFUGO_KEYS) > 1000
    missing = [k for k in CENTRIFUGO_KEYS if not _covered(k)]
    assert missing == []


def test_every_unsupported_pattern_names_real_keys() -> None:
    for pattern in config_support.UNSUPPORTED:
        regex = config_support._regex(pattern)
        assert any(regex.match(k) for k in OUR), f"{pattern} matches no key of the schema"
    assert config_support.REFUSED <= set(config_support.UNSUPPORTED)


def _non_default(path: str, f: Any) -> Any:
    kind = f.kind
    if kind == "bool":
        return True
    if kind in ("int", "unixtime"):
        return 7
    if kind == "duration":
        return "7s"
    if kind == "strlist":
        return ["fossil"]
    if kind in ("map", "strmap"):
        return {"k": "v"}
    if kind == "objlist":
        return [{"name": "item1"}]
    return "other"


def _config_setting(path: str, value: Any, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config file setting `path` (list items as `[]`, one item each) to `value`; adds
    to `data` when given."""
    data = {} if data is None else data
    node = data
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part.endswith("[]"):
            name = part[:-2]
            if name not in node:
                first: dict[str, Any] = {"name": "item1"}
                if name == "proxies":
                    first["endpoint"] = "http://127.0.0.1:1/proxy"
                if name == "consumers":  # a known type (required); its section stays empty
                    first["type"] = "google_pub_sub"
                node[name] = [first]
            node = node[name][0]
        elif i == len(parts) - 1:
            node[part] = value
        else:
            node = node.setdefault(part, {})
    return data


def _load(tmp_path: Path, data: dict[str, Any]) -> tuple[Config, Any]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return load_config_report(str(path), env={})


UNSUPPORTED_LEAVES = sorted(p for p in OUR if config_support.is_unsupported(p))
SUPPORTED_LEAVES = sorted(p for p in OUR if not config_support.is_unsupported(p))


# Settings another key needs to pass validation (a proxy enabled needs its endpoint, a proxy
# name its proxy), and how many of them are reported themselves.
_COMPANIONS: dict[str, tuple[dict[str, Any], int]] = {
    "subscribe_stream_proxy_enabled": (
        {"channel": {"proxy": {"subscribe_stream": {"endpoint": "grpc://127.0.0.1:1"}}}},
        1,
    ),
    "subscribe_stream_proxy_name": (
        {"proxies": [{"name": "other", "endpoint": "grpc://127.0.0.1:1"}]},
        0,
    ),
}


@pytest.mark.parametrize("path", UNSUPPORTED_LEAVES)
def test_setting_an_unsupported_key_reports_it(tmp_path: Path, path: str) -> None:
    data = _config_setting(path, _non_default(path, OUR[path]))
    companion, extra = _COMPANIONS.get(path.rsplit(".", 1)[-1], ({}, 0))
    data = deep_merge(data, companion)
    # A key of a switched-off section does nothing (as in Centrifugo): switch them on.
    parts = path.split(".")
    for i in range(1, len(parts)):
        switch = ".".join(parts[:i]) + ".enabled"
        if switch in OUR and switch != path:
            _config_setting(switch, True, data)
            extra += config_support.is_unsupported(switch)
            if f"{switch[: -len('enabled')]}endpoint" in OUR:  # an enabled proxy needs one
                _config_setting(f"{switch[: -len('enabled')]}endpoint", "http://127.0.0.1:1", data)
    _, report = _load(tmp_path, data)
    shown = path.replace("[]", "[item1]")
    assert shown in [f.key for f in report.unsupported]
    assert len(report.unsupported) == 1 + extra
    assert report.unknown_keys == ()


def test_supported_keys_are_not_reported(tmp_path: Path) -> None:
    checked = 0
    for path in SUPPORTED_LEAVES:
        try:
            _, report = _load(tmp_path, _config_setting(path, _non_default(path, OUR[path])))
        except ConfigError:
            continue  # the made-up value is invalid for this key (validated elsewhere)
        assert report.unsupported == (), path
        checked += 1
    assert checked > len(SUPPORTED_LEAVES) // 2


def test_defaults_report_nothing() -> None:
    cfg, report = load_config_report(None, env={})
    assert report == type(report)()
    assert config_support.findings(cfg) == []


def test_unsupported_key_logs_one_warning_naming_it(tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"graphite": {"enabled": True, "port": 2004}, "admin": {"password": "p"}})
    )
    with caplog.at_level(logging.WARNING, logger="centrifugo.config"):
        load_config(str(path), env={})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "graphite.enabled is not supported by centrifugo-py and is ignored: "
        "Graphite export is not implemented",
        "graphite.port is not supported by centrifugo-py and is ignored: "
        "Graphite export is not implemented",
    ]  # admin.password is not reported: it does nothing with the admin off, as in Centrifugo


def test_env_and_flags_are_reported_too() -> None:
    _, report = load_config_report(None, env={"CENTRIFUGO_OPENTELEMETRY_ENABLED": "true"})
    assert [f.key for f in report.unsupported] == ["opentelemetry.enabled"]
    _, report = load_config_report(None, env={}, flags={"swagger.enabled": "true"})
    assert [f.key for f in report.unsupported] == ["swagger.enabled"]


def test_refused_key_stops_loading(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"http_server": {"tls_autocert": {"enabled": True}}}))
    with pytest.raises(ConfigError, match="http_server.tls_autocert.enabled is not supported"):
        load_config(str(path), env={})


def _checkconfig(
    tmp_path: Path, data: dict[str, Any], *flags: str
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return subprocess.run(
        [sys.executable, "-m", "app", "checkconfig", "-c", str(path), *flags],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )


def test_checkconfig_strict(tmp_path: Path) -> None:
    clean = {"client": {"token": {"hmac_secret_key": "k"}}}
    assert _checkconfig(tmp_path, clean, "--strict").returncode == 0
    unsupported = {"opentelemetry": {"enabled": True}}
    assert _checkconfig(tmp_path, unsupported).returncode == 0  # a warning only
    done = _checkconfig(tmp_path, unsupported, "--strict")
    assert done.returncode == 1
    assert "opentelemetry.enabled is not supported by centrifugo-py" in done.stderr
    done = _checkconfig(tmp_path, {"bogus": 1}, "-s")
    assert done.returncode == 1
    assert "unknown key in config: bogus" in done.stderr


def test_readme_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- unsupported-keys:start -->")
    end = readme.index("<!-- unsupported-keys:end -->")
    table = readme[start:end].split("\n", 1)[1].strip()
    assert table == config_support.markdown_table(), (
        "README's table of unsupported keys is stale; paste "
        "`python -c 'from app.config.support import markdown_table; print(markdown_table())'`"
    )
    assert re.search(r"centrifugo checkconfig --strict", readme)
