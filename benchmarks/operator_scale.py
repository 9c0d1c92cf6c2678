"""The Kubernetes operator reconciling many BotPlugins against the API stand-in.

    .venv/bin/python benchmarks/operator_scale.py [--botplugins 500]

No cluster: the API server is tests/k8s_standin.py (in this process), and
this process also plays the Deployment controller the way the operator tests
do: whenever a Deployment's generation is ahead of its status, its status is
set to "rolled out, 1 replica available". The operator is the real one
(`precinct.k8s.operator.serve`, kopf standalone, production settings except
the API server URL) in a process of its own, so its memory is its own.

N BotPlugins (each with its own command) are created in one burst while the
operator runs; the figure is the wall time from the first create until every
BotPlugin's `Ready` condition is True, plus the operator's RSS/PSS sampled
every 0.5 s (peak) and after everything is Ready (settled).

Prints a Markdown section; `benchmarks/run.py --only operator` puts it in
docs/benchmarks.md. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import pct, rss_pss  # one implementation for every benchmark (benchmarks/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

NS = "bots"
DIGEST = "sha256:" + "a" * 64
TARGET_RSS = 300 * 10**6


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _standin_class():
    from k8s_standin import StandIn

    class FastWatchStandIn(StandIn):
        """The tests' stand-in, with one change for scale: a watch finds the
        events after its resourceVersion by bisection instead of scanning the
        whole history on every change (events are appended in rv order)."""

        closing = False

        async def stop(self) -> None:
            self.closing = True            # end the open watches now, not at their timeoutSeconds
            async with self.changed:
                self.changed.notify_all()
            await super().stop()

        async def _watch(self, request, res, namespace):
            from aiohttp import web

            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            since = int(request.query.get("resourceVersion") or 0)
            timeout = float(request.query.get("timeoutSeconds") or 60)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            if since == 0:
                for o in self.all(res.kind, namespace):
                    await response.write(json.dumps({"type": "ADDED", "object": o}).encode() + b"\n")
                since = self.rv
            try:
                while loop.time() < deadline and not self.closing:
                    start = bisect.bisect_right(self.events, since, key=lambda e: e[0])
                    upto = self.rv
                    chunk = [json.dumps({"type": t, "object": o}).encode() + b"\n"
                             for rv, kind, t, o in self.events[start:] if rv <= upto and kind == res.kind
                             and (namespace is None or o["metadata"].get("namespace") == namespace)]
                    if chunk:
                        await response.write(b"".join(chunk))
                    since = upto
                    async with self.changed:
                        if self.rv == since and not self.closing:
                            try:
                                await asyncio.wait_for(self.changed.wait(),
                                                       timeout=max(0.01, deadline - loop.time()))
                            except asyncio.TimeoutError:
                                pass
            except (ConnectionResetError, asyncio.CancelledError):
                pass
            return response

    return FastWatchStandIn


def botplugin(i: int) -> dict[str, Any]:
    name = f"bp{i:04d}"
    return {"apiVersion": "precinct.dev/v1alpha1", "kind": "BotPlugin",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"version": "1.0.0", "image": f"registry.example/{name}@{DIGEST}",
                     "commands": {f"c{i:04d}": f"{name}.run"}}}


def is_ready(obj: dict[str, Any]) -> bool:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


async def _deployment_controller(k8s: Any, stop: asyncio.Event) -> None:
    """Play the Deployment controller: every Deployment whose generation is
    ahead of its status becomes available (as tests/test_operator.py does)."""
    while not stop.is_set():
        for dep in k8s.all("Deployment", NS):
            gen = dep["metadata"].get("generation")
            if (dep.get("status") or {}).get("observedGeneration") != gen:
                await k8s.set_status("Deployment", NS, dep["metadata"]["name"], {
                    "observedGeneration": gen, "replicas": 1, "updatedReplicas": 1,
                    "readyReplicas": 1, "availableReplicas": 1,
                    "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                                   {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]})
        await asyncio.sleep(0.1)


async def _measure(count: int, timeout: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="precinct-bench-operator-"))
    k8s = await _standin_class()().start()
    await k8s.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": NS, "labels": {"kubernetes.io/metadata.name": NS}}})
    log = open(work / "operator.log", "wb")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", k8s.url, "--state-dir", str(work / "state")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stop = asyncio.Event()
    controller = asyncio.create_task(_deployment_controller(k8s, stop))
    peak_rss = peak_pss = 0
    samples: list[tuple[float, int]] = []
    try:
        # The operator is up when it has opened its BotPlugin watch.
        deadline = time.monotonic() + 60
        while not any(k == "BotPlugin" for _, k in k8s.requests):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"operator did not start; see {work / 'operator.log'}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        base_rss, base_pss = rss_pss(proc.pid)
        say(f"operator: up (RSS {base_rss / 2**20:.0f} MiB); creating {count} BotPlugins")
        created: dict[str, float] = {}
        t0 = time.monotonic()
        for i in range(count):
            obj = botplugin(i)
            await k8s.put(obj)
            created[obj["metadata"]["name"]] = time.monotonic()
        cpu0, own0 = cpu_seconds(proc.pid), time.process_time()
        ready: dict[str, float] = {}
        last_say = t0
        while len(ready) < count:
            now = time.monotonic()
            for name in created:
                if name not in ready:
                    obj = k8s.get("BotPlugin", NS, name)
                    if obj is not None and is_ready(obj):
                        ready[name] = now
            rss, pss = rss_pss(proc.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            samples.append((now - t0, rss))
            if now - last_say >= 10:
                last_say = now
                say(f"operator: {len(ready)}/{count} Ready after {now - t0:.0f} s, RSS {rss / 2**20:.0f} MiB")
            if proc.poll() is not None:
                raise RuntimeError(f"operator exited; see {work / 'operator.log'}")
            if now - t0 > timeout:
                break
            await asyncio.sleep(0.5)
        all_ready = time.monotonic() - t0
        cpu_used, own_used = cpu_seconds(proc.pid) - cpu0, time.process_time() - own0
        say(f"operator: {len(ready)}/{count} Ready after {all_ready:.1f} s; settling 10 s")
        await asyncio.sleep(10)
        settled_rss, settled_pss = rss_pss(proc.pid)
        peak_rss, peak_pss = max(peak_rss, settled_rss), max(peak_pss, settled_pss)
        with open(f"/proc/{proc.pid}/status") as fh:
            hwm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
        per = [ready[n] - created[n] for n in ready]
        return {"count": count, "ready": len(ready), "all_ready_s": all_ready, "timed_out": len(ready) < count,
                "timeout": timeout, "per_p50": statistics.median(per) if per else float("nan"),
                "per_p99": pct(per, 0.99), "first_s": min(ready.values()) - t0 if ready else float("nan"),
                "half_s": sorted(ready.values())[len(ready) // 2] - t0 if ready else float("nan"),
                "base_rss": base_rss, "base_pss": base_pss, "peak_rss": peak_rss, "peak_pss": peak_pss,
                "hwm": hwm, "settled_rss": settled_rss, "settled_pss": settled_pss, "cpu_s": cpu_used, "own_cpu_s": own_used,
                "requests": len(k8s.requests), "objects": len(k8s.objects)}
    finally:
        say("operator: stopping (SIGTERM)")
        t_term = time.monotonic()
        stop.set()
        await controller
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        t_stop = time.monotonic()
        await k8s.stop()
        say(f"operator: stopped in {t_stop - t_term:.1f} s; stand-in in {time.monotonic() - t_stop:.1f} s")
        import shutil
        shutil.rmtree(work, ignore_errors=True)


def bench_operator(count: int = 500, timeout: float = 600) -> str:
    return render(asyncio.run(_measure(count, timeout)))


def render(r: dict[str, Any]) -> str:
    count, timeout = r["count"], r["timeout"]
    mib = 2**20
    verdict = "" if not r["timed_out"] else (
        f" **Only {r['ready']}/{count} were Ready when the {timeout:.0f} s budget ran out.**")
    rows = [
        "## Operator at scale",
        "",
        f"The real operator (`precinct.k8s.operator.serve`: kopf standalone, production settings, its own "
        f"process) against the API stand-in (`tests/k8s_standin.py`, served from the benchmark process, with "
        f"watches that seek by resourceVersion instead of rescanning the history). {count} BotPlugins, each "
        f"with its own command, were created in one burst while the operator ran; the benchmark played the "
        f"Deployment controller (a Deployment whose generation is ahead of its status is marked available "
        f"within 0.1 s, as the operator tests script it). Ready = the BotPlugin's `Ready` condition is True, "
        f"polled every 0.5 s. Stand-in, scripted controller and operator share the machine's 2 cores."
        f"{verdict}",
        "",
        "| figure | value | target | how |",
        "|---|---|---|---|",
        f"| {count} BotPlugins: first create → all Ready | {r['all_ready_s']:.1f} s ({r['ready']}/{count} Ready) | — | wall clock |",
        f"| first / half Ready after | {r['first_s']:.1f} s / {r['half_s']:.1f} s | — | wall clock from the first create |",
        f"| per BotPlugin, create → Ready, p50 / p99 | {r['per_p50']:.1f} s / {r['per_p99']:.1f} s | — | burst of {count}: later ones queue |",
        f"| operator RSS peak (VmHWM) | {r['hwm'] / mib:.0f} MiB | ≤ 300 MB ({TARGET_RSS / mib:.0f} MiB) | `/proc/<pid>/status` of the operator process |",
        f"| operator RSS / PSS, sampled peak during the burst | {r['peak_rss'] / mib:.0f} / {r['peak_pss'] / mib:.0f} MiB | ≤ 300 MB | `smaps_rollup` every 0.5 s |",
        f"| operator RSS / PSS, 10 s after the wait ended (all Ready, or the budget ran out) | {r['settled_rss'] / mib:.0f} / {r['settled_pss'] / mib:.0f} MiB | ≤ 300 MB | `smaps_rollup` |",
        f"| operator RSS / PSS before the burst (no BotPlugins) | {r['base_rss'] / mib:.0f} / {r['base_pss'] / mib:.0f} MiB | — | `smaps_rollup` |",
        f"| operator CPU during the burst | {r['cpu_s']:.1f} s ({100 * r['cpu_s'] / max(r['all_ready_s'], 1e-9):.0f} % of one core) | — | utime+stime |",
        f"| stand-in + scripted controller CPU during the burst (benchmark process) | {r['own_cpu_s']:.1f} s "
        f"({100 * r['own_cpu_s'] / max(r['all_ready_s'], 1e-9):.0f} % of one core) | — | `time.process_time()` |",
        f"| API requests served / objects stored | {r['requests']:,} / {r['objects']:,} | — | stand-in counters |",
        "",
    ]
    return "\n".join(rows)


def _serve(url: str, state_dir: str) -> None:
    from precinct.k8s.operator import OperatorConfig, run

    run(OperatorConfig(state_dir=Path(state_dir), server=url, namespaces=(NS,)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--botplugins", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=600, help="give up waiting for Ready after this many s")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.state_dir)
        return
    print(bench_operator(args.botplugins, args.timeout))


if __name__ == "__main__":
    main()
