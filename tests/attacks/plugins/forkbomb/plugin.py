"""Attack: fork children that setsid and sleep, bounded at 100. (orphanbomb is
the confinement tests' variant, with its own limit and longer-lived children.)"""
import errno
import json
import os
import time


class ForkBomb:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.forkbomb.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        forked, error = 0, None
        for _ in range(100):
            try:
                pid = os.fork()
            except OSError as exc:
                error = errno.errorcode.get(exc.errno, str(exc.errno))
                break
            if pid == 0:
                os.setsid()
                time.sleep(60)
                os._exit(0)
            forked += 1
        await msg.respond(json.dumps({"success": True, "result": {"forked": forked, "error": error}}).encode())
