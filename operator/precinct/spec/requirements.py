"""A manifest's `dependencies`: the Python packages a plugin brings along.

Each entry is a PEP 508 requirement (`httpx>=0.27`, `markovify==0.9.4`),
parsed by `packaging`, the library pip itself uses. What is refused, and why:

* direct references (`pkg @ https://...`, local paths): the wheel index the
  operator names is the only source a plugin's dependencies may come from;
* the same project twice: which line would win is not obvious to a reader;
* more than MAX_DEPENDENCIES entries or entries over MAX_LENGTH characters.

Some projects are provided by the runner itself (RUNNER_PROVIDED): the
runner's own copies always win, so `plan()` sets them aside instead of
installing a second copy that would never be imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

MAX_DEPENDENCIES = 32
MAX_LENGTH = 200
# What the plugin runner's environment holds: a plugin always gets these.
RUNNER_PROVIDED = frozenset({"nats-py", "nkeys", "precinct-runner"})


def normalize(name: str) -> str:
    """PEP 503 project name: `Foo_Bar` and `foo-bar` are the same project."""
    return canonicalize_name(name)


def parse(entry: str) -> Requirement:
    """One requirement string, or ValueError naming what is wrong with it."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError("a dependency must be a non-empty requirement string such as 'httpx>=0.27'")
    if len(entry) > MAX_LENGTH:
        raise ValueError(f"{entry[:30]!r}... is {len(entry)} characters; at most {MAX_LENGTH}")
    try:
        req = Requirement(entry)
    except InvalidRequirement as exc:
        raise ValueError(f"{entry!r} is not a requirement such as 'httpx>=0.27': {exc}") from None
    if req.url:
        raise ValueError(f"{entry!r}: direct references (name @ url) are not allowed; dependencies come only "
                         "from the wheel index the operator configures")
    return req


def check(entries: list[str]) -> list[str]:
    """Every problem with a `dependencies` list, one message each (empty: fine)."""
    problems = []
    if len(entries) > MAX_DEPENDENCIES:
        return [f"{len(entries)} dependencies; a plugin may declare at most {MAX_DEPENDENCIES}"]
    seen: dict[str, str] = {}
    for entry in entries:
        try:
            name = normalize(parse(entry).name)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if name in seen:
            problems.append(f"{entry!r}: {name} is already listed as {seen[name]!r}")
        seen[name] = entry
    return problems


@dataclass(frozen=True)
class DependencyPlan:
    install: tuple[str, ...]     # requirement strings pip installs, as written
    provided: tuple[str, ...]    # entries the runner already provides (never installed)


def plan(entries: list[str]) -> DependencyPlan:
    """Split valid entries into what gets installed and what the runner provides."""
    install, provided = [], []
    for entry in entries:
        (provided if normalize(parse(entry).name) in RUNNER_PROVIDED else install).append(entry)
    return DependencyPlan(tuple(install), tuple(provided))


def describe(plugin_id: str, entries: list[str]) -> list[str]:
    """What `validate` and `scan` say about a plugin's dependencies, in words."""
    if not entries:
        return []
    p = plan(entries)
    lines = []
    if p.install:
        lines.append(f"{plugin_id}: will install {', '.join(p.install)} as wheels only (no build code runs), "
                     "from the operator's wheel index, into its own environment before it starts")
    if p.provided:
        lines.append(f"{plugin_id}: {', '.join(p.provided)} not installed: the runner provides its own copy, "
                     "which always wins")
    return lines
