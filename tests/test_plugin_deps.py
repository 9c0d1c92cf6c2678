"""A plugin's `dependencies`: wheels only, from the operator's index, into its
own cached environment, before it starts; the runner's nats-py always wins.

The index is served on loopback by the test (tests/wheel_support.py); no test
reaches a remote index.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from precinct.market import bundle
from precinct.market.errors import BundleError
from precinct.runtime.plugin_deps import MARKER, DependencyError, ensure, installed
from precinct.runtime.runner_env import ensure_runner_env
from precinct.spec import requirements as reqs
from runtime_support import Up, precinct, structured_answer
from wheel_support import WheelIndex, make_sdist, make_wheel

PLUGIN = '''
import json

import depcheck          # from the plugin's dependencies, imported before the plugin starts
import nats


class DepCheck:
    def __init__(self, nats_client, config=None):
        self.nc = nats_client

    async def initialize(self):
        await self.nc.subscribe("rosey.command.depcheck.where", cb=self.where)

    async def where(self, msg):
        await msg.respond(json.dumps({"success": True, "result": {
            "value": depcheck.VALUE, "dep_file": depcheck.__file__,
            "nats_file": nats.__file__, "nats_is_fake": hasattr(nats, "FAKE")}}).encode())
'''


@pytest.fixture(scope="module")
def runner_python() -> str:
    # The default location: the same environment `precinct up` uses, built once.
    return str(ensure_runner_env())


@pytest.fixture
def wheels(tmp_path) -> Path:
    folder = tmp_path / "index"
    # depcheck drags in a nats-py of its own, which must never replace the runner's.
    make_wheel(folder, "depcheck", "1.0", 'VALUE = "from-the-index"\n', requires=("nats-py>=99",))
    make_wheel(folder, "nats_py", "99.0", "", modules={"nats/__init__.py": "FAKE = True\n"})
    return folder


def write_plugin(folder: Path, name: str, dependencies: list[str], command: str = "where") -> Path:
    folder.mkdir(parents=True)
    (folder / "plugin.yaml").write_text(yaml.safe_dump({
        "name": name, "version": "1.0.0", "subject_namespace": "depcheck",
        "commands": {command: "depcheck.where"}, "dependencies": dependencies}))
    (folder / "plugin.py").write_text(PLUGIN)
    return folder


# -- the manifest field -------------------------------------------------------------


@pytest.mark.parametrize("entries, message", [
    (["depcheck @ https://example.invalid/depcheck.whl"], "direct references"),
    (["depcheck", "DepCheck>=1"], "depcheck is already listed"),
    (["no such thing!"], "is not a requirement"),
    ([f"pkg{i}" for i in range(reqs.MAX_DEPENDENCIES + 1)], f"at most {reqs.MAX_DEPENDENCIES}"),
])
def test_bad_dependency_lists_get_one_clear_message(entries, message):
    assert any(message in p for p in reqs.check(entries)), reqs.check(entries)


def test_runner_provided_projects_are_set_aside():
    split = reqs.plan(["httpx>=0.27", "nats_py>=2", "NKeys"])
    assert split.install == ("httpx>=0.27",) and split.provided == ("nats_py>=2", "NKeys")


def test_validate_names_what_will_be_installed(tmp_path):
    folder = write_plugin(tmp_path / "p", "depcheck", ["depcheck==1.0", "nats-py"])
    done = precinct("validate", str(folder))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "depcheck: will install depcheck==1.0 as wheels only" in done.stdout
    assert "nats-py not installed: the runner provides its own copy" in done.stdout
    report = json.loads(precinct("validate", "--json", str(folder)).stdout)
    assert report["dependencies"] == {"depcheck": {"install": ["depcheck==1.0"], "provided": ["nats-py"]}}
    bad = write_plugin(tmp_path / "q", "bad", ["x @ file:///tmp/x.whl"])
    done = precinct("validate", str(bad))
    assert done.returncode == 1 and "dependencies" in done.stdout and "direct references" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_scan_names_the_dependencies_it_does_not_scan(tmp_path):
    folder = write_plugin(tmp_path / "p", "depcheck", ["depcheck==1.0"])
    done = precinct("plugin", "scan", str(folder))
    assert "depcheck: will install depcheck==1.0 as wheels only" in done.stdout, done.stdout + done.stderr
    assert "dependencies are not scanned" in done.stdout


def test_pack_needs_a_wheel_for_each_manifest_dependency(tmp_path):
    folder = write_plugin(tmp_path / "p", "depcheck", ["depcheck==1.0", "nats-py"])
    with pytest.raises(BundleError, match="'depcheck' has no wheel"):
        bundle.pack(folder, tmp_path / "a.roseyplug")
    make_wheel(folder / "wheels", "depcheck", "1.0", "VALUE = 1\n")
    _out, info = bundle.pack(folder, tmp_path / "b.roseyplug")    # nats-py is the runner's: no wheel needed
    assert [w.name for w in info.wheels] == ["depcheck"]


# -- installing: wheels only, cached, the named index only -------------------------------


def test_wheels_are_installed_once_and_cached_by_hash(tmp_path, wheels, runner_python):
    state = tmp_path / "state"
    with WheelIndex(wheels) as index:
        site = ensure(["depcheck==1.0"], runner_python=runner_python, state_dir=state, index=index.url)
        asked = len(index.requests)
        assert asked > 0
        again = ensure(["depcheck==1.0"], runner_python=runner_python, state_dir=state, index=index.url)
        assert again == site and len(index.requests) == asked       # the cache answered, not the index
    assert set(installed(site)) == {"depcheck==1.0", "nats-py==99.0"}
    assert json.loads((site.parent / MARKER).read_text())["requirements"] == ["depcheck==1.0"]
    mode = stat.S_IMODE((site / "depcheck" / "__init__.py").stat().st_mode)
    assert mode & 0o004, f"plugin uids must be able to read their wheels (mode {mode:o})"
    assert ensure(["nats-py"], runner_python=runner_python, state_dir=state, index=index.url) is None


def test_an_sdist_is_never_built(tmp_path, runner_python):
    folder = tmp_path / "index"
    canary = tmp_path / "setup-py-ran"
    make_sdist(folder, "buildme", "1.0", canary)
    state = tmp_path / "state"
    with WheelIndex(folder) as index, pytest.raises(DependencyError, match="buildme") as err:
        ensure(["buildme"], runner_python=runner_python, state_dir=state, index=index.url)
    assert not canary.exists(), "an sdist's setup.py ran on the trusted side"
    assert err.value.reason == "DependenciesFailed"
    assert not [p for p in (state / "deps").iterdir() if not p.name.startswith(".")], "a failed install left files"


def test_the_named_index_is_the_only_source(tmp_path, wheels, runner_python, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    make_wheel(elsewhere, "onlyelsewhere", "1.0")
    monkeypatch.setenv("PIP_FIND_LINKS", str(elsewhere))      # the host's pip settings must not leak in
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "http://127.0.0.1:9/simple/")
    with WheelIndex(wheels) as index, pytest.raises(DependencyError, match="onlyelsewhere"):
        ensure(["onlyelsewhere"], runner_python=runner_python, state_dir=tmp_path / "s", index=index.url)
    # A folder of wheels works as an index too.
    site = ensure(["onlyelsewhere"], runner_python=runner_python, state_dir=tmp_path / "s", index=str(elsewhere))
    assert installed(site) == ["onlyelsewhere==1.0"]


# -- precinct up: installed before the plugin starts, imported after the runner's own ----


def test_up_installs_dependencies_and_the_runner_keeps_its_nats(tmp_path, wheels):
    plugins = tmp_path / "plugins"
    write_plugin(plugins / "depcheck", "depcheck", ["depcheck==1.0"])
    write_plugin(plugins / "missing", "missing", ["not-in-the-index"], command="missing")
    (plugins / "missing" / "plugin.yaml").write_text(yaml.safe_dump({
        "name": "missing", "version": "1.0.0", "commands": {"missing": "missing.run"},
        "dependencies": ["not-in-the-index"]}))
    state = tmp_path / "state"
    with WheelIndex(wheels) as index:
        up = Up(plugins, state, "--wheel-index", index.url)
        try:
            up.wait_running("depcheck", timeout=300)
            done = up.say("!where", "--json", "--timeout", "30")
            assert done.returncode == 0, done.stdout + done.stderr
            answer = structured_answer(done.stdout)
            assert answer["value"] == "from-the-index"
            assert not answer["nats_is_fake"], f"the plugin's nats-py replaced the runner's: {answer['nats_file']}"
            assert "/deps/" not in answer["nats_file"]
            if os.geteuid() == 0:      # confined: the wheels are a read-only view inside its sandbox
                assert answer["dep_file"].startswith("/run/precinct/sandbox/deps/"), answer
            status = up.wait_for(lambda s: s["plugins"].get("missing", {}).get("last_exit") == "DependenciesFailed",
                                 "the plugin whose dependency is not in the index to be refused", timeout=300)
            tail = "\n".join(status["plugins"]["missing"]["stderr_tail"])
            assert "not-in-the-index" in tail, tail
            assert status["plugins"]["depcheck"]["state"] == "Running"
        finally:
            up.stop()
