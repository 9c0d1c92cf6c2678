"""Status conditions shared by both runtimes (metav1.Condition, kstatus).

`Ready`, `Reconciling` and `Stalled` are the kstatus trio GitOps tools read;
the domain conditions read True = good. A condition's `lastTransitionTime`
changes only when its status really changes, so a status write that repeats
the same facts is a no-op (and never re-triggers an operator's own handlers).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
CREDENTIALS_READY = "CredentialsReady"
LIMITS_ENFORCED = "LimitsEnforced"
PERMISSIONS_COMPLIANT = "PermissionsCompliant"
LATEST_REVISION_READY = "LatestRevisionReady"

# Reasons, CamelCase, the same words in both runtimes (docs/operator.md#status
# lists where each appears).
OOM_KILLED = "OOMKilled"
CRASH_LOOP = "CrashLoopBackOff"
PERMISSION_VIOLATION = "PermissionViolation"
RATE_LIMITED = "RateLimited"
ROLLED_BACK = "RolledBack"
SIGNATURE_INVALID = "SignatureInvalid"
COMMAND_CONFLICT = "CommandConflict"
SUBJECT_CONFLICT = "SubjectConflict"
SUSPENDED = "Suspended"


def exit_reason(returncode: int) -> str:
    """`ExitCode<N>` for exits; signals as Kubernetes reports them (128+N)."""
    return f"ExitCode{returncode if returncode >= 0 else 128 - returncode}"


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Condition:
    type: str
    status: str          # "True" | "False" | "Unknown"
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int = 0

    def to_dict(self) -> dict:
        # Every field is a str or int: a shallow dict is asdict() without its
        # deep copy, which status pays for every condition of every plugin.
        return dict(self.__dict__)


class Conditions:
    """An ordered set of conditions with transition-aware updates."""

    def __init__(self, items: list[dict] | None = None) -> None:
        self._items: dict[str, Condition] = {c["type"]: Condition(**c) for c in (items or [])}

    def set(self, type_: str, status: bool | None, reason: str, message: str = "", generation: int = 0) -> bool:
        """Set a condition; return True when anything changed."""
        text = "Unknown" if status is None else ("True" if status else "False")
        old = self._items.get(type_)
        if old and (old.status, old.reason, old.message, old.observedGeneration) == (text, reason, message, generation):
            return False
        stamp = old.lastTransitionTime if old and old.status == text else now()
        self._items[type_] = Condition(type_, text, reason, message, stamp, generation)
        return True

    def get(self, type_: str) -> Condition | None:
        return self._items.get(type_)

    def is_true(self, type_: str) -> bool:
        c = self._items.get(type_)
        return bool(c and c.status == "True")

    def to_list(self) -> list[dict]:
        return [c.to_dict() for c in self._items.values()]

    def with_generation(self, generation: int) -> "Conditions":
        out = Conditions()
        out._items = {k: replace(v, observedGeneration=generation) for k, v in self._items.items()}
        return out
