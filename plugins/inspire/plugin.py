"""Inspire: `!inspire [word]` answers with a quote it asks the quotes plugin for.

Shows the calling side of calls between plugins: plugin.yaml lists
`calls: [quotes.lookup]`, and the plugin calls `await self.nats.call(...)`,
which returns the callee's result or raises an exception whose `code` says
why not (rate_limited, unavailable, timeout, ...).
"""

from __future__ import annotations

import json
import logging

VERSION = "1.0.0"
GO_SUBJECT = "rosey.command.inspire.go"

log = logging.getLogger(__name__)


class InspirePlugin:
    VERSION = VERSION

    def __init__(self, nats_client, config=None):
        self.nats = nats_client
        self._subscriptions = []

    async def initialize(self):
        self._subscriptions.append(await self.nats.subscribe(GO_SUBJECT, cb=self._on_go))

    async def shutdown(self):
        subscriptions, self._subscriptions = self._subscriptions, []
        for sub in subscriptions:
            try:
                await sub.unsubscribe()
            except Exception as exc:           # connection already gone: nothing to undo
                log.debug("unsubscribe failed: %s", exc)

    async def _on_go(self, msg):
        try:
            payload = json.loads(msg.data or b"{}")
        except (ValueError, UnicodeDecodeError):
            payload = {}
        args = payload.get("args") if isinstance(payload, dict) else ""
        word = " ".join(args) if isinstance(args, list) else str(args or "")
        try:
            found = await self.nats.call("quotes.lookup", {"word": word.strip()[:100]})
        except Exception as exc:   # CallError: its message says why, e.g. "over calls_per_second"
            body = {"success": False, "error": f"no quote right now: {exc}"}
        else:
            quote = found.get("quote") if isinstance(found, dict) else None
            body = ({"success": True, "result": {"quote": quote, "asked_by": found.get("asked_by"),
                                                 "formatted": f"✨ {quote}"}} if quote
                    else {"success": False, "error": f"no quote with {word.strip()!r}"})
        if msg.reply:
            await msg.respond(json.dumps(body).encode())
