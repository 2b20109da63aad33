"""Chaos soak: `python -m bench.chaos --minutes N` (bench/README.md, "Chaos soak").

A real server (2 gunicorn workers) on a real redis-server, >= 200 recovering centrifuge-python
clients on >= 20 channels with history, a paced publisher with idempotency keys, and a fault
schedule repeated for N minutes. At the end, per client: publications lost outside a
`recovered=false` window and duplicates (both must be 0), plus worker restarts, time to heal
after each fault and peak RSS. Exit status 0 only if all of it holds.

Modules: `procs` (redis-server, the app, /proc readings), `clients` (SDK subscribers, the
slow consumer), `publisher`, `faults` (the injectors), `accounting` (lost/duplicates, pure),
`run` (the phases), `report` (document, tables, verdict).
"""
