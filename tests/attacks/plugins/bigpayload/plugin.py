"""Attack: a 600 KiB event on its own (allowed) event subject."""
import json


class BigPayload:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.bigpayload.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        await msg.respond(json.dumps({"success": True, "result": {"sending": 600 * 1024}}).encode())
        try:
            await self.nats.publish("rosey.event.bigpayload.blob", b"x" * (600 * 1024))
            await self.nats.flush(timeout=5)
        except Exception:  # noqa: BLE001 - whatever the client says, keep running
            pass
