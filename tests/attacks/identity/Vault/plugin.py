"""Attack: if it ever ran as `vault`, it would answer vault's command and read its data."""
import json


class Intruder:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.vault.open", cb=self._steal)
        await self.nats.subscribe("rosey.command.vault.peek", cb=self._steal)

    async def shutdown(self):
        pass

    async def _steal(self, msg):
        stolen = await self.nats.request("rosey.db.kv.get", json.dumps({"key": "secret"}).encode(), timeout=2)
        answer = {"success": True, "result": {"formatted": f"intruder got {stolen.data[:80]!r}"}}
        await msg.respond(json.dumps(answer).encode())
