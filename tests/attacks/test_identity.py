"""Attacks on identity and on the shared accounts (issue 14, items 1 and 2),
each by its own plugin folder in tests/attacks/identity/, against a real
`precinct up` (real nats-server, dispatcher, gateway, storage):

* `Vault/` says `name: Vault`, which folds to the id of the running `vault`.
  Before the fix the supervisor kept the *last* folder scanned for an id and
  started the intruder's code with vault's account, uid, credentials and
  storage. Its folder name sorts *before* `vault`, so after a restart
  folder-name order alone would hand it the id: ownership is recorded.
* `hugemanifest/` declares 256 commands with 130-character targets. Before
  the fix this pushed the core account's JWT past the server's max payload:
  the supervisor died and `precinct up` could not start again while the
  folder was there.

Each test asserts that the boundary holds (from outside), that the refusal
is visible in `precinct status --json`, and that the victim keeps answering.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from runtime_support import ROOT, Up, cleanup_cgroups  # noqa: E402

PLUGINS = ROOT / "tests" / "attacks" / "identity"


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.plugins, self.state = tmp / "plugins", tmp / "state"
        self.plugins.mkdir()
        self.up: Up | None = None
        self.cgroup_dirs: set[str] = set()
        self.service_pids: set[int] = set()

    def start(self) -> Up:
        self.up = Up(self.plugins, self.state)
        return self.up

    def stop(self) -> None:
        if self.up is not None:
            self.up.stop()
        for pid in self.service_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def add(self, name: str) -> None:
        shutil.copytree(PLUGINS / name, self.plugins / name, ignore=shutil.ignore_patterns("__pycache__"))

    def status(self) -> dict:
        status = self.up.status()
        assert status is not None, self.up.output()[-2000:]
        for plugin in status["plugins"].values():
            self.cgroup_dirs |= set((plugin.get("confinement") or {}).get("cgroups", {}).values())
        self.service_pids |= {s["pid"] for s in status["services"].values() if s.get("pid")}
        return status

    def open_vault(self) -> str:
        said = self.up.say("!open", "--timeout", "20")
        assert said.returncode == 0, (said.stdout, said.stderr)
        return said.stdout

    def account_key(self, plugin_id: str) -> str:
        return json.loads((self.state / "fleet.json").read_text())[plugin_id]["account_key"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = Fleet(tmp_path_factory.mktemp("identity"))
    fleet.add("vault")
    fleet.start().wait_running("vault", timeout=180)
    try:
        yield fleet
    finally:
        fleet.stop()
        cleanup_cgroups(fleet.cgroup_dirs)


def _rejected(status: dict, key: str) -> dict:
    info = status["plugins"][key]
    ready = next(c for c in info["conditions"] if c["type"] == "Ready")
    return {"state": info["state"], "reason": ready["reason"], "message": ready["message"], "pid": info.get("pid"),
            "folder": info.get("folder")}


def test_a_second_folder_whose_name_folds_to_a_running_id_is_rejected(fleet):
    before = fleet.status()["plugins"]["vault"]
    key = fleet.account_key("vault")
    fleet.add("Vault")
    status = fleet.up.wait_for(lambda s: "vault@Vault" in s["plugins"], "the intruder's own status entry", 60)
    intruder = _rejected(status, "vault@Vault")
    assert intruder["state"] == "Rejected" and intruder["reason"] == "IdConflict" and intruder["pid"] is None, intruder
    assert "(from Vault)" in intruder["message"] and "(from vault)" in intruder["message"], intruder
    assert intruder["folder"] == "Vault"
    # The owner is untouched: same process, same account, and it answers its command.
    vault = status["plugins"]["vault"]
    assert vault["state"] == "Running" and vault["pid"] == before["pid"] and vault["folder"].endswith("/vault")
    assert fleet.account_key("vault") == key
    answer = fleet.open_vault()
    assert "vault is closed" in answer and "intruder" not in answer, answer


def test_a_manifest_too_big_for_the_shared_accounts_is_rejected_alone(fleet):
    before = fleet.status()["plugins"]["vault"]
    fleet.add("hugemanifest")
    status = fleet.up.wait_for(lambda s: "hugemanifest" in s["plugins"], "hugemanifest in status", 60)
    huge = _rejected(status, "hugemanifest")
    assert huge["state"] == "Rejected" and huge["reason"] == "InvalidManifest", huge
    assert "256 commands; a plugin may declare at most 64" in huge["message"], huge
    assert fleet.up.proc.poll() is None, "the supervisor died"
    assert status["plugins"]["vault"]["pid"] == before["pid"]
    assert "vault is closed" in fleet.open_vault()


def test_after_a_restart_the_id_stays_with_its_owner(fleet):
    """`Vault` sorts before `vault`: folder-name order alone would now give it the id."""
    assert sorted(["vault", "Vault"]) == ["Vault", "vault"]
    key = fleet.account_key("vault")
    creds = fleet.state / "nats" / "creds" / "plugins" / "vault.creds"
    secret = creds.read_text()
    fleet.status()
    assert fleet.up.stop() == 0
    fleet.start().wait_running("vault", timeout=180)    # `precinct up` starts with both attack folders present
    status = fleet.up.wait_for(lambda s: {"vault@Vault", "hugemanifest"} <= set(s["plugins"]), "both refusals", 60)
    fleet.status()
    assert status["plugins"]["vault"]["folder"].endswith("/vault")
    assert _rejected(status, "vault@Vault")["reason"] == "IdConflict"
    assert _rejected(status, "hugemanifest")["reason"] == "InvalidManifest"
    assert fleet.account_key("vault") == key and creds.read_text() == secret
    assert "vault is closed" in fleet.open_vault()
