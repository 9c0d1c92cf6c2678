"""`precinct validate`: one line per problem, exit 1, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from precinct.cli import app

ROOT = Path(__file__).parents[1]
runner = CliRunner()


def run(*args: str):
    result = runner.invoke(app, ["validate", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def write(tmp_path: Path, content: bytes | str, name: str = "plugin.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_examples_are_valid():
    code, out = run(str(ROOT / "plugins"))
    assert code == 0, out
    assert "dice-roller" in out and "markov-plugin" in out


BAD = {
    "empty": (b"", "(document): file is empty"),
    "list": (b"- a\n- b\n", "(document): expected a mapping of manifest fields, got a list"),
    "binary": (bytes(range(256)) * 4, "not UTF-8 text"),
    "huge": (b"name: x\n" + b"# pad\n" * (2 * 1024 * 1024), "a manifest may be at most"),
    "unknown permission": (b"name: x\nversion: '1'\npermissions: [root_access]\n",
                           "permissions[0]: 'root_access' is not a permission"),
    "negative limit": (b"name: x\nversion: '1'\nresources: {cpu_limit: -1}\n",
                       "resources.cpu_limit: cpu_limit must be greater than zero"),
    "lots of memory": (b"name: x\nversion: '1'\nresources: {memory_limit: lots}\n",
                       "resources.memory_limit: expected a Kubernetes quantity"),
    "absurd memory": (b"name: x\nversion: '1'\nresources: {memory_limit: 99999999999Ti}\n",
                      "resources.memory_limit: memory_limit must be at most 1Ti, got '99999999999Ti'"),
    "absurd disk": (b"name: x\nversion: '1'\nresources: {disk_limit: 2Ti}\n",
                    "resources.disk_limit: disk_limit must be at most 1Ti, got '2Ti'"),
    "schema": (b"name: x\nversion: '1'\nconfig: {max: 50}\nconfig_schema: {properties: {max: {maximum: 20}}}\n",
               "config.max: 50 is greater than the maximum of 20"),
    "missing version": (b"name: x\n", "version: Field required"),
    "bad yaml": (b"name: [x\n", "invalid YAML"),
    "alias bomb": (b"a: &a [1,1,1]\nb: &b [*a,*a,*a]\nname: x\n", "aliases"),
    "typo": (b"name: x\nversion: '1'\npermisions: []\n", "permisions: unknown field"),
    "bad name": (b"name: 'my plugin!'\nversion: '1'\n", "name: 'my plugin!' cannot become a plugin id"),
    "bad command": (b"name: x\nversion: '1'\ncommands: {roll: roll}\n", "must be '<namespace>.<action>'"),
    "deep": (b"name: x\nversion: '1'\nconfig: " + b"[" * 5000 + b"]" * 5000 + b"\n", ""),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_one_clear_line(tmp_path, case):
    content, expected = BAD[case]
    path = write(tmp_path, content)
    code, out = run(str(path))
    assert code == 1, out
    assert "Traceback" not in out
    assert expected in out
    for line in out.strip().splitlines():
        assert line.startswith(f"{path}: "), line


def test_command_conflict_is_rejected_for_the_second_claimant(tmp_path):
    a = tmp_path / "a-dice"; a.mkdir()
    b = tmp_path / "b-dice"; b.mkdir()
    write(a, "name: a-dice\nversion: '1'\ncommands: {roll: dice.roll}\n")
    write(b, "name: b-dice\nversion: '1'\ncommands: {roll: dice2.roll}\n")
    code, out = run(str(tmp_path))
    assert code == 1
    assert "b-dice/plugin.yaml: commands: CommandConflict: chat word !roll belongs to plugin 'a-dice'" in out
    assert "a-dice/plugin.yaml" not in out


def test_names_that_fold_to_one_id_are_refused_naming_both_folders(tmp_path):
    for folder, name in (("vault", "vault"), ("Vault", "Vault"), ("vault-copy", "VAULT")):
        (tmp_path / folder).mkdir()
        write(tmp_path / folder, f"name: {name}\nversion: '1'\n")
    code, out = run(str(tmp_path))   # folder-name order, as `precinct up` on a fresh state dir
    assert code == 1
    lines = out.strip().splitlines()
    assert len(lines) == 2, out
    assert lines[0].startswith(f"{tmp_path}/vault/plugin.yaml: name: IdConflict: plugin id 'vault'")
    assert f"already belongs to the plugin (from {tmp_path}/Vault/plugin.yaml)" in lines[0]
    assert lines[1].startswith(f"{tmp_path}/vault-copy/plugin.yaml: name: IdConflict")


def test_fleet_past_the_ceiling_is_refused_per_plugin(tmp_path):
    """A plugin at the manifest bounds (64 commands, long namespaces and actions)
    adds about 22 KB to the core account's JWT: the ceiling refuses the ones that
    do not fit, each on its own line, and admits the rest."""
    for n in range(40):
        folder = tmp_path / f"big{n:02d}"
        folder.mkdir()
        commands = "".join(f"  w{n}x{i}: b{n:02d}{'n' * 58}{i % 4}.{'a' * 62}{i:02d}\n" for i in range(64))
        write(folder, f"name: big{n:02d}\nversion: '1'\ncommands:\n{commands}")
    code, out = run(str(tmp_path))
    assert code == 1
    refused = [line for line in out.splitlines() if "FleetFull" in line]
    assert 0 < len(refused) < 40 and len(refused) == len(out.strip().splitlines()), out[-2000:]
    assert refused[0].startswith(f"{tmp_path}/big") and "(fleet): FleetFull: the fleet is full" in refused[0]
    assert "core account's JWT would be" in refused[0] and "over the limit of 786,432" in refused[0]
    assert refused[-1].startswith(f"{tmp_path}/big39/")
def test_observe_grant_is_valid_but_warned_about_loudly(tmp_path):
    watcher = tmp_path / "watcher"; watcher.mkdir()
    write(watcher, "name: watcher\nversion: '1'\npermissions: [observe_chat_and_events]\n")
    quiet = tmp_path / "quiet"; quiet.mkdir()
    write(quiet, "name: quiet\nversion: '1'\npermissions: [read_messages]\n")
    code, out = run(str(tmp_path))
    assert code == 0, out
    assert "2 plugin(s) valid" in out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {watcher / 'plugin.yaml'}: permissions: watcher is granted observe_chat_and_events: it reads "
        "every chat message and bot event in the fleet (not commands, replies, storage or credentials). "
        "Grant it only to plugins you trust with all chat."
    ], out
    report = json.loads(runner.invoke(app, ["validate", "--json", str(tmp_path)]).output)
    assert [(w["file"], w["field"]) for w in report["warnings"]] == [(str(watcher / "plugin.yaml"), "permissions")]
    # `precinct plan` says it too, in the plugin's own block.
    plan = runner.invoke(app, ["plan", str(watcher)])
    assert plan.exit_code == 0 and "WARNING:     watcher is granted observe_chat_and_events" in plan.output


def test_a_call_nothing_in_the_fleet_exports_is_warned_about(tmp_path):
    """validate and plan, given several plugins, name a call no plugin among them
    exports (no error: the callee may be installed later); the example pair is clean."""
    asker = tmp_path / "asker"; asker.mkdir()
    write(asker, "name: asker\nversion: '1'\ncalls: [quotes.lookup, quotes.missing]\n")
    for name in ("quotes", "inspire"):
        shutil.copytree(ROOT / "plugins" / name, tmp_path / name)
    code, out = run(str(tmp_path))
    assert code == 0, out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {asker / 'plugin.yaml'}: calls: no plugin here exports quotes.missing: the gateway "
                        "answers such a call `unavailable` until a plugin with that subject_namespace does"], out
    plan = runner.invoke(app, ["plan", str(tmp_path)])
    assert plan.exit_code == 0 and "no plugin here exports quotes.missing" in plan.output
    assert "calls:       quotes.lookup, quotes.missing" in plan.output
    assert "exports:     quotes.lookup, quotes.count" in plan.output


def test_plugin_yml_folders_without_a_manifest_and_both_spellings_follow_one_rule(tmp_path):
    """validate, up and pack agree: plugin.yml is a manifest like plugin.yaml;
    a folder in a plugins dir without either is warned about, never silently
    skipped; a folder with both is refused."""
    from precinct.market import bundle

    yml = tmp_path / "yml"; yml.mkdir()
    write(yml, "name: yml\nversion: '1'\ncommands: {hi: yml.hi}\n", "plugin.yml")
    (yml / "plugin.py").write_text("class P:\n    async def initialize(self): pass\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / ".hidden").mkdir()
    code, out = run(str(tmp_path))
    assert code == 0, out
    assert "1 plugin(s) valid: yml" in out
    assert f"warning: {tmp_path / 'notes'}: (folder): no plugin.yaml or plugin.yml: not a plugin, skipped" in out
    assert ".hidden" not in out
    report = json.loads(runner.invoke(app, ["validate", "--json", str(tmp_path)]).output)
    assert [w["file"] for w in report["warnings"]] == [str(tmp_path / "notes")] and report["valid"] is True

    packed, info = bundle.pack(yml, tmp_path / "yml.roseyplug")
    assert info.id == "yml"
    import zipfile
    names = zipfile.ZipFile(packed).namelist()
    assert "plugin.yaml" in names and "plugin.yml" not in names

    write(yml, "name: yml\nversion: '1'\n", "plugin.yaml")
    code, out = run(str(tmp_path))
    assert code == 1 and f"{yml}: (folder): both plugin.yaml and plugin.yml: keep one" in out, out
    with pytest.raises(bundle.BundleError, match="both plugin.yaml and plugin.yml"):
        bundle.pack(yml, tmp_path / "again.roseyplug")


def test_json_report(tmp_path):
    path = write(tmp_path, "name: x\nversion: '1'\nresources: {pids_limit: 0}\n")
    result = runner.invoke(app, ["validate", "--json", str(path)])
    report = json.loads(result.output)
    assert result.exit_code == 1 and report["valid"] is False
    assert report["problems"][0]["field"] == "resources.pids_limit"


def test_the_installed_command_never_prints_a_traceback(tmp_path):
    path = write(tmp_path, b"\xff\xfe\x00garbage")
    proc = subprocess.run([sys.executable, "-m", "precinct.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "not UTF-8 text" in proc.stdout


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
documents = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=5), max_leaves=20)
FIELDS = ["name", "version", "author", "permissions", "resources", "commands", "command_groups", "events", "config",
          "config_schema", "subject_namespace", "entrypoint"]
manifest_like = st.dictionaries(st.sampled_from(FIELDS), documents, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(documents, manifest_like))
def test_random_documents_never_crash(tmp_path, doc):
    path = write(tmp_path, yaml.safe_dump(doc))
    code, out = run(str(path))
    assert code in (0, 1)
    assert "Traceback" not in out
    if code == 1:
        assert all(line.startswith(f"{path}: ") for line in out.strip().splitlines()), out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_random_bytes_never_crash(tmp_path, raw):
    path = write(tmp_path, raw)
    code, out = run(str(path))
    assert code in (0, 1) and "Traceback" not in out
