"""The operator's logic, independent of kopf: reconcile one BotPlugin,
watch its rollout, finalize it.

Level-based: every call reads the BotPlugin, the fleet (all BotPlugins, from
kopf's index) and the live Deployment, computes what should exist and
applies all of it. Nothing depends on what an earlier call did, so an
operator killed at any point converges when it starts again.

State the operator keeps, and where:
  status.observedGeneration, revision, readyRevision, failedRollouts,
  conditions                  on the BotPlugin (the user's spec is never written)
  precinct.dev/good-template  on the Deployment: the last pod template that
  precinct.dev/good-hash      became available, for rollbacks
  NATS keys and JWTs          in the state directory (natsauth.Identity)

Rollback: when a rollout of the current spec misses its progress deadline,
the Deployment gets the last good template again (its content-addressed
ConfigMap is kept for it) and failedRollouts counts up; the next reconcile
(or the retry timer) tries the new template again, and after
MAX_FAILED_ROLLOUTS failures in a row the plugin is Stalled and stays on the
good template until its spec changes (a new metadata.generation).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import conditions as cond
from ..natsauth.identity import Identity
from ..plan.sandbox import SandboxPlan, compile_plan
from ..spec.load import BotPluginResource
from ..spec.model import load_botplugin_spec
from ..spec.ownership import Ownership, Plugin, resolve
from ..spec.identity import kubernetes_id
from . import fleetmap, ladder
from . import render as r
from . import status as st
from . import violations
from .api import Api, ApiError

log = logging.getLogger("precinct.operator")

INVALID_SPEC = "InvalidSpec"
NATS_UNAVAILABLE = "NatsUnavailable"


# -- the fleet ------------------------------------------------------------------


@dataclass(frozen=True)
class FleetEntry:
    """One BotPlugin as the fleet index keeps it."""

    namespace: str
    name: str
    uid: str
    created: str
    spec: dict[str, Any]
    deleting: bool = False

    @property
    def id(self) -> str:
        return kubernetes_id(self.namespace, self.name)


def fleet_entry(body: dict[str, Any]) -> FleetEntry:
    meta = body.get("metadata", {})
    return FleetEntry(
        namespace=meta.get("namespace", "default"), name=meta.get("name", ""), uid=meta.get("uid", ""),
        created=meta.get("creationTimestamp") or "", spec=copy.deepcopy(dict(body.get("spec") or {})),
        deleting=bool(meta.get("deletionTimestamp")),
    )


@dataclass
class Fleet:
    ownership: Ownership
    invalid: dict[str, str] = field(default_factory=dict)   # plugin id -> problem

    def plans(self) -> list[SandboxPlan]:
        return [compile_plan(p) for p in self.ownership.accepted]

    def rejection(self, plugin_id: str) -> tuple[str, str] | None:
        for rej in self.ownership.rejected:
            if rej.plugin == plugin_id:
                return rej.reason, rej.message
        return None


def resolve_fleet(entries: Iterable[FleetEntry]) -> Fleet:
    """Claims go to the older BotPlugin (creationTimestamp, then namespace/name)."""
    plugins: list[Plugin] = []
    invalid: dict[str, str] = {}
    for entry in sorted(entries, key=lambda e: (e.created, e.namespace, e.name)):
        if entry.deleting:
            continue
        try:
            plugins.append(Plugin(entry.id, load_botplugin_spec(entry.spec)))
        except ValidationError as exc:
            invalid[entry.id] = _first_error(exc)
    return Fleet(resolve(plugins), invalid)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in ("spec", *err["loc"]))
    return f"{where}: {err['msg']}"


# -- credentials -------------------------------------------------------------------


class Credentials:
    """The fleet's NATS accounts, through natsauth.Identity (one per operator).

    Every sync passes the whole fleet: Identity revokes any plugin missing
    from it, which is how deletion revokes an account. Callers must never
    sync a partial fleet (kopf fills its indexes before handlers run)."""

    def __init__(self, identity: Identity, nats_url: str | None) -> None:
        self.identity = identity
        self.nats_url = nats_url
        self.problem: str | None = None

    @classmethod
    def from_state_dir(cls, state_dir: Path, nats_url: str | None) -> "Credentials":
        return cls(Identity(state_dir), nats_url)

    async def sync(self, plans: list[SandboxPlan]) -> tuple[bool, str, str]:
        """(ok, reason, message) for CredentialsReady."""
        try:
            if self.nats_url and self.identity._nc is None:
                self.identity.prepare(plans)      # system creds must exist before connecting
                await self.identity.connect(self.nats_url)
            result = await self.identity.sync(plans)
        except Exception as exc:  # noqa: BLE001 - any NATS trouble is reported, then retried
            self.problem = f"{type(exc).__name__}: {exc}"
            log.warning("NATS account sync failed: %s", self.problem)
            return False, NATS_UNAVAILABLE, f"could not push accounts to {self.nats_url}: {self.problem}"[:1000]
        self.problem = None
        if result.live:
            return True, "Pushed", "account and user issued and pushed to the NATS resolver"
        return True, "Issued", "account and user issued (no NATS URL configured: not pushed)"

    def creds_text(self, plugin_id: str) -> str | None:
        try:
            return self.identity.creds_for(plugin_id).read_text()
        except KeyError:
            return None

    def has_account(self, plugin_id: str) -> bool:
        return plugin_id in self.identity.keys.plugin_ids()


# -- the context -------------------------------------------------------------------


class BundleVerifier:
    """Checks a bundle release against the index before any Pod starts:
    TUF from the pinned root (settings.index_root_json), with TUF state kept in
    the operator's state dir so a rolled-back or frozen index is noticed
    across calls. Successes are cached for `ttl` seconds; failures never."""

    def __init__(self, index_url: str, root_json: str, state_dir: Path, ttl: float = 300.0) -> None:
        self.index_url, self.root_json, self.state_dir, self.ttl = index_url, root_json, state_dir, ttl
        self._ok: dict[tuple[str, str], float] = {}

    async def verify(self, name: str, version: str) -> tuple[bool, str]:
        import time

        from ..market.errors import MarketError
        from ..market.fetch import verify_release

        if not self.root_json:
            return False, ("cannot verify the bundle: the operator has no pinned root for the index "
                           "(setting index_root_json)")
        key = (name, version)
        if time.monotonic() - self._ok.get(key, -1e9) < self.ttl:
            return True, ""
        try:
            sha = await asyncio.to_thread(verify_release, self.index_url, name, version, self.state_dir,
                                          root_json=self.root_json)
        except MarketError as exc:
            return False, f"{exc.check or 'check'}: {exc}"[:1000]
        except Exception as exc:  # noqa: BLE001 - anything else is still "not verified"
            return False, f"{type(exc).__name__}: {exc}"[:1000]
        self._ok[key] = time.monotonic()
        log.info("bundle %s %s verified against %s (sha256 %s)", name, version, self.index_url, sha)
        return True, sha


@dataclass
class Context:
    api: Api
    settings: r.Settings
    credentials: Credentials
    retry_delay: float = 60.0
    bundles: BundleVerifier | None = None    # default: built from settings on first use
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    counted: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self.locks.setdefault((namespace, name), asyncio.Lock())


# -- status helpers -------------------------------------------------------------------


STATUS_FIELDS = ("observedGeneration", "revision", "readyRevision", "failedRollouts", "pluginId", "conditions",
                 "violations", "lastViolation")


def _status(body: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(body.get("status") or {}))


async def write_status(ctx: Context, body: dict[str, Any], new: dict[str, Any]) -> bool:
    """Patch status only if something changed; post an Event per condition transition."""
    old = _status(body)
    new = {k: v for k, v in new.items() if v is not None}
    if all(old.get(k) == new.get(k) for k in STATUS_FIELDS if k in new):
        return False
    meta = body["metadata"]
    await ctx.api.patch("BotPlugin", meta["namespace"], meta["name"], {"status": new}, subresource="status")
    if not isinstance(body.get("status"), dict):
        body["status"] = {}
    body["status"].update(new)
    before = {c["type"]: c for c in old.get("conditions") or []}
    for c in new.get("conditions") or []:
        prev = before.get(c["type"])
        if prev is None or (prev["status"], prev["reason"]) != (c["status"], c["reason"]):
            await post_event(ctx, body, c)
    return True


_EVENT_TYPES = {cond.READY, cond.LATEST_REVISION_READY, cond.STALLED, cond.CREDENTIALS_READY,
                cond.LIMITS_ENFORCED, cond.PERMISSIONS_COMPLIANT}


async def post_event(ctx: Context, body: dict[str, Any], c: dict[str, Any]) -> None:
    if c["type"] not in _EVENT_TYPES:
        return
    good = c["status"] == "True" if c["type"] != cond.STALLED else c["status"] != "True"
    await emit(ctx, body, good, c["reason"], f"{c['type']}={c['status']}: {c['message']}")


async def emit(ctx: Context, body: dict[str, Any], good: bool, reason: str, message: str) -> None:
    """Post one Event on the BotPlugin (Normal when good, else Warning); best effort."""
    meta = body["metadata"]
    stamp = cond.now()
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": body.get("apiVersion", "precinct.dev/v1alpha1"), "kind": "BotPlugin",
                           "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid", "")},
        "type": "Normal" if good else "Warning",
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "precinct-operator"},
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        "reportingComponent": "precinct.dev/operator", "reportingInstance": "precinct-operator",
    }
    try:
        await ctx.api.create(event)
    except ApiError as exc:   # events are best effort
        log.debug("could not post an event: %s", exc)


# -- reconcile -------------------------------------------------------------------


@dataclass
class Observed:
    """What kopf's indexes hold for one plugin."""

    pods: list[st.PodView] = field(default_factory=list)


def _bundle_verifier(ctx: Context) -> BundleVerifier:
    if ctx.bundles is None:
        ctx.bundles = BundleVerifier(ctx.settings.index_url, ctx.settings.index_root_json,
                                     Path(ctx.credentials.identity.state) / "bundles")
    return ctx.bundles


def _resource(body: dict[str, Any]) -> BotPluginResource:
    meta = body["metadata"]
    return BotPluginResource(namespace=meta["namespace"], name=meta["name"], spec=load_botplugin_spec(body.get("spec") or {}))


def _counters(body: dict[str, Any]) -> tuple[int, int, int, bool]:
    """(generation, revision, failedRollouts, spec changed since last seen)."""
    status = _status(body)
    generation = int(body["metadata"].get("generation", 1))
    changed = status.get("observedGeneration") != generation
    revision = int(status.get("revision", 0)) + (1 if changed else 0)
    failed = 0 if changed else int(status.get("failedRollouts", 0))
    return generation, revision, failed, changed


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


async def reconcile(ctx: Context, body: dict[str, Any], fleet_entries: Iterable[FleetEntry],
                    observed: Observed | None = None, *, roll_forward: bool = True) -> dict[str, Any]:
    """Apply every child of `body`; write its status. Returns the new status."""
    meta = body["metadata"]
    async with ctx.lock(meta["namespace"], meta["name"]):
        return await _reconcile(ctx, body, list(fleet_entries), observed or Observed(), roll_forward)


async def _reconcile(ctx: Context, body: dict[str, Any], entries: list[FleetEntry], observed: Observed,
                     roll_forward: bool) -> dict[str, Any]:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    generation, revision, failed, _ = _counters(body)
    plugin_id = kubernetes_id(namespace, name)
    conditions = cond.Conditions(_status(body).get("conditions"))

    try:
        resource = _resource(body)
    except ValidationError as exc:
        # The CRD schema catches most of this; what it cannot (config vs
        # config_schema, claims) lands here. Nothing to retry until the spec changes.
        message = _first_error(exc)
        for type_ in (cond.READY, cond.LATEST_REVISION_READY):
            conditions.set(type_, False, INVALID_SPEC, message, generation)
        conditions.set(cond.STALLED, True, INVALID_SPEC, message, generation)
        conditions.set(cond.RECONCILING, False, INVALID_SPEC, "", generation)
        new = {"observedGeneration": generation, "revision": revision, "failedRollouts": failed,
               "pluginId": plugin_id, "conditions": conditions.to_list()}
        await write_status(ctx, body, new)
        return new

    if resource.spec.bundle is not None:
        # Verified before any Pod starts: nothing is applied for a release the
        # index does not hold, signed. A Deployment of an earlier good release stays.
        ok, message = await _bundle_verifier(ctx).verify(resource.spec.bundle.name, resource.spec.bundle.version)
        if not ok:
            for type_ in (cond.READY, cond.LATEST_REVISION_READY):
                conditions.set(type_, False, cond.SIGNATURE_INVALID, message, generation)
            conditions.set(cond.STALLED, True, cond.SIGNATURE_INVALID, message, generation)
            conditions.set(cond.RECONCILING, False, cond.SIGNATURE_INVALID, "", generation)
            new = {"observedGeneration": generation, "revision": revision, "failedRollouts": failed,
                   "pluginId": plugin_id, "conditions": conditions.to_list()}
            await write_status(ctx, body, new)
            return new

    fleet = resolve_fleet(entries)
    rejection = fleet.rejection(plugin_id)
    creds_state = await ctx.credentials.sync(fleet.plans())
    if creds_state[0]:
        await fleetmap.publish(ctx.api, ctx.credentials.identity, fleet.plans())
    creds_text = ctx.credentials.creds_text(plugin_id) if rejection is None else None
    if rejection is None and creds_text is None:
        creds_state = (False, creds_state[1] if not creds_state[0] else "NotIssued",
                       creds_state[2] if not creds_state[0] else "no account issued for this plugin yet")

    plan = r.plan_for(resource)
    desired = r.pod_template(resource, plan, ctx.settings)
    desired_hash = r.template_hash(desired)
    live = await ctx.api.get("Deployment", namespace, name)
    good, good_hash = _good(live)
    template = desired
    if good is not None and good_hash != desired_hash and (failed >= st.MAX_FAILED_ROLLOUTS or not roll_forward):
        template = good            # stay on the last good template
    suspended = ladder.suspension(body)        # by the violation ladder: zero replicas until resumed
    running = rejection is None and suspended is None
    objects = r.render(resource, ctx.settings, creds=creds_text or "", owner_uid=meta.get("uid", ""),
                       template=template, running=running)
    for obj in objects:
        if obj["kind"] == "Secret" and creds_text is None:
            await ctx.api.delete("Secret", namespace, obj["metadata"]["name"])
            continue
        if obj["kind"] == "Deployment" and good is not None:
            obj["metadata"]["annotations"] = {st.GOOD_TEMPLATE: json.dumps(good, sort_keys=True), st.GOOD_HASH: good_hash}
        applied = await ctx.api.apply(obj)
        if obj["kind"] == "Deployment":
            live = applied
    await _collect_config_maps(ctx, resource, [template, good])

    facts = st.Facts(
        generation=generation, desired_hash=desired_hash, deployment=st.deployment_view(live),
        pods=observed.pods, rejection=rejection, suspended=resource.spec.suspend,
        credentials=creds_state, failed_rollouts=failed, limits_message=_limits_message(plan),
        last_violation=_status(body).get("lastViolation"),
        violation_recent=violations.recent(_status(body).get("lastViolation"),
                                           window=ctx.settings.violation_window_seconds),
        suspension=suspended,
    )
    st.assess(facts, conditions)
    status = _status(body)
    new = {"observedGeneration": generation, "revision": revision, "failedRollouts": failed,
           "readyRevision": status.get("readyRevision"), "pluginId": plugin_id,
           "conditions": conditions.to_list()}
    await write_status(ctx, body, new)
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


async def observe(ctx: Context, body: dict[str, Any], fleet_entries: Iterable[FleetEntry],
                  observed: Observed) -> str:
    """React to what the Deployment and Pods report. Returns the verdict.

    complete  -> remember the template as good, readyRevision = revision
    failed    -> roll back to the good template, failedRollouts + 1
    otherwise -> refresh conditions (crashes, readiness)
    Also re-runs reconcile when this plugin's claim status changed (an older
    conflicting BotPlugin went away) or its credentials are not ready yet."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    entries = list(fleet_entries)
    plugin_id = kubernetes_id(namespace, name)
    status = _status(body)
    generation = int(meta.get("generation", 1))
    if status.get("observedGeneration") != generation:
        await reconcile(ctx, body, entries, observed)
        return "reconciled"
    conditions = cond.Conditions(status.get("conditions"))
    was_rejected = (conditions.get(cond.STALLED) or cond.Condition("", "", "", "", "")).reason in (
        cond.COMMAND_CONFLICT, cond.SUBJECT_CONFLICT)
    creds_ok = conditions.is_true(cond.CREDENTIALS_READY)
    fleet = resolve_fleet(entries)
    if (fleet.rejection(plugin_id) is not None) != was_rejected or not creds_ok:
        await reconcile(ctx, body, entries, observed)
        return "reconciled"

    async with ctx.lock(namespace, name):
        try:
            resource = _resource(body)
        except ValidationError:
            return "invalid"
        plan = r.plan_for(resource)
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
                st.GOOD_TEMPLATE: json.dumps(desired, sort_keys=True), st.GOOD_HASH: desired_hash}}})
            ready_revision, failed = revision, 0
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
                                   running=ladder.suspension(body) is None)
                dep["metadata"]["annotations"] = {st.GOOD_TEMPLATE: json.dumps(good, sort_keys=True),
                                                  st.GOOD_HASH: good_hash}
                live = await ctx.api.apply(dep)
                view = st.deployment_view(live)
                verdict = "rolled-back"

        facts = st.Facts(
            generation=generation, desired_hash=desired_hash, deployment=view, pods=observed.pods,
            rejection=None, suspended=resource.spec.suspend,
            credentials=_credentials_fact(conditions), failed_rollouts=failed,
            limits_message=_limits_message(plan),
            last_violation=status.get("lastViolation"),
            violation_recent=violations.recent(status.get("lastViolation"), window=ctx.settings.violation_window_seconds),
            suspension=ladder.suspension(body),
        )
        st.assess(facts, conditions)
        new = {"observedGeneration": generation, "revision": revision, "failedRollouts": failed,
               "readyRevision": ready_revision, "pluginId": plugin_id, "conditions": conditions.to_list()}
        await write_status(ctx, body, new)
        return verdict


def _credentials_fact(conditions: cond.Conditions) -> tuple[bool, str, str]:
    c = conditions.get(cond.CREDENTIALS_READY)
    if c is None:
        return False, "Unknown", ""
    return c.status == "True", c.reason, c.message


def needs_retry(body: dict[str, Any]) -> bool:
    """Rolled back, and tries left: roll forward again after the retry delay."""
    status = _status(body)
    failed = int(status.get("failedRollouts", 0))
    return 0 < failed < st.MAX_FAILED_ROLLOUTS and status.get("observedGeneration") == body["metadata"].get("generation")


async def record_violation(ctx: Context, namespace: str, name: str, event: dict[str, Any]) -> None:
    """Count a gateway-reported violation on the BotPlugin's status."""
    async with ctx.lock(namespace, name):
        body = await ctx.api.get("BotPlugin", namespace, name)
        if body is None:
            return
        await ctx.api.patch("BotPlugin", namespace, name, {"status": violations.record(_status(body), event)},
                            subresource="status")


# -- deletion ---------------------------------------------------------------------


async def finalize(ctx: Context, body: dict[str, Any], fleet_entries: Iterable[FleetEntry]) -> None:
    """Revoke the plugin's NATS account before Kubernetes collects its children:
    sync the fleet without it (Identity revokes, pushes the tombstone and
    deletes the account). The children go with their owner (ownerReferences)."""
    meta = body["metadata"]
    gone = (meta["namespace"], meta["name"])
    entries = [e for e in fleet_entries if (e.namespace, e.name) != gone]
    ok, _, message = await ctx.credentials.sync(resolve_fleet(entries).plans())
    if not ok:
        raise RuntimeError(f"could not revoke the NATS account: {message}")
    await fleetmap.publish(ctx.api, ctx.credentials.identity, resolve_fleet(entries).plans())
    if ctx.credentials.has_account(kubernetes_id(*gone)):
        raise RuntimeError("the NATS account is still issued")
    ctx.locks.pop(gone, None)
