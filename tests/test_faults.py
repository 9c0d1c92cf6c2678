"""Faults: the supervisor killed with SIGKILL takes everything with it, and a
new `precinct up` on the same state dir restores the fleet."""

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
