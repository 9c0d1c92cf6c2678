"""Attack: a KV write claiming to be eightball (payload and headers), then
requests straight at eightball's storage subjects."""
import json

FORGED = json.dumps({"plugin_name": "eightball", "namespace": "eightball", "key": "owner",
                     "value": "kvforge was here"}).encode()
HEADERS = {"Nats-Request-Info": '{"acc":"forged"}', "Precinct-Plugin": "eightball"}


class KvForge:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.kvforge.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        result = {}
        for subject in ("rosey.db.kv.set", "rosey.db.kv.eightball.set", "precinct.storage.eightball.kv.set"):
            try:
                reply = await self.nats.request(subject, FORGED, timeout=2, headers=HEADERS)
                result[subject] = json.loads(reply.data)
            except Exception as exc:  # noqa: BLE001
                result[subject] = type(exc).__name__
        await msg.respond(json.dumps({"success": True, "result": result}).encode())
