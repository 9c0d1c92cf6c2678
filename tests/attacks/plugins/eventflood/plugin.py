"""Attack: 400 KiB events for 8 s, PUB frames written straight to the socket
(no per-message work in the client), as fast as the connection takes them."""
import asyncio
import json
import time

SIZE = 400 * 1024
SECONDS = 8.0


class EventFlood:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client
        self.task = None
        self.sent = 0

    async def initialize(self):
        await self.nats.subscribe("rosey.command.eventflood.go", cb=self._go)

    async def shutdown(self):
        if self.task:
            self.task.cancel()

    async def _go(self, msg):
        await msg.respond(json.dumps({"success": True, "result": {"flooding_seconds": SECONDS}}).encode())
        self.task = asyncio.ensure_future(self._flood())

    async def _flood(self):
        frame = b"PUB rosey.event.eventflood.blob %d\r\n" % SIZE + b"x" * SIZE + b"\r\n"
        batch = frame * 8
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            try:
                transport = self.nats._transport
                transport.write(batch)
                await transport.drain()
                self.sent += 8
            except Exception:  # noqa: BLE001 - cut or reconnecting: keep going
                await asyncio.sleep(0.05)
