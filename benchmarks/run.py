"""Run Precinct's benchmarks and rewrite docs/benchmarks.md.

    .venv/bin/python benchmarks/run.py                    # every section (about 10-15 min on 2 cores)
    .venv/bin/python benchmarks/run.py --only runtime     # one section; the others in the doc are kept
    .venv/bin/python benchmarks/run.py --quick            # small N smoke run; prints, leaves the doc alone
    .venv/bin/python benchmarks/run.py --reloads 200 --plugins 100 --botplugins 500

Sections (in this order):
  runtime          `!roll` through the full sandbox vs the same plugin class in a plain
                   unsandboxed runner against a second, unauthenticated nats-server
                   (interleaved, same run); dispatcher round trip; memory per plugin
                   (runner, monitor and ns-init separately); cold start, both ways
  gateway_storage  benchmarks/gateway_storage.py: gateway vs raw NATS throughput, storage p50/p99
  hot_reload       benchmarks/hot_reload.py: N reloads under load (default 30 here; its own CLI: 200)
  scale            N plugins (default 100) under one `precinct up`: time to start all,
                   supervisor CPU while idle, memory of every process class, and how
                   long `precinct status` takes (CLI and control op, 10 calls each)
  operator         benchmarks/operator_scale.py: the operator reconciling N BotPlugins
                   (default 500) against the API stand-in; time to all Ready, operator RSS
  log_flood        benchmarks/log_flood.py: a plugin flooding its output, the supervisor's
                   CPU before and after issue 14's reader
  refusals         one plugin flooding refused syscalls (seccomp) and refused file opens
                   (Landlock) for N s each (default 10): supervisor CPU, refusals counted, records lost

Each section starts what it measures from scratch, says how each figure was
taken, and prints progress. Run as root for the sandboxed figures (as any
other user `precinct up` confines nothing; the doc says which). Nothing here
is a pass/fail test: targets are shown beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
DOC = ROOT / "docs" / "benchmarks.md"
PRECINCT = [sys.executable, "-m", "precinct.cli"]
TICKS = os.sysconf("SC_CLK_TCK")
MIB = 2**20
WARMUP = 50


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def now_utc() -> str:
    return f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


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


def load_average() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def descendants(root: int) -> list[int]:
    """Every live process below `root` (host PID namespace view)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        out += kids
        todo += kids
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def classify(pid: int, monitors: set[int]) -> str:
    """Which part of the tree a process is. By position, not command line:
    forked from the template (confine/template.py), monitor, ns-init and
    runner all show the template's command line."""
    if pid in monitors:
        return "monitor"
    parent = ppid(pid)
    if parent in monitors:
        return "ns-init"
    if ppid(parent) in monitors:
        return "runner"
    cmd = cmdline(pid)
    if "precinct.confine.template" in cmd:
        return "template"
    if "precinct_runner" in cmd:
        return "runner"
    if "precinct.confine" in cmd:
        return "ns-init"
    m = re.search(r"precinct\.services\.(\w+)", cmd)
    if m:
        return f"service:{m.group(1)}"
    if "nats-server" in cmd.split(" ", 1)[0]:
        return "nats-server"
    return "other"


def headline(figure: str, value: str, target: str = "—") -> str:
    """A row for the summary table at the top of the doc (kept inside its section)."""
    return f"<!-- headline | {figure} | {value} | {target} | -->"


class Fleet:
    """A `precinct up` in a temp dir, for measuring."""

    def __init__(self, plugin_sources: list[tuple[Path, str]], *extra: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="precinct-bench-"))
        self.plugins = self.tmp / "plugins"
        self.state = self.tmp / "state"
        self.plugins.mkdir()
        for src, name in plugin_sources:
            shutil.copytree(src, self.plugins / name, ignore=shutil.ignore_patterns("__pycache__", "botplugin.yaml"))
        self.log = open(self.tmp / "up.log", "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([*PRECINCT, "up", str(self.plugins), "--state-dir", str(self.state), *extra],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def status(self) -> dict | None:
        r = subprocess.run([*PRECINCT, "status", "--json", "--state-dir", str(self.state)],
                           capture_output=True, text=True, timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def wait_all_running(self, count: int, timeout: float = 600, progress: bool = False) -> dict:
        deadline = time.monotonic() + timeout
        last = 0.0
        while time.monotonic() < deadline:
            s = self.status()
            if s:
                running = sum(1 for p in s["plugins"].values() if p.get("state") == "Running")
                if running >= count:
                    return s
                if progress and time.monotonic() - last > 10:
                    last = time.monotonic()
                    say(f"  {running}/{count} Running after {time.monotonic() - self.started:.0f} s")
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
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- runtime: the sandbox vs a plain runner --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PlainDice:
    """The baseline: a second nats-server of the same binary, unauthenticated
    (`nats-server -a 127.0.0.1 -p PORT`), and the same runner environment
    hosting the same dice-roller class as a plain child process: no sandbox,
    no accounts, no relay, running as the benchmark's own user."""

    def __init__(self, runner_python: str) -> None:
        import yaml
        from precinct.natsauth.server import find_binary

        self.runner_python = runner_python
        self.tmp = Path(tempfile.mkdtemp(prefix="precinct-bench-plain-"))
        self.folder = self.tmp / "dice-roller"
        src = ROOT / "plugins" / "dice-roller"
        shutil.copytree(src, self.folder, ignore=shutil.ignore_patterns("__pycache__", "botplugin.yaml"))
        manifest = yaml.safe_load((src / "plugin.yaml").read_text())
        self.config = self.tmp / "config.json"
        self.config.write_text(json.dumps(manifest.get("config") or {}))
        self.subjects = sorted(f"rosey.command.{v}" for v in manifest["commands"].values())
        self.binary = find_binary()
        port = _free_port()
        self.url = f"nats://127.0.0.1:{port}"
        self.server_log = open(self.tmp / "nats.log", "wb")
        self.server = subprocess.Popen([self.binary, "-a", "127.0.0.1", "-p", str(port)],
                                       stdout=self.server_log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.server.poll() is not None:
                    raise RuntimeError("the baseline nats-server did not start")
                time.sleep(0.05)
        self.runner: subprocess.Popen | None = None
        self.instance = ""
        self.n = 0

    def spawn(self) -> float:
        """Start a fresh runner; returns the monotonic time of the spawn."""
        self.stop_runner()
        self.n += 1
        self.instance = f"plain{self.n}"
        argv = [self.runner_python, "-m", "precinct_runner", "--plugin-dir", str(self.folder),
                "--plugin-id", "dice-roller", "--instance", self.instance, "--server", self.url,
                "--config", str(self.config)]
        for subject in self.subjects:
            argv += ["--command", subject]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}   # what the supervisor gives its runners
        t = time.monotonic()
        self.runner = subprocess.Popen(argv, env=env, cwd=str(self.folder), stdout=subprocess.DEVNULL,
                                       stderr=open(self.tmp / f"runner{self.n}.log", "wb"), start_new_session=True)
        return t

    async def wait_ready(self, nc: Any, spawned: float, timeout: float = 60) -> float:
        """The supervisor's own readiness probe (request the health ping, 0.5 s
        timeout, 0.1 s pause after a failure): seconds from spawn to the answer."""
        subject = f"precinct.ping.dice-roller.{self.instance}"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                await nc.request(subject, b"{}", timeout=0.5)
                return time.monotonic() - spawned
            except Exception:  # noqa: BLE001
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the plain runner did not answer its ping; see {self.tmp}")

    def stop_runner(self) -> None:
        if self.runner is not None and self.runner.poll() is None:
            self.runner.send_signal(signal.SIGTERM)
            try:
                self.runner.wait(20)
            except subprocess.TimeoutExpired:
                self.runner.kill()
                self.runner.wait()
        self.runner = None

    def close(self) -> None:
        self.stop_runner()
        if self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(20)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.server_log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


async def _runtime_traffic(state: Path, plain: PlainDice, n: int, colds: int,
                           fleet: Fleet) -> dict[str, Any]:
    import nats
    from precinct.runtime.chat import ChatClient, read_endpoint

    endpoint = read_endpoint(state)
    sand = await nats.connect(endpoint.nats, user_credentials=endpoint.core_creds)
    bare = await nats.connect(plain.url)
    out: dict[str, Any] = {}
    try:
        spawned = plain.spawn()
        await plain.wait_ready(bare, spawned)
        body = json.dumps({"channel": "bench", "user": "bench", "args": "2d6"}).encode()
        subject = "rosey.command.dice.roll"
        say(f"runtime: {n} interleaved request pairs (sandboxed, plain), {WARMUP} warm-up pairs excluded")
        times: dict[str, list[float]] = {"sandbox": [], "plain": []}
        pairs = (("sandbox", sand), ("plain", bare))
        for i in range(n + WARMUP):
            for name, nc in (pairs if i % 2 == 0 else pairs[::-1]):   # alternate who goes first
                t0 = time.perf_counter()
                reply = await nc.request(subject, body, timeout=5)
                dt = (time.perf_counter() - t0) * 1000
                if i == 0:
                    json.loads(reply.data)  # both answer the same shape
                if i >= WARMUP:
                    times[name].append(dt)
        out["times"] = times
        out["plain_mem"] = rss_pss(plain.runner.pid)

        say(f"runtime: {n} `!roll 2d6` round trips through the dispatcher (sandboxed only)")
        client = ChatClient(endpoint)
        await client.connect()
        chat: list[float] = []
        try:
            for i in range(n + WARMUP):
                t0 = time.perf_counter()
                outcome = await client.say("!roll 2d6")
                dt = (time.perf_counter() - t0) * 1000
                if not (outcome and outcome["status"] == "ok"):
                    raise RuntimeError(f"dispatcher outcome {outcome}")
                if i >= WARMUP:
                    chat.append(dt)
        finally:
            await client.close()
        out["chat"] = chat

        status = fleet.status()["plugins"]["dice-roller"]
        monitor = status["pid"]
        runner = (status.get("confinement") or {}).get("runner_pid") or monitor
        procs = [monitor, *descendants(monitor)]
        out["sandbox_procs"] = {classify(p, {monitor}): rss_pss(p) for p in procs if p}
        template = ppid(monitor)
        if template and template != fleet.proc.pid:   # forked from the runner environment's template
            out["sandbox_procs"]["template"] = rss_pss(template)
        out["sandboxed"] = runner != monitor
        out["status"] = status

        say(f"runtime: {colds} cold starts each way (sandboxed: SIGKILL the runner, the supervisor respawns it)")

        async def first_answer(nc: Any, limit: float = 120) -> float:
            """Poll the command every ~10 ms until it is answered; the epoch time of the answer."""
            end = time.monotonic() + limit
            while time.monotonic() < end:
                try:
                    await nc.request(subject, body, timeout=0.05)
                    return time.time()
                except Exception:  # noqa: BLE001 - no responders or timeout: not up yet
                    await asyncio.sleep(0.01)
            raise RuntimeError("no answer within the cold-start limit")

        cold_sand: list[float] = []
        cold_sand_probe: list[float] = []
        for _ in range(colds):
            s = fleet.status()["plugins"]["dice-roller"]
            old = s["pid"]
            victim = (s.get("confinement") or {}).get("runner_pid") or old
            os.kill(victim, signal.SIGKILL)
            await asyncio.sleep(0.05)
            answered = await first_answer(sand)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                p = fleet.status()["plugins"]["dice-roller"]
                if p["state"] == "Running" and p["pid"] != old and p.get("ready_at"):
                    cold_sand.append(answered - p["started_at"])
                    cold_sand_probe.append(p["ready_at"] - p["started_at"])
                    break
                await asyncio.sleep(0.2)
        cold_plain: list[float] = []
        for _ in range(colds):
            spawned_epoch = time.time()
            plain.spawn()
            cold_plain.append(await first_answer(bare) - spawned_epoch)
        out["cold_sand_probe"] = cold_sand_probe
        out["cold_sand"], out["cold_plain"] = cold_sand, cold_plain
    finally:
        await sand.close()
        await bare.close()
    return out


def bench_runtime(n: int = 1000, colds: int = 10) -> str:
    from precinct.runtime.runner_env import ensure_runner_env

    runner_python = str(ensure_runner_env())
    measured = now_utc()
    say("runtime: starting dice-roller under `precinct up` and a plain runner against a second nats-server")
    # Short restart backoff: the cold starts below SIGKILL the runner ten times in a row, and the
    # default exponential backoff (1 s doubling to 60 s) would make that take minutes. The figure
    # itself starts at the new instance's `started_at`, after the backoff.
    fleet = Fleet([(ROOT / "plugins" / "dice-roller", "dice-roller")],
                  "--initial-backoff", "0.1", "--max-backoff", "0.1")
    plain = None
    try:
        fleet.wait_all_running(1)
        plain = PlainDice(runner_python)
        r = asyncio.run(_runtime_traffic(fleet.state, plain, n, colds, fleet))
    finally:
        if plain is not None:
            plain.close()
        fleet.close()
    sand, bare = r["times"]["sandbox"], r["times"]["plain"]
    s50, s99, p50, p99 = statistics.median(sand), pct(sand, .99), statistics.median(bare), pct(bare, .99)
    chat = r["chat"]
    procs = r["sandbox_procs"]
    runner_rss, runner_pss = procs.get("runner", (0, 0))
    trusted = [(k, v) for k, v in procs.items() if k in ("monitor", "ns-init")]
    trusted_rss = sum(v[0] for _, v in trusted)
    trusted_pss = sum(v[1] for _, v in trusted)
    plain_rss, plain_pss = r["plain_mem"]
    cs, cp = [x * 1000 for x in r["cold_sand"]], [x * 1000 for x in r["cold_plain"]]
    cprobe = [x * 1000 for x in r["cold_sand_probe"]]
    confinement = r["status"].get("enforcement") or {}
    mechanisms = ", ".join(f"{k}: {v}" for k, v in sorted(confinement.items())) if isinstance(confinement, dict) else str(confinement)
    if not r["sandboxed"]:
        say("runtime: WARNING: the plugin is not sandboxed (not root?); the ratio compares two unsandboxed runners")
    mem_rows = [f"| … its **{k}** (trusted, not charged to the plugin), RSS / PSS | {v[0] / MIB:.1f} / {v[1] / MIB:.1f} MiB | — | "
                "`smaps_rollup` |" for k, v in trusted]
    template_rss, template_pss = procs.get("template", (0, 0))
    if "template" in procs:
        mem_rows.append(f"| the runner environment's **template** (trusted; shared by every plugin it forks: here 1), "
                        f"RSS / PSS | {template_rss / MIB:.1f} / {template_pss / MIB:.1f} MiB | — | `smaps_rollup`; "
                        "its PSS falls as it forks more (see the scale section for the share per plugin at N) |")
        trusted_rss += template_rss
        trusted_pss += template_pss
    handed = "netns+handoff" in (mechanisms or "")
    path = "a NATS socket its monitor hands in" if handed else "the supervisor's relay"
    hop = "runner (over the handed-in socket)" if handed else "relay → runner"
    lines = [
        "## Runtime: the sandbox vs a plain process",
        "",
        f"_Measured {measured}; load average before: {load_average()}._",
        "",
        "**Sandboxed**: `plugins/dice-roller` under a real `precinct up` "
        + ("as root: own account in an operator-mode nats-server, own uid, cgroups, PID/mount/network "
           f"namespaces (NATS reached through {path}), Landlock, seccomp"
           if r["sandboxed"] else "**not as root: nothing confined**")
        + f" (status: {mechanisms or 'n/a'}). "
        "**Plain**: the same runner environment and plugin class started as an ordinary child process of "
        "the benchmark (no sandbox, no account, no relay) against a second nats-server of the same binary, "
        "unauthenticated (`nats-server -a 127.0.0.1 -p PORT`). One benchmark process holds a client on "
        f"each server and sends core requests to `rosey.command.dice.roll` (`2d6`), alternating sandboxed "
        f"and plain request by request (who goes first alternates too): {n} pairs, {WARMUP} warm-up pairs "
        "excluded. The sandboxed request goes core account → service import → plugin account → "
        f"{hop}; the plain one client → server → runner.",
        "",
        "| figure | sandboxed | plain | ratio sandboxed / plain | target | how |",
        "|---|---|---|---|---|---|",
        f"| request → reply, p50 | {s50:.3f} ms | {p50:.3f} ms | **{s50 / p50:.2f}** | ≤ 1.10 (stretch 1.05) | {n} interleaved pairs |",
        f"| request → reply, p99 | {s99:.3f} ms | {p99:.3f} ms | {s99 / p99:.2f} | ≤ 1.2 | same samples |",
        f"| request → reply, mean | {statistics.fmean(sand):.3f} ms | {statistics.fmean(bare):.3f} ms | "
        f"{statistics.fmean(sand) / statistics.fmean(bare):.2f} | — | same samples |",
        f"| runner process memory, RSS / PSS | {runner_rss / MIB:.1f} / {runner_pss / MIB:.1f} MiB | "
        f"{plain_rss / MIB:.1f} / {plain_pss / MIB:.1f} MiB | {runner_rss / plain_rss:.2f} (RSS) | RSS ≤ 30 MB | "
        "`/proc/<pid>/smaps_rollup` after the traffic; sandboxed runner = `confinement.runner_pid` |",
        f"| cold start: spawn → first `!roll` answered, median (min–max of {len(cs)}) | "
        f"{statistics.median(cs):.0f} ms ({min(cs):.0f}–{max(cs):.0f}) | "
        f"{statistics.median(cp):.0f} ms ({min(cp):.0f}–{max(cp):.0f}) | "
        f"**{statistics.median(cs) / statistics.median(cp):.2f}** | sandboxed median ≤ 250 ms | "
        "sandboxed: SIGKILL the runner; the supervisor respawns the whole instance (monitor, ns-init, "
        "cgroups, namespaces, handshake, runner; forked from the template when status says `process: forked`); from the new instance's `started_at` (`precinct "
        "status --json`) to the first answer of a request sent every ~10 ms (50 ms timeout). Plain: from "
        "`Popen` of a fresh runner to the first answer, same polling |",
        f"| cold start as the supervisor sees it: spawn → health ping answered, median (min–max) | "
        f"{statistics.median(cprobe):.0f} ms ({min(cprobe):.0f}–{max(cprobe):.0f}) | — | — | — | "
        "`started_at` → `ready_at`; its probe waits 0.5 s per unanswered ping, so this is coarser |",
        "",
        "Memory of the sandboxed plugin, process by process (plain: the runner alone, above):",
        "",
        "| process | value | target | how |",
        "|---|---|---|---|",
        f"| runner (plugin code, uid 61xxx), RSS / PSS | {runner_rss / MIB:.1f} / {runner_pss / MIB:.1f} MiB | RSS ≤ 30 MB | `smaps_rollup` |",
        *mem_rows,
        f"| **total per sandboxed plugin** (runner + monitor + ns-init{' + template' if 'template' in procs else ''}), RSS / PSS | "
        f"{(runner_rss + trusted_rss) / MIB:.1f} / {(runner_pss + trusted_pss) / MIB:.1f} MiB | PSS ≤ 12 MiB | sum of the rows above |",
        "",
        f"`!roll 2d6` through the dispatcher (sandboxed only; the plain setup has no dispatcher): one connected "
        f"console client publishes a chat event and waits for the dispatcher's outcome; {n} sequential, "
        f"{WARMUP} warm-up excluded: p50 **{statistics.median(chat):.2f} ms**, p99 {pct(chat, .99):.2f} ms "
        "(target: median ≤ 5 ms).",
        "",
        headline("`rosey.command.dice.roll` request, sandboxed / plain, p50", f"{s50:.3f} / {p50:.3f} ms = **{s50 / p50:.2f}**", "≤ 1.10 (stretch 1.05)"),
        headline("same, p99", f"{s99:.3f} / {p99:.3f} ms = {s99 / p99:.2f}", "≤ 1.2"),
        headline("`!roll` through the dispatcher, p50 / p99", f"{statistics.median(chat):.2f} / {pct(chat, .99):.2f} ms", "median ≤ 5 ms"),
        headline("memory per sandboxed plugin, 1 plugin: runner / monitor + ns-init (+ whole template), RSS (PSS)",
                 f"{runner_rss / MIB:.1f} ({runner_pss / MIB:.1f}) / {trusted_rss / MIB:.1f} ({trusted_pss / MIB:.1f}) MiB; plain runner {plain_rss / MIB:.1f} ({plain_pss / MIB:.1f}) MiB",
                 "everything per plugin ≤ 12 MiB PSS"),
        headline("cold start (spawn → first `!roll` answered), sandboxed / plain, median", f"{statistics.median(cs):.0f} / {statistics.median(cp):.0f} ms", "sandboxed ≤ 250 ms"),
    ]
    return "\n".join(lines)


# -- scale -----------------------------------------------------------------------------------------


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


def bench_scale(count: int = 100, idle_seconds: float = 30) -> str:
    measured, load = now_utc(), load_average()
    say(f"scale: starting {count} plugins under one `precinct up`")
    sources = _make_many(count)
    fleet = Fleet(sources)
    try:
        t0 = fleet.started
        status = fleet.wait_all_running(count, timeout=900, progress=True)
        startup = time.monotonic() - t0
        sup = fleet.proc.pid
        monitors = {p["pid"] for p in status["plugins"].values() if p.get("pid")}
        sandboxed = any((p.get("confinement") or {}).get("runner_pid") for p in status["plugins"].values())
        say(f"scale: all {count} Running after {startup:.1f} s; measuring {idle_seconds:g} s idle")
        procs = {p: classify(p, monitors) for p in descendants(sup)}
        c0 = {p: cpu_seconds(p) for p in [sup, *procs]}
        w0 = time.monotonic()
        time.sleep(idle_seconds)
        wall = time.monotonic() - w0
        cpu: dict[str, float] = {}
        mem: dict[str, list[tuple[int, int]]] = {}
        for p, c in c0.items():
            kind = "supervisor" if p == sup else procs[p]
            try:
                cpu[kind] = cpu.get(kind, 0.0) + (cpu_seconds(p) - c)
                mem.setdefault(kind, []).append(rss_pss(p))
            except OSError:
                pass
        say("scale: timing `precinct status` (table, --json) and the control op")
        latency = _status_latency(fleet.state)
    finally:
        say("scale: stopping")
        stop0 = time.monotonic()
        fleet.close()
        stop_s = time.monotonic() - stop0
        shutil.rmtree(sources[0][0].parent, ignore_errors=True)
    sup_rss, sup_pss = mem["supervisor"][0]
    order = ["supervisor", "runner", "monitor", "ns-init", "template", "nats-server"] + sorted(
        k for k in mem if k.startswith("service:")) + (["other"] if "other" in mem else [])
    rows = []
    for kind in order:
        if kind not in mem:
            continue
        vals = mem[kind]
        k = len(vals)
        rss = sum(v[0] for v in vals)
        pss = sum(v[1] for v in vals)
        per = f"{rss / k / MIB:.1f} / {pss / k / MIB:.1f} MiB each" if k > 1 else "—"
        rows.append(f"| {kind} | {k} | {100 * cpu.get(kind, 0) / wall:.2f} % | {rss / MIB:.0f} / {pss / MIB:.0f} MiB | {per} |")
    total_rss = sum(v[0] for vals in mem.values() for v in vals)
    total_pss = sum(v[1] for vals in mem.values() for v in vals)
    total_cpu = 100 * sum(cpu.values()) / wall
    sup_cpu = 100 * cpu["supervisor"] / wall
    # Everything a plugin costs: its own processes and its share of the template.
    per_plugin = sum(v[1] for kind in ("runner", "monitor", "ns-init", "template") for v in mem.get(kind, [])) / count
    return "\n".join([
        f"## Scale: {count} plugins on one {os.cpu_count()}-core machine",
        "",
        f"_Measured {measured}; load average before: {load}._",
        "",
        f"{count} copies of the `8ball` fixture (each its own plugin id, command and account; "
        f"{'sandboxed as root' if sandboxed else 'NOT sandboxed (not root)'}) under one `precinct up`. "
        f"Start: wall clock from spawning `precinct up` (NATS start and account minting included) until "
        f"`precinct status --json` shows all Running (polled every 0.5 s). Idle: utime+stime of every "
        f"process of the tree over {idle_seconds:g} s with no traffic, then `smaps_rollup`.",
        "",
        "| figure | value | target | how |",
        "|---|---|---|---|",
        f"| time from `precinct up` to all {count} Running | {startup:.1f} s | ≤ 60 s at 500 | wall clock |",
        f"| supervisor CPU while idle | {sup_cpu:.2f} % of one core | < 5 % | the supervisor process (with the handoff it copies no plugin traffic; with the relay fallback it would) |",
        f"| supervisor memory RSS / PSS | {sup_rss / MIB:.1f} / {sup_pss / MIB:.1f} MiB | — | `smaps_rollup` |",
        f"| whole tree CPU while idle | {total_cpu:.2f} % of one core | — | supervisor + every process below it |",
        f"| whole tree memory RSS / PSS | {total_rss / MIB:.0f} / {total_pss / MIB:.0f} MiB | PSS ≤ 6 GiB at 500 | sum over the processes below; PSS is the honest sum |",
        f"| per plugin: runner + monitor + ns-init + its share of the template, PSS | {per_plugin / MIB:.1f} MiB | ≤ 12 MiB | "
        "the PSS of those process classes below, divided by the plugin count |",
        f"| `precinct up` stop (SIGTERM → exit) | {stop_s:.1f} s | — | wall clock |",
        *(f"| {what}, p50 / max of {len(t)} | {pct(t, 0.5):.2f} / {max(t):.2f} s | {target} | {how} |"
          for what, (t, target, how) in latency.items()),
        "",
        "| process class | count | CPU idle (% of one core, all of them) | RSS / PSS, all of them | RSS / PSS per process |",
        "|---|---|---|---|---|",
        *rows,
        "",
        headline(f"{count} plugins: `precinct up` → all Running", f"{startup:.1f} s", "≤ 60 s at 500"),
        headline(f"{count} plugins: supervisor CPU idle / RSS (PSS)",
                 f"{sup_cpu:.2f} % / {sup_rss / MIB:.0f} ({sup_pss / MIB:.0f}) MiB", "CPU < 5 %"),
        headline(f"{count} plugins: whole tree idle CPU / PSS", f"{total_cpu:.1f} % / {total_pss / MIB:.0f} MiB",
                 "PSS ≤ 6 GiB (6144 MiB) at 500"),
        headline(f"{count} plugins: per plugin (its processes + its share of the template), PSS",
                 f"{per_plugin / MIB:.1f} MiB", "≤ 12 MiB"),
        headline(f"{count} plugins: `precinct status` wall time, p50 / max",
                 f"{pct(latency['`precinct status`'][0], 0.5):.2f} / {max(latency['`precinct status`'][0]):.2f} s",
                 "< 1 s"),
    ])


def _status_latency(state: Path, calls: int = 10) -> dict[str, tuple[list[float], str, str]]:
    """Wall time of what a person or a script waits for: the CLI (its own
    start included, as typed) and, to tell the supervisor's share from the
    CLI's, the bare control-socket `status` op."""
    from precinct.runtime.control import call

    def timed(fn: Callable[[], Any]) -> list[float]:
        out = []
        for _ in range(calls):
            t0 = time.monotonic()
            fn()
            out.append(time.monotonic() - t0)
        return out

    def cli(*extra: str) -> Callable[[], Any]:
        def run() -> None:
            r = subprocess.run([*PRECINCT, "status", *extra, "--state-dir", str(state)],
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"precinct status {' '.join(extra)} failed: {r.stderr[-500:]}")
        return run

    return {
        "`precinct status`": (timed(cli()), "< 1 s", "wall time of the CLI call, output piped (160 columns)"),
        "`precinct status --json`": (timed(cli("--json")), "—", "wall time of the CLI call"),
        "control op `status`": (timed(lambda: call(state, "status", timeout=60)), "—",
                                "the socket round trip alone, from this (already started) process"),
        "`precinct --help`": (timed(lambda: subprocess.run([*PRECINCT, "--help"], capture_output=True, timeout=120)),
                              "—", "the CLI's own start, for comparison"),
    }


# -- refusals: what a flood of refused calls costs the supervisor -----------------------------------

FLOODER_YAML = """name: flooder
version: 0.0.1
author: precinct-benchmarks
commands: {flood: flooder.go}
resources: {memory_limit: 96Mi, cpu_limit: 500m}
"""
FLOODER_PY = """import ctypes, json, os, threading, time


def flood(kind, seconds):
    libc = ctypes.CDLL(None, use_errno=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if kind == "landlock":
            try:
                os.close(os.open("/etc/passwd", os.O_RDONLY))   # outside its view: Landlock refuses
            except OSError:
                pass
        else:
            libc.syscall(425, 1, None)                          # io_uring_setup: seccomp refuses


class Flooder:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.flooder.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        kind, seconds = str(json.loads(msg.data or b"{}").get("args") or "").split()
        threading.Thread(target=flood, args=(kind, float(seconds)), daemon=True).start()
        await msg.respond(json.dumps({"success": True, "result": {"flooding": kind}}).encode())
"""


def bench_refusals(seconds: float = 10.0) -> str:
    measured, load = now_utc(), load_average()
    src = Path(tempfile.mkdtemp(prefix="precinct-flooder-")) / "flooder"
    src.mkdir()
    (src / "plugin.yaml").write_text(FLOODER_YAML)
    (src / "plugin.py").write_text(FLOODER_PY)
    say(f"refusals: one plugin floods refused syscalls, then refused file opens, {seconds:g} s each")
    # One long strike: the ladder must not restart the flooder mid-measurement.
    fleet = Fleet([(src, "flooder")], "--violation-cooldown", "3600", "--suspend-after", "0")
    rows = []
    try:
        fleet.wait_all_running(1, timeout=300)
        sup = fleet.proc.pid
        idle0 = cpu_seconds(sup)
        time.sleep(seconds)
        idle = (cpu_seconds(sup) - idle0) / seconds * 100
        before = fleet.status()
        for kind in ("seccomp", "landlock"):
            counts0 = before["plugins"]["flooder"]["refusals"]["counts"][kind]
            lost0 = dict(before["refusals"]["lost"])
            c0 = cpu_seconds(sup)
            said = subprocess.run([*PRECINCT, "say", f"!flood {kind} {seconds:g}", "--state-dir", str(fleet.state)],
                                  capture_output=True, text=True, timeout=120)
            if said.returncode != 0:
                raise RuntimeError(f"!flood {kind}: {said.stdout} {said.stderr}")
            time.sleep(seconds + 3)                 # the flood, then the reader's backlog
            used = cpu_seconds(sup) - c0
            after = fleet.status()
            counted = after["plugins"]["flooder"]["refusals"]["counts"][kind] - counts0
            lost = {k: v - lost0.get(k, 0) for k, v in after["refusals"]["lost"].items()}
            rows.append((kind, used / (seconds + 3) * 100, counted, lost,
                         after["plugins"]["flooder"]["refusals"]["recovered_from_domain_totals"]))
            before = after
        violations = before["plugins"]["flooder"]["violations"]
    finally:
        fleet.close()
        shutil.rmtree(src.parent, ignore_errors=True)
    lines = [
        "## Refusals: a plugin flooding refused calls",
        "",
        f"_Measured {measured}; load average before: {load}._",
        "",
        f"One plugin (cpu_limit 500m) loops on a refused call for {seconds:g} s: `io_uring_setup` (seccomp), "
        "then opening `/etc/passwd` (Landlock, outside its view). The supervisor reads the kernel's audit "
        "records (at most 500 per 0.1 s), attributes and counts them. CPU: utime+stime of the supervisor "
        f"process over the flood plus 3 s, as % of one core; idle for comparison: {idle:.2f} %. `lost`: the "
        "host-wide counters of `precinct status` (kernel backlog drops, socket overflows, reader ticks over "
        "budget). `recovered`: Landlock denials known only from the domain's total when it ended "
        "(the flooder's domain ends only when it stops).",
        "",
        "| flood | supervisor CPU | refusals counted | lost | recovered |",
        "|---|---|---|---|---|",
        *[f"| {kind} | {cpu:.2f} % | {counted:,} | {', '.join(f'{k} {v:,}' for k, v in lost.items())} | {rec:,} |"
          for kind, cpu, counted, lost, rec in rows],
        "",
        f"Ladder: {violations.get('strikes')} strike(s) with `--violation-cooldown 3600` (one long offence), "
        f"kinds {violations.get('counts')}.",
        "",
    ]
    for kind, cpu, counted, _lost, _rec in rows:
        lines.append(headline(f"refusal flood ({kind}, {seconds:g} s): supervisor CPU, refusals counted",
                              f"{cpu:.1f} % of a core, {counted:,}", "CPU < 10 %"))
    return "\n".join(lines)


# -- the other scripts -----------------------------------------------------------------------------


def _stamp(text: str, measured: str, load: str) -> str:
    head, _, rest = text.partition("\n")
    return f"{head}\n\n_Measured {measured}; load average before: {load}._\n{rest}"


def bench_gateway_storage_section(messages: int, queries: int) -> str:
    import gateway_storage

    measured, load = now_utc(), load_average()
    say(f"gateway_storage: {messages:,} messages × 3 rounds each way, {queries:,} storage requests each")
    r = asyncio.run(gateway_storage.measure(messages, queries))
    text = _stamp(gateway_storage.render(r).rstrip(), measured, load)
    ratio = r["gw"] / r["raw"] if r["raw"] else 0.0
    return "\n".join([
        text, "",
        headline("gateway / raw NATS throughput", f"{r['gw']:,.0f} / {r['raw']:,.0f} msg/s = **{ratio:.2f}**", "≥ 0.5"),
        headline("storage insert / select p50 (p99)",
                 f"{gateway_storage.pct(r['inserts'], .5):.2f} ({gateway_storage.pct(r['inserts'], .99):.2f}) / "
                 f"{gateway_storage.pct(r['selects'], .5):.2f} ({gateway_storage.pct(r['selects'], .99):.2f}) ms"),
    ])


def bench_log_flood_section(seconds: float) -> str:
    import log_flood

    measured, load = now_utc(), load_average()
    say(f"log_flood: {len(log_flood.CASES)} cases × 2 readers × {seconds:g} s")
    r = log_flood.measure(seconds)
    worst = max(c["after"]["cpu"] for c in r["cases"].values())
    worst_before = max(c["before"]["cpu"] for c in r["cases"].values())
    return "\n".join([
        _stamp(log_flood.render(r).rstrip(), measured, load), "",
        headline("plugin flooding its output: supervisor CPU before / after (worst case)",
                 f"{worst_before * 100:.1f} % / **{worst * 100:.2f} %** of a core", "< 2 %"),
    ])


def bench_hot_reload_section(reloads: int) -> str:
    import hot_reload

    measured, load = now_utc(), load_average()
    say(f"hot_reload: {reloads} reloads under load (`--reloads N` for more; issue 8's figure used 200)")
    text = hot_reload.bench_hot_reload(reloads).rstrip()
    m = re.search(r"p50 / p99 \| ([^|]+) \|", text)
    ok = re.search(r"successful reloads \| ([^|]+) \|", text)
    lost = re.search(r"lost commands \| ([^|]+) \|", text)
    twice = re.search(r"commands answered twice \| ([^|]+) \|", text)
    during = re.search(r"command round trip during the run, p99 / max[^|]*\| ([^|]+) \|", text)
    return "\n".join([
        _stamp(text, measured, load), "",
        headline(f"hot reload ({reloads} under load): edit → new revision answers, p50 / p99",
                 m.group(1).strip() if m else "?"),
        headline("hot reload: successful reloads, lost commands",
                 f"{ok.group(1).strip() if ok else '?'}, {lost.group(1).strip() if lost else '?'} lost, "
                 f"{twice.group(1).strip() if twice else '?'} answered twice", "≥ 99 %, 0 lost, 0 twice"),
        headline("hot reload: command round trip during the run, p99 / max",
                 during.group(1).strip() if during else "?", "p99 ≤ 50 ms"),
    ])


def bench_operator_section(count: int, timeout: float) -> str:
    import operator_scale

    measured, load = now_utc(), load_average()
    say(f"operator: {count} BotPlugins against the API stand-in (give up after {timeout:.0f} s)")
    r = asyncio.run(operator_scale._measure(count, timeout))
    text = _stamp(operator_scale.render(r).rstrip(), measured, load)
    return "\n".join([
        text, "",
        headline(f"operator: {count} BotPlugins created → all reconciled and Ready",
                 f"{r['all_ready_s']:.1f} s ({r['ready']}/{count})", "≤ 120 s at 5,000"),
        headline(f"operator: delete all {count} through the finalizer",
                 f"{r['delete_s']:.1f} s ({r['deleted']}/{count})", "≤ 120 s at 5,000"),
        headline("operator RSS peak (VmHWM) / idle CPU after", f"{r['hwm'] / MIB:.0f} MiB / {100 * r['idle_cpu']:.1f} %",
                 "≤ 200 MiB / near zero"),
    ])


# -- the doc ---------------------------------------------------------------------------------------


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    distro = "?"
    if Path("/etc/os-release").exists():
        m = re.search(r'^PRETTY_NAME="?([^"\n]+)', Path("/etc/os-release").read_text(), re.M)
        distro = m.group(1) if m else "?"
    try:
        from precinct.natsauth.server import find_binary

        nats_version = subprocess.run([find_binary(), "--version"], capture_output=True, text=True,
                                      timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        nats_version = "nats-server ?"
    try:
        from importlib.metadata import version

        nats_py = version("nats-py")
    except Exception:  # noqa: BLE001
        nats_py = "?"
    return (f"{distro}, kernel {platform.release()}, {os.cpu_count()} × {model}, {mem_kb / 2**20:.0f} GiB RAM; "
            f"Python {platform.python_version()}, {nats_version}, nats-py {nats_py}; "
            f"{'run as root' if os.geteuid() == 0 else 'run unprivileged (nothing sandboxed)'}")


MARK = re.compile(r"^<!-- section: (\w+) -->$", re.M)


def read_sections(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    text = path.read_text()
    marks = list(MARK.finditer(text))
    return {m.group(1): text[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(text)].strip()
            for i, m in enumerate(marks)}


def compose(sections: dict[str, str], order: list[str], ran: list[str], args_line: str) -> str:
    heads = []
    for name in order:
        for line in sections.get(name, "").splitlines():
            m = re.match(r"<!-- headline \| (.*) \| (.*) \| (.*) \| -->$", line)
            if m:
                heads.append(f"| {m.group(1)} | {m.group(2)} | {m.group(3)} |")
    out = [
        "# Benchmarks",
        "",
        "<!-- Rewritten by `.venv/bin/python benchmarks/run.py`; do not edit by hand. -->",
        "",
        f"Machine: {machine()}.",
        "",
        f"Last written {now_utc()} by `benchmarks/run.py {args_line}`".rstrip() + f" (sections run then: "
        f"{', '.join(ran)}; each section gives its own date and the load average before it). Figures are "
        "from single runs on a shared 2-core VM, not averages over days: read ratios measured side by side "
        "in the same run as the robust figures, absolute milliseconds as indicative. p50 is the median; "
        "p99 is the 99th percentile of the same samples. Each row says how it was measured. Nothing here "
        "runs in the test suite.",
        "",
        "## Summary",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        *heads,
        "",
    ]
    # Sections written by a standalone script (benchmarks/natsauth_sync.py) are kept as they are.
    for name in order + [n for n in sections if n not in order]:
        if name in sections:
            out += [f"<!-- section: {name} -->", sections[name], ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="SECTION",
                        help="run only this section (repeatable): " + ", ".join(SECTION_NAMES))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run with small N; prints the result and leaves docs/benchmarks.md alone "
                             "unless --out is given")
    parser.add_argument("--out", type=Path, help="write the doc here (default docs/benchmarks.md; with --quick: nowhere)")
    parser.add_argument("--requests", type=int, help="runtime: interleaved request pairs (default 1000; quick 100)")
    parser.add_argument("--cold-starts", type=int, help="runtime: cold starts each way (default 10; quick 3)")
    parser.add_argument("--messages", type=int, help="gateway: messages per round (default 50000; quick 5000)")
    parser.add_argument("--queries", type=int, help="storage: inserts and selects (default 1000; quick 100)")
    parser.add_argument("--reloads", type=int, help="hot_reload: reloads (default 30; quick 3; issue 8 used 200)")
    parser.add_argument("--plugins", type=int, help="scale: plugins (default 100; quick 10)")
    parser.add_argument("--idle", type=float, help="scale: idle seconds measured (default 30; quick 5)")
    parser.add_argument("--flood-seconds", type=float, help="log_flood: seconds per case and reader (default 10; quick 2)")
    parser.add_argument("--botplugins", type=int, help="operator: BotPlugins (default 500; quick 20)")
    parser.add_argument("--flood", type=float, help="refusals: seconds of each flood (default 10; quick 3)")
    parser.add_argument("--operator-timeout", type=float, default=600,
                        help="operator: give up waiting for all Ready after this many s (default 600)")
    args = parser.parse_args()
    for name in args.only or []:
        if name not in SECTION_NAMES:
            parser.error(f"unknown section {name!r}; choose from {', '.join(SECTION_NAMES)}")

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if args.quick else full)

    sections: dict[str, Callable[[], str]] = {
        "runtime": lambda: bench_runtime(pick(args.requests, 1000, 100), pick(args.cold_starts, 10, 3)),
        "gateway_storage": lambda: bench_gateway_storage_section(pick(args.messages, 50_000, 5000),
                                                                 pick(args.queries, 1000, 100)),
        "hot_reload": lambda: bench_hot_reload_section(pick(args.reloads, 30, 3)),
        "scale": lambda: bench_scale(pick(args.plugins, 100, 10), pick(args.idle, 30.0, 5.0)),
        "operator": lambda: bench_operator_section(pick(args.botplugins, 500, 20), args.operator_timeout),
        "log_flood": lambda: bench_log_flood_section(pick(args.flood_seconds, 10.0, 2.0)),
        "refusals": lambda: bench_refusals(pick(args.flood, 10.0, 3.0)),
    }
    chosen = [n for n in SECTION_NAMES if n in (args.only or SECTION_NAMES)]
    out_path = args.out if args.out is not None else (None if args.quick else DOC)
    existing = read_sections(out_path) if out_path is not None else {}
    started = time.monotonic()
    say(f"sections: {', '.join(chosen)}{' (quick)' if args.quick else ''}; load average {load_average()}")
    results: dict[str, str] = {}
    failed: list[str] = []
    for name in chosen:
        t0 = time.monotonic()
        say(f"=== {name}")
        try:
            results[name] = sections[name]().strip()
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
            import traceback

            traceback.print_exc()
            failed.append(name)
            results[name] = f"## {name}\n\n**Not measured in the run of {now_utc()}: {type(exc).__name__}: {exc}**"
        say(f"=== {name} done in {time.monotonic() - t0:.0f} s")
    merged = {**existing, **results}
    argv = " ".join(sys.argv[1:])
    doc = compose(merged, SECTION_NAMES, chosen, argv)
    if out_path is None:
        print(doc)
        say("--quick: docs/benchmarks.md left alone (give --out PATH to write)")
    else:
        out_path.write_text(doc)
        say(f"wrote {out_path}")
    say(f"total {time.monotonic() - started:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if failed:
        sys.exit(1)


SECTION_NAMES = ["runtime", "gateway_storage", "hot_reload", "scale", "operator", "log_flood", "refusals"]


if __name__ == "__main__":
    main()
