"""The Redis address a Heroku-style platform hands over in its own variable: a Redis add-on
sets ``REDIS_URL`` (older Heroku Redis plans also ``REDIS_TLS_URL``, the ``rediss://`` one),
and rotates its credentials by changing the variable and restarting the app.

Centrifugo reads neither variable. Here a Redis section that is in use (``engine.redis`` with
``engine.type: redis``, ``broker.redis`` / ``presence_manager.redis`` when enabled with type
redis, ``map_broker.redis`` with ``map_broker.type: redis``) and configures no address at all
(no ``address``, ``cluster_address`` or ``sentinel_address`` from the file, env or flags)
takes the platform's URL as its ``address``, read from the environment at every start: nothing
is copied into other variables, so a rotation reaches the server at its next start. The engine
type is never switched: REDIS_URL alone keeps the memory engine (an app may use a Redis add-on
for something else); ``CENTRIFUGO_ENGINE_TYPE=redis`` opts in. An address configured anywhere
wins over the platform's.

Heroku Redis serves ``rediss://`` with a self-signed certificate. The way to accept it is
Centrifugo's own TLS block of the section, not a URL option: ``engine.redis.tls.enabled`` and
``engine.redis.tls.insecure_skip_verify`` (``CENTRIFUGO_ENGINE_REDIS_TLS_ENABLED=true``,
``CENTRIFUGO_ENGINE_REDIS_TLS_INSECURE_SKIP_VERIFY=true``), or ``tls.server_ca_pem`` with the
certificate to pin it. The start-up line says so when a ``rediss://`` URL is taken without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PLATFORM_REDIS_VARS", "PlatformRedis", "apply_platform_redis"]

# Looked up in this order: Heroku sets REDIS_TLS_URL (rediss://) beside a plain REDIS_URL on
# the plans that had both; TLS is the one to use when offered.
PLATFORM_REDIS_VARS = ("REDIS_TLS_URL", "REDIS_URL")
_ADDRESS_KEYS = ("address", "cluster_address", "sentinel_address")


@dataclass(frozen=True, slots=True)
class PlatformRedis:
    """Which variable gave the address of which sections ("engine.redis", ...); the sections
    taking a ``rediss://`` URL with their TLS block off (the system roots then verify)."""

    variable: str
    sections: tuple[str, ...]
    system_roots: tuple[str, ...] = ()

    def message(self) -> str:
        """The one start-up line."""
        keys = ", ".join(f"{s}.address" for s in self.sections)
        line = f"{keys} not configured: using {self.variable} (set by the platform)"
        if self.system_roots:
            first = self.system_roots[0]
            line += (
                f"; its rediss:// certificate is verified against the system roots, for a "
                f"self-signed one (Heroku Redis) set {first}.tls.enabled and "
                f"{first}.tls.insecure_skip_verify (or {first}.tls.server_ca_pem)"
            )
        return line


def _section(data: Mapping[str, Any], *path: str) -> Mapping[str, Any]:
    for part in path:
        value = data.get(part)
        if not isinstance(value, Mapping):
            return {}
        data = value
    return data


def _redis_sections_in_use(merged: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(top-level section, its redis key) for every Redis section the merged config uses,
    read as app/engines/build.py's engine_choice reads the built Config."""
    used = []
    if _section(merged, "engine").get("type", "memory") == "redis":
        used.append(("engine", "redis"))
    for name in ("broker", "presence_manager"):
        part = _section(merged, name)
        if part.get("enabled", False) and part.get("type", "memory") == "redis":
            used.append((name, "redis"))
    if _section(merged, "map_broker").get("type", "memory") == "redis":
        used.append(("map_broker", "redis"))
    return used


def apply_platform_redis(merged: dict[str, Any], env: Mapping[str, str]) -> PlatformRedis | None:
    """Set the platform's URL as `address` of the Redis sections in use that configure none,
    in the merged (file + env + flags) dict; what was done, or None when nothing was."""
    found = next(((name, env[name]) for name in PLATFORM_REDIS_VARS if env.get(name)), None)
    if found is None:
        return None
    variable, url = found
    sections = []
    system_roots = []
    for top, key in _redis_sections_in_use(merged):
        redis = _section(merged, top, key)
        if any(redis.get(k) for k in _ADDRESS_KEYS):
            continue
        where = f"{top}.{key}"
        merged.setdefault(top, {}).setdefault(key, {})["address"] = [url]
        sections.append(where)
        if url.lower().startswith("rediss") and not _section(redis, "tls").get("enabled"):
            system_roots.append(where)
    if not sections:
        return None
    return PlatformRedis(variable, tuple(sections), tuple(system_roots))
