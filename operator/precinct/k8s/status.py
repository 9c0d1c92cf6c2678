"""What the operator sees (a Deployment, its Pods) -> kstatus conditions.

Pure functions: the handlers feed them what kopf's indexes hold, and write
the result only when a condition really changed (conditions.Conditions keeps
`lastTransitionTime` on repeats), so a status write never re-triggers the
operator for nothing.

Condition meanings (True = good, except Reconciling and Stalled):
  Ready                at least one Pod serves the plugin (any revision)
  Reconciling          a rollout of the current spec is under way
  Stalled              no progress without a change: 3 failed rollouts in a
                       row, a claim conflict with an older BotPlugin, or a
                       suspension by the violation ladder (until resumed)
  CredentialsReady     its NATS account is issued and pushed to the server
  LimitsEnforced       limits are set on the Pod and it stays within them
                       (False, OOMKilled, when the kernel killed it for memory)
  PermissionsCompliant no violations reported by the gateway
  LatestRevisionReady  the current spec runs (False, RolledBack, when its
                       rollout failed and the last good template serves)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import conditions as cond
from .render import CONTAINER
from ..wire.kubernetes import CONFIG_HASH, GOOD_HASH, GOOD_TEMPLATE

MAX_FAILED_ROLLOUTS = 3
ROLLOUT_FAILED = "RolloutFailed"
PROGRESS_DEADLINE = "ProgressDeadlineExceeded"
# Waiting reasons worth a condition's reason as they are.
_WAITING_PROBLEMS = ("ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "InvalidImageName",
                     "CreateContainerError", "RunContainerError")


@dataclass(frozen=True)
class PodView:
    """One Pod of a plugin, reduced to what status needs (kept in a kopf index)."""

    name: str
    template_hash: str
    phase: str
    ready: bool
    deleting: bool = False
    waiting_reason: str | None = None
    waiting_message: str | None = None
    terminated: tuple[str, int, str] | None = None        # reason, exit code, message (current state)
    last_terminated: tuple[str, int, str] | None = None   # lastState.terminated
    restarts: int = 0


def _terminated(state: dict[str, Any] | None) -> tuple[str, int, str] | None:
    term = (state or {}).get("terminated")
    if not term:
        return None
    return (term.get("reason") or "", int(term.get("exitCode", 0)), (term.get("message") or "").strip())


def pod_view(pod: dict[str, Any]) -> PodView:
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    containers = {c.get("name"): c for c in status.get("containerStatuses") or []}
    inits = [c for c in status.get("initContainerStatuses") or []]
    main = containers.get(CONTAINER) or {}
    # A failing init container (the bundle fetch) explains more than the waiting main one.
    for init in inits:
        if not init.get("ready") and (_terminated(init.get("lastState")) or init.get("state", {}).get("waiting")):
            main = init
            break
    state = main.get("state") or {}
    waiting = state.get("waiting") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return PodView(
        name=meta.get("name", ""),
        template_hash=(meta.get("annotations") or {}).get(CONFIG_HASH, ""),
        phase=status.get("phase", "Pending"),
        ready=ready,
        deleting=bool(meta.get("deletionTimestamp")),
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        terminated=_terminated(state),
        last_terminated=_terminated(main.get("lastState")),
        restarts=int(main.get("restartCount", 0)),
    )


@dataclass(frozen=True)
class DeploymentView:
    template_hash: str
    replicas: int
    generation: int
    observed_generation: int
    updated: int
    available: int
    unavailable: int
    deadline_exceeded: bool
    good_hash: str = ""

    @property
    def rolled_out(self) -> bool:
        """The Deployment controller finished rolling out its current template."""
        return (
            self.observed_generation >= self.generation
            and self.updated >= self.replicas
            and self.available >= self.replicas
            and self.unavailable == 0
        )




def deployment_view(dep: dict[str, Any] | None) -> DeploymentView | None:
    if not dep:
        return None
    meta, spec, status = dep.get("metadata", {}), dep.get("spec", {}), dep.get("status") or {}
    progressing = [c for c in status.get("conditions") or [] if c.get("type") == "Progressing"]
    deadline = bool(progressing and progressing[0].get("status") == "False"
                    and progressing[0].get("reason") == PROGRESS_DEADLINE)
    return DeploymentView(
        template_hash=((spec.get("template") or {}).get("metadata", {}).get("annotations") or {}).get(CONFIG_HASH, ""),
        replicas=int(spec.get("replicas", 1)),
        generation=int(meta.get("generation", 0)),
        observed_generation=int(status.get("observedGeneration", 0)),
        updated=int(status.get("updatedReplicas", 0)),
        available=int(status.get("availableReplicas", 0)),
        unavailable=int(status.get("unavailableReplicas", 0)),
        deadline_exceeded=deadline,
        good_hash=(meta.get("annotations") or {}).get(GOOD_HASH, ""),
    )


def crash(pods: list[PodView], template_hash: str | None = None) -> tuple[str, str] | None:
    """(reason, message) of the worst thing wrong with these Pods, or None.

    OOMKilled wins (the reason is the cause); a container in back-off is
    CrashLoopBackOff with the exit code and termination message in the
    message; a single failed exit is ExitCode<N>."""
    candidates = [p for p in pods if not p.deleting and (template_hash is None or p.template_hash == template_hash)]
    for pod in candidates:
        for term in (pod.terminated, pod.last_terminated):
            if term and term[0] == cond.OOM_KILLED:
                return cond.OOM_KILLED, f"pod {pod.name}: killed for exceeding its memory limit" + (
                    f" (restarted {pod.restarts} times)" if pod.restarts else "")
    for pod in candidates:
        term = pod.terminated or pod.last_terminated
        detail = ""
        if term and term[1] != 0:
            detail = f"{cond.exit_reason(term[1])}: {term[2]}" if term[2] else cond.exit_reason(term[1])
        if pod.waiting_reason == cond.CRASH_LOOP:
            return cond.CRASH_LOOP, f"pod {pod.name}: " + (detail or pod.waiting_message or "restarting")
        if pod.waiting_reason in _WAITING_PROBLEMS:
            return pod.waiting_reason, f"pod {pod.name}: {pod.waiting_message or pod.waiting_reason}"
        if term and term[1] != 0:
            return cond.exit_reason(term[1]), f"pod {pod.name}: {term[2] or 'exited with code ' + str(term[1])}"
    return None


def verdict(desired_hash: str, dep: DeploymentView | None) -> str:
    """Where the rollout of `desired_hash` stands: 'complete', 'failed',
    'progressing', or 'other' (the Deployment runs another template)."""
    if dep is None:
        return "progressing"
    if dep.template_hash != desired_hash:
        return "other"
    if dep.observed_generation < dep.generation:
        return "progressing"
    if dep.deadline_exceeded:
        return "failed"
    if dep.rolled_out:
        return "complete"
    return "progressing"


@dataclass
class Facts:
    """Everything conditions are computed from."""

    generation: int
    desired_hash: str
    deployment: DeploymentView | None
    pods: list[PodView] = field(default_factory=list)
    rejection: tuple[str, str] | None = None        # (CommandConflict|SubjectConflict, message)
    suspended: bool = False
    credentials: tuple[bool, str, str] = (True, "Issued", "")
    failed_rollouts: int = 0
    limits_message: str = ""
    last_violation: dict[str, Any] | None = None
    violation_recent: bool = False               # the last one is within the quiet window
    suspension: str | None = None                # suspended by the ladder (k8s/ladder.py): why, how to resume


def assess(facts: Facts, current: cond.Conditions) -> bool:
    """Set every condition in `current` from `facts`; True if any changed."""
    g = facts.generation
    changed = False

    def put(type_: str, status: bool | None, reason: str, message: str = "") -> None:
        nonlocal changed
        changed = current.set(type_, status, reason, message, g) or changed

    dep = facts.deployment
    state = verdict(facts.desired_hash, dep)
    live = [p for p in facts.pods if not p.deleting]
    serving = bool(dep and dep.available > 0)
    stalled_rollouts = facts.failed_rollouts >= MAX_FAILED_ROLLOUTS
    newest_crash = crash(live, facts.desired_hash)
    any_crash = crash(live)

    ok, reason, message = facts.credentials
    put(cond.CREDENTIALS_READY, ok, reason, message)

    oom = any_crash if any_crash and any_crash[0] == cond.OOM_KILLED else None
    if oom:
        put(cond.LIMITS_ENFORCED, False, cond.OOM_KILLED, oom[1])
    else:
        put(cond.LIMITS_ENFORCED, True, "LimitsApplied", facts.limits_message)

    if facts.violation_recent and facts.last_violation:
        put(cond.PERMISSIONS_COMPLIANT, False, facts.last_violation.get("reason", cond.PERMISSION_VIOLATION),
            str(facts.last_violation.get("message", ""))[:1000])
    else:
        put(cond.PERMISSIONS_COMPLIANT, True, "NoViolations", "no violations reported")

    # LatestRevisionReady: does the current spec run?
    if facts.rejection:
        put(cond.LATEST_REVISION_READY, False, facts.rejection[0], facts.rejection[1])
    elif facts.suspended or facts.suspension:
        put(cond.LATEST_REVISION_READY, True, cond.SUSPENDED, "suspended: scaled to zero")
    elif state == "complete":
        put(cond.LATEST_REVISION_READY, True, "RolloutComplete", f"template {facts.desired_hash} is available")
    elif facts.failed_rollouts > 0 and state in ("other", "failed"):
        put(cond.LATEST_REVISION_READY, False, cond.ROLLED_BACK,
            f"rollout of template {facts.desired_hash} missed its progress deadline "
            f"{facts.failed_rollouts} time(s); the last good template serves"
            + (f"; {newest_crash[0]}: {newest_crash[1]}" if newest_crash else ""))
    elif newest_crash:
        put(cond.LATEST_REVISION_READY, False, *newest_crash)
    else:
        put(cond.LATEST_REVISION_READY, False, "RollingOut", f"rolling out template {facts.desired_hash}")

    # Ready: is anything serving?
    if facts.rejection:
        put(cond.READY, False, facts.rejection[0], facts.rejection[1])
    elif facts.suspension:
        put(cond.READY, False, cond.SUSPENDED, facts.suspension)
    elif facts.suspended:
        put(cond.READY, False, cond.SUSPENDED, "spec.suspend is true")
    elif not ok:
        put(cond.READY, False, reason, message)
    elif serving:
        old = dep is not None and dep.template_hash != facts.desired_hash
        put(cond.READY, True, "Running",
            "serving the last good template" if old else f"{dep.available} replica(s) available" if dep else "")
    elif any_crash:
        put(cond.READY, False, *any_crash)
    else:
        put(cond.READY, False, "Starting", "waiting for a Pod to become available")

    # kstatus pair.
    if facts.rejection:
        put(cond.STALLED, True, facts.rejection[0], facts.rejection[1])
    elif facts.suspension:
        # no progress until a person resumes it (kstatus: Stalled; Argo CD: Degraded)
        put(cond.STALLED, True, cond.SUSPENDED, facts.suspension)
    elif stalled_rollouts:
        put(cond.STALLED, True, ROLLOUT_FAILED,
            f"{facts.failed_rollouts} rollouts in a row failed; change the spec to try again")
    else:
        put(cond.STALLED, False, "Progressing" if state == "progressing" else "AsExpected", "")
    busy = (not facts.rejection and not stalled_rollouts and not facts.suspended and not facts.suspension
            and state == "progressing")
    put(cond.RECONCILING, busy, "RollingOut" if busy else "Reconciled",
        f"rolling out template {facts.desired_hash}" if busy else "")
    return changed
