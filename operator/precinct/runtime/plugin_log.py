"""What a plugin writes to stdout and stderr, read so that it cannot blind the supervisor.

Both streams share one pipe. The reader must survive anything on it: lines of
any length, no newline at all, binary junk, terminal escape sequences, and a
plugin writing as fast as it can. So:

* it reads raw chunks, never lines (a 100 KB line used to stop asyncio's
  `readline` for good, after which the full pipe froze the plugin too);
* it wakes at most `1 / interval` times a second whatever the plugin writes,
  and reads up to the pipe's capacity each time (the pipe is grown to 1 MiB),
  so its cost does not depend on how the plugin chops its writes;
* a token bucket caps the bytes it keeps per plugin (`rate` bytes/s, `burst`);
  past that, what is in the pipe is discarded in the kernel (`splice` into
  /dev/null: never copied into the supervisor) and counted in `dropped_bytes`.
  A plugin writing faster than the pipe drains blocks in its own `write`,
  which costs only itself;
* only the last `tail_lines` lines are kept (what `precinct logs` shows;
  `precinct status` shows the last `STATUS_LINES`), each cut to `line_max`
  characters, with control characters replaced, so `precinct status` cannot
  be used to send escape sequences to an operator's terminal.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import time

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
READ_CHUNK = 1 << 20

# What a well-behaved plugin never reaches: a traceback is a few KiB, a chatty
# INFO logger a few hundred bytes a second.
DEFAULT_RATE = 16 * 1024          # bytes per second kept, sustained
DEFAULT_BURST = 256 * 1024        # bytes kept in one go before the rate applies
DEFAULT_INTERVAL = 0.1            # seconds between reads: at most 10 wake-ups a second
TAIL_LINES = 200                  # at most 200 * LINE_MAX characters per plugin
STATUS_LINES = 20
LINE_MAX = 500

# Every C0/C1 control character except tab becomes U+FFFD.
_CONTROLS = {c: "\ufffd" for c in (*range(0x00, 0x09), *range(0x0a, 0x20), 0x7f, *range(0x80, 0xa0))}


def clean(raw: bytes, limit: int = LINE_MAX) -> str:
    text = raw[: limit * 4].decode("utf-8", errors="replace").rstrip("\r").translate(_CONTROLS)
    return text[:limit]


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock=time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.at = burst, clock()

    def available(self) -> int:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return int(self.tokens)

    def spend(self, n: int) -> None:
        self.tokens -= n


class PluginLog:
    """The bounded record of one plugin's output, across its restarts."""

    def __init__(self, rate: float = DEFAULT_RATE, burst: float = DEFAULT_BURST, interval: float = DEFAULT_INTERVAL,
                 tail_lines: int = TAIL_LINES, line_max: int = LINE_MAX) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.bucket = TokenBucket(rate, burst)
        self.interval, self.line_max = interval, line_max
        self.kept_bytes = 0          # read and looked at
        self.dropped_bytes = 0       # discarded unread (over the rate)
        self._partial = b""          # the line being assembled, at most line_max * 4 bytes
        self._partial_len = 0        # its real length, for the "[+N bytes]" note
        self._dropping = False
        self.lines_total = 0         # lines ever kept: the sequence number `precinct logs -f` follows

    def note(self, text: str) -> None:
        """A line from the supervisor itself (launch failures, missed pings)."""
        self._keep(text[: self.line_max])

    def _keep(self, line: str) -> None:
        self.tail.append(line)
        self.lines_total += 1

    def since(self, seq: int | None) -> tuple[list[str], int, int]:
        """(lines kept after sequence number `seq`, the next one to ask for,
        how many of those are no longer in the tail). `None`: the whole tail."""
        lines = list(self.tail)
        if seq is None:
            return lines, self.lines_total, 0
        wanted = max(0, self.lines_total - max(0, seq))
        shown = lines[len(lines) - min(wanted, len(lines)):] if wanted else []
        return shown, self.lines_total, wanted - len(shown)

    # -- reading -------------------------------------------------------------------

    async def follow(self, fd: int) -> None:
        """Read `fd` (the read end of the plugin's pipe) until EOF; closes it."""
        loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            while True:
                readable = loop.create_future()
                loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
                try:
                    await readable
                finally:
                    loop.remove_reader(fd)
                budget = min(self.bucket.available(), READ_CHUNK)
                taken = self._take(fd, budget) if budget > 0 else 0
                if taken is None:
                    break
                # The budget is spent and more may be waiting: discard it unread.
                if taken == budget:
                    if not self._drop(fd, devnull):
                        break
                else:
                    self._dropping = False      # kept everything: the next drop gets a new note
                await asyncio.sleep(self.interval)
        finally:
            self._flush()
            os.close(devnull)
            os.close(fd)

    def _take(self, fd: int, limit: int) -> int | None:
        """Read and keep up to `limit` bytes; how many, or None at EOF."""
        try:
            data = os.read(fd, limit)
        except BlockingIOError:
            return 0
        except OSError:
            return None
        if not data:
            return None
        self.bucket.spend(len(data))
        self.kept_bytes += len(data)
        self._feed(data)
        return len(data)

    def _drop(self, fd: int, devnull: int) -> bool:
        """Discard what the pipe holds without copying it here; False at EOF."""
        dropped, eof = 0, False
        while dropped < PIPE_SIZE * 2:
            try:
                n = os.splice(fd, devnull, PIPE_SIZE, flags=os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                break
            except OSError:         # no splice here: read and forget
                try:
                    n = len(os.read(fd, PIPE_SIZE))
                except BlockingIOError:
                    break
                except OSError:
                    n = 0
            if n == 0:
                eof = True
                break
            dropped += n
        if dropped:
            self.dropped_bytes += dropped
            # What follows starts at an unknown place: never glue it on. Fragments
            # between two drops are not worth a tail line each.
            if self._dropping:
                self._partial, self._partial_len = b"", 0
            else:
                self._flush()
                self.note(f"[precinct: output over {self.bucket.rate / 1024:g} KiB/s; dropping "
                          f"(see log_dropped_bytes)]")
            self._dropping = True
        return not eof

    # -- lines -------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        parts = data.split(b"\n")
        self._extend(parts[0])
        if len(parts) == 1:
            return
        self._flush()
        middle = parts[1:-1]
        # Only the last lines can stay in the tail: skip the rest without touching them.
        kept = middle[-self.tail.maxlen:] if self.tail.maxlen else middle
        self.lines_total += len(middle) - len(kept)     # skipped, but `precinct logs -f` reports them missed
        for line in kept:
            if line.strip():
                self._keep(clean(line, self.line_max) + (f" [+{len(line) - self.line_max} bytes]"
                                                           if len(line) > self.line_max else ""))
        self._extend(parts[-1])

    def _extend(self, piece: bytes) -> None:
        room = self.line_max * 4 - len(self._partial)
        if room > 0:
            self._partial += piece[:room]
        self._partial_len += len(piece)

    def _flush(self) -> None:
        if self._partial_len and self._partial.strip():
            extra = self._partial_len - self.line_max
            self._keep(clean(self._partial, self.line_max) + (f" [+{extra} bytes]" if extra > 0 else ""))
        self._partial, self._partial_len = b"", 0
