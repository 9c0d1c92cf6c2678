"""The supervisor's ladder (runtime/violations.py) as plain unit tests; the
end-to-end version with a real `precinct up` is in test_gateway_storage_e2e.py."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from precinct import conditions as cond
from precinct.conditions import Conditions
from precinct.runtime.slot import SUSPENDED, SlotStatus
from precinct.runtime.violations import NONE, RESTART, SUSPEND, WARN, Ladder, LadderPolicy


class FakeSlot:
    def __init__(self, plugin_id: str) -> None:
        self.id = plugin_id
        self.conditions = Conditions()
        self.status = SlotStatus(id=plugin_id, state="Running")
        self.calls: list[str] = []

    async def stop(self, reason: str = "Stopped") -> None:
        self.calls.append(f"stop:{reason}")
        self.status.state = reason

    def start(self) -> None:
        self.calls.append("start")
        self.status.state = "Running"


def event(kind: str = "rate_limit", subject: str = "rosey.chat.x.send", count: int = 10) -> dict:
    return {"plugin": "p", "kind": kind, "subject": subject, "count": count, "source": "gateway"}


def test_warn_restart_suspend_with_cooldown_and_window(tmp_path):
    slot = FakeSlot("p")
    ladder = Ladder(LadderPolicy(window=100, cooldown=10, suspend_after=3), tmp_path, lambda _pid: slot)
    assert ladder.observe("p", event(), now=0) == WARN
    c = slot.conditions.get(cond.PERMISSIONS_COMPLIANT)
    assert (c.status, c.reason) == ("False", "RateLimited") and "rosey.chat.x.send" in c.message
    assert ladder.observe("p", event(), now=5) == NONE          # within the cooldown: the same strike
    assert ladder.observe("p", event("permission"), now=20) == RESTART
    assert slot.conditions.get(cond.PERMISSIONS_COMPLIANT).reason == "PermissionViolation"
    assert ladder.observe("p", event(), now=200) == WARN        # both strikes aged out of the window
    assert ladder.observe("p", event(), now=215) == RESTART
    assert ladder.observe("p", event(), now=230) == SUSPEND
    assert ladder.summary("p", now=230)["counts"] == {"rate_limit": 50, "permission": 10}


def test_never_suspend_when_suspend_after_is_zero(tmp_path):
    ladder = Ladder(LadderPolicy(window=1000, cooldown=0, suspend_after=0), tmp_path, lambda _pid: None)
    actions = [ladder.observe("p", event(), now=t) for t in range(1, 8)]
    assert actions == [WARN] + [RESTART] * 6


def test_compliant_again_after_a_quiet_window(tmp_path):
    slot = FakeSlot("p")
    ladder = Ladder(LadderPolicy(window=60, cooldown=1), tmp_path, lambda _pid: slot)
    ladder.refresh("p", slot, now=0)
    assert slot.conditions.get(cond.PERMISSIONS_COMPLIANT).status == "True"
    ladder.observe("p", event(), now=10)
    ladder.refresh("p", slot, now=30)
    assert slot.conditions.get(cond.PERMISSIONS_COMPLIANT).status == "False"
    ladder.refresh("p", slot, now=71)
    assert slot.conditions.get(cond.PERMISSIONS_COMPLIANT).reason == "NoViolations"


async def test_suspension_stops_persists_and_resume_clears(tmp_path):
    slot = FakeSlot("p")
    policy = LadderPolicy(window=1000, cooldown=0, suspend_after=2)
    ladder = Ladder(policy, tmp_path, lambda _pid: slot)
    msg = SimpleNamespace(subject="precinct.violations.p", data=json.dumps(event()).encode())
    await ladder.on_message(msg)                      # warn
    await ladder.on_message(msg)                      # suspend
    await asyncio.gather(*ladder._tasks)
    assert slot.calls == [f"stop:{SUSPENDED}"]
    ready = slot.conditions.get(cond.READY)
    assert (ready.status, ready.reason) == ("False", "Suspended") and "precinct plugin resume p" in ready.message
    assert "p" in json.loads((tmp_path / "suspended.json").read_text())

    # A new ladder (a restarted supervisor) still knows; more events do nothing.
    again = Ladder(policy, tmp_path, lambda _pid: slot)
    assert again.is_suspended("p")
    assert again.observe("p", event()) == NONE

    # A payload naming another plugin is ignored: the subject names the plugin.
    other = FakeSlot("q")
    framed = Ladder(policy, tmp_path, lambda pid: other if pid == "q" else slot)
    await framed.on_message(SimpleNamespace(subject="precinct.violations.q",
                                            data=json.dumps({**event(), "plugin": "p"}).encode()))
    assert other.conditions.get(cond.PERMISSIONS_COMPLIANT) is None

    assert again.resume("p") is True
    assert not again.is_suspended("p") and json.loads((tmp_path / "suspended.json").read_text()) == {}
    assert slot.conditions.get(cond.PERMISSIONS_COMPLIANT).reason == "Resumed"
    assert again.summary("p")["strikes"] == 0


async def test_restart_stops_then_starts(tmp_path):
    slot = FakeSlot("p")
    ladder = Ladder(LadderPolicy(window=1000, cooldown=0, suspend_after=5), tmp_path, lambda _pid: slot)
    msg = SimpleNamespace(subject="precinct.violations.p", data=json.dumps(event()).encode())
    await ladder.on_message(msg)
    await ladder.on_message(msg)
    await asyncio.gather(*ladder._tasks)
    assert slot.calls == ["stop:Stopped", "start"] and slot.status.restarts == 1
    await ladder.on_message(SimpleNamespace(subject="precinct.violations.p", data=b"not json"))  # ignored
