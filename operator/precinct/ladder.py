"""The suspend ladder's decision, shared by both runtimes (pure: no I/O, no clock).

A plugin the gateway or the NATS server reports for a violation gets a
strike. Its 1st strike within `window` seconds warns, later strikes restart
it, and the `suspend_after`-th strike suspends it until a person resumes it.
Events that arrive within `cooldown` seconds of the last strike belong to
that strike: a flood reported over several aggregation windows is one
offence, and a restart has time to take effect before the next one counts.

The single host (runtime/violations.py) acts by stopping and starting the
plugin's process; Kubernetes (k8s/ladder.py) by a rollout restart and by
scaling the Deployment to zero. Both call `strike()` for the decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import conditions as cond

WARN, RESTART, SUSPEND, NONE = "warn", "restart", "suspend", "none"
ACTIONS = (WARN, RESTART, SUSPEND, NONE)

# The violation kind (services/gateway.py) -> PermissionsCompliant's reason.
REASONS = {"rate_limit": cond.RATE_LIMITED, "permission": cond.PERMISSION_VIOLATION,
           "duplicate_reply": cond.PERMISSION_VIOLATION}


def reason_of(kind: str) -> str:
    return REASONS.get(kind, cond.PERMISSION_VIOLATION)


@dataclass(frozen=True)
class LadderPolicy:
    window: float = 600.0        # strikes older than this are forgotten
    cooldown: float = 10.0       # events this soon after a strike join it
    suspend_after: int = 3       # this strike suspends; 0 = never suspend

    def __post_init__(self) -> None:
        if self.window <= 0 or self.cooldown < 0 or self.suspend_after < 0:
            raise ValueError("violation window must be > 0, cooldown >= 0 and suspend_after >= 0")


def strike(strikes: Sequence[float], now: float, policy: LadderPolicy) -> tuple[list[float], str]:
    """One violation event at `now` -> (the strikes to keep, the action).

    `strikes` are the times of earlier strikes (any clock, the same as
    `now`). Suspension itself is the caller's state: a suspended plugin's
    events should not be passed here."""
    kept = list(strikes)
    if kept and now - kept[-1] < policy.cooldown:
        return kept, NONE
    kept = [t for t in kept if now - t < policy.window] + [now]
    n = len(kept)
    if n == 1:
        return kept, WARN
    if policy.suspend_after and n >= policy.suspend_after:
        return kept, SUSPEND
    return kept, RESTART
