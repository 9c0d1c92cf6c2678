"""`precinct top`: the dashboard's data in a terminal (rich Live), via the control API op `top`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .control import call

BLOCKS = "▁▂▃▄▅▆▇█"
STATE_STYLE = {"Running": "green", "Starting": "yellow", "BackOff": "red", "CrashLoopBackOff": "bold red",
               "Suspended": "magenta", "Rejected": "magenta", "Stopped": "dim"}


def _mib(n: Any) -> str:
    return "-" if n is None else f"{int(n) / 2**20:.1f}Mi"


def sparkline(values: list[float], width: int = 20) -> str:
    values = list(values)[-width:]
    if not values:
        return ""
    top = max(values) or 1
    return "".join(BLOCKS[min(len(BLOCKS) - 1, int(v / top * (len(BLOCKS) - 1)))] for v in values)


def version_text(p: dict[str, Any]) -> str:
    """`1.2.0 r3`: the manifest's version and the supervisor's revision (1 + reloads that took over)."""
    if not p.get("version"):
        return "-"
    return f"{p['version']} r{p['revision']}" if p.get("revision") else str(p["version"])


def frame(view: dict[str, Any]) -> Group:
    services = ", ".join(f"{n} {s.get('state')}" for n, s in (view.get("services") or {}).items())
    title = f"precinct top — up {view.get('uptime_seconds', '?')} s — {services}"
    table = Table(title=title, expand=False)
    for col in ("PLUGIN", "VERSION", "STATE", "CPU", "MEMORY / LIMIT", "IN", "OUT", "REPLIES", "ERR", "RATE-LTD",
                "VIOLATIONS", "RESTARTS", "OOM", "LAST EXIT", "MEMORY HISTORY"):
        table.add_column(col, overflow="fold", justify="right" if col in (
            "CPU", "IN", "OUT", "REPLIES", "ERR", "RATE-LTD", "RESTARTS", "OOM") else "left")
    for pid, p in (view.get("plugins") or {}).items():
        limits = p.get("limits") or {}
        traffic = p.get("traffic") or {}
        cpu = f"{p.get('cpu_percent', 0):.1f}%"
        if limits.get("cpu_millicores"):
            cpu += f"/{limits['cpu_millicores'] / 10:.0f}%"
        mem = _mib(p.get("memory_bytes")) + (f" / {_mib(limits['memory_bytes'])}" if limits.get("memory_bytes") else "")
        kinds = ", ".join(f"{k} {n}" for k, n in sorted((p.get("violations_by_kind") or {}).items()) if n)
        strikes = (p.get("violations") or {}).get("strikes") or 0
        violations = (kinds or "none") + (f" ({strikes} strikes)" if strikes else "")
        state = p.get("state") or "?"
        table.add_row(pid, version_text(p), Text(state, style=STATE_STYLE.get(state, "")), cpu, mem,
                      str(traffic.get("messages_in", 0)), str(traffic.get("messages_out", 0)),
                      str(traffic.get("replies", 0)), str(traffic.get("errors", 0)),
                      str(traffic.get("rate_limited", 0)), violations, str(p.get("restarts", 0)),
                      str(p.get("oom_kills", 0)), p.get("last_exit") or "-",
                      sparkline((p.get("history") or {}).get("memory_bytes") or []))
    return Group(table)


def fetch(state_dir: Path) -> dict[str, Any]:
    reply = call(state_dir, "top")
    reply.pop("ok", None)
    return reply


def run_top(state_dir: Path, *, once: bool = False, interval: float = 2.0, console: Console | None = None) -> None:
    import sys

    console = console or (Console() if sys.stdout.isatty() else Console(width=200))
    if once:
        console.print(frame(fetch(state_dir)))
        return
    if not console.is_terminal:   # piped: one frame per interval, appended
        while True:
            console.print(frame(fetch(state_dir)))
            console.file.flush()
            time.sleep(interval)
    from rich.live import Live

    with Live(frame(fetch(state_dir)), console=console, refresh_per_second=4, screen=False) as live:
        while True:
            time.sleep(interval)
            live.update(frame(fetch(state_dir)))
