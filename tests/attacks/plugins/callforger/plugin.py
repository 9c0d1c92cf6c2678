"""Attack on calls between plugins. Every attempt claims to be eightball:

* a declared call (quotes.lookup) with eightball's id forged in the headers
  the gateway stamps and in the payload: the callee must still be told
  `callforger`;
* an undeclared call (quotes.count, which quotes does export);
* going round the gateway: eightball's platform call subject, and the
  callee's own export subject.
The answer says what came back of each."""
import asyncio
import json

FORGED_HEADERS = {"Precinct-Caller": "eightball", "Precinct-Caller-Namespace": "eightball",
                  "Nats-Request-Info": '{"acc": "eightball"}'}
AROUND = ("precinct.relay.eightball.quotes.lookup", "precinct.export.quotes.lookup")


class CallForger:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.callforger.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _request(self, subject, headers=None, timeout=2.0):
        body = json.dumps({"word": "", "caller": "eightball", "plugin_name": "eightball"}).encode()
        try:
            msg = await self.nats.request(subject, body, timeout=timeout, headers=headers)
            return json.loads(msg.data)
        except asyncio.TimeoutError:
            return "timeout"
        except Exception as exc:  # noqa: BLE001 - whatever the client says is the result
            return type(exc).__name__

    async def _go(self, msg):
        # At once: the dispatcher waits 5 s for the answer.
        names = ("declared", "undeclared", *AROUND)
        answers = await asyncio.gather(self._request("precinct.call.quotes.lookup", FORGED_HEADERS),
                                       self._request("precinct.call.quotes.count"),
                                       *(self._request(subject, FORGED_HEADERS) for subject in AROUND))
        result = dict(zip(names, answers))
        await msg.respond(json.dumps({"success": True, "result": result}).encode())
