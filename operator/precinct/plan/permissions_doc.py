"""Generate docs/permissions.md from the sandbox plan itself.

Each row is computed by compiling a reference plugin with no permissions and
then with exactly one grant, and describing the difference. So the document
cannot claim a subject the compiler does not grant, and a compiler change that
widens a grant shows up as a diff in a committed file (a test compares them).

    python -m precinct.plan.permissions_doc > docs/permissions.md

The same rows, as `grant_rows()` and `may_do()`, are what the marketplace
page says a plugin may do and what the permission diff says a new grant adds
(plan/permission_diff.py): one source for the doc, the page and the CLI.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cache

from ..spec.model import Manifest, Permission, load_manifest
from ..spec.ownership import Plugin
from .sandbox import SandboxPlan, compile_plan

EXAMPLE = "example"


# Calls between plugins are declared pairs, not grants; their rows compile these.
CALLS = {"calls": ["quotes.lookup"]}


def _exports(name: str) -> dict:
    return {"exports": ["lookup"], "subject_namespace": name}


def _plan(*grants: Permission, name: str = EXAMPLE, **fields) -> SandboxPlan:
    manifest = load_manifest({"name": name, "version": "1", "commands": {"do": f"{name}.do"}, **fields,
                              "permissions": [g.value for g in grants]})
    return compile_plan(Plugin(manifest.id, manifest.without_name()))


def _code(items) -> str:
    return ", ".join(f"`{i}`" for i in items)


def _nats(plan: SandboxPlan, base: SandboxPlan | None) -> str:
    def new(now, before):
        return [s for s in now if before is None or s not in before]

    pub = new(plan.account.user.publish, base and base.account.user.publish)
    sub = new(plan.account.user.subscribe, base and base.account.user.subscribe)
    storage = new(plan.storage.operations, base and base.storage.operations)
    observed = new([f"{i.prefix}.{i.subject}" for i in plan.account.imports if i.prefix],
                   base and [f"{i.prefix}.{i.subject}" for i in base.account.imports if i.prefix])
    parts = []
    if storage:
        parts.append(f"storage operations {_code(storage)} on its own data, sent as {_code(pub)}")
    elif pub:
        parts.append(f"publish {_code(pub)}")
    if observed:
        parts.append(f"receive read-only copies of the fleet's chat and events: {_code(observed)}; "
                     f"may subscribe to {_code(sub)} in its own account, where nothing else of anyone "
                     f"else's is imported (never commands, replies, storage, credentials or `pm`); "
                     f"with `read_messages` too, chat in arrives once, unprefixed")
    elif sub:
        parts.append(f"receive {_code(sub)}")
    if base is not None and plan.account.user.max_responses != base.account.user.max_responses:
        parts.append(f"the server spends one of a request's {plan.account.user.max_responses} allowed answers "
                     f"on each delivery, and `>` receives its own requests a second time, so each is "
                     f"still answered once")
    if base is None:
        parts.append(
            f"each request is answered at most {plan.account.user.max_responses} time; "
            f"at most {plan.account.max_connections} connections, {plan.account.max_subscriptions} subscriptions, "
            f"{plan.account.max_payload // 1024} KiB per message"
        )
    return "; ".join(parts)


def _kernel(plan: SandboxPlan, base: SandboxPlan | None) -> str:
    fence = plan.fence
    if base is None:
        return ("read its code and the Python runtime; no network except its route to NATS; "
                "cannot see or signal other processes; CPU, memory and pids limits")
    parts = []
    if fence.data_dir != base.fence.data_dir:
        if fence.data_dir == "write":
            parts.append("read and write its private data dir, within `disk_limit`")
        else:
            parts.append("read its private data dir (the platform may pre-populate it)")
    if set(fence.network) - set(base.fence.network):
        parts.append(
            "outbound HTTP(S) (ports 80, 443) to public addresses only, never "
            + ", ".join(fence.denied_destinations)
            + "; single host: through an egress proxy in its network namespace; Kubernetes: NetworkPolicy"
        )
    return "; ".join(parts)


def _call_services(plan: SandboxPlan) -> str:
    if plan.calls:
        relayed = [i.subject for i in plan.account.imports if i.local and i.local.startswith("precinct.call.")]
        return (f"the server delivers the call to the platform as {_code(relayed)} (the caller's id written by the "
                "server); gateway: passes it on only if the callee (the plugin whose subject namespace is `quotes`) "
                "exports `lookup`; `calls_per_second` per caller; stamps the caller's id in `Precinct-Caller` "
                "(whatever the caller wrote there is dropped); refusals answered and reported")
    return ("gateway: the only party that can reach these subjects; each call arrives with the caller's id "
            "in `Precinct-Caller` and its subject namespace in `Precinct-Caller-Namespace`, never from the payload")


def _services(plan: SandboxPlan, base: SandboxPlan | None, grant: Permission | None) -> str:
    rates = plan.rates
    if base is None:
        return (f"gateway counts events against `messages_per_second` (token bucket, burst default one second's worth); "
                f"at most {rates.max_payload_replies_per_request} payload reply per request")
    if grant is Permission.send_messages:
        return "gateway rate limit (`messages_per_second`, `burst`); excess dropped and reported"
    if grant is Permission.database_read:
        return "storage: `database_queries_per_second`; identity from the account, never the payload"
    if grant is Permission.database_write:
        return "storage: same, plus `disk_limit`; migrations are applied by the platform, never the plugin"
    if grant is Permission.observe_chat_and_events:
        return ("**privileged**: `precinct validate`, `plan`, `render`, `up` and the operator warn for every plugin granted it; "
                "grant it only to plugins you trust with all chat")
    return ""


@dataclass(frozen=True)
class GrantRow:
    """One row of docs/permissions.md: what a grant adds, per enforcement point
    (cells use Markdown code spans; empty: nothing there)."""

    grant: Permission | None      # None: what every plugin gets
    label: str
    nats: str
    kernel: str
    services: str

    def words(self) -> str:
        """The row as one sentence-ish line (the permission diff, the marketplace page)."""
        return "; ".join(cell for cell in (self.nats, self.kernel, self.services) if cell)


@cache
def grant_rows(name: str = EXAMPLE) -> tuple[GrantRow, ...]:
    """Every row, computed from the compiler: the base plugin, then one per grant.
    `name`: the reference plugin's id and subject namespace (the subjects in the
    cells name it), so the page can show a plugin's rows with its own subjects."""
    base = _plan(name=name)
    rows = [GrantRow(None, "*(every plugin)*", _nats(base, None), _kernel(base, None), _services(base, None, None))]
    for grant in Permission:
        plan = _plan(grant, name=name)
        implied = sorted(set(plan.permissions) - {grant.value})
        label = f"`{grant.value}`" + (f" (implies {', '.join(f'`{i}`' for i in implied)})" if implied else "")
        # An implied grant's own row already lists what it adds; show only the increment.
        reference = _plan(*[Permission(i) for i in implied], name=name) if implied else base
        rows.append(GrantRow(grant, label, _nats(plan, reference), _kernel(plan, reference),
                             _services(plan, reference, grant)))
    for label, fields in (("`calls: [quotes.lookup]` (declared, not a grant)", CALLS),
                          ("`exports: [lookup]` (declared, not a grant)", _exports(name))):
        plan = _plan(name=name, **fields)
        rows.append(GrantRow(None, label, _nats(plan, base), "", _call_services(plan)))
    return tuple(rows)


def may_do(manifest: Manifest) -> list[GrantRow]:
    """What this plugin may do, in the doc's words: the every-plugin row
    computed from its own plan without grants (so it names its own commands
    and events), then the doc's row for each grant it holds (implied ones
    included), with its own subject namespace."""
    plan = compile_plan(Plugin(manifest.id, manifest.without_name()))
    bare = compile_plan(Plugin(manifest.id, manifest.model_copy(update={"permissions": []}).without_name()))
    base = GrantRow(None, "*(every plugin)*", _nats(bare, None), _kernel(bare, None), _services(bare, None, None))
    held = set(plan.permissions)
    return [base, *(row for row in grant_rows(manifest.namespace) if row.grant and row.grant.value in held)]


def render() -> str:
    rows = [(r.label, r.nats, r.kernel, r.services) for r in grant_rows()]
    lines = [
        "# Permissions: what each grant allows",
        "",
        "<!-- Generated by `python -m precinct.plan.permissions_doc > docs/permissions.md`",
        "     from the sandbox compiler; tests fail when this file and the compiler disagree. -->",
        "",
        "Every column is enforced outside the plugin's process: NATS subjects by the NATS server",
        "(the plugin's own account and user), the kernel column by cgroups, Landlock, seccomp and",
        "namespaces on a single host or by Pod security and NetworkPolicy on Kubernetes, and the",
        "last column by Precinct's trusted gateway and storage services. The example plugin is",
        "`example`, subject namespace `example`, claiming `!do` -> `rosey.command.example.do`.",
        "Storage subjects are mapped by the server to `precinct.storage.<plugin-id>.<operation>`,",
        "so a plugin can only ever reach its own data.",
        "",
        "| grant | NATS (server-enforced) | kernel / Kubernetes | trusted services |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(cell or '—' for cell in row)} |" for row in rows]
    lines += [
        "",
        "`read_messages` never includes `pm` (private messages stay with the core). No grant lets a",
        "plugin receive another plugin's commands, replies or storage requests, or publish under",
        "another plugin's namespace.",
        "",
        "`calls` and `exports` are how plugins ask each other for something; both sides declare it, and every call",
        "passes the gateway (see [secure-plugins.md](secure-plugins.md#calls-between-plugins)). A plugin calls by the",
        "callee's subject namespace (`quotes.lookup`), so a manifest means the same on one host and in Kubernetes.",
        "",
        "`observe_chat_and_events` is the one privileged grant: a plugin holding it reads every public",
        "chat event, every chat message plugins send and every `rosey.event.…` event plugins publish",
        "(Rosey's inspector wants this). It still never sees `pm`, commands, replies, storage or",
        "credentials, and cannot publish anything more. Manifests never get it by default; see",
        "[secure-plugins.md](secure-plugins.md#observing-the-whole-fleet).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
