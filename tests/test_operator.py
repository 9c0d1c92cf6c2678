"""The operator's handlers against an in-process Kubernetes API (k8s_standin:
why not kmock alone is said there). No cluster runs here: the tests play the
Deployment controller and the kubelet by scripting Deployment and Pod status.

Most tests call the handler logic (reconcile.py) directly with the real HTTP
client; the last ones run the whole kopf operator against the same stand-in.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from precinct import conditions as cond
from precinct.k8s import reconcile as rc
from precinct.k8s import render as r
from precinct.k8s import status as st
from precinct.k8s.client import Api, plain_configuration
from precinct.k8s.credentials import Credentials
from precinct.natsauth.identity import Identity

from k8s_standin import StandIn

NS = "bots"
DIGEST = "sha256:" + "a" * 64


def botplugin(name: str, **spec: Any) -> dict[str, Any]:
    base = {"version": "1.0.0", "image": f"registry.example/{name}@{DIGEST}"}
    base.update(spec)
    return {"apiVersion": "precinct.dev/v1alpha1", "kind": "BotPlugin",
            "metadata": {"name": name, "namespace": NS}, "spec": base}


class Harness:
    def __init__(self, api_server: StandIn, state: Path, identity: Identity | None = None) -> None:
        self.k8s = api_server
        self.api = Api(plain_configuration(api_server.url), attempts=2, base_delay=0.01)
        self.identity = identity or Identity(state)
        # An Identity connected in this loop (nats_env) syncs in this loop.
        self.credentials = Credentials(self.identity, None, threaded=identity is None)
        self.ctx = rc.Context(api=self.api, settings=r.Settings(), credentials=self.credentials, retry_delay=0.0)

    def index(self) -> None:
        """What kopf's BotPlugin index does before handlers run: the claims index sees the fleet."""
        present = set()
        for obj in self.k8s.all("BotPlugin"):
            self.ctx.claims.observe(copy.deepcopy(obj))
            present.add((obj["metadata"]["namespace"], obj["metadata"]["name"]))
        for key in list(self.ctx.claims.entries):
            if key not in present:
                self.ctx.claims.remove(*key)

    def body(self, name: str) -> dict[str, Any]:
        obj = self.k8s.get("BotPlugin", NS, name)
        assert obj is not None, f"no BotPlugin {name}"
        return copy.deepcopy(obj)

    def observed(self, name: str) -> rc.Observed:
        pods = [st.pod_view(p) for p in self.k8s.all("Pod", NS)
                if (p["metadata"].get("labels") or {}).get(r.BOTPLUGIN_LABEL) == name]
        return rc.Observed(pods=pods)

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return await self.api.create(obj)

    async def reconcile(self, name: str) -> dict[str, Any]:
        self.index()
        return await rc.reconcile(self.ctx, self.body(name), self.observed(name))

    async def observe(self, name: str) -> str:
        self.index()
        return await rc.observe(self.ctx, self.body(name), self.observed(name))

    async def finalize(self, name: str) -> None:
        self.index()
        await rc.finalize(self.ctx, self.body(name))

    async def close(self) -> None:
        await self.credentials.close()
        await self.api.close()

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        for c in (self.body(name).get("status") or {}).get("conditions") or []:
            if c["type"] == type_:
                return c
        raise AssertionError(f"{name} has no {type_} condition: {self.body(name).get('status')}")

    def deployment(self, name: str) -> dict[str, Any]:
        dep = self.k8s.get("Deployment", NS, name)
        assert dep is not None
        return dep

    def template_hash(self, name: str) -> str:
        return self.deployment(name)["spec"]["template"]["metadata"]["annotations"][r.CONFIG_HASH]

    async def roll_out(self, name: str) -> None:
        """Play the Deployment controller: the current template is available."""
        dep = self.deployment(name)
        await self.k8s.set_status("Deployment", NS, name, {
            "observedGeneration": dep["metadata"]["generation"], "replicas": 1, "updatedReplicas": 1,
            "readyReplicas": 1, "availableReplicas": 1,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                           {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]})

    async def miss_deadline(self, name: str) -> None:
        """The new template never became available: old ReplicaSet still serves."""
        dep = self.deployment(name)
        await self.k8s.set_status("Deployment", NS, name, {
            "observedGeneration": dep["metadata"]["generation"], "replicas": 2, "updatedReplicas": 1,
            "readyReplicas": 1, "availableReplicas": 1, "unavailableReplicas": 1,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                           {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]})

    async def pod(self, name: str, pod_name: str, container_status: dict[str, Any], ready: bool = False) -> None:
        dep = self.deployment(name)
        tmpl = dep["spec"]["template"]
        await self.k8s.put({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": pod_name, "namespace": NS, "labels": tmpl["metadata"]["labels"],
            "annotations": tmpl["metadata"]["annotations"]},
            "spec": tmpl["spec"],
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "containerStatuses": [{"name": r.CONTAINER, **container_status}]}})

    async def delete(self, name: str) -> None:
        await self.api.delete("BotPlugin", NS, name)


@pytest.fixture
async def k8s() -> Any:
    server = await StandIn().start()
    await server.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": NS, "labels": {"kubernetes.io/metadata.name": NS}}})
    yield server
    await server.stop()


@pytest.fixture
async def h(k8s: StandIn, tmp_path: Path) -> Any:
    harness = Harness(k8s, tmp_path / "state")
    yield harness
    await harness.close()


async def test_create_applies_every_child_with_owner_references_then_ready(h: Harness) -> None:
    created = await h.create(botplugin("dice", commands={"roll": "dice.roll"}, config={"max": 6}))
    await h.reconcile("dice")
    uid = created["metadata"]["uid"]
    kinds = {}
    for kind in ("ServiceAccount", "Secret", "ConfigMap", "NetworkPolicy", "Deployment"):
        objs = [o for o in h.k8s.all(kind, NS) if o["metadata"]["labels"][r.PLUGIN_LABEL] == f"{NS}-dice"]
        assert len(objs) == 1, kind
        assert objs[0]["metadata"]["ownerReferences"][0]["uid"] == uid
        assert objs[0]["metadata"]["ownerReferences"][0]["controller"] is True
        kinds[kind] = objs[0]
    # The Secret holds exactly the creds natsauth minted for this plugin.
    assert kinds["Secret"]["stringData"][r.CREDS_KEY] == h.identity.creds_for(f"{NS}-dice").read_text()
    status = h.body("dice")["status"]
    assert status["observedGeneration"] == 1 and status["revision"] == 1 and status["pluginId"] == f"{NS}-dice"
    assert h.condition("dice", cond.READY)["status"] == "False"
    assert h.condition("dice", cond.RECONCILING)["status"] == "True"
    assert h.condition("dice", cond.CREDENTIALS_READY)["status"] == "True"

    await h.roll_out("dice")
    assert await h.observe("dice") == "complete"
    assert h.condition("dice", cond.READY) | {"lastTransitionTime": ""} == {
        "type": "Ready", "status": "True", "reason": "Running", "message": "1 replica(s) available",
        "lastTransitionTime": "", "observedGeneration": 1}
    assert h.condition("dice", cond.LATEST_REVISION_READY)["status"] == "True"
    assert h.condition("dice", cond.RECONCILING)["status"] == "False"
    assert h.condition("dice", cond.STALLED)["status"] == "False"
    assert h.body("dice")["status"]["readyRevision"] == 1
    # The good template is remembered on the Deployment, for rollbacks.
    assert h.deployment("dice")["metadata"]["annotations"][st.GOOD_HASH] == h.template_hash("dice")
    # Events on transitions.
    reasons = [(e["involvedObject"]["name"], e["reason"]) for e in h.k8s.all("Event", NS)]
    assert ("dice", "Running") in reasons


async def test_status_is_written_only_when_it_changes(h: Harness) -> None:
    await h.create(botplugin("dice"))
    await h.reconcile("dice")
    await h.roll_out("dice")
    await h.observe("dice")
    writes = len([1 for m, k in h.k8s.requests if (m, k) == ("PATCH", "BotPlugin")])
    stamp = h.condition("dice", cond.READY)["lastTransitionTime"]
    for _ in range(3):
        await h.observe("dice")
        await h.reconcile("dice")
    assert len([1 for m, k in h.k8s.requests if (m, k) == ("PATCH", "BotPlugin")]) == writes
    assert h.condition("dice", cond.READY)["lastTransitionTime"] == stamp


async def test_update_rolls_the_deployment_and_counts_a_revision(h: Harness) -> None:
    await h.create(botplugin("dice", config={"max": 6}))
    await h.reconcile("dice")
    await h.roll_out("dice")
    await h.observe("dice")
    first_hash, first_cm = h.template_hash("dice"), h.k8s.all("ConfigMap", NS)[0]["metadata"]["name"]
    # Someone runs `kubectl rollout restart`: its annotation must survive our applies.
    dep = h.deployment("dice")
    await h.api.patch("Deployment", NS, "dice", {"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}}}}})

    await h.api.patch("BotPlugin", NS, "dice", {"spec": {"config": {"max": 20}}})
    assert h.body("dice")["metadata"]["generation"] == 2
    await h.reconcile("dice")
    assert h.template_hash("dice") != first_hash
    annotations = h.deployment("dice")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/restartedAt"] == "2026-01-01T00:00:00Z"
    status = h.body("dice")["status"]
    assert status["revision"] == 2 and status["observedGeneration"] == 2
    assert h.condition("dice", cond.LATEST_REVISION_READY)["reason"] == "RollingOut"
    assert h.condition("dice", cond.READY)["status"] == "True"          # the old Pod still serves
    # The old config map stays while the good template refers to it ...
    names = {c["metadata"]["name"] for c in h.k8s.all("ConfigMap", NS)}
    assert first_cm in names and len(names) == 2
    await h.roll_out("dice")
    assert await h.observe("dice") == "complete"
    # ... and goes once the new template is the good one.
    assert {c["metadata"]["name"] for c in h.k8s.all("ConfigMap", NS)} == names - {first_cm}
    assert h.body("dice")["status"]["readyRevision"] == 2
    assert dep["metadata"]["uid"] == h.deployment("dice")["metadata"]["uid"]


async def test_an_observe_that_waited_for_a_newer_reconcile_leaves_its_status(h: Harness) -> None:
    """An observe holding the old spec that waits for the lock while the new
    spec is reconciled must not write the old generation back over the new
    revision (found by the RBAC lifecycle: observedGeneration 2 with revision
    3, so the new rollout was never observed)."""
    await h.create(botplugin("dice", config={"max": 6}))
    await h.reconcile("dice")
    stale = h.body("dice")
    await h.api.patch("BotPlugin", NS, "dice", {"spec": {"config": {"max": 20}}})
    h.index()
    async with h.ctx.lock(NS, "dice"):
        waiting = asyncio.create_task(rc.observe(h.ctx, stale, h.observed("dice")))
        await asyncio.sleep(0.1)          # the observe passed its first check and waits for the lock
        assert not waiting.done()
        await rc._reconcile(h.ctx, h.body("dice"), h.observed("dice"), True)    # what the update handler does
    assert await waiting == "pending"
    status = h.body("dice")["status"]
    assert (status["observedGeneration"], status["revision"]) == (2, 2)


async def test_failed_rollout_is_rolled_back_without_touching_spec(h: Harness) -> None:
    await h.create(botplugin("dice", config={"max": 6}))
    await h.reconcile("dice")
    await h.roll_out("dice")
    await h.observe("dice")
    good = h.template_hash("dice")
    await h.api.patch("BotPlugin", NS, "dice", {"spec": {"config": {"max": 7}}})
    spec_before = copy.deepcopy(h.body("dice")["spec"])
    await h.reconcile("dice")
    bad = h.template_hash("dice")
    assert bad != good
    await h.pod("dice", "dice-new", {"restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                     "lastState": {"terminated": {"reason": "Error", "exitCode": 3,
                                                                  "message": "plugin failed to load"}}})
    await h.miss_deadline("dice")
    assert await h.observe("dice") == "rolled-back"
    assert h.template_hash("dice") == good
    assert h.body("dice")["spec"] == spec_before
    latest = h.condition("dice", cond.LATEST_REVISION_READY)
    assert (latest["status"], latest["reason"]) == ("False", cond.ROLLED_BACK)
    assert "ExitCode3: plugin failed to load" in latest["message"]
    assert h.condition("dice", cond.READY)["status"] == "True"
    assert h.body("dice")["status"]["failedRollouts"] == 1
    assert h.condition("dice", cond.STALLED)["status"] == "False"

    # Retries: two more failures and it is Stalled, still on the good template.
    for attempt in (2, 3):
        await h.reconcile("dice")                      # the retry rolls forward again
        assert h.template_hash("dice") == bad
        await h.miss_deadline("dice")
        assert await h.observe("dice") == "rolled-back"
        assert h.body("dice")["status"]["failedRollouts"] == attempt
    stalled = h.condition("dice", cond.STALLED)
    assert (stalled["status"], stalled["reason"]) == ("True", st.ROLLOUT_FAILED)
    assert h.condition("dice", cond.READY)["status"] == "True"
    await h.reconcile("dice")                          # no more attempts for this spec
    assert h.template_hash("dice") == good
    assert not rc.needs_retry(h.body("dice"))

    # A spec change clears it.
    await h.api.patch("BotPlugin", NS, "dice", {"spec": {"config": {"max": 8}}})
    await h.reconcile("dice")
    assert h.template_hash("dice") not in (good, bad)
    assert h.body("dice")["status"]["failedRollouts"] == 0
    assert h.condition("dice", cond.STALLED)["status"] == "False"


@pytest.mark.parametrize("container, reason, fragment", [
    ({"restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
      "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}, "OOMKilled", "memory limit"),
    ({"restartCount": 5, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
      "lastState": {"terminated": {"reason": "Error", "exitCode": 4, "message": "initialize() raised"}}},
     "CrashLoopBackOff", "ExitCode4: initialize() raised"),
    ({"restartCount": 1, "state": {"running": {}},
      "lastState": {"terminated": {"reason": "Error", "exitCode": 127, "message": "no such file"}}},
     "ExitCode127", "no such file"),
])
async def test_crash_conditions_from_pod_status(h: Harness, container: dict, reason: str, fragment: str) -> None:
    await h.create(botplugin("dice"))
    await h.reconcile("dice")
    await h.pod("dice", "dice-abc", container)
    await h.observe("dice")
    ready = h.condition("dice", cond.READY)
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert fragment in ready["message"]
    limits = h.condition("dice", cond.LIMITS_ENFORCED)
    assert (limits["status"] == "False") == (reason == "OOMKilled")


async def test_command_conflict_goes_to_the_older_botplugin(h: Harness) -> None:
    await h.create(botplugin("first", commands={"roll": "dice.roll"}))
    await asyncio.sleep(1.05)          # creationTimestamp has one-second resolution
    await h.create(botplugin("second", commands={"roll": "dice.roll"}))
    await h.reconcile("first")
    await h.reconcile("second")
    for type_ in (cond.READY, cond.STALLED):
        c = h.condition("second", type_)
        assert c["reason"] == cond.COMMAND_CONFLICT and "first" in c["message"]
    assert h.deployment("second")["spec"]["replicas"] == 0
    assert h.k8s.get("Secret", NS, "second-nats") is None
    assert h.deployment("first")["spec"]["replicas"] == 1
    with pytest.raises(KeyError):
        h.identity.creds_for(f"{NS}-second")
    # Its Deployment's events make the operator observe it: the conflict stays (seen on a real server).
    for _ in range(2):
        await h.observe("second")
        assert h.condition("second", cond.STALLED)["reason"] == cond.COMMAND_CONFLICT
    # The older one goes away: the claim moves, the daemon's observe notices.
    await h.api.patch("BotPlugin", NS, "first", {"metadata": {"finalizers": ["precinct.dev/revoke-nats-account"]}})
    await h.delete("first")
    await h.finalize("first")
    await h.api.patch("BotPlugin", NS, "first", {"metadata": {"finalizers": None}})
    assert await h.observe("second") == "reconciled"
    assert h.deployment("second")["spec"]["replicas"] == 1
    assert h.condition("second", cond.CREDENTIALS_READY)["status"] == "True"
    assert h.condition("second", cond.STALLED)["status"] == "False"


async def test_deletion_revokes_the_account_before_children_go(h: Harness) -> None:
    await h.create(botplugin("dice"))
    await h.api.patch("BotPlugin", NS, "dice", {"metadata": {"finalizers": ["precinct.dev/revoke-nats-account"]}})
    await h.reconcile("dice")
    creds = h.identity.creds_for(f"{NS}-dice")
    account = h.identity.account_key(f"plugin:{NS}-dice")
    await h.delete("dice")
    # The finalizer holds the BotPlugin and so its children.
    assert h.k8s.get("BotPlugin", NS, "dice")["metadata"]["deletionTimestamp"]
    assert h.k8s.get("Deployment", NS, "dice") is not None
    await h.finalize("dice")
    assert not creds.exists()
    removed = json.loads((Path(h.identity.state) / "removed.json").read_text())
    assert account in removed            # a revoked tombstone awaits the next push
    assert h.k8s.get("Deployment", NS, "dice") is not None   # children still there until released
    await h.api.patch("BotPlugin", NS, "dice", {"metadata": {"finalizers": None}})
    assert h.k8s.get("BotPlugin", NS, "dice") is None
    await h.k8s.wait_collected()          # the garbage collector runs on its own, as in a cluster
    for kind in ("ServiceAccount", "Secret", "ConfigMap", "NetworkPolicy", "Deployment"):
        assert h.k8s.all(kind, NS) == [], kind


async def test_deletion_revokes_the_account_on_a_live_nats_server(k8s: StandIn, nats_env: Any, tmp_path: Path) -> None:
    """The creds in the Secret work against a real nats-server; after the
    finalizer ran, the connection is dropped and the creds are refused."""
    import nats

    from conftest import eventually

    h = Harness(k8s, tmp_path / "unused", identity=nats_env.identity)
    try:
        await h.create(botplugin("dice", commands={"roll": "dice.roll"}))
        await h.api.patch("BotPlugin", NS, "dice", {"metadata": {"finalizers": ["precinct.dev/revoke-nats-account"]}})
        await h.reconcile("dice")
        assert h.condition("dice", cond.CREDENTIALS_READY)["reason"] == "Pushed"
        creds = tmp_path / "from-secret.creds"
        creds.write_text(k8s.get("Secret", NS, "dice-nats")["stringData"][r.CREDS_KEY])
        plugin = await nats_env.connect(creds, "dice")
        assert plugin.nc.is_connected

        await h.delete("dice")
        await h.finalize("dice")
        await eventually(lambda: not plugin.nc.is_connected, timeout=10, what="the plugin to be cut off")
        with pytest.raises(Exception):
            await nats.connect(nats_env.server.url, user_credentials=str(creds), allow_reconnect=False,
                               connect_timeout=2)
    finally:
        await h.close()


async def test_gateway_violations_reach_the_status(k8s: StandIn, nats_env: Any, tmp_path: Path) -> None:
    """The gateway's event on precinct.violations.<id> (platform account)
    counts on the BotPlugin and turns PermissionsCompliant False (the
    ladder's first strike: a warning; tests/test_k8s_ladder.py has the rest)."""
    from conftest import eventually
    from precinct.k8s import ladder, violations

    h = Harness(k8s, tmp_path / "unused", identity=nats_env.identity)
    nc = None
    try:
        await h.create(botplugin("dice"))
        await h.reconcile("dice")
        assert h.condition("dice", cond.PERMISSIONS_COMPLIANT)["status"] == "True"
        seen: list[str] = []

        async def handle(plugin_id: str, event: dict[str, Any]) -> None:
            await ladder.on_violation(h.ctx, NS, "dice", event, ladder.policy_of(h.ctx.settings))
            seen.append(plugin_id)

        nc = await violations.subscribe(nats_env.server.url, str(nats_env.identity.platform_creds()), handle)
        gateway = await nats_env.platform()
        event = {"plugin": f"{NS}-dice", "kind": "rate_limit", "subject": "rosey.chat.x.send", "count": 195,
                 "last": cond.now(), "source": "gateway"}
        await gateway.nc.publish(f"precinct.violations.{NS}-dice", json.dumps(event).encode())
        await eventually(lambda: seen == [f"{NS}-dice"], timeout=5, what="the violation event")
        status = h.body("dice")["status"]
        assert status["violations"] == 195 and status["lastViolation"]["reason"] == cond.RATE_LIMITED
        await h.observe("dice")
        c = h.condition("dice", cond.PERMISSIONS_COMPLIANT)
        assert (c["status"], c["reason"]) == ("False", cond.RATE_LIMITED)
        assert "195 rate_limit" in c["message"]
    finally:
        if nc is not None:
            await nc.close()
        await h.close()


def test_violations_are_forgotten_after_the_quiet_window() -> None:
    from datetime import datetime, timedelta, timezone

    from precinct.k8s import violations

    last = violations.record({}, {"kind": "permission", "subject": "x", "count": 2,
                                  "last": "2026-01-01T00:00:00Z"})["lastViolation"]
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert last["reason"] == cond.PERMISSION_VIOLATION
    assert violations.recent(last, start + timedelta(seconds=599))
    assert not violations.recent(last, start + timedelta(seconds=601))


async def test_invalid_spec_is_stalled_not_retried(h: Harness) -> None:
    await h.create(botplugin("dice", config={"max": "x"}, configSchema={"type": "object", "properties": {
        "max": {"type": "integer"}}}))
    await h.reconcile("dice")
    c = h.condition("dice", cond.STALLED)
    assert (c["status"], c["reason"]) == ("True", rc.INVALID_SPEC)
    assert h.k8s.get("Deployment", NS, "dice") is None


async def test_restart_mid_reconcile_converges(h: Harness, k8s: StandIn, tmp_path: Path) -> None:
    """Killed after the ServiceAccount and Secret were applied: a fresh
    operator (new client, new Identity on the same state dir) converges."""
    await h.create(botplugin("dice", commands={"roll": "dice.roll"}))
    k8s.fail[("PATCH", "ConfigMap")] = 2          # more than the harness client's 2 attempts
    with pytest.raises(rc.ApiError):
        await h.reconcile("dice")
    assert k8s.get("Secret", NS, "dice-nats") is not None and k8s.get("Deployment", NS, "dice") is None
    first_creds = h.identity.creds_for(f"{NS}-dice").read_text()

    fresh = Harness(k8s, tmp_path / "state")
    try:
        await fresh.reconcile("dice")
        assert k8s.get("Deployment", NS, "dice") is not None
        assert fresh.identity.creds_for(f"{NS}-dice").read_text() == first_creds   # same account, same user
        await fresh.roll_out("dice")
        assert await fresh.observe("dice") == "complete"
        assert fresh.condition("dice", cond.READY)["status"] == "True"
        assert fresh.body("dice")["status"]["revision"] == 1
    finally:
        await fresh.close()


# -- the whole kopf operator ------------------------------------------------------------


async def wait_for(check: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            value = check()
        except (AssertionError, KeyError, TypeError):
            value = None
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Running:
    """The operator (kopf, standalone) as a task in this event loop."""

    def __init__(self, k8s: StandIn, state: Path) -> None:
        from precinct.k8s.operator import OperatorConfig

        self.config = OperatorConfig(state_dir=state, server=k8s.url, namespaces=(NS,), retry_delay=0.2,
                                     server_timeout=5, client_timeout=10)
        self.stop_flag = asyncio.Event()
        self.holder: dict[str, Any] = {}
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> "Running":
        from precinct.k8s.operator import serve

        self.task = asyncio.create_task(serve(self.config, stop_flag=self.stop_flag, holder=self.holder))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.stop_flag.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout=20)


async def test_operator_end_to_end(h: Harness, k8s: StandIn, tmp_path: Path) -> None:
    async with Running(k8s, tmp_path / "state"):
        await h.create(botplugin("dice", commands={"roll": "dice.roll"}))
        await wait_for(lambda: k8s.get("Deployment", NS, "dice"), what="the Deployment")
        bp = k8s.get("BotPlugin", NS, "dice")
        assert "precinct.dev/revoke-nats-account" in bp["metadata"]["finalizers"]
        assert all(len(v) < 200 for v in bp["metadata"].get("annotations", {}).values())
        await h.roll_out("dice")
        await wait_for(lambda: h.condition("dice", cond.READY)["status"] == "True", what="Ready")
        # Each transition is one Event, though the create handler and the Deployment's events race.
        posted = [(e["reason"], e["message"].split(":")[0]) for e in k8s.all("Event", NS)
                  if e["involvedObject"]["name"] == "dice"]
        assert posted and len(posted) == len(set(posted)), posted
        first = h.template_hash("dice")

        await h.api.patch("BotPlugin", NS, "dice", {"spec": {"config": {"n": 1}}})
        await wait_for(lambda: h.template_hash("dice") != first, what="the rolled template")
        await wait_for(lambda: h.body("dice")["status"]["revision"] == 2, what="revision 2")
        await h.roll_out("dice")
        await wait_for(lambda: h.condition("dice", cond.LATEST_REVISION_READY)["status"] == "True",
                       what="LatestRevisionReady")

        # A crash reported by the kubelet reaches the conditions through the Pod index.
        await h.pod("dice", "dice-x", {"restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}})
        await wait_for(lambda: h.condition("dice", cond.LIMITS_ENFORCED)["reason"] == "OOMKilled", what="OOMKilled")

        plugin_id = f"{NS}-dice"
        assert plugin_id in Identity(tmp_path / "state").keys.plugin_ids()
        await h.delete("dice")
        await wait_for(lambda: k8s.get("BotPlugin", NS, "dice") is None, what="the BotPlugin to go")
        assert plugin_id not in Identity(tmp_path / "state").keys.plugin_ids()
        await wait_for(lambda: k8s.all("Deployment", NS) == [] and k8s.all("Secret", NS) == [],
                       what="the garbage collector to take the children")


async def test_operator_restarted_mid_reconcile_converges(h: Harness, k8s: StandIn, tmp_path: Path) -> None:
    gate = asyncio.Event()
    k8s.hang[("PATCH", "Deployment")] = gate           # the first operator dies before the Deployment
    async with Running(k8s, tmp_path / "state"):
        await h.create(botplugin("dice"))
        await wait_for(lambda: k8s.get("ConfigMap", NS, None) or k8s.all("ConfigMap", NS), what="the ConfigMap")
    assert k8s.get("Deployment", NS, "dice") is None
    del k8s.hang[("PATCH", "Deployment")]
    gate.set()
    async with Running(k8s, tmp_path / "state"):
        await wait_for(lambda: k8s.get("Deployment", NS, "dice"), what="the Deployment after restart")
        await h.roll_out("dice")
        await wait_for(lambda: h.condition("dice", cond.READY)["status"] == "True", what="Ready")
        assert h.body("dice")["status"]["revision"] == 1


async def test_a_botplugin_being_deleted_gets_no_new_children(h: Harness) -> None:
    await h.create(botplugin("dice"))
    await h.api.patch("BotPlugin", NS, "dice", {"metadata": {"finalizers": ["precinct.dev/revoke-nats-account"]}})
    await h.delete("dice")
    assert h.k8s.get("BotPlugin", NS, "dice")["metadata"]["deletionTimestamp"]
    await h.reconcile("dice")
    assert await h.observe("dice") == "deleting"
    for kind in ("ServiceAccount", "Secret", "ConfigMap", "NetworkPolicy", "Deployment"):
        assert h.k8s.all(kind, NS) == [], kind
    assert h.credentials.syncs == 0            # and no account was issued for it


async def test_a_burst_costs_a_few_credential_syncs_not_one_each(h: Harness) -> None:
    names = [f"p{i}" for i in range(12)]
    for name in names:
        await h.create(botplugin(name, commands={f"c{name}": f"{name}.run"}))
    h.index()
    await asyncio.gather(*(rc.reconcile(h.ctx, h.body(n), h.observed(n)) for n in names))
    assert all(h.condition(n, cond.CREDENTIALS_READY)["status"] == "True" for n in names)
    assert 1 <= h.credentials.syncs <= 3, h.credentials.syncs
    before = h.credentials.syncs
    await h.reconcile("p0")                    # nothing changed: no sync
    assert h.credentials.syncs == before
