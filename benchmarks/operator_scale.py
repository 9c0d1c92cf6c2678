"""The Kubernetes operator reconciling many BotPlugins against the API stand-in.

    .venv/bin/python benchmarks/operator_scale.py [--botplugins 5000]

No cluster: the API server is tests/k8s_standin.py (in this process; the
same strict class the operator tests use, unpatched), and this process also
plays the Deployment controller the way the operator tests do: whenever a
Deployment's generation is ahead of its status, its status is set to
"rolled out, 1 replica available". The operator is the real one
(`precinct.k8s.operator.serve`, kopf standalone, production settings except
the API server URL) in a process of its own, so its memory is its own.

N BotPlugins (each with its own command) are created in one burst while the
operator runs. Figures: wall time from the first create until every
BotPlugin is reconciled (children exist, observedGeneration current) and
Ready; the operator's RSS/PSS (sampled every 0.5 s, and VmHWM); its CPU
while idle afterwards; then all N are deleted in one burst and the time
until every one is gone through the finalizer (account revoked) and its
children are collected.

PRECINCT_BENCH_PROFILE=FILE runs the operator under cProfile (stats in FILE).
Prints a Markdown section; `benchmarks/run.py --only operator` puts it in
docs/benchmarks.md. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
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
TARGET_RSS = 200 * 2**20


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        for (kind, ns, name), dep in list(k8s.objects.items()):
            if kind != "Deployment":
                continue
            gen = dep["metadata"].get("generation")
            if (dep.get("status") or {}).get("observedGeneration") != gen and (kind, ns, name) in k8s.objects:
                await k8s.set_status("Deployment", ns, name, {
                    "observedGeneration": gen, "replicas": 1, "updatedReplicas": 1,
                    "readyReplicas": 1, "availableReplicas": 1,
                    "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                                   {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]})
        await asyncio.sleep(0.1)


def _reconciled(k8s: Any, obj: dict[str, Any]) -> bool:
    """Children exist, observedGeneration current, Ready True."""
    name = obj["metadata"]["name"]
    status = obj.get("status") or {}
    return (status.get("observedGeneration") == obj["metadata"].get("generation") and is_ready(obj)
            and k8s.get("Deployment", NS, name) is not None and k8s.get("Secret", NS, f"{name}-nats") is not None)


async def _measure(count: int, timeout: float) -> dict[str, Any]:
    from k8s_standin import StandIn

    work = Path(tempfile.mkdtemp(prefix="precinct-bench-operator-"))
    k8s = await StandIn().start()
    await k8s.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": NS, "labels": {"kubernetes.io/metadata.name": NS}}})
    log = open(work / "operator.log", "wb")
    profile = ["-m", "cProfile", "-o", os.environ["PRECINCT_BENCH_PROFILE"]] if os.environ.get("PRECINCT_BENCH_PROFILE") else []
    proc = subprocess.Popen([sys.executable, *profile, __file__, "--serve", k8s.url, "--state-dir", str(work / "state")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stop = asyncio.Event()
    controller = asyncio.create_task(_deployment_controller(k8s, stop))
    peak_rss = peak_pss = 0
    result: dict[str, Any] = {"count": count, "timeout": timeout}
    t_term = 0.0

    def sample() -> None:
        nonlocal peak_rss, peak_pss
        rss, pss = rss_pss(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)

    try:
        # The operator is up when it has opened its BotPlugin watch.
        deadline = time.monotonic() + 120
        while not any(k == "BotPlugin" for _, k in k8s.requests):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"operator did not start; see {work / 'operator.log'}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)
        base_rss, base_pss = rss_pss(proc.pid)
        say(f"operator: up (RSS {base_rss / 2**20:.0f} MiB); creating {count} BotPlugins")
        created: dict[str, float] = {}
        t0 = time.monotonic()
        for i in range(count):
            obj = botplugin(i)
            await k8s.put(obj)
            created[obj["metadata"]["name"]] = time.monotonic()
        say(f"created {count} in {time.monotonic() - t0:.1f} s")
        cpu0, own0 = cpu_seconds(proc.pid), time.process_time()
        ready: dict[str, float] = {}
        last_say = t0
        while len(ready) < count:
            now = time.monotonic()
            for name in created:
                if name not in ready:
                    obj = k8s.get("BotPlugin", NS, name)
                    if obj is not None and _reconciled(k8s, obj):
                        ready[name] = now
            sample()
            if now - last_say >= 10:
                last_say = now
                say(f"operator: {len(ready)}/{count} Ready after {now - t0:.0f} s, RSS {peak_rss / 2**20:.0f} MiB peak")
            if proc.poll() is not None:
                raise RuntimeError(f"operator exited; see {work / 'operator.log'}")
            if now - t0 > timeout:
                break
            await asyncio.sleep(0.5)
        all_ready = time.monotonic() - t0
        cpu_used, own_used = cpu_seconds(proc.pid) - cpu0, time.process_time() - own0
        say(f"operator: {len(ready)}/{count} Ready after {all_ready:.1f} s; settling 10 s, then 20 s of idle CPU")
        await asyncio.sleep(10)
        sample()
        settled_rss, settled_pss = rss_pss(proc.pid)
        idle0, idle_t0 = cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(20)
        idle = (cpu_seconds(proc.pid) - idle0) / (time.monotonic() - idle_t0)
        per = [ready[n] - created[n] for n in ready]
        result.update({
            "ready": len(ready), "all_ready_s": all_ready, "timed_out": len(ready) < count,
            "per_p50": statistics.median(per) if per else float("nan"), "per_p99": pct(per, 0.99),
            "first_s": min(ready.values()) - t0 if ready else float("nan"),
            "half_s": sorted(ready.values())[len(ready) // 2] - t0 if ready else float("nan"),
            "base_rss": base_rss, "base_pss": base_pss, "settled_rss": settled_rss, "settled_pss": settled_pss,
            "cpu_s": cpu_used, "own_cpu_s": own_used, "idle_cpu": idle,
            "requests": len(k8s.requests), "objects": len(k8s.objects)})

        # Deletion: every BotPlugin in one burst; done when each is gone (finalizer ran) and children collected.
        say(f"deleting {count} BotPlugins")
        d0 = time.monotonic()
        for name in created:
            await k8s.delete("BotPlugin", NS, name)
        gone_at = None
        while True:
            now = time.monotonic()
            left = sum(1 for (kind, _, _) in list(k8s.objects) if kind == "BotPlugin")
            children = sum(1 for (kind, _, _) in list(k8s.objects) if kind in ("Deployment", "Secret"))
            sample()
            if left == 0 and gone_at is None:
                gone_at = now - d0
            if left == 0 and children == 0:
                break
            if now - last_say >= 10:
                last_say = now
                say(f"deletion: {count - left}/{count} finalized after {now - d0:.0f} s ({children} children left)")
            if now - d0 > timeout or proc.poll() is not None:
                break
            await asyncio.sleep(0.5)
        result.update({"deleted": count - left, "delete_s": gone_at if gone_at is not None else time.monotonic() - d0,
                       "collected_s": time.monotonic() - d0, "children_left": children})
        with open(f"/proc/{proc.pid}/status") as fh:
            result["hwm"] = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
        result.update({"peak_rss": peak_rss, "peak_pss": peak_pss})
        return result
    finally:
        say("operator: stopping (SIGTERM)")
        stop.set()
        await controller
        t_term = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        result["sigterm_s"] = time.monotonic() - t_term
        log.close()
        await k8s.stop()
        say(f"operator: stopped {result['sigterm_s']:.1f} s after SIGTERM")
        import shutil
        if os.environ.get("PRECINCT_BENCH_KEEP"):
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench_operator(count: int = 500, timeout: float = 600) -> str:
    return render(asyncio.run(_measure(count, timeout)))


def render(r: dict[str, Any]) -> str:
    count, timeout = r["count"], r["timeout"]
    mib = 2**20
    verdict = "" if not r["timed_out"] else (
        f" **Only {r['ready']}/{count} were reconciled and Ready when the {timeout:.0f} s budget ran out.**")
    rows = [
        f"## Operator at scale: {count} BotPlugins",
        "",
        f"The real operator (`precinct.k8s.operator.serve`: kopf standalone, production settings, its own "
        f"process, NATS credentials issued into a state directory on disk, no NATS server to push to) against "
        f"the strict API stand-in (`tests/k8s_standin.py`, the class the operator tests use, served from the "
        f"benchmark process). {count} BotPlugins, each with its own command, were created in one burst while the "
        f"operator ran; the benchmark played the Deployment controller (a Deployment whose generation is ahead "
        f"of its status is marked available within 0.1 s). Reconciled = Deployment and credentials Secret exist, "
        f"`observedGeneration` current and `Ready` True, polled every 0.5 s. Then all {count} were deleted in "
        f"one burst. Stand-in, scripted controller and operator share the machine's 2 cores.{verdict}",
        "",
        "| figure | value | target | how |",
        "|---|---|---|---|",
        f"| {count} BotPlugins: first create → all reconciled and Ready | {r['all_ready_s']:.1f} s "
        f"({r['ready']}/{count}) | ≤ 120 s (5,000), ≤ 60 s (1,000) | wall clock |",
        f"| first / half Ready after | {r['first_s']:.1f} s / {r['half_s']:.1f} s | — | wall clock from the first create |",
        f"| per BotPlugin, create → Ready, p50 / p99 | {r['per_p50']:.1f} s / {r['per_p99']:.1f} s | — | burst: later ones queue |",
        f"| operator RSS peak (VmHWM) | {r['hwm'] / mib:.0f} MiB | ≤ 200 MiB | `/proc/<pid>/status` at the end |",
        f"| operator RSS / PSS, sampled peak | {r['peak_rss'] / mib:.0f} / {r['peak_pss'] / mib:.0f} MiB | ≤ 200 MiB | `smaps_rollup` every 0.5 s |",
        f"| operator RSS / PSS 10 s after all Ready | {r['settled_rss'] / mib:.0f} / {r['settled_pss'] / mib:.0f} MiB | — | `smaps_rollup` |",
        f"| operator RSS / PSS before the burst | {r['base_rss'] / mib:.0f} / {r['base_pss'] / mib:.0f} MiB | — | `smaps_rollup` |",
        f"| operator CPU during the burst | {r['cpu_s']:.1f} s ({100 * r['cpu_s'] / max(r['all_ready_s'], 1e-9):.0f} % of one core) | — | utime+stime |",
        f"| operator CPU idle afterwards | {100 * r['idle_cpu']:.1f} % of one core | near zero | utime+stime over 20 s, 10 s after all Ready |",
        f"| stand-in + scripted controller CPU during the burst | {r['own_cpu_s']:.1f} s | — | `time.process_time()` of the benchmark |",
        f"| delete all {count}: first delete → all finalized (gone) | {r['delete_s']:.1f} s ({r['deleted']}/{count}) | ≤ 120 s | wall clock |",
        f"| … → children collected too | {r['collected_s']:.1f} s ({r['children_left']} left) | — | stand-in's garbage collector |",
        f"| operator exit after SIGTERM | {r['sigterm_s']:.1f} s | fast | wall clock |",
        f"| API requests served / objects stored at the peak | {r['requests']:,} / {r['objects']:,} | — | stand-in counters |",
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
