"""A set of plugins checked together: each valid on its own, then subject
ownership across them, then compiled to sandbox plans."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..spec.load import BotPluginResource, Problem, expand_paths, find_manifest, load_path
from ..spec.model import Manifest
from ..spec.ownership import Ownership, Plugin, resolve
from .sandbox import SandboxPlan, compile_plan


@dataclass
class FleetReport:
    plugins: list[Plugin] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    plans: list[SandboxPlan] = field(default_factory=list)
    ownership: Ownership | None = None

    def to_dict(self) -> dict:
        return {
            "valid": not self.problems,
            "plugins": [p.id for p in self.plugins],
            "problems": [{"file": p.file, "field": p.field, "message": p.message} for p in self.problems],
        }


def as_plugin(loaded: Manifest | BotPluginResource) -> Plugin:
    if isinstance(loaded, Manifest):
        return Plugin(loaded.id, loaded.without_name())
    return Plugin(loaded.id, loaded.spec)


def check_fleet(paths: list[Path]) -> FleetReport:
    report = FleetReport()
    sources: dict[str, str] = {}
    for path in expand_paths(paths):
        loaded, problems = load_path(path)
        report.problems.extend(problems)
        if loaded is not None:
            plugin = as_plugin(loaded)
            report.plugins.append(plugin)
            label = (find_manifest(path) or path) if path.is_dir() else path
            sources.setdefault(plugin.id, str(label))
    report.ownership = resolve(report.plugins)
    for rejection in report.ownership.rejected:
        report.problems.append(
            Problem(sources.get(rejection.plugin, rejection.plugin), "commands",
                    f"{rejection.reason}: {rejection.message}")
        )
    report.plans = [compile_plan(p) for p in report.ownership.accepted]
    return report
