"""Attack: touch memory in 8 MiB steps, bounded at 256 MiB (so even an
unconfined run cannot take the machine down)."""
import asyncio
import json


class MemBomb:
    def __init__(self, nats_client, config=None):
        self.nats, self.hoard = nats_client, []

    async def initialize(self):
        await self.nats.subscribe("rosey.command.membomb.go", cb=self._go)

    async def shutdown(self):
        self.hoard.clear()

    async def _go(self, msg):
        while len(self.hoard) < 32:
            self.hoard.append(b"\x01" * (8 * 2**20))
            await asyncio.sleep(0.01)
        await msg.respond(json.dumps({"success": True, "result": {"survived_mib": 256}}).encode())
