"""What the supervisor asks of a sandbox: the launch it wants confined and
the hooks a sandbox fills in.

This is the interface between the runtime (runtime/slot.py starts and
watches instances) and the kernel sandbox (confine/host.py implements it);
it lives here, below both users, so the runtime depends on the sandbox's
interface and the sandbox never imports the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .procstats import ProcessStats, sample

if TYPE_CHECKING:  # pragma: no cover
    from ..plan.sandbox import SandboxPlan


@dataclass
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    instance: str


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
