"""Attack: writes a marker to its data dir on `!arm`, then exits; from then
on initialize() finds the marker and dies, forever."""
import json
import os

MARKER = os.path.join(os.environ.get("PRECINCT_DATA_DIR", "/nonexistent"), "armed")


class CrashLoop:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        if os.path.exists(MARKER):
            os._exit(17)
        await self.nats.subscribe("rosey.command.crashloop.arm", cb=self._arm)

    async def shutdown(self):
        pass

    async def _arm(self, msg):
        with open(MARKER, "w") as fh:
            fh.write("armed\n")
        await msg.respond(json.dumps({"success": True, "result": {"formatted": "armed"}}).encode())
        await self.nats.flush()
        os._exit(17)
