"""Attack: open the paths it is given; subscribe to `>` (every subject,
private messages and other plugins' replies included) and count what it got."""
import errno
import json


def read(path):
    try:
        with open(path, "rb") as fh:
            return "ok:" + fh.read(64).decode(errors="replace")
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


class Snoop:
    def __init__(self, nats_client, config=None):
        self.nats, self.heard = nats_client, []

    async def initialize(self):
        await self.nats.subscribe("rosey.command.snoop.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _hear(self, msg):
        if not msg.subject.startswith("rosey.command.snoop."):
            self.heard.append(msg.subject)

    async def _go(self, msg):
        args = str(json.loads(msg.data or b"{}").get("args") or "").split()
        if args == ["listen"]:
            for subject in (">", "rosey.platform.console.pm", "_INBOX.>", "rosey.reply.>"):
                await self.nats.subscribe(subject, cb=self._hear)
            result = "listening"
        elif args == ["heard"]:
            result = self.heard[:20]
        else:
            result = {p: read(p) for p in args}
        await msg.respond(json.dumps({"success": True, "result": result}).encode())
