"""Rosey's chat syntax: one chat word with subcommands, aliases and a default
action chosen by the number of words (`command_groups` in a manifest), how
the dispatcher routes it, `!help`, and how answers are rendered for chat.

The pure parts are tested directly; the last tests run a real `precinct up`
with fixtures in the shapes of Rosey's countdown and trivia."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from precinct.plan.sandbox import compile_plan
from precinct.services.dispatcher import choose, describe, format_answer, help_text, readable
from precinct.spec.model import load_botplugin_spec, load_manifest
from precinct.spec.ownership import COMMAND_CONFLICT, Plugin, resolve

COUNTDOWN = {
    "subcommands": {"list": "countdown.list", "ls": "countdown.list", "alerts": "countdown.alerts",
                    "delete": "countdown.delete"},
    "default": {"1": "countdown.check", "2+": "countdown.create"},
    "aliases": ["cd"],
}


def manifest(**fields):
    return load_manifest({"name": "countdown", "version": "1", **fields})


def plugin(name: str, **fields) -> Plugin:
    m = load_manifest({"name": name, "version": "1", **fields})
    return Plugin(m.id, m.without_name())


def errors_of(**fields) -> str:
    with pytest.raises(ValidationError) as info:
        manifest(**fields)
    return str(info.value)


# -- the manifest field ----------------------------------------------------------------


def test_command_group_in_both_spellings_claims_every_subject():
    snake = manifest(command_groups={"countdown": COUNTDOWN})
    camel = load_botplugin_spec({"version": "1", "bundle": {"name": "countdown", "version": "1"},
                                 "commandGroups": {"countdown": COUNTDOWN}})
    assert snake.command_groups == camel.command_groups
    assert snake.all_command_subjects() == [f"rosey.command.countdown.{a}"
                                            for a in ("alerts", "check", "create", "delete", "list")]
    plan = compile_plan(Plugin(snake.id, snake.without_name()))
    assert plan.command_subjects() == snake.all_command_subjects()
    exported = {e.subject for e in plan.account.exports if e.kind == "service"}
    assert set(snake.all_command_subjects()) <= exported
    assert {i.subject for i in plan.core_imports} == set(snake.all_command_subjects())
    assert plan.command_groups["countdown"]["default"] == {"1": "rosey.command.countdown.check",
                                                           "2+": "rosey.command.countdown.create"}


def test_plain_commands_keep_working_next_to_a_group():
    m = manifest(commands={"a": "trivia.answer"},
                 command_groups={"trivia": {"subcommands": {"start": "trivia.start", "answer": "trivia.answer"}}})
    assert m.chat_routes()["a"] == {"subject": "rosey.command.trivia.answer"}
    assert m.all_command_subjects() == ["rosey.command.trivia.answer", "rosey.command.trivia.start"]


@pytest.mark.parametrize("fields, message", [
    ({"command_groups": {"countdown": {}}}, "needs subcommands, a default action, or both"),
    ({"command_groups": {"countdown": {"subcommands": {"List": "countdown.list"}}}},
     "subcommand 'List' must be 1-32 lowercase letters"),
    ({"command_groups": {"countdown": {"subcommands": {"list": "countdown"}}}},
     "list: 'countdown' must be '<namespace>.<action>'"),
    ({"command_groups": {"countdown": {"subcommands": {"list": "rosey.list"}}}}, "'rosey' is reserved"),
    ({"command_groups": {"countdown": {"default": {"1": "c.check", "0+": "c.create"}}}},
     "'0+' and '1' both match 1 word(s)"),
    ({"command_groups": {"countdown": {"default": {"many": "c.create"}}}}, "must be a number of words like '1' or '2+'"),
    ({"command_groups": {"countdown": {"default": {"17": "c.create"}}}}, "at most 16 words"),
    ({"command_groups": {"countdown": {"default": {"1": "c.check"}, "aliases": ["cd", "cd"]}}}, "listed twice"),
    ({"commands": {"cd": "c.x"}, "command_groups": {"countdown": {"default": {"1": "c.check"}, "aliases": ["cd"]}}},
     "!cd appears in both commands and command_groups.countdown.aliases"),
    ({"commands": {"countdown": "c.x"}, "command_groups": {"countdown": {"default": {"1": "c.check"}}}},
     "!countdown appears in both commands and command_groups.countdown"),
    ({"commands": {"help": "c.help"}}, "'help' is reserved"),
    ({"command_groups": {"help": {"default": {"0": "c.help"}}}}, "'help' is reserved"),
    ({"command_groups": {"countdown": {"subcommands": {f"s{i}": "c.x" for i in range(33)}}}},
     "at most 32 items"),
    ({"command_groups": {"countdown": {"default": {"1": "c.x"}, "description": "x" * 201}}}, "at most 200 characters"),
    ({"command_groups": {"countdown": {"subcommands": {"list": "c." + "x" * 130}}}}, "at most 128 characters"),
    ({"command_groups": {"countdown\n": {"default": {"1": "c.x"}}}}, "chat word 'countdown\\n' must be"),
    ({"command_groups": {"countdown": {"default": {"1\n": "c.x"}}}}, "must be a number of words"),
    ({"command_groups": {f"g{i}": {"default": {"1": "c.x"}} for i in range(17)}}, "at most 16 items"),
    ({"command_groups": {f"g{i}": {"subcommands": {f"s{j}": f"c.a{i}-{j}" for j in range(9)}} for i in range(8)}},
     "72 distinct command subjects across commands and command_groups; at most 64"),
])
def test_bad_command_groups_are_refused_with_a_clear_message(fields, message):
    assert message in errors_of(**fields)


def test_a_groups_words_and_subjects_are_owned_like_plain_words():
    first = plugin("countdown", command_groups={"countdown": COUNTDOWN})
    by_alias = plugin("other", commands={"cd": "other.cd"})
    by_subject = plugin("third", command_groups={"clock": {"default": {"0": "countdown.list"}}})
    result = resolve([first, by_alias, by_subject])
    assert [p.id for p in result.accepted] == ["countdown"]
    rejected = {r.plugin: r for r in result.rejected}
    assert rejected["other"].reason == COMMAND_CONFLICT and "chat word !cd belongs to plugin 'countdown'" in rejected["other"].message
    assert "command subject rosey.command.countdown.list belongs to plugin 'countdown'" in rejected["third"].message
    routes = result.routes()
    assert routes["countdown"]["plugin"] == routes["cd"]["plugin"] == "countdown"
    assert routes["cd"]["alias_of"] == "countdown"


def test_rosey_manifests_in_docs_validate_and_render_every_subject_for_kubernetes():
    """docs/rosey-manifests: all six validate together, and the Kubernetes
    runner is told every command subject of countdown's group."""
    from pathlib import Path

    from typer.testing import CliRunner

    from precinct.cli import app

    manifests = Path(__file__).parents[1] / "docs" / "rosey-manifests"
    cli = CliRunner()
    checked = cli.invoke(app, ["validate", str(manifests)])
    assert checked.exit_code == 0, checked.output
    assert "6 plugin(s) valid: 8ball, countdown, dice-roller, inspector, quote-db, trivia" in checked.output
    rendered = cli.invoke(app, ["render", str(manifests / "countdown"), "--json"])
    assert rendered.exit_code == 0, rendered.output
    deployment = next(o for o in json.loads(rendered.output) if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for c in deployment["spec"]["template"]["spec"]["containers"] for e in c["env"]}
    assert json.loads(env["PRECINCT_COMMANDS"]) == [f"rosey.command.countdown.{a}" for a in
                                                    ("alerts", "check", "create", "delete", "list", "pause", "resume")]


# -- routing ---------------------------------------------------------------------------


ROUTE = {"plugin": "countdown", **manifest(command_groups={"countdown": COUNTDOWN}).chat_routes()["countdown"]}


@pytest.mark.parametrize("args, action, rest", [
    ("list", "list", ""),
    ("LS", "list", ""),
    ("alerts movie 15,5", "alerts", "movie 15,5"),
    ("movie", "check", "movie"),
    ("movie 2026-12-01 20:00", "create", "movie 2026-12-01 20:00"),
    ("friday_movie every friday 19:00", "create", "friday_movie every friday 19:00"),
])
def test_countdown_lines_reach_the_action_its_readme_documents(args, action, rest):
    assert choose(ROUTE, args) == (f"rosey.command.countdown.{action}", rest)


def test_no_fitting_action_is_none_and_plain_words_pass_everything():
    assert choose(ROUTE, "") is None
    assert choose({"subject": "rosey.command.dice.roll"}, "2d6 + 1") == ("rosey.command.dice.roll", "2d6 + 1")


def test_help_lists_words_subcommands_and_aliases():
    table = {"countdown": ROUTE, "cd": {**ROUTE, "alias_of": "countdown"},
             "roll": {"plugin": "dice", "subject": "rosey.command.dice.roll"}}
    listing = help_text(table)
    assert listing.startswith("Commands: ")
    assert "!countdown/!cd (alerts, delete, list|ls, <1 word>, <2 or more words>)" in listing
    assert "!roll" in listing
    assert help_text(table, "cd") == "!cd alerts, delete, list|ls, <1 word>, <2 or more words> (same as !countdown)"
    assert help_text(table, "!nope") == "no plugin handles !nope"
    assert describe("roll", table["roll"]) == "!roll"
    assert help_text({}) == "no commands are available right now"


# -- rendering -------------------------------------------------------------------------


def answer(body) -> tuple[bool, str]:
    return format_answer(json.dumps(body).encode())


@pytest.mark.parametrize("body, expected", [
    ({"success": True, "result": {"formatted": "🎲 [4, 3] = 7", "message": "not this", "total": 7}}, (True, "🎲 [4, 3] = 7")),
    ({"success": True, "result": {"message": "⏰ Countdown 'movie' created!", "remaining": "6 days"}},
     (True, "⏰ Countdown 'movie' created!")),
    ({"success": True, "result": "⏰ 'movie' — 6 days remaining"}, (True, "⏰ 'movie' — 6 days remaining")),
    ({"success": False, "error": "⏰ No countdown named 'x'"}, (False, "⏰ No countdown named 'x'")),
    ({"success": False, "error": {"code": "NOT_FOUND", "message": "no such quote"}}, (False, "no such quote")),
    ({"success": False}, (False, "the plugin reported an error")),
    ({"success": True, "result": {"correct": True, "user": "alice", "points": 12, "time_taken": 3.2}},
     (True, "correct: yes, user: alice, points: 12, time taken: 3.2")),
    ({"success": True, "result": {"name": "movie", "alerts": [15, 5], "icon": "⏰"}},
     (True, "name: movie, alerts: (15, 5), icon: ⏰")),
    ({"success": True, "result": [{"name": "a", "n": 1}, {"name": "b", "n": 2}]}, (True, "name: a, n: 1; name: b, n: 2")),
    ({"success": True}, (True, "done")),
    ({"success": True, "result": None}, (True, "done")),
])
def test_answers_read_like_chat(body, expected):
    assert answer(body) == expected


def test_emoji_escapes_never_reach_chat_and_long_results_are_shortened():
    raw = b'{"success": true, "result": {"stats": {"games": 3, "badge": "\\ud83c\\udfc6"}}}'
    ok, text = format_answer(raw)
    assert ok and text == "stats: (games: 3, badge: 🏆)" and "\\u" not in text
    ok, text = answer({"success": True, "result": {"rows": list(range(1000))}})
    assert ok and len(text) <= 500 and text.endswith("…") and "{" not in text


def test_readable_never_prints_json_brackets_for_nested_values():
    text = readable({"a": {"b": {"c": {"d": 1}}}, "e": [], "f": {}})
    assert "{" not in text and "[" not in text
    assert text == "a: (b: (c: (…))), e: nothing, f: nothing"


def test_not_json_is_a_clear_error():
    assert format_answer(b"\xff not json") == (False, "the plugin answered with something that is not JSON")


# -- through the real dispatcher ---------------------------------------------------------


def test_group_commands_help_and_rendering_through_precinct_up(fleet):
    start, _plugins, _state = fleet
    (_plugins / "notes").mkdir()          # not a plugin: `up` says so once, as `validate` does
    up = start("rosey-timers", "rosey-quiz", "dice-roller")
    up.wait_running("rosey-timers", "rosey-quiz", "dice-roller")

    def said(line: str, code: int = 0) -> str:
        done = up.say(line)
        assert done.returncode == code, (line, done.stdout, done.stderr)
        return (done.stdout if code == 0 else done.stderr).strip()

    # countdown's syntax: default actions by word count, subcommands, an alias of the word and of a subcommand
    assert said("!timer movie 2026-12-24 20:00") == "⏰ Countdown 'movie' created for 2026-12-24 20:00"
    assert said("!timer movie") == "⏰ 'movie' is at 2026-12-24 20:00"
    assert said("!timer alerts movie 15,5") == "name: movie, alerts: (15, 5), icon: ⏰"
    as_json = up.say("!timer alerts movie 15,5", "--json")
    outcome = json.loads(as_json.stdout)          # scripts still get the plugin's structured reply
    assert outcome["reply"] == {"success": True, "result": {"name": "movie", "alerts": [15, 5], "icon": "⏰"}}
    assert outcome["subject"] == "rosey.command.timers.alerts" and outcome["plugin"] == "rosey-timers"
    assert said("!cd ls") == "⏰ Active countdowns: movie"
    assert said("!timer delete movie") == "⏰ Countdown 'movie' deleted."
    assert said("!timer delete movie", 3) == "precinct: ⏰ No countdown named 'movie'"
    usage = said("!timer", 3)
    assert usage == "precinct: usage: !timer alerts, delete, list|ls, <1 word>, <2 or more words>"

    # trivia's syntax: a group and a plain word of the same plugin
    assert said("!quiz start 5") == "🎯 Quiz starting! 5 questions."
    assert said("!a B") == "correct: yes, user: console, answer: B"
    assert said("!quiz stop") == "⏹️ Quiz stopped by console."

    listing = said("!help")
    for shown in ("!a", "!quiz (answer, start, stop)", "!roll", "!flip",
                  "!timer/!cd (alerts, delete, list|ls, <1 word>, <2 or more words>)"):
        assert shown in listing, listing
    assert said("!help timer").endswith("— Countdowns in this channel.")
    rolled = said("!roll 2d6")
    assert re.search(r"\d", rolled) and "{" not in rolled, rolled

    # `precinct plugin list` reads the states from this running supervisor
    from runtime_support import precinct

    listed = precinct("plugin", "list", "--plugins-dir", str(_plugins), "--state-dir", str(_state), "--json")
    assert listed.returncode == 0, listed.stderr
    states = {row["id"]: (row["state"], row["source"]) for row in json.loads(listed.stdout)}
    assert states == {pid: ("Running", "local folder") for pid in ("rosey-timers", "rosey-quiz", "dice-roller")}
    assert up.output().count(f"{_plugins / 'notes'}: no plugin.yaml or plugin.yml: not a plugin, skipped") == 1


def test_command_namespaces_are_bounded_across_commands_and_groups():
    """The namespace cap (each namespace is an export in the shared accounts)
    counts group targets too, not only plain commands."""
    from precinct.spec.model import MAX_COMMAND_NAMESPACES, Manifest
    groups = {f"g{i}": {"subcommands": {"go": f"ns{i}.go"}} for i in range(MAX_COMMAND_NAMESPACES)}
    with pytest.raises(ValueError, match="namespaces"):
        Manifest.model_validate({"name": "wide", "version": "1", "commands": {"x": "extra.x"},
                                 "command_groups": groups})
    Manifest.model_validate({"name": "wide", "version": "1", "command_groups": groups})
