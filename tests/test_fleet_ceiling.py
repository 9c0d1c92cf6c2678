"""The fleet ceiling (natsauth/budget.py): the shared core and platform
account JWTs list every plugin's edges, and the server takes an account JWT
only as one message no larger than its max payload. The estimate must match
what is really signed, a fleet at the ceiling must really be accepted by
nats-server 2.15, and past 1 MiB the push really fails (why the ceiling exists)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import NatsEnv, make_plugin, serve_once
from precinct.natsauth import budget
from precinct.natsauth.identity import Identity
from precinct.natsauth.server import MAX_CONTROL_LINE


def typical(i: int):
    return make_plugin(f"p{i}", commands={"ask": f"p{i}.ask", "tell": f"p{i}.tell"},
                       permissions=["send_messages", "read_messages", "database_write"])


def at_the_bounds(i: int):
    """64 commands in 4 namespaces of 63 characters, 64-character actions, 8 event roots."""
    ns = [f"b{i:03d}{'n' * 58}{k}" for k in range(4)]
    return make_plugin(f"big{i:03d}", commands={f"w{i}x{j}": f"{ns[j % 4]}.{'a' * 62}{j:02d}" for j in range(64)},
                       events=[f"e{i}r{k}" for k in range(8)], permissions=["send_messages", "database_write"])


def test_the_estimate_is_what_gets_signed(tmp_path: Path) -> None:
    plans = [typical(i) for i in range(6)] + [at_the_bounds(i) for i in range(2)]
    identity = Identity(tmp_path / "state")
    identity.prepare(plans)
    estimate = budget.fit(plans).sizes
    for role in ("core", "platform"):
        signed = len((tmp_path / "state" / "accounts" / f"{role}.jwt").read_text().strip())
        assert abs(signed - estimate[role]) <= 64, (role, signed, estimate[role])
    # A plugin's own user JWT travels in its CONNECT line: at the bounds it must still fit.
    biggest = max(len(identity.creds_for(p.id).read_text()) for p in plans)
    assert biggest < MAX_CONTROL_LINE // 2, biggest


def test_refusals_follow_claim_order_and_say_why() -> None:
    plans = [typical(i) for i in range(5)]
    base = budget.fit([]).sizes["platform"]
    share = budget.fit(plans[:1]).sizes["platform"] - base
    fitted = budget.fit(plans, limit=base + 3 * share + share // 2)
    assert [p.id for p in fitted.admitted] == ["p0", "p1", "p2"]
    assert [r.plan.id for r in fitted.refused] == ["p3", "p4"]
    assert "shared platform account's JWT would be" in fitted.refused[0].message
    assert "docs/nats.md#fleet-ceiling" in fitted.refused[0].message


async def test_a_fleet_at_the_ceiling_is_accepted_and_past_the_max_payload_is_not(nats_env: NatsEnv) -> None:
    plans, fitted = [], None
    while True:
        plans.append(at_the_bounds(len(plans)))
        fitted = budget.fit(plans)
        if fitted.refused:
            break
    admitted = fitted.admitted
    assert fitted.sizes["core"] > 0.9 * budget.SHARED_JWT_LIMIT, fitted.sizes
    result = await nats_env.sync(*admitted)
    assert "core" in result.changed and result.live
    # The server applied it: core reaches the last admitted plugin's command.
    last = admitted[-1]
    subject = sorted(set(last.commands.values()))[-1]
    plugin = await nats_env.plugin(last.id)
    core = await nats_env.core()
    await serve_once(plugin.nc, subject, b"at the ceiling")
    assert (await core.nc.request(subject, b"", timeout=5)).data == b"at the ceiling"

    # Without the ceiling: past the server's max payload (1 MiB) the core JWT cannot be pushed at all.
    more = admitted + [at_the_bounds(len(plans) + i) for i in range(14)]
    assert budget.fit(more, limit=2**30).sizes["core"] > 2**20
    with pytest.raises(Exception, match="(?i)payload"):
        await nats_env.sync(*more)
