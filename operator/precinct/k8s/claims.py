"""The fleet's claims and compiled plans, kept up to date by BotPlugin events.

`spec.ownership.resolve` decides claims for a whole fleet at once (older
creationTimestamp first; a rejected plugin gets none of its claims). Doing
that on every reconcile made each event cost O(fleet). This index gives the
same answers incrementally: a plugin is accepted when none of its claims is
held by an older accepted plugin; when one plugin changes, only the plugins
sharing a claim with it are re-decided (oldest first), and the change
spreads only through plugins whose decision flips. `changed` names the
BotPlugins whose decision changed, so only their reconciles run again.

Plans are compiled once per spec (per metadata.generation) and kept here;
the credentials and the fleet ConfigMaps read them from here.
"""

from __future__ import annotations

import heapq
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..plan.sandbox import SandboxPlan, compile_plan, observer_warning
from ..spec.identity import kubernetes_id
from ..spec.model import load_botplugin_spec
from ..spec.ownership import COMMAND_CONFLICT, SUBJECT_CONFLICT, Plugin

log = logging.getLogger("precinct.operator")

Key = tuple[str, str]                  # (namespace, name)
Claim = tuple[str, str]                # ("id" | "subject" | "word" | "ns", value)


def first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in ("spec", *err["loc"]))
    return f"{where}: {err['msg']}"


@dataclass
class Entry:
    key: Key
    id: str
    order: tuple[str, str, str]                  # (creationTimestamp, namespace, name)
    generation: int
    uid: str = ""
    plugin: Plugin | None = None                 # None: invalid spec, or being deleted
    plan: SandboxPlan | None = None
    invalid: str | None = None
    claims: list[tuple[Claim, str, str]] = field(default_factory=list)   # (claim, reason, what) in resolve's order
    rejection: tuple[str, str] | None = None


def _claims(plugin: Plugin) -> list[tuple[Claim, str, str]]:
    """Every claim with the conflict it reports, in spec.ownership.resolve's order."""
    out: list[tuple[Claim, str, str]] = [(("id", plugin.id), SUBJECT_CONFLICT, "")]
    for word, subject in plugin.spec.command_subjects().items():
        out.append((("subject", subject), COMMAND_CONFLICT, f"command subject {subject}"))
        out.append((("word", word), COMMAND_CONFLICT, f"chat word !{word}"))
    for token in plugin.namespace_claims():
        out.append((("ns", token), SUBJECT_CONFLICT, f"namespace {token!r}"))
    return out


class Claims:
    def __init__(self) -> None:
        self.entries: dict[Key, Entry] = {}
        self.by_claim: dict[Claim, set[Key]] = defaultdict(set)
        self.version = 0                           # bumps whenever the accepted set or a plan changes

    # -- reading ---------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Entry | None:
        return self.entries.get((namespace, name))

    def rejection(self, namespace: str, name: str) -> tuple[str, str] | None:
        entry = self.entries.get((namespace, name))
        return entry.rejection if entry else None

    def accepted_plans(self) -> list[SandboxPlan]:
        return [e.plan for e in self.entries.values()
                if e.plan is not None and e.plugin is not None and e.rejection is None]

    def __len__(self) -> int:
        return len(self.entries)

    # -- events ------------------------------------------------------------------

    def observe(self, body: Any) -> set[Key]:
        """A BotPlugin was added or changed. Returns the keys whose claim
        decision changed (never the plugin itself unless its decision did)."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        generation = int(meta.get("generation") or 0)
        deleting = bool(meta.get("deletionTimestamp"))
        old = self.entries.get(key)
        if old is not None and old.generation == generation and (old.plugin is None) == (deleting or old.invalid is not None) \
                and old.uid == meta.get("uid", ""):
            return set()                           # a status write, or nothing that moves claims
        entry = Entry(key=key, id=kubernetes_id(*key), order=(meta.get("creationTimestamp") or "", *key),
                      generation=generation, uid=meta.get("uid", ""))
        if not deleting:
            try:
                entry.plugin = Plugin(entry.id, load_botplugin_spec(dict(body.get("spec") or {})))
            except ValidationError as exc:
                entry.invalid = first_error(exc)
            if entry.plugin is not None:
                if old is not None and old.plugin is not None and old.plugin == entry.plugin and old.plan is not None:
                    entry.plan = old.plan
                else:
                    entry.plan = compile_plan(entry.plugin)
                    warning = observer_warning(entry.plan)
                    # As `precinct up` says it: when a plugin first holds the grant.
                    if warning and not (old is not None and old.plan is not None and observer_warning(old.plan)):
                        log.warning("%s/%s: %s", *key, warning)
                entry.claims = _claims(entry.plugin)
        return self._replace(key, entry)

    def remove(self, namespace: str, name: str) -> set[Key]:
        return self._replace((namespace, name), None)

    def _replace(self, key: Key, entry: Entry | None) -> set[Key]:
        old = self.entries.pop(key, None)
        touched: set[Key] = set()
        if old is not None:
            for claim, _, _ in old.claims:
                self.by_claim[claim].discard(key)
                touched |= self.by_claim[claim]
                if not self.by_claim[claim]:
                    del self.by_claim[claim]
        if entry is not None:
            self.entries[key] = entry
            for claim, _, _ in entry.claims:
                touched |= self.by_claim[claim]
                self.by_claim[claim].add(key)
        self.version += 1
        if entry is not None:
            touched.add(key)
        return self._decide(touched) - {key}      # its own handler reconciles the plugin itself

    def _decide(self, start: set[Key]) -> set[Key]:
        """Re-decide `start` oldest first; spread to younger neighbours of any flip."""
        heap = [(self.entries[k].order, k) for k in start if k in self.entries]
        heapq.heapify(heap)
        seen: set[Key] = set()
        changed: set[Key] = set()
        while heap:
            order, key = heapq.heappop(heap)
            if key in seen:
                continue
            seen.add(key)
            entry = self.entries[key]
            decision = self._decision(entry)
            if decision != entry.rejection or key in start:
                if decision != entry.rejection:
                    changed.add(key)
                    entry.rejection = decision
                for claim, _, _ in entry.claims:
                    for other in self.by_claim.get(claim, ()):
                        if other not in seen and self.entries[other].order > order:
                            heapq.heappush(heap, (self.entries[other].order, other))
        return changed

    def _decision(self, entry: Entry) -> tuple[str, str] | None:
        if entry.plugin is None:
            return None
        conflicts: list[tuple[str, str]] = []
        for claim, reason, what in entry.claims:
            owner = self._owner(claim, entry)
            if owner is None:
                continue
            if claim[0] == "id":
                conflicts.append((reason, f"plugin id {entry.id!r} is already in use"))
            else:
                conflicts.append((reason, f"{what} belongs to plugin {owner.id!r}"))
        if not conflicts:
            return None
        reason = COMMAND_CONFLICT if any(r == COMMAND_CONFLICT for r, _ in conflicts) else SUBJECT_CONFLICT
        return reason, "; ".join(dict.fromkeys(m for _, m in conflicts))

    def _owner(self, claim: Claim, entry: Entry) -> Entry | None:
        """The accepted plugin older than `entry` holding `claim` (at most one exists)."""
        for other_key in self.by_claim.get(claim, ()):
            other = self.entries[other_key]
            if other is not entry and other.order < entry.order and other.plugin is not None and other.rejection is None:
                return other
        return None
