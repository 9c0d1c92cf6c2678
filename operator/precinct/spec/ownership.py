"""Who owns which subjects.

Each plugin id, subject namespace, event root, command subject and chat word
belongs to exactly one plugin. Claims are granted in priority order (single host:
plugins already running, then folder-name order; Kubernetes: older
creationTimestamp first), so a newcomer can never take over a subject that a
running plugin serves: it is rejected instead, and the first owner keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import PluginSpec

SUBJECT_CONFLICT = "SubjectConflict"
COMMAND_CONFLICT = "CommandConflict"
ID_CONFLICT = "IdConflict"   # two manifests whose names fold to the same id (`Vault` beside `vault`)


@dataclass(frozen=True)
class Plugin:
    """A plugin as the compiler sees it: its id and its validated spec."""

    id: str
    spec: PluginSpec
    source: str = ""   # where it came from, for messages: its folder (single host) or file

    @property
    def namespace(self) -> str:
        return self.spec.subject_namespace or self.id

    def namespace_claims(self) -> list[str]:
        """Tokens under which it stores data or publishes events."""
        return sorted({self.namespace, *self.spec.command_namespaces(), *self.spec.events})


@dataclass(frozen=True)
class Rejection:
    plugin: str
    reason: str
    message: str
    source: str = ""


def _from(source: str) -> str:
    return f" (from {source})" if source else ""


def id_conflict(plugin_id: str, newcomer: str, owner: str, why: str = "") -> str:
    """The message for a second claimant of a plugin id, naming both sources."""
    return (f"plugin id {plugin_id!r}{_from(newcomer)} already belongs to the plugin{_from(owner)}{why}; "
            "names are compared lowercased with '_' as '-', so rename one of them")


@dataclass
class Ownership:
    accepted: list[Plugin] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    namespaces: dict[str, str] = field(default_factory=dict)   # token -> plugin id
    words: dict[str, str] = field(default_factory=dict)        # chat word -> plugin id
    subjects: dict[str, str] = field(default_factory=dict)     # command subject -> plugin id

    def withdraw(self, plugin_id: str, reason: str, message: str) -> None:
        """Take back everything an accepted plugin was granted and reject it
        (a later step refused it, e.g. the fleet ceiling); later plugins keep
        what they were granted and are not promoted into its claims."""
        plugin = next(p for p in self.accepted if p.id == plugin_id)
        self.accepted.remove(plugin)
        for table in (self.namespaces, self.words, self.subjects):
            for key in [k for k, owner in table.items() if owner == plugin_id]:
                del table[key]
        self.rejected.append(Rejection(plugin_id, reason, message, plugin.source))

    def routes(self) -> dict[str, dict]:
        """Chat word -> its route and owning plugin, for the dispatcher
        (routes.json): {"plugin", "subject"} for a plain word, {"plugin",
        "subcommands", "default"} (+ "alias_of") for a command group."""
        by_id = {p.id: p for p in self.accepted}
        return {word: {**by_id[owner].spec.chat_routes()[word], "plugin": owner}
                for word, owner in sorted(self.words.items())}


def resolve(plugins: list[Plugin]) -> Ownership:
    """Grant claims in the given order; reject a plugin whose claims collide.

    A rejected plugin gets none of its claims (partial ownership would leave a
    plugin answering some of its commands but not others).
    """
    result = Ownership()
    owners: dict[str, Plugin] = {}
    for plugin in plugins:
        first = owners.get(plugin.id)
        if first is not None:
            # The id names its account, uid, credentials, data and status entry:
            # the first owner keeps all of them, and the newcomer gets nothing.
            result.rejected.append(Rejection(plugin.id, ID_CONFLICT, id_conflict(plugin.id, plugin.source, first.source),
                                             plugin.source))
            continue
        conflicts: list[tuple[str, str]] = []
        subjects = plugin.spec.all_command_subjects()
        words = list(plugin.spec.chat_routes())      # plain words, command groups and their aliases
        for subject in subjects:
            owner = result.subjects.get(subject)
            if owner:
                conflicts.append((COMMAND_CONFLICT, f"command subject {subject} belongs to plugin {owner!r}"))
        for word in words:
            owner = result.words.get(word)
            if owner:
                conflicts.append((COMMAND_CONFLICT, f"chat word !{word} belongs to plugin {owner!r}"))
        for token in plugin.namespace_claims():
            owner = result.namespaces.get(token)
            if owner:
                conflicts.append((SUBJECT_CONFLICT, f"namespace {token!r} belongs to plugin {owner!r}"))
        if conflicts:
            # Command conflicts are the more specific (and more common) diagnosis.
            reason = COMMAND_CONFLICT if any(r == COMMAND_CONFLICT for r, _ in conflicts) else SUBJECT_CONFLICT
            message = "; ".join(dict.fromkeys(m for _, m in conflicts))
            result.rejected.append(Rejection(plugin.id, reason, message, plugin.source))
            continue
        result.accepted.append(plugin)
        owners[plugin.id] = plugin
        for token in plugin.namespace_claims():
            result.namespaces[token] = plugin.id
        for word in words:
            result.words[word] = plugin.id
        for subject in subjects:
            result.subjects[subject] = plugin.id
    return result
