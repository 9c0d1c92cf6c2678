"""The wire contract has one home (precinct.wire); the runner's small copy
(precinct_runner/wire.py, a separate distribution) must equal it, and every
PRECINCT_* variable the control plane reads is named there and documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from precinct import settings
from precinct.k8s.render import Settings, render, resource_from_manifest
from precinct.spec.load import load_path
from precinct.wire import environment as env
from precinct.wire import headers, subjects

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "runner"))
from precinct_runner import cli as runner_cli  # noqa: E402
from precinct_runner import wire as runner_wire  # noqa: E402


@pytest.mark.parametrize("plugin_id, instance", [("dice-roller", "a1b2"), ("x", "*")])
def test_the_runners_copy_equals_the_platforms(plugin_id, instance):
    assert runner_wire.ping(plugin_id, instance) == subjects.ping(plugin_id, instance)
    assert runner_wire.config(plugin_id, instance) == subjects.config(plugin_id, instance)
    assert runner_wire.queue_group(plugin_id) == subjects.queue_group(plugin_id)
    assert runner_wire.COMMAND_ROOT == subjects.COMMAND_ROOT
    assert runner_wire.call("quotes.lookup") == subjects.call("quotes.lookup")
    assert runner_wire.export(plugin_id, "lookup") == subjects.export(plugin_id, "lookup")
    assert (runner_wire.CALLER, runner_wire.CALLER_NAMESPACE) == (headers.CALLER, headers.CALLER_NAMESPACE)
    assert runner_wire.ENV_PREFIX == env.PREFIX
    assert runner_wire.OPTION_VARIABLES == env.RUNNER_OPTIONS


def test_every_runner_option_has_its_variable():
    """Each option the runner's --help names as [PRECINCT_X] is one of the copied names, and back."""
    named = set(re.findall(r"\[PRECINCT_([A-Z_]+)", runner_cli.build_parser().format_help().replace("\n", " ")))
    named |= set(re.findall(r"PRECINCT_([A-Z_]+) may hold", runner_cli.build_parser().format_help()))
    assert named == set(runner_wire.OPTION_VARIABLES)


def test_what_the_operator_sets_on_a_pod_is_what_the_runner_reads():
    manifest, problems = load_path(ROOT / "plugins" / "dice-roller")
    assert not problems
    objects = render(resource_from_manifest(manifest), Settings(), creds="x")
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    names = {e["name"] for c in pod["containers"] for e in c.get("env", [])}
    ours = {n.removeprefix(env.PREFIX) for n in names if n.startswith(env.PREFIX)}
    assert ours and ours <= set(runner_wire.OPTION_VARIABLES) | {"DATA_DIR"}, ours


def test_a_callees_exports_reach_its_runner_on_both_runtimes(monkeypatch, tmp_path):
    """Kubernetes sets PRECINCT_EXPORTS on the Pod; the single host passes --export (supervisor.py)."""
    manifest, problems = load_path(ROOT / "plugins" / "quotes")
    assert not problems
    objects = render(resource_from_manifest(manifest), Settings(), creds="x")
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    env_vars = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
    assert env_vars[env.PREFIX + "EXPORTS"] == '["lookup", "count"]'
    base = ["--plugin-dir", str(tmp_path), "--plugin-id", "quotes"]
    monkeypatch.setenv(env.PREFIX + "EXPORTS", env_vars[env.PREFIX + "EXPORTS"])
    assert runner_cli.resolve_options(base).exports == ["lookup", "count"]
    assert runner_cli.resolve_options([*base, "--export", "lookup"]).exports == ["lookup"]
    monkeypatch.setenv(env.PREFIX + "EXPORTS", '["a.b"]')
    with pytest.raises(runner_cli.UsageError, match="one NATS token"):
        runner_cli.resolve_options(base)


def test_every_setting_is_named_in_the_wire_module_and_documented():
    named = {v for k, v in vars(env).items() if k.isupper() and isinstance(v, str) and v.startswith(env.PREFIX)
             and v != env.PREFIX}
    read = {f.json_schema_extra["variable"] for model in settings.GROUPS.values() for f in model.model_fields.values()}
    assert read <= named and named - read == {env.DATA_DIR, env.NATS_FD, env.DATA_WAIT}   # set by the platform, read by plugins/the runner
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == settings.table(), "docs/configuration.md is stale: python -m precinct.settings > docs/configuration.md"


def test_a_bad_variable_is_named_before_anything_starts(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    done = subprocess.run([sys.executable, "-m", "precinct.cli", "up", str(plugins), "--state-dir", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PRECINCT_UID_BASE": "twelve"})
    assert done.returncode == 1 and "PRECINCT_UID_BASE" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    with pytest.raises(settings.SettingsError, match="PRECINCT_OPERATOR_METRICS_PORT.*65535"):
        settings.OperatorSettings.load(operator_metrics_port=70000)
