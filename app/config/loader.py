"""Loading the configuration: a file (JSON, YAML or TOML), ``CENTRIFUGO_*`` environment
variables and flags, merged with priority flags > env > file > defaults into one `Config`,
then inherited namespace values resolved and the result validated.

Nothing here does I/O after `load_config` returns. Each source is first coerced into a
normalized dict (app/config/values.py); the dicts merge key by key and the schema classes are
built once from the merged dict.
"""

import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import yaml

from app.config.env import env_index, env_name, leaves
from app.config.platform_env import PlatformRedis, apply_platform_redis
from app.config.schema import Config
from app.config.schema_channel import ChannelOptions
from app.config.section import ConfigError, Duration, key_specs, render
from app.config.support import Finding, findings
from app.config.validation import validate
from app.config.values import Coercer, load_json

__all__ = ["LoadReport", "load_config", "load_config_report", "default_config_dict"]

logger = logging.getLogger("centrifugo.config")


def _merge(cls: type, item: bool, base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Override ``base`` with ``over``; sections merge key by key, everything else replaces."""
    schema = key_specs(cls, item)
    out = dict(base)
    for key, value in over.items():
        f = schema[key]
        if f.kind == "section" and key in out:
            out[key] = _merge(f.cls, False, out[key], value)
        else:
            out[key] = value
    return out


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value


def _name_for_env(name: str) -> str:
    return name.replace(".", "_").replace("-", "_").upper()


# Kubernetes injects <SERVICE>_PORT / <SERVICE>_SERVICE_* variables; Centrifugo does not warn
# about them when unknown and neither do we.
_K8S_ENV_RE = re.compile(r"^CENTRIFUGO(?:_[A-Z0-9_]+)?_(PORT|SERVICE_)")

# Top-level named lists that accept CENTRIFUGO_<LIST>_<ITEM NAME>_<OPTION> overrides.
_NAMED_LISTS: tuple[tuple[str, ...], ...] = (
    ("channel", "namespaces"),
    ("rpc", "namespaces"),
    ("proxies",),
    ("consumers",),
)


def _get_path(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _apply_item_overrides(
    loader: Coercer, merged: dict[str, Any], pending: dict[str, str]
) -> list[str]:
    """Apply CENTRIFUGO_<LIST>_<NAME>_<OPTION> variables to existing list items.

    Returns the variables that matched no item/option.
    """
    unmatched = []
    for env_key, text in sorted(pending.items()):
        applied = False
        for list_path in _NAMED_LISTS:
            prefix = "CENTRIFUGO_" + env_name(list_path) + "_"
            if not env_key.startswith(prefix):
                continue
            rest = env_key[len(prefix) :]
            f = leaves()[".".join(list_path)][1]
            items = _get_path(merged, list_path)
            if not items:
                continue
            # Longest item name first so that "chat_private" wins over "chat".
            candidates = sorted(enumerate(items), key=lambda p: -len(str(p[1].get("name", ""))))
            for index, item in candidates:
                name_key = _name_for_env(str(item.get("name", "")))
                if not name_key or not rest.startswith(name_key + "_"):
                    continue
                option = rest[len(name_key) + 1 :]
                path = f"{'.'.join(list_path)}[{item.get('name')}]"
                if f.kind == "seclist":
                    entry = env_index(f.cls, True).get(option)
                    if entry is None:
                        continue
                    opt_path, opt_field = entry
                    value = loader.coerce(
                        opt_field, text, f"{path}.{'.'.join(opt_path)}", from_string=True
                    )
                    patch: dict[str, Any] = {}
                    _set_path(patch, opt_path, value)
                    new_item = _merge(f.cls, True, item, patch)
                else:
                    # Opaque items (consumers): top-level option only, JSON when it parses.
                    try:
                        value = load_json(text)
                    except ValueError:
                        value = text
                    new_item = dict(item, **{option.lower(): value})
                new_items = list(items)
                new_items[index] = new_item
                _set_path(merged, list_path, new_items)
                applied = True
                break
            if applied:
                break
        if not applied:
            unmatched.append(env_key)
    return unmatched


def _build(cls: type, data: dict[str, Any], item: bool) -> Any:
    kwargs: dict[str, Any] = {}
    for name, f in key_specs(cls, item).items():
        if name not in data:
            continue
        value = data[name]
        if f.kind == "section":
            kwargs[name] = _build(f.cls, value, False)
        elif f.kind == "seclist":
            kwargs[name] = tuple(_build(f.cls, v, True) for v in value)
        elif f.kind in ("strlist", "objlist"):
            kwargs[name] = tuple(value)
        elif f.kind == "duration":
            kwargs[name] = Duration(float(value))
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _resolve(cfg: Config) -> Config:
    """Fill inherited namespace values so consumers never re-implement inheritance."""
    channel = cfg.channel

    def fix(opts: ChannelOptions) -> ChannelOptions:
        changes: dict[str, Any] = {}
        if opts.history_meta_ttl == 0:
            changes["history_meta_ttl"] = channel.history_meta_ttl
        if opts.publication_data_format == "":
            changes["publication_data_format"] = channel.publication_data_format
        if opts.force_recovery_mode == "":
            changes["force_recovery_mode"] = "stream"
        return replace(opts, **changes) if changes else opts

    def fix_token(token: Any) -> Any:
        return replace(token, user_id_claim="sub") if token.user_id_claim == "" else token

    new_channel = replace(
        channel,
        without_namespace=fix(channel.without_namespace),
        namespaces=tuple(fix(ns) for ns in channel.namespaces),
    )
    client = replace(
        cfg.client,
        token=fix_token(cfg.client.token),
        subscription_token=fix_token(cfg.client.subscription_token),
    )
    return replace(cfg, channel=new_channel, client=client)


def _read_file(path: str) -> dict[str, Any]:
    lower = path.lower()
    try:
        with open(path, "rb") as fh:
            content = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"error reading config file {path}: {e.strerror or e}") from None
    if not content.strip():
        return {}
    try:
        if lower.endswith(".json"):
            data = load_json(content)
        elif lower.endswith((".yaml", ".yml")):
            data = yaml.safe_load(content)
        elif lower.endswith(".toml"):
            data = tomllib.loads(content.decode("utf-8"))
        else:
            raise ConfigError(
                f"unsupported config file extension: {path} (use .json, .yaml, .yml or .toml)"
            )
    except ConfigError:
        raise
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"error parsing config file {path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"error parsing config file {path}: top level must be an object")
    return data


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a load found besides the configuration: keys it did not know, and keys of
    Centrifugo's schema set to values this server does not honour (app/config/support.py)."""

    unknown_keys: tuple[str, ...] = ()
    unknown_envs: tuple[str, ...] = ()
    unsupported: tuple[Finding, ...] = ()
    # Redis sections whose address came from the platform's REDIS_URL (platform_env.py).
    platform_redis: PlatformRedis | None = None


def load_config(
    path: str | None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Load, merge (flags > env > file > defaults), resolve and validate the configuration.

    ``env`` defaults to ``os.environ``. ``flags`` maps dotted key paths ("http_server.port") to
    values; strings are parsed by the key's type like env values. Unknown keys and unsupported
    keys are logged, one warning each; an unsupported key that is a security promise
    (`support.REFUSED`) raises ConfigError.
    """
    cfg, report = load_config_report(path, env, flags)
    for key in report.unknown_keys:
        logger.warning("unknown key in configuration file: %s", key)
    for env_key in report.unknown_envs:
        logger.warning("unknown environment variable: %s", env_key)
    for finding in report.unsupported:
        if finding.refused:
            raise ConfigError(finding.message())
        logger.warning("%s", finding.message())
    if report.platform_redis is not None:
        # A warning, not info: it is printed before the log config applies, and an address
        # source Centrifugo does not have deserves a line at every start.
        logger.warning("%s", report.platform_redis.message())
    return cfg


def load_config_report(
    path: str | None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> tuple[Config, LoadReport]:
    """`load_config` without logging: the configuration and what the load found."""
    if env is None:
        env = os.environ
    loader = Coercer(env)

    file_data = loader.section(Config, _read_file(path), "", item=False) if path else {}

    # Environment.
    env_data: dict[str, Any] = {}
    pending: dict[str, str] = {}
    index = env_index()
    for env_key in sorted(env):
        if not env_key.startswith("CENTRIFUGO_") or env_key.startswith("CENTRIFUGO_VAR_"):
            continue
        text = env[env_key]
        if text == "":
            continue  # empty value means unset
        entry = index.get(env_key[len("CENTRIFUGO_") :])
        if entry is None:
            pending[env_key] = text
            continue
        key_path, f = entry
        _set_path(env_data, key_path, loader.coerce(f, text, ".".join(key_path), from_string=True))
    merged = _merge(Config, False, file_data, env_data)
    unknown_envs = [
        env_key
        for env_key in _apply_item_overrides(loader, merged, pending)
        if not _K8S_ENV_RE.match(env_key)
    ]

    # Flags.
    if flags:
        flag_data: dict[str, Any] = {}
        known = leaves()
        for key, value in flags.items():
            entry = known.get(key)
            if entry is None:
                raise ConfigError(f"unknown flag: --{key}")
            key_path, f = entry
            coerced = loader.coerce(f, value, key, from_string=isinstance(value, str))
            _set_path(flag_data, key_path, coerced)
        merged = _merge(Config, False, merged, flag_data)

    # Last: only a section no source gave an address takes the platform's REDIS_URL.
    platform_redis = apply_platform_redis(merged, env)

    try:
        cfg = _resolve(_build(Config, merged, False))
    except TypeError as e:  # pragma: no cover - defensive: schema/data mismatch
        raise ConfigError(f"invalid configuration: {e}") from None
    validate(cfg)
    object.__setattr__(cfg, "raw", render(cfg, False))
    report = LoadReport(
        tuple(loader.unknown), tuple(unknown_envs), tuple(findings(cfg)), platform_redis
    )
    return cfg, report


def default_config_dict() -> dict[str, Any]:
    """Every key with its default, nested like a v6 config file (durations as "25s")."""
    return render(Config(), False)
