"""e2e fixtures: a real cluster (KUBECONFIG), the chart installed, images built.

Everything here needs a reachable cluster. Without one every test is
skipped with the reason printed (`pytest e2e -rs`). These tests are not
collected by `make test` (pyproject's testpaths = ["tests"]).

Environment:
  KUBECONFIG                 the cluster (kind: `kind create cluster --config e2e/kind-config.yaml`)
  PRECINCT_E2E_REGISTRY      registry the nodes pull from (default localhost:5001, see kind-config.yaml)
  PRECINCT_E2E_KEEP=1        leave the release and namespaces for inspection
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "precinct"
RELEASE = "precinct-e2e"
SYSTEM_NS = "precinct-e2e"
PLUGINS_NS = "bots-e2e"
REGISTRY = os.environ.get("PRECINCT_E2E_REGISTRY", "localhost:5001")


def _tool(name: str) -> str | None:
    for candidate in (shutil.which(name), ROOT / ".venv" / "helm" / name):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def cluster_problem() -> str | None:
    """Why the e2e tests cannot run here, or None."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        return "KUBECONFIG is not set: point it at a cluster (e.g. kind with e2e/kind-config.yaml) to run e2e"
    if not all(Path(p).is_file() for p in kubeconfig.split(os.pathsep) if p):
        return f"KUBECONFIG={kubeconfig} does not exist"
    kubectl = _tool("kubectl")
    if kubectl is None:
        return "kubectl not found on PATH or in .venv/helm/"
    try:
        done = subprocess.run([kubectl, "get", "--raw=/readyz", "--request-timeout=5s"],
                              capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the cluster in KUBECONFIG is not reachable: {exc}"
    if done.returncode != 0:
        return f"the cluster in KUBECONFIG is not reachable: {done.stderr.strip()[:300]}"
    if _tool("helm") is None:
        return "helm not found on PATH or in .venv/helm/ (`.ci/helm --install`)"
    docker = shutil.which("docker")
    if docker is None:
        return "docker not found: the e2e tests build the operator, runner and plugin images"
    try:   # a binary alone is not enough: the daemon must answer
        info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no Docker daemon answers (`docker info`): {exc}"
    if info.returncode != 0 or not info.stdout.strip():
        return f"no Docker daemon answers (`docker info`): {(info.stderr or info.stdout).strip()[:300]}"
    return None


_PROBLEM: list[str | None] = []


def problem() -> str | None:
    if not _PROBLEM:
        _PROBLEM.append(cluster_problem())
    return _PROBLEM[0]


def pytest_report_header(config: pytest.Config) -> str:
    reason = problem()
    return f"precinct e2e: SKIPPED, {reason}" if reason else "precinct e2e: cluster reachable"


@pytest.fixture(scope="session", autouse=True)
def cluster() -> None:
    reason = problem()
    if reason:
        print(f"\nprecinct e2e skipped: {reason}")
        pytest.skip(reason)


# -- helpers --------------------------------------------------------------------------


def run(*args: str, check: bool = True, timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def kubectl(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    tool = _tool("kubectl")
    assert tool is not None
    return run(tool, *args, **kw)


def helm(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    tool = _tool("helm")
    assert tool is not None
    return run(tool, *args, **kw)


def get_json(*args: str) -> dict[str, Any]:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def condition(bp: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (bp.get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return {}


def wait_for(predicate, timeout: float, what: str, interval: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def botplugin(name: str) -> dict[str, Any]:
    return get_json("botplugin", name, "-n", PLUGINS_NS)


def wait_condition(name: str, type_: str, status: str, reason: str | None = None, timeout: float = 240) -> dict:
    def check():
        c = condition(botplugin(name), type_)
        return c if c.get("status") == status and (reason is None or c.get("reason", "").startswith(reason)) else None
    return wait_for(check, timeout, f"{name}: {type_}={status} {reason or ''}")


# -- images ---------------------------------------------------------------------------


def _build_and_push(tag: str, *build_args: str) -> str:
    run("docker", "build", "-t", tag, *build_args, timeout=1800)
    run("docker", "push", tag, timeout=600)
    digest = run("docker", "inspect", "--format", "{{index .RepoDigests 0}}", tag).stdout.strip()
    assert "@sha256:" in digest, digest
    return f"{tag.rsplit(':', 1)[0]}@{digest.split('@', 1)[1]}"


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Digest-pinned references: operator, runner and the test plugins."""
    refs = {
        "operator": _build_and_push(f"{REGISTRY}/precinct-operator:e2e", "-f", "operator/Dockerfile", str(ROOT)),
        "runner": _build_and_push(f"{REGISTRY}/precinct-runner:e2e", str(ROOT / "plugins" / "runner")),
    }
    for name, folder in {"dice-roller": "plugins/dice-roller", "hog": "tests/fixtures/attacks/hog",
                         "crasher": "tests/fixtures/plugins/crasher"}.items():
        refs[name] = _build_and_push(
            f"{REGISTRY}/precinct-plugin-{name}:e2e", "-f", str(ROOT / "e2e" / "plugin.Dockerfile"),
            "--build-arg", f"RUNNER={REGISTRY}/precinct-runner:e2e", str(ROOT / folder))
    return refs


# -- the release ----------------------------------------------------------------------


def _split(ref: str) -> tuple[str, str]:
    repo, digest = ref.split("@", 1)
    return repo, digest


@pytest.fixture(scope="session")
def release(images: dict[str, str]) -> Iterator[str]:
    op_repo, op_digest = _split(images["operator"])
    run_repo, run_digest = _split(images["runner"])
    helm("upgrade", "--install", RELEASE, str(CHART), "--namespace", SYSTEM_NS, "--create-namespace",
         "-f", str(ROOT / "e2e" / "values.yaml"),
         "--set", f"image.operator.repository={op_repo}", "--set", f"image.operator.digest={op_digest}",
         "--set", f"image.runner.repository={run_repo}", "--set", f"image.runner.digest={run_digest}",
         "--wait", "--timeout", "10m", timeout=900)
    kubectl("create", "namespace", PLUGINS_NS, check=False)
    try:
        yield RELEASE
    finally:
        if os.environ.get("PRECINCT_E2E_KEEP") != "1":
            kubectl("delete", "botplugins", "--all", "-n", PLUGINS_NS, "--wait", "--timeout=120s", check=False)
            helm("uninstall", RELEASE, "--namespace", SYSTEM_NS, "--wait", check=False)
            kubectl("delete", "namespace", PLUGINS_NS, SYSTEM_NS, "--wait", "--timeout=180s", check=False)


def botplugin_manifest(name: str, image: str, **spec: Any) -> dict[str, Any]:
    """A BotPlugin from the plugin's plugin.yaml, run from `image`."""
    import yaml

    folder = {"dice-roller": ROOT / "plugins" / "dice-roller", "hog": ROOT / "tests/fixtures/attacks/hog",
              "crasher": ROOT / "tests/fixtures/plugins/crasher"}[name]
    manifest = yaml.safe_load((folder / "plugin.yaml").read_text())
    camel = {"subject_namespace": "subjectNamespace", "config_schema": "configSchema", "cpu_limit": "cpuLimit",
             "memory_limit": "memoryLimit", "pids_limit": "pidsLimit", "disk_limit": "diskLimit",
             "rate_limits": "rateLimits", "messages_per_second": "messagesPerSecond",
             "database_queries_per_second": "databaseQueriesPerSecond"}

    def convert(value: Any, top: bool = False) -> Any:
        if isinstance(value, dict):
            return {camel.get(k, k): (v if k in ("config", "config_schema") else convert(v))
                    for k, v in value.items() if not (top and k == "name")}
        return value

    body = convert(manifest, top=True)
    body.update(spec)
    body["image"] = image
    return {"apiVersion": "precinct.dev/v1alpha1", "kind": "BotPlugin",
            "metadata": {"name": name, "namespace": PLUGINS_NS}, "spec": body}


def apply(obj: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(obj))


# -- NATS through a port-forward ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def core_nats(release: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(url, core creds) reaching the chart's NATS through `kubectl port-forward`."""
    secret = get_json("secret", "-n", SYSTEM_NS, f"{RELEASE}-nats-identity")
    creds = tmp_path_factory.mktemp("creds") / "core.creds"
    creds.write_bytes(base64.b64decode(secret["data"]["core.creds"]))
    creds.chmod(0o600)
    port = _free_port()
    tool = _tool("kubectl")
    assert tool is not None
    forward = subprocess.Popen([tool, "port-forward", "-n", SYSTEM_NS, f"svc/{RELEASE}-nats", f"{port}:4222"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def listening() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
            return False
        wait_for(listening, 30, "kubectl port-forward to NATS", interval=0.5)
        yield f"nats://127.0.0.1:{port}", creds
    finally:
        forward.terminate()
        forward.wait(10)
