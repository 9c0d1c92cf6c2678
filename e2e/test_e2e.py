"""End to end on a real cluster: the chart, the example plugin, NATS,
crashes, rollouts, deletion. Runs only when KUBECONFIG points at a reachable
cluster (conftest.py says why it skipped otherwise). The tests share one
release and run in file order."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from precinct.spec.identity import kubernetes_id

from e2e_support import (
    PLUGINS_NS, RELEASE, SYSTEM_NS, apply, botplugin, botplugin_manifest, condition, get_json, helm, kubectl,
    wait_condition, wait_for,
)

CRASH_MARKER = "CRASHER-FIXTURE"


async def _request(url: str, creds: Path, subject: str, payload: dict, timeout: float = 10.0) -> dict:
    import nats

    nc = await nats.connect(url, user_credentials=str(creds), connect_timeout=10, max_reconnect_attempts=2)
    try:
        msg = await nc.request(subject, json.dumps(payload).encode(), timeout=timeout)
        return json.loads(msg.data)
    finally:
        await nc.close()


def request(core_nats, subject: str, payload: dict, timeout: float = 10.0) -> dict:
    url, creds = core_nats
    return asyncio.run(_request(url, creds, subject, payload, timeout))


def test_platform_is_up(release):
    kubectl("rollout", "status", "-n", SYSTEM_NS, f"deployment/{RELEASE}-operator", "--timeout=300s")
    kubectl("rollout", "status", "-n", SYSTEM_NS, f"statefulset/{RELEASE}-nats", "--timeout=300s")
    kubectl("rollout", "status", "-n", SYSTEM_NS, f"statefulset/{RELEASE}-storage", "--timeout=300s")
    # the identity Job ran once and the Secret exists; the hook objects are gone
    get_json("secret", "-n", SYSTEM_NS, f"{RELEASE}-nats-identity")
    assert kubectl("get", "job", "-n", SYSTEM_NS, f"{RELEASE}-identity", check=False).returncode != 0


def test_example_plugin_becomes_ready(release, images):
    apply(botplugin_manifest("dice-roller", images["dice-roller"]))
    # what a GitOps pipeline runs: conditions are in status
    kubectl("wait", "--for=condition=Ready", "botplugin/dice-roller", "-n", PLUGINS_NS, "--timeout=300s")
    bp = botplugin("dice-roller")
    assert bp["status"]["observedGeneration"] == bp["metadata"]["generation"]
    assert condition(bp, "CredentialsReady")["reason"] == "Pushed"
    assert bp["status"]["pluginId"] == kubernetes_id(PLUGINS_NS, "dice-roller")


def test_roll_round_trip_through_nats(core_nats):
    answer = request(core_nats, "rosey.command.dice.roll", {"args": "2d6", "user": "e2e"})
    assert answer["success"] is True, answer
    assert 2 <= answer["result"]["total"] <= 12


def test_oom_kill_is_reported(release, images, core_nats):
    apply(botplugin_manifest("hog", images["hog"]))
    kubectl("wait", "--for=condition=Ready", "botplugin/hog", "-n", PLUGINS_NS, "--timeout=300s")
    try:
        request(core_nats, "rosey.command.hog.eat", {}, timeout=20)
    except Exception:  # noqa: BLE001 - killed before it could answer: expected
        pass
    wait_condition("hog", "LimitsEnforced", "False", "OOMKilled", timeout=180)
    events = kubectl("get", "events", "-n", PLUGINS_NS, "--field-selector",
                     "involvedObject.kind=BotPlugin,involvedObject.name=hog", "-o", "json").stdout
    assert "OOMKilled" in events


def test_crash_loop_is_reported(release, images):
    apply(botplugin_manifest("crasher", images["crasher"]))
    ready = wait_condition("crasher", "Ready", "False", "CrashLoopBackOff", timeout=300)
    assert CRASH_MARKER in ready["message"] or "ExitCode" in ready["message"], ready


def test_update_rolls_out_and_a_failing_update_rolls_back(release, images, core_nats):
    before = botplugin("dice-roller")["status"]["revision"]
    kubectl("patch", "botplugin", "dice-roller", "-n", PLUGINS_NS, "--type=merge",
            "-p", json.dumps({"spec": {"config": {"max_dice": 10, "max_sides": 1000}}}))
    wait_for(lambda: botplugin("dice-roller")["status"]["revision"] > before, 60, "a new revision")
    wait_condition("dice-roller", "LatestRevisionReady", "True", "RolloutComplete", timeout=300)
    answer = request(core_nats, "rosey.command.dice.roll", {"args": "11d6"})
    assert answer["success"] is False, answer          # the new config (max 10 dice) is live

    good = botplugin("dice-roller")["status"]["revision"]
    # a failing update: same plugin, an image that crashes at start
    kubectl("patch", "botplugin", "dice-roller", "-n", PLUGINS_NS, "--type=merge",
            "-p", json.dumps({"spec": {"image": images["crasher"]}}))
    rolled = wait_condition("dice-roller", "LatestRevisionReady", "False", "RolledBack", timeout=600)
    bp = botplugin("dice-roller")
    assert condition(bp, "Ready")["status"] == "True", bp["status"]        # the old revision serves
    assert bp["status"]["readyRevision"] == good
    assert bp["status"]["failedRollouts"] >= 1
    assert bp["spec"]["image"] == images["crasher"]                        # spec is never rewritten
    assert request(core_nats, "rosey.command.dice.roll", {"args": "1d6"})["success"] is True, rolled
    # back to a good spec: converges again
    kubectl("patch", "botplugin", "dice-roller", "-n", PLUGINS_NS, "--type=merge",
            "-p", json.dumps({"spec": {"image": images["dice-roller"]}}))
    wait_condition("dice-roller", "LatestRevisionReady", "True", "RolloutComplete", timeout=300)


def test_delete_leaves_nothing(release):
    kubectl("delete", "botplugins", "--all", "-n", PLUGINS_NS, "--wait", "--timeout=180s")

    def children_gone() -> bool:
        out = kubectl("get", "deployments,networkpolicies,secrets,configmaps,serviceaccounts,pods",
                      "-n", PLUGINS_NS, "-l", "precinct.dev/plugin", "-o", "name").stdout.strip()
        return out == ""
    wait_for(children_gone, 180, "every plugin child to be garbage-collected")

    helm("uninstall", RELEASE, "--namespace", SYSTEM_NS, "--wait", "--timeout", "5m")
    left = kubectl("get", "all,networkpolicies,configmaps,serviceaccounts,roles,rolebindings", "-n", SYSTEM_NS,
                   "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name").stdout.split()
    assert left == [], left
    cluster_wide = kubectl("get", "clusterroles,clusterrolebindings", "-l",
                           f"app.kubernetes.io/instance={RELEASE}", "-o", "name").stdout.split()
    assert cluster_wide == [], cluster_wide
    # kept on purpose (docs/kubernetes.md, "Uninstall"): the identity Secret,
    # the operator's state PVC and the CRD. Remove them as documented.
    kept = kubectl("get", "secret,pvc", "-n", SYSTEM_NS, "-o", "name").stdout.split()
    assert f"secret/{RELEASE}-nats-identity" in kept
    kubectl("delete", "secret", f"{RELEASE}-nats-identity", "-n", SYSTEM_NS)
    kubectl("delete", "pvc", "--all", "-n", SYSTEM_NS, "--wait", "--timeout=120s")
    kubectl("delete", "namespace", SYSTEM_NS, PLUGINS_NS, "--wait", "--timeout=300s")
