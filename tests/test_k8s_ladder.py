"""The suspend ladder on Kubernetes (k8s/ladder.py) against the API stand-in:
warn -> rollout restart -> suspend (zero replicas, Ready/Stalled Suspended,
Events), the suspension surviving reconciles and spec changes, resuming by
the annotation and by `precinct plugin resume --namespace`, and never a
write to the spec. The last test runs the whole kopf operator with a real
nats-server: the violation events arrive over NATS as the gateway sends them.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from precinct import conditions as cond
from precinct.k8s import ladder as kl
from precinct.k8s import reconcile as rc
from precinct.k8s import render as r
from precinct.k8s import status as st
from precinct.k8s.client import Api, plain_configuration
from precinct.k8s.credentials import Credentials
from precinct.ladder import NONE, RESTART, SUSPEND, WARN, LadderPolicy, strike
from precinct.natsauth.identity import Identity

from k8s_standin import StandIn

NS = "bots"
DIGEST = "sha256:" + "b" * 64
POLICY = LadderPolicy(window=600, cooldown=10, suspend_after=3)
T0 = 1_800_000_000.0


def botplugin(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "precinct.dev/v1alpha1", "kind": "BotPlugin", "metadata": {"name": name, "namespace": NS},
            "spec": {"version": "1.0.0", "image": f"registry.example/{name}@{DIGEST}", **spec}}


def event(kind: str = "permission", subject: str = "rosey.chat.lobby.send", count: int = 1) -> dict[str, Any]:
    return {"plugin": f"{NS}-dice", "kind": kind, "subject": subject, "count": count, "last": cond.now(),
            "source": "nats-server-log"}


# -- the shared decision (both runtimes) ------------------------------------------------


def test_strike_walks_warn_restart_suspend_with_cooldown_and_window() -> None:
    strikes: list[float] = []
    seen = []
    for t in (0, 5, 20, 25, 40):
        strikes, action = strike(strikes, t, POLICY)
        seen.append(action)
    assert seen == [WARN, NONE, RESTART, NONE, SUSPEND]
    # strikes older than the window are forgotten: a quiet plugin starts over
    assert strike([0.0, 20.0], 700.0, POLICY) == ([700.0], WARN)
    # suspend_after 0: never suspends, restarts instead
    never = LadderPolicy(window=600, cooldown=0, suspend_after=0)
    assert strike([1.0, 2.0, 3.0, 4.0], 5.0, never)[1] == RESTART
    with pytest.raises(ValueError):
        LadderPolicy(window=0)


# -- the handler logic against the stand-in ----------------------------------------------


class Harness:
    def __init__(self, k8s: StandIn, state: Path) -> None:
        self.k8s = k8s
        self.api = Api(plain_configuration(k8s.url), attempts=2, base_delay=0.01)
        self.credentials = Credentials(Identity(state), None, threaded=True)
        self.ctx = rc.Context(api=self.api, settings=r.Settings(), credentials=self.credentials, retry_delay=0.0)

    def body(self, name: str = "dice") -> dict[str, Any]:
        obj = self.k8s.get("BotPlugin", NS, name)
        assert obj is not None
        return copy.deepcopy(obj)

    def index(self) -> None:
        """What kopf's BotPlugin index does before handlers run: the claims index sees the fleet."""
        for obj in self.k8s.all("BotPlugin"):
            self.ctx.claims.observe(copy.deepcopy(obj))

    async def reconcile(self, name: str = "dice") -> None:
        """What the create/update/resume handler does."""
        self.index()
        body = self.body(name)
        await kl.resume_if_requested(self.ctx, body)
        await rc.reconcile(self.ctx, body, rc.Observed())

    async def observe(self, name: str = "dice") -> str:
        self.index()
        return await rc.observe(self.ctx, self.body(name), rc.Observed())

    def condition(self, type_: str, name: str = "dice") -> dict[str, Any]:
        for c in self.body(name)["status"]["conditions"]:
            if c["type"] == type_:
                return c
        raise AssertionError(f"no {type_}")

    def deployment(self, name: str = "dice") -> dict[str, Any]:
        dep = self.k8s.get("Deployment", NS, name)
        assert dep is not None
        return dep

    async def roll_out(self, name: str = "dice") -> None:
        dep = self.deployment(name)
        n = dep["spec"]["replicas"]
        await self.k8s.set_status("Deployment", NS, name, {
            "observedGeneration": dep["metadata"]["generation"], "replicas": n, "updatedReplicas": n,
            "readyReplicas": n, "availableReplicas": n,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]})

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in self.k8s.all("Event", NS) if e["reason"] == reason]


@pytest.fixture
async def h(tmp_path: Path) -> Any:
    server = await StandIn().start()
    await server.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": NS, "labels": {"kubernetes.io/metadata.name": NS}}})
    harness = Harness(server, tmp_path / "state")
    try:
        yield harness
    finally:
        await harness.credentials.close()
        await harness.api.close()
        await server.stop()


async def test_ladder_warns_restarts_then_suspends_without_touching_the_spec(h: Harness) -> None:
    await h.api.create(botplugin("dice", commands={"roll": "dice.roll"}))
    await h.reconcile()
    await h.roll_out()
    assert await h.observe() == "complete"
    spec, generation = h.body()["spec"], h.body()["metadata"]["generation"]

    # 1st strike: a warning Event, nothing restarts
    assert await kl.on_violation(h.ctx, NS, "dice", event(), POLICY, now=T0) == WARN
    assert [e["type"] for e in h.events(kl.WARNED)] == ["Warning"]
    assert kl.RESTARTED_AT not in (h.deployment()["spec"]["template"]["metadata"].get("annotations") or {})
    await h.observe()
    assert h.condition(cond.PERMISSIONS_COMPLIANT)["reason"] == cond.PERMISSION_VIOLATION
    assert h.condition(cond.READY)["status"] == "True"

    # within the cooldown: the same offence, counted but no strike
    assert await kl.on_violation(h.ctx, NS, "dice", event(count=4), POLICY, now=T0 + 5) == NONE
    status = h.body()["status"]
    assert status["violations"] == 5 and len(status["ladder"]["strikes"]) == 1

    # 2nd strike: a rollout restart, as `kubectl rollout restart` does it
    before = h.deployment()["metadata"]["generation"]
    assert await kl.on_violation(h.ctx, NS, "dice", event("rate_limit"), POLICY, now=T0 + 20) == RESTART
    dep = h.deployment()
    assert dep["spec"]["template"]["metadata"]["annotations"][kl.RESTARTED_AT] == kl.stamp(T0 + 20)
    assert dep["metadata"]["generation"] == before + 1 and dep["spec"]["replicas"] == 1
    assert len(h.events(kl.RESTARTED)) == 1 and h.body()["status"]["ladder"]["restarts"] == 1
    await h.reconcile()            # the operator's own apply keeps the restart annotation
    assert h.deployment()["spec"]["template"]["metadata"]["annotations"][kl.RESTARTED_AT] == kl.stamp(T0 + 20)

    # 3rd strike: suspended at once, conditions and Events at the next observe
    assert await kl.on_violation(h.ctx, NS, "dice", event(), POLICY, now=T0 + 40) == SUSPEND
    assert h.deployment()["spec"]["replicas"] == 0
    await h.roll_out()
    await h.observe()
    ready, stalled = h.condition(cond.READY), h.condition(cond.STALLED)
    assert (ready["status"], ready["reason"]) == ("False", cond.SUSPENDED)
    assert (stalled["status"], stalled["reason"]) == ("True", cond.SUSPENDED)
    assert "strike 3" in ready["message"] and f"precinct plugin resume --namespace {NS} dice" in ready["message"]
    assert h.condition(cond.RECONCILING)["status"] == "False"
    suspended_events = {e["message"].split(":")[0]: e["type"] for e in h.events(cond.SUSPENDED)}
    assert suspended_events["Ready=False"] == suspended_events["Stalled=True"] == "Warning"
    ladder = h.body()["status"]["ladder"]
    assert ladder["lastAction"] == SUSPEND and ladder["suspendedAt"] == kl.stamp(T0 + 40)

    # suspended: more violations count but strike nothing; reconciles keep zero replicas
    assert await kl.on_violation(h.ctx, NS, "dice", event(), POLICY, now=T0 + 100) == NONE
    await h.reconcile()
    assert h.deployment()["spec"]["replicas"] == 0
    # the user's spec was never written by any of it
    assert h.body()["spec"] == spec and h.body()["metadata"]["generation"] == generation

    # ...and a spec change (a GitOps commit) does not lift the suspension
    await h.api.patch("BotPlugin", NS, "dice", {"spec": {"config": {"sides": 8}}})
    await h.reconcile()
    assert h.deployment()["spec"]["replicas"] == 0
    assert h.condition(cond.READY)["reason"] == cond.SUSPENDED


async def test_resume_annotation_acts_once_per_value(h: Harness) -> None:
    await h.api.create(botplugin("dice"))
    await h.reconcile()
    for i in range(3):
        await kl.on_violation(h.ctx, NS, "dice", event(), POLICY, now=T0 + 20 * i)
    assert h.deployment()["spec"]["replicas"] == 0

    await h.api.patch("BotPlugin", NS, "dice", {"metadata": {"annotations": {kl.RESUME_ANNOTATION: "first"}}})
    assert kl.suspension(h.body()) is None            # a pending resume wins at once
    await h.reconcile()
    assert h.deployment()["spec"]["replicas"] == 1
    status = h.body()["status"]
    assert status["ladder"]["resumed"] == "first" and status["ladder"]["strikes"] == []
    assert "suspendedAt" not in status["ladder"] and "lastViolation" not in status
    assert status["violations"] == 3                 # the total since creation stays
    assert [e["type"] for e in h.events(kl.RESUMED)] == ["Normal"]
    await h.roll_out()
    await h.observe()
    assert h.condition(cond.READY)["status"] == "True"
    assert h.condition(cond.STALLED)["status"] == "False"
    assert h.condition(cond.PERMISSIONS_COMPLIANT)["status"] == "True"

    # the annotation stays (the operator never removes it): a second reconcile does nothing
    assert h.body()["metadata"]["annotations"][kl.RESUME_ANNOTATION] == "first"
    assert await kl.resume_if_requested(h.ctx, h.body()) is False
    # the ladder starts over: the next violation is a warning again
    assert await kl.on_violation(h.ctx, NS, "dice", event(), POLICY, now=T0 + 1000) == WARN


async def test_a_rejected_plugin_has_no_deployment_to_act_on(h: Harness) -> None:
    """A violation for a plugin without a Deployment is still counted; no error."""
    await h.api.create(botplugin("dice"))
    assert await kl.on_violation(h.ctx, NS, "dice", event(), LadderPolicy(cooldown=0, suspend_after=2), now=T0) == WARN
    assert await kl.on_violation(h.ctx, NS, "dice", event(), LadderPolicy(cooldown=0, suspend_after=3),
                                 now=T0 + 1) == RESTART
    assert h.k8s.get("Deployment", NS, "dice") is None
    assert h.body()["status"]["violations"] == 2


# -- `precinct plugin resume --namespace` --------------------------------------------------


def kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {"token": "unused"}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "me"}}]}))
    return path


def precinct(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "precinct.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


async def test_resume_command_refuses_what_is_not_suspended(h: Harness, tmp_path: Path) -> None:
    env = {"KUBECONFIG": str(kubeconfig(tmp_path, h.k8s.url))}
    done = await asyncio.to_thread(precinct, "plugin", "resume", "--namespace", NS, "ghost", env=env)
    assert done.returncode == 1 and f"no BotPlugin {NS}/ghost" in done.stderr, done.stderr
    await h.api.create(botplugin("dice"))
    done = await asyncio.to_thread(precinct, "plugin", "resume", "--namespace", NS, "dice", env=env)
    assert done.returncode == 1 and "is not suspended" in done.stderr, done.stderr
    assert kl.RESUME_ANNOTATION not in (h.body()["metadata"].get("annotations") or {})

    # suspended, but no operator runs: the request is made, and the command says nobody acted
    await h.k8s.set_status("BotPlugin", NS, "dice", {"ladder": {"suspendedAt": kl.stamp(T0), "strikes": []}})
    done = await asyncio.to_thread(precinct, "plugin", "resume", "--namespace", NS, "dice", "--wait", "1", env=env)
    assert done.returncode == 1 and "has not acted on it within 1 s" in done.stderr, done.stderr
    assert h.body()["metadata"]["annotations"][kl.RESUME_ANNOTATION]


# -- the whole operator, violations over a real nats-server --------------------------------


async def wait_for(check: Any, timeout: float = 90.0, what: str = "condition") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            value = check()
        except (AssertionError, KeyError, TypeError, IndexError):
            value = None
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_operator_suspends_over_nats_and_the_cli_resumes(h: Harness, nats_env: Any, tmp_path: Path) -> None:
    from precinct.k8s.operator import OperatorConfig, serve

    settings = r.Settings(violation_cooldown_seconds=0, suspend_after=3)
    config = OperatorConfig(state_dir=tmp_path / "state", nats_url=nats_env.server.url, render=settings,
                            server=h.k8s.url, namespaces=(NS,), retry_delay=0.2, server_timeout=5, client_timeout=10)
    stop = asyncio.Event()
    credentials = Credentials(nats_env.identity, nats_env.server.url)
    task = asyncio.create_task(serve(config, stop_flag=stop, credentials=credentials))
    try:
        await h.api.create(botplugin("dice", commands={"roll": "dice.roll"}))
        await wait_for(lambda: h.k8s.get("Deployment", NS, "dice"), what="the Deployment")
        await wait_for(lambda: h.condition(cond.CREDENTIALS_READY)["reason"] == "Pushed", what="pushed creds")
        await h.roll_out()
        await wait_for(lambda: h.condition(cond.READY)["status"] == "True", what="Ready")

        # the gateway's events, on the platform account, as services/gateway.py sends them
        gateway = await nats_env.platform()
        strikes = 0
        for _ in range(3):
            await gateway.nc.publish(f"precinct.violations.{NS}-dice", json.dumps(event()).encode())
            strikes += 1
            await wait_for(lambda: len(h.body()["status"]["ladder"]["strikes"]) == strikes
                           or h.body()["status"]["ladder"].get("suspendedAt"), what=f"strike {strikes}")
        await wait_for(lambda: h.deployment()["spec"]["replicas"] == 0, what="zero replicas")
        await h.roll_out()
        await wait_for(lambda: h.condition(cond.READY)["reason"] == cond.SUSPENDED, what="Ready=False Suspended")
        assert h.events(kl.WARNED) and h.events(kl.RESTARTED)

        env = {"KUBECONFIG": str(kubeconfig(tmp_path, h.k8s.url))}
        done = await asyncio.to_thread(precinct, "plugin", "resume", "--namespace", NS, "dice", "--json", env=env)
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        assert reply["acknowledged"] is True and reply["was_suspended"] is True
        assert h.body()["status"]["ladder"]["resumed"] == reply["resumed"]
        await wait_for(lambda: h.deployment()["spec"]["replicas"] == 1, what="scaled back up")
        await h.roll_out()
        await wait_for(lambda: h.condition(cond.READY)["status"] == "True", what="Ready again")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
