"""The manifest contract: what validates, what does not, and what it means."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from precinct.spec import quantity
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from precinct.spec import model
from precinct.spec.identity import K8S_HASH_DIGITS, canonical_id, kubernetes_id
from precinct.spec.load import load_path
from precinct.spec.model import BotPluginSpec, Manifest, Permission, load_botplugin_spec, load_manifest

FIXTURES = Path(__file__).parent / "fixtures"


def test_seed_example_validates_as_written():
    manifest, problems = load_path(FIXTURES / "seed-plugin.yaml")
    assert problems == []
    assert isinstance(manifest, Manifest)
    assert manifest.id == "markov-plugin"
    assert manifest.resources.memory_bytes == 100 * 10**6
    assert manifest.resources.cpu_millicores == 250
    assert manifest.resources.rate_limits.messages_per_second == 5
    assert manifest.entrypoint is None and manifest.commands == {}


@pytest.mark.parametrize(
    "text, expected",
    [("100M", 100 * 10**6), ("100Mi", 100 * 2**20), ("1Gi", 2**30), ("1.5G", 1_500_000_000),
     ("1e3", 1000), (2048, 2048), ("128974848", 128974848), ("0.5Ki", 512)],
)
def test_memory_quantities_follow_kubernetes(text, expected):
    assert quantity.to_bytes(text) == expected


@pytest.mark.parametrize("text, millicores", [(0.25, 250), ("250m", 250), (1, 1000), ("1.5", 1500), ("0.0001", 1)])
def test_cpu_quantities_follow_kubernetes(text, millicores):
    assert quantity.to_millicores(text) == millicores


@pytest.mark.parametrize("bad", ["lots", "10 MB", "1Mb", "", "--1", True, None, [1], "1e999"])
def test_bad_quantities_are_refused(bad):
    with pytest.raises(quantity.QuantityError):
        quantity.parse_quantity(bad)


def test_defaults_are_documented_values():
    m = load_manifest({"name": "x", "version": "1"})
    r = m.resources
    assert (r.cpu_millicores, r.memory_bytes, r.pids_limit, r.disk_bytes) == (500, 256 * 2**20, 64, 64 * 2**20)
    assert r.rate_limits.messages_per_second == 10 and r.rate_limits.database_queries_per_second == 10
    assert r.rate_limits.effective_burst == 10
    assert m.permissions == [] and m.config == {}
    doc = (Path(__file__).parents[1] / "docs" / "manifest.md").read_text()
    for default in ("500m", "256Mi", "64", "64Mi", "one second's worth"):
        assert default in doc


def test_ids():
    assert canonical_id("markov_plugin") == "markov-plugin"
    assert canonical_id("Dice_Roller") == "dice-roller"
    assert kubernetes_id("bots", "dice") == "bots-dice"
    long = kubernetes_id("n" * 40, "p" * 40)
    assert len(long) <= 63 and long.startswith("n" * 10)
    assert long != kubernetes_id("n" * 40, "p" * 39 + "q")


def test_kubernetes_ids_cannot_collide_across_namespaces():
    # `a-b/c` and `a/b-c` were both `a-b-c`: one account, storage and creds for two plugins.
    assert kubernetes_id("a-b", "c") != kubernetes_id("a", "b-c")
    assert kubernetes_id("a", "b-c") == "a-b-c"                      # readable where unambiguous
    hashed = kubernetes_id("a-b", "c")
    assert hashed.startswith("a-b-c-") and len(hashed.rsplit("-", 1)[1]) == K8S_HASH_DIGITS
    # A name made to look like someone's hashed id is hashed itself, so it cannot land on it.
    lookalike = hashed.split("-", 1)[1]                               # "b-c-<digits>"
    assert kubernetes_id("a", lookalike) != hashed
    for ns, name in (("a-b", "c"), ("a", lookalike), ("n" * 63, "p" * 63)):
        assert canonical_id(kubernetes_id(ns, name)) == kubernetes_id(ns, name)   # still a DNS-1123 label


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


@given(st.lists(st.tuples(LABEL, LABEL), min_size=2, max_size=30, unique=True))
def test_kubernetes_ids_are_injective(pairs):
    ids = [kubernetes_id(ns, name) for ns, name in pairs]
    assert len(set(ids)) == len(ids), list(zip(pairs, ids))


@pytest.mark.parametrize("field, value", [
    ("name", "vault\n"), ("version", "1.0.0\n"), ("subject_namespace", "vault\n"), ("events", ["trivia\n"]),
    ("commands", {"roll\n": "dice.roll"}), ("commands", {"roll": "dice\n.roll"}), ("commands", {"roll": "dice.roll\n"}),
    ("entrypoint", "plugin:Dice\n"), ("calls", ["quotes\n.lookup"]), ("calls", ["quotes.lookup\n"]),
])
def test_patterns_match_whole_strings(field, value):
    """`re.match` lets `$` match before a trailing newline; every check is whole-string."""
    with pytest.raises(ValidationError):
        load_manifest({"name": "x", "version": "1", field: value})


def _refusal(**fields) -> str:
    with pytest.raises(ValidationError) as exc:
        load_manifest({"name": "x", "version": "1", **fields})
    return str(exc.value)


def test_every_field_that_reaches_a_jwt_subject_or_file_is_bounded():
    assert "at most 64" in _refusal(commands={f"c{i}": f"x.a{i}" for i in range(model.MAX_COMMANDS + 1)})
    assert "is 65 characters; at most 64" in _refusal(commands={"go": "x." + "a" * 65})
    assert "at most 63" in _refusal(commands={"go": "n" * 64 + ".go"})
    assert "at most 63" in _refusal(subject_namespace="n" * 64)
    assert "5 namespaces" in _refusal(commands={f"c{i}": f"ns{i}.go" for i in range(5)})
    assert "at most 8" in _refusal(events=[f"e{i}" for i in range(9)])
    assert "config is 65,5" in _refusal(config={"blob": "x" * 65_536})
    assert "config_schema is" in _refusal(config_schema={"description": "x" * 65_536})
    # At the bounds, everything still validates.
    load_manifest({"name": "x", "version": "1", "events": [f"e{i}" for i in range(8)], "config": {"b": "x" * 60_000},
                   "commands": {f"c{i}": f"ns{i % 4}." + "a" * 62 + f"{i:02d}" for i in range(64)}})


def test_calls_name_a_namespace_and_an_action_and_exports_an_action():
    m = load_manifest({"name": "x", "version": "1", "subject_namespace": "x", "exports": ["lookup", "add_quote"],
                       "calls": ["quotes.lookup"],
                       "resources": {"rate_limits": {"calls_per_second": 0.5}}})
    assert m.exports == ["lookup", "add_quote"] and m.calls == ["quotes.lookup"]
    assert m.resources.rate_limits.calls_per_second == 0.5
    assert load_manifest({"name": "x", "version": "1"}).resources.rate_limits.calls_per_second == 5
    assert "not '<namespace>.<action>'" in _refusal(subject_namespace="x", exports=["quotes.lookup"])
    assert "exports need a subject_namespace" in _refusal(exports=["lookup"])
    assert "must be '<namespace>.<action>'" in _refusal(calls=["lookup"])
    assert "reserved for the platform" in _refusal(calls=["precinct.stats"])
    assert "listed twice" in _refusal(calls=["a.b", "a.b"]) and "listed twice" in _refusal(subject_namespace="x", exports=["b", "b"])
    assert "at most 16" in _refusal(calls=[f"ns.a{i}" for i in range(model.MAX_CALLS + 1)])
    assert "at most 16" in _refusal(subject_namespace="x", exports=[f"a{i}" for i in range(model.MAX_EXPORTS + 1)])
    assert "greater than 0" in _refusal(resources={"rate_limits": {"calls_per_second": 0}})
    spec = load_botplugin_spec({"version": "1", "image": "r/x@sha256:" + "0" * 64, "calls": ["quotes.lookup"],
                                "subjectNamespace": "x", "exports": ["lookup"], "resources": {"rateLimits": {"callsPerSecond": 2}}})
    assert spec.calls == ["quotes.lookup"] and spec.resources.rate_limits.calls_per_second == 2


def _unbounded(schema: dict, defs: dict, path: str) -> list[str]:
    """Every string needs maxLength (or an enum), every list maxItems, every map maxProperties."""
    if "$ref" in schema:
        return _unbounded(defs[schema["$ref"].rsplit("/", 1)[1]], defs, path)
    found = []
    for option in schema.get("anyOf", []):
        found += _unbounded(option, defs, path)
    kind = schema.get("type")
    if kind == "string" and "maxLength" not in schema and "enum" not in schema:
        found.append(path)
    if kind == "array":
        found += [path] if "maxItems" not in schema else []
        found += _unbounded(schema.get("items", {}), defs, path + "[]")
    if kind == "object":
        if schema.get("additionalProperties") and "maxProperties" not in schema:
            found.append(path)
        for name, sub in schema.get("properties", {}).items():
            found += _unbounded(sub, defs, f"{path}.{name}")
        if isinstance(schema.get("additionalProperties"), dict):
            found += _unbounded(schema["additionalProperties"], defs, path + ".*")
    return found


# Free-form JSON: bounded by their size as JSON (MAX_CONFIG_BYTES, MAX_CONFIG_SCHEMA_BYTES);
# quantities: int-or-string, the parser refuses strings over 64 characters.
SIZE_CHECKED = {".config", ".config_schema", ".resources.cpu_limit", ".resources.memory_limit", ".resources.disk_limit"}


@pytest.mark.parametrize("cls", [Manifest, BotPluginSpec])
def test_new_fields_get_bounds_too(cls):
    schema = cls.model_json_schema(by_alias=False)
    missing = [p for p in _unbounded(schema, schema.get("$defs", {}), "") if p not in SIZE_CHECKED]
    assert not missing, f"manifest fields without a bound (docs/manifest.md#bounds): {missing}"


def test_write_implies_read():
    m = load_manifest({"name": "x", "version": "1", "permissions": ["database_write", "file_system_write"]})
    assert Permission.database_read in m.granted and Permission.file_system_read in m.granted


def test_custom_resource_spec_is_camel_case_only():
    spec = load_botplugin_spec({
        "version": "1.0.0", "subjectNamespace": "dice", "commands": {"roll": "dice.roll"},
        "resources": {"cpuLimit": "250m", "memoryLimit": "64Mi", "rateLimits": {"messagesPerSecond": 3}},
        "bundle": {"name": "dice-roller", "version": "1.0.0"},
    })
    assert spec.subject_namespace == "dice" and spec.resources.rate_limits.messages_per_second == 3
    with pytest.raises(Exception, match="subject_namespace"):
        load_botplugin_spec({"version": "1", "subject_namespace": "dice", "bundle": {"name": "d", "version": "1"}})
    with pytest.raises(Exception, match="exactly one of image"):
        load_botplugin_spec({"version": "1"})
    with pytest.raises(Exception, match="pattern"):
        load_botplugin_spec({"version": "1", "image": "ghcr.io/x/dice:latest"})


def test_manifest_rejects_camel_case():
    with pytest.raises(Exception, match="subjectNamespace"):
        load_manifest({"name": "x", "version": "1", "subjectNamespace": "dice"})


@pytest.mark.parametrize("token", ["rosey", "precinct", "Dice", "a.b", "-x", "x_y", ">", "*"])
def test_reserved_and_invalid_namespaces_are_refused(token):
    with pytest.raises(Exception):
        load_manifest({"name": "x", "version": "1", "subject_namespace": token})
