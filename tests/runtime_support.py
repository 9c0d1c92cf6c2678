"""Running a real `precinct up` for tests: a subprocess, real NATS, real runners."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "plugins"
FIXTURES = ROOT / "tests" / "fixtures" / "plugins"
PRECINCT = [sys.executable, "-m", "precinct.cli"]


def copy_plugin(src: Path, plugins_dir: Path, name: str | None = None) -> Path:
    dest = plugins_dir / (name or src.name)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "botplugin.yaml"))
    return dest


def precinct(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*PRECINCT, *args], capture_output=True, text=True, timeout=timeout)


class Up:
    """`precinct up DIR --state-dir S` in the background."""

    def __init__(self, plugins_dir: Path, state_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.plugins_dir, self.state_dir = plugins_dir, state_dir
        self.log = open(state_dir.parent / f"up-{state_dir.name}.log", "w")
        self.proc = subprocess.Popen(
            [*PRECINCT, "up", str(plugins_dir), "--state-dir", str(state_dir), "--grace", "3",
             "--initial-backoff", "0.2", "--max-backoff", "1", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **env} if env else None,
        )

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def status(self, timeout: float = 90, plugin: str | None = None) -> dict | None:
        """The fleet's status, or None if the supervisor does not answer. The
        CLI alone takes seconds to start on a loaded machine (about 5 s at load
        average 18 on 2 cores), so the deadline is generous. `plugin`: that
        plugin alone, with its sandbox's kernel counters (`precinct status ID`)."""
        try:
            result = precinct("status", *([plugin] if plugin else []), "--json", "--state-dir", str(self.state_dir),
                              timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)

    def wait_for(self, predicate, what: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"precinct up exited ({self.proc.returncode}) while waiting for {what}:\n{self.output()}")
            last = self.status()
            if last is not None and predicate(last):
                return last
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; last status: {json.dumps(last, indent=1)[:3000]}\n"
                             f"log:\n{self.output()[-3000:]}")

    def wait_running(self, *plugin_ids: str, timeout: float = 120) -> dict:
        return self.wait_for(
            lambda s: all(s["plugins"].get(p, {}).get("state") == "Running" for p in plugin_ids),
            f"{', '.join(plugin_ids)} running", timeout)

    def say(self, text: str, *extra: str) -> subprocess.CompletedProcess:
        # The subprocess deadline covers the CLI's start on a loaded machine on top of `--timeout`.
        return precinct("say", text, "--state-dir", str(self.state_dir), *extra, timeout=150)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def structured_answer(stdout: str) -> object:
    """What a plugin answered, from `precinct say --json`: its result object
    when it carries no chat text of its own (`formatted`), else the text chat
    showed. (Chat never shows JSON; the outcome keeps the plugin's reply.)"""
    outcome = json.loads(stdout)
    reply = outcome.get("reply")
    result = reply.get("result") if isinstance(reply, dict) else None
    if isinstance(result, list) or (isinstance(result, dict) and "formatted" not in result):
        return result
    return outcome.get("message", "")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def processes_mentioning(text: str) -> list[int]:
    """Live pids whose command line contains `text` (e.g. a unique state dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def cleanup_cgroups(dirs: set[str]) -> None:
    """Remove the (now empty) plugin cgroups a test's supervisor left, deepest
    first: each instance's leaf, its plugin's cgroup, the supervisor's parent."""
    import contextlib

    for d in sorted(dirs, key=len, reverse=True):
        path = Path(d)
        for target in (path, path.parent, path.parent.parent):
            with contextlib.suppress(OSError):
                if target.is_dir() and not (target / "cgroup.procs").read_text().strip():
                    target.rmdir()
