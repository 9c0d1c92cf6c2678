"""Run Precinct's benchmarks and rewrite docs/benchmarks.md.

    .venv/bin/python benchmarks/run.py            # all sections
    .venv/bin/python benchmarks/run.py --only runtime

Each section starts what it measures from scratch (a real `precinct up` in a
temporary dir), says how each figure was taken, and prints progress. Nothing
here is a pass/fail test: targets are shown beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
PRECINCT = [sys.executable, "-m", "precinct.cli"]
TICKS = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_pss(pid: int) -> tuple[int, int]:
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


class Fleet:
    """A `precinct up` in a temp dir, for measuring."""

    def __init__(self, plugin_sources: list[tuple[Path, str]]) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="precinct-bench-"))
        self.plugins = self.tmp / "plugins"
        self.state = self.tmp / "state"
        self.plugins.mkdir()
        for src, name in plugin_sources:
            shutil.copytree(src, self.plugins / name, ignore=shutil.ignore_patterns("__pycache__", "botplugin.yaml"))
        self.log = open(self.tmp / "up.log", "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([*PRECINCT, "up", str(self.plugins), "--state-dir", str(self.state)],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def status(self) -> dict | None:
        r = subprocess.run([*PRECINCT, "status", "--json", "--state-dir", str(self.state)],
                           capture_output=True, text=True, timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def wait_all_running(self, count: int, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status()
            if s:
                running = sum(1 for p in s["plugins"].values() if p.get("state") == "Running")
                if running >= count:
                    return s
            if self.proc.poll() is not None:
                raise RuntimeError(f"precinct up exited; see {self.log.name}")
            time.sleep(0.5)
        raise RuntimeError(f"not all {count} plugins became Running within {timeout} s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


async def _round_trips(state: Path, n: int) -> tuple[list[float], list[float]]:
    """Command round trips from one connected client: through the dispatcher
    (chat event -> answer) and straight to the command subject (core request)."""
    import nats

    sys.path.insert(0, str(ROOT / "operator"))
    from precinct.runtime.chat import ChatClient, read_endpoint

    endpoint = read_endpoint(state)
    client = ChatClient(endpoint)
    await client.connect()
    chat: list[float] = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        outcome = await client.say("!roll 2d6")
        dt = (time.perf_counter() - t0) * 1000
        assert outcome and outcome["status"] == "ok", outcome
        if i >= 20:  # warm-up excluded
            chat.append(dt)
    await client.close()
    nc = await nats.connect(endpoint.nats, user_credentials=endpoint.core_creds)
    direct: list[float] = []
    body = json.dumps({"channel": "bench", "user": "bench", "args": "2d6"}).encode()
    for i in range(n + 20):
        t0 = time.perf_counter()
        await nc.request("rosey.command.dice.roll", body, timeout=5)
        dt = (time.perf_counter() - t0) * 1000
        if i >= 20:
            direct.append(dt)
    await nc.close()
    return chat, direct


def bench_runtime() -> str:
    say("runtime: starting dice-roller under precinct up")
    fleet = Fleet([(ROOT / "plugins" / "dice-roller", "dice-roller")])
    try:
        status = fleet.wait_all_running(1)
        say("runtime: round trips")
        chat, direct = asyncio.run(_round_trips(fleet.state, 500))
        dice = status["plugins"]["dice-roller"]
        rss, pss = rss_pss(dice["pid"])
        say("runtime: cold starts (SIGKILL the runner, measure spawn -> ping answered)")
        cold: list[float] = []
        for _ in range(10):
            pid = fleet.status()["plugins"]["dice-roller"]["pid"]
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                p = fleet.status()["plugins"]["dice-roller"]
                if p["state"] == "Running" and p["pid"] != pid and p["ready_at"]:
                    cold.append((p["ready_at"] - p["started_at"]) * 1000)
                    break
                time.sleep(0.2)
    finally:
        fleet.close()
    lines = [
        "## Single-host runtime (issue 3)",
        "",
        "| figure | value | target | how |",
        "|---|---|---|---|",
        f"| `!roll 2d6` round trip through the dispatcher, p50 / p99 | {statistics.median(chat):.2f} / {pct(chat, .99):.2f} ms | median ≤ 5 ms | "
        "one connected console client publishes a chat event and waits for the dispatcher's outcome; 500 sequential, 20 warm-up excluded |",
        f"| request to `rosey.command.dice.roll` with core creds, p50 / p99 | {statistics.median(direct):.2f} / {pct(direct, .99):.2f} ms | — | "
        "same client, NATS request through the service import into the plugin's account, 500 sequential |",
        f"| runner memory hosting dice-roller, RSS / PSS | {rss / 2**20:.1f} / {pss / 2**20:.1f} MiB | RSS ≤ 30 MB | "
        "`/proc/<pid>/smaps_rollup` after the 1,040 round trips above |",
        f"| cold start, spawn → health ping answered, median (min–max of {len(cold)}) | "
        f"{statistics.median(cold):.0f} ms ({min(cold):.0f}–{max(cold):.0f}) | median ≤ 1 s | "
        "SIGKILL the runner; the supervisor respawns it; `started_at` → `ready_at` from `precinct status --json` |",
    ]
    return "\n".join(lines)


def _make_many(count: int) -> list[tuple[Path, str]]:
    """`count` copies of the 8ball fixture, each with its own name and command."""
    src = ROOT / "tests" / "fixtures" / "plugins" / "8ball"
    out = []
    tmp = Path(tempfile.mkdtemp(prefix="precinct-bench-src-"))
    for i in range(count):
        dest = tmp / f"ball{i:03d}"
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
        (dest / "plugin.yaml").write_text(
            f"name: ball{i:03d}\nversion: 1.0.0\ncommands: {{b{i:03d}: ball{i:03d}.ask}}\n"
            "resources: {memory_limit: 64Mi}\n")
        out.append((dest, dest.name))
    return out


def bench_scale(count: int = 50, idle_seconds: float = 30) -> str:
    say(f"scale: starting {count} plugins")
    sources = _make_many(count)
    fleet = Fleet(sources)
    try:
        t0 = fleet.started
        fleet.wait_all_running(count, timeout=900)
        startup = time.monotonic() - t0
        sup = fleet.proc.pid
        say(f"scale: all running after {startup:.1f} s; measuring {idle_seconds:g} s idle")
        c0, w0 = cpu_seconds(sup), time.monotonic()
        time.sleep(idle_seconds)
        idle_cpu = (cpu_seconds(sup) - c0) / (time.monotonic() - w0) * 100
        sup_rss, sup_pss = rss_pss(sup)
    finally:
        fleet.close()
        shutil.rmtree(sources[0][0].parent, ignore_errors=True)
    return "\n".join([
        f"| {count} plugins: time from `precinct up` to all Running | {startup:.1f} s | — | wall clock, includes NATS start and account minting |",
        f"| {count} plugins: supervisor CPU while idle | {idle_cpu:.2f} % of one core | < 5 % | utime+stime of the supervisor process over {idle_seconds:g} s with no traffic |",
        f"| {count} plugins: supervisor memory RSS / PSS | {sup_rss / 2**20:.1f} / {sup_pss / 2**20:.1f} MiB | — | `smaps_rollup` |",
    ])


SECTIONS = {"runtime": lambda: bench_runtime() + "\n" + bench_scale(),
            "hot_reload": lambda: __import__("hot_reload").bench_hot_reload()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="Run only these sections.")
    args = parser.parse_args()
    chosen = args.only or list(SECTIONS)
    body = [SECTIONS[name]() for name in chosen]
    header = [
        "# Benchmarks",
        "",
        "<!-- Rewritten by `.venv/bin/python benchmarks/run.py`; do not edit by hand. -->",
        "",
        f"Run on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — {platform.platform()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{'as root' if os.geteuid() == 0 else 'unprivileged'}. Figures are from one run; "
        "each row says how it was measured.",
        "",
    ]
    DOC.write_text("\n".join(header + body) + "\n")
    say(f"wrote {DOC}")


if __name__ == "__main__":
    main()
