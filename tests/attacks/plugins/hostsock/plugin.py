"""Attack: connect to each unix socket PATH; report "ok" or the errno."""
import errno
import json
import socket


def connect(path):
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(path)
            return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, type(exc).__name__) if exc.errno else type(exc).__name__


class HostSock:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.hostsock.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        paths = str(json.loads(msg.data or b"{}").get("args") or "").split()
        await msg.respond(json.dumps({"success": True, "result": {p: connect(p) for p in paths}}).encode())
