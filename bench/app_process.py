"""One app server for the benches that measure a single worker (bench.delta, bench.api_batch).

`start_app_process(config)` fills in what these benches talk to (127.0.0.1, /health, a
connection-token secret, an API key, log level info unless set), starts `python -m app` with
one gunicorn worker through bench.runner's launcher (`launch_app`: a `Service` in its own
session; ready once /health answers 200, `Service.wait_http`) and returns an `AppProcess`: its URLs and keys,
`token(user)`, `worker_pid()` (the one worker the bench measures) and `stop()`, which can
fail the bench when the log shows a Python traceback. bench must not import tests, so this is
bench's own, built on the starter bench.runner already has.
"""

from __future__ import annotations

import copy
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from bench.runner import Service, launch_app


@dataclass
class AppProcess:
    """A running `python -m app` with one worker, started by `start_app_process`."""

    service: Service
    port: int
    config: dict[str, Any]
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def api_key(self) -> str:
        return str(self.config["http_api"]["key"])

    def token(self, user: str) -> str:
        """A connection JWT for `user` (HS256, the configured secret, no expiry)."""
        secret = self.config["client"]["token"]["hmac_secret_key"]
        return jwt.encode({"sub": user}, secret, algorithm="HS256")

    def worker_pid(self) -> int:
        """The pid of the one worker (the process a bench measures)."""
        (pid,) = self.service.workers()
        return pid

    def stop(self, check_log: bool = True) -> None:
        """SIGTERM (SIGKILL to the group after 10 s), then remove the files; with `check_log`,
        fail when the log shows a Python traceback."""
        self.service.stop()
        text = self.service.log.read_text(errors="replace")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if check_log:
            assert "Traceback" not in text, f"server log has a traceback:\n{text[-8000:]}"


def start_app_process(config: dict[str, Any]) -> AppProcess:
    """`config` completed as above, served by one worker; returns once /health answers."""
    cfg = copy.deepcopy(config)
    cfg.setdefault("http_server", {}).setdefault("address", "127.0.0.1")
    cfg.setdefault("health", {}).setdefault("enabled", True)
    token = cfg.setdefault("client", {}).setdefault("token", {})
    token.setdefault("hmac_secret_key", "hmac-" + secrets.token_hex(16))
    cfg.setdefault("http_api", {}).setdefault("key", "api-" + secrets.token_hex(16))
    cfg.setdefault("log", {}).setdefault("level", "info")
    workdir = Path(tempfile.mkdtemp(prefix="cfpy-bench-"))
    service, port = launch_app(workdir, cfg, {}, workers=1)
    app = AppProcess(service, port, cfg, workdir)
    try:
        service.wait_http(f"{app.url}/health")
    except BaseException:
        app.stop(check_log=False)
        raise
    return app
