"""Attack: SIGKILL each PID, then PTRACE_ATTACH to it; and count the
processes it can see in /proc."""
import ctypes
import errno
import json
import os

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def attack(pid):
    out = {}
    try:
        os.kill(pid, 9)
        out["kill"] = "ok"
    except OSError as exc:
        out["kill"] = errno.errorcode.get(exc.errno, str(exc.errno))
    if libc.ptrace(16, pid, None, None) == 0:        # PTRACE_ATTACH
        libc.ptrace(17, pid, None, None)
        out["ptrace"] = "ok"
    else:
        out["ptrace"] = errno.errorcode.get(ctypes.get_errno(), "?")
    return out


class Signaller:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.signaller.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        pids = [int(p) for p in str(json.loads(msg.data or b"{}").get("args") or "").split()]
        result = {str(p): attack(p) for p in pids}
        result["visible"] = sorted(int(e) for e in os.listdir("/proc") if e.isdigit())
        await msg.respond(json.dumps({"success": True, "result": result}).encode())
