"""The marketplace page's HTTP routes, on the dashboard's server (runtime/web.py).

    GET  /market                    the page (runtime/static/market.html)
    GET  /api/market                the listing (market/catalog.py)
    GET  /api/market/jobs/<id>      one operation's progress and result
    POST /api/market/install        {"plugin", "version"?}
    POST /api/market/update         {"plugin", "version"?, "accept"?: permission diff fingerprint}
    POST /api/market/rollback       {"plugin", "to"?, "accept"?}
    POST /api/market/remove         {"plugin", "purge"?}

Every /api path needs the dashboard's bearer token in the Authorization
header. The POSTs change the plugins dir, so web.py lets them through only
from the page itself: the Origin header must name this server (a page on
another site cannot forge it, and a cross-site request with an Authorization
header or a JSON body needs a CORS preflight this server never answers), and
the body must be JSON.

Each POST starts a job running market/install.py's install, rollback or
remove in a thread (the very functions `precinct plugin ...` runs) and
answers 202 with its id; the page polls the job for each step and the result
in words. An update or rollback whose version may do more than the installed
one is applied only with `accept` equal to the fingerprint of the permission
diff the page showed: otherwise install.check_consent refuses it, and the job
fails with that diff, as the CLI does without --accept-permissions.

Only plugin names from the configured index are accepted (never a file or a
URL: a page must not install what the index has not signed).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

PLUGIN_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")
KEPT_JOBS = 20

Refused = Callable[[web.Request], "web.Response | None"]
States = Callable[[], "dict[str, str] | None"]


class Job:
    def __init__(self, job_id: str, action: str, plugin: str) -> None:
        self.id, self.action, self.plugin = job_id, action, plugin
        self.state = "running"             # running | done | failed
        self.steps: list[str] = []
        self.error: str | None = None
        self.check: str | None = None
        self.result: dict[str, Any] | None = None
        self.permissions: dict[str, Any] | None = None   # the diff a refused update needs accepted
        self.started = time.time()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, "plugin": self.plugin, "state": self.state,
                "steps": list(self.steps), "error": self.error, "check": self.check, "result": self.result,
                "permissions": self.permissions}


class MarketRoutes:
    """The routes above for one plugins dir and state dir (those `precinct up` runs)."""

    def __init__(self, plugins_dir: Path, state_dir: Path, states: States) -> None:
        self.plugins_dir, self.state_dir = plugins_dir, state_dir
        self.states = states
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._catalog = None
        self._refused: Refused = lambda _request: None

    def add_routes(self, app: web.Application, refused: Refused, page: Callable) -> None:
        self._refused = refused
        app.router.add_get("/market", page)
        app.router.add_get("/api/market", self._browse)
        app.router.add_get("/api/market/jobs/{job}", self._job)
        for action in ("install", "update", "rollback", "remove"):
            app.router.add_post(f"/api/market/{action}", self._starter(action))

    @property
    def catalog(self):
        if self._catalog is None:
            # Imported on first use: python-tuf and bandit cost the supervisor's start nothing until then.
            from ..market.catalog import Catalog

            self._catalog = Catalog(self.plugins_dir, self.state_dir)
        return self._catalog

    async def _browse(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        listing = await asyncio.to_thread(self.catalog.browse, self.states())
        listing["jobs"] = [j.to_dict() for j in self.jobs.values() if j.state == "running"]
        return web.json_response(listing)

    async def _job(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        job = self.jobs.get(request.match_info["job"])
        if job is None:
            return web.json_response({"error": "no such job"}, status=404)
        return web.json_response(job.to_dict())

    def _starter(self, action: str):
        async def start(request: web.Request) -> web.Response:
            if (refused := self._refused(request)) is not None:
                return refused
            try:
                body = await request.json()
            except ValueError:
                return _bad("the body must be a JSON object")
            problem, args = _arguments(action, body)
            if problem:
                return _bad(problem)
            if any(j.state == "running" for j in self.jobs.values()):
                return web.json_response({"error": "another operation is running; wait for it to finish"},
                                         status=409)
            job = Job(str(next(self._ids)), action, args["plugin"])
            self.jobs[job.id] = job
            for old in list(self.jobs)[:-KEPT_JOBS]:
                self.jobs.pop(old, None)
            threading.Thread(target=self._run, args=(job, args), name=f"market-{action}", daemon=True).start()
            return web.json_response({"job": job.id}, status=202)

        return start

    def _run(self, job: Job, args: dict[str, Any]) -> None:
        """In a thread: the same function the CLI command calls, with the page's consent."""
        from ..market.errors import MarketError
        from ..market.install import Trust, install, remove, rollback

        accept = args.get("accept")

        def consent(diff) -> bool:
            return accept is not None and diff.fingerprint() == accept

        progress = job.steps.append
        try:
            if job.action in ("install", "update"):
                outcome = install(job.plugin, self.plugins_dir, self.state_dir, Trust(index_only=True), version=args.get("version"),
                                  update=job.action == "update", consent=consent, progress=progress)
            elif job.action == "rollback":
                outcome = rollback(job.plugin, self.plugins_dir, self.state_dir, args.get("to"), consent=consent,
                                   progress=progress)
            else:
                outcome = remove(job.plugin, self.plugins_dir, self.state_dir, bool(args.get("purge")),
                                 progress=progress)
        except MarketError as exc:
            job.error, job.check = str(exc), exc.check
            diff = getattr(exc, "diff", None)
            if diff is not None:
                job.permissions = {**diff.to_dict(), "lines": diff.lines()}
            job.state = "failed"
            return
        except Exception as exc:  # noqa: BLE001 - shown in words on the page, never a traceback
            job.error, job.check = f"{type(exc).__name__}: {exc}", "internal"
            job.state = "failed"
            return
        job.result = {k: v for k, v in outcome.to_dict().items() if k != "folder"}
        verb = {"rolled-back": "rolled back", "unchanged": "unchanged:"}.get(outcome.action, outcome.action)
        was = f" (was {outcome.previous})" if outcome.previous and outcome.action != "removed" else ""
        job.steps.append(f"{verb} {outcome.id} {outcome.version}{was}".replace("  ", " "))
        job.state = "done"


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


def _arguments(action: str, body: Any) -> tuple[str | None, dict[str, Any]]:
    """Check a POST body: a plugin id, and only the fields its action takes."""
    if not isinstance(body, dict):
        return "the body must be a JSON object", {}
    allowed = {"install": {"plugin", "version"}, "update": {"plugin", "version", "accept"},
               "rollback": {"plugin", "to", "accept"}, "remove": {"plugin", "purge"}}[action]
    if extra := set(body) - allowed:
        return f"{action} takes only {', '.join(sorted(allowed))} (not {', '.join(sorted(extra))})", {}
    plugin = body.get("plugin")
    if not isinstance(plugin, str) or not PLUGIN_ID.fullmatch(plugin):
        return "plugin must be a plugin id from the index (lowercase letters, digits, '-')", {}
    for key in ("version", "to"):
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or not VERSION.fullmatch(value)):
            return f"{key} must be a version such as 1.2.0", {}
    accept = body.get("accept")
    if accept is not None and (not isinstance(accept, str) or not re.fullmatch(r"[0-9a-f]{32}", accept)):
        return "accept must be the fingerprint of the permission diff shown", {}
    if "purge" in body and not isinstance(body["purge"], bool):
        return "purge must be true or false", {}
    return None, body
