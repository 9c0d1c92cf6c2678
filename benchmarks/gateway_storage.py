"""Gateway throughput and storage latency, measured against a real nats-server.

    .venv/bin/python benchmarks/gateway_storage.py [--messages 50000] [--queries 1000]

Gateway: one plugin account publishes N chat messages (its manifest allows
10 000/s with a burst of 100 000, so the rate check runs on every message
but refuses none). Two paths are timed in the same run, first publish to
last delivery:
  raw      plugin -> server -> a platform subscriber on plugin.<id>.>  (NATS alone)
  gateway  plugin -> server -> gateway process (rate check, header, republish)
           -> server -> a core subscriber on rosey.chat.*.send
The ratio gateway/raw is the figure issue 5 targets (>= 0.5).

Storage: the storage service as its own process; a plugin connection sends
sequential row inserts (each committed with synchronous=FULL before the
answer), then selects by id, through the real account mapping. p50/p99 of
the request/reply round trip.

Prints a Markdown section; `benchmarks/run.py --only gateway_storage` puts it in
docs/benchmarks.md. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_plugins  # noqa: E402
from precinct.natsauth.identity import Identity  # noqa: E402
from precinct.natsauth.server import NatsServer  # noqa: E402
from services_support import write_fleet  # noqa: E402


ROUNDS = 3


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def wait_count(box: list, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(box) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.001)


async def timed_path(publisher, receiver, subject: str, n: int, payload: bytes) -> tuple[float, int]:
    got: list[float] = []

    async def cb(msg):
        if msg.data == payload:          # earlier phases may still be draining through the gateway
            got.append(time.perf_counter())

    sub = await receiver.subscribe(subject, cb=cb, pending_msgs_limit=n * 2)
    await receiver.flush()
    start = time.perf_counter()
    for _ in range(n):
        await publisher.publish("rosey.chat.bench.send", payload)
    await publisher.flush()
    await wait_count(got, n, 120)
    await sub.unsubscribe()
    if not got:
        return 0.0, 0
    return len(got) / (got[-1] - start), len(got)


def service(module: str, args: list[str], log: Path) -> subprocess.Popen:
    profile = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") and "gateway" in module else []
    return subprocess.Popen([sys.executable, *profile, "-m", module, *args], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


async def measure(messages: int, queries: int) -> dict:
    """Run both benchmarks; return the raw figures (see render())."""
    work = Path(tempfile.mkdtemp(prefix="precinct-bench-"))
    plans = make_plugins(("bench", {"permissions": ["send_messages", "database_write"], "resources": {
        "rate_limits": {"messages_per_second": 10_000, "burst": 100_000,
                        "database_queries_per_second": 10_000}}}))
    identity = Identity(work / "nats")
    identity.prepare(plans)
    server = NatsServer(identity.server_config())
    await server.start()
    fleet = write_fleet(work / "fleet.json", plans, identity)
    common = ["--server", server.url, "--creds", str(identity.platform_creds()), "--fleet", str(fleet)]
    procs = [service("precinct.services.gateway", common, work / "gateway.log"),
             service("precinct.services.storage", [*common, "--data-dir", str(work / "storage")], work / "storage.log")]
    plugin = await nats.connect(server.url, user_credentials=str(identity.creds_for("bench")))
    platform = await nats.connect(server.url, user_credentials=str(identity.platform_creds()))
    core = await nats.connect(server.url, user_credentials=str(identity.core_creds()))
    try:
        for _ in range(100):   # both services up
            try:
                await platform.request("precinct.gateway.stats", b"", timeout=0.5)
                await platform.request("precinct.admin.storage.stats", b"", timeout=0.5)
                break
            except Exception:  # noqa: BLE001
                await asyncio.sleep(0.2)
        def payload(phase: str) -> bytes:
            return json.dumps({"channel": "bench", "message": phase.ljust(64, "x"), "type": "chat"}).encode()

        say(f"gateway: {ROUNDS} rounds of {messages:,} messages, raw and through the gateway")
        await timed_path(plugin, platform, "plugin.bench.>", 2000, payload("warm-up"))
        raws, gws = [], []
        for run in range(ROUNDS):     # alternate the two paths; report medians (a 2-core machine is noisy)
            raws.append(await timed_path(plugin, platform, "plugin.bench.rosey.chat.*.send", messages,
                                         payload(f"raw{run}")))
            await asyncio.sleep(2)   # let the gateway drain what it relayed meanwhile
            gws.append(await timed_path(plugin, core, "rosey.chat.*.send", messages, payload(f"gateway{run}")))
            await asyncio.sleep(1)
        raw, raw_n = sorted(raws)[ROUNDS // 2]
        gw, gw_n = sorted(gws)[ROUNDS // 2]
        ratios = sorted(g[0] / r[0] for r, g in zip(raws, gws) if r[0])

        async def request(op: str, body: dict) -> float:
            t = time.perf_counter()
            reply = json.loads((await plugin.request(f"rosey.db.row.bench.{op}", json.dumps(body).encode(),
                                                     timeout=10)).data)
            assert reply["success"], reply
            return (time.perf_counter() - t) * 1000

        say(f"storage: {queries:,} inserts then {queries:,} selects")
        await request("schema.register", {"table": "t", "schema": {"fields": [
            {"name": "text", "type": "string"}, {"name": "n", "type": "integer"}]}})
        inserts = [await request("insert", {"table": "t", "data": {"text": "hello", "n": i}}) for i in range(queries)]
        selects = [await request("select", {"table": "t", "id": 1 + i % queries}) for i in range(queries)]
    finally:
        for nc in (plugin, platform, core):
            await nc.close()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        await server.stop()
        shutil.rmtree(work, ignore_errors=True)

    return {"messages": messages, "queries": queries, "raw": raw, "raw_n": raw_n, "gw": gw, "gw_n": gw_n,
            "ratios": ratios, "inserts": inserts, "selects": selects}


def render(r: dict) -> str:
    messages, queries, raw, gw = r["messages"], r["queries"], r["raw"], r["gw"]
    return f"""## Gateway and storage

(`benchmarks/gateway_storage.py`, also `benchmarks/run.py --only gateway_storage`.) One nats-server in
operator mode with the real accounts; gateway and storage services in their own processes, as
`precinct up` runs them. Gateway: one plugin connection publishes {messages:,} chat messages of ~100
bytes as fast as it can (its manifest allows 10 000/s with a burst of 100 000, so the rate check runs
on every message but refuses none), timed first publish → last delivery. Raw and gateway paths
alternate, {ROUNDS} rounds each, in the same run.

| path | messages delivered | throughput (msg/s) |
|---|---|---|
| raw NATS: plugin → server → platform subscriber on `plugin.<id>.>` (median of {ROUNDS}) | {r['raw_n']:,}/{messages:,} | {raw:,.0f} |
| gateway: plugin → server → gateway (rate check, header, republish) → server → core subscriber (median of {ROUNDS}) | {r['gw_n']:,}/{messages:,} | {gw:,.0f} |
| **ratio gateway / raw** (medians; target ≥ 0.5) | | **{gw / raw if raw else 0:.2f}** (per round: {", ".join(f"{x:.2f}" for x in r['ratios'])}) |

Storage: the storage service as its own process; the plugin connection sends sequential requests
through the real account mapping (`rosey.db.row.<id>.*` → storage account), {queries:,} of each,
request → reply.

| storage request | p50 ms | p99 ms |
|---|---|---|
| row insert (committed, SQLite synchronous=FULL, before the reply) | {pct(r['inserts'], .5):.2f} | {pct(r['inserts'], .99):.2f} |
| row select by id | {pct(r['selects'], .5):.2f} | {pct(r['selects'], .99):.2f} |
"""


def bench_gateway_storage(messages: int = 50_000, queries: int = 1000) -> str:
    return render(asyncio.run(measure(messages, queries)))


async def main(messages: int, queries: int) -> None:
    print(render(await measure(messages, queries)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.queries))
