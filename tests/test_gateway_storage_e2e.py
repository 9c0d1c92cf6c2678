"""Gateway, violations, the ladder and storage inside a real `precinct up`:
real NATS, real runners, real storage and gateway processes, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import nats

from runtime_support import FIXTURES, copy_plugin, pid_alive, precinct


def condition(status: dict, plugin: str, type_: str) -> dict | None:
    for c in status["plugins"].get(plugin, {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return None


async def connect(state: Path, account: str):
    """A NATS client as `core` or `platform` (the test is trusted)."""
    endpoint = json.loads((state / "endpoint.json").read_text())
    creds = endpoint["core_creds"] if account == "core" else str(state / "nats" / "creds" / "platform.creds")
    return await nats.connect(endpoint["nats"], user_credentials=creds, name=f"test-{account}")


async def in_thread(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_a_flood_is_rate_limited_reported_and_shown_in_status(fleet):
    start, _plugins, state = fleet
    up = start("unruly", "8ball")
    await in_thread(up.wait_running, "unruly", "eightball")
    core, platform = await connect(state, "core"), await connect(state, "platform")
    at_core, reported = [], []

    async def keep_chat(msg):
        at_core.append(msg)

    async def keep_event(msg):
        reported.append(msg)

    await core.subscribe("rosey.chat.*.send", cb=keep_chat)
    await platform.subscribe("precinct.violations.>", cb=keep_event)
    await core.flush()
    await platform.flush()
    try:
        said = await in_thread(up.say, "!flood 300")
        assert said.returncode == 0 and "sent 300" in said.stdout, said.stderr

        status = await in_thread(up.wait_for, lambda s: (condition(s, "unruly", "PermissionsCompliant") or {})
                                 .get("status") == "False", "PermissionsCompliant=False on unruly", 60)
        compliant = condition(status, "unruly", "PermissionsCompliant")
        assert compliant["reason"] == "RateLimited" and "rate_limit" in compliant["message"], compliant
        assert reported, "no violation event was published"
        event = json.loads(reported[0].data)
        assert reported[0].subject == "precinct.violations.unruly"
        assert (event["plugin"], event["kind"], event["subject"]) == ("unruly", "rate_limit", "rosey.chat.console.send")
        assert event["count"] >= 1 and event["first"] <= event["last"]
        # The core got some of the flood, never all of it, each line marked with its sender.
        assert 1 <= len(at_core) < 300
        assert all(m.headers and m.headers.get("Precinct-Plugin") == "unruly" for m in at_core)
        # One offence is a warning: the plugin keeps running; the well-behaved one is untouched.
        assert status["plugins"]["unruly"]["state"] == "Running"
        assert status["plugins"]["unruly"]["violations"]["last_action"] == "warn"
        assert condition(status, "eightball", "PermissionsCompliant")["status"] == "True"
        assert (await in_thread(up.say, "!8ball still fine?")).returncode == 0
    finally:
        await core.close()
        await platform.close()


async def test_publishing_an_ungranted_subject_is_a_permission_violation(fleet):
    start, _plugins, state = fleet
    up = start("unruly")
    await in_thread(up.wait_running, "unruly")
    platform = await connect(state, "platform")
    reported = []

    async def keep(msg):
        reported.append(json.loads(msg.data))

    await platform.subscribe("precinct.violations.unruly", cb=keep)
    await platform.flush()
    try:
        said = await in_thread(up.say, "!trespass")
        assert said.returncode == 0, said.stderr
        status = await in_thread(up.wait_for, lambda s: (condition(s, "unruly", "PermissionsCompliant") or {})
                                 .get("reason") == "PermissionViolation", "a PermissionViolation on unruly", 60)
        assert "rosey.platform.console.message" in condition(status, "unruly", "PermissionsCompliant")["message"]
        event = next(e for e in reported if e["kind"] == "permission")
        assert event["source"] == "nats-server-log" and event["subject"] == "rosey.platform.console.message"
    finally:
        await platform.close()


async def test_the_ladder_suspends_a_repeat_offender_until_resumed(fleet):
    start, _plugins, state = fleet
    ladder = ("--violation-cooldown", "3", "--violation-window", "600", "--suspend-after", "3")
    up = start("unruly", "8ball", extra=ladder)
    await in_thread(up.wait_running, "unruly", "eightball")

    async def offend_until(predicate, what: str, attempts: int = 12) -> dict:
        """Flood, then wait a while for the ladder's next step; repeat (a flood
        inside the cooldown joins the previous strike)."""
        for _ in range(attempts):
            status = await in_thread(up.status)
            if status and predicate(status):
                return status
            if status and status["plugins"]["unruly"]["state"] == "Running":
                await in_thread(up.say, "!flood 100")
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                status = await in_thread(up.status)
                if status and predicate(status):
                    return status
                await asyncio.sleep(0.5)
        raise AssertionError(f"the ladder never reached: {what}; last status {json.dumps(status)[:2000]}")

    def ladder_of(s):
        return s["plugins"]["unruly"]["violations"]

    warned = await offend_until(lambda s: ladder_of(s)["strikes"] >= 1, "a first strike")
    assert ladder_of(warned)["last_action"] == "warn"
    restarted = await offend_until(lambda s: ladder_of(s)["strikes"] >= 2, "a restart")
    assert ladder_of(restarted)["last_action"] == "restart"
    suspended = await offend_until(lambda s: s["plugins"]["unruly"]["state"] == "Suspended", "suspension")
    assert ladder_of(suspended)["suspended"] is True
    ready = condition(suspended, "unruly", "Ready")
    assert ready["status"] == "False" and ready["reason"] == "Suspended"
    assert "precinct plugin resume unruly" in ready["message"]
    assert condition(suspended, "unruly", "PermissionsCompliant")["status"] == "False"

    # It stays stopped: no backoff restart brings it back, commands find nobody.
    await asyncio.sleep(5)
    later = await in_thread(up.status)
    assert later["plugins"]["unruly"]["state"] == "Suspended" and later["plugins"]["unruly"]["pid"] is None
    gone = await in_thread(up.say, "!flood 1")
    assert gone.returncode == 1
    assert later["plugins"]["eightball"]["state"] == "Running"

    # ...even across a restart of `precinct up`.
    assert up.stop() == 0
    up = start(extra=ladder)
    status = await in_thread(up.wait_for, lambda s: s["plugins"].get("unruly", {}).get("state") == "Suspended"
                             and s["plugins"].get("eightball", {}).get("state") == "Running",
                             "unruly still suspended after a restart", 120)
    assert status["plugins"]["unruly"]["pid"] is None

    not_suspended = await in_thread(precinct, "plugin", "resume", "8ball", "--state-dir", str(state))
    assert not_suspended.returncode == 1 and "eightball" in not_suspended.stderr
    unknown = await in_thread(precinct, "plugin", "resume", "nobody", "--state-dir", str(state))
    assert unknown.returncode == 1 and "no plugin" in unknown.stderr

    resumed = await in_thread(precinct, "plugin", "resume", "unruly", "--state-dir", str(state))
    assert resumed.returncode == 0 and "resumed" in resumed.stdout, resumed.stderr
    status = await in_thread(up.wait_running, "unruly")
    assert ladder_of(status)["strikes"] == 0 and ladder_of(status)["suspended"] is False
    assert condition(status, "unruly", "PermissionsCompliant")["reason"] == "Resumed"
    answered = await in_thread(up.say, "!flood 1")
    assert answered.returncode == 0 and "sent 1" in answered.stdout


def _stored_chunks(db_path: Path) -> str:
    if not db_path.exists():
        return ""
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
            return " ".join(r[0] for r in db.execute("SELECT value FROM precinct_kv WHERE key LIKE 'chain.chunk.%'"))
    except sqlite3.Error:
        return ""


async def test_markov_learning_survives_a_crash_and_a_restart(fleet):
    start, plugins, state = fleet
    up = start("markov_plugin")
    await in_thread(up.wait_running, "markov-plugin")
    for line in ("the zebracorn gallops over quiet hills", "a zebracorn gallops under quiet stars"):
        assert (await in_thread(up.say, line)).returncode == 0
    answer = await in_thread(up.say, "!markov zebracorn")
    assert answer.returncode == 0 and "gallops" in answer.stdout, answer.stderr

    # Wait until it is in the plugin's own database file, then kill -9 the plugin.
    db_path = state / "storage" / "markov-plugin.db"
    deadline = time.monotonic() + 60
    while "zebracorn" not in _stored_chunks(db_path):
        assert time.monotonic() < deadline, "the chain never reached storage"
        await asyncio.sleep(0.5)
    old_pid = (await in_thread(up.status))["plugins"]["markov-plugin"]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    status = await in_thread(up.wait_for, lambda s: s["plugins"]["markov-plugin"]["state"] == "Running"
                             and s["plugins"]["markov-plugin"]["pid"] not in (None, old_pid),
                             "markov restarted after kill -9", 120)
    assert not pid_alive(old_pid) and status["plugins"]["markov-plugin"]["restarts"] >= 1
    answer = await in_thread(up.say, "!markov zebracorn")
    assert answer.returncode == 0 and "gallops" in answer.stdout, (answer.stdout, answer.stderr)

    # And across a full stop and start of `precinct up`.
    assert up.stop() == 0
    up = start()
    await in_thread(up.wait_running, "markov-plugin")
    answer = await in_thread(up.say, "!markov zebracorn")
    assert answer.returncode == 0 and "gallops" in answer.stdout, (answer.stdout, answer.stderr)


async def test_migrations_are_applied_before_the_plugin_starts(fleet):
    start, plugins, state = fleet
    copy_plugin(FIXTURES / "quotes", plugins)     # the fixture, not plugins/quotes (the calls example)
    up = start("quotes")
    # The plugin refuses to start without its migrations, so Running means the platform applied them.
    await in_thread(up.wait_running, "quotes")
    added = await in_thread(up.say, "!quote add to be or not to be")
    assert added.returncode == 0 and "saved" in added.stdout, added.stderr
    listed = await in_thread(up.say, "!quote")
    assert listed.returncode == 0 and "2 quotes" in listed.stdout and "to be or not" in listed.stdout, listed.stdout
    assert up.stop() == 0

    # A broken migration keeps the plugin from starting, with a clear reason.
    broken = plugins / "quotes" / "migrations" / "003_broken.sql"
    broken.write_text("-- UP\nALTER TABLE quotes ADD COLUMN;\n")
    up = start()
    status = await in_thread(up.wait_for, lambda s: s["plugins"].get("quotes", {}).get("last_exit") == "MigrationFailed",
                             "quotes refused with MigrationFailed", 120)
    quotes = status["plugins"]["quotes"]
    assert quotes["state"] != "Running" and quotes["pid"] is None
    assert any("003_broken.sql" in line for line in quotes["stderr_tail"]), quotes["stderr_tail"]
    ready = condition(status, "quotes", "Ready")
    assert ready["status"] == "False" and "003_broken.sql" in ready["message"]

    # Fixed (the file removed): the next attempt applies nothing new and the plugin starts, data intact.
    broken.unlink()
    await in_thread(up.wait_running, "quotes")
    listed = await in_thread(up.say, "!quote")
    assert listed.returncode == 0 and "2 quotes" in listed.stdout, listed.stdout
