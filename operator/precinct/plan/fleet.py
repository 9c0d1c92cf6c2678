"""A set of plugins checked together: each valid on its own, then subject
ownership across them, then compiled to sandbox plans."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..spec.load import SKIPPED_MESSAGE, BotPluginResource, Problem, expand_paths, find_manifest, load_path, skipped_folders
from ..spec.model import Manifest
from ..spec.ownership import Ownership, Plugin, resolve
from .sandbox import SandboxPlan, compile_plan


@dataclass
class FleetReport:
    plugins: list[Plugin] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)    # e.g. a folder in a plugins dir that is no plugin
    plans: list[SandboxPlan] = field(default_factory=list)
    ownership: Ownership | None = None

    def to_dict(self) -> dict:
        return {
            "valid": not self.problems,
            "plugins": [p.id for p in self.plugins],
            "problems": [{"file": p.file, "field": p.field, "message": p.message} for p in self.problems],
            "warnings": [{"file": p.file, "field": p.field, "message": p.message} for p in self.warnings],
        }


def as_plugin(loaded: Manifest | BotPluginResource) -> Plugin:
    if isinstance(loaded, Manifest):
        return Plugin(loaded.id, loaded.without_name())
    return Plugin(loaded.id, loaded.spec)


def check_fleet(paths: list[Path]) -> FleetReport:
    report = FleetReport()
    sources: dict[str, str] = {}
    for path in paths:
        # A plugins dir, read as `precinct up` reads it: its other folders are
        # warned about. (A folder with no plugin at all is an error below.)
        if path.is_dir() and find_manifest(path) is None and expand_paths([path]) != [path]:
            report.warnings += [Problem(str(f), "(folder)", SKIPPED_MESSAGE) for f in skipped_folders(path)]
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
