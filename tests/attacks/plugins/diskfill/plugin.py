"""Attack: write 1 MiB chunks into its data dir, bounded at 64 MiB, then
delete the file again (so it can be asked twice)."""
import errno
import json
import os


def fill():
    path, written, error = os.path.join(os.environ["PRECINCT_DATA_DIR"], "fill.bin"), 0, None
    try:
        with open(path, "wb") as fh:
            while written < 64:
                fh.write(b"\x02" * 2**20)
                fh.flush()
                os.fsync(fh.fileno())
                written += 1
    except OSError as exc:
        error = errno.errorcode.get(exc.errno, str(exc.errno))
    os.unlink(path)
    return {"written_mib": written, "error": error}


class DiskFill:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        await self.nats.subscribe("rosey.command.diskfill.go", cb=self._go)

    async def shutdown(self):
        pass

    async def _go(self, msg):
        import asyncio
        result = await asyncio.get_running_loop().run_in_executor(None, fill)
        await msg.respond(json.dumps({"success": True, "result": result}).encode())
