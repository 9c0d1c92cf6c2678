"""Precinct's Prometheus metrics: ONE naming scheme for both runtimes.

Every metric is named here, with its type, help text and label set; nothing
else in the code base invents a metric name. The single-host supervisor
(runtime/dashboard.py) and the Kubernetes operator (k8s/metrics.py) export
these names; the Helm chart's alerts and Grafana dashboard use only these
names (tests/test_monitoring.py checks that).

Labels are low-cardinality by construction: `plugin` (the plugin id) and,
for a few metrics, `kind`, `mechanism`, `outcome`, `state` or `source` from
the small fixed sets below. There is never a user, channel or subject label.

| metric | type | labels | meaning |
|---|---|---|---|
| precinct_plugin_cpu_seconds_total | counter | plugin | CPU time used (cgroup cpuacct, else /proc) |
| precinct_plugin_cpu_limit_cores | gauge | plugin | the plan's CPU limit, in cores |
| precinct_plugin_memory_bytes | gauge | plugin | memory in use now (cgroup, else RSS) |
| precinct_plugin_memory_limit_bytes | gauge | plugin | the plan's memory limit |
| precinct_plugin_restarts_total | counter | plugin | restarts by the supervisor (crashes, violation restarts) |
| precinct_plugin_oom_kills_total | counter | plugin | instances that ended OOMKilled |
| precinct_plugin_log_dropped_bytes_total | counter | plugin | stdout/stderr bytes discarded over the per-plugin log cap |
| precinct_plugin_messages_in_total | counter | plugin | commands delivered to the plugin by the dispatcher |
| precinct_plugin_messages_out_total | counter | plugin | messages the gateway relayed from the plugin |
| precinct_plugin_replies_total | counter | plugin | commands the plugin answered (success or error) |
| precinct_plugin_errors_total | counter | plugin | commands that got no usable answer: no reply in time, no instance listening, a reply that is not JSON (a `success: false` answer is a reply, not an error) |
| precinct_plugin_rate_limited_total | counter | plugin | messages the gateway dropped for the plugin's rate |
| precinct_plugin_calls_total | counter | plugin, outcome | calls the plugin made to other plugins, through the gateway: outcome = answered, rate_limited, failed (not declared, nobody exports it, no answer in time) |
| precinct_plugin_calls_served_total | counter | plugin | calls to the plugin's exports that it answered |
| precinct_plugin_violations_total | counter | plugin, kind | violations (strikes' events): kind = rate_limit, permission, duplicate_reply, seccomp, landlock, egress |
| precinct_plugin_refusals_total | counter | plugin, mechanism | every refusal by the sandbox: mechanism = seccomp, landlock, egress |
| precinct_refusal_records_lost_total | counter | source | refusal records lost host-wide: source = kernel_backlog, socket_overflows, reader_over_budget |
| precinct_plugin_reloads_total | counter | plugin, outcome | reloads/rollouts: outcome = succeeded, failed, rolled_back |
| precinct_plugin_state | gauge | plugin, state | 1 for the plugin's current state, 0 for the others |
| precinct_plugin_storage_requests_total | counter | plugin | storage API requests |
| precinct_plugin_storage_errors_total | counter | plugin | storage API requests answered with an error |
| precinct_plugin_storage_bytes | gauge | plugin | the plugin's database size |
| precinct_plugin_storage_limit_bytes | gauge | plugin | its quota |
| precinct_operator_reconciles_total | counter | outcome | operator reconciles: outcome = ok, retry, error |

On Kubernetes, CPU and memory come from the kubelet (cAdvisor) instead:
`container_cpu_usage_seconds_total` and `container_memory_working_set_bytes`
joined to `kube_pod_labels{label_precinct_dev_plugin}` (docs/monitoring.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

COUNTER, GAUGE = "counter", "gauge"

VIOLATION_KINDS = ("rate_limit", "permission", "duplicate_reply", "seccomp", "landlock", "egress")
REFUSAL_MECHANISMS = ("seccomp", "landlock", "egress")
LOST_SOURCES = ("kernel_backlog", "socket_overflows", "reader_over_budget")
RELOAD_OUTCOMES = ("succeeded", "failed", "rolled_back")
RECONCILE_OUTCOMES = ("ok", "retry", "error")
# Outcome -> the gateway's counter for it (services/gateway.py Counters).
CALL_OUTCOMES = {"answered": "calls_answered", "rate_limited": "calls_rate_limited", "failed": "calls_failed"}
# Single-host slot states (runtime/slot.py) and the operator's (k8s/metrics.py).
STATES = ("Starting", "Running", "BackOff", "CrashLoopBackOff", "Stopped", "Rejected", "Suspended",
          "Progressing", "Failed")


@dataclass(frozen=True)
class Metric:
    name: str            # the exposed name, with `_total` for counters
    type: str
    help: str
    labels: tuple[str, ...] = ("plugin",)

    @property
    def family(self) -> str:
        """The name prometheus_client wants (it appends `_total` to counters)."""
        return self.name[: -len("_total")] if self.type == COUNTER else self.name


def _m(name: str, type_: str, help_: str, labels: tuple[str, ...] = ("plugin",)) -> Metric:
    return Metric(name, type_, help_, labels)


CPU_SECONDS = _m("precinct_plugin_cpu_seconds_total", COUNTER, "CPU seconds used by the plugin")
CPU_LIMIT = _m("precinct_plugin_cpu_limit_cores", GAUGE, "CPU limit of the plugin, in cores")
MEMORY = _m("precinct_plugin_memory_bytes", GAUGE, "Memory the plugin uses now")
MEMORY_LIMIT = _m("precinct_plugin_memory_limit_bytes", GAUGE, "Memory limit of the plugin")
RESTARTS = _m("precinct_plugin_restarts_total", COUNTER, "Restarts of the plugin")
OOM_KILLS = _m("precinct_plugin_oom_kills_total", COUNTER, "Plugin instances killed for exceeding memory")
LOG_DROPPED = _m("precinct_plugin_log_dropped_bytes_total", COUNTER, "Plugin output bytes discarded over the log cap")
MESSAGES_IN = _m("precinct_plugin_messages_in_total", COUNTER, "Commands delivered to the plugin")
MESSAGES_OUT = _m("precinct_plugin_messages_out_total", COUNTER, "Messages relayed from the plugin by the gateway")
REPLIES = _m("precinct_plugin_replies_total", COUNTER, "Commands the plugin answered")
ERRORS = _m("precinct_plugin_errors_total", COUNTER,
            "Commands that got no usable answer (timeout, no responders, a reply that is not JSON)")
RATE_LIMITED = _m("precinct_plugin_rate_limited_total", COUNTER, "Messages dropped by the plugin's rate limit")
CALLS = _m("precinct_plugin_calls_total", COUNTER, "Calls to other plugins by outcome", ("plugin", "outcome"))
CALLS_SERVED = _m("precinct_plugin_calls_served_total", COUNTER, "Calls to the plugin's exports that it answered")
VIOLATIONS = _m("precinct_plugin_violations_total", COUNTER, "Violations by kind", ("plugin", "kind"))
REFUSALS = _m("precinct_plugin_refusals_total", COUNTER, "Refusals by the sandbox, by mechanism", ("plugin", "mechanism"))
REFUSALS_LOST = _m("precinct_refusal_records_lost_total", COUNTER, "Refusal records lost, by source", ("source",))
RELOADS = _m("precinct_plugin_reloads_total", COUNTER, "Reloads or rollouts by outcome", ("plugin", "outcome"))
STATE = _m("precinct_plugin_state", GAUGE, "1 for the plugin's current state", ("plugin", "state"))
STORAGE_REQUESTS = _m("precinct_plugin_storage_requests_total", COUNTER, "Storage API requests")
STORAGE_ERRORS = _m("precinct_plugin_storage_errors_total", COUNTER, "Storage API requests that failed")
STORAGE_BYTES = _m("precinct_plugin_storage_bytes", GAUGE, "Size of the plugin's database")
STORAGE_LIMIT = _m("precinct_plugin_storage_limit_bytes", GAUGE, "Quota of the plugin's database")
RECONCILES = _m("precinct_operator_reconciles_total", COUNTER, "Operator reconciles by outcome", ("outcome",))

ALL: tuple[Metric, ...] = (CPU_SECONDS, CPU_LIMIT, MEMORY, MEMORY_LIMIT, RESTARTS, OOM_KILLS, LOG_DROPPED, MESSAGES_IN,
                           MESSAGES_OUT, REPLIES, ERRORS, RATE_LIMITED, CALLS, CALLS_SERVED, VIOLATIONS, REFUSALS, RELOADS, STATE,
                           STORAGE_REQUESTS, STORAGE_ERRORS, STORAGE_BYTES, STORAGE_LIMIT, REFUSALS_LOST,
                           RECONCILES)
BY_NAME = {m.name: m for m in ALL}


def names() -> set[str]:
    """Every exposed series name (counters also as their `_created` siblings are NOT exported)."""
    return set(BY_NAME)


def new_family(metric: Metric):
    cls = CounterMetricFamily if metric.type == COUNTER else GaugeMetricFamily
    return cls(metric.family, metric.help, labels=list(metric.labels))


# -- the single-host data model -------------------------------------------------------

def plugin_rows(view: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    return sorted((view.get("plugins") or {}).items())


def families(view: dict[str, Any]) -> list:
    """Metric families from one monitor view (runtime/monitor.py `Monitor.view()`):

    {"plugins": {id: {"state", "cpu_seconds", "memory_bytes", "limits": {...},
                      "restarts", "oom_kills", "log_dropped_bytes", "traffic": {...}, "violations_by_kind": {...},
                      "refusals": {mechanism: n}, "reloads": {outcome: n}, "storage": {...}}},
     "refusals_lost": {source: n}}
    Missing fields are simply not exported for that plugin.
    """
    fams = {m.name: new_family(m) for m in ALL if m is not RECONCILES}
    lost = view.get("refusals_lost") or {}
    for source in sorted(set(LOST_SOURCES) & set(lost)):
        try:
            fams[REFUSALS_LOST.name].add_metric([source], float(lost[source]))
        except (TypeError, ValueError):
            pass
    for pid, p in plugin_rows(view):
        def put(metric: Metric, value: Any, *extra: str) -> None:
            if value is None:
                return
            try:
                fams[metric.name].add_metric([pid, *extra], float(value))
            except (TypeError, ValueError):
                pass
        limits = p.get("limits") or {}
        traffic = p.get("traffic") or {}
        storage = p.get("storage") or {}
        put(CPU_SECONDS, p.get("cpu_seconds"))
        if limits.get("cpu_millicores"):
            put(CPU_LIMIT, limits["cpu_millicores"] / 1000)
        put(MEMORY, p.get("memory_bytes"))
        put(MEMORY_LIMIT, limits.get("memory_bytes"))
        put(RESTARTS, p.get("restarts", 0))
        put(OOM_KILLS, p.get("oom_kills", 0))
        put(LOG_DROPPED, p.get("log_dropped_bytes", 0))
        for metric, key in ((MESSAGES_IN, "messages_in"), (MESSAGES_OUT, "messages_out"), (REPLIES, "replies"),
                            (ERRORS, "errors"), (RATE_LIMITED, "rate_limited")):
            put(metric, traffic.get(key, 0))
        calls = traffic.get("calls") or {}
        for outcome in CALL_OUTCOMES:
            put(CALLS, calls.get(outcome, 0), outcome)
        put(CALLS_SERVED, traffic.get("calls_served", 0))
        by_kind = p.get("violations_by_kind") or {}
        for kind in sorted(set(VIOLATION_KINDS) | set(by_kind)):
            put(VIOLATIONS, by_kind.get(kind, 0), kind)
        refusals = p.get("refusals")
        if refusals is not None:
            for mechanism in sorted(set(REFUSAL_MECHANISMS) | set(refusals)):
                put(REFUSALS, refusals.get(mechanism, 0), mechanism)
        reloads = p.get("reloads") or {}
        for outcome in sorted(set(RELOAD_OUTCOMES) | set(reloads)):
            put(RELOADS, reloads.get(outcome, 0), outcome)
        state = str(p.get("state") or "Unknown")
        for s in sorted(set(STATES[:7]) | {state}):
            put(STATE, 1 if s == state else 0, s)
        if storage:
            put(STORAGE_REQUESTS, storage.get("requests", 0))
            put(STORAGE_ERRORS, storage.get("errors", 0))
            put(STORAGE_BYTES, storage.get("used_bytes"))
            put(STORAGE_LIMIT, storage.get("limit_bytes"))
    return list(fams.values())


class ViewCollector(Collector):
    """A custom collector: reads the current view at scrape time."""

    def __init__(self, get_view: Callable[[], dict[str, Any]]) -> None:
        self.get_view = get_view

    def collect(self):
        yield from families(self.get_view())


def exposition(view: dict[str, Any]) -> bytes:
    """The text format for one view (what /metrics answers)."""
    from prometheus_client import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ViewCollector(lambda: view))
    return generate_latest(registry)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
