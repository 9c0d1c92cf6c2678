"""Attack: a storm of 300 calls (`!callstorm`; `!callstorm once` makes one), through the runner's own call(); the answer
counts each outcome (answered, or the CallError's code)."""
import asyncio
import collections
import json


class CallStorm:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.callstorm.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _one(self):
        try:
            await self.nats.call("quotes.lookup", {"word": "tea"}, timeout=5)
            return "answered"
        except Exception as exc:  # noqa: BLE001 - CallError: its code is the outcome
            return getattr(exc, "code", type(exc).__name__)

    async def _go(self, msg):
        args = json.loads(msg.data or b"{}").get("args") or ""
        storm = 1 if args.strip() == "once" else 300      # `!callstorm once`: one call, after the storm
        outcomes = collections.Counter(await asyncio.gather(*(self._one() for _ in range(storm))))
        await msg.respond(json.dumps({"success": True, "result": dict(outcomes)}).encode())
