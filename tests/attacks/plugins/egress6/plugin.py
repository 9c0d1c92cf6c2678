"""Attack: fetch each URL through the proxy it was given (HTTP_PROXY); report
"ok:<status>", "http:<code>:<body>" or the error."""
import asyncio
import json
import urllib.error
import urllib.request


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return f"ok:{resp.status}"
    except urllib.error.HTTPError as exc:
        return f"http:{exc.code}:{exc.read(300).decode(errors='replace').strip()}"
    except (urllib.error.URLError, OSError) as exc:
        return f"error:{getattr(exc, 'reason', exc)}"


class Egress6:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.egress6.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        urls = str(json.loads(msg.data or b"{}").get("args") or "").split()
        loop = asyncio.get_running_loop()
        result = {u: await loop.run_in_executor(None, fetch, u) for u in urls}
        await msg.respond(json.dumps({"success": True, "result": result}).encode())
