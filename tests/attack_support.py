"""Staging and running the attack plugins (tests/attacks/plugins/).

One folder holds every malicious plugin; two fleets run them, each in a real
`precinct up` of its own: the attack suite (tests/attacks/conftest.py) and
the kernel confinement tests (tests/test_confinement.py). Each names the
plugins it stages, because some of them cannot share a fleet (`spinner` and
`cpuspin` both claim `!spin`) and the confinement tests count every process
of theirs.

`AttackFleet.started` stages, starts, waits and cleans up; each module
subclasses `AttackFleet` for the questions only it asks.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from runtime_support import ROOT, Up, cleanup_cgroups, copy_plugin, structured_answer

ATTACK_PLUGINS = ROOT / "tests" / "attacks" / "plugins"


class AttackFleet:
    """One `precinct up` over staged attack plugins. `status()` remembers every
    plugin cgroup and service pid it has seen, so teardown can clean up even
    after a test SIGKILLed the supervisor (its services and cgroups outlive it)."""

    def __init__(self, up: Up, state: Path, tmp: Path) -> None:
        self.up, self.state, self.tmp = up, state, tmp
        self.cgroup_dirs: set[str] = set()
        self.service_pids: list[int] = []

    def status(self, plugin: str | None = None) -> dict:
        status = self.up.status(plugin=plugin)
        assert status is not None, self.up.output()[-2000:]
        for plugin in status["plugins"].values():
            self.cgroup_dirs |= set((plugin.get("confinement") or {}).get("cgroups", {}).values())
        self.service_pids = [s["pid"] for s in status["services"].values() if s.get("pid")]
        return status

    def plugin(self, plugin_id: str) -> dict:
        """One plugin's status, measured now, with its kernel counters
        (`confinement`: cgroup_pids, oom_kills, cpu_stat, pids_refused)."""
        return self.status(plugin_id)["plugins"][plugin_id]

    def ask(self, text: str, timeout: float = 20, ok: bool = True):
        """The plugin's answer (`structured_answer`); with ok=False the raw
        `precinct say` outcome, for commands expected to fail."""
        if not ok:
            return self.up.say(text, "--timeout", str(timeout))
        done = self.up.say(text, "--timeout", str(timeout), "--json")
        assert done.returncode == 0, f"{text}: {done.stdout} {done.stderr}"
        return structured_answer(done.stdout)

    @classmethod
    @contextlib.contextmanager
    def started(cls, tmp: Path, attacks: Iterable[str], *, running: Iterable[str], timeout: float,
                others: Iterable[Path] = (), env: dict[str, str] | None = None,
                prepare: Callable[[Path, Path], None] | None = None,
                args: Iterable[str] = ()) -> Iterator[AttackFleet]:
        """Copy the named attack plugins (and `others`, plugin folders from
        elsewhere) into tmp/plugins, let `prepare(plugins, state)` adjust the
        copies, run `precinct up` with `env` (and `args`, more options), and
        yield once every plugin in `running` is Running. On the way out: stop
        the supervisor, kill the services it may have orphaned, remove the
        plugin cgroups."""
        plugins, state = tmp / "plugins", tmp / "state"
        plugins.mkdir()
        for name in attacks:
            copy_plugin(ATTACK_PLUGINS / name, plugins)
        for src in others:
            copy_plugin(src, plugins)
        if prepare is not None:
            prepare(plugins, state)
        up = Up(plugins, state, *args, env=env)
        fleet = cls(up, state, tmp)
        try:
            up.wait_running(*running, timeout=timeout)
            fleet.status()
            yield fleet
        finally:
            up.stop()
            for pid in fleet.service_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            cleanup_cgroups(fleet.cgroup_dirs)
            # A test that SIGKILLed the supervisor leaves its data image mounts
            # (the next `precinct up` on that state dir would unmount them).
            from precinct.confine import disk
            from precinct.confine.cgroups import CgroupHost
            disk.sweep(disk.DATA_ROOT / CgroupHost.tag_for(state))
