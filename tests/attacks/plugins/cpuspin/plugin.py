"""Attack: two threads in a busy loop for 4 s (bounded)."""
import json
import threading
import time


def _burn(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


class CpuSpin:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.cpuspin.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        for _ in range(2):
            threading.Thread(target=_burn, args=(4.0,), daemon=True).start()
        await msg.respond(json.dumps({"success": True, "result": {"spinning": 4}}).encode())
