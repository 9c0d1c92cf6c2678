"""The operator's Prometheus metrics (names from precinct/metrics.py).

The operator knows what the kubelet does not: reconcile outcomes, rollout
outcomes (a changed BotPlugin is the Kubernetes "reload") and each plugin's
state as Precinct sees it. CPU and memory are NOT exported here: on
Kubernetes they come from the kubelet's cAdvisor series, joined to the
`precinct.dev/plugin` Pod label (docs/monitoring.md has the PromQL).

  precinct_operator_reconciles_total{outcome}       ok | retry | error
  precinct_plugin_state{plugin,state}               Running, Progressing, CrashLoopBackOff, Failed, Stopped
  precinct_plugin_reloads_total{plugin,outcome}     succeeded (a new template rolled out), rolled_back, failed
  precinct_plugin_restarts_total{plugin}            container restarts summed over the plugin's Pods
  precinct_plugin_oom_kills_total{plugin}           restarts whose last termination was OOMKilled
  precinct_plugin_violations_total{plugin,kind}     the gateway's violation events the operator receives
  precinct_plugin_messages_out_total, precinct_plugin_rate_limited_total, precinct_plugin_calls_*, precinct_plugin_storage_*
                                                    the gateway's and storage's counters, requested over
                                                    NATS (platform account) every POLL_INTERVAL seconds

Served by `precinct operator --metrics-port N` (prometheus_client's own
HTTP server, all interfaces: the chart's Service/ServiceMonitor scrapes it).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
from typing import Any, Iterable

from .. import metrics as m
from ..wire import subjects as wire

log = logging.getLogger("precinct.operator.metrics")
POLL_INTERVAL = 15.0
CRASH_REASONS = ("CrashLoopBackOff", "Error", "OOMKilled", "CreateContainerError", "ImagePullBackOff")


class OperatorMetrics(m.Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reconciles: collections.Counter[str] = collections.Counter()
        self.state: dict[str, str] = {}
        self.reloads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.restarts: dict[str, int] = {}
        self.oom_kills: collections.Counter[str] = collections.Counter()
        self._pod_restarts: dict[tuple[str, str], int] = {}
        self._verdict: dict[str, str] = {}
        self.violations: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.gateway: dict[str, dict[str, Any]] = {}
        self.storage: dict[str, dict[str, Any]] = {}

    # -- recording (event loop) -------------------------------------------------------

    def reconciled(self, outcome: str) -> None:
        with self._lock:
            self.reconciles[outcome] += 1

    def observed(self, plugin: str, verdict: str, pods: Iterable[Any], suspended: bool = False) -> None:
        """After each observe: the rollout verdict and the plugin's Pods (status.PodView)."""
        pods = list(pods)
        with self._lock:
            before = self._verdict.get(plugin)
            if verdict == "rolled-back":
                self.reloads[plugin]["rolled_back"] += 1
            elif verdict == "failed" and before != "failed":
                self.reloads[plugin]["failed"] += 1
            elif verdict == "complete" and before == "progressing":
                self.reloads[plugin]["succeeded"] += 1
            if verdict in ("complete", "progressing", "failed"):
                self._verdict[plugin] = verdict
            total = self.restarts.get(plugin, 0)
            for pod in pods:
                key = (plugin, pod.name)
                last = self._pod_restarts.get(key, 0)
                if pod.restarts > last:
                    total += pod.restarts - last
                    if pod.last_terminated and pod.last_terminated[0] == "OOMKilled":
                        self.oom_kills[plugin] += 1
                self._pod_restarts[key] = pod.restarts
            self.restarts[plugin] = total
            self.state[plugin] = plugin_state(verdict, pods, suspended)

    def violation(self, plugin: str, event: dict[str, Any]) -> None:
        try:
            count = max(1, int(event.get("count", 1)))
        except (TypeError, ValueError):
            count = 1
        with self._lock:
            self.violations[plugin][str(event.get("kind") or "permission")] += count

    def services(self, gateway: dict[str, Any] | None, storage: dict[str, Any] | None) -> None:
        with self._lock:
            if gateway is not None:
                self.gateway = gateway
            if storage is not None:
                self.storage = storage

    def forget(self, plugin: str) -> None:
        with self._lock:
            self.state.pop(plugin, None)

    # -- scraping (prometheus_client's thread) ----------------------------------------

    def collect(self):
        with self._lock:
            reconciles = dict(self.reconciles)
            plugins = {pid: {"state": state, "restarts": self.restarts.get(pid, 0),
                             "oom_kills": self.oom_kills.get(pid, 0), "reloads": dict(self.reloads.get(pid, {}))}
                       for pid, state in self.state.items()}
            violations = {pid: dict(c) for pid, c in self.violations.items()}
            gateway, storage = dict(self.gateway), dict(self.storage)
        fam = m.new_family(m.RECONCILES)
        for outcome in sorted(set(m.RECONCILE_OUTCOMES) | set(reconciles)):
            fam.add_metric([outcome], reconciles.get(outcome, 0))
        yield fam
        state, reloads = m.new_family(m.STATE), m.new_family(m.RELOADS)
        restarts, ooms = m.new_family(m.RESTARTS), m.new_family(m.OOM_KILLS)
        for pid, p in sorted(plugins.items()):
            for s in sorted(set(K8S_STATES) | {p["state"]}):
                state.add_metric([pid, s], 1 if s == p["state"] else 0)
            for outcome in sorted(set(m.RELOAD_OUTCOMES) | set(p["reloads"])):
                reloads.add_metric([pid, outcome], p["reloads"].get(outcome, 0))
            restarts.add_metric([pid], p["restarts"])
            ooms.add_metric([pid], p["oom_kills"])
        yield from (state, reloads, restarts, ooms)
        fam = m.new_family(m.VIOLATIONS)
        for pid, kinds in sorted(violations.items()):
            for kind in sorted(set(m.VIOLATION_KINDS) | set(kinds)):
                fam.add_metric([pid, kind], kinds.get(kind, 0))
        yield fam
        out, limited = m.new_family(m.MESSAGES_OUT), m.new_family(m.RATE_LIMITED)
        calls, served = m.new_family(m.CALLS), m.new_family(m.CALLS_SERVED)
        for pid, c in sorted(gateway.items()):
            out.add_metric([pid], c.get("forwarded", 0))
            limited.add_metric([pid], c.get("rate_limited", 0))
            for outcome, key in m.CALL_OUTCOMES.items():
                calls.add_metric([pid, outcome], c.get(key, 0))
            served.add_metric([pid], c.get("calls_served", 0))
        yield from (out, limited, calls, served)
        fams = {k: m.new_family(metric) for k, metric in (("requests", m.STORAGE_REQUESTS), ("errors", m.STORAGE_ERRORS),
                                                         ("used_bytes", m.STORAGE_BYTES), ("limit_bytes", m.STORAGE_LIMIT))}
        for pid, c in sorted(storage.items()):
            for key, fam in fams.items():
                if c.get(key) is not None:
                    fam.add_metric([pid], c[key])
        yield from fams.values()


K8S_STATES = ("Running", "Progressing", "CrashLoopBackOff", "Failed", "Stopped")


def plugin_state(verdict: str, pods: list[Any], suspended: bool) -> str:
    if suspended:
        return "Stopped"
    if any(p.waiting_reason in CRASH_REASONS for p in pods):
        return "CrashLoopBackOff"
    if verdict == "failed":
        return "Failed"
    if any(p.ready and not p.deleting for p in pods):
        return "Running"
    return "Progressing"


OPERATOR = OperatorMetrics()


async def poll_services(nc, metrics: OperatorMetrics = OPERATOR, interval: float = POLL_INTERVAL) -> None:
    """Every `interval` s: the gateway's and storage's per-plugin counters (platform account)."""

    async def ask(subject: str) -> dict[str, Any] | None:
        try:
            msg = await nc.request(subject, b"{}", timeout=2.0)
            body = json.loads(msg.data)
            return body.get("plugins") or {} if isinstance(body, dict) else None
        except Exception as exc:  # noqa: BLE001 - the service may be restarting
            log.debug("metrics: %s unanswered: %s", subject, exc)
            return None

    while True:
        gateway, storage = await asyncio.gather(ask(wire.GATEWAY_STATS), ask(wire.STORAGE_STATS))
        metrics.services(gateway, storage)
        await asyncio.sleep(interval)


def serve(port: int, addr: str = "0.0.0.0") -> None:  # nosec B104 - the operator's metrics port inside its Pod; Prometheus scrapes it from outside the Pod
    """Start prometheus_client's HTTP server with only Precinct's collector."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(OPERATOR)
    start_http_server(port, addr=addr, registry=registry)
