"""Quotes: `!quote [word]` in chat, and two actions other plugins may call.

A Rosey-style plugin (constructed with the NATS client and its config) that
also exports `lookup` and `count` (plugin.yaml, `exports:`). A caller asks
`await self.nats.call("quotes.lookup", {"word": "tea"})`; the gateway passes
the call here with the caller's id stamped on it, and the handler receives
that as `caller` (never from the payload, which the caller wrote).
"""

from __future__ import annotations

import json
import logging
import random

NAMESPACE = "quotes"
VERSION = "1.0.0"
SHOW_SUBJECT = "rosey.command.quotes.show"

log = logging.getLogger(__name__)


class QuotesPlugin:
    NAMESPACE = NAMESPACE
    VERSION = VERSION

    def __init__(self, nats_client, config=None):
        self.nats = nats_client
        self.quotes = [str(q) for q in (config or {}).get("quotes") or ["Tea is liquid wisdom."]]
        self.random = random.SystemRandom()
        self._subscriptions = []

    async def initialize(self):
        self._subscriptions.append(await self.nats.subscribe(SHOW_SUBJECT, cb=self._on_show))
        # Calls from other plugins: the runner's client offers export() (Rosey's does not).
        await self.nats.export("lookup", self.lookup)
        await self.nats.export("count", self.count)

    async def shutdown(self):
        subscriptions, self._subscriptions = self._subscriptions, []
        for sub in subscriptions:
            try:
                await sub.unsubscribe()
            except Exception as exc:           # connection already gone: nothing to undo
                log.debug("unsubscribe failed: %s", exc)

    def find(self, word: str) -> str | None:
        word = word.strip().lower()
        matching = [q for q in self.quotes if word in q.lower()] if word else self.quotes
        return self.random.choice(matching) if matching else None

    # -- exported actions: handler(payload, caller) --------------------------------

    def lookup(self, payload, caller):
        """A quote containing payload["word"] (any quote without one). `caller`
        is who the gateway says called: its id and subject namespace."""
        word = payload.get("word", "") if isinstance(payload, dict) else ""
        if not isinstance(word, str) or len(word) > 100:
            raise ValueError("word must be a string of at most 100 characters")
        log.info("lookup %r for %s (%s)", word, caller.namespace, caller.id)
        return {"quote": self.find(word), "asked_by": caller.id, "asked_by_namespace": caller.namespace}

    def count(self, payload, caller):
        return {"quotes": len(self.quotes)}

    # -- the chat command ------------------------------------------------------------

    async def _on_show(self, msg):
        try:
            payload = json.loads(msg.data or b"{}")
        except (ValueError, UnicodeDecodeError):
            payload = {}
        args = payload.get("args") if isinstance(payload, dict) else ""
        quote = self.find(" ".join(args) if isinstance(args, list) else str(args or ""))
        body = ({"success": True, "result": {"quote": quote, "formatted": f"📜 {quote}"}} if quote
                else {"success": False, "error": "no quote with that word"})
        if msg.reply:
            await msg.respond(json.dumps(body).encode())
