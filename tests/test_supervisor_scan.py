"""The supervisor's scan of the plugins dir, in process and without starting
anything: who gets each plugin id (running plugin, then the folder recorded
before a restart, then folder-name order), and that a plugin refused after
validation (fleet ceiling, a plan that cannot be compiled) is rejected alone.
End to end with a real `precinct up`: tests/attacks/test_identity.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from precinct.natsauth import budget
from precinct.runtime import supervisor as sup_module
from precinct.confine.launch import Confinement
from precinct.runtime.supervisor import Supervisor


def folder(plugins: Path, name: str, manifest: str) -> None:
    (plugins / name).mkdir(parents=True, exist_ok=True)
    (plugins / name / "plugin.yaml").write_text(manifest)
    (plugins / name / "plugin.py").write_text("class P:\n    pass\n")


def supervisor(tmp_path: Path) -> Supervisor:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return Supervisor(tmp_path / "plugins", state, confinement=Confinement())


def scan(sup: Supervisor) -> dict:
    """Scan as the supervisor does, treat the result as running, return status."""
    sup.entries = {e.plugin.id: e for e in sup._scan()}
    return asyncio.run(sup._op_status({}))["plugins"]


def ready(info: dict) -> dict:
    return next(c for c in info["conditions"] if c["type"] == "Ready")


def test_a_running_plugin_keeps_its_id_live_and_across_restarts(tmp_path):
    plugins = tmp_path / "plugins"
    folder(plugins, "vault", "name: vault\nversion: '1'\ncommands: {open: vault.open}\n")
    first = supervisor(tmp_path)
    assert set(scan(first)) == {"vault"}

    # Live: `Vault` sorts before `vault` but arrives second; vault keeps the id.
    folder(plugins, "Vault", "name: Vault\nversion: '6'\ncommands: {peek: vault.peek}\n")
    status = scan(first)
    assert status["vault"]["folder"].endswith("/vault") and "state" in status["vault"]
    intruder = status["vault@Vault"]
    assert intruder["state"] == "Rejected" and intruder["folder"] == "Vault" and intruder["id"] == "vault"
    assert ready(intruder)["reason"] == "IdConflict"
    assert "(from Vault)" in ready(intruder)["message"] and "(from vault)" in ready(intruder)["message"]
    assert first.routes == {"open": {"subject": "rosey.command.vault.open", "plugin": "vault"}}

    # Restart: nothing runs yet, folder-name order alone would pick `Vault`.
    second = supervisor(tmp_path)
    second.owners = second._read_owners()
    status = scan(second)
    assert status["vault"]["folder"].endswith("/vault") and ready(status["vault@Vault"])["reason"] == "IdConflict"

    # The owner's manifest broken for a while: the id stays reserved for its folder.
    third = supervisor(tmp_path)
    third.owners = third._read_owners()
    (plugins / "vault" / "plugin.yaml").write_text("name: vault\nversion: [broken\n")
    status = scan(third)
    assert "vault" not in third.entries
    assert ready(status["vault@Vault"])["reason"] == "IdConflict" and "invalid right now" in ready(status["vault@Vault"])["message"]
    assert status["vault"]["state"] == "Rejected" and ready(status["vault"])["reason"] == "InvalidManifest"


def test_up_warns_once_about_an_observer(tmp_path, caplog):
    """`precinct up` logs the observer warning when it starts the plugin, not
    on every later scan."""
    plugins = tmp_path / "plugins"
    folder(plugins, "watcher", "name: watcher\nversion: '1'\npermissions: [observe_chat_and_events]\n")
    folder(plugins, "quiet", "name: quiet\nversion: '1'\n")
    sup = supervisor(tmp_path)
    with caplog.at_level("WARNING", logger=sup_module.log.name):
        scan(sup)
        (plugins / "watcher" / "plugin.yaml").write_text(
            "name: watcher\nversion: '2'\npermissions: [observe_chat_and_events]\n")
        scan(sup)   # a new version, still an observer: already said
    said = [r.getMessage() for r in caplog.records if "observe_chat_and_events" in r.getMessage()]
    assert said == ["watcher is granted observe_chat_and_events: it reads every chat message and bot event in the "
                    "fleet (not commands, replies, storage or credentials). Grant it only to plugins you trust with "
                    "all chat."]


def test_without_a_recorded_owner_folder_name_order_decides(tmp_path):
    plugins = tmp_path / "plugins"
    folder(plugins, "my_bot", "name: my_bot\nversion: '1'\n")
    folder(plugins, "my-bot", "name: my-bot\nversion: '1'\n")
    status = scan(supervisor(tmp_path))
    assert status["my-bot"]["folder"].endswith("/my-bot")
    assert ready(status["my-bot@my_bot"])["reason"] == "IdConflict"


def test_plugins_past_the_fleet_ceiling_are_rejected_alone(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    for name in ("a", "b", "c"):
        folder(plugins, name, f"name: {name}\nversion: '1'\ncommands: {{{name}: {name}.go}}\n"
                              "permissions: [send_messages]\n")
    entries = supervisor(tmp_path)._scan()
    assert [e.plugin.id for e in entries] == ["a", "b", "c"]    # all fit the real ceiling
    # A ceiling that holds exactly two of them.
    monkeypatch.setattr(budget, "SHARED_JWT_LIMIT", max(budget.fit([e.plan for e in entries[:2]]).sizes.values()) + 10)
    status = scan(supervisor(tmp_path))
    assert {k for k, v in status.items() if v["state"] != "Rejected"} == {"a", "b"}
    assert ready(status["c"])["reason"] == "FleetFull" and "the fleet is full" in ready(status["c"])["message"]


def test_a_plan_that_cannot_be_compiled_rejects_only_that_plugin(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    folder(plugins, "good", "name: good\nversion: '1'\ncommands: {hi: good.hi}\n")
    folder(plugins, "odd", "name: odd\nversion: '1'\ncommands: {odd: odd.go}\n")
    real = sup_module.compile_plan

    def compile_plan(plugin):
        if plugin.id == "odd":
            raise ValueError("something this plugin's spec triggers")
        return real(plugin)

    monkeypatch.setattr(sup_module, "compile_plan", compile_plan)
    sup = supervisor(tmp_path)
    status = scan(sup)
    assert set(sup.entries) == {"good"} and sup.routes == {"hi": {"subject": "rosey.command.good.hi", "plugin": "good"}}
    assert ready(status["odd"])["reason"] == "InvalidPlan"
    assert "something this plugin's spec triggers" in ready(status["odd"])["message"]


@pytest.mark.parametrize("damaged", ["", "not json", "[1, 2]"])
def test_a_damaged_owners_file_falls_back_to_folder_order(tmp_path, damaged):
    sup = supervisor(tmp_path)
    (sup.state_dir / sup_module.OWNERS_NAME).write_text(damaged)
    assert sup._read_owners() == {}


def test_an_owner_refused_for_another_reason_keeps_its_id(tmp_path):
    plugins = tmp_path / "plugins"
    folder(plugins, "dice", "name: dice\nversion: '1'\ncommands: {roll: dice.roll}\n")
    folder(plugins, "vault", "name: vault\nversion: '1'\ncommands: {open: vault.open}\n")
    sup = supervisor(tmp_path)
    scan(sup)
    folder(plugins, "Vault", "name: Vault\nversion: '6'\n")
    # vault's new manifest claims dice's command: vault is refused, and must not lose its id to `Vault`.
    (plugins / "vault" / "plugin.yaml").write_text("name: vault\nversion: '2'\ncommands: {roll: vault.roll}\n")
    status = scan(sup)
    assert set(sup.entries) == {"dice"}
    assert ready(status["vault"])["reason"] == "CommandConflict"
    assert ready(status["vault@Vault"])["reason"] == "IdConflict"


HUP_COUNTER = """
import signal
n = 0
def hup(*_):
    global n
    n += 1
    print("hup", n, flush=True)
signal.signal(signal.SIGHUP, hup)
signal.signal(signal.SIGUSR1, lambda *_: print("usr1", n, flush=True))
print("ready", flush=True)
while True:
    signal.pause()
"""


def test_fleet_files_are_rewritten_and_services_woken_only_on_a_change(tmp_path):
    """publish_fleet runs on every reconcile, hot reload and rollback: an
    unchanged fleet must cost no write and no service reload (several MB
    re-parsed at 500 plugins), and a reader learns which ids changed."""
    import os
    import signal
    import subprocess
    import sys

    from precinct.natsauth.identity import Identity
    from precinct.runtime.slot import RestartPolicy, Slot
    from precinct.services.fleetfile import FleetFile

    plugins = tmp_path / "plugins"
    for name in ("alpha", "beta"):
        folder(plugins, name, f"name: {name}\nversion: '1'\ncommands: {{{name}: {name}.go}}\n")
    sup = supervisor(tmp_path)
    sup.identity = Identity(sup.state_dir / "nats")
    sup.entries = {e.plugin.id: e for e in sup._scan()}
    # A real process stands in for a trusted service: it prints each SIGHUP it gets.
    service = subprocess.Popen([sys.executable, "-c", HUP_COUNTER], stdout=subprocess.PIPE, text=True)
    try:
        assert service.stdout.readline().strip() == "ready"
        sup.services["gateway"] = Slot("gateway", None, None, RestartPolicy())
        sup.services["gateway"].status.pid = service.pid
        fleet_path = sup.state_dir / "fleet.json"

        sup.publish_fleet()
        assert service.stdout.readline().split() == ["hup", "1"]
        reader = FleetFile(fleet_path)
        assert reader.reload() and reader.take_changes() == {"alpha", "beta"}
        assert reader.plugins["alpha"]["account_key"] == sup.identity.account_key("plugin:alpha")
        assert reader.plugins["beta"]["plan"] == json.loads(json.dumps(sup.entries["beta"].plan.to_dict()))
        written = os.stat(fleet_path).st_ino

        sup.publish_fleet()                        # nothing changed
        os.kill(service.pid, signal.SIGUSR1)       # handled after any SIGHUP sent before it
        assert service.stdout.readline().split() == ["usr1", "1"], "an unchanged fleet woke the service"
        assert os.stat(fleet_path).st_ino == written, "an unchanged fleet.json was written again"

        folder(plugins, "gamma", "name: gamma\nversion: '1'\ncommands: {gamma: gamma.go}\n")
        sup.entries = {e.plugin.id: e for e in sup._scan()}   # alpha and beta keep their entries
        sup.publish_fleet()
        assert service.stdout.readline().split() == ["hup", "2"]
        assert reader.reload(force=True) and reader.take_changes() == {"gamma"}
        assert set(json.loads(fleet_path.read_text())) == {"alpha", "beta", "gamma"}
        assert set(json.loads((sup.state_dir / "routes.json").read_text())) == {"alpha", "beta", "gamma"}
    finally:
        service.kill()
        service.wait()
