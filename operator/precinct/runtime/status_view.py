"""`precinct status` as a table a person can scan."""

from __future__ import annotations

from rich.console import Console

from .top_view import version_text



def _mib(n: int | None) -> str:
    return f"{(n or 0) / 2**20:.1f}Mi"


def _ready(conditions: list[dict]) -> tuple[str, str]:
    for c in conditions or []:
        if c.get("type") == "Ready":
            return c.get("status", "Unknown"), c.get("reason", "")
    return "Unknown", ""


COLUMNS = ("PLUGIN", "VERSION", "STATE", "READY", "PID", "UID", "RESTARTS", "LAST EXIT", "CPU s", "MEMORY / LIMIT")


def columns(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Plain aligned columns. A rich Table takes about 1 ms a row to lay out,
    which is most of `precinct status`'s time at 500 plugins; this takes
    microseconds, and at hundreds of rows borders add nothing."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _alike(key: str, value: str) -> str:
    """An enforcement value without what differs per plugin and is in the
    table anyway (its uid, the pid its membership was verified with), so
    plugins sandboxed the same way share one line."""
    if key == "uid" and value.isdigit():
        return "own uid"
    if key == "cgroup-membership" and value.startswith("verified ("):
        return "verified"
    return value


def render_status(status: dict, console: Console | None = None, kernel: bool = False) -> None:
    """The table, then what a person must notice (enforcement, refusals,
    problems). `kernel`: the answer for one plugin (`precinct status ID`),
    with its sandbox's kernel counters."""
    import sys

    # Piped output (scripts, CI logs) is not limited to 80 columns.
    console = console or (Console() if sys.stdout.isatty() else Console(width=160))
    rows = []
    for pid, p in status.get("plugins", {}).items():
        ready, reason = _ready(p.get("conditions"))
        limit = (p.get("limits") or {}).get("memory_bytes")
        memory = _mib(p.get("memory_bytes")) + (f" / {_mib(limit)}" if limit else "")
        rows.append((pid, version_text(p), p.get("state", "?"), f"{ready} {reason}".strip(), str(p.get("pid") or "-"),
                     str(p.get("uid") if p.get("uid") is not None else "-"), str(p.get("restarts", 0)),
                     p.get("last_exit") or "-", f"{p.get('cpu_seconds', 0):.2f}", memory))
    console.print(f"precinct — NATS {status.get('nats')} — state {status.get('state_dir')}", highlight=False)
    console.print(columns(COLUMNS, rows), highlight=False, markup=False, crop=False, soft_wrap=True)
    if kernel:
        for pid, p in status.get("plugins", {}).items():
            _kernel_lines(console, pid, p.get("confinement") or {})
    # Plugins sandboxed alike share one line: at hundreds of plugins a line
    # each would bury the table (and take longer to print than to fetch).
    alike: dict[str, list[str]] = {}
    for pid, p in status.get("plugins", {}).items():
        enforcement = p.get("enforcement") or {}
        if enforcement:
            shown = enforcement.items() if kernel else ((k, _alike(k, v)) for k, v in enforcement.items())
            alike.setdefault(", ".join(f"{k}={v}" for k, v in shown), []).append(pid)
    lines = []
    for how, pids in alike.items():
        who = ", ".join(pids) if len(pids) <= 5 else f"{', '.join(pids[:3])} and {len(pids) - 3} more"
        lines.append(f"{who} enforced by: {how}")
    if lines:
        console.print("\n".join(lines), highlight=False, markup=False)
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


def _kernel_lines(console: Console, pid: str, conf: dict) -> None:
    """One plugin's sandbox as the kernel reports it now."""
    if not conf:
        return
    limits = conf.get("limits") or {}
    quota, period = limits.get("cpu_quota_us"), limits.get("cpu_period_us")
    cpu = f"{quota * 1000 // period}m" if quota and period and quota > 0 else "unlimited"
    console.print(f"{pid} sandbox: uid {conf.get('uid', '-')}, limits memory {_mib(limits.get('memory'))} "
                  f"cpu {cpu} pids {limits.get('pids', '-')}", highlight=False, markup=False)
    if "cgroup_pids" in conf:
        stat = conf.get("cpu_stat") or {}
        console.print(f"{pid} kernel: {len(conf['cgroup_pids'])} processes in its cgroups "
                      f"({' '.join(map(str, conf['cgroup_pids'][:20]))}), OOM kills {conf.get('oom_kills', 0)}, "
                      f"CPU throttled {stat.get('nr_throttled', 0)} times, forks refused {conf.get('pids_refused', 0)}",
                      highlight=False, markup=False)
