"""BotPlugin -> the Kubernetes objects that run it. Pure: no I/O, no clock.

The operator and `precinct render` call the same `render()`, so what the CLI
prints is what the operator applies. The only inputs that come from the
cluster are passed in: the owner's uid and the NATS credentials text (minted
by the operator; `precinct render` shows a placeholder there).

Each BotPlugin owns five objects, all named after it and labelled
`precinct.dev/plugin=<plugin id>` (the join key for metrics and indexes):

  ServiceAccount   no API token is mounted: plugins never talk to Kubernetes
  Secret           `<name>-nats`: the plugin's NATS user credentials only
  ConfigMap        `<name>-config-<hash>`: its config, immutable and named by
                   content, so a rolled-back template points at the config it
                   was tested with
  NetworkPolicy    default deny; egress to cluster DNS and NATS (plus the
                   bundle index for bundles, plus public 80/443 for
                   http_requests, never private ranges or the metadata IP)
  Deployment       one replica, maxUnavailable 0, Pod Security "restricted"

The pod template carries `precinct.dev/config-hash`: a hash of everything
that defines a revision (pod spec and config). It changes exactly when the
plugin must restart, and `kubectl rollout restart`'s own annotation
(`kubectl.kubernetes.io/restartedAt`) is a different key we never set, so
server-side apply leaves it alone.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from ..plan.sandbox import DENIED_DESTINATIONS, SandboxPlan, compile_plan
from ..spec.load import BotPluginResource
from ..spec.model import BotPluginSpec, Manifest
from ..spec.ownership import Plugin
from ..wire.kubernetes import API_GROUP, API_VERSION, BOTPLUGIN_LABEL, CONFIG_HASH, KIND, PLUGIN_LABEL

CREDS_PLACEHOLDER = "<minted by the operator>"
UID_PLACEHOLDER = "<uid of the BotPlugin>"

CREDS_KEY = "nats.creds"
CONFIG_KEY = "config.json"
CONTAINER = "plugin"
FETCH_CONTAINER = "fetch-bundle"

PLUGIN_DIR = "/plugin"
DATA_DIR = "/data"
CREDS_DIR = "/var/run/precinct/nats"
CONFIG_DIR = "/etc/precinct/config"
METADATA_IP = "169.254.169.254/32"


@dataclass(frozen=True)
class Settings:
    """What the cluster admin chooses (operator flags or Helm values)."""

    nats_url: str = "nats://nats.precinct-system.svc:4222"
    nats_namespace: str = "precinct-system"
    nats_pod_labels: dict[str, str] = field(default_factory=lambda: {"app.kubernetes.io/name": "nats"})
    nats_port: int = 4222
    dns_namespace: str = "kube-system"
    dns_pod_labels: dict[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})
    # The project's generic runner, for bundles. Pin it by digest in production.
    runner_image: str = "ghcr.io/precinct-dev/precinct-runner:0.1.0"
    # Fetches and verifies a bundle from the in-cluster index (needs the
    # control plane's TUF client, so it runs in the operator's image).
    fetcher_image: str = "ghcr.io/precinct-dev/precinct-operator:0.1.0"
    fetch_command: tuple[str, ...] = ("precinct", "plugin", "fetch")
    index_url: str = "http://precinct-index.precinct-system.svc:8080"
    index_namespace: str = "precinct-system"
    index_pod_labels: dict[str, str] = field(default_factory=lambda: {"app.kubernetes.io/name": "precinct-index"})
    index_port: int = 8080
    # The index's pinned TUF root (the JSON of its 1.root.json). The operator
    # verifies every bundle release against it before any Pod starts (a
    # BotPlugin with a bundle and no root is refused: SignatureInvalid), and
    # the fetch init container gets it as $PRECINCT_INDEX_ROOT_JSON.
    index_root_json: str = ""
    # Pod and Service CIDRs: never reachable through the http_requests rule.
    cluster_cidrs: tuple[str, ...] = ("10.0.0.0/8",)
    runtime_class_name: str | None = None
    progress_deadline_seconds: int = 120
    min_ready_seconds: int = 10
    run_as_user: int = 10001
    tmp_size: str = "16Mi"
    fetch_cpu: str = "200m"
    fetch_memory: str = "128Mi"
    # The suspend ladder (k8s/ladder.py), the same defaults as `precinct up`:
    # strikes are forgotten after the window, events within the cooldown of a
    # strike join it, the suspend_after-th strike suspends (0: never).
    violation_window_seconds: int = 600
    violation_cooldown_seconds: int = 10
    suspend_after: int = 3

    def __post_init__(self) -> None:
        for cidr in self.cluster_cidrs:
            ipaddress.ip_network(cidr, strict=True)   # ValueError with the bad CIDR in it
        if self.run_as_user <= 0:
            raise ValueError("run_as_user must be a non-root uid (> 0)")
        if self.violation_window_seconds <= 0 or self.violation_cooldown_seconds < 0 or self.suspend_after < 0:
            raise ValueError("violation_window_seconds must be > 0; violation_cooldown_seconds and "
                             "suspend_after must be >= 0")


def load_settings(data: dict[str, Any] | None, base: Settings | None = None) -> Settings:
    """Settings from a YAML/JSON mapping (snake_case field names, e.g. from a
    ConfigMap the Helm chart mounts); unknown keys are errors."""
    from dataclasses import fields as dc_fields, replace as dc_replace

    base = base or Settings()
    if not data:
        return base
    if not isinstance(data, dict):
        raise ValueError("settings must be a mapping of field names to values")
    known = {f.name: f for f in dc_fields(Settings)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown settings {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = {}
    for key, value in data.items():
        current = getattr(base, key)
        if isinstance(current, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key} must be a list of strings")
            value = tuple(value)
        elif isinstance(current, dict):
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ValueError(f"{key} must be a mapping of strings")
        elif isinstance(current, bool) or (isinstance(current, int) and not isinstance(value, int)):
            raise ValueError(f"{key} must be an integer")
        elif isinstance(current, str) and not isinstance(value, str):
            raise ValueError(f"{key} must be a string")
        values[key] = value
    return dc_replace(base, **values)


@dataclass(frozen=True)
class Owner:
    name: str
    namespace: str
    uid: str = UID_PLACEHOLDER


# -- inputs -------------------------------------------------------------------


def resource_from_manifest(manifest: Manifest, namespace: str = "default") -> BotPluginResource:
    """A plugin.yaml as the BotPlugin `precinct plugin install` would create:
    same fields, named after the plugin id, run from a bundle of its version."""
    fields = manifest.without_name().model_dump(by_alias=True, exclude_none=True, mode="json")
    fields["bundle"] = {"name": manifest.id, "version": manifest.version}
    spec = BotPluginSpec.model_validate(fields, by_alias=True, by_name=False)
    return BotPluginResource(namespace=namespace, name=manifest.id, spec=spec)


def plan_for(resource: BotPluginResource) -> SandboxPlan:
    return compile_plan(Plugin(resource.id, resource.spec))


# -- small helpers ------------------------------------------------------------


def digest(value: Any, length: int = 16) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def labels(resource: BotPluginResource) -> dict[str, str]:
    version = resource.spec.version
    out = {
        "app.kubernetes.io/name": resource.name,
        "app.kubernetes.io/instance": resource.id,
        "app.kubernetes.io/component": "plugin",
        "app.kubernetes.io/part-of": "precinct",
        "app.kubernetes.io/managed-by": "precinct-operator",
        PLUGIN_LABEL: resource.id,
        BOTPLUGIN_LABEL: resource.name,
    }
    if len(version) <= 63 and version[-1].isalnum():
        out["app.kubernetes.io/version"] = version
    return out


def selector(resource: BotPluginResource) -> dict[str, str]:
    return {PLUGIN_LABEL: resource.id}


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(resource: BotPluginResource, owner: Owner, name: str, **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": resource.namespace, "labels": labels(resource),
            "ownerReferences": [owner_reference(owner)]}
    meta.update(extra)
    return meta


def secret_name(name: str) -> str:
    return f"{name}-nats"


def config_map_name(name: str, config: dict[str, Any]) -> str:
    return f"{name}-config-{digest(config, 10)}"


def _bytes(n: int) -> str:
    return str(n)


def _tmp_bytes(settings: Settings) -> int:
    from ..spec.quantity import to_bytes

    return to_bytes(settings.tmp_size)


# -- the objects --------------------------------------------------------------


def service_account(resource: BotPluginResource, owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(resource, owner, resource.name),
        "automountServiceAccountToken": False,
    }


def secret(resource: BotPluginResource, owner: Owner, creds: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(resource, owner, secret_name(resource.name)),
        "type": "Opaque",
        "stringData": {CREDS_KEY: creds},
    }


def config_map(resource: BotPluginResource, owner: Owner) -> dict[str, Any]:
    config = resource.spec.config
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(resource, owner, config_map_name(resource.name, config)),
        "immutable": True,
        "data": {CONFIG_KEY: json.dumps(config, sort_keys=True, indent=2, ensure_ascii=False) + "\n"},
    }


def _peer(namespace: str, pod_labels: dict[str, str]) -> dict[str, Any]:
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "podSelector": {"matchLabels": dict(pod_labels)},
    }


def public_ip_blocks(settings: Settings) -> list[dict[str, Any]]:
    """0.0.0.0/0 and ::/0 minus every private, loopback, link-local (so the
    cloud metadata address) and cluster range."""
    v4: list[str] = []
    v6: list[str] = []
    for cidr in (*DENIED_DESTINATIONS, METADATA_IP, *settings.cluster_cidrs):
        net = ipaddress.ip_network(cidr)
        bucket = v4 if net.version == 4 else v6
        if str(net) not in bucket and net.prefixlen > 0:
            bucket.append(str(net))
    return [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": v4}},
        {"ipBlock": {"cidr": "::/0", "except": v6}},
    ]


def network_policy(resource: BotPluginResource, owner: Owner, plan: SandboxPlan, settings: Settings) -> dict[str, Any]:
    egress: list[dict[str, Any]] = [
        {"to": [_peer(settings.dns_namespace, settings.dns_pod_labels)],
         "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {"to": [_peer(settings.nats_namespace, settings.nats_pod_labels)],
         "ports": [{"protocol": "TCP", "port": settings.nats_port}]},
    ]
    if resource.spec.bundle is not None:
        egress.append({"to": [_peer(settings.index_namespace, settings.index_pod_labels)],
                       "ports": [{"protocol": "TCP", "port": settings.index_port}]})
    if "http-egress-public" in plan.fence.network:
        egress.append({"to": public_ip_blocks(settings),
                       "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 443}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(resource, owner, resource.name),
        "spec": {
            "podSelector": {"matchLabels": selector(resource)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }


def _container_security(settings: Settings) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_user,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": f"PRECINCT_{name}", "value": value}


def pod_template(resource: BotPluginResource, plan: SandboxPlan, settings: Settings) -> dict[str, Any]:
    spec = resource.spec
    limits = plan.limits
    data_dir = plan.fence.data_dir
    tmp = _tmp_bytes(settings)
    ephemeral = tmp + (limits.disk_bytes if data_dir != "none" else 0)
    if spec.bundle is not None:
        ephemeral += limits.disk_bytes      # the unpacked bundle
    resources = {
        "cpu": f"{limits.cpu_millicores}m",
        "memory": _bytes(limits.memory_bytes),
        "ephemeral-storage": _bytes(ephemeral),
    }
    env = [
        _env("PLUGIN_ID", plan.id),
        {"name": "PRECINCT_INSTANCE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        _env("PLUGIN_DIR", PLUGIN_DIR),
        _env("SERVER", settings.nats_url),
        _env("CREDS", f"{CREDS_DIR}/{CREDS_KEY}"),
        _env("CONFIG", f"{CONFIG_DIR}/{CONFIG_KEY}"),
        _env("COMMANDS", json.dumps(plan.command_subjects())),
    ]
    if plan.exports:
        env.append(_env("EXPORTS", json.dumps(list(plan.exports))))
    if spec.entrypoint:
        env.append(_env("ENTRYPOINT", spec.entrypoint))
    if data_dir != "none":
        env.append(_env("DATA_DIR", DATA_DIR))
    env += [
        {"name": "HOME", "value": "/tmp"},  # nosec B108 - /tmp in the Pod is its own size-limited emptyDir, not a shared host dir
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    mounts = [
        {"name": "nats-creds", "mountPath": CREDS_DIR, "readOnly": True},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},  # nosec B108 - the Pod's own size-limited emptyDir
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "nats-creds", "secret": {"secretName": secret_name(resource.name), "defaultMode": 0o440}},
        {"name": "config", "configMap": {"name": config_map_name(resource.name, spec.config), "defaultMode": 0o444}},
        {"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size}},
    ]
    if data_dir != "none":
        mounts.append({"name": "data", "mountPath": DATA_DIR, "readOnly": data_dir == "read"})
        volumes.append({"name": "data", "emptyDir": {"sizeLimit": _bytes(limits.disk_bytes)}})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or settings.runner_image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "resources": {"limits": resources, "requests": dict(resources)},
        "securityContext": _container_security(settings),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod: dict[str, Any] = {
        "serviceAccountName": resource.name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": 15,
        "containers": [container],
        "volumes": volumes,
    }
    if spec.bundle is not None:
        mounts.append({"name": "plugin", "mountPath": PLUGIN_DIR, "readOnly": True})
        volumes.append({"name": "plugin", "emptyDir": {"sizeLimit": _bytes(limits.disk_bytes)}})
        fetch_resources = {"cpu": settings.fetch_cpu, "memory": settings.fetch_memory,
                           "ephemeral-storage": _bytes(limits.disk_bytes + tmp)}
        pod["initContainers"] = [{
            "name": FETCH_CONTAINER,
            "image": settings.fetcher_image,
            "imagePullPolicy": "IfNotPresent",
            "command": list(settings.fetch_command),
            "args": ["--index", settings.index_url, spec.bundle.name, spec.bundle.version, "--dest", PLUGIN_DIR],
            "env": [{"name": "HOME", "value": "/tmp"}] + (  # nosec B108 - the Pod's own size-limited emptyDir
                [{"name": "PRECINCT_INDEX_ROOT_JSON", "value": settings.index_root_json}]
                if settings.index_root_json else []),
            "resources": {"limits": fetch_resources, "requests": dict(fetch_resources)},
            "securityContext": _container_security(settings),
            "volumeMounts": [{"name": "plugin", "mountPath": PLUGIN_DIR}, {"name": "tmp", "mountPath": "/tmp"}],  # nosec B108 - the Pod's own size-limited emptyDir
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }]
    if settings.runtime_class_name:
        pod["runtimeClassName"] = settings.runtime_class_name
    template = {"metadata": {"labels": labels(resource)}, "spec": pod}
    config_hash = digest({"pod": pod, "config": spec.config})
    template["metadata"]["annotations"] = {CONFIG_HASH: config_hash}
    return template


def template_hash(template: dict[str, Any]) -> str:
    return template.get("metadata", {}).get("annotations", {}).get(CONFIG_HASH, "")


def deployment(
    resource: BotPluginResource, owner: Owner, template: dict[str, Any], settings: Settings, *, running: bool = True,
) -> dict[str, Any]:
    replicas = 1 if running and not resource.spec.suspend else 0
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(resource, owner, resource.name),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(resource)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "progressDeadlineSeconds": settings.progress_deadline_seconds,
            "minReadySeconds": settings.min_ready_seconds,
            "revisionHistoryLimit": 3,
            "template": template,
        },
    }


def render(
    resource: BotPluginResource,
    settings: Settings,
    *,
    creds: str,
    owner_uid: str = UID_PLACEHOLDER,
    template: dict[str, Any] | None = None,
    running: bool = True,
) -> list[dict[str, Any]]:
    """Every object the operator applies for `resource`, in apply order.

    `template` overrides the Deployment's pod template (a rollback to the last
    good one); `running=False` scales to zero (a plugin that lost a claim)."""
    owner = Owner(resource.name, resource.namespace, owner_uid)
    plan = plan_for(resource)
    return [
        service_account(resource, owner),
        secret(resource, owner, creds),
        config_map(resource, owner),
        network_policy(resource, owner, plan, settings),
        deployment(resource, owner, template or pod_template(resource, plan, settings), settings, running=running),
    ]
