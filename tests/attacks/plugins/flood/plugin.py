"""Attack: 500 chat lines as fast as the client can publish."""
import json


class Flood:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.flood.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        for i in range(500):
            body = {"channel": "console", "message": f"flood {i}", "type": "chat"}
            await self.nats.publish("rosey.chat.console.send", json.dumps(body).encode())
        await self.nats.flush()
        await msg.respond(json.dumps({"success": True, "result": {"formatted": "sent 500"}}).encode())
