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

Served by `precinct operator --metrics-port N` (prometheus_client's own
HTTP server, all interfaces: the chart's Service/ServiceMonitor scrapes it).
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Iterable

from .. import metrics as m

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


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start prometheus_client's HTTP server with only Precinct's collector."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(OPERATOR)
    start_http_server(port, addr=addr, registry=registry)
