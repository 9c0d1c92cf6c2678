"""kopf wiring: which events run which part of reconcile.py.

  index botplugins  -> the fleet (claims go to the older creationTimestamp)
  index pods        -> PodViews per BotPlugin, by the precinct.dev/botplugin label
  index deployments -> DeploymentViews per BotPlugin
  create/update/resume botplugin -> reconcile (level-based: apply everything)
  delete botplugin  -> finalize: revoke the NATS account, then let GC go
  violation event   -> the suspend ladder (ladder.py): warn, rollout restart, suspend;
                      a new precinct.dev/resume annotation wakes the daemon, which
                      resumes (kopf leaves precinct.dev/* annotations out of its
                      diff, so no update handler would see it)
  daemon per botplugin -> observe: wakes on its Pods'/Deployment's events
                      (not polling the API: it reads the indexes), rolls back
                      failed rollouts, retries them, keeps conditions current

Everything runs in one standalone operator process (peering freezes are a
known kopf pitfall; a Recreate Deployment of the operator avoids two).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import kopf

from ..spec.identity import kubernetes_id
from ..spec.model import API_GROUP, API_VERSION
from . import ladder
from . import reconcile as rc
from . import render as r
from . import status as st
from .metrics import OPERATOR as METRICS

PLURAL = "botplugins"
WAKE_TIMEOUT = 120.0     # a safety net (and the violation window's end); wakes come from watch events
log = logging.getLogger("precinct.operator")

class Runtime:
    """What the handlers share: kept in kopf's memo as `memo.precinct`."""

    def __init__(self, ctx: rc.Context) -> None:
        self.ctx = ctx
        self.wakes: dict[tuple[str, str], asyncio.Event] = {}
        self.fleet_seen: dict[str, tuple[Any, bool, bool]] = {}
        self.ids: dict[str, tuple[str, str]] = {}          # plugin id -> (namespace, name)
        self.background: list[asyncio.Task] = []
        self.policy = ladder.policy_of(ctx.settings)
        self.violations_subscribed: bool | None = None     # None: no NATS URL configured (health.py)

    async def on_violation(self, plugin_id: str, event: dict[str, Any]) -> None:
        where = self.ids.get(plugin_id)
        if where is None:
            log.info("violation event for unknown plugin %s ignored", plugin_id)
            return
        METRICS.violation(plugin_id, event)
        await ladder.on_violation(self.ctx, *where, event, self.policy)
        self.wake(*where)

    def wake(self, namespace: str, name: str) -> None:
        self.wakes.setdefault((namespace, name), asyncio.Event()).set()

    def wake_all(self) -> None:
        for event in self.wakes.values():
            event.set()


def _plain(body: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


def _fleet(botplugin_index: kopf.Index) -> list[rc.FleetEntry]:
    return list(botplugin_index.get("all", []))


def _observed(pod_index: kopf.Index, namespace: str, name: str) -> rc.Observed:
    return rc.Observed(pods=list(pod_index.get((namespace, name), [])))


# -- indexes ---------------------------------------------------------------------


def botplugin_index(body: kopf.Body, **_: Any) -> dict[str, rc.FleetEntry]:
    return {"all": rc.fleet_entry(body)}


def pod_index(body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> dict[tuple[str, str], st.PodView]:
    return {(namespace, labels[r.BOTPLUGIN_LABEL]): st.pod_view(body)}


# -- wake-ups ----------------------------------------------------------------------


def child_event(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    memo.precinct.wake(namespace, labels[r.BOTPLUGIN_LABEL])


def fleet_event(memo: kopf.Memo, body: kopf.Body, type: str | None, **_: Any) -> None:
    # A new, changed or deleted spec may move a claim: let every daemon
    # re-check its own. Status writes (ours) do not, so they wake nobody.
    runtime: Runtime = memo.precinct
    meta = body.get("metadata", {})
    plugin_id = kubernetes_id(meta.get("namespace", ""), meta.get("name", ""))
    if type == "DELETED":
        runtime.ids.pop(plugin_id, None)
        METRICS.forget(plugin_id)
    else:
        runtime.ids[plugin_id] = (meta.get("namespace", ""), meta.get("name", ""))
        if ladder.resume_requested(body):
            runtime.wake(meta.get("namespace", ""), meta.get("name", ""))
    seen = (meta.get("generation"), bool(meta.get("deletionTimestamp")), type == "DELETED")
    key = meta.get("uid", "")
    if runtime.fleet_seen.get(key) != seen:
        runtime.fleet_seen[key] = seen
        runtime.wake_all()


# -- reconcile -----------------------------------------------------------------------


async def reconcile(body: kopf.Body, memo: kopf.Memo, botplugin_index: kopf.Index, pod_index: kopf.Index,
                    namespace: str, name: str, **_: Any) -> None:
    runtime: Runtime = memo.precinct
    try:
        await rc.reconcile(runtime.ctx, _plain(body), _fleet(botplugin_index), _observed(pod_index, namespace, name))
    except rc.ApiError as exc:
        if 400 <= exc.status < 500 and exc.status not in (404, 409, 429):
            METRICS.reconciled("error")
            raise kopf.PermanentError(str(exc)) from exc
        METRICS.reconciled("retry")
        raise kopf.TemporaryError(str(exc), delay=10) from exc
    except Exception:
        METRICS.reconciled("retry")   # kopf retries anything else
        raise
    METRICS.reconciled("ok")


async def finalize(body: kopf.Body, memo: kopf.Memo, botplugin_index: kopf.Index, **_: Any) -> None:
    try:
        await rc.finalize(memo.precinct.ctx, _plain(body), _fleet(botplugin_index))
    except Exception as exc:   # noqa: BLE001 - keep the finalizer until revocation works
        raise kopf.TemporaryError(f"revoking the NATS account: {exc}", delay=15) from exc


async def watch_rollout(stopped: kopf.DaemonStopped, memo: kopf.Memo, namespace: str, name: str,
                        botplugin_index: kopf.Index, pod_index: kopf.Index, **_: Any) -> None:
    runtime: Runtime = memo.precinct
    ctx = runtime.ctx
    wake = runtime.wakes.setdefault((namespace, name), asyncio.Event())
    retry_at: float | None = None
    loop = asyncio.get_running_loop()
    try:
        while not stopped:
            wake.clear()
            body = await ctx.api.get("BotPlugin", namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            try:
                if await ladder.resume_if_requested(ctx, body):
                    await rc.reconcile(ctx, body, _fleet(botplugin_index), _observed(pod_index, namespace, name))
                verdict = await rc.observe(ctx, body, _fleet(botplugin_index), _observed(pod_index, namespace, name))
            except Exception as exc:   # noqa: BLE001 - the daemon must outlive API hiccups
                log.warning("%s/%s: observing failed: %s", namespace, name, exc)
                verdict = "error"
            METRICS.observed(kubernetes_id(namespace, name), verdict, _observed(pod_index, namespace, name).pods,
                             suspended=bool((body.get("spec") or {}).get("suspend"))
                             or ladder.suspension(body) is not None)
            if verdict == "rolled-back":
                retry_at = loop.time() + ctx.retry_delay
            if retry_at is not None and loop.time() >= retry_at:
                retry_at = None
                try:
                    fresh = await ctx.api.get("BotPlugin", namespace, name)
                    if fresh is not None and rc.needs_retry(fresh):
                        log.info("%s/%s: retrying the rollout that was rolled back", namespace, name)
                        await rc.reconcile(ctx, fresh, _fleet(botplugin_index), _observed(pod_index, namespace, name))
                except Exception as exc:   # noqa: BLE001 - try again at the next wake
                    log.warning("%s/%s: retrying the rollout failed: %s", namespace, name, exc)
                    retry_at = loop.time() + ctx.retry_delay
            timeout = WAKE_TIMEOUT if retry_at is None else max(0.1, min(WAKE_TIMEOUT, retry_at - loop.time()))
            try:
                await asyncio.wait_for(wake.wait(), timeout=timeout)
            except asyncio.TimeoutError:
                pass
    finally:
        runtime.wakes.pop((namespace, name), None)


def register(registry: kopf.OperatorRegistry) -> kopf.OperatorRegistry:
    """Attach every handler above to `registry` (a fresh one per operator run)."""
    bp = (API_GROUP, API_VERSION, PLURAL)
    children = {r.BOTPLUGIN_LABEL: kopf.PRESENT}
    kopf.index(*bp, registry=registry)(botplugin_index)
    kopf.index("v1", "pods", labels=children, registry=registry)(pod_index)
    kopf.on.event("v1", "pods", labels=children, registry=registry)(child_event)
    kopf.on.event("apps", "v1", "deployments", labels=children, registry=registry)(child_event)
    kopf.on.event(*bp, registry=registry)(fleet_event)
    kopf.on.resume(*bp, registry=registry)(reconcile)
    kopf.on.create(*bp, registry=registry)(reconcile)
    kopf.on.update(*bp, registry=registry)(reconcile)
    kopf.on.delete(*bp, registry=registry)(finalize)
    kopf.daemon(*bp, registry=registry, cancellation_timeout=5.0,
                when=lambda body, **_: not body.get("metadata", {}).get("deletionTimestamp"))(watch_rollout)
    return registry
