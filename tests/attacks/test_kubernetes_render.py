"""The same attack plugins on Kubernetes: `precinct render` prints what the
operator applies for each, and each test names the manifest property that
stops the attack there (the cluster enforces it: kubelet cgroups, the CNI's
NetworkPolicy, the container runtime's seccomp profile, the API server's
token mounting). What does not apply on Kubernetes, or is stopped by a
different layer, is said in docs/threat-model.md:

* fork and thread bombs: pods carry no pids limit of their own; the
  kubelet's `podPidsLimit` (a node setting) is what stops them;
* the bus attacks (flood, spoofing, eavesdropping, KV forgery, oversized
  payloads, forged and undeclared calls, call storms) are stopped by the NATS account JWTs and the gateway, which are
  the same code in both runtimes (tests/test_nats_jwt.py, the single-host
  attack tests; tests/test_calls.py calls with Kubernetes-style ids);
* a command claimed twice is refused by the operator's claim check
  (tests/test_operator.py).
"""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path

import pytest
import yaml

from runtime_support import precinct

PLUGINS = Path(__file__).parent / "plugins"


@functools.lru_cache(maxsize=None)
def render(name: str) -> dict[str, dict]:
    done = precinct("render", str(PLUGINS / name), "--namespace", "attacks")
    assert done.returncode == 0, done.stderr
    return {obj["kind"]: obj for obj in yaml.safe_load_all(done.stdout) if obj}


def pod(objs: dict[str, dict]) -> dict:
    return objs["Deployment"]["spec"]["template"]["spec"]


def plugin_container(objs: dict[str, dict]) -> dict:
    return next(c for c in pod(objs)["containers"] if c["name"] == "plugin")


def _bytes(quantity: str) -> int:
    return int(str(quantity))


ALL = sorted(p.name for p in PLUGINS.iterdir() if (p / "plugin.yaml").exists())


def test_memory_bomb_meets_the_memory_limit():
    limits = plugin_container(render("membomb"))["resources"]["limits"]
    assert _bytes(limits["memory"]) == 48 * 2**20                 # the kubelet's cgroup OOM-kills past it


def test_cpu_spin_meets_the_cpu_limit():
    limits = plugin_container(render("cpuspin"))["resources"]["limits"]
    assert limits["cpu"] == "100m"                                 # CFS quota: throttled, never more


def test_filling_its_data_dir_meets_the_volume_size_limits():
    objs = render("diskfill")
    volumes = {v["name"]: v for v in pod(objs)["volumes"]}
    assert _bytes(volumes["data"]["emptyDir"]["sizeLimit"]) == 8 * 2**20     # the kubelet evicts past it
    container = plugin_container(objs)
    assert _bytes(container["resources"]["limits"]["ephemeral-storage"]) >= 8 * 2**20
    assert container["securityContext"]["readOnlyRootFilesystem"] is True    # nowhere else to write


@pytest.mark.parametrize("name", ["writer", "snoop", "membomb"])
def test_writing_outside_its_folder_meets_a_read_only_root(name):
    objs = render(name)
    sc = plugin_container(objs)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in plugin_container(objs)["volumeMounts"]}
    writable = {p for p, m in mounts.items() if not m.get("readOnly")}
    # only scratch /tmp, and /data when the plugin holds a file_system grant
    assert writable <= {"/tmp", "/data"}, writable
    if name != "writer":
        assert "/data" not in writable


@pytest.mark.parametrize("name", ALL)
def test_no_escape_hatches_in_any_pod(name):
    """Runs as non-root, no privilege escalation, all capabilities dropped,
    seccomp RuntimeDefault (ptrace of others, raw sockets, new namespaces),
    no service account token (no API access), no host namespaces or hostPath,
    own process namespace (cannot signal or trace the sidecars' or others'
    processes), no service env links."""
    objs = render(name)
    spec = pod(objs)
    assert spec["automountServiceAccountToken"] is False
    assert objs["ServiceAccount"]["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec.get("enableServiceLinks") is False
    for key in ("hostPID", "hostIPC", "hostNetwork", "shareProcessNamespace"):
        assert not spec.get(key), key
    assert not [v for v in spec["volumes"] if "hostPath" in v], spec["volumes"]
    for container in spec["containers"] + spec.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
        assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 1) != 0
        assert sc["readOnlyRootFilesystem"] is True
    # credentials: only its own Secret, mounted read-only, readable by its own uid only
    creds = [v for v in spec["volumes"] if "secret" in v]
    assert [v["secret"]["secretName"] for v in creds] == [f"{name}-nats"]
    assert creds[0]["secret"]["defaultMode"] == 0o440


@pytest.mark.parametrize("name", ["netout", "udpexfil", "snoop", "signaller"])
def test_connecting_out_meets_the_network_policy(name):
    """Default deny in and out; out only to NATS (TCP 4222), cluster DNS
    (53) and the bundle index: no other port, no host, no internet, no
    UDP except to kube-dns."""
    policy = render(name)["NetworkPolicy"]["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and policy["ingress"] == []
    for rule in policy["egress"]:
        assert "ipBlock" not in str(rule), rule                    # no address range at all without http_requests
        peers = rule["to"]
        assert peers and all("podSelector" in p and "namespaceSelector" in p for p in peers), rule
        ports = {(p["protocol"], p["port"]) for p in rule["ports"]}
        apps = {p["podSelector"]["matchLabels"].get("app.kubernetes.io/name") or p["podSelector"]["matchLabels"].get("k8s-app")
                for p in peers}
        if ("UDP", 53) in ports:
            assert apps == {"kube-dns"}, rule                       # UDP reaches the cluster DNS only
        else:
            assert all(proto == "TCP" for proto, _ in ports), rule


def test_http_requests_would_still_not_reach_private_addresses():
    """For contrast: the one grant that opens egress opens public addresses only."""
    done = precinct("render", str(Path(__file__).parents[2] / "plugins" / "url-title"), "--namespace", "attacks")
    assert done.returncode == 0, done.stderr
    policy = next(o for o in yaml.safe_load_all(done.stdout) if o and o["kind"] == "NetworkPolicy")["spec"]
    blocks = [p["ipBlock"] for r in policy["egress"] for p in r["to"] if "ipBlock" in p]
    assert blocks
    for block in blocks:
        excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
        for private in ("10.0.0.0/8", "192.168.0.0/16", "169.254.169.254/32", "127.0.0.0/8"):
            net = ipaddress.ip_network(private)
            if net.version == ipaddress.ip_network(block["cidr"]).version:
                assert any(net.subnet_of(e) for e in excepted), (private, block)
