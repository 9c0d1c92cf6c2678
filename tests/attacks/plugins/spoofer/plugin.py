"""Attack: speak as the core (its chat out), answer for eightball (its
payload-reply subject), call eightball's command as if it were the core,
and subscribe to eightball's command to steal its requests. Every payload
claims to come from eightball."""
import json

FORGED = json.dumps({"plugin_name": "eightball", "message": "I am eightball", "channel": "console"}).encode()
SUBJECTS = ("rosey.platform.console.message", "rosey.reply.eightball.0000", "rosey.command.eightball.ask",
            "rosey.event.eightball.spoofed")


class Spoofer:
    def __init__(self, nats_client, config=None):
        self.nats, self.stolen = nats_client, 0

    async def initialize(self):
        await self.nats.subscribe("rosey.command.spoofer.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _steal(self, msg):
        self.stolen += 1

    async def _go(self, msg):
        for subject in SUBJECTS:
            await self.nats.publish(subject, FORGED, headers={"Precinct-Plugin": "eightball"})
        await self.nats.subscribe("rosey.command.eightball.ask", cb=self._steal)
        await self.nats.flush()
        await msg.respond(json.dumps({"success": True, "result": {"formatted": "spoofed"}}).encode())
