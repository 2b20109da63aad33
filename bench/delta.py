"""Fossil delta on the wire: `python -m bench.delta` (issue 16's delta benchmark).

    python -m bench.delta [--subscribers 1000] [--publications 100] [--rate 20] [--runs 3]
                          [--sample-every 50] [--out F]

Starts one app worker (memory engine) with a namespace `dl:` that allows fossil delta, marks
every publication delta-capable (`delta_publish`) and forces positioning (patches go only to
positioned subscriptions; positioning needs history). Connects two groups of `--subscribers`
raw WebSocket clients (JSON protocol, one asyncio process): the *delta* group subscribes to
`dl:delta` with `delta: "fossil"`, the *plain* group to `dl:plain` without it. Both stay
connected for the whole bench. Runs alternate between the groups (delta, plain, delta, ...):
each publishes `--publications` ~2 KB JSON documents, successive ones differing in one field
(`seq`), through `POST /api/publish` at `--rate` per second, one request at a time, and waits
until every subscriber has every publication.

Per run: bytes per delivery as the clients received them (WebSocket frame payload, and with
frame headers), the server worker's CPU time (user + system, psutil) from the first publish
to the last delivery divided by the deliveries, and how many deliveries were patches. Every
`--sample-every`-th client of each group decodes what it receives (patches applied with the
fossil decoder of tests/unit/test_fossil.py, the port of centrifuge-js's) and must rebuild
every published document byte for byte, or the run fails. The table shows the medians over
`--runs`; the JSON (`--out`) has every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]

from bench.app_process import AppProcess, start_app_process
from bench.load import mask_frame
from bench.rawws import RawWsClient
from tests.unit.test_fossil import apply as fossil_apply

MODES = ("delta", "plain")
CONFIG: dict[str, Any] = {
    "log": {"level": "warn"},
    "channel": {
        "namespaces": [
            {
                "name": "dl",
                "allow_subscribe_for_client": True,
                "allowed_delta_types": ["fossil"],
                "delta_publish": True,
                "force_positioning": True,
                "history_size": 100,
                "history_ttl": "300s",
            }
        ]
    },
}
PING = b"{}"
PUSH = b'{"push":'


def document(seq: int) -> bytes:
    """~2 KB of JSON; documents of successive `seq` differ only in that field."""
    doc: dict[str, object] = {
        f"field_{i:02d}": f"some fairly long value number {i}" for i in range(44)
    }
    doc["seq"] = seq
    return json.dumps(doc, separators=(",", ":")).encode()


class Sub(RawWsClient):
    """One raw WebSocket subscriber. Counts push messages and the bytes of the frames that
    carried them; a sampled one also decodes each publication and keeps the documents."""

    def __init__(self, port: int, tok: str, channel: str, delta: bool, sample: bool) -> None:
        super().__init__("127.0.0.1", port)
        sub: dict[str, Any] = {"channel": channel}
        if delta:
            sub["delta"] = "fossil"
        self.setup = mask_frame(json.dumps({"id": 1, "connect": {"token": tok}}).encode())
        self.setup += mask_frame(json.dumps({"id": 2, "subscribe": sub}).encode())
        self.delta = delta
        self.sample = sample
        self.ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.base = b""  # the last document a delta subscriber holds, kept across runs
        self.reset()

    def reset(self) -> None:
        self.pushes = 0
        self.payload_bytes = 0
        self.wire_bytes = 0
        self.patches = 0
        self.docs: list[bytes] = []

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before subscribed: {exc}"))

    def on_open(self) -> None:
        self.write(self.setup)

    def on_refused(self, head: bytes) -> None:
        self.ready.set_exception(RuntimeError(head.decode(errors="replace")))

    def on_frame(self, opcode: int, payload: bytes, head: int) -> None:
        if opcode != 1:
            return  # close, pong: none expected in a run
        # The server joins the messages queued for a connection into one frame, lines apart,
        # so a ping can share a frame with publications. Its bytes are not a delivery's.
        pings = 0
        for line in payload.split(b"\n"):
            if line == PING:
                pings += 1
                self.write(mask_frame(PING))
            elif not self.ready.done():
                reply = json.loads(line)
                if "error" in reply:
                    self.ready.set_exception(RuntimeError(f"setup refused: {reply}"))
                elif reply.get("id") == 2:
                    self.ready.set_result(reply["subscribe"])
            elif line.startswith(PUSH):
                self.pushes += 1
                if self.sample:
                    self.decode(json.loads(line)["push"]["pub"])
        if pings and len(payload) == len(PING):
            return
        counted = len(payload) - pings * (len(PING) + 1)  # a ping line and its separator
        self.payload_bytes += counted
        self.wire_bytes += counted + head

    def decode(self, pub: dict[str, Any]) -> None:
        if not self.delta:
            # Plain JSON subscribers get the document inline: re-encode it compactly.
            self.docs.append(json.dumps(pub["data"], separators=(",", ":")).encode())
            return
        data = pub["data"].encode()  # a JSON string holding the document or the patch
        if pub.get("delta"):
            self.patches += 1
            data = fossil_apply(self.base, data)
        self.docs.append(data)
        self.base = data


async def connect_group(handle: AppProcess, mode: str, count: int, sample_every: int) -> list[Sub]:
    loop = asyncio.get_running_loop()
    subs: list[Sub] = []
    for i in range(count):
        sub = Sub(
            handle.port,
            handle.token(f"{mode}{i}"),
            f"dl:{mode}",
            mode == "delta",
            i % sample_every == 0,
        )
        await loop.create_connection(lambda s=sub: s, "127.0.0.1", handle.port)  # type: ignore[misc]
        subs.append(sub)
        if len(subs) % 100 == 0:  # a bounded burst: the server's accept queue is finite
            await asyncio.gather(*(s.ready for s in subs[-100:]))
    replies = await asyncio.wait_for(asyncio.gather(*(s.ready for s in subs)), 60)
    negotiated = [bool(r.get("delta")) for r in replies]
    if negotiated != [mode == "delta"] * count:
        raise RuntimeError(f"{mode}: delta negotiated on {sum(negotiated)} of {count}")
    return subs


async def one_run(
    handle: AppProcess,
    session: aiohttp.ClientSession,
    worker: psutil.Process,
    subs: list[Sub],
    mode: str,
    first_seq: int,
    pubs: int,
    rate: float,
) -> dict[str, Any]:
    for s in subs:
        s.reset()
    docs = [document(first_seq + k) for k in range(pubs)]
    expected = pubs * len(subs)
    url, headers = (
        f"{handle.api_url}/publish",
        {"X-API-Key": handle.api_key, "Content-Type": "application/json"},
    )
    cpu0 = sum(worker.cpu_times()[:2])
    t0 = time.monotonic()
    for k, doc in enumerate(docs):
        await asyncio.sleep(max(0.0, t0 + k / rate - time.monotonic()))
        body = b'{"channel":"dl:' + mode.encode() + b'","data":' + doc + b"}"
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200 or b"error" in await resp.read():
                raise RuntimeError(f"publish {k}: HTTP {resp.status}")
    last, seen = time.monotonic(), -1
    while (got := sum(s.pushes for s in subs)) < expected:
        if got != seen:
            last, seen = time.monotonic(), got
        elif time.monotonic() - last > 5:
            raise RuntimeError(f"{mode}: {got} of {expected} deliveries, none for 5 s")
        await asyncio.sleep(0.01)
    took = time.monotonic() - t0
    cpu = sum(worker.cpu_times()[:2]) - cpu0
    sampled = [s for s in subs if s.sample]
    for s in sampled:
        if s.docs != docs:
            bad = next(
                (k for k, (a, b) in enumerate(zip(s.docs, docs, strict=False)) if a != b),
                len(s.docs),
            )
            raise RuntimeError(f"{mode}: a sampled client rebuilt publication {bad} wrongly")
    return {
        "mode": mode,
        "deliveries": expected,
        "seconds": round(took, 2),
        "payload_bytes_per_delivery": round(sum(s.payload_bytes for s in subs) / expected, 1),
        "wire_bytes_per_delivery": round(sum(s.wire_bytes for s in subs) / expected, 1),
        "server_cpu_us_per_delivery": round(cpu / expected * 1e6, 2),
        "server_cpu_s": round(cpu, 3),
        "sampled_clients": len(sampled),
        "sampled_patches": sum(s.patches for s in sampled),
        "sampled_verified": sum(len(s.docs) for s in sampled),
    }


async def bench(handle: AppProcess, opts: argparse.Namespace) -> list[dict[str, Any]]:
    worker = psutil.Process(handle.worker_pid())
    groups = {m: await connect_group(handle, m, opts.subscribers, opts.sample_every) for m in MODES}
    runs: list[dict[str, Any]] = []
    seq = 0
    async with aiohttp.ClientSession() as session:
        for i in range(opts.runs):
            for mode in MODES:
                r = await one_run(
                    handle, session, worker, groups[mode], mode, seq, opts.publications, opts.rate
                )
                seq += opts.publications
                r["run"] = i + 1
                print(f"run {i + 1} {mode}: {r}", file=sys.stderr)
                runs.append(r)
    for subs in groups.values():
        for s in subs:
            if s.transport is not None:
                s.transport.abort()
    return runs


COLUMNS = (
    ("mode", "mode", "{}"),
    ("payload B/dlv", "payload_bytes_per_delivery", "{:.1f}"),
    ("wire B/dlv", "wire_bytes_per_delivery", "{:.1f}"),
    ("srv CPU us/dlv", "server_cpu_us_per_delivery", "{:.2f}"),
    ("patches", "patch_share", "{:.3f}"),
)


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        rs = [r for r in runs if r["mode"] == mode]
        row: dict[str, Any] = {"mode": mode, "runs": len(rs)}
        for key in (
            "payload_bytes_per_delivery",
            "wire_bytes_per_delivery",
            "server_cpu_us_per_delivery",
        ):
            row[key] = statistics.median(r[key] for r in rs)
            row[f"runs_{key}"] = [r[key] for r in rs]
        verified = sum(r["sampled_verified"] for r in rs)
        row["patch_share"] = sum(r["sampled_patches"] for r in rs) / verified if verified else 0.0
        out[mode] = row
    d, p = out["delta"], out["plain"]
    # None where the plain figure is 0: CPU times tick in 10 ms, a tiny run may see none.
    out["ratio"] = {"mode": "delta/plain"}
    for key in (
        "payload_bytes_per_delivery",
        "wire_bytes_per_delivery",
        "server_cpu_us_per_delivery",
    ):
        out["ratio"][key] = d[key] / p[key] if p[key] else None
    return out


def table(summary: dict[str, dict[str, Any]]) -> str:
    widths = [max(len(h), 11) for h, _, _ in COLUMNS]
    lines = ["  ".join(h.rjust(w) for (h, _, _), w in zip(COLUMNS, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in summary.values():
        ratio = row["mode"] == "delta/plain"
        cells = [
            ("{:.3f}" if ratio and k != "mode" else fmt).format(row[k])
            if row.get(k) is not None
            else ""
            for _, k, fmt in COLUMNS
        ]
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.delta", description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=1000, help="per group (delta, plain)")
    ap.add_argument("--publications", type=int, default=100, help="per run")
    ap.add_argument("--rate", type=float, default=20.0, help="publications per second")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sample-every", type=int, default=50, help="every k-th client decodes")
    ap.add_argument("--out", type=Path)
    opts = ap.parse_args(argv)
    handle = start_app_process(CONFIG)
    try:
        runs = asyncio.run(bench(handle, opts))
    finally:
        handle.stop()
    summary = summarize(runs)
    text = table(summary)
    doc = {
        "subscribers": opts.subscribers,
        "publications": opts.publications,
        "rate": opts.rate,
        "document_bytes": len(document(0)),
        "engine": "memory",
        "loadavg_at_end": os.getloadavg(),
        "summary": summary,
        "runs": runs,
        "table": text,
    }
    if opts.out:
        opts.out.write_text(json.dumps(doc, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
