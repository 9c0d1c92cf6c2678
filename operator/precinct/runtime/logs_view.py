"""`precinct logs PLUGIN [-f]`: a plugin's captured output, via the control API op `logs`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

from .control import ControlError, call


def _ask(state_dir: Path, plugin: str, since: int | None) -> dict[str, Any]:
    try:
        reply = call(state_dir, "logs", plugin=plugin, since=since)
    except ControlError as exc:
        typer.echo(f"precinct: {exc}", err=True)
        raise typer.Exit(1) from None
    reply.pop("ok", None)
    return reply


def _emit(plugin: str, lines: list[str], missed: int, as_json: bool) -> None:
    if missed:
        note = f"[precinct: {missed} line(s) came and went faster than they were read]"
        typer.echo(json.dumps({"plugin": plugin, "missed": missed}) if as_json else note)
    for line in lines:
        typer.echo(json.dumps({"plugin": plugin, "line": line}, ensure_ascii=False) if as_json else line)
    sys.stdout.flush()


def print_logs(state_dir: Path, plugin: str, *, last: int = 0, as_json: bool = False) -> None:
    reply = _ask(state_dir, plugin, None)
    if last:
        reply["lines"] = reply["lines"][-last:]
    if as_json:
        typer.echo(json.dumps(reply, indent=2, ensure_ascii=False))
        return
    _emit(plugin, reply["lines"], 0, False)
    if reply.get("dropped_bytes"):
        typer.echo(f"[precinct: {reply['dropped_bytes']} bytes of output dropped over the log rate]", err=True)


def follow_logs(state_dir: Path, plugin: str, *, last: int = 0, interval: float = 0.5,
                as_json: bool = False) -> None:
    """Print what is kept, then poll for newer lines until Ctrl-C (or the supervisor goes)."""
    reply = _ask(state_dir, plugin, None)
    _emit(plugin, reply["lines"][-last:] if last else reply["lines"], 0, as_json)
    seq, log_id = reply["next"], reply.get("log_id")
    while True:
        time.sleep(interval)
        reply = _ask(state_dir, plugin, seq)
        if reply.get("log_id") != log_id:        # reloaded: a new instance, a new log
            typer.echo(json.dumps({"plugin": plugin, "reloaded": True}) if as_json
                       else "[precinct: the plugin was reloaded; its new output follows]")
            reply = _ask(state_dir, plugin, 0)
            log_id = reply.get("log_id")
        _emit(plugin, reply["lines"], reply.get("missed", 0), as_json)
        seq = reply["next"]
