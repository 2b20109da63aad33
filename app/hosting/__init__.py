"""Hosting: how the aiohttp application of `app.web` becomes the running server.

- `server`: `build_server(cfg)`, the whole server one worker runs (the app, the lean WebSocket
  server in front of aiohttp, listener options, TLS per port, the drain-safe cleanup), and
  `serve(cfg)` to start it in this process.
- `gunicorn`: gunicorn's settings, the worker class (SIGTERM handling) and the application
  that builds one server per worker.
- `listeners`: one SO_REUSEPORT listener per worker slot.
- `startup`: what the master does before forking (checks, multiprocess metrics, connection
  rate sharing, logging), then runs gunicorn.

Nothing is imported here: the master must not import `app.web` (and with it
prometheus_client) before `startup` has prepared multiprocess metrics.
"""
