"""CPU and memory of a process, read from /proc (the cgroup's own counters
replace this once a plugin runs in its cgroup)."""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessStats:
    cpu_seconds: float = 0.0
    memory_bytes: int = 0


def sample(pid: int) -> ProcessStats:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # The command name may contain spaces and parentheses: split after the last ')'.
            fields = fh.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
        rss = 0
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    break
        return ProcessStats(cpu, rss)
    except (OSError, IndexError, ValueError):
        return ProcessStats()
