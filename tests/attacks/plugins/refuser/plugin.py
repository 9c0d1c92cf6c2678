"""Attack: provoke one refusal per sandbox mechanism and report each outcome."""
import asyncio
import ctypes
import errno
import json
import urllib.error
import urllib.request

IO_URING_SETUP = 425    # the same number on x86_64 and aarch64


def iouring():
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)
    fd = libc.syscall(IO_URING_SETUP, 4, params)
    if fd >= 0:
        return "ok"
    return errno.errorcode.get(ctypes.get_errno(), "?")


def read(path):
    try:
        with open(path, "rb") as fh:
            fh.read(1)
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:   # through HTTP_PROXY (the egress proxy)
            return f"ok {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except OSError as exc:
        return type(exc).__name__


class Refuser:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.refuser.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        action, *targets = str(json.loads(msg.data or b"{}").get("args") or "").split()
        loop = asyncio.get_running_loop()
        if action == "iouring":
            result = {"iouring": iouring()}
        elif action == "read":
            result = {t: read(t) for t in targets}
        elif action == "fetch":
            result = {t: await loop.run_in_executor(None, fetch, t) for t in targets}
        else:
            result = {"error": f"unknown action {action!r}"}
        await msg.respond(json.dumps({"success": True, "result": result}).encode())
