"""The engine's Lua scripts (lua/*.lua), read into `Script`s called by SHA1.

Each script's header names its KEYS, ARGV and reply; the key names come from keys.py.
"""

from __future__ import annotations

from pathlib import Path

from app.engines.redis.pipeline import Script

LUA_DIR = Path(__file__).resolve().parents[3] / "lua"
SCRIPTS = (
    "history_add",
    "history_get",
    "history_remove",
    "publish_idempotent",
    "presence_add",
    "presence_remove",
    "presence_get",
    "presence_stats",
    # The map broker's (app/engines/redis/maps.py), on its own shards.
    "map_publish",
    "map_remove",
    "map_read_state",
    "map_read_stream",
    "map_find_expired",
    "map_remove_expired",
    "map_clear",
    # Shared poll coordination across workers (app/sharedpoll/redis_link.py).
    "shared_poll_heartbeat",
    "shared_poll_release",
    "shared_poll_versions",
)


def load_scripts() -> dict[str, Script]:
    """Every script of SCRIPTS, read from LUA_DIR (once per shard reached)."""
    return {name: Script(name, (LUA_DIR / f"{name}.lua").read_text()) for name in SCRIPTS}
