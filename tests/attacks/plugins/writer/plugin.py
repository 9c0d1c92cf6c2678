"""Attack: create/append each PATH; report ok or the errno."""
import errno
import json


def write(path):
    try:
        with open(path, "a") as fh:
            fh.write("owned\n")
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


class Writer:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.writer.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        paths = str(json.loads(msg.data or b"{}").get("args") or "").split()
        await msg.respond(json.dumps({"success": True, "result": {p: write(p) for p in paths}}).encode())
