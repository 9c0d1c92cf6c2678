"""Opt-in: Rosey's own plugins, unmodified, under a real `precinct up`.

Set PRECINCT_ROSEY_CHECKOUT to a local checkout of Rosey-Robot (the folder
holding `plugins/`). Each plugin folder is copied byte for byte next to its
manifest from docs/rosey-manifests/ and the chat commands its README
documents are said through the dispatcher. Without the variable every test
here skips and says why. Nothing from Rosey is part of this repository.

trivia lists httpx in its manifest's `dependencies`. Tests never reach a
remote index, so set PRECINCT_ROSEY_WHEELS to a folder holding httpx's wheels
(`pip download httpx --only-binary=:all: -d DIR`); without it trivia's
install fails, which is reported as an expected failure only when that is the
cause shown (so a new, different failure still fails).
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from runtime_support import Up

ROOT = Path(__file__).parents[1]
MANIFESTS = ROOT / "docs" / "rosey-manifests"
ENV = "PRECINCT_ROSEY_CHECKOUT"
WHEELS_ENV = "PRECINCT_ROSEY_WHEELS"
PLUGINS = ("dice-roller", "8ball", "trivia", "quote-db", "countdown", "inspector")
# countdown's own migration 002 adds recurrence_rule, which 001 already created.
COUNTDOWN_BUG = "ALTER TABLE countdowns ADD COLUMN recurrence_rule TEXT NULL;"


def checkout() -> Path:
    value = os.environ.get(ENV, "").strip()
    if not value:
        pytest.skip(f"{ENV} is not set: point it at a local checkout of Rosey-Robot to run its plugins")
    path = Path(value)
    missing = [p for p in PLUGINS if not (path / "plugins" / p).is_dir()]
    if missing:
        pytest.skip(f"{ENV}={value} has no plugins/{', plugins/'.join(missing)}")
    return path


def stage(src: Path, dest: Path) -> Path:
    """The plugin folder exactly as Rosey ships it, plus our manifest."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    assert not (dest / "plugin.yaml").exists(), f"{src} already has a plugin.yaml"
    shutil.copy(MANIFESTS / dest.name / "plugin.yaml", dest / "plugin.yaml")
    return dest


@pytest.fixture(scope="module")
def rosey_up(tmp_path_factory):
    rosey = checkout()
    base = tmp_path_factory.mktemp("rosey")
    plugins = base / "plugins"
    plugins.mkdir()
    for name in PLUGINS:
        stage(rosey / "plugins" / name, plugins / name)
    # countdown runs from a copy in which only its faulty migration line is removed
    fixed = plugins / "countdown" / "migrations" / "002_add_recurrence_alerts.sql"
    fixed.write_text(fixed.read_text().replace(COUNTDOWN_BUG + "\n", ""))
    (base / "state").mkdir()
    # The wheels for trivia's httpx, or an empty folder: never a remote index.
    wheels = os.environ.get(WHEELS_ENV, "").strip() or str(base / "no-wheels")
    Path(wheels).mkdir(exist_ok=True)
    up = Up(plugins, base / "state", "--wheel-index", wheels)
    try:
        up.wait_for(lambda s: all(n in s["plugins"] for n in PLUGINS), "every Rosey plugin known", timeout=240)
        yield up
    finally:
        up.stop()


def say(up: Up, line: str) -> tuple[int, str]:
    done = up.say(line, "--timeout", "15")
    return done.returncode, (done.stdout or done.stderr).strip().removeprefix("precinct: ")


def stderr_of(up: Up, plugin: str) -> str:
    status = up.status() or {"plugins": {}}
    return "\n".join(status["plugins"].get(plugin, {}).get("stderr_tail", []))


def assert_chat_text(text: str) -> None:
    assert text and not text.startswith("{") and "\\u" not in text, text


def test_dice_roller(rosey_up):
    rosey_up.wait_running("dice-roller")
    code, text = say(rosey_up, "!roll 2d6")
    assert code == 0 and re.search(r"= \d+", text), text
    code, text = say(rosey_up, "!flip")
    assert code == 0 and ("Heads" in text or "Tails" in text), text


def test_8ball(rosey_up):
    rosey_up.wait_running("8ball")
    code, text = say(rosey_up, "!8ball will the movie tonight be good?")
    assert code == 0 and "will the movie tonight be good?" in text, text
    assert_chat_text(text)


def test_quote_db_starts_migrates_registers_and_stays_running(rosey_up):
    rosey_up.wait_running("quote-db")
    rosey_up.wait_for(lambda s: "Schema registered successfully" in "\n".join(s["plugins"]["quote-db"]["stderr_tail"]),
                      "quote-db registered its schema", timeout=60)
    tail = stderr_of(rosey_up, "quote-db")
    assert "Schema version: 3" in tail, tail
    restarts = rosey_up.status()["plugins"]["quote-db"]["restarts"]
    rosey_up.wait_running("quote-db")
    assert rosey_up.status()["plugins"]["quote-db"]["restarts"] == restarts


def test_inspector_answers_its_commands(rosey_up):
    rosey_up.wait_running("inspector")
    for line in ("!inspect stats", "!inspect events", "!inspect pause", "!inspect resume"):
        code, text = say(rosey_up, line)
        assert code == 0, (line, text)
        assert_chat_text(text)
    code, text = say(rosey_up, "!inspect plugins")
    assert code == 3 and text == "Plugin manager not available", text


def test_inspector_with_the_observe_grant_records_chat_but_no_other_plugins_commands(tmp_path):
    """The operator's opt-in (docs/rosey-compat.md): the same inspector with
    observe_chat_and_events records the chat it observes, never dice-roller's
    command or reply, and its `>` subscription is no longer a violation."""
    rosey = checkout()
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("inspector", "dice-roller"):
        stage(rosey / "plugins" / name, plugins / name)
    manifest = plugins / "inspector" / "plugin.yaml"
    granted = manifest.read_text().replace("permissions: []", "permissions: [observe_chat_and_events]")
    assert "observe_chat_and_events" in granted
    manifest.write_text(granted)
    (tmp_path / "state").mkdir()
    up = Up(plugins, tmp_path / "state")
    try:
        up.wait_running("inspector", "dice-roller")
        assert "inspector is granted observe_chat_and_events: it reads every chat message" in up.output()
        code, text = say(up, "!roll 2d6")
        assert code == 0, text
        code, text = say(up, "!inspect events")
        assert code == 0, text
        # One "[hh:mm:ss.mmm] <subject> (<n>B)" line per recorded message.
        subjects = set(re.findall(r"^\[[\d:.]+\] (\S+) \(\d+B\)$", text, re.MULTILINE))
        assert "precinct.observe.rosey.platform.console.chatMsg" in subjects, text
        assert any(s.startswith("precinct.observe.rosey.event.dice") for s in subjects), text   # dice-roller's event
        # The rest is its own: its command, its health ping and its answer to it. Never dice-roller's
        # command or reply.
        own = ("precinct.observe.", "rosey.command.inspect.", "precinct.ping.inspector.", "_R_.")
        assert all(s.startswith(own) for s in subjects), text
        inspector = up.status()["plugins"]["inspector"]
        compliant = next(c for c in inspector["conditions"] if c["type"] == "PermissionsCompliant")
        assert compliant["status"] == "True", inspector
    finally:
        up.stop()


def test_countdown_with_its_migration_fixed(rosey_up):
    rosey_up.wait_running("countdown")
    code, text = say(rosey_up, "!countdown list")
    assert code == 0 and text.startswith("⏰"), text
    when = (datetime.now(timezone.utc) + timedelta(days=3)).strftime("%Y-%m-%d %H:%M")
    code, text = say(rosey_up, f"!countdown movie {when}")
    assert code == 0 and "Countdown 'movie' created" in text, text
    for line, expected in (("!countdown movie", "movie"), ("!countdown alerts movie 15,5", "15, 5"),
                           ("!countdown list", "movie"), ("!countdown delete movie", "deleted")):
        code, text = say(rosey_up, line)
        assert code == 0 and expected in text, (line, text)
        assert_chat_text(text)


def test_trivia_storage_backed_commands(rosey_up):
    status = rosey_up.wait_for(lambda s: s["plugins"]["trivia"]["state"] == "Running"
                               or s["plugins"]["trivia"].get("last_exit") == "DependenciesFailed",
                               "trivia running or its dependencies refused", timeout=600)
    if status["plugins"]["trivia"]["state"] != "Running":
        if not os.environ.get(WHEELS_ENV) and "httpx" in stderr_of(rosey_up, "trivia"):
            pytest.xfail(f"trivia's dependency httpx: set {WHEELS_ENV} to a folder with its wheels")
        pytest.fail(f"trivia is not running:\n{stderr_of(rosey_up, 'trivia')}")
    for line in ("!trivia stats", "!trivia lb", "!trivia stop"):
        code, text = say(rosey_up, line)
        assert code in (0, 3), (line, text)
        assert_chat_text(text)


def test_countdowns_own_migration_bug_is_reported_by_name(tmp_path):
    rosey = checkout()
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    stage(rosey / "plugins" / "countdown", plugins / "countdown")
    (tmp_path / "state").mkdir()
    up = Up(plugins, tmp_path / "state")
    try:
        status = up.wait_for(lambda s: s["plugins"].get("countdown", {}).get("last_exit") == "MigrationFailed",
                             "countdown's migration to fail", timeout=120)
        tail = "\n".join(status["plugins"]["countdown"]["stderr_tail"])
        assert "002_add_recurrence_alerts.sql: duplicate column name: recurrence_rule" in tail, tail
    finally:
        up.stop()
