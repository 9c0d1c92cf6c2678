"""What the supervisor asks of a sandbox: the launch it wants confined and
the hooks a sandbox fills in.

This is the interface between the runtime (runtime/slot.py starts and
watches instances) and the kernel sandbox (confine/host.py implements it);
it lives here, below both users, so the runtime depends on the sandbox's
interface and the sandbox never imports the runtime.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .procstats import ProcessStats, sample

if TYPE_CHECKING:  # pragma: no cover
    from ..plan.sandbox import SandboxPlan


@dataclass
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    instance: str
    # Set by a sandbox that starts this launch itself (Confinement.spawn):
    # which of its template processes forks it (confine/template.py).
    template: str | None = None


class Process(Protocol):
    """What the slot needs of a started instance: asyncio's Process has it,
    and so has a process forked by a template (confine/forked.py)."""
    pid: int
    returncode: int | None

    async def wait(self) -> int: ...


def die_with_parent(parent: int):
    """Child-side hook: SIGKILL this process when the supervisor dies, even by
    SIGKILL, so no trusted service (NATS, gateway, storage) or template
    outlives it and blocks the next `precinct up`. Plugins get the same from
    their trusted init, which also covers their descendants (confine/init.py)."""
    import ctypes

    def hook() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the supervisor died before the prctl took effect
            os._exit(1)
    return hook


class Confinement:
    """Hooks the kernel sandbox fills in (confine/host.py); this base confines nothing.

    `wrap` turns the runner's command into the confined one, `exit_reason` may
    name a better reason than the exit code (OOMKilled from the cgroup), and
    `sample` reads usage from wherever the limits are enforced. The hooks
    that take `instance` answer for that instance of the plugin (two may run
    side by side during a hot reload); without one, for the newest.
    """

    async def wrap(self, plugin_id: str, spec: LaunchSpec) -> LaunchSpec:
        return spec

    async def spawn(self, plugin_id: str, spec: LaunchSpec, output: int) -> Process | None:
        """Start the launch wrap() returned, its stdout and stderr on `output`;
        None: the caller executes spec.argv itself (this base always says so)."""
        return None

    def can_overlap(self, old: SandboxPlan, new: SandboxPlan) -> bool:
        """May an instance with plan `new` start while one with `old` runs
        (hot reload, runtime/rollout.py)? Nothing here is per plugin: yes."""
        return True

    def exit_reason(self, plugin_id: str, returncode: int, instance: str | None = None) -> str | None:
        return None

    def sample(self, plugin_id: str, pid: int, instance: str | None = None) -> ProcessStats:
        return sample(pid)

    def enforcement(self, plugin_id: str, instance: str | None = None) -> dict[str, str]:
        return {}

    async def release(self, plugin_id: str, instance: str | None = None) -> None:
        """The instance has ended (or never started): undo what wrap() set up for it."""
        return None

    async def close(self) -> None:
        """Every plugin has stopped: undo what was set up host-wide."""
        return None
