"""The sandbox compiler: pure, deterministic, and exactly as wide as the grants."""

from __future__ import annotations

from pathlib import Path

import pytest

from precinct.plan import permissions_doc
from precinct.plan.render_text import describe_plan
from precinct.plan.sandbox import (
    CHAT_IN_SUBJECTS,
    CHAT_OUT_SUBJECTS,
    CORE,
    CORE_EXPORTS,
    OBSERVE_PREFIX,
    PLATFORM,
    PLATFORM_TO_CORE,
    compile_plan,
    core_account,
    observer_warning,
    platform_account,
)
from precinct.spec.model import Permission, load_manifest
from precinct.spec.ownership import COMMAND_CONFLICT, ID_CONFLICT, SUBJECT_CONFLICT, Plugin, resolve

ROOT = Path(__file__).parents[1]


def plugin(name: str, **fields) -> Plugin:
    m = load_manifest({"name": name, "version": "1", **fields})
    return Plugin(m.id, m.without_name())


def test_permissions_doc_matches_the_compiler():
    committed = (ROOT / "docs" / "permissions.md").read_text()
    assert committed == permissions_doc.render(), (
        "docs/permissions.md is stale: run `python -m precinct.plan.permissions_doc > docs/permissions.md`"
    )


def test_plan_is_pure_and_deterministic():
    p = plugin("dice", commands={"roll": "dice.roll"}, permissions=["send_messages", "database_write"])
    assert compile_plan(p) == compile_plan(p)
    assert compile_plan(p).to_dict() == compile_plan(p).to_dict()


def test_no_grants_means_no_chat_no_storage_no_network():
    plan = compile_plan(plugin("quiet", commands={"q": "quiet.ask"}))
    pub = plan.account.user.publish
    assert not any(s.startswith(("rosey.chat", "rosey.channel", "rosey.db")) for s in pub)
    assert not any(s.startswith("rosey.platform") for s in plan.account.user.subscribe)
    assert plan.account.imports == ()
    assert plan.fence.network == ("nats",) and plan.fence.data_dir == "none"
    assert plan.storage.operations == ()


def test_read_grant_allows_reads_only():
    plan = compile_plan(plugin("reader", subject_namespace="rd", permissions=["database_read"]))
    assert set(plan.storage.operations) == {"row.select", "row.search", "kv.get", "kv.list", "migrate.status"}
    locals_ = {i.local: i.subject for i in plan.account.imports}
    assert locals_["rosey.db.kv.get"] == "precinct.storage.reader.kv.get"
    assert locals_["rosey.db.row.rd.select"] == "precinct.storage.reader.row.select"
    assert "rosey.db.kv.set" not in locals_ and "rosey.db.row.rd.insert" not in locals_


def test_read_messages_never_includes_private_messages():
    plan = compile_plan(plugin("listener", permissions=["read_messages"]))
    assert set(plan.account.user.subscribe) >= set(CHAT_IN_SUBJECTS)
    assert not any(s.endswith(".pm") for s in plan.account.user.subscribe)


OBSERVE = "observe_chat_and_events"


def test_observe_grant_imports_chat_and_events_under_its_prefix_and_nothing_else():
    plain = compile_plan(plugin("watcher", commands={"i": "watcher.events"}))
    plan = compile_plan(plugin("watcher", commands={"i": "watcher.events"}, permissions=[OBSERVE]))
    streams = {(i.account, i.subject, i.prefix) for i in plan.account.imports}
    assert streams == {
        *((CORE, s, OBSERVE_PREFIX) for s in CHAT_IN_SUBJECTS),
        *((PLATFORM, s, OBSERVE_PREFIX) for s in (*CHAT_OUT_SUBJECTS, "rosey.event.>")),
    }
    assert all(i.kind == "stream" for i in plan.account.imports)     # no service: no commands, storage, replies
    assert not any("pm" in i.subject or "reply" in i.subject or "command" in i.subject for i in plan.account.imports)
    assert plan.account.user.subscribe == (">",)
    # `>` delivers each request it answers twice; the server spends an answer per delivery.
    assert (plan.account.user.max_responses, plain.account.user.max_responses) == (2, 1)
    assert plan.account.user.publish == plain.account.user.publish   # observing publishes nothing more
    # The rest of its sandbox is the same as without the grant.
    assert (plan.account.exports, plan.core_imports, plan.platform_imports, plan.platform_exports, plan.storage) == (
        plain.account.exports, plain.core_imports, plain.platform_imports, plain.platform_exports, plain.storage)
    assert ">" not in plain.account.user.subscribe and plain.account.imports == ()


def test_observed_streams_are_what_core_and_platform_already_export():
    exported = {CORE: {(e.subject, e.kind) for e in CORE_EXPORTS},
                PLATFORM: {(e.subject, e.kind) for e in PLATFORM_TO_CORE}}
    plan = compile_plan(plugin("watcher", permissions=[OBSERVE]))
    for imp in plan.account.imports:
        assert (imp.subject, "stream") in exported[imp.account], imp


@pytest.mark.parametrize("grants", [[p.value for p in Permission]] + [[OBSERVE, p.value] for p in Permission if p.value != OBSERVE])
def test_no_plan_imports_one_stream_twice_from_one_account(grants):
    """The server drops a second stream import of the same subject from the
    same account (even under another local subject), so none may be planned.
    (Service imports may repeat: storage maps two Rosey subjects onto one.)"""
    plan = compile_plan(plugin("watcher", permissions=grants))
    pairs = [(i.account, i.subject) for i in plan.account.imports if i.kind == "stream"]
    assert len(pairs) == len(set(pairs)), pairs
    if "read_messages" in grants:   # chat in then arrives once, unprefixed; the rest still observed
        assert {s for a, s in pairs if a == CORE} == set(CHAT_IN_SUBJECTS)
        assert (PLATFORM, "rosey.event.>") in pairs


def test_observer_warning_only_for_the_grant_and_in_the_plan_text():
    plan = compile_plan(plugin("inspector", permissions=[OBSERVE]))
    warning = observer_warning(plan)
    assert warning is not None and warning.startswith("inspector is granted observe_chat_and_events: it reads every chat")
    assert "Grant it only to plugins you trust with all chat." in warning
    assert warning in describe_plan(plan)
    others = compile_plan(plugin("inspector", permissions=[p.value for p in Permission if p.value != OBSERVE]))
    assert observer_warning(others) is None and "WARNING" not in describe_plan(others)


def test_shared_accounts_carry_each_plugins_edges():
    a = compile_plan(plugin("a", commands={"x": "a.x"}, permissions=["send_messages"]))
    b = compile_plan(plugin("b", commands={"y": "b.y"}))
    core = core_account([a, b])
    imported = {(i.account, i.subject) for i in core.imports}
    assert ("plugin:a", "rosey.command.a.x") in imported and ("plugin:b", "rosey.command.b.y") in imported
    platform = platform_account([a, b])
    prefixed = {(i.account, i.subject, i.prefix) for i in platform.imports if i.kind == "stream"}
    assert ("plugin:a", "rosey.chat.*.send", "plugin.a") in prefixed
    assert not any(acct == "plugin:b" and subj.startswith("rosey.chat") for acct, subj, _ in prefixed)


def test_events_roots_cover_namespace_commands_and_declared_roots():
    plan = compile_plan(plugin("trivia-game", subject_namespace="trivia", commands={"t": "quiz.start"}, events=["scores"]))
    assert set(plan.event_roots) == {"rosey.event.trivia.>", "rosey.event.quiz.>", "rosey.event.scores.>", "scores.>"}


def test_first_claimant_keeps_its_commands():
    first = plugin("first", commands={"roll": "dice.roll"})
    second = plugin("second", commands={"roll": "dice2.roll"})
    third = plugin("third", subject_namespace="dice")
    result = resolve([first, second, third])
    assert [p.id for p in result.accepted] == ["first"]
    reasons = {r.plugin: r.reason for r in result.rejected}
    assert reasons == {"second": COMMAND_CONFLICT, "third": SUBJECT_CONFLICT}
    assert result.routes() == {"roll": {"subject": "rosey.command.dice.roll", "plugin": "first"}}
    # Order decides: the same pair the other way round keeps `second`.
    assert [p.id for p in resolve([second, first]).accepted] == ["second"]


@pytest.mark.parametrize("clash", [{"subject_namespace": "a-b"}, {"events": ["a-b"]}, {"commands": {"z": "a-b.z"}}])
def test_namespaces_are_exclusive_even_when_ids_look_alike(clash):
    owner = plugin("a-b")
    other = plugin("a", **clash)
    assert [p.id for p in resolve([owner, other]).accepted] == ["a-b"]


def test_two_names_that_fold_to_one_id_get_one_owner():
    """`Vault` beside `vault`: the first in claim order keeps the id (and with it
    the account, uid, creds and data); the other is rejected naming both."""
    m1, m2 = (load_manifest({"name": n, "version": "1"}) for n in ("vault", "Vault"))
    owner, intruder = Plugin(m1.id, m1.without_name(), "vault"), Plugin(m2.id, m2.without_name(), "Vault")
    result = resolve([owner, intruder])
    assert [p.source for p in result.accepted] == ["vault"]
    (rejection,) = result.rejected
    assert (rejection.plugin, rejection.reason, rejection.source) == ("vault", ID_CONFLICT, "Vault")
    assert "(from Vault)" in rejection.message and "(from vault)" in rejection.message
    assert [p.source for p in resolve([intruder, owner]).accepted] == ["Vault"]   # order decides


def test_a_withdrawn_plugin_gives_back_every_claim():
    first, second = plugin("first", commands={"roll": "dice.roll"}), plugin("second", commands={"flip": "coin.flip"})
    result = resolve([first, second])
    result.withdraw("first", "FleetFull", "no room")
    assert [p.id for p in result.accepted] == ["second"]
    assert result.routes() == {"flip": {"subject": "rosey.command.coin.flip", "plugin": "second"}}
    assert "dice" not in result.namespaces and result.rejected[-1].reason == "FleetFull"


def test_calls_and_exports_compile_to_exactly_the_declared_pairs():
    caller = compile_plan(plugin("inspire", calls=["quotes.lookup"], resources={"rate_limits": {"calls_per_second": 3}}))
    callee = compile_plan(plugin("quote-book", subject_namespace="quotes", exports=["lookup", "count"]))
    bystander = compile_plan(plugin("dice"))

    # The caller may publish only its declared call, which the server maps onto
    # a platform subject carrying its id; platform offers that service.
    assert [s for s in caller.account.user.publish if s.startswith("precinct.")] == ["precinct.call.quotes.lookup"]
    calls = [i for i in caller.account.imports if i.local and i.local.startswith("precinct.call.")]
    assert [(i.account, i.subject, i.kind) for i in calls] == [(PLATFORM, "precinct.relay.inspire.quotes.lookup", "service")]
    assert [(e.subject, e.kind, e.singleton) for e in caller.platform_exports] == [("precinct.relay.inspire.>", "service", True)]
    assert caller.calls == ("quotes.lookup",) and caller.rates.calls_per_second == 3
    # The callee serves its exports under its id (not its namespace), to platform only, one answer each.
    export_subjects = ["precinct.export.quote-book.lookup", "precinct.export.quote-book.count"]
    assert [e.subject for e in callee.account.exports if e.subject.startswith("precinct.export.")] == export_subjects
    assert all(e.singleton for e in callee.account.exports if e.subject.startswith("precinct.export."))
    assert set(export_subjects) <= set(callee.account.user.subscribe)
    assert [i.subject for i in callee.platform_imports if i.subject.startswith("precinct.export.")] == export_subjects
    assert all(i.account == "plugin:quote-book" for i in callee.platform_imports)
    # Nobody else gets any of it, and no plugin account imports another plugin's export.
    for plan in (caller, callee, bystander):
        assert all(i.account in (CORE, PLATFORM) for i in plan.account.imports)
    assert not [s for s in bystander.account.user.publish + bystander.account.user.subscribe if "precinct.call" in s
                or "precinct.export" in s or "precinct.relay" in s]
    assert not bystander.platform_exports
    shared = platform_account([caller, callee, bystander])
    assert {i.subject for i in shared.imports if i.subject.startswith("precinct.export.")} == set(export_subjects)
    assert not [i for i in core_account([caller, callee]).imports if "precinct." in i.subject]


def test_plan_text_shows_calls_and_exports():
    text = describe_plan(compile_plan(plugin("inspire", calls=["quotes.lookup"])))
    assert "calls:       quotes.lookup" in text and "5 calls/s" in text
    text = describe_plan(compile_plan(plugin("quote-book", subject_namespace="quotes", exports=["lookup"])))
    assert "exports:     quotes.lookup" in text and "calls/s" not in text
