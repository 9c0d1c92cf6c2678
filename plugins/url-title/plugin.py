"""URL title: `!title https://example.com` answers with the page's <title>.

Needs the `http_requests` permission. The fetch uses only the standard
library (urllib) with a timeout, a cap on bytes read and at most a few
redirects, and speaks only http and https. Which addresses are reachable is
not this plugin's decision: the sandbox's egress fence refuses loopback,
private and link-local destinations.

Config: timeout_seconds (default 5), max_bytes read per page (default 512 KiB).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser

NAMESPACE = "urltitle"
VERSION = "1.0.0"
DESCRIPTION = "Fetches a web page and tells the channel its title."

COMMAND_SUBJECT = "rosey.command.urltitle.title"
USER_AGENT = f"Precinct-url-title/{VERSION} (+chat bot link preview)"
MAX_TITLE = 200
MAX_CONCURRENT = 4
HTML_TYPES = ("text/html", "application/xhtml+xml")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._-]+)""", re.IGNORECASE)

log = logging.getLogger(__name__)


class FetchError(Exception):
    """Why there is no title; the message is shown in chat."""


class _TitleParser(HTMLParser):
    """Collects the text of the document's first <title>, ignoring SVG titles."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.state = "before"          # before -> inside -> done
        self.svg_depth = 0

    def handle_starttag(self, tag, attrs):
        if tag == "svg":
            self.svg_depth += 1
        elif tag == "title" and self.state == "before" and not self.svg_depth:
            self.state = "inside"

    def handle_endtag(self, tag):
        if tag == "svg" and self.svg_depth:
            self.svg_depth -= 1
        elif tag == "title" and self.state == "inside":
            self.state = "done"

    def handle_data(self, data):
        if self.state == "inside":
            self.parts.append(data)


def extract_title(html: str) -> str | None:
    parser = _TitleParser()
    try:
        parser.feed(html)
        parser.close()
    except Exception:                  # malformed markup: keep what was found so far
        pass
    title = " ".join("".join(parser.parts).split())
    if not title:
        return None
    return title if len(title) <= MAX_TITLE else title[: MAX_TITLE - 1].rstrip() + "…"


def normalize_url(text: str) -> str:
    candidate = text.strip().strip("<>")
    if not candidate:
        raise FetchError("usage: !title URL")
    if "://" not in candidate:
        candidate = "https://" + candidate
    parts = urllib.parse.urlsplit(candidate)
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchError(f"only http and https links, not {parts.scheme}:")
    if not parts.hostname:
        raise FetchError(f"{text.strip()[:100]!r} is not a link I can open")
    return candidate


class _LimitedRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = 5


def _opener() -> urllib.request.OpenerDirector:
    """http and https only: no file:, ftp: or data: handlers, even via a redirect."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),          # the sandbox may route egress through a proxy
        urllib.request.UnknownHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _LimitedRedirects(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def fetch_title(url: str, timeout: float, max_bytes: int) -> tuple[str, str]:
    """(final url, title). Blocking: run it in a thread."""
    host = urllib.parse.urlsplit(url).hostname
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "text/html,*/*;q=0.5"})
    try:
        with _opener().open(request, timeout=timeout) as response:
            final_url = response.geturl()
            content_type = response.headers.get_content_type()
            if content_type not in HTML_TYPES:
                raise FetchError(f"that link is {content_type}, not a web page")
            body = response.read(max_bytes)
            charset = response.headers.get_content_charset()
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{host} answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise FetchError(f"{host} did not answer within {timeout:g} s") from None
        raise FetchError(f"couldn't open {host}: {reason}") from None
    except (socket.timeout, TimeoutError):
        raise FetchError(f"{host} did not answer within {timeout:g} s") from None
    except (OSError, ValueError) as exc:
        raise FetchError(f"couldn't open {host}: {exc}") from None
    if not charset:
        match = _META_CHARSET.search(body[:4096])
        charset = match.group(1).decode("ascii") if match else "utf-8"
    try:
        text = body.decode(charset, errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    title = extract_title(text)
    if title is None:
        raise FetchError("that page has no title")
    return final_url, title


class UrlTitlePlugin:
    NAMESPACE = NAMESPACE
    VERSION = VERSION
    DESCRIPTION = DESCRIPTION

    def __init__(self, nats_client, config=None):
        self.nats = nats_client
        self.config = dict(config or {})
        self.timeout = float(self.config.get("timeout_seconds", 5))
        self.max_bytes = int(self.config.get("max_bytes", 512 * 1024))
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._subscription = None

    async def initialize(self):
        self._subscription = await self.nats.subscribe(COMMAND_SUBJECT, cb=self._on_title)
        log.info("url-title ready (timeout %gs, at most %d bytes per page)", self.timeout, self.max_bytes)

    async def shutdown(self):
        sub, self._subscription = self._subscription, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe failed: %s", exc)

    async def title(self, text: str) -> dict:
        url = normalize_url(text.split()[0] if text.split() else "")
        async with self._slots:
            try:
                final_url, title = await asyncio.wait_for(
                    asyncio.to_thread(fetch_title, url, self.timeout, self.max_bytes),
                    timeout=self.timeout * 3 + 1,      # slow-drip servers: the whole fetch is bounded too
                )
            except asyncio.TimeoutError:
                raise FetchError(f"{urllib.parse.urlsplit(url).hostname} took too long") from None
        host = urllib.parse.urlsplit(final_url).hostname or ""
        return {"url": final_url, "host": host, "title": title, "formatted": f"📄 {title} ({host})"}

    async def _on_title(self, msg):
        try:
            payload = json.loads(msg.data or b"{}")
        except (ValueError, UnicodeDecodeError):
            payload = None
        if not isinstance(payload, dict):
            return await self._respond(msg, {"success": False, "error": "request must be a JSON object"})
        args = payload.get("args")
        text = " ".join(map(str, args)) if isinstance(args, list) else str(args or "")
        try:
            result = await self.title(text)
        except FetchError as exc:
            return await self._respond(msg, {"success": False, "error": str(exc)})
        await self._respond(msg, {"success": True, "result": result})

    @staticmethod
    async def _respond(msg, body: dict):
        if not msg.reply:
            log.warning("request on %s had no reply inbox; answer dropped", msg.subject)
            return
        await msg.respond(json.dumps(body).encode())
