"""fleet.json as the trusted services read it.

The supervisor writes `<state>/fleet.json` atomically whenever the set of
plugins changes, then SIGHUPs every service:

    {"<plugin id>": {"folder": "...", "account_key": "A...", "plan": SandboxPlan.to_dict()}, ...}

Services reload it on SIGHUP and also whenever its mtime changed and they
meet a plugin id or account key they do not know (a SIGHUP can arrive after
the first request of a freshly started plugin). A damaged file keeps the
previous fleet: failing closed on every plugin because of one bad write would
be worse than serving a few seconds of stale limits.

In a cluster the path is a directory: the operator's fleet ConfigMaps
(`k8s/fleetmap.py`, one shard per object) projected as `fleet-<k>.json`
files; the fleet is their union, reloaded when any file changes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("precinct.fleet")


class FleetFile:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.plugins: dict[str, dict[str, Any]] = {}
        self.by_account: dict[str, str] = {}
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self.generation = 0
        self._changes: set[str] = set()   # ids added, removed or changed, not yet taken

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.iterdir() if p.name.endswith(".json") and not p.name.startswith("."))
        return [self.path]

    def reload(self, force: bool = False) -> bool:
        """Re-read the file (or the directory's files) if changed; True when the fleet changed."""
        try:
            files = self._files()
            stats = [os.stat(p) for p in files]
        except FileNotFoundError:
            if self.plugins:
                log.warning("%s disappeared; keeping the last fleet", self.path)
            return False
        stamp = tuple((p.name, st.st_mtime_ns, st.st_ino) for p, st in zip(files, stats))
        if not force and stamp == self._stamp:
            return False
        data: dict[str, Any] = {}
        try:
            for path in files:
                part = json.loads(path.read_text())
                if not isinstance(part, dict):
                    raise ValueError(f"{path.name}: not a JSON object")
                data.update(part)
        except (OSError, ValueError) as exc:
            log.error("cannot read %s: %s (keeping the previous fleet)", self.path, exc)
            return False
        self._stamp = stamp
        plugins = {pid: entry for pid, entry in data.items() if isinstance(entry, dict) and "plan" in entry}
        changed = plugins != self.plugins
        if changed:
            self._changes |= {pid for pid in plugins.keys() | self.plugins.keys()
                              if plugins.get(pid) != self.plugins.get(pid)}
        self.plugins = plugins
        self.by_account = {e["account_key"]: pid for pid, e in plugins.items() if e.get("account_key")}
        if changed:
            self.generation += 1
            log.info("fleet loaded: %d plugin(s)", len(plugins))
        return changed

    def take_changes(self) -> set[str]:
        """The plugin ids whose entry appeared, went or changed since the last
        call: a service reconfigures those only, not the whole fleet, on each
        reload (at 500 plugins most reloads change one)."""
        changes, self._changes = self._changes, set()
        return changes

    def get(self, plugin_id: str) -> dict[str, Any] | None:
        """The entry for `plugin_id`, re-reading the file once if it is unknown."""
        entry = self.plugins.get(plugin_id)
        if entry is None and self.reload():
            entry = self.plugins.get(plugin_id)
        return entry

    def plugin_for_account(self, account_key: str) -> str | None:
        pid = self.by_account.get(account_key)
        if pid is None and self.reload():
            pid = self.by_account.get(account_key)
        return pid

    def plan(self, plugin_id: str) -> dict[str, Any] | None:
        entry = self.get(plugin_id)
        return entry["plan"] if entry else None
