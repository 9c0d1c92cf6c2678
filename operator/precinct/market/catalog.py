"""What the marketplace page browses: every plugin in the configured index,
next to what is installed.

Everything here goes through the same code as the CLI: the TUF client
(client.py) verifies each release from the pinned root before anything is
read from it (the page never checks a signature itself, it shows what the
client found), `bundle.inspect` opens it with every archive check, the scan is
`precinct plugin scan`'s, "what it may do" is docs/permissions.md's rows for
its grants (plan/permissions_doc.py), and the update offer carries the same
permission diff `precinct plugin update` prints (plan/permission_diff.py).

The index is the one the state dir remembers (`precinct plugin index URL
--root ROOT.json`, or `--index`/`--root` given to any `precinct plugin`
command); the page cannot change it,
because pinning a root is a trust decision made at a terminal.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ..plan.permission_diff import diff as permission_diff
from ..plan.permissions_doc import may_do
from ..plan.render_text import command_lines
from ..plan.sandbox import compile_plan
from ..spec.load import load_path
from ..spec.model import Manifest
from ..spec.ownership import Plugin
from ..spec.quantity import format_bytes, format_millicores
from . import bundle as bundle_mod
from .client import IndexClient, default_url, open_index
from .errors import MarketError
from .index import _version_key
from .install import PluginsDir, installed
from .scan import Policy, ScanReport, scan_path

NO_INDEX = ("no index configured: run `precinct plugin index URL --root ROOT.json --state-dir STATE` with the "
            "state dir of this `precinct up`; the page uses the index remembered there")


class Catalog:
    """One plugins dir and state dir (those of `precinct up`), and the index the state dir names."""

    def __init__(self, plugins_dir: Path, state_dir: Path, policy: Policy | None = None) -> None:
        self.plugins_dir, self.state_dir = plugins_dir, state_dir
        self.policy = policy or Policy()
        self._scans: dict[str, ScanReport] = {}     # bundle sha256 -> report (a release never changes)
        self._lock = threading.Lock()

    def browse(self, states: dict[str, str] | None = None) -> dict[str, Any]:
        """The page's whole listing: {"index", "error", "plugins": [entry...], "local": [...]}."""
        rows = {r["id"]: r for r in installed(self.plugins_dir, self.state_dir, states) if r["id"]}
        out: dict[str, Any] = {"index": default_url(self.state_dir), "error": None, "plugins": [], "local": []}
        if out["index"] is None:
            out["error"] = NO_INDEX
        else:
            try:
                client = open_index(self.state_dir, None, None)
                updater = client.refresh()
                publishers = client.publishers(updater)
            except MarketError as exc:
                out["error"] = f"{exc.check}: {exc}"
                publishers = {}
            for plugin_id, keyids in publishers.items():
                out["plugins"].append(self._entry(client, updater, plugin_id, keyids, rows.get(plugin_id)))
        offered = {e["id"] for e in out["plugins"]}
        out["local"] = [r for pid, r in rows.items() if pid not in offered]   # installed, not in the index
        return out

    def offer(self, plugin_id: str, version: str | None = None, states: dict[str, str] | None = None) -> dict:
        """One plugin's entry for a chosen release (default: the latest)."""
        rows = {r["id"]: r for r in installed(self.plugins_dir, self.state_dir, states) if r["id"]}
        client = open_index(self.state_dir, None, None)
        updater = client.refresh()
        return self._entry(client, updater, plugin_id, client.publishers(updater).get(plugin_id, []),
                           rows.get(plugin_id), version)

    def _entry(self, client: IndexClient, updater, plugin_id: str, keyids: list[str], row: dict | None,
               version: str | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": plugin_id, "publisher": keyids, "installed": row}
        try:
            versions = client.versions(plugin_id, updater)
            entry["versions"] = versions
            release = client.fetch(plugin_id, version or versions[-1], updater)
            info = bundle_mod.inspect(release.path)
            report = self._scan(release.sha256, release.path)
        except MarketError as exc:
            # Shown in words on the page; nothing from this plugin is offered.
            entry["signature"] = {"ok": False, "check": exc.check, "text": str(exc)}
            return entry
        manifest = info.manifest
        entry["signature"] = {
            "ok": True, "check": "signature",
            "text": (f"verified by the TUF client from the pinned root: {release.version} signed by publisher key "
                     f"{release.publisher[:16]}…, delegated by the index; bundle sha256 {release.sha256[:16]}… "
                     "matches; metadata neither rolled back nor expired")}
        entry.update(self.describe(manifest))
        entry.update(version=release.version, sha256=release.sha256, size=info.size,
                     scan={"verdict": report.verdict(self.policy), "summary": report.summary(self.policy),
                           "findings": [{"severity": f.severity, "check": f.check, "where": f"{f.file}:{f.line}",
                                         "message": f.message} for f in report.findings]})
        entry["action"], entry["permissions"] = self._offer_action(row, manifest)
        return entry

    @staticmethod
    def describe(manifest: Manifest) -> dict[str, Any]:
        """Name, author, description and what it may do, in words from the compiler."""
        plan = compile_plan(Plugin(manifest.id, manifest.without_name()))
        lim = plan.limits
        return {
            "name": manifest.name, "author": manifest.author, "description": manifest.description,
            "may_do": [{"grant": row.grant.value if row.grant else None, "words": row.words()}
                       for row in may_do(manifest)],
            "commands": command_lines(plan),
            "limits": (f"CPU {format_millicores(lim.cpu_millicores)}, memory {format_bytes(lim.memory_bytes)}, "
                       f"{lim.pids} processes, disk {format_bytes(lim.disk_bytes)}, "
                       f"{plan.rates.messages_per_second:g} messages/s"),
            "dependencies": list(manifest.dependencies),
        }

    def _offer_action(self, row: dict | None, manifest: Manifest) -> tuple[str, dict | None]:
        """install | update (with its permission diff) | current | older (rollback is the way back)."""
        if row is None:
            return "install", None
        if row["version"] == manifest.version:
            return "current", None
        if _version_key(manifest.version) < _version_key(row["version"] or ""):
            return "older", None
        live = PluginsDir(self.plugins_dir, self.state_dir).live_folder(manifest.id)
        loaded, _ = load_path(live) if live else (None, [])
        change = permission_diff(loaded if isinstance(loaded, Manifest) else None, manifest)
        return "update", {**change.to_dict(), "lines": change.lines()}

    def _scan(self, sha256: str, path: Path) -> ScanReport:
        with self._lock:
            cached = self._scans.get(sha256)
        if cached is None:
            cached = scan_path(path)
            with self._lock:
                self._scans[sha256] = cached
        return cached
