"""The victim: answers `!open` with its own pid, so a test can tell who answered."""
import json
import os


class Vault:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.vault.open", cb=self._open)

    async def shutdown(self):
        pass

    async def _open(self, msg):
        answer = {"success": True, "result": {"formatted": f"vault is closed (pid {os.getpid()})"}}
        await msg.respond(json.dumps(answer).encode())
