"""A real Node on the memory engine, started from a config dict, for in-process tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from app.config import load_config
from app.engines.memory import MemoryBroker, MemoryPresenceManager
from app.maps.memory import MemoryMapBroker
from app.node import Node


async def start_memory_node(workdir: Path, config: dict[str, Any], name: str = "config") -> Node:
    """Writes `config` as `<workdir>/<name>.json`, loads it as the CLI would (no env) and
    starts a Node on it; the caller shuts it down."""
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config))
    node = Node(
        load_config(str(path), env={}),
        MemoryBroker(),
        MemoryPresenceManager(),
        map_broker=MemoryMapBroker(),
    )
    await node.start()
    return node


@asynccontextmanager
async def memory_node(workdir: Path, config: dict[str, Any]) -> AsyncIterator[Node]:
    """`start_memory_node`, shut down on exit."""
    node = await start_memory_node(workdir, config)
    try:
        yield node
    finally:
        await node.shutdown()
