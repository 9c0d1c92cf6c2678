"""e2e fixtures: whatever cluster KUBECONFIG points at, in one of two modes.

full        the chart installed with Helm, the operator in the cluster, real
            plugin Pods: NATS round trips, OOM kills, crash loops, rollouts.
            Needs Ready nodes (kubelets) and images: built when a builder
            answers (docker or podman), otherwise given with --operator-image,
            --runner-image and --plugin-image NAME=REF.
no-kubelet  only an API server (and, if running, kube-controller-manager):
            the chart's RBAC, CRD and ServiceAccount applied, the operator run
            on this machine with that ServiceAccount's token, and everything
            that needs no Pod to run checked (test_no_kubelet.py): children
            with ownerReferences, status and Events, a rollout and its
            rollback, the finalizer, garbage collection, RBAC.

--e2e-mode auto (the default) picks full when the cluster has a Ready node and
images can be had, else no-kubelet, and says why. Every check a mode cannot
make is skipped with the reason, and the run ends with a list of them. Without
a reachable cluster (or helm/kubectl) everything is skipped, with the reason
printed. These tests are not collected by `make test` (testpaths = ["tests"]).

Options (each also an environment variable):
  --e2e-mode auto|full|no-kubelet   PRECINCT_E2E_MODE
  --operator-image REF@sha256:...   PRECINCT_E2E_OPERATOR_IMAGE
  --runner-image REF@sha256:...     PRECINCT_E2E_RUNNER_IMAGE
  --plugin-image NAME=REF@sha256:.. PRECINCT_E2E_PLUGIN_IMAGES (comma-separated), for dice-roller, hog, crasher
Environment:
  KUBECONFIG                 the cluster (kind: `kind create cluster --config e2e/kind-config.yaml`)
  PRECINCT_E2E_REGISTRY      registry built images are pushed to (default localhost:5001, see kind-config.yaml)
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "precinct"
RELEASE = "precinct-e2e"
SYSTEM_NS = "precinct-e2e"
PLUGINS_NS = "bots-e2e"
REGISTRY = os.environ.get("PRECINCT_E2E_REGISTRY", "localhost:5001")
PLUGINS = {"dice-roller": "plugins/dice-roller", "hog": "tests/attacks/plugins/hog",
           "crasher": "tests/fixtures/plugins/crasher"}
FULL, NO_KUBELET = "full", "no-kubelet"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("precinct-e2e", "Precinct end-to-end tests (e2e/e2e_support.py)")
    group.addoption("--e2e-mode", choices=["auto", FULL, NO_KUBELET], default=os.environ.get("PRECINCT_E2E_MODE", "auto"),
                    help="full: the chart in the cluster, real Pods; no-kubelet: API server only, the operator "
                         "runs here with the chart's ServiceAccount token; auto: full when possible")
    group.addoption("--operator-image", default=os.environ.get("PRECINCT_E2E_OPERATOR_IMAGE"),
                    help="operator image pinned by digest (instead of building it)")
    group.addoption("--runner-image", default=os.environ.get("PRECINCT_E2E_RUNNER_IMAGE"),
                    help="runner image pinned by digest (instead of building it)")
    env_plugins = [p for p in os.environ.get("PRECINCT_E2E_PLUGIN_IMAGES", "").split(",") if p]
    group.addoption("--plugin-image", action="append", default=env_plugins, metavar="NAME=REF",
                    help=f"a test plugin's image pinned by digest ({', '.join(PLUGINS)}); repeatable")


def _tool(name: str) -> str | None:
    for candidate in (shutil.which(name), ROOT / ".venv" / "helm" / name):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _answers(*args: str, timeout: float = 20) -> tuple[bool, str]:
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return done.returncode == 0, (done.stdout if done.returncode == 0 else done.stderr).strip()


def cluster_problem() -> str | None:
    """Why no e2e test can run here, or None."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        return "KUBECONFIG is not set: point it at a cluster (kind, or any API server) to run e2e"
    if not all(Path(p).is_file() for p in kubeconfig.split(os.pathsep) if p):
        return f"KUBECONFIG={kubeconfig} does not exist"
    kubectl = _tool("kubectl")
    if kubectl is None:
        return "kubectl not found on PATH or in .venv/helm/"
    ok, detail = _answers(kubectl, "get", "--raw=/readyz", "--request-timeout=5s", timeout=15)
    if not ok:
        return f"the cluster in KUBECONFIG is not reachable: {detail[:300]}"
    if _tool("helm") is None:
        return "helm not found on PATH or in .venv/helm/ (`.ci/helm --install`)"
    return None


def builder() -> tuple[str | None, str]:
    """(docker|podman, "") when an image builder's daemon answers, else (None, why not)."""
    why = []
    for tool in ("docker", "podman"):
        path = shutil.which(tool)
        if path is None:
            why.append(f"no {tool}")
            continue
        ok, detail = _answers(path, "info", "--format", "{{json .}}")
        if ok:
            return path, ""
        why.append(f"{tool} does not answer ({detail.splitlines()[-1][:160] if detail else 'no output'})")
    return None, "; ".join(why)


def ready_nodes() -> int:
    done = subprocess.run([_tool("kubectl") or "kubectl", "get", "nodes", "-o", "json"], capture_output=True,
                          text=True, timeout=30)
    if done.returncode != 0:
        return 0
    return sum(1 for node in json.loads(done.stdout).get("items", [])
               if any(c.get("type") == "Ready" and c.get("status") == "True"
                      for c in (node.get("status") or {}).get("conditions", [])))


@dataclass
class Plan:
    problem: str | None = None          # nothing runs
    mode: str = NO_KUBELET
    why: str = ""
    builder: str | None = None
    given: dict[str, str] = field(default_factory=dict)
    full_problem: str | None = None      # why full mode is impossible (None: possible)
    nodes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (check, reason), for the summary


def _given_images(config: pytest.Config) -> dict[str, str]:
    given = {}
    for key, opt in (("operator", "--operator-image"), ("runner", "--runner-image")):
        if config.getoption(opt):
            given[key] = config.getoption(opt)
    for item in config.getoption("--plugin-image") or []:
        name, _, ref = item.partition("=")
        if not ref:
            raise pytest.UsageError(f"--plugin-image wants NAME=REF, not {item!r}")
        given[name.strip()] = ref.strip()
    for name, ref in given.items():
        if "@sha256:" not in ref:
            raise pytest.UsageError(f"image for {name} must be pinned by digest (REF@sha256:...), not {ref!r}")
    return given


def make_plan(config: pytest.Config) -> Plan:
    plan = Plan(given=_given_images(config))
    plan.problem = cluster_problem()
    if plan.problem:
        return plan
    plan.nodes = ready_nodes()
    plan.builder, no_builder = builder()
    missing = [name for name in ("operator", "runner", *PLUGINS) if name not in plan.given]
    if plan.nodes == 0:
        plan.full_problem = "the cluster has no Ready node (no kubelet runs Pods)"
    elif missing and plan.builder is None:
        plan.full_problem = (f"no image builder answers ({no_builder}) and no image was given for "
                             f"{', '.join(missing)} (--operator-image, --runner-image, --plugin-image NAME=REF)")
    wanted = config.getoption("--e2e-mode")
    if wanted == "auto":
        plan.mode = FULL if plan.full_problem is None else NO_KUBELET
        plan.why = "auto: " + ("Ready nodes and images available" if plan.mode == FULL else plan.full_problem)
    else:
        plan.mode, plan.why = wanted, f"--e2e-mode {wanted}"
    return plan


_PLAN: list[Plan] = []


def plan_of(config: pytest.Config) -> Plan:
    if not _PLAN:
        _PLAN.append(make_plan(config))
    return _PLAN[0]


def pytest_report_header(config: pytest.Config) -> str:
    plan = plan_of(config)
    if plan.problem:
        return f"precinct e2e: SKIPPED, {plan.problem}"
    return (f"precinct e2e: mode {plan.mode} ({plan.why}); {plan.nodes} Ready node(s); "
            f"image builder: {plan.builder or 'none'}; images given: {', '.join(sorted(plan.given)) or 'none'}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and _PLAN:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _PLAN[0].skipped.append((report.nodeid.split("::")[-1], reason.removeprefix("Skipped: ")))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _PLAN:
        return
    plan = _PLAN[0]
    write = terminalreporter.write_line
    terminalreporter.section("precinct e2e")
    if plan.problem:
        write(f"nothing ran: {plan.problem}")
        return
    write(f"mode: {plan.mode} ({plan.why})")
    if plan.skipped:
        write(f"skipped checks ({len(plan.skipped)}):")
        for check, reason in plan.skipped:
            write(f"  {check}: {reason}")
    else:
        write("no check was skipped")


@pytest.fixture(scope="session", autouse=True)
def cluster(request: pytest.FixtureRequest) -> Plan:
    plan = plan_of(request.config)
    if plan.problem:
        print(f"\nprecinct e2e skipped: {plan.problem}")
        pytest.skip(plan.problem)
    return plan


@pytest.fixture(scope="session")
def full(cluster: Plan) -> Plan:
    """Only in full mode (the chart in the cluster, real Pods)."""
    if cluster.mode != FULL:
        pytest.skip(f"needs full mode (a kubelet runs the chart's and the plugins' Pods); "
                    f"this run is {cluster.mode}: {cluster.why}")
    if cluster.full_problem:
        pytest.skip(f"full mode impossible: {cluster.full_problem}")
    return cluster


@pytest.fixture(scope="session")
def no_kubelet(cluster: Plan) -> Plan:
    """Only in no-kubelet mode (the operator runs on this machine)."""
    if cluster.mode != NO_KUBELET:
        pytest.skip("no-kubelet mode only (in full mode the operator runs in the cluster and "
                    "test_e2e.py covers these checks)")
    return cluster


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


def _build_and_push(tool: str, tag: str, *build_args: str) -> str:
    run(tool, "build", "-t", tag, *build_args, timeout=1800)
    run(tool, "push", tag, timeout=600)
    digest = run(tool, "inspect", "--format", "{{index .RepoDigests 0}}", tag).stdout.strip()
    assert "@sha256:" in digest, digest
    return f"{tag.rsplit(':', 1)[0]}@{digest.split('@', 1)[1]}"


@pytest.fixture(scope="session")
def images(full: Plan) -> dict[str, str]:
    """Digest-pinned references: operator, runner and the test plugins; the
    ones given by flags are used as they are, the rest built (a builder answers:
    make_plan checked)."""
    refs = dict(full.given)
    tool = full.builder
    if "operator" not in refs:
        assert tool is not None
        refs["operator"] = _build_and_push(tool, f"{REGISTRY}/precinct-operator:e2e", "-f", "operator/Dockerfile", str(ROOT))
    if "runner" not in refs:
        assert tool is not None
        refs["runner"] = _build_and_push(tool, f"{REGISTRY}/precinct-runner:e2e", str(ROOT / "plugins" / "runner"))
    for name, folder in PLUGINS.items():
        if name not in refs:
            assert tool is not None
            refs[name] = _build_and_push(
                tool, f"{REGISTRY}/precinct-plugin-{name}:e2e", "-f", str(ROOT / "e2e" / "plugin.Dockerfile"),
                "--build-arg", f"RUNNER={refs['runner']}", str(ROOT / folder))
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

    folder = ROOT / PLUGINS[name]
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
