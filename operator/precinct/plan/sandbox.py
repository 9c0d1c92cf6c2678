"""The sandbox plan: a pure function from a plugin's spec to everything a
runtime needs to confine it.

No I/O and no keys here: accounts are named by role (`core`, `platform`,
`plugin:<id>`) and the NATS layer turns the plan into signed JWTs. The same
plan drives the single-host runtime, the Kubernetes operator, `precinct
render`, and docs/permissions.md, so what we document is what we enforce.

The NATS edges (also tabled in docs/nats.md, "The edges"):
  commands       plugin exports each claimed rosey.command.<ns>.<action> as a
                 singleton service; only core imports it.
  payload reply  plugin publishes rosey.reply.<id>.<nonce>, exported as a
                 stream; platform imports it under prefix plugin.<id>.
  chat / events  plugin exports its chat and event subjects as streams;
                 platform imports them under prefix plugin.<id>; the gateway
                 rate-limits and republishes to core.
  chat in        core exports public chat events; read_messages imports them.
  storage        platform exports precinct.storage.<id>.>; the plugin imports
                 exactly the operations it is granted, mapped from Rosey's
                 subjects, so identity comes from the account, not the payload.
  health         plugin exports precinct.ping.<id>.* to platform.
  config         plugin exports precinct.config.<id>.* to platform: the
                 supervisor's hot config reload (only platform can send it).
  calls          `calls: [quotes.lookup]`: the plugin imports platform's
                 precinct.relay.<id>.quotes.lookup as precinct.call.quotes.lookup,
                 the only call subjects it may publish; the gateway (platform)
                 checks the pair, rate-limits, stamps the caller and asks...
  exports        ...the callee, which exports precinct.export.<id>.<action> for
                 each of its `exports` to platform only, so the gateway is the
                 one party that can reach them.
  observe        observe_chat_and_events only: the plugin imports core's chat
                 in and platform's relayed chat out and rosey.event.> (the
                 streams those accounts already export) under precinct.observe,
                 and may subscribe to `>` in its own account, which holds
                 nothing else of anyone else's: no commands, replies, storage
                 or PMs are ever imported into it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from ..spec.model import Permission
from ..wire import subjects as wire
from ..wire.subjects import CHAT_IN_SUBJECTS, CHAT_OUT_SUBJECTS, FLEET_EVENTS, OBSERVE_PREFIX
from ..spec.ownership import Plugin

CORE = "core"
PLATFORM = "platform"

# An observer's `>` subscription also receives every request it answers (its
# commands, pings, config), so each request reaches its connection twice, and
# nats-server (2.15.1, checked) spends one of the user's per-request responses
# on each repeated delivery. Two leaves it exactly one answer with `>` plus
# the answering subscription; a further answer is refused as for every plugin.
# (Without `>` it could answer twice: the Singleton export forwards only the
# first to the requester, the second is dropped unreported.)
OBSERVER_MAX_RESPONSES = 2

ROW_READS = ("select", "search")
ROW_WRITES = ("insert", "update", "delete", "schema.register")
KV_READS = ("get", "list")
KV_WRITES = ("set", "delete")
MIGRATE_READS = ("status",)

# Per-connection ceilings the NATS server enforces for every plugin account.
MAX_CONNECTIONS = 4           # old + new instance during a hot reload, plus slack
MAX_SUBSCRIPTIONS = 1000
MAX_PAYLOAD = 512 * 1024      # bytes; Rosey's largest payloads are a few KiB


def plugin_account(plugin_id: str) -> str:
    return f"plugin:{plugin_id}"


def import_prefix(plugin_id: str) -> str:
    """Prefix under which the platform sees everything a plugin publishes."""
    return f"plugin.{plugin_id}"


@dataclass(frozen=True)
class Export:
    subject: str
    kind: Literal["service", "stream"]
    singleton: bool = False  # service answers capped at one per request


@dataclass(frozen=True)
class Import:
    """`subject` is as exported by `account`; `local` is what the importer uses
    (service: the subject it publishes; stream: the subject it receives)."""

    account: str
    subject: str
    kind: Literal["service", "stream"]
    local: str | None = None
    prefix: str | None = None  # streams only: importer sees `<prefix>.<subject>`


@dataclass(frozen=True)
class UserPermissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    max_responses: int = 1   # a request may be answered once


@dataclass(frozen=True)
class AccountPlan:
    exports: tuple[Export, ...]
    imports: tuple[Import, ...]
    user: UserPermissions
    max_connections: int = MAX_CONNECTIONS
    max_subscriptions: int = MAX_SUBSCRIPTIONS
    max_payload: int = MAX_PAYLOAD


@dataclass(frozen=True)
class Limits:
    cpu_millicores: int
    memory_bytes: int
    pids: int
    disk_bytes: int


@dataclass(frozen=True)
class Fence:
    """What the kernel (single host) or Kubernetes lets the process touch."""

    code: Literal["read"]                        # its own code and the Python runtime
    data_dir: Literal["none", "read", "write"]
    network: tuple[str, ...]                     # "nats", plus "http-egress-public"
    denied_destinations: tuple[str, ...]


@dataclass(frozen=True)
class RatePlan:
    messages_per_second: float
    burst: int
    database_queries_per_second: float
    calls_per_second: float
    max_payload_replies_per_request: int = 1


@dataclass(frozen=True)
class StoragePlan:
    reads: bool
    writes: bool
    operations: tuple[str, ...]     # e.g. "row.select", "kv.set"


@dataclass(frozen=True)
class SandboxPlan:
    id: str
    namespace: str
    account: AccountPlan
    core_imports: tuple[Import, ...]         # edges this plugin adds to the core account
    platform_imports: tuple[Import, ...]     # edges this plugin adds to the platform account
    platform_exports: tuple[Export, ...]     # services/streams platform offers for this plugin
    event_roots: tuple[str, ...]             # subject prefixes it may publish events under
    commands: dict[str, str]                 # chat word -> command subject
    command_groups: dict[str, dict]          # chat word -> {"subcommands", "default"} (CommandGroup.route())
    exports: tuple[str, ...]                 # actions other plugins may call (`<namespace>.<action>`)
    calls: tuple[str, ...]                   # other plugins' actions it may call (`<their namespace>.<action>`)
    limits: Limits
    fence: Fence
    rates: RatePlan
    storage: StoragePlan
    permissions: tuple[str, ...]             # granted, implied ones included

    def to_dict(self) -> dict:
        return asdict(self)

    def command_subjects(self) -> list[str]:
        """Every command subject it serves: plain words and command groups."""
        grouped = [subject for group in self.command_groups.values()
                   for part in ("subcommands", "default") for subject in group[part].values()]
        return sorted({*self.commands.values(), *grouped})


def observer_warning(plan: SandboxPlan) -> str | None:
    """The one warning every tool shows for a plugin granted observation
    (`precinct validate`, `plan`, `render`, `up` and the operator's log);
    None otherwise."""
    if Permission.observe_chat_and_events.value not in plan.permissions:
        return None
    return (f"{plan.id} is granted {Permission.observe_chat_and_events.value}: it reads every chat message "
            f"and bot event in the fleet (not commands, replies, storage or credentials). "
            f"Grant it only to plugins you trust with all chat.")


def observe_imports(chat_in: bool = True) -> tuple[Import, ...]:
    """The streams an observer imports, all under OBSERVE_PREFIX. Each is one
    core or platform already exports to every account (CORE_EXPORTS,
    PLATFORM_TO_CORE); a test checks they stay exported and stay streams.

    `chat_in=False` when read_messages already imports core's chat: the server
    refuses a second import of the same subject from the same account, even
    under another local subject (2.15.1 logs "has issues importing account"
    and drops it), so such a plugin sees chat in once, unprefixed."""
    return (
        *(Import(CORE, s, "stream", prefix=OBSERVE_PREFIX) for s in (CHAT_IN_SUBJECTS if chat_in else ())),
        *(Import(PLATFORM, s, "stream", prefix=OBSERVE_PREFIX) for s in (*CHAT_OUT_SUBJECTS, FLEET_EVENTS)),
    )


# Never reachable by an http_requests plugin, in either runtime.
DENIED_DESTINATIONS = (
    "127.0.0.0/8", "::1/128",                                # loopback
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",         # private
    "100.64.0.0/10", "fc00::/7",                             # CGNAT, unique local
    "169.254.0.0/16", "fe80::/10",                           # link-local, cloud metadata
    "0.0.0.0/8", "224.0.0.0/4", "ff00::/8",                  # this-network, multicast
)


def _event_subjects(plugin: Plugin) -> list[str]:
    roots = plugin.namespace_claims()
    subjects = [wire.events_under(t) for t in roots]
    subjects += [f"{root}.>" for root in plugin.spec.events]
    return subjects


def _template(template: str, op: str) -> str:
    """A wire template with the operation filled in and `{ns}` left for later."""
    return template.replace("{op}", op)


def _storage_operations(grants: frozenset[Permission]) -> list[tuple[str, list[str]]]:
    """(platform operation, [Rosey subject templates]) for what the grants allow.
    `{ns}` is the plugin's subject namespace."""
    ops: list[tuple[str, list[str]]] = []
    if Permission.database_read in grants:
        ops += [(f"row.{op}", [_template(wire.ROW_TEMPLATE, op)]) for op in ROW_READS]
        ops += [(f"kv.{op}", [_template(wire.KV_SHARED_TEMPLATE, op), _template(wire.KV_TEMPLATE, op)]) for op in KV_READS]
        ops += [(f"migrate.{op}", [_template(wire.MIGRATE_TEMPLATE, op)]) for op in MIGRATE_READS]
    if Permission.database_write in grants:
        ops += [(f"row.{op}", [_template(wire.ROW_TEMPLATE, op)]) for op in ROW_WRITES]
        ops += [(f"kv.{op}", [_template(wire.KV_SHARED_TEMPLATE, op), _template(wire.KV_TEMPLATE, op)]) for op in KV_WRITES]
    return ops


def compile_plan(plugin: Plugin) -> SandboxPlan:
    """Spec -> plan. Pure: the same plugin always yields the same plan."""
    spec, pid, ns = plugin.spec, plugin.id, plugin.namespace
    grants = spec.granted
    me = plugin_account(pid)
    prefix = import_prefix(pid)

    commands = spec.command_subjects()
    command_subjects = spec.all_command_subjects()
    reply_subject = wire.replies_of(pid)
    event_subjects = _event_subjects(plugin)
    chat_out = list(CHAT_OUT_SUBJECTS) if Permission.send_messages in grants else []

    export_subjects = [wire.export(pid, action) for action in spec.exports]
    exports: list[Export] = [Export(s, "service", singleton=True) for s in [*command_subjects, *export_subjects]]
    exports.append(Export(wire.ping(pid), "service", singleton=True))
    exports.append(Export(wire.config(pid), "service", singleton=True))
    outbound = [*chat_out, *event_subjects, reply_subject]
    exports += [Export(s, "stream") for s in outbound]

    observer = Permission.observe_chat_and_events in grants
    imports: list[Import] = []
    if Permission.read_messages in grants:
        imports += [Import(CORE, s, "stream") for s in CHAT_IN_SUBJECTS]
    if observer:
        imports += observe_imports(chat_in=Permission.read_messages not in grants)
    storage_ops = _storage_operations(grants)
    storage_publish: list[str] = []
    for op, templates in storage_ops:
        for template in templates:
            local = template.format(ns=ns)
            imports.append(Import(PLATFORM, f"{wire.storage_root(pid)}.{op}", "service", local=local))
            storage_publish.append(local)
    # Calls: identity comes from the platform subject the server maps to, like storage.
    call_publish = [wire.call(target) for target in spec.calls]
    imports += [Import(PLATFORM, wire.relayed_calls(pid, target), "service", local=wire.call(target))
                for target in spec.calls]

    # An observer subscribes to everything in its own account: that is only
    # what was imported into it (the observed streams, its granted chat in),
    # its own commands, pings and config, and its own inboxes. The server never
    # delivers another account's subjects unless they are imported, so `>`
    # here cannot reach other plugins' commands, replies or storage, or PMs.
    subscribe = (">",) if observer else (
        *command_subjects,
        *export_subjects,
        wire.ping(pid),
        wire.config(pid),
        *(CHAT_IN_SUBJECTS if Permission.read_messages in grants else ()),
        "_INBOX.>",  # replies to its own storage requests, inside its own account
    )
    user = UserPermissions(publish=tuple([*outbound, *storage_publish, *call_publish]), subscribe=tuple(subscribe),
                           max_responses=OBSERVER_MAX_RESPONSES if observer else 1)
    account = AccountPlan(exports=tuple(exports), imports=tuple(imports), user=user)

    core_imports = tuple(Import(me, s, "service") for s in command_subjects)
    platform_imports = tuple(
        [Import(me, wire.ping(pid), "service"), Import(me, wire.config(pid), "service")]
        + [Import(me, s, "service") for s in export_subjects]
        + [Import(me, s, "stream", prefix=prefix) for s in outbound]
    )
    platform_exports = tuple(
        [Export(f"{wire.storage_root(pid)}.>", "service", singleton=True)] if storage_ops else []
    ) + tuple(Export(f"{root}.>", "stream") for root in spec.events) + tuple(
        [Export(wire.relayed_calls(pid), "service", singleton=True)] if spec.calls else []
    )

    data_dir = (
        "write" if Permission.file_system_write in grants
        else "read" if Permission.file_system_read in grants
        else "none"
    )
    network = ("nats", "http-egress-public") if Permission.http_requests in grants else ("nats",)
    res = spec.resources
    return SandboxPlan(
        id=pid,
        namespace=ns,
        account=account,
        core_imports=core_imports,
        platform_imports=platform_imports,
        platform_exports=platform_exports,
        event_roots=tuple(event_subjects),
        commands=commands,
        command_groups={word: group.route() for word, group in sorted(spec.command_groups.items())},
        exports=tuple(spec.exports),
        calls=tuple(spec.calls),
        limits=Limits(res.cpu_millicores, res.memory_bytes, res.pids_limit, res.disk_bytes),
        fence=Fence(code="read", data_dir=data_dir, network=network, denied_destinations=DENIED_DESTINATIONS),
        rates=RatePlan(
            messages_per_second=res.rate_limits.messages_per_second,
            burst=res.rate_limits.effective_burst,
            database_queries_per_second=res.rate_limits.database_queries_per_second,
            calls_per_second=res.rate_limits.calls_per_second,
        ),
        storage=StoragePlan(
            reads=Permission.database_read in grants,
            writes=Permission.database_write in grants,
            operations=tuple(op for op, _ in storage_ops),
        ),
        permissions=tuple(sorted(p.value for p in grants)),
    )


# -- the shared accounts -----------------------------------------------------

# What core offers every plugin (streams plugins with read_messages or
# observe_chat_and_events import).
CORE_EXPORTS = tuple(Export(s, "stream") for s in CHAT_IN_SUBJECTS)

# What the gateway republishes to core after its checks (platform -> core).
# Exports are public, so observers import the chat and event streams too.
PLATFORM_TO_CORE = (
    *(Export(s, "stream") for s in CHAT_OUT_SUBJECTS),
    Export(FLEET_EVENTS, "stream"),
    Export(wire.REPLIES, "stream"),
)


def core_account(plans: list[SandboxPlan]) -> AccountPlan:
    imports = [Import(PLATFORM, e.subject, "stream") for e in PLATFORM_TO_CORE]
    for plan in plans:
        imports += list(plan.core_imports)
        imports += [Import(PLATFORM, e.subject, "stream") for e in plan.platform_exports if e.kind == "stream"]
    # Core is trusted: its users may publish and subscribe to anything in their account.
    return AccountPlan(
        exports=CORE_EXPORTS,
        imports=tuple(imports),
        user=UserPermissions(publish=(">",), subscribe=(">",), max_responses=0),
        max_connections=-1, max_subscriptions=-1, max_payload=-1,
    )


def platform_account(plans: list[SandboxPlan]) -> AccountPlan:
    exports = list(PLATFORM_TO_CORE)
    imports: list[Import] = []
    for plan in plans:
        exports += list(plan.platform_exports)
        imports += list(plan.platform_imports)
    return AccountPlan(
        exports=tuple(exports),
        imports=tuple(imports),
        user=UserPermissions(publish=(">",), subscribe=(">",), max_responses=0),
        max_connections=-1, max_subscriptions=-1, max_payload=-1,
    )
