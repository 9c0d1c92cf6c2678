"""Reconcile one BotPlugin, observe its rollout, finalize it.

Level-based for the one BotPlugin at hand: a call reads its body, its entry in
the claims index (claims.py), its credentials (credentials.py) and its
Deployment, computes what should exist and applies it. What a call costs does
not depend on the fleet's size: nothing here walks the fleet.

State the operator keeps, and where:
  status.observedGeneration, revision, readyRevision, failedRollouts,
  conditions                  on the BotPlugin (the user's spec is never written)
  precinct.dev/good-template  on the Deployment: the last pod template that
  precinct.dev/good-hash      became available, for rollbacks
  NATS keys and JWTs          in the state directory (natsauth.Identity)

Rollback: when a rollout of the current spec misses its progress deadline,
the Deployment gets the last good template again (its content-addressed
ConfigMap is kept for it) and failedRollouts counts up; the retry timer
tries the new template again, and after MAX_FAILED_ROLLOUTS failures in a
row the plugin is Stalled and stays on the good template until its spec
changes (a new metadata.generation).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import conditions as cond
from ..plan.sandbox import SandboxPlan
from ..spec.identity import kubernetes_id
from ..spec.load import BotPluginResource
from ..spec.model import load_botplugin_spec
from . import fleetmap, ladder
from . import render as r
from . import status as st
from . import violations
from .bundles import BundleVerifier
from .claims import Claims, first_error
from .client import Api, ApiError
from .credentials import Credentials
from .status_writer import StatusWriter

log = logging.getLogger("precinct.operator")

INVALID_SPEC = "InvalidSpec"
__all__ = ["ApiError", "Context", "Observed", "reconcile", "observe", "finalize", "needs_retry"]


@dataclass
class Context:
    api: Api
    settings: r.Settings
    credentials: Credentials
    retry_delay: float = 60.0
    claims: Claims = field(default_factory=Claims)
    bundles: BundleVerifier | None = None    # default: built from settings on first use
    fleet: fleetmap.FleetMap | None = None   # default: from $PRECINCT_FLEET_CONFIGMAP
    status: StatusWriter | None = None
    wake: Callable[[set[tuple[str, str]]], None] = lambda keys: None   # BotPlugins whose claims moved
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    counted: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status is None:
            self.status = StatusWriter(self.api)
        if self.fleet is None:
            self.fleet = fleetmap.FleetMap(self.api)
        self.credentials.plans = self.claims.accepted_plans

    def bundle_verifier(self) -> BundleVerifier:
        """Built on first use, from the settings as they are then."""
        if self.bundles is None:
            self.bundles = BundleVerifier(self.settings.index_url, self.settings.index_root_json,
                                          Path(self.credentials.identity.state) / "bundles")
        return self.bundles

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self.locks.setdefault((namespace, name), asyncio.Lock())

    def observe_claims(self, body: dict[str, Any]) -> None:
        changed = self.claims.observe(body)
        if changed:
            self.wake(changed)


@dataclass
class Observed:
    """What kopf's indexes hold for one plugin."""

    pods: list[st.PodView] = field(default_factory=list)


def _resource(body: dict[str, Any]) -> BotPluginResource:
    meta = body["metadata"]
    return BotPluginResource(namespace=meta["namespace"], name=meta["name"],
                             spec=load_botplugin_spec(body.get("spec") or {}))


def _counters(status: dict[str, Any], generation: int) -> tuple[int, int]:
    """(revision, failedRollouts) for `generation`."""
    changed = status.get("observedGeneration") != generation
    revision = int(status.get("revision", 0)) + (1 if changed else 0)
    failed = 0 if changed else int(status.get("failedRollouts", 0))
    return revision, failed


def _good(dep: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    annotations = ((dep or {}).get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(st.GOOD_TEMPLATE)
    if not raw:
        return None, ""
    try:
        return json.loads(raw), annotations.get(st.GOOD_HASH, "")
    except ValueError:
        return None, ""


def _limits_message(plan: SandboxPlan) -> str:
    lim = plan.limits
    return (f"cpu {lim.cpu_millicores}m, memory {lim.memory_bytes} bytes, data dir {lim.disk_bytes} bytes "
            f"(requests = limits); pids are limited by the node's kubelet (podPidsLimit)")


async def _credentials(ctx: Context, plugin_id: str, plan: SandboxPlan | None, accepted: bool) -> tuple[bool, str, str]:
    """CredentialsReady for this plugin; syncs (coalesced) only when its account is not as wanted."""
    creds = ctx.credentials
    issued = creds.has_account(plugin_id)
    if accepted and (not issued or creds.issued.get(plugin_id) != plan) or (not accepted and issued):
        return await creds.sync()
    return creds.last


async def _stalled(ctx: Context, body: dict[str, Any], status: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
    """Nothing to retry until the spec changes (invalid spec, unverifiable bundle)."""
    meta = body["metadata"]
    generation = int(meta.get("generation", 1))
    revision, failed = _counters(status, generation)
    conditions = cond.Conditions(status.get("conditions"))
    for type_ in (cond.READY, cond.LATEST_REVISION_READY):
        conditions.set(type_, False, reason, message, generation)
    conditions.set(cond.STALLED, True, reason, message, generation)
    conditions.set(cond.RECONCILING, False, reason, "", generation)
    new = {"observedGeneration": generation, "revision": revision, "failedRollouts": failed,
           "pluginId": kubernetes_id(meta["namespace"], meta["name"]), "conditions": conditions.to_list()}
    assert ctx.status is not None
    await ctx.status.write(body, new)
    return new


# -- reconcile ----------------------------------------------------------------------


async def reconcile(ctx: Context, body: dict[str, Any], observed: Observed | None = None, *,
                    roll_forward: bool = True) -> dict[str, Any]:
    """Apply every child of `body`; write its status. Returns the new status."""
    meta = body["metadata"]
    async with ctx.lock(meta["namespace"], meta["name"]):
        return await _reconcile(ctx, body, observed or Observed(), roll_forward)


async def _reconcile(ctx: Context, body: dict[str, Any], observed: Observed, roll_forward: bool) -> dict[str, Any]:
    assert ctx.status is not None and ctx.fleet is not None
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status = ctx.status.current(body)
    if meta.get("deletionTimestamp"):
        return status                  # being deleted: no new children, the finalizer takes over
    ctx.observe_claims(body)
    generation = int(meta.get("generation", 1))
    revision, failed = _counters(status, generation)
    plugin_id = kubernetes_id(namespace, name)
    conditions = cond.Conditions(status.get("conditions"))

    try:
        resource = _resource(body)
    except ValidationError as exc:
        # The CRD schema catches most of this; what it cannot (config vs
        # config_schema, claims) lands here.
        return await _stalled(ctx, body, status, INVALID_SPEC, first_error(exc))

    if resource.spec.bundle is not None:
        # Verified before any Pod starts: nothing is applied for a release the
        # index does not hold, signed. A Deployment of an earlier good release stays.
        ok, message = await ctx.bundle_verifier().verify(resource.spec.bundle.name, resource.spec.bundle.version)
        if not ok:
            return await _stalled(ctx, body, status, cond.SIGNATURE_INVALID, message)

    entry = ctx.claims.get(namespace, name)
    rejection = entry.rejection if entry else None
    plan = entry.plan if entry and entry.plan is not None else r.plan_for(resource)
    creds_state = await _credentials(ctx, plugin_id, plan, rejection is None)
    creds_text = ctx.credentials.creds_text(plugin_id) if rejection is None else None
    if rejection is None and creds_text is None:
        creds_state = (False, creds_state[1] if not creds_state[0] else "NotIssued",
                       creds_state[2] if not creds_state[0] else "no account issued for this plugin yet")
    if rejection is None and creds_state[0]:
        ctx.fleet.set(plugin_id, fleetmap.entry(plan, ctx.credentials.account_key))
    elif rejection is not None:
        ctx.fleet.set(plugin_id, None)

    desired = r.pod_template(resource, plan, ctx.settings)
    desired_hash = r.template_hash(desired)
    live = await ctx.api.get("Deployment", namespace, name)
    good, good_hash = _good(live)
    template = desired
    if good is not None and good_hash != desired_hash and (failed >= st.MAX_FAILED_ROLLOUTS or not roll_forward):
        template = good            # stay on the last good template
    suspended = ladder.suspension(body, status)     # by the violation ladder: zero replicas until resumed
    objects = r.render(resource, ctx.settings, creds=creds_text or "", owner_uid=meta.get("uid", ""),
                       template=template, running=rejection is None and suspended is None)
    for obj in objects:
        if obj["kind"] == "Secret" and creds_text is None:
            await ctx.api.delete("Secret", namespace, obj["metadata"]["name"])
            continue
        if obj["kind"] == "Deployment" and good is not None:
            obj["metadata"]["annotations"] = {st.GOOD_TEMPLATE: json.dumps(good, sort_keys=True), st.GOOD_HASH: good_hash}
        applied = await ctx.api.apply(obj, reply=obj["kind"] == "Deployment")
        if obj["kind"] == "Deployment":
            live = applied
    if revision > 1 or good is not None:       # a first revision has no older config maps
        await _collect_config_maps(ctx, resource, [template, good])

    facts = st.Facts(
        generation=generation, desired_hash=desired_hash, deployment=st.deployment_view(live),
        pods=observed.pods, rejection=rejection, suspended=resource.spec.suspend,
        credentials=creds_state, failed_rollouts=failed, limits_message=_limits_message(plan),
        last_violation=status.get("lastViolation"),
        violation_recent=violations.recent(status.get("lastViolation"), window=ctx.settings.violation_window_seconds),
        suspension=suspended,
    )
    st.assess(facts, conditions)
    new = {"observedGeneration": generation, "revision": revision, "failedRollouts": failed,
           "readyRevision": status.get("readyRevision"), "pluginId": plugin_id,
           "conditions": conditions.to_list()}
    await ctx.status.write(body, new)
    return new


async def _collect_config_maps(ctx: Context, resource: BotPluginResource, templates: list[dict[str, Any] | None]) -> None:
    """Delete config maps no template in use refers to (content-addressed names pile up)."""
    keep = {r.config_map_name(resource.name, resource.spec.config)}
    for template in templates:
        for volume in ((template or {}).get("spec") or {}).get("volumes") or []:
            if "configMap" in volume:
                keep.add(volume["configMap"]["name"])
    for cm in await ctx.api.list("ConfigMap", resource.namespace, {r.PLUGIN_LABEL: resource.id}):
        if cm["metadata"]["name"] not in keep:
            await ctx.api.delete("ConfigMap", resource.namespace, cm["metadata"]["name"])


# -- watching the rollout -----------------------------------------------------------


async def observe(ctx: Context, body: dict[str, Any], observed: Observed) -> str:
    """React to what the Deployment and Pods report. Returns the verdict.

    complete  -> remember the template as good, readyRevision = revision
    failed    -> roll back to the good template, failedRollouts + 1
    otherwise -> refresh conditions (crashes, readiness)
    A spec not reconciled yet is left to the create/update handler ("pending");
    a claim decision or credentials that changed since the last reconcile
    re-run it ("reconciled")."""
    assert ctx.status is not None
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if meta.get("deletionTimestamp"):
        return "deleting"
    plugin_id = kubernetes_id(namespace, name)
    status = ctx.status.current(body)
    generation = int(meta.get("generation", 1))
    if status.get("observedGeneration") != generation:
        return "pending"
    conditions = cond.Conditions(status.get("conditions"))
    was_rejected = (conditions.get(cond.STALLED) or cond.Condition("", "", "", "", "")).reason in (
        cond.COMMAND_CONFLICT, cond.SUBJECT_CONFLICT)
    ctx.observe_claims(body)
    rejected = ctx.claims.rejection(namespace, name) is not None
    if rejected != was_rejected or not conditions.is_true(cond.CREDENTIALS_READY):
        await reconcile(ctx, body, observed)
        return "reconciled"

    async with ctx.lock(namespace, name):
        status = ctx.status.current(body)
        if status.get("observedGeneration") != generation:
            # A reconcile of a newer spec ran while this waited for the lock:
            # `body` is stale now (writing it would put the old generation
            # back over the new revision); the new Deployment's events observe again.
            return "pending"
        try:
            resource = _resource(body)
        except ValidationError:
            return "invalid"
        entry = ctx.claims.get(namespace, name)
        plan = entry.plan if entry and entry.plan is not None else r.plan_for(resource)
        desired = r.pod_template(resource, plan, ctx.settings)
        desired_hash = r.template_hash(desired)
        live = await ctx.api.get("Deployment", namespace, name)
        view = st.deployment_view(live)
        verdict = st.verdict(desired_hash, view)
        revision = int(status.get("revision", 1))
        failed = int(status.get("failedRollouts", 0))
        ready_revision = status.get("readyRevision")
        good, good_hash = _good(live)

        if verdict == "complete" and good_hash != desired_hash and live is not None:
            # Keep the template as rendered (not the live one with the API
            # server's defaults and others' annotations, e.g. restartedAt).
            await ctx.api.patch("Deployment", namespace, name, {"metadata": {"annotations": {
                st.GOOD_TEMPLATE: json.dumps(desired, sort_keys=True), st.GOOD_HASH: desired_hash}}}, reply=False)
            ready_revision, failed = revision, 0
            if revision > 1:
                await _collect_config_maps(ctx, resource, [desired])
        elif verdict == "complete" and ready_revision != revision:
            ready_revision, failed = revision, 0
        elif verdict == "failed" and failed < st.MAX_FAILED_ROLLOUTS and ctx.counted.get((namespace, name)) != (
                desired_hash, view.generation if view else 0):
            # Count each failed rollout once (the condition stays until the template changes).
            ctx.counted[(namespace, name)] = (desired_hash, view.generation if view else 0)
            failed += 1
            if good is not None and good_hash != desired_hash:
                log.warning("%s/%s: rollout of %s missed its deadline; rolling back to %s (failure %d)",
                            namespace, name, desired_hash, good_hash, failed)
                dep = r.deployment(resource, r.Owner(name, namespace, meta.get("uid", "")), good, ctx.settings,
                                   running=ladder.suspension(body, status) is None)
                dep["metadata"]["annotations"] = {st.GOOD_TEMPLATE: json.dumps(good, sort_keys=True),
                                                  st.GOOD_HASH: good_hash}
                live = await ctx.api.apply(dep)
                view = st.deployment_view(live)
                verdict = "rolled-back"

        facts = st.Facts(
            generation=generation, desired_hash=desired_hash, deployment=view, pods=observed.pods,
            rejection=ctx.claims.rejection(namespace, name), suspended=resource.spec.suspend,
            credentials=_credentials_fact(conditions), failed_rollouts=failed,
            limits_message=_limits_message(plan),
            last_violation=status.get("lastViolation"),
            violation_recent=violations.recent(status.get("lastViolation"),
                                               window=ctx.settings.violation_window_seconds),
            suspension=ladder.suspension(body, status),
        )
        st.assess(facts, conditions)
        new = {"observedGeneration": generation, "revision": revision, "failedRollouts": failed,
               "readyRevision": ready_revision, "pluginId": plugin_id, "conditions": conditions.to_list()}
        await ctx.status.write(body, new)
        return verdict


def _credentials_fact(conditions: cond.Conditions) -> tuple[bool, str, str]:
    c = conditions.get(cond.CREDENTIALS_READY)
    if c is None:
        return False, "Unknown", ""
    return c.status == "True", c.reason, c.message


def needs_retry(body: dict[str, Any], status: dict[str, Any] | None = None) -> bool:
    """Rolled back, and tries left: roll forward again after the retry delay."""
    status = status if status is not None else dict(body.get("status") or {})
    failed = int(status.get("failedRollouts", 0))
    return 0 < failed < st.MAX_FAILED_ROLLOUTS and status.get("observedGeneration") == body["metadata"].get("generation")


# -- deletion ---------------------------------------------------------------------


async def finalize(ctx: Context, body: dict[str, Any]) -> None:
    """Revoke the plugin's NATS account before Kubernetes collects its children:
    a sync without it (Identity revokes, pushes the tombstone and deletes the
    account). The children go with their owner (ownerReferences)."""
    assert ctx.status is not None and ctx.fleet is not None
    meta = body["metadata"]
    gone = (meta["namespace"], meta["name"])
    plugin_id = kubernetes_id(*gone)
    changed = ctx.claims.remove(*gone)
    if changed:
        ctx.wake(changed)
    ctx.fleet.set(plugin_id, None)
    if ctx.credentials.has_account(plugin_id):
        ok, _, message = await ctx.credentials.sync()
        if not ok:
            raise RuntimeError(f"could not revoke the NATS account: {message}")
        if ctx.credentials.has_account(plugin_id):
            raise RuntimeError("the NATS account is still issued")
    ctx.locks.pop(gone, None)
    ctx.counted.pop(gone, None)
    ctx.status.forget(*gone)
