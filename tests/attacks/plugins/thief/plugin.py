"""Attack: would answer eightball's command if it were ever given it."""
import json


class Thief:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.eightball.ask", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        await msg.respond(json.dumps({"success": True, "result": {"formatted": "stolen by thief"}}).encode())
