"""Plugins forked from their runner environment's template (confine/template.py).

The confinement tests and the attack suite run with the template on (the
default); these check the template itself: that instances really are its
forks and share its pages, that losing it restarts its plugins and leaves
nothing behind, that the exec path still works without it, and that its
protocol refuses what it should.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from runtime_support import FIXTURES, Up, copy_plugin, pid_alive, structured_answer
from test_runner import runner_python  # noqa: F401 - the session's runner environment

from precinct.confine.forked import Template, TemplateError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the template forks confined plugins: needs root")


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(x) for x in (task / "children").read_text().split()]
    return found


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def _rollup_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/smaps_rollup")


def _template_pid(status: dict, plugin: str) -> int:
    process = status["plugins"][plugin]["enforcement"]["process"]
    assert process.startswith("forked from template pid "), process
    return int(process.rsplit(" ", 1)[1])


@pytest.fixture
def counter_dir(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    copy_plugin(FIXTURES / "counter", plugins)
    return plugins


def test_instances_are_forks_of_the_template_and_as_confined_as_before(tmp_path, counter_dir):
    up = Up(counter_dir, tmp_path / "state")
    try:
        status = up.wait_running("counter")
        entry = status["plugins"]["counter"]
        template = _template_pid(status, "counter")
        assert "precinct.confine.template" in Path(f"/proc/{template}/cmdline").read_bytes().decode()
        assert _ppid(template) == up.proc.pid, "the template is not the supervisor's child"
        monitor = entry["pid"]
        assert _ppid(monitor) == template, "the instance's monitor is not the template's child"
        (ns_init,) = _children(monitor)
        (runner,) = _children(ns_init)
        # The runner: the plugin's uid, no_new_privs, seccomp, as with an exec.
        assert _status_field(runner, "Uid").split() == [str(entry["uid"])] * 4
        assert _status_field(runner, "NoNewPrivs") == "1"
        assert _status_field(runner, "Seccomp") == "2"
        # It shares the template's dirty pages (the imported runner) instead of
        # having imported everything again: an exec'ed interpreter shares none.
        assert _rollup_kib(runner, "Shared_Dirty") >= 1024, Path(f"/proc/{runner}/smaps_rollup").read_text()
        # And it works: a command answered by the forked runner.
        answer = up.say("!count", "--json")
        assert answer.returncode == 0, answer.stderr
        assert "greeting=hello" in str(structured_answer(answer.stdout))
    finally:
        assert up.stop() == 0


def test_losing_the_template_restarts_its_plugins_and_leaves_nothing(tmp_path, counter_dir):
    up = Up(counter_dir, tmp_path / "state")
    try:
        status = up.wait_running("counter")
        template = _template_pid(status, "counter")
        monitor = status["plugins"]["counter"]["pid"]
        (ns_init,) = _children(monitor)
        (runner,) = _children(ns_init)
        os.kill(template, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while any(pid_alive(p) for p in (monitor, ns_init, runner)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(pid_alive(p) for p in (monitor, ns_init, runner)), "an instance outlived its template"
        status = up.wait_for(lambda s: s["plugins"]["counter"]["state"] == "Running"
                             and s["plugins"]["counter"]["restarts"] >= 1, "counter restarted")
        assert _template_pid(status, "counter") != template
        assert up.say("!count", "--json").returncode == 0
    finally:
        assert up.stop() == 0


def test_without_the_template_instances_start_by_exec(tmp_path, counter_dir):
    up = Up(counter_dir, tmp_path / "state", env={"PRECINCT_CONFINE_DISABLE": "zygote"})
    try:
        status = up.wait_running("counter")
        entry = status["plugins"]["counter"]
        assert entry["enforcement"]["process"].startswith("exec (template disabled by PRECINCT_CONFINE_DISABLE")
        assert _ppid(entry["pid"]) == up.proc.pid
        assert up.say("!count", "--json").returncode == 0
    finally:
        assert up.stop() == 0


async def _read_all(fd: int, deadline: float) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while time.monotonic() < deadline:
        data = await loop.run_in_executor(None, os.read, fd, 65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def test_a_fork_that_cannot_set_up_fails_closed_and_is_reported(tmp_path, runner_python):  # noqa: F811
    async def scenario() -> None:
        template = Template(runner_python, "precinct_runner")
        try:
            await template.ensure()
            assert template.pid and pid_alive(template.pid)
            read_end, write_end = os.pipe()
            proc = await template.fork(str(tmp_path / "missing-init.json"), write_end)
            os.close(write_end)
            assert await asyncio.wait_for(proc.wait(), 60) == 126     # init's "setup failed", never a runner
            output = await _read_all(read_end, time.monotonic() + 30)
            os.close(read_end)
            assert b"missing-init.json" in output, output
            # A request without its output descriptor is refused, and nothing is
            # forked for it; the template lives on and forks the next one.
            refused = asyncio.get_running_loop().create_future()
            template._pending[999] = refused
            template._sock.send(b'{"req": 999, "config": "/nonexistent"}')
            with pytest.raises(TemplateError, match="exactly one output descriptor"):
                await asyncio.wait_for(refused, 30)
            assert not template._forked, template._forked
            read2, write2 = os.pipe()
            proc2 = await template.fork(str(tmp_path / "also-missing.json"), write2)
            os.close(write2)
            os.close(read2)
            assert await asyncio.wait_for(proc2.wait(), 60) == 126
        finally:
            await template.close()
        assert template.pid is not None
        deadline = time.monotonic() + 30
        while pid_alive(template.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not pid_alive(template.pid), "the template outlived its supervisor's end of the socket"

    asyncio.run(scenario())


def test_a_template_that_cannot_import_the_runner_says_why(runner_python):  # noqa: F811
    async def scenario() -> None:
        template = Template(runner_python, "no_such_runner_module")
        with pytest.raises(TemplateError, match="no_such_runner_module"):
            await template.ensure()
        await template.close()

    asyncio.run(scenario())
