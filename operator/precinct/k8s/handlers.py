"""kopf wiring: which events run which part of reconcile.py.

  index botplugins  -> the claims index (claims.py): claims and compiled plans,
                       updated per event; kopf fills indexes before any
                       handler runs, so the first reconcile sees the fleet
  index pods        -> PodViews per BotPlugin, by the precinct.dev/botplugin label
  create/update/resume botplugin -> reconcile (level-based for that plugin)
  delete botplugin  -> finalize: revoke the NATS account, then let GC go
  event pods/deployments -> observe that one plugin (rollout, rollback, crashes)
  claims moved      -> reconcile only the BotPlugins whose decision flipped
  violation event   -> the suspend ladder (ladder.py): warn, rollout restart, suspend
  resume annotation -> a new precinct.dev/resume value wakes an observe of that
                       plugin, which resumes it (kopf leaves precinct.dev/*
                       annotations out of its diff: no update handler sees it)

No daemon per BotPlugin: thousands of daemons cost memory and wake-ups, and
kopf stops each one on shutdown. Observation is driven by the children's
watch events, at most one observe per BotPlugin at a time (a wake during one
runs it once more), a few at a time overall; timers exist only for a
rolled-back rollout's retry and the end of a violation's quiet window.

Everything runs in one standalone operator process (peering freezes are a
known kopf pitfall; a Recreate Deployment of the operator avoids two).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from datetime import datetime, timezone
from typing import Any

import kopf

from ..spec.identity import kubernetes_id
from ..wire.kubernetes import API_GROUP, API_VERSION
from . import ladder
from . import reconcile as rc
from . import render as r
from . import status as st
from . import violations
from .metrics import OPERATOR as METRICS

PLURAL = "botplugins"
CONCURRENT_OBSERVES = 16
log = logging.getLogger("precinct.operator")

Key = tuple[str, str]


class Runtime:
    """What the handlers share: kept in kopf's memo as `memo.precinct`."""

    def __init__(self, ctx: rc.Context) -> None:
        self.ctx = ctx
        ctx.wake = self.wake_many
        self.ids: dict[str, Key] = {}                      # plugin id -> (namespace, name)
        self.background: list[asyncio.Task] = []
        self.pod_index: Any = None                          # kopf's live index, kept from the first handler call
        self._running: dict[Key, asyncio.Task] = {}
        self._again: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._retry: set[Key] = set()
        self._slots = asyncio.Semaphore(CONCURRENT_OBSERVES)
        self.closing = False
        self.policy = ladder.policy_of(ctx.settings)
        self.violations_subscribed: bool | None = None      # None: no NATS URL configured (health.py)

    # -- violations ------------------------------------------------------------------

    async def on_violation(self, plugin_id: str, event: dict[str, Any]) -> None:
        where = self.ids.get(plugin_id)
        if where is None:
            log.info("violation event for unknown plugin %s ignored", plugin_id)
            return
        METRICS.violation(plugin_id, event)
        await ladder.on_violation(self.ctx, *where, event, self.policy)
        self.wake(*where)

    # -- wake-ups ------------------------------------------------------------------------

    def wake(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if self.closing:
            return
        if key in self._running:
            self._again.add(key)
            return
        self._running[key] = asyncio.create_task(self._observe(key))

    def wake_many(self, keys: set[Key]) -> None:
        for key in keys:
            self.wake(*key)

    def later(self, key: Key, delay: float, *, retry: bool = False) -> None:
        """Wake `key` after `delay` seconds (one timer per plugin: the earliest wins)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        timer = self._timers.get(key)
        if timer is not None and timer.when() <= when and not retry:
            return
        if timer is not None:
            timer.cancel()
        if retry:
            self._retry.add(key)
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.wake(*key)

    def forget(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._retry.discard(key)
        self._again.discard(key)

    async def _observe(self, key: Key) -> None:
        namespace, name = key
        ctx = self.ctx
        try:
            while not self.closing:
                self._again.discard(key)
                async with self._slots:
                    await self._observe_once(ctx, namespace, name)
                if key not in self._again:
                    break
        finally:
            self._running.pop(key, None)

    async def _observe_once(self, ctx: rc.Context, namespace: str, name: str) -> None:
        key = (namespace, name)
        try:
            body = await ctx.api.get("BotPlugin", namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                self.forget(key)
                return
            observed = self.observed(namespace, name)
            if await ladder.resume_if_requested(ctx, body):
                await rc.reconcile(ctx, body, observed)      # scales it back up
            if key in self._retry:
                self._retry.discard(key)
                assert ctx.status is not None
                if rc.needs_retry(body, ctx.status.current(body)):
                    log.info("%s/%s: retrying the rollout that was rolled back", namespace, name)
                    await rc.reconcile(ctx, body, observed)
            verdict = await rc.observe(ctx, body, observed)
        except Exception as exc:   # noqa: BLE001 - one plugin's trouble must not stop the others
            log.warning("%s/%s: observing failed: %s", namespace, name, exc)
            self.later(key, 10.0)
            METRICS.observed(kubernetes_id(namespace, name), "error", [], suspended=False)
            return
        assert ctx.status is not None
        status = ctx.status.current(body)
        METRICS.observed(kubernetes_id(namespace, name), verdict, observed.pods,
                         suspended=bool((body.get("spec") or {}).get("suspend"))
                         or ladder.suspension(body, status) is not None)
        if verdict == "rolled-back":
            self.later(key, ctx.retry_delay, retry=True)
        last = status.get("lastViolation")
        window = ctx.settings.violation_window_seconds
        if violations.recent(last, window=window):
            self.later(key, _window_left(last, window) + 1.0)

    def observed(self, namespace: str, name: str) -> rc.Observed:
        pods = list(self.pod_index.get((namespace, name), [])) if self.pod_index is not None else []
        return rc.Observed(pods=pods)

    @property
    def observing(self) -> int:
        """Observes under way now (the health probe reports it)."""
        return len(self._running)

    async def stop(self) -> None:
        self.closing = True
        for timer in self._timers.values():
            timer.cancel()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _window_left(last: dict[str, Any], window: float) -> float:
    try:
        at = datetime.fromisoformat(str(last.get("at", "")).replace("Z", "+00:00"))
    except ValueError:
        return window
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return max(0.0, window - (datetime.now(timezone.utc) - at).total_seconds())


def _plain(body: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


# -- indexes ---------------------------------------------------------------------


async def botplugin_index(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Feeds the claims index (nothing is stored in kopf's own index)."""
    runtime: Runtime = memo.precinct
    meta = body.get("metadata", {})
    runtime.ids[kubernetes_id(meta.get("namespace", ""), meta.get("name", ""))] = (
        meta.get("namespace", ""), meta.get("name", ""))
    runtime.ctx.observe_claims(body)
    return None


async def pod_index(body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> dict[Key, st.PodView]:
    return {(namespace, labels[r.BOTPLUGIN_LABEL]): st.pod_view(body)}


# -- events ----------------------------------------------------------------------------


async def child_event(namespace: str, labels: kopf.Labels, memo: kopf.Memo, pod_index: kopf.Index, **_: Any) -> None:
    runtime: Runtime = memo.precinct
    runtime.pod_index = pod_index
    runtime.wake(namespace, labels[r.BOTPLUGIN_LABEL])


async def fleet_event(memo: kopf.Memo, body: kopf.Body, type: str | None, **_: Any) -> None:
    """A new resume annotation wakes the plugin's observe (ladder.py). A
    BotPlugin gone for good: its claims free up (the finalizer already did
    this unless the finalizer was removed by hand)."""
    runtime: Runtime = memo.precinct
    meta = body.get("metadata", {})
    if type != "DELETED":
        assert runtime.ctx.status is not None
        plain = _plain(body)
        if ladder.resume_requested(plain, runtime.ctx.status.current(plain)):
            runtime.wake(meta.get("namespace", ""), meta.get("name", ""))
        return
    key = (meta.get("namespace", ""), meta.get("name", ""))
    plugin_id = kubernetes_id(*key)
    runtime.ids.pop(plugin_id, None)
    METRICS.forget(plugin_id)
    runtime.forget(key)
    changed = runtime.ctx.claims.remove(*key)
    if changed:
        runtime.wake_many(changed)


# -- reconcile -----------------------------------------------------------------------


async def reconcile(body: kopf.Body, memo: kopf.Memo, pod_index: kopf.Index, **_: Any) -> None:
    runtime: Runtime = memo.precinct
    runtime.pod_index = pod_index
    meta = body.get("metadata", {})
    try:
        await rc.reconcile(runtime.ctx, _plain(body), runtime.observed(meta["namespace"], meta["name"]))
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


async def finalize(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.precinct
    meta = body.get("metadata", {})
    runtime.forget((meta.get("namespace", ""), meta.get("name", "")))
    try:
        await rc.finalize(runtime.ctx, _plain(body))
    except Exception as exc:   # noqa: BLE001 - keep the finalizer until revocation works
        raise kopf.TemporaryError(f"revoking the NATS account: {exc}", delay=15) from exc


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
    return registry
