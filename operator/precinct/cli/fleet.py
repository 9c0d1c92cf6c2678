"""A set of plugins checked together: each valid on its own, then subject
ownership across them, then compiled to sandbox plans."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..spec.load import SKIPPED_MESSAGE, Problem, as_plugin, expand_paths, find_manifest, load_path, skipped_folders
from ..spec.ownership import ID_CONFLICT, Ownership, Plugin, resolve
from ..plan.sandbox import SandboxPlan, compile_plan, observer_warning


@dataclass
class FleetReport:
    plugins: list[Plugin] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)    # a folder that is no plugin; a privileged grant
    plans: list[SandboxPlan] = field(default_factory=list)
    ownership: Ownership | None = None

    def to_dict(self) -> dict:
        return {
            "valid": not self.problems,
            "plugins": [p.id for p in self.plugins],
            "problems": [{"file": p.file, "field": p.field, "message": p.message} for p in self.problems],
            "warnings": [{"file": p.file, "field": p.field, "message": p.message} for p in self.warnings],
        }


def check_fleet(paths: list[Path]) -> FleetReport:
    """Validate each path, then the set: ids and claims in the order given
    (as `precinct up` grants them in folder-name order), then the fleet
    ceiling of the shared NATS accounts (natsauth/budget.py)."""
    from ..natsauth.budget import FLEET_FULL, fit

    report = FleetReport()
    for path in paths:
        # A plugins dir, read as `precinct up` reads it: its other folders are
        # warned about. (A folder with no plugin at all is an error below.)
        if path.is_dir() and find_manifest(path) is None and expand_paths([path]) != [path]:
            report.warnings += [Problem(str(f), "(folder)", SKIPPED_MESSAGE) for f in skipped_folders(path)]
    for path in expand_paths(paths):
        loaded, problems = load_path(path)
        report.problems.extend(problems)
        if loaded is not None:
            label = (find_manifest(path) or path) if path.is_dir() else path
            report.plugins.append(as_plugin(loaded, str(label)))
    report.ownership = resolve(report.plugins)
    for rejection in report.ownership.rejected:
        field = "name" if rejection.reason == ID_CONFLICT else "commands"
        report.problems.append(Problem(rejection.source or rejection.plugin, field,
                                       f"{rejection.reason}: {rejection.message}"))
    plans = [compile_plan(p) for p in report.ownership.accepted]
    fitted = fit(plans)
    sources = {p.id: p.source for p in report.ownership.accepted}
    for refusal in fitted.refused:
        report.problems.append(Problem(sources[refusal.plan.id] or refusal.plan.id, "(fleet)",
                                       f"{FLEET_FULL}: {refusal.message}"))
    report.plans = fitted.admitted
    for plan in report.plans:
        warning = observer_warning(plan)
        if warning:
            report.warnings.append(Problem(sources[plan.id] or plan.id, "permissions", warning))
    # Checked as a fleet (more than one plugin): a call nothing here exports is
    # no error (the callee may be installed later) but is answered `unavailable`.
    if len(report.plans) > 1:
        exported = {f"{plan.namespace}.{action}" for plan in report.plans for action in plan.exports}
        for plan in report.plans:
            for target in (t for t in plan.calls if t not in exported):
                report.warnings.append(Problem(sources[plan.id] or plan.id, "calls",
                                               f"no plugin here exports {target}: the gateway answers such a call "
                                               f"`unavailable` until a plugin with that subject_namespace does"))
    return report
