"""The single-host health dashboard and Prometheus endpoint, started by the supervisor.

Three modules, one job each, all trusted and all inside the supervisor process:

  * runtime/monitor.py, `Monitor`: samples every plugin and the services'
    counters into one `view()`, read by the dashboard, `precinct top` (control
    op `top`) and /metrics.
  * runtime/web.py, `HttpServer`: aiohttp.web on 127.0.0.1. The dashboard
    server answers `/`, `/api/view` and `/metrics` (both data paths need the
    bearer token), and the marketplace page and its routes
    (runtime/market_web.py); the metrics server (`--metrics-port`) answers only
    `/metrics`, without a token, for a local Prometheus.
  * here, `Monitoring`: what the supervisor constructs (the monitor and its
    servers), and `dashboard.json` in the state dir (0600): the URL with the
    token, read by `precinct dashboard --url`.

Nothing here is reachable from a plugin: loopback only (a confined plugin has
its own network namespace), read-only except the marketplace's same-origin
POSTs, and the token is in the 0700 state dir.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .monitor import INTERVAL, Monitor, StatusFn

if TYPE_CHECKING:  # pragma: no cover
    from .web import HttpServer

log = logging.getLogger("precinct.dashboard")

DASHBOARD_FILE = "dashboard.json"


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
                 interval: float = INTERVAL, plugins_dir: Path | None = None) -> None:
        self.state_dir = state_dir
        self.plugins_dir = plugins_dir   # with one, the dashboard also serves the marketplace page
        self.core = core              # (NATS url, core creds): to count the dispatcher's outcomes
        self._core_nc = None
        self.monitor = Monitor(status_fn, nc, None, interval)
        self.dashboard_port, self.metrics_port = dashboard_port, metrics_port
        self.servers: list[HttpServer] = []
        self.info: dict[str, Any] = {}

    async def start(self) -> dict[str, Any]:
        # Imported here, not at the top: `precinct dashboard --url` needs only
        # read_info(), and aiohttp.web takes ~0.4 s to import.
        from .web import HttpServer

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
            market = None
            if self.plugins_dir is not None:
                from .market_web import MarketRoutes

                market = MarketRoutes(self.plugins_dir, self.state_dir, self._states)
            server = HttpServer(self.monitor, self.dashboard_port, token=token, dashboard=True, market=market)
            try:
                await server.start()
                self.servers.append(server)
                self.info.update(url=f"{server.url}#token={token}", token=token, port=server.port)
                log.info("dashboard: %s", self.info["url"])
            except OSError as exc:   # the port is taken, or the page is missing from the installation
                log.error("dashboard: cannot serve on 127.0.0.1:%s: %s", self.dashboard_port, exc)
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

    def _states(self) -> dict[str, str]:
        """Each plugin's state as the dashboard last sampled it (the marketplace shows it)."""
        return {pid: p.get("state", "?") for pid, p in self.monitor.view().get("plugins", {}).items()}

    async def close(self) -> None:
        for server in self.servers:
            await server.close()
        await self.monitor.stop()
        if self._core_nc is not None:
            with contextlib.suppress(Exception):
                await self._core_nc.close()
        (self.state_dir / DASHBOARD_FILE).unlink(missing_ok=True)
