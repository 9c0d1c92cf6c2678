"""A plugin's output cannot blind the supervisor (runtime/plugin_log.py).

Real child processes write to a real pipe; the reader is the one every slot
uses. No root needed. The supervisor's CPU cost under a flood is measured in
benchmarks/log_flood.py (docs/benchmarks.md), not asserted here.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from precinct.runtime.plugin_log import DEFAULT_BURST, PluginLog, clean
from precinct.confine.launch import LaunchSpec
from precinct.runtime.slot import RestartPolicy, Slot


async def _run(code: str, log: PluginLog, timeout: float = 60) -> int:
    """Run `python -c code` with stdout+stderr on one pipe that `log` follows."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=write_end, stderr=write_end,
                            stdin=subprocess.DEVNULL)
    os.close(write_end)
    reader = asyncio.create_task(log.follow(read_end))
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the writer never finished: its output blocked it"
        await asyncio.sleep(0.05)
    await asyncio.wait_for(reader, timeout)
    return proc.returncode


def test_a_giant_line_does_not_stop_the_reader():
    """A 100 KB line stopped asyncio's readline for good; now it is cut and
    reading goes on (the lines after it arrive). The cap is raised here: this
    test is about lines, the flood test about the cap."""
    log = PluginLog(burst=4 * 2**20)
    code = ("import os, sys\n"
            "os.write(2, b'start\\n' + b'A' * 100_000 + b'\\n')\n"
            "os.write(2, b'B' * 300_000)\n"                       # a line without an end, in several writes
            "os.write(2, b'B' * 300_000 + b'\\n')\n"
            "sys.stderr.write('after the giant lines\\n')\n")
    assert asyncio.run(_run(code, log)) == 0
    tail = list(log.tail)
    assert tail[0] == "start", tail
    assert tail[1].startswith("A" * 500) and tail[1].endswith("[+99500 bytes]"), tail[1][-40:]
    assert tail[2].startswith("B" * 500) and tail[2].endswith("[+599500 bytes]"), tail[2][-40:]
    assert tail[3] == "after the giant lines", tail
    assert all(len(line) < 600 for line in tail)
    assert log.dropped_bytes == 0 and log.kept_bytes > 700_000


def test_binary_junk_and_escape_sequences_are_neutralised():
    log = PluginLog()
    code = ("import os\n"
            "os.write(2, bytes(range(256)) * 4 + b'\\n')\n"
            "os.write(1, b'\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\r\\n')\n"
            "os.write(2, b'\\xff\\xfe not utf-8 \\xc3\\n')\n"
            "print('still reading', flush=True)\n")
    assert asyncio.run(_run(code, log)) == 0
    tail = list(log.tail)
    for line in tail:
        assert not any(ord(ch) < 32 and ch != "\t" or 0x7f <= ord(ch) < 0xa0 for ch in line), repr(line)
    assert any("red" in line and "\x1b" not in line for line in tail), tail
    assert "not utf-8" in tail[-2] and tail[-1] == "still reading", tail


def test_a_flood_is_capped_counted_and_does_not_block_the_plugin_for_good():
    """64 MiB as fast as the child can write: it finishes, at most the cap is
    kept, the rest is counted as dropped, and a line written after the flood
    still reaches the tail."""
    log = PluginLog()
    code = ("import os, time\n"
            "chunk = b'flood line ' * 6000 + b'\\n'\n"
            "sent = 0\n"
            "while sent < 64 * 2**20:\n"
            "    sent += os.write(2, chunk)\n"
            "time.sleep(1.5)\n"                 # the bucket refills
            "os.write(2, b'after the flood\\n')\n")
    started = time.monotonic()
    assert asyncio.run(_run(code, log, timeout=120)) == 0
    elapsed = time.monotonic() - started
    assert log.dropped_bytes > 32 * 2**20, (log.dropped_bytes, log.kept_bytes)
    assert log.kept_bytes <= DEFAULT_BURST + log.bucket.rate * elapsed + 16, (log.kept_bytes, elapsed)
    writes = -(-64 * 2**20 // 66001)          # the child's loop: whole 66001-byte writes
    assert log.kept_bytes + log.dropped_bytes == writes * 66001 + len(b"after the flood\n")
    assert any(line.startswith("[precinct: output over") for line in log.tail), list(log.tail)
    assert log.tail[-1] == "after the flood", list(log.tail)


def test_clean_cuts_and_replaces():
    assert clean(b"ok\r") == "ok"
    assert clean(b"a\x1b[0mb\x00c") == "a\ufffd[0mb\ufffdc"
    assert len(clean(b"x" * 10_000)) == 500


def test_slot_reports_output_from_stdout_and_stderr_with_the_dropped_count():
    """Through a real Slot: stdout is no longer thrown away, and status carries
    log_bytes / log_dropped_bytes (exported as precinct_plugin_log_dropped_bytes_total)."""
    code = ("import os, sys\n"
            "print('hello on stdout', flush=True)\n"
            "sys.stderr.write('hello on stderr\\n'); sys.stderr.flush()\n"
            "block = b'z' * 65536\n"
            "for _ in range(200): os.write(2, block)\n"
            "sys.exit(3)\n")

    async def scenario() -> None:
        async def launcher(instance):
            return LaunchSpec(argv=[sys.executable, "-c", code], env=dict(os.environ), cwd="/", instance=instance)

        async def pinger(_instance, _timeout):
            await asyncio.sleep(3600)
            return False

        slot = Slot("chatty", launcher, pinger, RestartPolicy(initial_backoff=30))
        started = time.monotonic()
        slot.start()
        deadline = time.monotonic() + 60
        while slot.snapshot().last_exit != "ExitCode3":
            assert time.monotonic() < deadline, slot.snapshot()
            await asyncio.sleep(0.1)
        status = slot.snapshot()
        elapsed = time.monotonic() - started
        await slot.stop()
        assert "hello on stdout" in status.stderr_tail and "hello on stderr" in status.stderr_tail, status.stderr_tail
        assert status.log_dropped_bytes > 0 and status.log_bytes + status.log_dropped_bytes == 200 * 65536 + 32
        assert status.log_bytes <= DEFAULT_BURST + slot.log.bucket.rate * elapsed, (status.log_bytes, elapsed)

    asyncio.run(scenario())


def test_since_returns_only_newer_lines_and_counts_what_was_missed():
    """What `precinct logs -f` asks for: lines after a sequence number, and how
    many of them already left the bounded tail."""
    log = PluginLog(tail_lines=5)
    code = "import sys\nfor i in range(3): print(f'line {i}', flush=True)\n"
    assert asyncio.run(_run(code, log)) == 0
    lines, seq, missed = log.since(None)
    assert lines == ["line 0", "line 1", "line 2"] and seq == 3 and missed == 0
    assert log.since(seq) == ([], 3, 0)
    log.note("one more")
    assert log.since(seq) == (["one more"], 4, 0)
    for i in range(10):
        log.note(f"burst {i}")
    lines, seq2, missed = log.since(4)
    assert lines == [f"burst {i}" for i in range(5, 10)] and seq2 == 14 and missed == 5
