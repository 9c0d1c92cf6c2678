"""Plugin health numbers for the single-host runtime: one `view()` for the
dashboard, `precinct top` (control op `top`) and /metrics.

`Monitor` samples every plugin every `interval` seconds (2 s, or N / 100 s
above 200 plugins, so sampling never costs more than about 100 plugins' worth
a second: at 500 plugins it was most of the idle supervisor's CPU): the slot snapshot
(state, CPU, memory, restarts, OOM kills), the violation ladder, the gateway's
and storage's counters (requested over NATS in the platform account:
`precinct.gateway.stats`, `precinct.admin.storage.stats`) and the dispatcher's
per-command outcomes (`precinct.dispatch.*.result`, core account). It keeps a
short history per plugin for the sparklines and makes every counter monotonic
across service restarts (`Monotonic`).

Serving these numbers over HTTP is runtime/web.py's job (started by
runtime/dashboard.py); nothing here listens on a socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from typing import Any, Awaitable, Callable

from .. import metrics
from ..wire import subjects as wire

log = logging.getLogger("precinct.monitor")

HISTORY = 90                  # samples kept per plugin (3 minutes at the default interval)
INTERVAL = 2.0                # seconds between samples, at most 200 plugins
PLUGINS_PER_SECOND = 100      # beyond 200 plugins the interval grows: N / 100 s
STATS_TIMEOUT = 0.5           # seconds to wait for the gateway's / storage's counters
# What counts as an error (docs/monitoring.md). A plugin that answers
# `{"success": false, "error": "no quote #42"}` has done its job: that is an
# ordinary answer ("error" in the dispatcher's outcome), counted as a reply.
# Errors are the commands that got no usable answer: no reply in time, no
# instance listening, or a reply that is not JSON. (An exception inside a
# handler reaches the dispatcher as no reply, so as a timeout.)
ANSWERED = frozenset({"ok", "error"})
FAILED = frozenset({"timeout", "no_responders", "bad_reply"})

StatusFn = Callable[[], Awaitable[dict[str, Any]]]


class Monotonic:
    """Counters that survive the source restarting (its numbers go back to 0)."""

    def __init__(self) -> None:
        self._last: dict[tuple, float] = {}
        self._offset: dict[tuple, float] = {}

    def __call__(self, key: tuple, value: float) -> float:
        last = self._last.get(key)
        if last is not None and value < last:
            self._offset[key] = self._offset.get(key, 0) + last
        self._last[key] = value
        return self._offset.get(key, 0) + value


class Monitor:
    def __init__(self, status_fn: StatusFn, nc=None, core_nc=None, interval: float = INTERVAL,
                 history: int = HISTORY) -> None:
        self.status_fn = status_fn
        self.nc = nc                  # platform account: gateway and storage stats
        self.core_nc = core_nc        # core account: the dispatcher's outcomes
        self.base_interval = interval
        self.interval = interval      # grows with the fleet: interval_for()
        self.history_len = history
        self.dispatch: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.history: dict[str, collections.deque] = {}
        self.samples = 0
        self._view: dict[str, Any] = {"plugins": {}, "services": {}, "samples": 0}
        self._prev_cpu: dict[str, tuple[float, float]] = {}
        self._mono = Monotonic()
        self._task: asyncio.Task | None = None
        self._sub = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if self.core_nc is not None:
            self._sub = await self.core_nc.subscribe(wire.DISPATCH_RESULTS, cb=self._on_result)
        await self.sample()
        self._task = asyncio.create_task(self._loop(), name="monitor")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sample()
            except Exception:  # noqa: BLE001 - a bad sample must not end monitoring
                log.exception("monitor: sampling failed")

    async def _on_result(self, msg) -> None:
        try:
            outcome = json.loads(msg.data)
            plugin, status = str(outcome.get("plugin") or ""), str(outcome.get("status") or "")
        except (ValueError, AttributeError):
            return
        if not plugin:
            return
        c = self.dispatch[plugin]
        if status in ANSWERED or status in FAILED:
            c["messages_in"] += 1
        if status in ANSWERED:
            c["replies"] += 1
        if status in FAILED:
            c["errors"] += 1

    async def _request(self, subject: str) -> dict[str, Any]:
        if self.nc is None:
            return {}
        try:
            msg = await self.nc.request(subject, b"{}", timeout=STATS_TIMEOUT)
            body = json.loads(msg.data)
            return body.get("plugins") or {} if isinstance(body, dict) else {}
        except Exception:  # noqa: BLE001 - the service may be restarting: keep the last numbers
            return {}

    # -- sampling ---------------------------------------------------------------------

    async def sample(self, record: bool = True) -> dict[str, Any]:
        """Read everything now; `record` adds the sample to the history (the
        periodic loop does; scrapes and `precinct top` do not)."""
        async with self._lock:
            return await self._sample(record)

    async def _sample(self, record: bool) -> dict[str, Any]:

        status = await self.status_fn()
        gateway, storage = await asyncio.gather(self._request(wire.GATEWAY_STATS), self._request(wire.STORAGE_STATS))
        now = time.time()
        old = self._view.get("plugins", {})
        plugins: dict[str, Any] = {}
        for pid, snap in (status.get("plugins") or {}).items():
            row = self._row(pid, snap, gateway.get(pid), storage.get(pid), old.get(pid), now, record)
            plugins[pid] = row
        for pid in list(self.history):
            if pid not in plugins:
                del self.history[pid]
        if record:
            self.samples += 1
            self.interval = self.interval_for(len(plugins))
        self._view = {
            "generated_at": now, "samples": self.samples, "interval_seconds": self.interval,
            "uptime_seconds": status.get("uptime_seconds"), "nats": status.get("nats"),
            "services": {n: {"state": s.get("state"), "restarts": s.get("restarts", 0)}
                         for n, s in (status.get("services") or {}).items()},
            "plugins": plugins,
            "refusals_lost": {k: int(v) for k, v in ((status.get("refusals") or {}).get("lost") or {}).items()},
            "refusal_reporting": (status.get("refusals") or {}).get("reporting") or {},
        }
        return self._view

    def _row(self, pid: str, snap: dict, gw: dict | None, st: dict | None, old: dict | None,
             now: float, record: bool = True) -> dict[str, Any]:
        mono = self._mono
        ready = next((c for c in snap.get("conditions") or [] if c.get("type") == "Ready"), {})
        violations = snap.get("violations") or {}
        old_traffic = (old or {}).get("traffic") or {}
        traffic = {}
        d = self.dispatch.get(pid, {})
        for key in ("messages_in", "replies", "errors"):
            traffic[key] = d.get(key, 0)
        for key, src in (("messages_out", "forwarded"), ("rate_limited", "rate_limited"), ("calls_served", "calls_served")):
            if gw is not None:
                traffic[key] = int(mono((pid, "gw", src), gw.get(src, 0)))
            else:
                traffic[key] = old_traffic.get(key, 0)
        if gw is not None:
            traffic["calls"] = {outcome: int(mono((pid, "gw", src), gw.get(src, 0)))
                                for outcome, src in metrics.CALL_OUTCOMES.items()}
        else:
            traffic["calls"] = old_traffic.get("calls", {})
        storage = None
        if st is not None:
            storage = {"requests": int(mono((pid, "st", "requests"), st.get("requests", 0))),
                       "errors": int(mono((pid, "st", "errors"), st.get("errors", 0))),
                       "used_bytes": st.get("used_bytes"), "limit_bytes": st.get("limit_bytes")}
        elif old:
            storage = old.get("storage")
        by_kind = {k: int(v) for k, v in (violations.get("counts") or {}).items()}
        by_kind = {k: int(mono((pid, "violations", k), v)) for k, v in by_kind.items()}
        for k, v in ((old or {}).get("violations_by_kind") or {}).items():
            by_kind.setdefault(k, v)
        cpu = float(snap.get("cpu_seconds") or 0.0)
        cpu_total = mono((pid, "cpu"), cpu) if snap.get("pid") else (old or {}).get("cpu_seconds", cpu)
        prev = self._prev_cpu.get(pid)
        if not record:   # a scrape between samples: the last sampled rate
            cpu_percent = (old or {}).get("cpu_percent", 0.0) if snap.get("pid") else 0.0
        elif prev is not None and now > prev[1] and snap.get("pid"):
            cpu_percent = max(0.0, (cpu_total - prev[0]) / (now - prev[1]) * 100)
        else:
            cpu_percent = 0.0
        if record:
            self._prev_cpu[pid] = (cpu_total, now)
        limits = snap.get("limits") or {}
        hist = self.history.setdefault(pid, collections.deque(maxlen=self.history_len))
        msgs = traffic.get("messages_in", 0) + traffic.get("messages_out", 0)
        if record:
            hist.append((round(now, 1), round(cpu_percent, 2), int(snap.get("memory_bytes") or 0), msgs))
        return {
            "id": pid, "version": snap.get("version"), "revision": snap.get("revision"),
            "digest": snap.get("digest"), "state": snap.get("state"), "ready": ready.get("status", "Unknown"),
            "reason": ready.get("reason", ""), "message": (ready.get("message") or "")[:300],
            "pid": snap.get("pid"), "restarts": snap.get("restarts", 0), "oom_kills": snap.get("oom_kills", 0),
            "log_dropped_bytes": snap.get("log_dropped_bytes", 0),
            "last_exit": snap.get("last_exit"), "cpu_seconds": round(cpu_total, 3),
            "cpu_percent": round(cpu_percent, 2), "memory_bytes": int(snap.get("memory_bytes") or 0),
            "limits": limits, "traffic": traffic, "storage": storage,
            "violations_by_kind": by_kind,
            "refusals": {m: int(mono((pid, "refusals", m), n))
                         for m, n in ((snap.get("refusals") or {}).get("counts") or {}).items()},
            "violations": {"strikes": violations.get("strikes", 0), "last_kind": violations.get("last_kind"),
                           "last_action": violations.get("last_action"),
                           "last_event_age_seconds": violations.get("last_event_age_seconds"),
                           "suspended": violations.get("suspended", False)},
            "reloads": snap.get("reloads") or {},
            "history": {"t": [h[0] for h in hist], "cpu_percent": [h[1] for h in hist],
                        "memory_bytes": [h[2] for h in hist], "messages": [h[3] for h in hist]},
        }

    def interval_for(self, plugins: int) -> float:
        """Seconds between samples for a fleet this size: the base interval,
        longer once more than 500 plugins would make a sample every 2 s cost
        a noticeable share of a core."""
        return max(self.base_interval, plugins / PLUGINS_PER_SECOND)

    def view(self) -> dict[str, Any]:
        return self._view

    async def fresh_view(self) -> dict[str, Any]:
        """A view sampled now (scrapes and `precinct top` see current numbers)."""
        return await self.sample(record=False)

    async def op_top(self, _request: dict) -> dict[str, Any]:
        """Control API op `top`: the last sample (at most one interval old),
        as the dashboard shows it. Sampling again for each `precinct top`
        would make every open `top` cost as much as the monitor itself."""
        return self._view
