"""`precinct status` as a table a person can scan."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .top_view import version_text



def _mib(n: int | None) -> str:
    return f"{(n or 0) / 2**20:.1f}Mi"


def _ready(conditions: list[dict]) -> tuple[str, str]:
    for c in conditions or []:
        if c.get("type") == "Ready":
            return c.get("status", "Unknown"), c.get("reason", "")
    return "Unknown", ""


def render_status(status: dict, console: Console | None = None) -> None:
    import sys

    # Piped output (scripts, CI logs) is not limited to 80 columns.
    console = console or (Console() if sys.stdout.isatty() else Console(width=160))
    table = Table(title=f"precinct — NATS {status.get('nats')} — state {status.get('state_dir')}")
    for col in ("PLUGIN", "VERSION", "STATE", "READY", "PID", "UID", "RESTARTS", "LAST EXIT", "CPU s", "MEMORY / LIMIT"):
        table.add_column(col, overflow="fold")
    for pid, p in status.get("plugins", {}).items():
        ready, reason = _ready(p.get("conditions"))
        limit = (p.get("limits") or {}).get("memory_bytes")
        memory = _mib(p.get("memory_bytes")) + (f" / {_mib(limit)}" if limit else "")
        table.add_row(pid, version_text(p), p.get("state", "?"), f"{ready} {reason}".strip(), str(p.get("pid") or "-"),
                      str(p.get("uid") if p.get("uid") is not None else "-"), str(p.get("restarts", 0)),
                      p.get("last_exit") or "-", f"{p.get('cpu_seconds', 0):.2f}", memory)
    console.print(table)
    for pid, p in status.get("plugins", {}).items():
        enforcement = p.get("enforcement") or {}
        if enforcement:
            console.print(f"{pid} enforced by: " + ", ".join(f"{k}={v}" for k, v in enforcement.items()))
    for pid, p in status.get("plugins", {}).items():
        counts = {m: n for m, n in ((p.get("refusals") or {}).get("counts") or {}).items() if n}
        if counts:
            strikes = (p.get("refusals") or {}).get("strikes", 0)
            console.print(f"{pid} refused: " + ", ".join(f"{m} {n}" for m, n in counts.items())
                          + (f" ({strikes} strike{'s' if strikes != 1 else ''})" if strikes else " (no strikes)"))
    reporting = (status.get("refusals") or {}).get("reporting") or {}
    unreported = [f"{m}: {how}" for m, how in reporting.items() if how.startswith("MISSING")]
    if unreported:
        console.print("[yellow]refusals not reported[/yellow]: " + "; ".join(unreported), markup=True)
    lost = {k: v for k, v in ((status.get("refusals") or {}).get("lost") or {}).items() if v}
    if lost:
        console.print("refusal records lost: " + ", ".join(f"{k} {v}" for k, v in lost.items()))
    for pid, p in status.get("plugins", {}).items():
        for problem in p.get("problems") or []:
            console.print(f"[red]{pid}[/red]: {problem}")
        if p.get("log_dropped_bytes"):
            console.print(f"[yellow]{pid}[/yellow]: {p['log_dropped_bytes']} bytes of output dropped over its log cap")
        if p.get("state") in ("BackOff", "CrashLoopBackOff") and p.get("stderr_tail"):
            console.print(f"[yellow]{pid} stderr (last lines):[/yellow]")
            for line in p["stderr_tail"][-5:]:
                console.print(f"  {line}", markup=False)
    services = status.get("services", {})
    if services:
        console.print("services: " + ", ".join(f"{n} {s.get('state')}" for n, s in services.items()))
