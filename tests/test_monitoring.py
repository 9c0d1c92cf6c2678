"""Monitoring (issue 9): metric names, /metrics, the dashboard in headless
Chromium, `precinct top`, the operator's metrics, and the chart's alerts and
Grafana dashboard referencing only names from precinct/metrics.py."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from precinct import metrics
from precinct.runtime.monitor import Monitor, Monotonic
from precinct.runtime.web import HttpServer
from runtime_support import EXAMPLES, Up, copy_plugin, precinct

ROOT = Path(__file__).parents[1]
CHART = ROOT / "charts" / "precinct"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# Series that come from Kubernetes (cAdvisor, kube-state-metrics), not from Precinct.
EXTERNAL = {"container_cpu_usage_seconds_total", "container_memory_working_set_bytes", "kube_pod_labels",
            "kube_pod_container_resource_limits"}
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "group_left",
                "group_right", "rate", "increase", "irate", "delta", "label_replace", "or", "and", "unless",
                "bool", "offset", "topk", "bottomk", "clamp_min", "clamp_max", "abs", "label_values",
                "histogram_quantile", "time", "vector", "scalar"}


# -- the naming scheme -----------------------------------------------------------------


def _view(**overrides) -> dict:
    p = {"state": "Running", "cpu_seconds": 1.5, "memory_bytes": 2048, "restarts": 2, "oom_kills": 1,
         "limits": {"memory_bytes": 64 * 2**20, "cpu_millicores": 250},
         "traffic": {"messages_in": 5, "messages_out": 7, "replies": 4, "errors": 1, "rate_limited": 3},
         "violations_by_kind": {"rate_limit": 3}, "reloads": {"succeeded": 1},
         "refusals": {"landlock": 12, "seccomp": 1},
         "storage": {"requests": 9, "errors": 0, "used_bytes": 4096, "limit_bytes": 8192}}
    p.update(overrides)
    return {"plugins": {"dice": p}, "refusals_lost": {"kernel_backlog": 4, "socket_overflows": 0}}


def _parse(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-z_:]+)(\{(.*)\})? (\S+)$", line)
        assert m, line
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(3) or "")))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def test_exposition_uses_only_the_documented_names_and_labels():
    samples = _parse(metrics.exposition(_view()).decode())
    names = {n for n, _ in samples}
    assert names <= metrics.names(), names - metrics.names()
    assert {m.name for m in metrics.ALL if m is not metrics.RECONCILES} == names
    for (name, labels) in samples:
        keys = {k for k, _ in labels}
        assert keys == set(metrics.BY_NAME[name].labels), (name, keys)
        assert not keys & {"user", "channel", "subject"}
    assert samples[("precinct_plugin_cpu_seconds_total", (("plugin", "dice"),))] == 1.5
    assert samples[("precinct_plugin_violations_total", (("kind", "rate_limit"), ("plugin", "dice")))] == 3
    assert samples[("precinct_plugin_violations_total", (("kind", "permission"), ("plugin", "dice")))] == 0
    assert samples[("precinct_plugin_state", (("plugin", "dice"), ("state", "Running")))] == 1
    assert samples[("precinct_plugin_state", (("plugin", "dice"), ("state", "CrashLoopBackOff")))] == 0
    assert samples[("precinct_plugin_cpu_limit_cores", (("plugin", "dice"),))] == 0.25
    assert samples[("precinct_plugin_reloads_total", (("outcome", "succeeded"), ("plugin", "dice")))] == 1
    assert samples[("precinct_plugin_refusals_total", (("mechanism", "landlock"), ("plugin", "dice")))] == 12
    assert samples[("precinct_plugin_refusals_total", (("mechanism", "egress"), ("plugin", "dice")))] == 0
    assert samples[("precinct_refusal_records_lost_total", (("source", "kernel_backlog"),))] == 4


def test_monotonic_counters_survive_a_source_restart():
    mono = Monotonic()
    assert [mono(("a",), v) for v in (1, 5, 2, 3, 0)] == [1, 5, 7, 8, 8]


# -- the monitor and its HTTP server (no supervisor) ------------------------------------


class FakeNats:
    def __init__(self, replies: dict[str, dict]) -> None:
        self.replies = replies

    async def request(self, subject: str, data: bytes, timeout: float):
        return SimpleNamespace(data=json.dumps(self.replies[subject]).encode())


def _status(memory: int, cpu: float) -> dict:
    return {"uptime_seconds": 1.0, "nats": "nats://x", "services": {"gateway": {"state": "Running"}},
            "plugins": {"dice": {"id": "dice", "state": "Running", "pid": 42, "restarts": 0, "oom_kills": 0,
                                 "cpu_seconds": cpu, "memory_bytes": memory,
                                 "limits": {"memory_bytes": 2**26, "cpu_millicores": 500},
                                 "conditions": [{"type": "Ready", "status": "True", "reason": "Running"}],
                                 "violations": {"strikes": 1, "counts": {"permission": 2}}}}}


async def test_monitor_merges_services_and_keeps_history():
    calls = {"n": 0}

    async def status():
        calls["n"] += 1
        return _status(1000 * calls["n"], 0.1 * calls["n"])

    gw = {"plugins": {"dice": {"forwarded": 4, "rate_limited": 1, "calls_answered": 2, "calls_failed": 1,
                               "calls_served": 7}}}
    st = {"success": True, "plugins": {"dice": {"requests": 3, "errors": 1, "used_bytes": 10, "limit_bytes": 20}}}
    monitor = Monitor(status, nc=FakeNats({"precinct.gateway.stats": gw, "precinct.admin.storage.stats": st}))
    await monitor._on_result(SimpleNamespace(data=json.dumps({"plugin": "dice", "status": "ok"}).encode()))
    await monitor._on_result(SimpleNamespace(data=json.dumps({"plugin": "dice", "status": "timeout"}).encode()))
    # An ordinary `success: false` answer ("no quote #42") is a reply, not an
    # error; no instance listening and a non-JSON answer are errors
    # (docs/monitoring.md, "What counts as an error"); usage lines are neither.
    for outcome in ("error", "no_responders", "bad_reply", "usage"):
        await monitor._on_result(SimpleNamespace(data=json.dumps({"plugin": "dice", "status": outcome}).encode()))
    await monitor.sample()
    gw["plugins"]["dice"]["forwarded"] = 1          # the gateway restarted
    view = await monitor.sample()
    row = view["plugins"]["dice"]
    assert row["traffic"] == {"messages_in": 5, "replies": 2, "errors": 3, "messages_out": 5, "rate_limited": 1,
                              "calls_served": 7, "calls": {"answered": 2, "rate_limited": 0, "failed": 1}}
    assert row["storage"] == {"requests": 3, "errors": 1, "used_bytes": 10, "limit_bytes": 20}
    assert row["violations_by_kind"] == {"permission": 2}
    assert row["history"]["memory_bytes"] == [1000, 2000]
    assert view["samples"] == 2
    await monitor.fresh_view()                      # scrapes do not add history
    assert len(monitor.view()["plugins"]["dice"]["history"]["memory_bytes"]) == 2


async def test_sample_interval_grows_past_200_plugins_and_top_reads_the_last_sample():
    count = {"plugins": 1, "calls": 0}

    async def status():
        count["calls"] += 1
        one = _status(1000, 0.1)["plugins"]["dice"]
        return {**_status(1000, 0.1), "plugins": {f"p{i}": dict(one, id=f"p{i}") for i in range(count["plugins"])}}

    monitor = Monitor(status)
    view = await monitor.sample()
    assert view["interval_seconds"] == 2.0 and monitor.interval == 2.0
    count["plugins"] = 1000                      # 1000 plugins: a sample every 10 s (N / 100)
    view = await monitor.sample()
    assert view["interval_seconds"] == 10.0 and monitor.interval == 10.0 and len(view["plugins"]) == 1000
    calls = count["calls"]
    top = await monitor.op_top({})
    assert top is monitor.view() and count["calls"] == calls    # `precinct top` costs no sample of its own


def _get(url: str, token: str | None = None, host: str | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


async def test_dashboard_server_needs_the_token_and_is_read_only():
    async def status():
        return _status(2048, 1.0)

    monitor = Monitor(status)
    await monitor.sample()
    server = HttpServer(monitor, 0, token="s3cret")
    await server.start()
    metrics_only = HttpServer(monitor, 0, token=None, dashboard=False)
    await metrics_only.start()
    try:
        base = server.url

        def checks():
            code, body, headers = _get(base)
            assert code == 200 and b"plugin health" in body and "script-src 'nonce-" in headers["Content-Security-Policy"]
            assert b"http" not in re.sub(rb"http://www\.w3\.org/2000/svg", b"", body.split(b"<script")[1]), \
                "the page must not load anything from the network"
            assert _get(base + "api/view")[0] == 401
            assert _get(base + "api/view", token="wrong")[0] == 401
            code, body, _ = _get(base + "api/view", token="s3cret")
            assert code == 200 and json.loads(body)["plugins"]["dice"]["state"] == "Running"
            assert _get(base + "metrics")[0] == 401
            code, body, _ = _get(base + "metrics", token="s3cret")
            assert code == 200 and b'precinct_plugin_memory_bytes{plugin="dice"} 2048.0' in body
            assert _get(base + "api/view", token="s3cret", host="evil.example:80")[0] == 421
            req = urllib.request.Request(base + "api/view", data=b"x", method="POST")
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=5)
            assert err.value.code == 405
            code, body, _ = _get(metrics_only.url + "metrics")
            assert code == 200 and b"precinct_plugin_state" in body
            assert _get(metrics_only.url)[0] == 404

        await asyncio.to_thread(checks)
    finally:
        await server.close()
        await metrics_only.close()


async def test_the_page_is_package_data_served_with_a_fresh_nonce():
    """The page ships as package data (pyproject.toml's package-data globs
    cover it, so a wheel carries it) and `/` serves exactly that file, each
    response with its own CSP nonce."""
    import fnmatch
    import tomllib
    from importlib import resources

    from precinct.runtime import web

    resource = resources.files("precinct.runtime").joinpath(web.PAGE_RESOURCE)
    assert resource.is_file(), resource
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch.fnmatch(web.PAGE_RESOURCE, g) for g in package_data["precinct.runtime"]), package_data
    page = resource.read_text(encoding="utf-8")
    assert "{{NONCE}}" in page

    async def status():
        return _status(2048, 1.0)

    server = HttpServer(Monitor(status), 0, token="s3cret")
    await server.start()
    try:
        first, second = await asyncio.to_thread(lambda: (_get(server.url), _get(server.url + "index.html")))
    finally:
        await server.close()
    nonces = []
    for code, body, headers in (first, second):
        assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        nonce = re.search(r"script-src 'nonce-([^']+)'", headers["Content-Security-Policy"]).group(1)
        assert body.decode() == page.replace("{{NONCE}}", nonce)
        nonces.append(nonce)
    assert nonces[0] != nonces[1]


# -- the real thing: `precinct up`, the browser, `precinct top` --------------------------


def _chromium_or_skip():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run installs it)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        reason = "the playwright package is missing (pip install -e '.[test]')"
        print(f"SKIP: {reason}")
        pytest.skip(reason)


@pytest.fixture
def dice_up(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    copy_plugin(EXAMPLES / "dice-roller", plugins)
    up = Up(plugins, tmp_path / "state", "--metrics-port", "0")
    try:
        up.wait_running("dice-roller")
        yield up
    finally:
        up.stop()


def test_dashboard_top_and_metrics_of_a_running_fleet(dice_up):
    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    state = str(dice_up.state_dir)
    result = precinct("dashboard", "--url", "--state-dir", state)
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url.startswith("http://127.0.0.1:") and "#token=" in url
    assert url in dice_up.output(), "precinct up prints the dashboard URL"
    assert dice_up.say("!roll 2d6").returncode == 0

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            failed = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(url)
            row = page.locator('tr[data-plugin="dice-roller"]')
            row.wait_for(timeout=15_000)
            assert row.locator("td.name").inner_text() == "dice-roller"
            assert row.locator(".state").inner_text() == "Running"
            assert row.locator("td.version").inner_text() == "1.0.0 r1"     # manifest version, revision
            assert "/ 64.0 Mi" in row.inner_text()                       # usage against the limit
            page.wait_for_function(
                "() => Number(document.querySelector('tr[data-plugin=\"dice-roller\"] td.in').textContent) >= 1",
                timeout=10_000)
            before = int(row.locator("td.in").inner_text())
            sample_before = int(page.locator("#samples").inner_text())
            # Live: a command sent now shows up without reloading the page.
            assert dice_up.say("!roll 1d6").returncode == 0
            page.wait_for_function(
                f"() => Number(document.querySelector('tr[data-plugin=\"dice-roller\"] td.in').textContent) > {before}",
                timeout=10_000)
            page.wait_for_function(f"() => Number(document.getElementById('samples').textContent) > {sample_before}",
                                   timeout=10_000)
            spark = row.locator('svg.spark[data-kind="memory"] polyline')
            assert spark.count() == 1
            page.wait_for_function(
                "() => document.querySelector('tr[data-plugin=\"dice-roller\"] svg.spark[data-kind=memory] polyline')"
                ".getAttribute('points').split(' ').length >= 2", timeout=10_000)
            assert not failed, failed
            # Without the token the page says so instead of showing data.
            page2 = browser.new_page()
            page2.goto(url.split("#")[0])
            page2.wait_for_function("() => document.getElementById('error').textContent.includes('token')",
                                    timeout=10_000)
            assert page2.locator("tr[data-plugin]").count() == 0
        finally:
            browser.close()

    top = precinct("top", "--once", "--state-dir", state)
    assert top.returncode == 0, top.stderr
    assert "dice-roller" in top.stdout and "Running" in top.stdout and "64.0Mi" in top.stdout
    assert "1.0.0 r1" in top.stdout

    info = json.loads((dice_up.state_dir / "dashboard.json").read_text())
    assert oct((dice_up.state_dir / "dashboard.json").stat().st_mode & 0o777) == "0o600"
    code, body, _ = _get(info["metrics_url"])
    samples = _parse(body.decode())
    assert samples[("precinct_plugin_state", (("plugin", "dice-roller"), ("state", "Running")))] == 1
    assert samples[("precinct_plugin_messages_in_total", (("plugin", "dice-roller"),))] >= 2
    assert samples[("precinct_plugin_replies_total", (("plugin", "dice-roller"),))] >= 2
    assert samples[("precinct_plugin_memory_bytes", (("plugin", "dice-roller"),))] > 0
    assert samples[("precinct_plugin_memory_limit_bytes", (("plugin", "dice-roller"),))] == 64 * 2**20


def _metric(url: str, name: str, plugin: str) -> float:
    code, body, _ = _get(url)
    assert code == 200, body
    return _parse(body.decode()).get((name, (("plugin", plugin),)), 0.0)


def test_a_plugins_error_answer_is_a_reply_not_an_error(dice_up):
    """dice-roller answers `!roll 5000d6` with `{"success": false, "error": ...}`:
    an ordinary answer. The dashboard, `top` and the metrics count it as a
    reply; only commands that got no usable answer are errors."""
    state = str(dice_up.state_dir)
    info = json.loads((dice_up.state_dir / "dashboard.json").read_text())
    assert dice_up.say("!roll 2d6").returncode == 0
    refused = dice_up.say("!roll 5000d6")
    assert refused.returncode == 3 and refused.stderr.strip(), refused      # the plugin's own error text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _metric(info["metrics_url"], "precinct_plugin_replies_total",
                                                  "dice-roller") < 2:
        time.sleep(0.5)
    assert _metric(info["metrics_url"], "precinct_plugin_replies_total", "dice-roller") >= 2
    assert _metric(info["metrics_url"], "precinct_plugin_messages_in_total", "dice-roller") >= 2
    assert _metric(info["metrics_url"], "precinct_plugin_errors_total", "dice-roller") == 0
    # The dashboard's own data says the same, and carries version and revision.
    token = info["url"].split("#token=", 1)[1]
    code, body, _ = _get(info["url"].split("#")[0] + "api/view", token=token)
    assert code == 200
    row = json.loads(body)["plugins"]["dice-roller"]
    assert row["version"] == "1.0.0" and row["revision"] == 1 and re.fullmatch(r"[0-9a-f]{12}", row["digest"])
    top = precinct("top", "--once", "--state-dir", state)
    assert top.returncode == 0, top.stderr
    line = next(ln for ln in top.stdout.splitlines() if "dice-roller" in ln)
    assert "1.0.0 r1" in line
    # ERR is the 9th column (PLUGIN VERSION STATE CPU MEMORY IN OUT REPLIES ERR): zero.
    cells = [c.strip() for c in line.strip().strip("│┃|").split("│")]
    assert cells[8] == "0", cells


# -- the operator ------------------------------------------------------------------------


def test_operator_metrics_count_outcomes_restarts_and_ooms():
    from precinct.k8s.metrics import OperatorMetrics
    from precinct.k8s.status import PodView
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    om = OperatorMetrics()
    om.reconciled("ok")
    om.reconciled("retry")
    om.observed("ns-dice", "progressing", [PodView("p1", "h", "Running", False)])
    om.observed("ns-dice", "complete", [PodView("p1", "h", "Running", True)])
    om.observed("ns-dice", "progressing", [PodView("p1", "h", "Running", False, waiting_reason="CrashLoopBackOff",
                                                   last_terminated=("OOMKilled", 137, ""), restarts=2)])
    om.observed("ns-dice", "rolled-back", [])
    om.violation("ns-dice", {"kind": "rate_limit", "count": 5})
    om.violation("ns-dice", {"kind": "permission"})

    class Nats:
        async def request(self, subject, data, timeout):
            body = {"precinct.gateway.stats": {"plugins": {"ns-dice": {"forwarded": 7, "rate_limited": 5}}},
                    "precinct.admin.storage.stats": {"success": True, "plugins": {
                        "ns-dice": {"requests": 3, "errors": 0, "used_bytes": 100, "limit_bytes": 1000}}}}[subject]
            return SimpleNamespace(data=json.dumps(body).encode())

    async def poll_once():
        from precinct.k8s.metrics import poll_services

        task = asyncio.create_task(poll_services(Nats(), om, interval=3600))
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(poll_once())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(om)
    samples = _parse(generate_latest(registry).decode())
    assert {n for n, _ in samples} <= metrics.names()
    assert samples[("precinct_operator_reconciles_total", (("outcome", "ok"),))] == 1
    assert samples[("precinct_plugin_reloads_total", (("outcome", "succeeded"), ("plugin", "ns-dice")))] == 1
    assert samples[("precinct_plugin_reloads_total", (("outcome", "rolled_back"), ("plugin", "ns-dice")))] == 1
    assert samples[("precinct_plugin_restarts_total", (("plugin", "ns-dice"),))] == 2
    assert samples[("precinct_plugin_oom_kills_total", (("plugin", "ns-dice"),))] == 1
    assert samples[("precinct_plugin_state", (("plugin", "ns-dice"), ("state", "Progressing")))] == 1
    assert samples[("precinct_plugin_violations_total", (("kind", "rate_limit"), ("plugin", "ns-dice")))] == 5
    assert samples[("precinct_plugin_violations_total", (("kind", "permission"), ("plugin", "ns-dice")))] == 1
    assert samples[("precinct_plugin_messages_out_total", (("plugin", "ns-dice"),))] == 7
    assert samples[("precinct_plugin_storage_bytes", (("plugin", "ns-dice"),))] == 100


# -- the chart ---------------------------------------------------------------------------


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (good enough for our own expressions)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)                             # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                            # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdw]?", w)}


def _rule_exprs() -> list[str]:
    text = (CHART / "templates" / "prometheusrule.yaml").read_text()
    exprs = re.findall(r"^\s*expr:\s*(.+)$", text, flags=re.M)
    return [re.sub(r"\{\{[^}]*\}\}", "1", e) for e in exprs]


def test_alerts_reference_only_precinct_metrics():
    exprs = _rule_exprs()
    assert len(exprs) >= 5
    text = (CHART / "templates" / "prometheusrule.yaml").read_text()
    for alert in ("PrecinctPluginCrashLooping", "PrecinctPluginOOMKilled", "PrecinctPluginViolationSpike",
                  "PrecinctPluginReloadFailed"):
        assert f"alert: {alert}" in text
    used = set()
    for expr in exprs:
        assert expr.count("(") == expr.count(")"), expr
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= metrics.names(), (expr, names - metrics.names())
        used |= names
    assert {"precinct_plugin_oom_kills_total", "precinct_plugin_violations_total",
            "precinct_plugin_reloads_total", "precinct_plugin_state"} <= used
    assert 'outcome=~"failed|rolled_back"' in text
    kinds = set(metrics.VIOLATION_KINDS)
    assert kinds == {"rate_limit", "permission", "duplicate_reply", "seccomp", "landlock", "egress"}


def test_grafana_dashboard_is_valid_and_uses_the_same_names():
    dash = json.loads((CHART / "dashboards" / "precinct.json").read_text())
    assert dash["uid"] and dash["title"] and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    used = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = promql_metric_names(target["expr"])
            assert names <= metrics.names() | EXTERNAL, (target["expr"], names - metrics.names() - EXTERNAL)
            assert target["expr"].count("(") == target["expr"].count(")")
            used |= names
    assert {"precinct_plugin_cpu_seconds_total", "precinct_plugin_memory_bytes",
            "precinct_plugin_messages_out_total", "container_cpu_usage_seconds_total", "kube_pod_labels"} <= used
    var = [v for v in dash["templating"]["list"] if v["name"] == "plugin"][0]
    metric = re.fullmatch(r"label_values\((\w+), plugin\)", var["definition"]).group(1)
    assert metric in metrics.names()


def _helm() -> str | None:
    import os

    for candidate in (os.environ.get("PRECINCT_HELM"), ROOT / ".venv" / "helm" / "helm", shutil.which("helm")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


def test_chart_monitoring_templates_render(tmp_path):
    helm = _helm()
    if helm is None:
        pytest.skip("helm is not installed here (.ci/helm --install fetches it)")
    import subprocess

    # Without any `monitoring` values the templates render nothing (and do not fail).
    out = subprocess.run([helm, "template", "p", str(CHART), "-n", "ps"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "PrometheusRule" not in out.stdout
    # Enabled (the schema may not know `monitoring` yet: render a copy that allows it).
    chart = tmp_path / "precinct"
    shutil.copytree(CHART, chart)
    schema_path = chart / "values.schema.json"
    if schema_path.exists():
        schema = json.loads(schema_path.read_text())
        schema.setdefault("properties", {}).setdefault("monitoring", {"type": "object"})
        schema_path.write_text(json.dumps(schema))
    out = subprocess.run([helm, "template", "p", str(chart), "-n", "ps",
                          "--set", "monitoring.prometheusRule.enabled=true",
                          "--set", "monitoring.grafanaDashboard.enabled=true"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert promql_metric_names(r["expr"]) <= metrics.names()
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "precinct.json" in d.get("data", {}))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["precinct.json"])["uid"] == "precinct-plugins"
