"""The suspend ladder on Kubernetes: warn -> restart -> suspend, as on one host.

The gateway reports violations (its own rate limits and duplicate replies,
and the permission violations in the NATS server's log, which it tails) on
`precinct.violations.<id>`; the operator subscribes (k8s/violations.py). Each
event counts on the BotPlugin's status and may be a strike; the decision is
the single host's (precinct/ladder.py, same policy, same defaults):

  1st strike   warn: an Event (Warning, `ViolationWarning`); PermissionsCompliant
               turns False from status.lastViolation as before
  later        restart: a rollout restart, exactly `kubectl rollout restart`'s
               (the Deployment's pod template gets kubectl.kubernetes.io/restartedAt,
               which the operator's server-side applies leave alone); an Event
               (Warning, `ViolationRestart`)
  suspend_after-th
               suspend: the Deployment is scaled to 0 at once, and every later
               reconcile renders 0 replicas until a person resumes it;
               Ready=False and Stalled=True with reason `Suspended` and the
               why in the message (each transition posts its Event)

The ladder never writes the spec (GitOps tools own it) and keeps its state
in the BotPlugin's status, so an operator restart forgets nothing:

  status.ladder.strikes            times of the strikes still within the window
  status.ladder.lastAction         warn | restart | suspend
  status.ladder.restarts           rollout restarts the ladder made
  status.ladder.suspendedAt, .suspendedBecause   while suspended
  status.ladder.resumed            the last resume request acted on

Resuming: set the annotation `precinct.dev/resume` to a value it has not had
before (`precinct plugin resume --namespace NS NAME` writes the current
time). The operator acts on each new value once (kopf keeps precinct.dev/*
annotations out of its diff, so the BotPlugin's watch event wakes an observe
of that plugin instead of an update handler): it forgets the suspension,
the strikes and status.lastViolation, posts a `Resumed` Event and scales the
Deployment back up. It never removes the annotation, so an annotation kept
in Git resumes at most once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from ..ladder import NONE, RESTART, SUSPEND, WARN, LadderPolicy, strike
from . import violations
from .client import ApiError
from ..wire.kubernetes import RESUME as RESUME_ANNOTATION

log = logging.getLogger("precinct.operator")

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"   # what `kubectl rollout restart` sets
MAX_STRIKES_KEPT = 50                                 # with suspend_after 0 they would pile up
WARNED, RESTARTED, RESUMED = "ViolationWarning", "ViolationRestart", "Resumed"


def policy_of(settings: Any) -> LadderPolicy:
    """The ladder policy from the operator's Settings (render.Settings)."""
    return LadderPolicy(window=float(settings.violation_window_seconds),
                        cooldown=float(settings.violation_cooldown_seconds),
                        suspend_after=int(settings.suspend_after))


def stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def state(body: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    """status.ladder; `status` when given is the status as the operator knows
    it (StatusWriter.current), which may be newer than `body`'s."""
    ladder = (status if status is not None else body.get("status") or {}).get("ladder")
    return {k: v for k, v in ladder.items() if v is not None} if isinstance(ladder, dict) else {}


def resume_requested(body: dict[str, Any], status: dict[str, Any] | None = None) -> str | None:
    """The resume annotation's value, when the operator has not acted on it yet."""
    value = ((body.get("metadata") or {}).get("annotations") or {}).get(RESUME_ANNOTATION)
    if not value or value == state(body, status).get("resumed"):
        return None
    return str(value)


def suspension(body: dict[str, Any], status: dict[str, Any] | None = None) -> str | None:
    """Why the ladder keeps this plugin at zero replicas (and how to resume), or None."""
    ladder = state(body, status)
    if not ladder.get("suspendedAt") or resume_requested(body, status) is not None:
        return None
    meta = body["metadata"]
    return (f"suspended by the violation ladder at {ladder['suspendedAt']} "
            f"({ladder.get('suspendedBecause') or 'repeated violations'}); resume with "
            f"`precinct plugin resume --namespace {meta['namespace']} {meta['name']}`")[:1000]


# -- a violation event ------------------------------------------------------------------


async def on_violation(ctx: Any, namespace: str, name: str, event: dict[str, Any], policy: LadderPolicy,
                       now: float | None = None) -> str:
    """Count one violation event on the BotPlugin's status, climb the ladder,
    act. Returns the action (warn, restart, suspend or none). `ctx` is
    reconcile.Context."""
    now = datetime.now(timezone.utc).timestamp() if now is None else now
    async with ctx.lock(namespace, name):
        body = await ctx.api.get("BotPlugin", namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return NONE
        status = ctx.status.current(body)
        new = violations.record(status, event)
        ladder, action = state(body, status), NONE
        if not ladder.get("suspendedAt"):       # a suspended plugin collects no strikes
            earlier = [t for t in (_epoch(s) for s in ladder.get("strikes") or []) if t is not None]
            kept, action = strike(earlier, now, policy)
            if action != NONE:
                ladder.update(strikes=[stamp(t) for t in kept[-MAX_STRIKES_KEPT:]], lastAction=action)
                if action == RESTART:
                    ladder["restarts"] = int(ladder.get("restarts", 0)) + 1
                if action == SUSPEND:
                    ladder.update(suspendedAt=stamp(now), suspendedBecause=(
                        f"strike {len(kept)} within {policy.window:g} s; last: "
                        f"{new['lastViolation']['message']}")[:512])
        new["ladder"] = ladder
        await ctx.api.patch("BotPlugin", namespace, name, {"status": new}, subresource="status", reply=False)
        ctx.status.remember(body, new)
        body["status"] = {**status, **new}

    n = len(ladder.get("strikes") or [])
    what = new["lastViolation"]["message"]
    if action != NONE:
        log.warning("%s/%s: strike %d (%s) -> %s", namespace, name, n, what, action)
    if action == WARN:
        then = (f"the next strike within {policy.window:g} s restarts it"
                + (f", strike {policy.suspend_after} suspends it" if policy.suspend_after else ""))
        await ctx.status.notice(body, False, WARNED, f"strike 1: {what}; {then}")
    elif action == RESTART:
        await _patch_deployment(ctx, namespace, name, {"spec": {"template": {"metadata": {"annotations": {
            RESTARTED_AT: stamp(now)}}}}})
        await ctx.status.notice(body, False, RESTARTED, f"strike {n}: {what}; rollout restart")
    elif action == SUSPEND:
        # At once: the conditions (and their Events) follow at the next observe.
        await _patch_deployment(ctx, namespace, name, {"spec": {"replicas": 0}})
    return action


async def _patch_deployment(ctx: Any, namespace: str, name: str, patch: dict[str, Any]) -> None:
    try:
        await ctx.api.patch("Deployment", namespace, name, patch, reply=False)
    except ApiError as exc:
        if exc.status != 404:       # no Deployment (yet, or a rejected claim): nothing runs to act on
            raise


# -- a person's decision -----------------------------------------------------------------


async def resume_if_requested(ctx: Any, body: dict[str, Any]) -> bool:
    """Act on a new `precinct.dev/resume` value: forget the suspension, the
    strikes and the last violation. Updates `body` in place; True if it resumed."""
    if resume_requested(body, ctx.status.current(body)) is None:
        return False
    meta = body["metadata"]
    async with ctx.lock(meta["namespace"], meta["name"]):
        # Read again under the lock: two callers with the same stale body act once.
        fresh = await ctx.api.get("BotPlugin", meta["namespace"], meta["name"])
        token = resume_requested(fresh, ctx.status.current(fresh)) if fresh is not None else None
        if fresh is None or token is None:
            return False
        before = state(fresh, ctx.status.current(fresh))
        ladder = {"strikes": [], "lastAction": NONE, "restarts": int(before.get("restarts", 0)),
                  "suspendedAt": None, "suspendedBecause": None, "resumed": token}
        await ctx.api.patch("BotPlugin", meta["namespace"], meta["name"],
                            {"status": {"ladder": ladder, "lastViolation": None}}, subresource="status", reply=False)
        ctx.status.remember(fresh, {"ladder": {k: v for k, v in ladder.items() if v is not None}})
        ctx.status.drop(fresh, "lastViolation")
    body["metadata"] = fresh["metadata"]
    body["status"] = ctx.status.current(fresh)
    was = "it was suspended" if before.get("suspendedAt") else "it was not suspended"
    log.warning("%s/%s: resumed by a person (%s=%s; %s)", meta["namespace"], meta["name"],
                RESUME_ANNOTATION, token, was)
    await ctx.status.notice(body, True, RESUMED, f"resumed ({RESUME_ANNOTATION}={token}; {was}): strikes forgotten")
    return True
