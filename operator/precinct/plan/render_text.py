"""A sandbox plan as a few lines a person can read (`precinct plan`)."""

from __future__ import annotations

from ..spec.quantity import format_bytes, format_millicores
from .sandbox import SandboxPlan, observer_warning


def command_lines(plan: SandboxPlan) -> list[str]:
    """Each chat route as `!word [sub] -> subject` (also the permission diff's commands)."""
    shown = [f"!{w} -> {s}" for w, s in sorted(plan.commands.items())]
    for word, group in sorted(plan.command_groups.items()):
        shown += [f"!{word} {sub} -> {s}" for sub, s in group["subcommands"].items()]
        shown += [f"!{word} <{key} words> -> {s}" for key, s in group["default"].items()]
    return shown


def describe_plan(plan: SandboxPlan) -> str:
    lim, rates = plan.limits, plan.rates
    warning = observer_warning(plan)
    lines = [
        f"plugin {plan.id} (subject namespace {plan.namespace})",
        *([f"  WARNING:     {warning}"] if warning else []),
        f"  permissions: {', '.join(plan.permissions) or '(none)'}",
        "  commands:    " + (", ".join(command_lines(plan)) or "(none)"),
        "  exports:     " + (", ".join(f"{plan.namespace}.{a}" for a in plan.exports) or "(none)")
        + (" (other plugins that declare these calls may ask it)" if plan.exports else ""),
        "  calls:       " + (", ".join(plan.calls) or "(none)")
        + (" (through the gateway, which names this plugin to the callee)" if plan.calls else ""),
        f"  limits:      cpu {format_millicores(lim.cpu_millicores)}, memory {format_bytes(lim.memory_bytes)}, "
        f"pids {lim.pids}, disk {format_bytes(lim.disk_bytes)}",
        f"  rates:       {rates.messages_per_second:g} msg/s (burst {rates.burst}), "
        f"{rates.database_queries_per_second:g} db queries/s"
        + (f", {rates.calls_per_second:g} calls/s" if plan.calls else ""),
        f"  may publish: {', '.join(plan.account.user.publish)}",
        f"  may receive: {', '.join(plan.account.user.subscribe)}",
        f"  storage:     {', '.join(plan.storage.operations) or '(none)'}",
        f"  filesystem:  code read-only; data dir {plan.fence.data_dir}",
        f"  network:     {', '.join(plan.fence.network)}",
    ]
    return "\n".join(lines) + "\n"
