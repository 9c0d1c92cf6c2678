"""What a plugin flooding its output costs the supervisor (issue 14, item 5).

    .venv/bin/python benchmarks/log_flood.py               # 10 s per case, prints the table
    .venv/bin/python benchmarks/log_flood.py --seconds 3

A child process writes to its stderr as fast as it can (no CPU limit: worse
than a confined plugin, whose writes its cgroup's CPU quota slows down) while
this process reads the other end, the way a slot does. The figure is this
process's CPU time (`time.process_time()`) over the wall time of the window:
its share of one core. Two readers, same child, one after the other:

* before: the reader slot.py had until issue 14 (asyncio `readline`, every
  line decoded and kept in a 20-line tail);
* after: runtime/plugin_log.PluginLog (chunked reads at most 10 times a
  second, the per-plugin cap, the rest spliced to /dev/null).

`run.py --only log_flood` puts the result into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from precinct.runtime.plugin_log import DEFAULT_BURST, DEFAULT_RATE, PluginLog  # noqa: E402

CASES = {
    "64 KiB lines": "chunk = b'x' * 65535 + b'\\n'\nwhile True: os.write(2, chunk)",
    "short lines (one write each)": "while True: os.write(2, b'spam spam spam\\n')",
    "binary junk": "junk = os.urandom(65536)\nwhile True: os.write(2, junk)",
    "one endless line": "chunk = b'A' * 65536\nwhile True: os.write(2, chunk)",
}


async def _before(code: str, seconds: float) -> dict:
    """The old slot reader, verbatim in spirit: readline until EOF."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import os\n" + code,
                                                stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    tail: collections.deque[str] = collections.deque(maxlen=20)
    seen = {"bytes": 0, "died": None}

    async def read() -> None:
        assert proc.stderr is not None
        try:
            while True:
                line = await proc.stderr.readline()
                if not line:
                    return
                seen["bytes"] += len(line)
                tail.append(line.decode(errors="replace").rstrip()[:500])
        except Exception as exc:  # noqa: BLE001 - what killed the old reader is the finding
            seen["died"] = f"{type(exc).__name__} after {time.monotonic() - t0:.2f} s"

    t0, c0 = time.monotonic(), time.process_time()
    reader = asyncio.create_task(read())
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - c0, time.monotonic() - t0
    proc.kill()
    reader.cancel()
    # A dead readline leaves the pipe paused: asyncio then waits for an EOF it
    # never reads. Give up on it and close the transport.
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except asyncio.TimeoutError:
        proc._transport.close()  # noqa: SLF001
    return {"cpu": cpu / wall, "read": seen["bytes"], "dropped": 0, "died": seen["died"], "wall": wall}


async def _after(code: str, seconds: float) -> dict:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import os\n" + code,
                                                stdin=asyncio.subprocess.DEVNULL, stdout=write_end,
                                                stderr=write_end)
    os.close(write_end)
    log = PluginLog()
    t0, c0 = time.monotonic(), time.process_time()
    reader = asyncio.create_task(log.follow(read_end))
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - c0, time.monotonic() - t0
    proc.kill()
    await proc.wait()
    await asyncio.wait_for(reader, 10)
    return {"cpu": cpu / wall, "read": log.kept_bytes, "dropped": log.dropped_bytes, "died": None, "wall": wall}


def measure(seconds: float) -> dict:
    results = {}
    for name, code in CASES.items():
        print(f"[log_flood] {name}: before ...", flush=True)
        before = asyncio.run(_before(code, seconds))
        print(f"[log_flood] {name}: after ...", flush=True)
        after = asyncio.run(_after(code, seconds))
        results[name] = {"before": before, "after": after}
    return {"seconds": seconds, "cases": results}


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def render(r: dict) -> str:
    lines = [
        "## Plugin output flood: the supervisor's cost",
        "",
        f"A child writes to stderr as fast as it can for {r['seconds']:g} s per case (unconfined: a real plugin's "
        "CPU quota slows it further) while the reader runs in this process; CPU = this process's CPU time over "
        "the window's wall time (share of one core). *Before*: the reader slot.py used until issue 14 "
        "(asyncio `readline`). *After*: `runtime/plugin_log.py` (chunked reads at most 10 times a second, "
        f"{DEFAULT_RATE // 1024} KiB/s with a {DEFAULT_BURST // 1024} KiB burst kept per plugin, the rest spliced "
        "to /dev/null and counted). `benchmarks/log_flood.py`.",
        "",
        "| case | before: CPU | before: read | after: CPU | after: kept / dropped |",
        "|---|---|---|---|---|",
    ]
    for name, c in r["cases"].items():
        b, a = c["before"], c["after"]
        read = _mib(b["read"]) + (f"; **reader died** ({b['died']}), plugin then blocked" if b["died"] else "")
        lines.append(f"| {name} | {b['cpu'] * 100:.1f} % | {read} | **{a['cpu'] * 100:.2f} %** | "
                     f"{_mib(a['read'])} / {_mib(a['dropped'])} |")
    worst = max(c["after"]["cpu"] for c in r["cases"].values())
    lines += ["", f"Worst case after: {worst * 100:.2f} % of a core (target: under 2 %)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="flood time per case and reader (default 10)")
    args = parser.parse_args()
    print(render(measure(args.seconds)))


if __name__ == "__main__":
    main()
