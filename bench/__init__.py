"""Load tools for centrifugo-py: `python -m bench --help` (see bench/README.md).

- `bench.load`: raw asyncio WebSocket clients (JSON protocol, counting mode), multi-process.
- `bench.publish`: paced publishers (Lua SPUBLISH into Redis, HTTP API, raw peer trigger).
- `bench.raw_server`: the raw aiohttp fan-out peer that gives the ceiling figures.
- `bench.runner`: starts Redis, the app and the raw peer, runs scenarios, writes JSON + table.
"""
