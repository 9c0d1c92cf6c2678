"""Attack: output the supervisor must read. Each kind runs in a thread (its
writes may block while the supervisor drops its output) and ends with a
marker line after a pause, which must still reach the stderr tail."""
import json
import os
import sys
import threading
import time


def giant():
    os.write(2, b"G" * 1_000_000 + b"\n")          # one line, no newline for a megabyte
    os.write(1, b"H" * 200_000)                     # on stdout too, still unterminated


def junk():
    os.write(2, bytes(range(256)) * 64 + b"\x1b]0;owned\x07\x1b[2J\x1b[31m\r\n")
    os.write(1, os.urandom(65536))


def flood():
    chunk = b"flood " * 10_000 + b"\n"
    sent = 0
    while sent < 64 * 2**20:
        sent += os.write(2, chunk)


KINDS = {"giant": giant, "junk": junk, "flood": flood}


def run(kind):
    KINDS[kind]()
    time.sleep(3)                                   # the supervisor's budget refills
    os.write(1, b"\n")
    os.write(2, f"logflood {kind} done\n".encode())
    sys.stdout.flush()


class LogFlood:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.logflood.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        kind = str(json.loads(msg.data or b"{}").get("args") or "").strip()
        if kind not in KINDS:
            await msg.respond(json.dumps({"success": False, "error": f"kinds: {', '.join(KINDS)}"}).encode())
            return
        threading.Thread(target=run, args=(kind,), daemon=True).start()
        await msg.respond(json.dumps({"success": True, "result": {"started": kind}}).encode())
