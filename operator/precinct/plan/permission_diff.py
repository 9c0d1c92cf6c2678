"""What a new version of a plugin may do that the installed one may not: the
permission diff that `precinct plugin update` prints and the marketplace page
shows before the operator accepts an update. Pure: two manifests in, a list of
changes out.

Each version becomes its *surface*, one nested mapping of what it may do:
taken from the compiled sandbox plan wherever the compiler resolves something
(grants with the ones they imply, limits in bytes and millicores, chat routes,
event roots, the subjects the NATS server lets it publish and receive, storage
operations, network, data dir), and from the manifest as written for every
other field (dependencies, config, and any field added later). The surfaces
are flattened to dotted paths and compared path by path:

- a list: which items were added, which removed;
- a number (or an ordered word such as the data dir's none < read < write):
  raised or lowered;
- anything else: changed.

An addition or a raise *widens* what the plugin may do and needs the
operator's consent, unless the path is informational (INFORMATIONAL: the
description, the config, ...). A path this module has no label for still
shows, under its own name, and an addition there still needs consent: a new
manifest field (say `exports: [lookup]`) appears as "new exports: lookup"
without any change here, and is never waved through. ASPECTS only gives known
paths a better label and a place in the order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Callable

from ..spec import requirements as reqs
from ..spec.model import Manifest
from ..spec.ownership import Plugin
from ..spec.quantity import format_bytes, format_millicores
from .permissions_doc import grant_rows
from .render_text import command_lines
from .sandbox import compile_plan

# Manifest fields the compiled plan stands in for (the surface shows the plan's view of them).
COMPILED_FIELDS = frozenset({"permissions", "resources", "commands", "command_groups", "events"})
# Not what the plugin may do: shown when they change, never a reason to ask.
INFORMATIONAL = frozenset({"author", "description", "entrypoint", "config", "config_schema", "subject_namespace"})

# Known paths (a path matches its own entry or its closest dotted parent): label, value formatter.
ASPECTS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "permissions": ("grant", str),
    "commands": ("command", str),
    "event_roots": ("event root", str),
    "dependencies": ("dependency", str),
    "limits.cpu_millicores": ("CPU limit", format_millicores),
    "limits.memory_bytes": ("memory limit", format_bytes),
    "limits.pids": ("process limit", str),
    "limits.disk_bytes": ("disk limit", format_bytes),
    "rates.messages_per_second": ("message rate (per second)", lambda v: f"{v:g}"),
    "rates.burst": ("message burst", str),
    "rates.database_queries_per_second": ("database query rate (per second)", lambda v: f"{v:g}"),
    "rates.max_payload_replies_per_request": ("replies per request", str),
    "rates.calls_per_second": ("call rate to other plugins (per second)", lambda v: f"{v:g}"),
    "exports": ("action other plugins may call", str),
    "calls": ("call to another plugin", str),
    "publish": ("subject it may publish", str),
    "receive": ("subject it may receive", str),
    "storage": ("storage operation", str),
    "network": ("network access", str),
    "data_dir": ("access to its data dir", str),
    "max_responses": ("answers per request", str),
    "author": ("author", str),
    "description": ("description", str),
    "entrypoint": ("entry point", str),
    "config": ("default config", lambda v: json.dumps(v)),
    "config_schema": ("config schema", lambda v: json.dumps(v)),
    "subject_namespace": ("subject namespace", str),
}
# What the compiler makes of the fields above them: listed after them (the
# page folds them away), and they still widen: the NATS server and the kernel
# enforce exactly these.
DETAILS = frozenset({"publish", "receive", "storage", "network", "data_dir", "max_responses"})
# Mapping keys that name the item (the project), so the label stays "dependency".
ITEM_KEYED = frozenset({"dependencies"})
# Words with an order, compared as numbers (a higher rank widens).
RANKED = {"data_dir": ("none", "read", "write")}


def surface(manifest: Manifest) -> dict[str, Any]:
    """Everything one version may do, as a nested mapping (see the module doc)."""
    plan = compile_plan(Plugin(manifest.id, manifest.without_name()))
    declared = manifest.model_dump(mode="json", by_alias=False, exclude={"name", "version", *COMPILED_FIELDS})
    declared["dependencies"] = {reqs.normalize(reqs.parse(d).name): d for d in manifest.dependencies}
    return {
        "permissions": list(plan.permissions),
        "commands": command_lines(plan),
        "event_roots": list(plan.event_roots),
        "publish": list(plan.account.user.publish),
        "receive": list(plan.account.user.subscribe),
        "max_responses": plan.account.user.max_responses,
        "storage": list(plan.storage.operations),
        "network": list(plan.fence.network),
        "data_dir": plan.fence.data_dir,
        "limits": asdict(plan.limits),
        "rates": asdict(plan.rates),
        **declared,
    }


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {dotted path: leaf}; lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _aspect(path: str) -> tuple[str, str, Callable[[Any], str]]:
    """(matched key, label, formatter) for a path: its own entry, else its closest parent's."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in ASPECTS:
            label, fmt = ASPECTS[key]
            rest = "" if key in ITEM_KEYED else ".".join(parts[n:])
            return key, f"{label} {rest}" if rest else label, fmt
    return parts[0], path, lambda v: json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def _order(path: str) -> tuple[int, str]:
    keys = list(ASPECTS)
    key = _aspect(path)[0]
    return (keys.index(key) if key in keys else len(keys), path)


@dataclass(frozen=True)
class Change:
    path: str          # dotted surface path: "permissions", "limits.memory_bytes", "dependencies.httpx"
    kind: str          # added | removed | raised | lowered | changed
    item: str          # what was added or removed, or "old -> new"
    widens: bool       # the new version may do more: needs the operator's consent
    words: str         # one line for a person
    detail: bool = False   # compiled consequence (subjects, storage operations, network, data dir)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _grant_words(grant: str, namespace: str) -> str:
    for row in grant_rows(namespace):
        if row.grant is not None and row.grant.value == grant:
            return row.words()
    return ""


def _compare(path: str, old: Any, new: Any, namespace: str) -> list[Change]:
    key, label, fmt = _aspect(path)
    informational = path.split(".")[0] in INFORMATIONAL

    def change(kind: str, item: str, widens: bool, words: str) -> Change:
        return Change(path, kind, item, widens and not informational, words, key in DETAILS)

    if isinstance(old, list) or isinstance(new, list):
        before, after = list(old or []), list(new or [])
        out = []
        for item in after:
            if item not in before:
                words = f"new {label}: {fmt(item)}"
                if key == "permissions" and (adds := _grant_words(item, namespace)):
                    words += f": {adds}"
                out.append(change("added", fmt(item), True, words))
        out += [change("removed", fmt(item), False, f"removed {label}: {fmt(item)}")
                for item in before if item not in after]
        return out
    if old is None or new is None or old == {} or new == {}:
        if old in (None, {}) and new in (None, {}):
            return []
        if old in (None, {}):
            return [change("added", fmt(new), True, f"new {label}: {fmt(new)}")]
        return [change("removed", fmt(old), False, f"removed {label}: {fmt(old)}")]
    ranks = RANKED.get(key)
    a, b = (ranks.index(old), ranks.index(new)) if ranks and old in ranks and new in ranks else (old, new)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    shown = f"{fmt(old)} -> {fmt(new)}"
    if numeric and a != b:
        return [change("raised", shown, True, f"higher {label}: {shown}") if b > a
                else change("lowered", shown, False, f"lower {label}: {shown}")]
    if old != new:
        return [change("changed", shown, True, f"{label} changed: {shown}")]
    return []


def _mark(change: Change) -> str:
    """`+` widens (needs consent), `-` narrows, `~` informational."""
    return "+" if change.widens else ("-" if change.kind in ("removed", "lowered") else "~")


@dataclass(frozen=True)
class PermissionDiff:
    plugin: str
    old_version: str | None      # None: nothing installed (every item is new)
    new_version: str
    changes: tuple[Change, ...]

    @property
    def widening(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.widens)

    @property
    def needs_consent(self) -> bool:
        return bool(self.widening)

    def fingerprint(self) -> str:
        """Names exactly this diff: the page accepts a fingerprint, so what is
        applied is what the operator saw, not whatever the index serves later."""
        doc = {"plugin": self.plugin, "old": self.old_version, "new": self.new_version,
               "changes": [c.to_dict() for c in self.changes]}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]

    def lines(self) -> list[str]:
        """What the CLI prints: `+` widens (needs consent), `-` narrows, `~` informational."""
        head = f"{self.plugin} {self.old_version or '(not installed)'} -> {self.new_version}"
        if not self.changes:
            return [f"{head}: may do exactly what it may do now"]
        out = [f"{head}: " + (f"{len(self.widening)} change(s) widen what it may do; they need your consent"
                              if self.needs_consent else "no new permissions")]
        details: dict[tuple[str, str], list[Change]] = {}
        for c in self.changes:
            if c.detail:   # one line per compiled aspect: the subjects can be many
                details.setdefault((c.path, c.kind), []).append(c)
            else:
                out.append(f"  {_mark(c)} {c.words}")
        for group in details.values():
            prefix = group[0].words.split(": ", 1)[0]
            out.append(f"  {_mark(group[0])} {prefix}: {', '.join(c.item for c in group)}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "old_version": self.old_version, "new_version": self.new_version,
                "needs_consent": self.needs_consent, "fingerprint": self.fingerprint(),
                "changes": [c.to_dict() for c in self.changes]}


def diff(old: Manifest | None, new: Manifest) -> PermissionDiff:
    """The permission diff from `old` (the installed version; None: none) to `new` (the offered one)."""
    return compare(new.id, old.version if old is not None else None, new.version,
                   surface(old) if old is not None else {}, surface(new), new.namespace)


def compare(plugin: str, old_version: str | None, new_version: str, before: dict[str, Any],
            after: dict[str, Any], namespace: str) -> PermissionDiff:
    """Two surfaces, whatever keys they hold, compared path by path."""
    flat_before, flat_after = _flatten(before), _flatten(after)
    changes: list[Change] = []
    for path in sorted(set(flat_before) | set(flat_after), key=_order):
        changes += _compare(path, flat_before.get(path), flat_after.get(path), namespace)
    return PermissionDiff(plugin, old_version, new_version, tuple(changes))


__all__ = ["diff", "compare", "surface", "PermissionDiff", "Change"]
