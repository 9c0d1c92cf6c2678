"""The manifest contract: what validates, what does not, and what it means."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from precinct.spec import quantity
from precinct.spec.identity import canonical_id, kubernetes_id
from precinct.spec.load import load_path
from precinct.spec.model import Manifest, Permission, load_botplugin_spec, load_manifest

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
