"""The single-host health dashboard and Prometheus endpoint, served by the supervisor.

Three pieces, all trusted and all inside the supervisor process:

  * `Monitor` samples every plugin every `interval` seconds: the slot
    snapshot (state, CPU, memory, restarts, OOM kills), the violation ladder,
    the gateway's and storage's counters (requested over NATS in the platform
    account: `precinct.gateway.stats`, `precinct.admin.storage.stats`) and the
    dispatcher's per-command outcomes (`precinct.dispatch.*.result`, core
    account). It keeps a short history per plugin for the sparklines and
    makes every counter monotonic across service restarts. `view()` is what
    the dashboard, `precinct top` (control op `top`) and /metrics all read.
  * `HttpServer`: a minimal asyncio HTTP/1.1 server bound to 127.0.0.1.
    The dashboard server answers `/` (a static page: inline CSS, inline JS,
    inline SVG sparklines, nothing from the network), `/api/view` (JSON) and
    `/metrics`; the two data paths need `Authorization: Bearer <token>`. The
    page reads the token from the URL fragment (`#token=...`), which browsers
    never send to the server. The metrics server (`--metrics-port`) answers
    only `/metrics`, without a token, for a local Prometheus.
  * `dashboard.json` in the state dir (0600): the URL with the token, read by
    `precinct dashboard --url`.

Nothing here is reachable from a plugin: loopback only (a confined plugin has
its own network namespace), read-only, and the token is in the 0700 state dir.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from .. import metrics
from ..wire import subjects as wire

log = logging.getLogger("precinct.dashboard")

DASHBOARD_FILE = "dashboard.json"
HISTORY = 90                  # samples kept per plugin (3 minutes at the default interval)
INTERVAL = 2.0                # seconds between samples
STATS_TIMEOUT = 0.5           # seconds to wait for the gateway's / storage's counters
# What counts as an error (docs/monitoring.md). A plugin that answers
# `{"success": false, "error": "no quote #42"}` has done its job: that is an
# ordinary answer ("error" in the dispatcher's outcome), counted as a reply.
# Errors are the commands that got no usable answer: no reply in time, no
# instance listening, or a reply that is not JSON. (An exception inside a
# handler reaches the dispatcher as no reply, so as a timeout.)
ANSWERED = frozenset({"ok", "error"})
FAILED = frozenset({"timeout", "no_responders", "bad_reply"})
MAX_REQUEST_HEAD = 8192

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
        self.interval = interval
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
        for key, src in (("messages_out", "forwarded"), ("rate_limited", "rate_limited")):
            if gw is not None:
                traffic[key] = int(mono((pid, "gw", src), gw.get(src, 0)))
            else:
                traffic[key] = old_traffic.get(key, 0)
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

    def view(self) -> dict[str, Any]:
        return self._view

    async def fresh_view(self) -> dict[str, Any]:
        """A view sampled now (scrapes and `precinct top` see current numbers)."""
        return await self.sample(record=False)

    async def op_top(self, _request: dict) -> dict[str, Any]:
        """Control API op `top`."""
        return await self.fresh_view()


# -- HTTP --------------------------------------------------------------------------------


class HttpServer:
    """GET only, one request per connection, loopback only."""

    def __init__(self, monitor: Monitor, port: int = 0, token: str | None = None, dashboard: bool = True,
                 host: str = "127.0.0.1") -> None:
        self.monitor = monitor
        self.host, self.port = host, port
        self.token = token
        self.dashboard = dashboard
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_REQUEST_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = (lines[0].split(" ") + ["", "", ""])[:3]
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            status, ctype, body, extra = await self._route(method, urlsplit(target).path, headers)
            out = [f"HTTP/1.1 {status}", f"Content-Type: {ctype}", f"Content-Length: {len(body)}",
                   "Cache-Control: no-store", "X-Content-Type-Options: nosniff", "Referrer-Policy: no-referrer",
                   "X-Frame-Options: DENY", "Connection: close", *extra]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError,
                ValueError):
            pass
        finally:
            writer.close()

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.token is None:
            return True
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(value.strip().encode(), self.token.encode())

    def _host_ok(self, headers: dict[str, str]) -> bool:
        """Refuse other Host names (DNS rebinding): only loopback names."""
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        return name in ("127.0.0.1", "localhost", "[::1]", "")

    async def _route(self, method: str, path: str, headers: dict[str, str]) -> tuple[str, str, bytes, list[str]]:
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text, b"read-only\n", ["Allow: GET, HEAD"]
        if not self._host_ok(headers):
            return "421 Misdirected Request", text, b"loopback only\n", []
        if path == "/metrics":
            if not self._authorized(headers):
                return "401 Unauthorized", text, b"token required\n", ['WWW-Authenticate: Bearer realm="precinct"']
            view = await self.monitor.fresh_view()
            return "200 OK", metrics.CONTENT_TYPE, metrics.exposition(view), []
        if not self.dashboard:
            return "404 Not Found", text, b"only /metrics here\n", []
        if path in ("/", "/index.html"):
            nonce = secrets.token_urlsafe(12)
            csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                   "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                   "frame-ancestors 'none'")
            page = PAGE.replace("{{NONCE}}", nonce).encode()
            return "200 OK", "text/html; charset=utf-8", page, [f"Content-Security-Policy: {csp}"]
        if path == "/favicon.ico":
            return "204 No Content", text, b"", []
        if path == "/api/view":
            if not self._authorized(headers):
                return "401 Unauthorized", text, b"token required\n", ['WWW-Authenticate: Bearer realm="precinct"']
            return "200 OK", "application/json", json.dumps(self.monitor.view()).encode(), []
        return "404 Not Found", text, b"not found\n", []


def write_info(state_dir: Path, info: dict[str, Any]) -> Path:
    """dashboard.json (0600): what `precinct dashboard --url` prints."""
    path = state_dir / DASHBOARD_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
    return path


def read_info(state_dir: Path) -> dict[str, Any]:
    return json.loads((state_dir / DASHBOARD_FILE).read_text())


class Monitoring:
    """What the supervisor constructs: the monitor, the dashboard server and,
    if asked, the metrics server. Ports: None = off, 0 = any free port."""

    def __init__(self, state_dir: Path, status_fn: StatusFn, *, nc=None, core: tuple[str, str] | None = None,
                 dashboard_port: int | None = 0, metrics_port: int | None = None,
                 interval: float = INTERVAL) -> None:
        self.state_dir = state_dir
        self.core = core              # (NATS url, core creds): to count the dispatcher's outcomes
        self._core_nc = None
        self.monitor = Monitor(status_fn, nc, None, interval)
        self.dashboard_port, self.metrics_port = dashboard_port, metrics_port
        self.servers: list[HttpServer] = []
        self.info: dict[str, Any] = {}

    async def start(self) -> dict[str, Any]:
        if self.core is not None:
            import nats

            try:
                self._core_nc = await nats.connect(self.core[0], user_credentials=self.core[1],
                                                   name="precinct-monitor", max_reconnect_attempts=-1,
                                                   reconnect_time_wait=0.5)
                self.monitor.core_nc = self._core_nc
            except Exception as exc:  # noqa: BLE001 - the dashboard works without command counts
                log.warning("monitor: cannot connect to NATS as core: %s", exc)
        await self.monitor.start()
        if self.dashboard_port is not None:
            token = secrets.token_urlsafe(24)
            server = HttpServer(self.monitor, self.dashboard_port, token=token, dashboard=True)
            try:
                await server.start()
                self.servers.append(server)
                self.info.update(url=f"{server.url}#token={token}", token=token, port=server.port)
                log.info("dashboard: %s", self.info["url"])
            except OSError as exc:
                log.error("dashboard: cannot listen on 127.0.0.1:%s: %s", self.dashboard_port, exc)
        if self.metrics_port is not None:
            server = HttpServer(self.monitor, self.metrics_port, token=None, dashboard=False)
            try:
                await server.start()
                self.servers.append(server)
                self.info["metrics_url"] = f"{server.url}metrics"
                log.info("metrics: %s", self.info["metrics_url"])
            except OSError as exc:
                log.error("metrics: cannot listen on 127.0.0.1:%s: %s", self.metrics_port, exc)
        write_info(self.state_dir, self.info)
        return self.info

    async def close(self) -> None:
        for server in self.servers:
            await server.close()
        await self.monitor.stop()
        if self._core_nc is not None:
            with contextlib.suppress(Exception):
                await self._core_nc.close()
        (self.state_dir / DASHBOARD_FILE).unlink(missing_ok=True)


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>precinct — plugin health</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{{NONCE}}">
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .3em}
#meta{color:#666;margin-bottom:1em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:.3em .45em;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:middle;white-space:nowrap}
th{background:#f0f0f0;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.violations{white-space:normal;max-width:14em}
.state{font-weight:600;padding:.1em .45em;border-radius:3px}
.Running{background:#d9f2dd;color:#145a21}.Starting{background:#fff3c4}.BackOff,.CrashLoopBackOff{background:#fbd5d5;color:#8a1111}
.Suspended,.Rejected{background:#eadcf7;color:#4c1d7a}.Stopped{background:#e4e4e4}
.bar{display:inline-block;width:70px;height:8px;background:#eee;margin-left:.4em;vertical-align:middle}
.bar i{display:block;height:8px;background:#4a8fe0}.bar i.hot{background:#e0574a}
svg.spark{vertical-align:middle}
.bad{color:#b00;font-weight:600}
#error{color:#b00}
</style></head>
<body>
<h1>precinct — plugin health</h1>
<div id="meta">sample <span id="samples">–</span> · up <span id="uptime">–</span> s · <span id="services"></span><span id="refusal-note" class="bad"></span> <span id="error"></span></div>
<table id="plugins"><thead><tr>
<th>plugin</th><th>version</th><th>state</th><th>CPU</th><th>memory / limit</th><th>in</th><th>out</th>
<th>replies</th><th>errors</th><th>rate-limited</th><th>violations</th><th>refused</th><th>restarts</th><th>OOM</th><th>last exit</th>
<th>memory (3 min)</th><th>CPU (3 min)</th></tr></thead><tbody></tbody></table>
<script nonce="{{NONCE}}">
"use strict";
const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
const NS = "http://www.w3.org/2000/svg";
function mib(n){ return n == null ? "–" : (n / 1048576).toFixed(1) + " Mi"; }
function td(text, cls){ const c = document.createElement("td"); c.textContent = text; if (cls) c.className = cls; return c; }
function spark(values, kind){
  const w = 100, h = 24, svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "spark"); svg.setAttribute("data-kind", kind);
  svg.setAttribute("width", w); svg.setAttribute("height", h); svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const max = Math.max(1e-9, ...values), n = values.length;
  const pts = values.map((v, i) => `${n > 1 ? (i * (w - 2) / (n - 1) + 1).toFixed(1) : 1},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`);
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", pts.join(" ")); line.setAttribute("fill", "none");
  line.setAttribute("stroke", kind === "cpu" ? "#e08a2c" : "#4a8fe0"); line.setAttribute("stroke-width", "1.5");
  svg.appendChild(line);
  const title = document.createElementNS(NS, "title");
  title.textContent = kind + " over the last " + n + " samples"; svg.appendChild(title);
  return svg;
}
function usage(used, limit){
  const c = document.createElement("td"); c.className = "num";
  c.appendChild(document.createTextNode(mib(used) + (limit ? " / " + mib(limit) : "")));
  if (limit) {
    const bar = document.createElement("span"), fill = document.createElement("i"), f = Math.min(1, used / limit);
    bar.className = "bar"; fill.style.width = (f * 100).toFixed(0) + "%"; if (f > 0.85) fill.className = "hot";
    bar.appendChild(fill); c.appendChild(bar);
  }
  return c;
}
function render(view){
  document.getElementById("samples").textContent = view.samples;
  document.getElementById("uptime").textContent = Math.round(view.uptime_seconds || 0);
  document.getElementById("services").textContent = Object.entries(view.services || {}).map(([n, s]) => n + " " + s.state).join(", ");
  const lost = Object.values(view.refusals_lost || {}).reduce((a, b) => a + b, 0);
  const unreported = Object.entries(view.refusal_reporting || {}).filter(([m, how]) => how.startsWith("MISSING")).map(([m]) => m);
  document.getElementById("refusal-note").textContent = (lost ? " · refusal records lost: " + lost : "") +
    (unreported.length ? " · refusals not reported: " + unreported.join(", ") : "");
  const body = document.querySelector("#plugins tbody"); const rows = [];
  for (const [id, p] of Object.entries(view.plugins || {})) {
    const tr = document.createElement("tr"); tr.dataset.plugin = id; const t = p.traffic || {}, v = p.violations || {};
    tr.appendChild(td(id, "name"));
    const ver = td(p.version ? p.version + (p.revision ? " r" + p.revision : "") : "–", "version");
    if (p.digest) ver.title = "code sha256 " + p.digest + "…"; tr.appendChild(ver);
    const st = td(""); const badge = document.createElement("span"); badge.className = "state " + p.state;
    badge.textContent = p.state; badge.title = "Ready " + p.ready + (p.reason ? " (" + p.reason + ")" : "") + (p.message ? ": " + p.message : "");
    st.appendChild(badge); tr.appendChild(st);
    const cpuLimit = (p.limits || {}).cpu_millicores;
    tr.appendChild(td(p.cpu_percent.toFixed(1) + "%" + (cpuLimit ? " / " + (cpuLimit / 10).toFixed(0) + "%" : ""), "num cpu"));
    tr.appendChild(usage(p.memory_bytes, (p.limits || {}).memory_bytes));
    tr.appendChild(td(String(t.messages_in ?? 0), "num in"));
    tr.appendChild(td(String(t.messages_out ?? 0), "num out"));
    tr.appendChild(td(String(t.replies ?? 0), "num replies"));
    tr.appendChild(td(String(t.errors ?? 0), "num errors" + (t.errors ? " bad" : "")));
    tr.appendChild(td(String(t.rate_limited ?? 0), "num ratelimited" + (t.rate_limited ? " bad" : "")));
    const kinds = Object.entries(p.violations_by_kind || {}).filter(([k, n]) => n > 0).map(([k, n]) => k + " " + n);
    tr.appendChild(td((kinds.join(", ") || "none") + (v.strikes ? ` (${v.strikes} strike${v.strikes > 1 ? "s" : ""}${v.last_action ? ", " + v.last_action : ""})` : ""), "violations" + (kinds.length ? " bad" : "")));
    const refused = Object.entries(p.refusals || {}).filter(([m, n]) => n > 0).map(([m, n]) => m + " " + n);
    tr.appendChild(td(refused.join(", ") || "none", "violations refused"));
    tr.appendChild(td(String(p.restarts), "num restarts"));
    tr.appendChild(td(String(p.oom_kills), "num oom" + (p.oom_kills ? " bad" : "")));
    tr.appendChild(td(p.last_exit || "–"));
    const hm = td(""); hm.appendChild(spark(p.history.memory_bytes, "memory")); tr.appendChild(hm);
    const hc = td(""); hc.appendChild(spark(p.history.cpu_percent, "cpu")); tr.appendChild(hc);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}
async function tick(){
  try {
    const r = await fetch("api/view", {headers: {"Authorization": "Bearer " + token}, cache: "no-store"});
    if (!r.ok) { document.getElementById("error").textContent = r.status === 401 ? "bad or missing token (use `precinct dashboard --url`)" : "HTTP " + r.status; return; }
    document.getElementById("error").textContent = "";
    render(await r.json());
  } catch (e) { document.getElementById("error").textContent = "supervisor unreachable"; }
}
tick(); setInterval(tick, 1000);
</script></body></html>
"""
