"""Reading manifests and BotPlugin resources from disk, turning every kind of
bad input into `Problem`s (file, field path, message) instead of exceptions.

Untrusted input reaches this code (community bundles), so it refuses what no
manifest needs before parsing: large files, binary data, YAML aliases (the
"billion laughs" expansion) and pathological nesting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import ValidationError

from .identity import IdError, kubernetes_id
from ..wire.kubernetes import API_GROUP, API_VERSION, KIND
from .model import BotPluginSpec, Manifest, load_botplugin_spec, load_manifest
from .ownership import Plugin

MAX_MANIFEST_BYTES = 1 << 20
MANIFEST_NAMES = ("plugin.yaml", "plugin.yml")


@dataclass(frozen=True)
class Problem:
    file: str
    field: str
    message: str

    def __str__(self) -> str:
        # One problem, one line: hostile input must not forge extra lines.
        return f"{_one_line(self.file)}: {_one_line(self.field)}: {_one_line(self.message)}"


def _one_line(text: str) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


@dataclass(frozen=True)
class BotPluginResource:
    """A BotPlugin read from YAML: metadata plus the validated spec."""

    namespace: str
    name: str
    spec: BotPluginSpec

    @property
    def id(self) -> str:
        return kubernetes_id(self.namespace, self.name)


Loaded = Union[Manifest, BotPluginResource]


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases: manifests never need them and
    they let a small file expand into an enormous structure."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in manifests", event.start_mark
            )
        return super().compose_node(parent, index)


def parse_yaml(raw: bytes, label: str, limit: int = MAX_MANIFEST_BYTES) -> tuple[Any, list[Problem]]:
    """Bytes -> one YAML document, or problems saying why not."""
    doc = "(document)"
    if len(raw) > limit:
        return None, [Problem(label, doc, f"file is {len(raw):,} bytes; a manifest may be at most {limit:,} bytes")]
    if not raw.strip():
        return None, [Problem(label, doc, "file is empty; expected a YAML mapping with at least name and version")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(label, doc, f"not UTF-8 text (invalid byte at offset {exc.start}); is this a binary file?")]
    if "\x00" in text:
        return None, [Problem(label, doc, "contains NUL bytes; is this a binary file?")]
    try:
        docs = list(yaml.load_all(text, Loader=_NoAliasLoader))  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
        return None, [Problem(label, where, f"invalid YAML: {exc.problem or exc.context}")]
    except yaml.YAMLError as exc:
        return None, [Problem(label, doc, f"invalid YAML: {exc}")]
    except RecursionError:
        return None, [Problem(label, doc, "nested too deeply")]
    docs = [d for d in docs if d is not None]
    if not docs:
        return None, [Problem(label, doc, "file holds no YAML document")]
    if len(docs) > 1:
        return None, [Problem(label, doc, f"file holds {len(docs)} YAML documents; put one plugin in each file")]
    data = docs[0]
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
            type(data), type(data).__name__
        )
        return None, [Problem(label, doc, f"expected a mapping of manifest fields, got {kind}")]
    return data, []


def _loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, str) and not re.fullmatch(r"[A-Za-z0-9_-]+", item):
            item = repr(item)
        if isinstance(item, int) and parts:
            parts[-1] = f"{parts[-1]}[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts) or "(document)"


def _problems_from(exc: ValidationError, label: str, prefix: tuple[str, ...] = ()) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        # Pydantic reports which arm of a union failed ("int", "str"); people don't need that.
        loc = tuple(p for p in loc if p not in ("int", "float", "str", "function-after[check(), union[int,float,str]]"))
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            message = "unknown field (check its spelling; see docs/manifest.md)"
        elif err["type"] == "enum":
            message = f"{err.get('input')!r} is not a permission; expected one of {err['ctx']['expected']}"
        problems.append(Problem(label, _loc(prefix + loc), message))
    # One line per (field, message): union arms can repeat the same complaint.
    return list(dict.fromkeys(problems))


def validate_document(data: dict[str, Any], label: str) -> tuple[Loaded | None, list[Problem]]:
    """A parsed mapping -> a Manifest or a BotPlugin resource."""
    if "apiVersion" in data or "kind" in data:
        return _validate_resource(data, label)
    try:
        return load_manifest(data), []
    except ValidationError as exc:
        return None, _problems_from(exc, label)
    except RecursionError:
        return None, [Problem(label, "(document)", "nested too deeply")]


def _validate_resource(data: dict[str, Any], label: str) -> tuple[BotPluginResource | None, list[Problem]]:
    problems = []
    expected = f"{API_GROUP}/{API_VERSION}"
    if data.get("apiVersion") != expected:
        problems.append(Problem(label, "apiVersion", f"expected {expected!r}, got {data.get('apiVersion')!r}"))
    if data.get("kind") != KIND:
        problems.append(Problem(label, "kind", f"expected {KIND!r}, got {data.get('kind')!r}"))
    meta = data.get("metadata")
    name = namespace = None
    if not isinstance(meta, dict):
        problems.append(Problem(label, "metadata", "expected a mapping with name"))
    else:
        name, namespace = meta.get("name"), meta.get("namespace", "default")
        from .identity import TOKEN

        for field, value in (("metadata.name", name), ("metadata.namespace", namespace)):
            if not isinstance(value, str) or not TOKEN.fullmatch(value) or len(value) > 63:
                problems.append(Problem(label, field, f"{value!r} must be a DNS-1123 label (lowercase letters, digits, '-')"))
    spec = None
    if not isinstance(data.get("spec"), dict):
        problems.append(Problem(label, "spec", "expected a mapping"))
    else:
        try:
            spec = load_botplugin_spec(data["spec"])
        except ValidationError as exc:
            problems.extend(_problems_from(exc, label, ("spec",)))
        except RecursionError:
            problems.append(Problem(label, "spec", "nested too deeply"))
    if problems or spec is None:
        return None, problems
    return BotPluginResource(namespace=namespace, name=name, spec=spec), []


# One rule for `validate`, `up` and `pack`: a plugin's manifest is
# `plugin.yaml` or `plugin.yml` (never both); a folder given on its own without
# one is an error; a folder inside a plugins dir without one is not a plugin
# and is skipped with a warning (skipped_folders), never silently.
def find_manifest(folder: Path) -> Path | None:
    for name in MANIFEST_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def manifest_conflict(folder: Path) -> str | None:
    """A message when the folder holds both spellings of the manifest."""
    if all((folder / name).is_file() for name in MANIFEST_NAMES):
        return f"both {' and '.join(MANIFEST_NAMES)}: keep one"
    return None


def skipped_folders(plugins_dir: Path) -> list[Path]:
    """Folders in a plugins dir that hold no manifest, so are not plugins
    (hidden folders and __pycache__ are not considered)."""
    if not plugins_dir.is_dir():
        return []
    return sorted(p for p in plugins_dir.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name != "__pycache__" and find_manifest(p) is None)


SKIPPED_MESSAGE = "no plugin.yaml or plugin.yml: not a plugin, skipped"


def load_path(path: Path) -> tuple[Loaded | None, list[Problem]]:
    """Read and validate one manifest or BotPlugin file (or a plugin folder)."""
    label = str(path)
    if path.is_dir():
        found = find_manifest(path)
        if found is None:
            return None, [Problem(label, "(folder)", "no plugin.yaml or plugin.yml in this folder")]
        conflict = manifest_conflict(path)
        if conflict:
            return None, [Problem(label, "(folder)", conflict)]
        path, label = found, str(found)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        return None, [Problem(label, "(file)", f"cannot read: {exc.strerror or exc}")]
    data, problems = parse_yaml(raw, label)
    if problems:
        return None, problems
    return validate_document(data, label)


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files stay files; a folder with a plugin.yaml is one plugin; any other
    folder stands for each plugin folder inside it (like `precinct up DIR`)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir() and find_manifest(path) is None:
            children = sorted(p for p in path.iterdir() if p.is_dir() and find_manifest(p))
            out.extend(children or [path])
        else:
            out.append(path)
    return out


__all__ = ["Problem", "BotPluginResource", "Loaded", "load_path", "expand_paths", "parse_yaml",
           "validate_document", "find_manifest", "manifest_conflict", "skipped_folders", "SKIPPED_MESSAGE", "IdError"]


def as_plugin(loaded: Manifest | BotPluginResource, source: str = "") -> Plugin:
    """A loaded manifest or BotPlugin as the plugin the ownership rules and the compiler take."""
    if isinstance(loaded, Manifest):
        return Plugin(loaded.id, loaded.without_name(), source)
    return Plugin(loaded.id, loaded.spec, source)
