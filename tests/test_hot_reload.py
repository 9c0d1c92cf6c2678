"""Hot reload in the single-host runtime (issue 8, item 5), against a real `precinct up`.

- code updates under steady load: every command answered exactly once, none lost;
- a broken update: the old version keeps serving, status says RolledBack;
- a config-only change with a reconfigure() hook: same pid, new config in effect;
- as root (the kernel sandbox, issue 18 item 3): the new instance runs beside
  the old one, each in its own cgroup under the plugin's; a new instance
  OOM-killed in initialize() leaves the old one untouched; a plugin that
  writes its data dir overlaps too, its new instance read-only until the old
  one has exited (never two read-write binds), and a failed new writer
  leaves the old one writing.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from reload_support import CommandLoad
from runtime_support import FIXTURES, Up, copy_plugin

PLUGIN = "counter"


def replace_file(path: Path, text: str) -> None:
    """Write a plugin file the way an editor or `precinct plugin update`
    would: a new file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def set_revision(folder: Path, revision: int) -> None:
    """Edit the code (not the manifest)."""
    code = folder / "plugin.py"
    replace_file(code, re.sub(r"^REVISION = \d+$", f"REVISION = {revision}", code.read_text(), flags=re.M))


def set_greeting(folder: Path, greeting: str) -> None:
    manifest = folder / "plugin.yaml"
    replace_file(manifest, re.sub(r"greeting: .*", f"greeting: {greeting}", manifest.read_text()))


def break_release(folder: Path) -> None:
    """A new version that fails at import."""
    code = folder / "plugin.py"
    replace_file(code, code.read_text() + "\nraise RuntimeError('this release is broken')\n")


async def change_under_load(up: Up, ready, change, done, *, rate: int = 20, timeout: float = 60,
                            settle: float = 0.0) -> tuple:
    """Commands at `rate`/s; once an answer satisfies `ready`, `change()`; wait
    for an answer satisfying `done` (and `settle` seconds more). The first of
    each, and the load's summary (lost, failed, duplicated)."""
    load = CommandLoad(up.state_dir, rate=rate)
    await load.start()
    first = await load.wait_for(ready, timeout=30)
    change()
    second = await load.wait_for(done, timeout=timeout)
    if settle:
        await asyncio.sleep(settle)
    await load.stop()
    return first, second, load.summary()


async def rolled_back(up: Up, timeout: float) -> dict | None:
    """Poll status until LatestRevisionReady says RolledBack; the last status seen."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = await asyncio.to_thread(up.status)
        if status and condition(status, "LatestRevisionReady").get("reason") == "RolledBack":
            break
        await asyncio.sleep(0.5)
    return status


def condition(status: dict, kind: str) -> dict:
    plugin = status["plugins"][PLUGIN]
    return next((c for c in plugin.get("conditions", []) if c["type"] == kind), {})


@pytest.fixture
def counter(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    folder = copy_plugin(FIXTURES / PLUGIN, plugins)
    up = Up(plugins, tmp_path / "state")
    try:
        up.wait_running(PLUGIN)
        yield up, folder
    finally:
        up.stop()


def test_code_updates_under_load_lose_nothing_and_answer_once(counter):
    up, folder = counter
    updates = 5

    async def scenario():
        load = CommandLoad(up.state_dir, rate=25)
        await load.start()
        first = await load.wait_for(lambda a: a[0] == 0, timeout=30)
        pids = {first[1]}
        for revision in range(1, updates + 1):
            set_revision(folder, revision)
            answer = await load.wait_for(lambda a, r=revision: a[0] == r, timeout=60)
            pids.add(answer[1])
            await asyncio.sleep(0.5)
        await load.stop()
        return load.summary(), pids

    summary, pids = asyncio.run(scenario())
    assert len(pids) == updates + 1, pids                    # every update ran a new process
    assert summary["sent"] > 50, summary
    assert summary["lost"] == 0, summary
    assert summary["failed"] == 0, [(o.get("status"), o.get("message")) for _, o in summary["failures"]]
    assert summary["duplicated"] == 0, summary
    status = up.status()
    assert status["plugins"][PLUGIN]["state"] == "Running"
    assert condition(status, "LatestRevisionReady").get("status") == "True"
    assert status["plugins"][PLUGIN]["reloads"] == {"succeeded": updates}   # feeds precinct_plugin_reloads_total


def test_broken_update_rolls_back_and_the_old_version_keeps_serving(counter):
    up, folder = counter

    async def scenario():
        load = CommandLoad(up.state_dir, rate=20)
        await load.start()
        before = await load.wait_for(lambda a: a[0] == 0, timeout=30)
        break_release(folder)
        status = await rolled_back(up, 90)
        sent_after = len(load.sent)
        await asyncio.sleep(2)
        after = load.latest()
        await load.stop()
        return before, after, status, load.summary(), sent_after

    before, after, status, summary, _ = asyncio.run(scenario())
    latest = condition(status, "LatestRevisionReady")
    assert latest.get("status") == "False" and latest.get("reason") == "RolledBack", status
    assert "broken" in latest.get("message", "") or latest.get("message"), latest
    ready = condition(status, "Ready")
    assert ready.get("status") == "True", status
    assert status["plugins"][PLUGIN]["state"] == "Running"
    assert after[0] == 0  # the old code still answers
    assert status["plugins"][PLUGIN]["reloads"].get("rolled_back") == 1, status["plugins"][PLUGIN]["reloads"]
    assert summary["duplicated"] == 0, summary
    # Overlap (this plugin writes no data dir, so as root too): the old
    # instance was never stopped and nothing was lost.
    assert after[1] == before[1], (before, after)
    assert summary["lost"] == 0, summary
    # The broken digest is not retried on every scan: a later good edit is.
    set_revision(folder, 7)
    shutil.rmtree(folder / "__pycache__", ignore_errors=True)
    # (the raise line is still there: fix the file properly)
    code = folder / "plugin.py"
    code.write_text(code.read_text().replace("\nraise RuntimeError('this release is broken')\n", "\n"))
    up.wait_for(lambda s: condition(s, "LatestRevisionReady").get("status") == "True"
                and s["plugins"][PLUGIN]["state"] == "Running", "the fixed version", timeout=90)


def test_config_only_change_reloads_without_a_restart(counter):
    up, folder = counter

    before, after, summary = asyncio.run(change_under_load(
        up, lambda a: a[2] == "hello", lambda: set_greeting(folder, "bonjour"), lambda a: a[2] == "bonjour",
        rate=20, timeout=30))
    assert after[1] == before[1], (before, after)    # same process
    assert after[0] == before[0]
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["failed"] == 0, summary
    status = up.status()
    assert condition(status, "LatestRevisionReady").get("reason") == "ConfigReloaded", status


# -- overlap mode (a sandbox that holds two instances of one plugin) -------------------------


def test_overlap_mode_runs_both_versions_during_the_switch(tmp_path, caplog):
    """The overlap path without the kernel sandbox (what an unprivileged
    supervisor does): run the supervisor in-process with the no-op
    confinement, so this holds as root too."""
    import logging

    from precinct.confine.launch import Confinement
    from precinct.runtime.slot import RestartPolicy
    from precinct.runtime.supervisor import Supervisor

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    folder = copy_plugin(FIXTURES / PLUGIN, plugins)
    state = tmp_path / "state"
    caplog.set_level(logging.INFO, logger="precinct.rollout")

    async def scenario():
        sup = Supervisor(plugins, state, RestartPolicy(initial_backoff=0.2, max_backoff=1, grace_period=3),
                         confinement=Confinement())
        task = asyncio.create_task(sup.run())
        try:
            deadline = time.monotonic() + 120
            while not (state / "endpoint.json").exists() or PLUGIN not in sup.entries \
                    or sup.entries[PLUGIN].slot.status.state != "Running":
                assert time.monotonic() < deadline and not task.done(), "supervisor did not come up"
                await asyncio.sleep(0.2)
            assert sup.rollouts.overlap_ok(sup.entries[PLUGIN], sup.entries[PLUGIN])
            load = CommandLoad(state, rate=25)
            await load.start()
            first = await load.wait_for(lambda a: a[0] == 0, timeout=30)
            for revision in (1, 2, 3):
                set_revision(folder, revision)
                await load.wait_for(lambda a, r=revision: a[0] == r, timeout=60)
            good = load.latest()
            # A broken release: the running instance is never stopped.
            break_release(folder)
            while sup.rollouts.failed.get(PLUGIN) is None:
                assert time.monotonic() < deadline + 120
                await asyncio.sleep(0.2)
            await asyncio.sleep(1)
            after = load.latest()
            await load.stop()
            snap = sup.entries[PLUGIN].slot.conditions.to_list()
            return first, good, after, load.summary(), snap, list(sup.rollouts.history)
        finally:
            sup.stop()
            await asyncio.wait_for(task, 60)

    first, good, after, summary, conditions, history = asyncio.run(scenario())
    assert [h["mode"] for h in history] == ["overlap"] * 4, history
    assert [h["ok"] for h in history] == [True, True, True, False]
    assert summary["lost"] == 0 and summary["failed"] == 0 and summary["duplicated"] == 0, summary
    assert after[:2] == good[:2]      # the same process of revision 3 kept serving throughout
    latest = next(c for c in conditions if c["type"] == "LatestRevisionReady")
    ready = next(c for c in conditions if c["type"] == "Ready")
    assert latest["status"] == "False" and latest["reason"] == "RolledBack", conditions
    assert ready["status"] == "True", conditions


# -- as root: two instances in the kernel sandbox ----------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the kernel sandbox needs root; CI runs these as root")


class Leaves:
    """Watches a plugin's cgroup (memory hierarchy) from a thread, every
    10 ms: which instance leaves (`i-<instance>`) hold processes at each
    moment. The first moment two did, it also records /proc/<pid>/cgroup of
    every process in them, to check each is in its own leaf in every
    hierarchy."""

    def __init__(self, plugin_dir: Path) -> None:
        self.dir = plugin_dir
        self.most = 0
        self.together: dict[str, dict[int, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            now: dict[str, set[int]] = {}
            for leaf in self.dir.glob("i-*"):
                try:
                    procs = {int(x) for x in (leaf / "cgroup.procs").read_text().split()}
                except (OSError, ValueError):
                    continue
                if procs:
                    now[leaf.name] = procs
            self.most = max(self.most, len(now))
            if len(now) >= 2 and not self.together:
                shown: dict[str, dict[int, str]] = {}
                for name, procs in now.items():
                    for pid in procs:
                        try:
                            shown.setdefault(name, {})[pid] = Path(f"/proc/{pid}/cgroup").read_text()
                        except OSError:
                            pass
                self.together = shown

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def sandbox_of(up: Up) -> dict:
    """The plugin's status with its kernel counters (`precinct status ID`)."""
    return up.status(plugin=PLUGIN)["plugins"][PLUGIN]


@needs_root
def test_as_root_a_reload_runs_the_new_instance_beside_the_old(counter):
    up, folder = counter
    before = sandbox_of(up)
    conf = before["confinement"]
    plugin_dir, leaf = Path(conf["plugin_cgroups"]["memory"]), Path(conf["cgroups"]["memory"])
    assert leaf.parent == plugin_dir and leaf.name == f"i-{before['instance']}", conf
    memory = before["limits"]["memory_bytes"]
    # Each instance has the plugin's memory and pids limit; the plugin cgroup twice that, and the CPU quota.
    assert conf["limits"]["memory"] == memory and conf["limits"]["plugin_memory"] == 2 * memory, conf["limits"]
    assert conf["limits"]["pids"] == before["limits"]["pids"], conf["limits"]
    assert conf["limits"]["plugin_pids"] == 2 * before["limits"]["pids"], conf["limits"]
    assert conf["limits"]["cpu_quota_us"] == before["limits"]["cpu_millicores"] * conf["limits"]["cpu_period_us"] // 1000
    watch = Leaves(plugin_dir)

    try:
        first, second, summary = asyncio.run(change_under_load(
            up, lambda a: a[0] == 0, lambda: set_revision(folder, 1), lambda a: a[0] == 1,
            rate=25, timeout=60, settle=0.5))
    finally:
        watch.stop()
    assert second[1] != first[1]
    assert summary["lost"] == 0 and summary["failed"] == 0 and summary["duplicated"] == 0, summary
    assert "beside the old one" in up.output() and "handing over" not in up.output(), up.output()[-2000:]
    # Both ran at once, each process in its own instance's leaf in every hierarchy.
    assert len(watch.together) == 2, (watch.most, watch.together)
    for name, members in watch.together.items():
        for pid, text in members.items():
            for line in text.splitlines():
                controllers, path = line.split(":", 2)[1:]
                ours = set(controllers.split(",")) & {"memory", "pids", "cpu", "cpuacct", "freezer"}
                if ours or (controllers == "" and conf["cgroup_version"] == "v2"):
                    assert path.endswith(f"/{PLUGIN}/{name}"), (pid, line)
    after = sandbox_of(up)
    new_leaf = Path(after["confinement"]["cgroups"]["memory"])
    assert new_leaf.parent == plugin_dir and new_leaf != leaf
    assert not leaf.exists(), "the old instance's cgroup outlived it"
    assert not (up.state_dir / "confine" / PLUGIN / before["instance"]).exists(), "its files outlived it"
    assert after["enforcement"]["cgroup-membership"].startswith("verified"), after["enforcement"]


@needs_root
def test_as_root_a_new_instance_oom_killed_in_initialize_leaves_the_old_untouched(counter):
    up, folder = counter
    before = sandbox_of(up)
    leaf = Path(before["confinement"]["cgroups"]["memory"])
    memory = before["limits"]["memory_bytes"]

    async def scenario():
        load = CommandLoad(up.state_dir, rate=20)
        await load.start()
        first = await load.wait_for(lambda a: a[0] == 0, timeout=30)
        code = folder / "plugin.py"
        text = code.read_text().replace(
            "    async def initialize(self):\n",
            f"    async def initialize(self):\n        self.hog = b'x' * {2 * memory}   # twice its memory_limit\n")
        assert "self.hog" in text
        replace_file(code, text)
        status = await rolled_back(up, 120)
        await asyncio.sleep(1)
        last = load.latest()
        await load.stop()
        return first, last, load.summary()

    first, last, summary = asyncio.run(scenario())
    after = sandbox_of(up)
    latest = {c["type"]: c for c in after["conditions"]}["LatestRevisionReady"]
    assert latest["reason"] == "RolledBack" and "OOMKilled" in latest["message"], latest
    # The same process of the old version served throughout, in the same cgroup, never OOM-killed.
    assert last[1] == first[1], (first, last)
    assert (after["pid"], after["instance"], after["restarts"]) == (before["pid"], before["instance"], before["restarts"])
    assert after["confinement"]["cgroups"]["memory"] == str(leaf) and leaf.is_dir()
    assert after["confinement"]["oom_kills"] == 0 and after["state"] == "Running", after["confinement"]
    assert summary["lost"] == 0 and summary["failed"] == 0 and summary["duplicated"] == 0, summary
    assert [p.name for p in leaf.parent.glob("i-*")] == [leaf.name], "the failed instance's cgroup is left"


@needs_root
def test_as_root_a_plugin_that_reads_its_data_dir_overlaps(tmp_path):
    """Read-only, both instances bind the one mount of its image read-only, and the reload overlaps."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    folder = copy_plugin(FIXTURES / PLUGIN, plugins)
    manifest = folder / "plugin.yaml"
    manifest.write_text(manifest.read_text() + "permissions: [file_system_read]\n")
    up = Up(plugins, tmp_path / "state")
    try:
        up.wait_running(PLUGIN)
        before = sandbox_of(up)
        assert before["enforcement"]["data_dir"] == "read-only", before["enforcement"]
        assert before["enforcement"]["disk"].startswith("ext4 image"), before["enforcement"]
        watch = Leaves(Path(before["confinement"]["plugin_cgroups"]["memory"]))

        try:
            first, second, summary = asyncio.run(change_under_load(
                up, lambda a: a[0] == 0, lambda: set_revision(folder, 1), lambda a: a[0] == 1,
                rate=20, timeout=60))
        finally:
            watch.stop()
        assert second[1] != first[1]
        assert watch.most == 2, watch.most
        assert "beside the old one" in up.output() and "handing over" not in up.output(), up.output()[-2000:]
        assert summary["lost"] == 0 and summary["failed"] == 0 and summary["duplicated"] == 0, summary
        after = sandbox_of(up)
        assert after["enforcement"]["disk"].startswith("ext4 image"), after["enforcement"]
        assert after["enforcement"]["cgroup-membership"].startswith("verified"), after["enforcement"]
    finally:
        up.stop()


# -- as root: a plugin that writes its data dir (the read-only/read-write flip) ----------------

IN_DATA = "/run/precinct/sandbox/data"


def data_bind(pid: int) -> str | None:
    """"rw" or "ro": how the process's mount namespace has its data dir bound (None: no such mount, or gone)."""
    try:
        text = Path(f"/proc/{pid}/mountinfo").read_text()
    except OSError:
        return None
    found = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[4] == IN_DATA:
            found = parts[5].split(",")[0]
    return found


class DataBinds(Leaves):
    """Leaves, plus every 10 ms how each running instance has its data dir
    bound, read from /proc/<runner pid>/mountinfo: the most read-write binds
    at one moment, and whether one instance was read-only while another was
    read-write."""

    def __init__(self, plugin_dir: Path) -> None:
        self.most_rw = 0
        self.ro_beside_rw = False
        self.seen: dict[str, set[str]] = {}
        super().__init__(plugin_dir)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            binds: dict[str, str] = {}
            for leaf in self.dir.glob("i-*"):
                try:
                    procs = [int(x) for x in (leaf / "cgroup.procs").read_text().split()]
                except (OSError, ValueError):
                    continue
                for pid in procs:
                    bind = data_bind(pid)
                    if bind is not None:
                        binds[leaf.name] = bind
                        self.seen.setdefault(leaf.name, set()).add(bind)
                        break
            self.most = max(self.most, len(binds))
            rw = sum(1 for b in binds.values() if b == "rw")
            self.most_rw = max(self.most_rw, rw)
            if rw == 1 and "ro" in binds.values():
                self.ro_beside_rw = True


def writer_up(tmp_path: Path) -> tuple[Up, Path]:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    folder = copy_plugin(FIXTURES / PLUGIN, plugins)
    manifest = folder / "plugin.yaml"
    manifest.write_text(manifest.read_text().replace("  greeting: hello\n", "  greeting: hello\n  journal: true\n")
                        + "permissions: [file_system_write]\n")
    up = Up(plugins, tmp_path / "state")
    return up, folder


def journal(sandbox: dict) -> list[list[str]]:
    """The counter's journal, read through the supervisor's mount of the image: [kind, rev=, pid=] per line."""
    mount = Path(sandbox["confinement"]["data_mount"])
    return [line.split()[:1] + line.split()[-2:] for line in (mount / "journal.txt").read_text().splitlines()]


def mounted(path: str) -> bool:
    return any(line.split()[4] == path for line in Path("/proc/self/mountinfo").read_text().splitlines())


@needs_root
def test_as_root_a_plugin_that_writes_its_data_dir_overlaps_and_flips_it_at_switch_over(tmp_path):
    """Both instances run at once; the new one's data dir is read-only (and
    its plugin not initialized) until the old one has drained and exited,
    then read-write; it sees all the old one wrote, and writes after it. No
    moment has two read-write binds. Nothing is lost or answered twice."""
    up, folder = writer_up(tmp_path)
    try:
        up.wait_running(PLUGIN)
        before = sandbox_of(up)
        assert before["enforcement"]["data_dir"] == "read-write", before["enforcement"]
        assert before["enforcement"]["disk"].startswith("ext4 image"), before["enforcement"]
        mount = before["confinement"]["data_mount"]
        assert mount and mounted(mount), before["confinement"]
        image = Path(before["confinement"]["data_dir"])
        watch = DataBinds(Path(before["confinement"]["plugin_cgroups"]["memory"]))

        try:
            first, second, summary = asyncio.run(change_under_load(
                up, lambda a: a[0] == 0, lambda: set_revision(folder, 1), lambda a: a[0] == 1,
                rate=20, timeout=90, settle=0.5))
        finally:
            watch.stop()
        output = up.output()
        assert second[1] != first[1]
        assert summary["lost"] == 0 and summary["failed"] == 0 and summary["duplicated"] == 0, summary
        assert "beside the old one" in output and "handing over" not in output, output[-3000:]
        assert "data dir switched to the new instance" in output, output[-3000:]
        # Both ran at once, the new one read-only beside the old read-write one; never two read-write.
        assert watch.most == 2 and watch.ro_beside_rw, (watch.most, watch.seen)
        assert watch.most_rw == 1, watch.seen
        assert any(seen == {"ro", "rw"} for seen in watch.seen.values()), watch.seen   # the new one flipped
        after = sandbox_of(up)
        assert after["enforcement"]["data_dir"] == "read-write", after["enforcement"]
        assert after["confinement"]["data_access"] == "rw", after["confinement"]
        assert data_bind(after["confinement"]["runner_pid"]) == "rw"
        assert after["confinement"]["data_mount"] == mount and mounted(mount)
        # The journal: the old instance's lines end with its stop; the new one
        # starts after it, found every line before its start, and writes on.
        lines = journal(after)
        old, new = f"pid={first[1]}", f"pid={second[1]}"
        starts = [i for i, line in enumerate(lines) if line[0] == "start" and line[2] == new]
        assert len(starts) == 1, lines
        assert all(line[2] != old for line in lines[starts[0]:]), lines
        assert lines[starts[0] - 1] == ["stop", "rev=0", old], lines[starts[0] - 3:starts[0] + 2]
        assert any(line[0] == "count" and line[2] == new for line in lines[starts[0]:]), lines[-5:]
        assert second[2].endswith(f"journal={starts[0]}"), (second, starts[0])
    finally:
        up.stop()
    # Stopped for good: the supervisor's mount is gone, and the loop device with it.
    assert not mounted(mount)
    from precinct.confine import disk
    assert disk.wait_detached(image, timeout=30) == []


@needs_root
def test_as_root_a_failed_new_writer_leaves_the_old_one_running_and_writable(tmp_path):
    """A new version that never answers its ping (it fails to import) goes
    away with its read-only bind; the old instance keeps its read-write one,
    the same process, and goes on writing."""
    up, folder = writer_up(tmp_path)
    try:
        up.wait_running(PLUGIN)
        before = sandbox_of(up)
        watch = DataBinds(Path(before["confinement"]["plugin_cgroups"]["memory"]))

        async def scenario():
            load = CommandLoad(up.state_dir, rate=20)
            await load.start()
            first = await load.wait_for(lambda a: a[0] == 0, timeout=30)
            break_release(folder)
            status = await rolled_back(up, 120)
            sent = len(load.sent)
            # Answers to commands sent after the rollback come from the old process.
            await load.wait_for(lambda a: len(load.sent) > sent + 10, timeout=60)
            last = load.latest()
            await load.stop()
            return first, last, load.summary()

        try:
            first, last, summary = asyncio.run(scenario())
        finally:
            watch.stop()
        after = sandbox_of(up)
        assert condition(up.status(), "LatestRevisionReady").get("reason") == "RolledBack"
        assert last[1] == first[1], (first, last)
        assert (after["pid"], after["instance"], after["restarts"]) == (before["pid"], before["instance"], before["restarts"])
        assert summary["lost"] == 0 and summary["failed"] == 0 and summary["duplicated"] == 0, summary
        assert after["confinement"]["data_access"] == "rw" and data_bind(after["confinement"]["runner_pid"]) == "rw"
        assert watch.most_rw == 1, watch.seen
        # Did the broken one run at all? If its init bound the data dir, it was read-only.
        assert all(seen == {"ro"} for name, seen in watch.seen.items() if name != f"i-{before['instance']}"), watch.seen
        lines = journal(after)
        assert lines[-1][0] == "count" and lines[-1][2] == f"pid={first[1]}", lines[-3:]
        assert {line[2] for line in lines} == {f"pid={first[1]}"}, "only the old instance wrote"
    finally:
        up.stop()


@needs_root
def test_as_root_a_new_writer_failing_in_initialize_rolls_back_to_the_old_version(tmp_path):
    """initialize() runs only after the switch-over (the data dir is then
    writable): a new version failing there is stopped and the old version
    starts again from its snapshot, writable, with all its data."""
    up, folder = writer_up(tmp_path)
    try:
        up.wait_running(PLUGIN)

        async def scenario():
            load = CommandLoad(up.state_dir, rate=20)
            await load.start()
            first = await load.wait_for(lambda a: a[0] == 0, timeout=30)
            code = folder / "plugin.py"
            text = code.read_text().replace(
                "    async def initialize(self):\n",
                "    async def initialize(self):\n        raise RuntimeError('initialize is broken')\n")
            replace_file(code, text)
            status = await rolled_back(up, 120)
            back = await load.wait_for(lambda a: a[0] == 0 and a[1] != first[1], timeout=90)
            await load.stop()
            return first, back, load.summary()

        first, back, summary = asyncio.run(scenario())
        status = up.status()
        latest = condition(status, "LatestRevisionReady")
        assert latest.get("reason") == "RolledBack" and "initialize is broken" in latest.get("message", ""), latest
        assert status["plugins"][PLUGIN]["state"] == "Running"
        assert summary["lost"] == 0 and summary["duplicated"] == 0, summary
        after = sandbox_of(up)
        assert after["confinement"]["data_access"] == "rw" and data_bind(after["confinement"]["runner_pid"]) == "rw"
        lines = journal(after)
        assert lines[-1][2] == f"pid={back[1]}" and back[2].endswith(f"journal={len([l for l in lines if l[2] != f'pid={back[1]}'])}")
        assert "the new version failed after the switch-over" in up.output()
    finally:
        up.stop()


@needs_root
def test_as_root_a_writer_whose_disk_limit_grows_hands_over_with_the_reason(tmp_path):
    """The image is grown only while unmounted: the old instance stops, the
    image grows, the new one starts with all the data; the log says why."""
    up, folder = writer_up(tmp_path)
    manifest = folder / "plugin.yaml"
    manifest.write_text(manifest.read_text() + "resources: {disk_limit: 16Mi}\n")
    try:
        up.wait_running(PLUGIN)
        before = sandbox_of(up)
        assert "16 MiB" in before["enforcement"]["disk"], before["enforcement"]

        async def scenario():
            load = CommandLoad(up.state_dir, rate=20)
            await load.start()
            first = await load.wait_for(lambda a: a[0] == 0, timeout=30)
            text = manifest.read_text().replace("disk_limit: 16Mi", "disk_limit: 32Mi")
            replace_file(manifest, text)
            second = await load.wait_for(lambda a: a[1] != first[1], timeout=90)
            await load.stop()
            return first, second, load.summary()

        first, second, summary = asyncio.run(scenario())
        output = up.output()
        assert "handing over" in output and "disk_limit changes (16 MiB -> 32 MiB)" in output, output[-3000:]
        assert summary["lost"] == 0 and summary["duplicated"] == 0, summary
        after = sandbox_of(up)
        assert "32 MiB" in after["enforcement"]["disk"], after["enforcement"]
        assert after["confinement"]["data_access"] == "rw"
        lines = journal(after)
        start = next(i for i, line in enumerate(lines) if line[0] == "start" and line[2] == f"pid={second[1]}")
        assert second[2].endswith(f"journal={start}") and start > 1, (second, start)
    finally:
        up.stop()


@needs_root
def test_as_root_a_killed_supervisors_data_mount_is_replaced_at_the_next_start(tmp_path):
    """kill -9 of the supervisor leaves its mount of the image behind (its
    plugins die with it); the next `precinct up` on that state dir unmounts
    it before mounting the image again, so the data is there and the disk
    layer is not MISSING."""
    up, folder = writer_up(tmp_path)
    second = None
    try:
        up.wait_running(PLUGIN)
        before = sandbox_of(up)
        mount = before["confinement"]["data_mount"]

        async def some_commands():
            load = CommandLoad(up.state_dir, rate=20)
            await load.start()
            answer = await load.wait_for(lambda a: a[0] == 0, timeout=30)
            await load.stop()
            return answer

        first = asyncio.run(some_commands())
        os.kill(up.proc.pid, 9)
        up.proc.wait(30)
        assert mounted(mount), "expected the killed supervisor's mount to be left behind"
        second = Up(up.plugins_dir, up.state_dir)
        second.wait_running(PLUGIN)
        after = second.status(plugin=PLUGIN)["plugins"][PLUGIN]
        assert after["enforcement"]["disk"].startswith("ext4 image"), after["enforcement"]
        assert after["confinement"]["data_mount"] == mount and mounted(mount)
        lines = journal(after)
        assert any(line[2] == f"pid={first[1]}" for line in lines), lines[:3]
    finally:
        up.stop()
        if second is not None:
            second.stop()
    assert not mounted(mount)


# -- what counts as a change (no processes) ---------------------------------------------------


def test_folder_digest_covers_code_but_not_deps_or_caches(tmp_path, monkeypatch):
    from precinct.runtime import rollout

    folder = copy_plugin(FIXTURES / PLUGIN, tmp_path)
    (folder / ".deps" / "dep").mkdir(parents=True)
    (folder / ".deps" / "dep" / "__init__.py").write_text("X = 1\n")
    (folder / "__pycache__").mkdir(exist_ok=True)
    (folder / "__pycache__" / "plugin.cpython-311.pyc").write_bytes(b"\0")
    first = rollout.folder_digest(folder)
    (folder / ".deps" / "dep" / "__init__.py").write_text("X = 2\n")
    (folder / "__pycache__" / "plugin.cpython-311.pyc").write_bytes(b"\1")
    assert rollout.folder_digest(folder) == first
    set_revision(folder, 9)
    code_edit = rollout.folder_digest(folder)
    assert code_edit.split(":")[0] == first.split(":")[0] and code_edit != first   # code part only
    set_greeting(folder, "hej")
    assert rollout.folder_digest(folder).split(":")[0] != first.split(":")[0]
    for i in range(10):
        (folder / f"extra{i}.txt").write_text(str(i))
    monkeypatch.setattr(rollout, "MAX_FILES", 3)
    assert len(rollout.code_files(folder)) == 3
    assert len(rollout.folder_fingerprint(folder)) == 3


def test_config_change_without_a_hook_is_a_rolling_restart(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    folder = copy_plugin(FIXTURES / PLUGIN, plugins)
    code = folder / "plugin.py"
    code.write_text(code.read_text().replace("    async def reconfigure(self, config):\n        self.config = config\n", ""))
    assert "def reconfigure" not in code.read_text()
    up = Up(plugins, tmp_path / "state")
    try:
        up.wait_running(PLUGIN)

        before, after, summary = asyncio.run(change_under_load(
            up, lambda a: a[2] == "hello", lambda: set_greeting(folder, "salut"), lambda a: a[2] == "salut",
            rate=20, timeout=60))
        assert after[1] != before[1]                      # a new process took over
        assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["failed"] == 0, summary
        assert "no working reconfigure()" in up.output()
    finally:
        up.stop()


def test_rollouts_reach_the_supervisor_only_through_fleet_host(tmp_path):
    """rollout.py uses no supervisor member outside FleetHost (no private
    attributes), and the Supervisor provides every member FleetHost lists."""
    import ast

    from precinct.runtime import rollout
    from precinct.runtime.slot import Confinement
    from precinct.runtime.supervisor import Supervisor

    members = set(rollout.FleetHost.__annotations__)
    members |= {n for n, v in vars(rollout.FleetHost).items() if callable(v) and not n.startswith("_")}
    assert {"publish_fleet", "request", "stopping", "entries", "state_dir"} <= members, members
    used = set()
    for node in ast.walk(ast.parse(Path(rollout.__file__).read_text())):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "sup") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "sup"):
                used.add(node.attr)
    assert used and used <= members, f"rollout.py uses supervisor members outside FleetHost: {used - members}"
    sup = Supervisor(tmp_path / "plugins", tmp_path / "state", confinement=Confinement())
    assert isinstance(sup, rollout.FleetHost)
