"""The operator's health for Kubernetes: kopf's liveness endpoint with
Precinct's probe (k8s/health.py), the Prometheus metrics the ServiceMonitor
scrapes, and the chart wiring both into the operator's Pod.

The process test runs `precinct operator` exactly as the chart's container
does (same flags, on loopback) against the API stand-in through a kubeconfig.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from precinct.k8s.client import Api, plain_configuration

from k8s_standin import StandIn

NS = "bots"
DIGEST = "sha256:" + "d" * 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(url) as resp:
            return resp.status, await resp.text()


async def poll(url: str, want: int, timeout: float = 60.0) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        try:
            status, text = await get(url)
            if status == want:
                return text
            last = (status, text[:200])
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url} did not answer {want} within {timeout}s (last: {last!r})")


@pytest.fixture
async def k8s() -> Any:
    server = await StandIn().start()
    await server.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    yield server
    await server.stop()


async def test_operator_process_serves_health_and_metrics_as_the_chart_runs_it(k8s: StandIn, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": k8s.url}}], "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    health, metrics = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "precinct.cli", "operator", f"--namespace={NS}", "--state-dir", str(tmp_path / "state"),
         f"--liveness=http://127.0.0.1:{health}/healthz", f"--metrics-port={metrics}"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    api = Api(plain_configuration(k8s.url))
    try:
        answer = json.loads(await poll(f"http://127.0.0.1:{health}/healthz", 200))
        assert answer["precinct"]["violations"] == "off"        # no --nats-url: nothing to subscribe to
        await api.create({"apiVersion": "precinct.dev/v1alpha1", "kind": "BotPlugin",
                          "metadata": {"name": "dice", "namespace": NS},
                          "spec": {"version": "1.0.0", "image": f"registry.example/dice@{DIGEST}"}})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while k8s.get("Deployment", NS, "dice") is None:
            assert loop.time() < deadline, "no Deployment from the operator process"
            await asyncio.sleep(0.1)
        # kopf caches probe results for 10 s: wait for a fresh answer that counts the plugin
        deadline = loop.time() + 30
        while json.loads((await get(f"http://127.0.0.1:{health}/healthz"))[1])["precinct"]["plugins"] != 1:
            assert loop.time() < deadline, "the probe never counted the plugin"
            await asyncio.sleep(0.5)
        text = await poll(f"http://127.0.0.1:{metrics}/metrics", 200)
        ok = [line for line in text.splitlines() if line.startswith('precinct_operator_reconciles_total{outcome="ok"}')]
        assert ok and float(ok[0].split()[-1]) >= 1, text[:2000]
    finally:
        await api.close()
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(f"the operator did not exit within 90 s of SIGTERM:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]


async def test_probe_fails_before_login_and_when_a_background_task_dies(k8s: StandIn, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from precinct.k8s import operator as op

    logged_in = asyncio.Event()
    real_build = op.build_runtime

    def slow_build(*args: Any, **kw: Any) -> Any:
        if not logged_in.is_set():
            raise op.kopf.TemporaryError("holding the login back for the test", delay=0.2)
        return real_build(*args, **kw)

    monkeypatch.setattr(op, "build_runtime", slow_build)
    port = free_port()
    config = op.OperatorConfig(state_dir=tmp_path / "state", server=k8s.url, namespaces=(NS,),
                               liveness_endpoint=f"http://127.0.0.1:{port}/healthz", server_timeout=5, client_timeout=10)
    stop, holder = asyncio.Event(), {}
    task = asyncio.create_task(op.serve(config, stop_flag=stop, holder=holder))
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        await poll(url, 500)                      # serving, but not logged in
        logged_in.set()
        await poll(url, 200)

        async def crash() -> None:
            raise RuntimeError("the violation subscription broke")

        dead = asyncio.create_task(crash(), name="violations")
        await asyncio.gather(dead, return_exceptions=True)
        holder["runtime"].background.append(dead)
        await poll(url, 500, timeout=30)          # after kopf's 10 s cache of the last good answer
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def test_chart_probes_and_service_monitor_reach_the_operator() -> None:
    from test_chart import by_kind, template

    objs = template("namespaced-templated-crd.yaml")        # ServiceMonitor on; skips without helm
    (deployment,) = [d for d in by_kind(objs, "Deployment") if d["metadata"]["name"] == "precinct-operator"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = container["args"]
    assert f"--liveness=http://0.0.0.0:{ports['health']}/healthz" in args
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    # liveness gives a busy operator time: at least a minute of silence before a restart
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 60

    # metrics: container port <- Service <- ServiceMonitor, and the flag serves that port
    assert f"--metrics-port={ports['metrics']}" in args
    (svc,) = [s for s in by_kind(objs, "Service") if s["metadata"]["name"] == "precinct-operator-metrics"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["targetPort"] == "metrics"
    (sm,) = by_kind(objs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]]
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [svc_port["name"]]
    # and the operator's NetworkPolicy lets Prometheus in on that port only
    (policy,) = [p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["name"] == "precinct-operator"]
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": ports["metrics"]}]}]
    # no other Service in the release matches the ServiceMonitor (it would scrape the wrong Pods)
    matching = [s["metadata"]["name"] for s in by_kind(objs, "Service")
                if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert matching == ["precinct-operator-metrics"]

