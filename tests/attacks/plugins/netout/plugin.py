"""Attack: TCP connect to each HOST:PORT (2 s), report ok or the errno."""
import asyncio
import errno
import json
import socket


def connect(target):
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, type(exc).__name__) if exc.errno else type(exc).__name__


class NetOut:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.netout.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        targets = str(json.loads(msg.data or b"{}").get("args") or "").split()
        loop = asyncio.get_running_loop()
        result = {t: await loop.run_in_executor(None, connect, t) for t in targets}
        await msg.respond(json.dumps({"success": True, "result": result}).encode())
