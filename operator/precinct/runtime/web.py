"""The dashboard's HTTP side: aiohttp.web on 127.0.0.1, serving a `Monitor`.

`HttpServer(dashboard=True)` answers `/` (the page, runtime/static/dashboard.html,
shipped as package data: inline CSS, inline JS, inline SVG sparklines, nothing
from the network), `/api/view` (JSON) and `/metrics`; the two data paths need
`Authorization: Bearer <token>`. The page reads the token from the URL fragment
(`#token=...`), which browsers never send to the server.
`HttpServer(dashboard=False)` is the metrics server (`--metrics-port`): only
`/metrics`, without a token, for a local Prometheus.

With `market=` (runtime/market_web.py) the dashboard server also serves the
marketplace page, `/market`, and its routes under `/api/market`.

Both refuse a Host header that does not name a loopback address (421: DNS
rebinding). Everything is read-only (GET and HEAD; anything else gets 405)
except the marketplace's POSTs, which change the plugins dir and so must come
from the page itself: an Origin header naming this very server (403
otherwise: a page on another site can make a browser send a request, but not
forge its Origin), a JSON body (415 otherwise: a plain cross-site form cannot
send one), and the bearer token in the Authorization header (401), which no
other site can read. This module runs only in the supervisor; the plugin
runner's environment has no aiohttp.
"""

from __future__ import annotations

import json
import secrets
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

from .. import metrics
from .monitor import Monitor

if TYPE_CHECKING:  # pragma: no cover
    from .market_web import MarketRoutes

PAGE_RESOURCE = "static/dashboard.html"   # in this package; pyproject.toml [tool.setuptools.package-data]
MARKET_RESOURCE = "static/market.html"
STATE_CHANGING = "/api/market/"            # the only paths that take POST (with a market)
MARKET_KEY = web.AppKey("precinct_market", bool)
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]", ""})
# On every response: nothing is cached, sniffed into another type, framed, or
# leaks the URL as a referrer; no aiohttp version is advertised.
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Server": "precinct"}
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="precinct"'}
SHUTDOWN_TIMEOUT = 2.0                    # seconds a request in flight gets when the supervisor stops


def load_page(resource: str = PAGE_RESOURCE) -> str:
    """A page (the dashboard's by default), with `{{NONCE}}` where each response puts its CSP nonce."""
    return resources.files(__package__).joinpath(resource).read_text(encoding="utf-8")


def _text(status: int, body: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=body, headers=headers)


def _html(page: str) -> web.Response:
    """A page with a fresh CSP nonce: only its own inline script and style run, it loads nothing else."""
    nonce = secrets.token_urlsafe(12)
    csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    return web.Response(text=page.replace("{{NONCE}}", nonce), content_type="text/html",
                        headers={"Content-Security-Policy": csp})


def _loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return name in LOOPBACK_NAMES


def _cross_site(request: web.Request) -> web.Response | None:
    """A state-changing request not sent by a page of this server: 403 or 415."""
    origin = request.headers.get("Origin")
    if origin is None or origin != f"http://{request.headers.get('Host', '')}":
        return _text(403, "cross-site request refused: the Origin header must name this server\n")
    if request.content_type != "application/json":
        return _text(415, "the body must be JSON (Content-Type: application/json)\n")
    return None


@web.middleware
async def _guard(request: web.Request, handler) -> web.StreamResponse:
    """Before any route: loopback Host names only; GET/HEAD, or a same-origin JSON
    POST to the marketplace; after: the security headers."""
    post_ok = request.app.get(MARKET_KEY, False) and request.path.startswith(STATE_CHANGING)
    if not _loopback_host(request.headers.get("Host", "")):
        response = _text(421, "loopback only\n")
    elif request.method in ("GET", "HEAD"):
        response = await handler(request)
    elif request.method == "POST" and post_ok:
        refused = _cross_site(request)       # a Response is a (possibly empty, falsy) mapping: test for None
        response = refused if refused is not None else await handler(request)
    else:
        allow = "GET, HEAD, POST" if post_ok else "GET, HEAD"
        response = _text(405, "read-only\n" if not post_ok else "method not allowed\n", {"Allow": allow})
    response.headers.update(SECURITY_HEADERS)
    return response


class HttpServer:
    """One listening socket on `host` (loopback): the dashboard, or only /metrics."""

    def __init__(self, monitor: Monitor, port: int = 0, token: str | None = None, dashboard: bool = True,
                 host: str = "127.0.0.1", market: MarketRoutes | None = None) -> None:
        self.monitor = monitor
        self.market = market if dashboard else None
        self.host, self.port = host, port
        self.token = token
        self.dashboard = dashboard
        self._page = self._market_page = ""
        self._encoded: tuple[dict, bytes] | None = None   # (view, its JSON): see _view
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Listen; returns the port (a free one when `port` is 0). OSError if it cannot."""
        if self.dashboard:
            self._page = load_page()
        app = web.Application(middlewares=[_guard])
        if self.market is not None:
            self._market_page = load_page(MARKET_RESOURCE)
            app[MARKET_KEY] = True
            self.market.add_routes(app, self._refused, self._market)
        app.router.add_get("/metrics", self._metrics)
        if self.dashboard:
            app.router.add_get("/", self._index)
            app.router.add_get("/index.html", self._index)
            app.router.add_get("/favicon.ico", self._favicon)
            app.router.add_get("/api/view", self._view)
        app.router.add_get("/{path:.*}", self._not_found)   # last: our own 404 text, with the headers
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def _refused(self, request: web.Request) -> web.Response | None:
        """401 unless the request carries this server's bearer token (if it has one).
        Test the answer with `is not None`: a Response is a mapping, and an empty one is falsy."""
        if self.token is None:
            return None
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(value.strip().encode(), self.token.encode()):
            return None
        return _text(401, "token required\n", BEARER_CHALLENGE)

    async def _metrics(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        view = await self.monitor.fresh_view()
        return web.Response(body=metrics.exposition(view), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def _view(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        view = self.monitor.view()
        # The page asks every second; the view changes once per sample. At
        # hundreds of plugins (90 history points each) encoding it is the
        # costly part, so it is encoded once per view.
        if self._encoded is None or self._encoded[0] is not view:
            self._encoded = (view, json.dumps(view).encode())
        return web.Response(body=self._encoded[1], content_type="application/json")

    async def _index(self, _request: web.Request) -> web.Response:
        return _html(self._page)

    async def _market(self, _request: web.Request) -> web.Response:
        return _html(self._market_page)

    async def _favicon(self, _request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _not_found(self, _request: web.Request) -> web.Response:
        return _text(404, "not found\n" if self.dashboard else "only /metrics here\n")
