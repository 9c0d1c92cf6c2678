"""What the operator creates for a plugin: every object validates against the
Kubernetes schemas (strict: unknown fields are errors) and carries the
security properties the design promises."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from precinct.cli import app
from precinct.k8s import render as r
from precinct.spec.load import BotPluginResource
from precinct.spec.model import Permission, load_botplugin_spec, load_manifest

KUBERNETES_VERSION = "1.33.0"
ROOT = Path(__file__).resolve().parents[1]
DIGEST_IMAGE = "registry.example/dice@sha256:" + "b" * 64


def resource(permissions: list[str] = (), *, image: bool = True, **spec: Any) -> BotPluginResource:
    fields: dict[str, Any] = {"version": "1.2.3", "permissions": list(permissions),
                              "commands": {"roll": "dice.roll"}, "config": {"sides": 6}, **spec}
    if image:
        fields["image"] = DIGEST_IMAGE
    else:
        fields["bundle"] = {"name": "dice", "version": "1.2.3"}
    return BotPluginResource(namespace="bots", name="dice", spec=load_botplugin_spec(fields))


MATRIX = [
    pytest.param([], True, None, id="no-permissions-image"),
    pytest.param([], False, None, id="no-permissions-bundle"),
    *[pytest.param([p.value], True, None, id=f"{p.value}-image") for p in Permission],
    *[pytest.param([p.value], False, None, id=f"{p.value}-bundle") for p in Permission],
    pytest.param([p.value for p in Permission], False, "gvisor", id="everything-bundle-runtimeclass"),
    pytest.param(["http_requests"], True, "kata", id="http-image-runtimeclass"),
]


def rendered(permissions: list[str], image: bool, runtime_class: str | None, **spec: Any) -> dict[str, dict[str, Any]]:
    settings = replace(r.Settings(), runtime_class_name=runtime_class, cluster_cidrs=("10.96.0.0/12", "10.244.0.0/16"))
    objs = r.render(resource(permissions, image=image, **spec), settings, creds="-----BEGIN NATS USER JWT-----",
                    owner_uid="0f6e7a52-1111-2222-3333-444455556666")
    return {o["kind"]: o for o in objs}


def pod_spec(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objs["Deployment"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("permissions, image, runtime_class", MATRIX)
def test_every_object_validates_strictly(permissions: list[str], image: bool, runtime_class: str | None) -> None:
    objs = rendered(permissions, image, runtime_class)
    assert list(objs) == ["ServiceAccount", "Secret", "ConfigMap", "NetworkPolicy", "Deployment"]
    for obj in objs.values():
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("permissions, image, runtime_class", MATRIX)
def test_pod_security_restricted(permissions: list[str], image: bool, runtime_class: str | None) -> None:
    objs = rendered(permissions, image, runtime_class)
    spec = pod_spec(objs)
    assert objs["ServiceAccount"]["automountServiceAccountToken"] is False
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "dice"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] > 0 and spec["securityContext"]["runAsGroup"] > 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in spec and "hostPID" not in spec and "hostIPC" not in spec
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert c["resources"]["limits"] == c["resources"]["requests"]
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    for volume in spec["volumes"]:
        assert set(volume) & {"emptyDir", "secret", "configMap"}, volume     # no hostPath, no PVC
    assert spec.get("runtimeClassName") == runtime_class


def test_limits_come_from_the_spec() -> None:
    objs = rendered([], True, None, resources={"cpuLimit": "250m", "memoryLimit": "100M", "diskLimit": "20Mi"})
    limits = pod_spec(objs)["containers"][0]["resources"]["limits"]
    assert limits["cpu"] == "250m" and limits["memory"] == "100000000"
    dep = objs["Deployment"]["spec"]
    assert dep["replicas"] == 1
    assert dep["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("permissions, expected", [
    ([], "none"), (["file_system_read"], "read"), (["file_system_write"], "write"),
    (["database_write", "http_requests"], "none"),
])
def test_data_dir_only_with_file_system_permissions(permissions: list[str], expected: str) -> None:
    objs = rendered(permissions, True, None, resources={"diskLimit": "20Mi"})
    spec = pod_spec(objs)
    data = [v for v in spec["volumes"] if v["name"] == "data"]
    mounts = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "data"]
    if expected == "none":
        assert not data and not mounts
    else:
        assert data[0]["emptyDir"]["sizeLimit"] == str(20 * 2**20)
        assert mounts[0]["readOnly"] is (expected == "read")
    tmp = [v for v in spec["volumes"] if v["name"] == "tmp"][0]
    assert tmp["emptyDir"]["sizeLimit"]


def _egress(objs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    policy = objs["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == []
    assert policy["podSelector"]["matchLabels"] == {r.PLUGIN_LABEL: "bots-dice"}
    return policy["egress"]


@pytest.mark.parametrize("image", [True, False])
def test_network_policy_without_http_allows_dns_and_nats_only(image: bool) -> None:
    egress = _egress(rendered(["database_write"], image, None))
    peers = [rule["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for rule in egress]
    ports = [sorted(p["port"] for p in rule["ports"]) for rule in egress]
    expected = [("kube-system", [53, 53]), ("precinct-system", [4222])]
    if not image:   # a bundle is fetched from the in-cluster index, never the internet
        expected.append(("precinct-system", [8080]))
    assert list(zip(peers, ports)) == expected
    assert not any("ipBlock" in peer for rule in egress for peer in rule["to"])


def test_network_policy_http_requests_reaches_public_addresses_only() -> None:
    egress = _egress(rendered(["http_requests"], True, None))
    http = egress[-1]
    assert sorted(p["port"] for p in http["ports"]) == [80, 443]
    blocks = {b["ipBlock"]["cidr"]: b["ipBlock"]["except"] for b in http["to"]}
    assert set(blocks) == {"0.0.0.0/0", "::/0"}
    v4 = blocks["0.0.0.0/0"]
    assert "169.254.169.254/32" in v4
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
                 "10.96.0.0/12", "10.244.0.0/16", "100.64.0.0/10"):
        assert cidr in v4
    for cidr in ("::1/128", "fc00::/7", "fe80::/10"):
        assert cidr in blocks["::/0"]
    # Each exception is inside its block (the API server rejects anything else).
    for block, excepts in blocks.items():
        for cidr in excepts:
            assert ipaddress.ip_network(cidr).subnet_of(ipaddress.ip_network(block))


def test_labels_env_and_config_hash() -> None:
    objs = rendered(["read_messages"], True, None)
    template = objs["Deployment"]["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert labels[r.PLUGIN_LABEL] == "bots-dice" and labels["app.kubernetes.io/part-of"] == "precinct"
    assert objs["Deployment"]["spec"]["selector"]["matchLabels"] == {r.PLUGIN_LABEL: "bots-dice"}
    env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
    assert env["PRECINCT_PLUGIN_ID"] == "bots-dice"
    assert json.loads(env["PRECINCT_COMMANDS"]) == ["rosey.command.dice.roll"]
    assert env["PRECINCT_CREDS"].endswith("/nats.creds") and env["PRECINCT_CONFIG"].endswith("/config.json")
    for obj in objs.values():
        assert obj["metadata"]["ownerReferences"][0]["kind"] == "BotPlugin"
    # The hash moves with the config (and the ConfigMap's name with it), not otherwise.
    again = rendered(["read_messages"], True, None)
    other = rendered(["read_messages"], True, None, config={"sides": 20})
    h = r.template_hash(template)
    assert h == r.template_hash(again["Deployment"]["spec"]["template"])
    assert h != r.template_hash(other["Deployment"]["spec"]["template"])
    assert objs["ConfigMap"]["metadata"]["name"] != other["ConfigMap"]["metadata"]["name"]
    assert objs["ConfigMap"]["immutable"] is True


def test_bundle_runs_the_generic_runner_with_a_fetching_init_container() -> None:
    objs = rendered([], False, None)
    spec = pod_spec(objs)
    assert spec["containers"][0]["image"] == r.Settings().runner_image
    init = spec["initContainers"][0]
    assert "dice" in init["args"] and "1.2.3" in init["args"] and r.Settings().index_url in init["args"]
    assert {m["name"] for m in init["volumeMounts"]} == {"plugin", "tmp"}
    image_spec = pod_spec(rendered([], True, None))
    assert image_spec["containers"][0]["image"] == DIGEST_IMAGE and "initContainers" not in image_spec


def test_suspend_and_rejected_scale_to_zero() -> None:
    assert rendered([], True, None, suspend=True)["Deployment"]["spec"]["replicas"] == 0
    objs = r.render(resource([]), r.Settings(), creds="x", running=False)
    assert objs[-1]["spec"]["replicas"] == 0


# -- precinct render ---------------------------------------------------------------


def test_render_cli_prints_what_the_operator_applies(tmp_path: Path) -> None:
    manifest = ROOT / "plugins" / "dice-roller"
    out = CliRunner().invoke(app, ["render", str(manifest)])
    assert out.exit_code == 0, out.output
    docs = list(yaml.safe_load_all(out.stdout))
    loaded = load_manifest(yaml.safe_load((manifest / "plugin.yaml").read_text()))
    expected = r.render(r.resource_from_manifest(loaded), r.Settings(), creds=r.CREDS_PLACEHOLDER)
    assert docs == expected
    secret = docs[1]
    assert secret["stringData"] == {r.CREDS_KEY: r.CREDS_PLACEHOLDER}
    # The placeholder appears nowhere else.
    assert out.stdout.count(r.CREDS_PLACEHOLDER) == 1
    for obj in docs:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)

    as_json = CliRunner().invoke(app, ["render", str(manifest), "--json", "--runtime-class", "gvisor"])
    assert as_json.exit_code == 0
    objs = json.loads(as_json.stdout)
    assert objs[-1]["spec"]["template"]["spec"]["runtimeClassName"] == "gvisor"


def test_render_cli_reads_botplugin_files(tmp_path: Path) -> None:
    path = tmp_path / "bp.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "precinct.dev/v1alpha1", "kind": "BotPlugin",
                                    "metadata": {"name": "dice", "namespace": "bots"},
                                    "spec": {"version": "1.0.0", "image": DIGEST_IMAGE}}))
    out = CliRunner().invoke(app, ["render", str(path), "--json"])
    assert out.exit_code == 0, out.output
    objs = json.loads(out.stdout)
    assert {o["metadata"]["namespace"] for o in objs} == {"bots"}
    assert objs[-1]["spec"]["template"]["spec"]["containers"][0]["image"] == DIGEST_IMAGE

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    out = CliRunner().invoke(app, ["render", str(bad)])
    assert out.exit_code == 1


def test_render_cli_warns_about_an_observer_on_stderr(tmp_path: Path) -> None:
    path = tmp_path / "bp.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "precinct.dev/v1alpha1", "kind": "BotPlugin",
                                    "metadata": {"name": "inspector", "namespace": "bots"},
                                    "spec": {"version": "1.0.0", "image": DIGEST_IMAGE,
                                             "permissions": ["observe_chat_and_events"]}}))
    out = CliRunner().invoke(app, ["render", str(path), "--json"])
    assert out.exit_code == 0, out.output
    assert [o["kind"] for o in json.loads(out.stdout)][-1] == "Deployment"   # stdout stays clean JSON
    assert out.stderr.startswith("warning: bots-inspector is granted observe_chat_and_events: it reads every chat")


def test_settings_file_configures_render_and_operator(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({
        "nats_namespace": "messaging", "nats_pod_labels": {"app": "nats"}, "nats_port": 4333,
        "nats_url": "nats://nats.messaging.svc:4333", "cluster_cidrs": ["100.100.0.0/16"],
        "runtime_class_name": "gvisor"}))
    out = CliRunner().invoke(app, ["render", str(ROOT / "plugins" / "url-title"), "--json", "--settings", str(settings)])
    assert out.exit_code == 0, out.output
    objs = {o["kind"]: o for o in json.loads(out.stdout)}
    nats_rule = objs["NetworkPolicy"]["spec"]["egress"][1]
    assert nats_rule["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "messaging"}
    assert nats_rule["ports"] == [{"protocol": "TCP", "port": 4333}]
    spec = objs["Deployment"]["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "gvisor"
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["PRECINCT_SERVER"] == "nats://nats.messaging.svc:4333"


@pytest.mark.parametrize("data, message", [
    ({"nats_prot": 1}, "unknown settings nats_prot"),
    ({"nats_port": "4222"}, "nats_port must be an integer"),
    ({"cluster_cidrs": ["10.0.0.1/8"]}, "host bits set"),
    ({"cluster_cidrs": "10.0.0.0/8"}, "must be a list"),
    ({"run_as_user": 0}, "non-root"),
])
def test_bad_settings_are_refused(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        r.load_settings(data)
