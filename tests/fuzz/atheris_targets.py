"""Coverage-guided fuzzing of the parsers a stranger reaches, with atheris (libFuzzer).

Not collected by pytest (no test_ prefix); run one target for a fixed time:

    pip install atheris
    python tests/fuzz/atheris_targets.py json -max_total_time=600
    python tests/fuzz/atheris_targets.py protobuf -max_total_time=600
    python tests/fuzz/atheris_targets.py websocket -max_total_time=600
    python tests/fuzz/atheris_targets.py head -max_total_time=600

Targets (every libFuzzer flag after the name is passed through):
- json / protobuf: `decode_commands` on the input, then every typed getter on every
  decoded field (tests/fuzz/codec_checks.py: Commands or DecodeError, typed values).
- websocket: the input, after an upgrade and a connect frame, fed to a real LeanWebSocket
  of an in-process worker app (tests/fuzz/harness.py); nothing may raise, nothing may be
  logged at error level, the server's bytes must be in the documented set.
- head: `parse_upgrade` and the 101 it would send, on the input as a request head.

The app's modules are instrumented for coverage. A failing input does not stop the run:
each distinct failure (exception type and innermost app frame) is printed once and saved
under --crash-dir (default /tmp/atheris-crashes/<target>/), so one known bug does not
hide the next; the summary at exit counts inputs and distinct failures.
"""

from __future__ import annotations

import hashlib
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import atheris  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

with atheris.instrument_imports(include=["app"]):
    import app.client  # noqa: F401
    import app.jsonraw  # noqa: F401
    import app.protocol.json  # noqa: F401  (instrumented before first use)
    import app.protocol.protobuf  # noqa: F401
    import app.transports.websocket.lean  # noqa: F401

from app.protocol.json import JSON  # noqa: E402
from app.protocol.protobuf import PROTOBUF  # noqa: E402
from app.transports.websocket.handshake import handshake_response, parse_upgrade  # noqa: E402
from fuzz import codec_checks, outcome  # noqa: E402
from fuzz import strategies as S  # noqa: E402

_failures: dict[str, int] = {}
_runs = 0


def _signature(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/app/" in f.filename]
    where = f"{frames[-1].filename.split('/app/')[-1]}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__} at app/{where}"


def _guard(target: Callable[[bytes], None], crash_dir: Path) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        global _runs
        _runs += 1
        try:
            target(data)
        except Exception as e:  # every failure is recorded; the run goes on
            sig = _signature(e)
            if sig not in _failures:
                name = hashlib.sha1(data).hexdigest()[:16]
                crash_dir.mkdir(parents=True, exist_ok=True)
                (crash_dir / name).write_bytes(data)
                print(
                    f"\n=== new failure {sig}: {e!r:.300}\n    input {crash_dir / name}: {data[:200]!r}"
                )
                traceback.print_exc(limit=-4)
            _failures[sig] = _failures.get(sig, 0) + 1
        if (_runs >= 1024 and _runs & (_runs - 1) == 0) or _runs % 100_000 == 0:
            _summary()

    return run


_name = ""


def _summary() -> None:
    """libFuzzer ends the process with C's exit(), past Python's atexit: the summary is
    printed (and written to the crash dir) as the run goes instead."""
    lines = [f"=== atheris {_name}: {_runs} inputs, {len(_failures)} distinct failures"]
    lines += [f"    {n:8d}  {sig}" for sig, n in sorted(_failures.items(), key=lambda kv: -kv[1])]
    text = "\n".join(lines)
    print(text, flush=True)
    _CRASHES.mkdir(parents=True, exist_ok=True)
    (_CRASHES / "summary.txt").write_text(text + "\n")


_CRASHES = Path("/tmp/atheris-crashes")


def _seeds(name: str) -> list[bytes]:
    """A few well-formed inputs to start from (libFuzzer mutates from there)."""
    from fuzz.test_websocket_lean_fuzz import UPGRADE_JSON, _pb_connect

    json_cmds = [
        b'{"id":1,"connect":{"token":"x","data":{"a":1},"subs":{"ch":{"offset":"5"}}}}',
        b'{"id":2,"subscribe":{"channel":"ns:x","recover":true,"offset":3,"epoch":"e"}}',
        b'{"id":3,"publish":{"channel":"x","data":[1,"2",{"3":null}]}}',
        b'{"id":4,"history":{"channel":"x","limit":10,"since":{"offset":1,"epoch":"a"},"reverse":true}}',
        b'{"id":5,"rpc":{"method":"m","data":1}}\n{"id":6,"presence":{"channel":"x"}}',
    ]
    if name == "json":
        return json_cmds
    if name == "protobuf":
        return [_pb_connect()]
    if name == "head":
        return [UPGRADE_JSON.rstrip(b"\r\n")]
    return [S.ws_frame(c) for c in json_cmds] + [S.ws_frame(b"ab", 9), S.ws_frame(b"\x03\xe8", 8)]


def _json(data: bytes) -> None:
    commands = codec_checks.decode(JSON, data)
    for cmd in commands or ():
        codec_checks.check_getters(cmd.params, raw_is_json=True)


def _protobuf(data: bytes) -> None:
    commands = codec_checks.decode(PROTOBUF, data)
    for cmd in commands or ():
        codec_checks.check_getters(cmd.params, raw_is_json=False)


def _head(data: bytes) -> None:
    up = parse_upgrade(data, S.WS_PATH.encode(), compression=bool(data[:1] == b"G"))
    if up is not None:
        response = handshake_response(up)
        assert response.count(b"\r\n\r\n") == 1 and response.isascii(), response


def _websocket_target() -> Callable[[bytes], None]:
    from fuzz.harness import InProcessServer
    from fuzz.test_websocket_lean_fuzz import CONFIG, CONNECT_JSON, UPGRADE_JSON

    server = InProcessServer(CONFIG)

    def target(data: bytes) -> None:
        sent = server.session([UPGRADE_JSON + CONNECT_JSON, data])
        errors = server.take_errors()
        assert not errors, errors
        outcome.parse_server_bytes(sent)

    return target


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("json", "protobuf", "websocket", "head"):
        sys.exit(__doc__)
    name = sys.argv.pop(1)
    crash_dir = Path(f"/tmp/atheris-crashes/{name}")
    for arg in list(sys.argv):
        if arg.startswith("--crash-dir="):
            crash_dir = Path(arg.split("=", 1)[1])
            sys.argv.remove(arg)
    targets: dict[str, Callable[[bytes], None]] = {
        "json": _json,
        "protobuf": _protobuf,
        "head": _head,
    }
    target = targets[name] if name in targets else _websocket_target()

    global _name, _CRASHES
    _name, _CRASHES = name, crash_dir
    if not any(not a.startswith("-") for a in sys.argv[1:]):  # no corpus dir given
        corpus = Path(f"/tmp/atheris-corpus/{name}")
        corpus.mkdir(parents=True, exist_ok=True)
        for seed in _seeds(name):
            (corpus / hashlib.sha1(seed).hexdigest()[:16]).write_bytes(seed)
        sys.argv.append(str(corpus))
    if name == "json" and not any(a.startswith("-dict=") for a in sys.argv):
        # Field names and JSON tokens libFuzzer splices in (it cannot guess them).
        tokens = ["id", "connect", "subscribe", "publish", "history", "rpc", "presence"]
        tokens += ["channel", "data", "offset", "epoch", "limit", "since", "subs", "token"]
        words = [f'"{t}"' for t in tokens] + ["true", "null", "{}", "[]", "\\u0000", "1e999"]
        path = Path(f"/tmp/atheris-corpus/{name}.dict")
        path.write_text("".join(f"{json.dumps(w)}\n" for w in words))
        sys.argv.append(f"-dict={path}")
    atheris.Setup(sys.argv, _guard(target, crash_dir))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
