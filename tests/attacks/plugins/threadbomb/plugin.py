"""Attack: start blocked threads, bounded at 300, then release them."""
import json
import threading


class ThreadBomb:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.threadbomb.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        gate, started, error = threading.Event(), [], None
        for _ in range(300):
            t = threading.Thread(target=gate.wait, daemon=True)
            try:
                t.start()
            except RuntimeError as exc:
                error = str(exc)
                break
            started.append(t)
        gate.set()
        for t in started:
            t.join(5)
        await msg.respond(json.dumps({"success": True, "result": {"started": len(started), "error": error}}).encode())
