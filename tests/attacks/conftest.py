"""One real `precinct up` (real nats-server, gateway, storage, cgroups) runs
the attack suite's plugins (`SUITE`, from tests/attacks/plugins/) plus a
well-behaved bystander (tests/fixtures/plugins/8ball) and the callee of the
call attacks (the example plugins/quotes) for the whole module. A
background thread asks the bystander `!8ball` every two seconds for as long as
the fleet lives; each attack test asserts that none of those questions went
unanswered while it ran (`Fleet.bystander_since`)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from attack_support import AttackFleet  # noqa: E402
from runtime_support import EXAMPLES, FIXTURES, Up  # noqa: E402

# thief is rejected (CommandConflict) and never runs; crashloop is armed last;
# tempescape and blobbomb never run either: their migrations are refused.
RUNNING = ("eightball", "membomb", "forkbomb", "threadbomb", "cpuspin", "diskfill", "bigpayload", "flood",
           "spoofer", "snoop", "kvforge", "netout", "udpexfil", "writer", "signaller", "eventflood", "slowquery",
           "logflood", "egress6", "hostsock", "refuser", "crashloop", "quotes", "callforger", "callstorm")
# The attack plugins this fleet stages. The rest of tests/attacks/plugins/ runs
# in tests/test_confinement.py's fleet (its `spinner` claims `!spin` too).
SUITE = tuple(p for p in RUNNING if p not in ("eightball", "quotes")) + ("thief", "tempescape", "blobbomb")


class Bystander(threading.Thread):
    """Asks the well-behaved plugin every `every` seconds; keeps every outcome."""

    def __init__(self, up: Up, every: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.up, self.every = up, every
        self.outcomes: list[tuple[float, float, bool, str]] = []   # (start, end, answered, output)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            start = time.monotonic()
            try:
                said = self.up.say("!8ball are we safe?", "--timeout", "30")
                ok, out = said.returncode == 0 and "🎱" in said.stdout, said.stdout + said.stderr
            except Exception as exc:  # noqa: BLE001 - a hung CLI counts as unanswered
                ok, out = False, repr(exc)
            self.outcomes.append((start, time.monotonic(), ok, out.strip()[:200]))
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)


class Fleet(AttackFleet):
    def __init__(self, up: Up, state: Path, tmp: Path) -> None:
        super().__init__(up, state, tmp)
        self.bystander = Bystander(up)

    def condition(self, plugin_id: str, type_: str, status: dict | None = None) -> dict:
        info = (status or self.status())["plugins"][plugin_id]
        return next((c for c in info.get("conditions", []) if c["type"] == type_), {})

    def wait_condition(self, plugin_id: str, type_: str, reason: str, timeout: float = 60) -> dict:
        status = self.up.wait_for(lambda s: next((c for c in s["plugins"].get(plugin_id, {}).get("conditions", [])
                                                  if c["type"] == type_), {}).get("reason") == reason,
                                  f"{type_}={reason} on {plugin_id}", timeout)
        return self.condition(plugin_id, type_, status)

    def mark(self) -> float:
        return time.monotonic()

    def bystander_since(self, since: float, at_least: int = 1, timeout: float = 40) -> None:
        """Every question asked since `since` was answered, and at least
        `at_least` questions asked after it have finished (wait for them)."""
        direct = self.up.say("!8ball still there?", "--timeout", "30")
        assert direct.returncode == 0 and "🎱" in direct.stdout, (direct.stdout, direct.stderr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            window = [o for o in list(self.bystander.outcomes) if o[0] >= since]
            if len(window) >= at_least:
                break
            time.sleep(0.5)
        window = [o for o in list(self.bystander.outcomes) if o[1] >= since]
        assert len([o for o in window if o[0] >= since]) >= at_least, "the bystander thread asked nothing"
        failed = [o for o in window if not o[2]]
        assert not failed, f"the bystander went unanswered during the attack: {failed}"


@pytest.fixture(scope="module")
def owned(tmp_path_factory):
    """A network namespace the suite creates (tests/netns_support.py): the only
    non-loopback addresses an attack is aimed at."""
    from netns_support import OwnedNetwork, can_own_networks

    why = can_own_networks()
    if why:
        pytest.skip(f"end-to-end network attacks {why}")
    with OwnedNetwork(tmp_path_factory.mktemp("owned")) as net:
        yield net


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the attack suite needs root (own uids, cgroups, namespaces); CI runs it as root")

    def links_out(plugins: Path, state: Path) -> None:
        # An unpacked plugin folder with links out of it (the bundle path refuses these:
        # test_bundles.py): the code snapshot keeps them as links, and inside the sandbox
        # they point at paths Landlock and file modes refuse (test_reading_...).
        (plugins / "snoop" / "leak_core").symlink_to(state / "nats" / "creds" / "core.creds")
        (plugins / "snoop" / "leak_shadow").symlink_to("/etc/shadow")

    with Fleet.started(tmp_path_factory.mktemp("attacks"), SUITE, others=[FIXTURES / "8ball", EXAMPLES / "quotes"],
                       prepare=links_out, running=RUNNING, timeout=240) as fleet:
        fleet.bystander.start()
        try:
            yield fleet
        finally:
            fleet.bystander.stop()
