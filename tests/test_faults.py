"""Faults: the supervisor killed with SIGKILL takes everything with it, and a
new `precinct up` on the same state dir restores the fleet (with every
acknowledged storage write); nats-server, the gateway and storage killed
with SIGKILL under load are restarted, plugins reconnect, and nothing
acknowledged is lost. docs/production.md has the systemd unit."""

from __future__ import annotations

import os
import signal
import time

from runtime_support import EXAMPLES, FIXTURES, Up, copy_plugin, pid_alive, processes_mentioning


def test_sigkill_of_the_supervisor_leaves_no_process_and_up_restores_the_fleet(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    copy_plugin(EXAMPLES / "dice-roller", plugins)
    copy_plugin(FIXTURES / "8ball", plugins)
    state = tmp_path / "state"
    first = Up(plugins, state)
    second = None
    try:
        status = first.wait_running("dice-roller", "eightball")
        pids = [p["pid"] for p in status["plugins"].values()] + [s["pid"] for s in status["services"].values()]
        pids += [p.get("confinement", {}).get("runner_pid") for p in status["plugins"].values()]
        pids = [p for p in pids if p]
        assert len(pids) >= 6 and all(pid_alive(p) for p in pids)

        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (any(pid_alive(p) for p in pids) or processes_mentioning(str(state))):
            time.sleep(0.2)
        assert [p for p in pids if pid_alive(p)] == []
        assert processes_mentioning(str(state)) == []

        second = Up(plugins, state)
        second.wait_running("dice-roller", "eightball")
        rolled = second.say("!roll d20")
        assert rolled.returncode == 0, rolled.stderr
    finally:
        first.stop()
        if second:
            second.stop()


# -- kill -9 of a trusted service under load ----------------------------------------------
#
# One fleet (quotes, which writes through storage, and 8ball) for the module:
# a load thread keeps adding quotes through the whole chain (say -> dispatcher
# -> NATS -> plugin -> storage -> SQLite) while a service is SIGKILLed. Every
# command must end definitively for the caller (answered, or `precinct say`
# exits non-zero: reported as failed), and every write that was acknowledged
# ("quote #N saved") must be in the database afterwards. Then the supervisor
# itself is SIGKILLed and `precinct up` on the same state dir must bring back
# the fleet with every acknowledged write.

import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402

import pytest  # noqa: E402


class Load(threading.Thread):
    """`!quote add <tag>-<n>` in a loop; keeps every outcome."""

    def __init__(self, up: Up, tag: str) -> None:
        super().__init__(daemon=True)
        self.up, self.tag = up, tag
        self.acked: list[str] = []
        self.failed: list[tuple[str, int, str]] = []
        self.hung: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._stop_event.is_set():
            text = f"{self.tag}-{n}"
            n += 1
            try:
                said = self.up.say(f"!quote add {text}", "--timeout", "15")
            except subprocess.TimeoutExpired:
                self.hung.append(text)
                continue
            if said.returncode == 0 and "saved" in said.stdout:
                self.acked.append(text)
            else:
                self.failed.append((text, said.returncode, (said.stdout + said.stderr).strip()[-200:]))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(90)


def _stored(state) -> set[str]:
    with sqlite3.connect(f"file:{state / 'storage' / 'quotes.db'}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT text FROM quotes")}


def _wait_acked(load: Load, more: int, timeout: float = 120) -> None:
    target = len(load.acked) + more
    deadline = time.monotonic() + timeout
    while len(load.acked) < target:
        assert time.monotonic() < deadline, f"only {len(load.acked)} acknowledged of {target}; failed: {load.failed[-5:]}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def quotes_fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    plugins = tmp / "plugins"
    plugins.mkdir()
    copy_plugin(FIXTURES / "quotes", plugins)
    copy_plugin(FIXTURES / "8ball", plugins)
    state = tmp / "state"
    ups = [Up(plugins, state)]
    ups[0].wait_running("quotes", "eightball")
    yield ups, plugins, state
    for up in ups:
        up.stop()


@pytest.mark.parametrize("service", ["nats", "gateway", "storage"])
def test_kill_9_of_a_service_under_load_restarts_it_and_loses_nothing_acknowledged(quotes_fleet, service):
    ups, _plugins, state = quotes_fleet
    up = ups[-1]
    before = up.status()
    old_pid = before["services"][service]["pid"]
    assert old_pid and pid_alive(old_pid)
    load = Load(up, f"{service}")
    load.start()
    try:
        _wait_acked(load, 5)
        os.kill(old_pid, signal.SIGKILL)
        status = up.wait_for(lambda s: s["services"][service]["pid"] not in (None, old_pid)
                             and s["services"][service]["state"] == "Running"
                             and s["plugins"]["quotes"]["state"] == "Running"
                             and s["plugins"]["eightball"]["state"] == "Running",
                             f"{service} restarted and the plugins running", 120)
        assert status["services"][service]["restarts"] > before["services"][service]["restarts"]
        _wait_acked(load, 5)        # the chain works again: plugins reconnected
    finally:
        load.stop()
    assert not load.hung, f"commands neither answered nor reported failed: {load.hung}"
    missing = set(load.acked) - _stored(state)
    assert not missing, f"acknowledged but lost: {sorted(missing)}"
    answer = up.say("!8ball still there?")
    assert answer.returncode == 0, answer.stderr


def test_up_after_a_supervisor_sigkill_restores_the_fleet_and_every_acknowledged_write(quotes_fleet):
    ups, plugins, state = quotes_fleet
    up = ups[-1]
    load = Load(up, "supervisor")
    load.start()
    try:
        _wait_acked(load, 5)
        os.kill(up.proc.pid, signal.SIGKILL)
        up.proc.wait(30)
    finally:
        load.stop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and processes_mentioning(str(state)):
        time.sleep(0.3)
    assert processes_mentioning(str(state)) == []     # nothing outlives it (as in the first test)
    acked = set(load.acked)
    assert acked
    again = Up(plugins, state)
    ups.append(again)
    again.wait_running("quotes", "eightball")
    assert not acked - _stored(state), f"acknowledged but lost: {sorted(acked - _stored(state))}"
    listed = again.say("!quote")
    assert listed.returncode == 0 and "quotes; newest" in listed.stdout, (listed.stdout, listed.stderr)
    added = again.say("!quote add after the restart")
    assert added.returncode == 0 and "saved" in added.stdout, (added.stdout, added.stderr)
