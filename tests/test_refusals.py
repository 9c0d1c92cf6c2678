"""Refusals by the sandbox are counted per plugin and fed to the violation
ladder by policy (operator/precinct/confine/refusals.py): unit checks of the
record parsing, attribution and budget, and the example plugins under a real
confined `precinct up` in normal use, which must earn zero strikes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from precinct.confine import audit, seccomp
from precinct.confine.refusals import (EGRESS, LANDLOCK, SECCOMP, KernelRecords, Ledger, RefusalPolicy,
                                       classify_landlock, classify_seccomp)
from precinct.runtime.violations import WARN, Ladder, LadderPolicy

sys.path.insert(0, str(Path(__file__).parent))

from runtime_support import EXAMPLES, FIXTURES, Up, cleanup_cgroups, copy_plugin  # noqa: E402

# Records as this kernel (6.18) wrote them, captured from the audit multicast group.
SECCOMP_REC = ('audit(1796402510.232:2): auid=4294967295 uid=61236 gid=0 ses=4294967295 pid=10660 comm="python3" '
               'exe="/usr/bin/python3.11" sig=0 arch=c000003e syscall={nr} compat=0 ip=0x7f4d0191f829 code={code:#x}')
LL_ACCESS = '1796402524.904:{serial}): domain=1c088ed1e blockers={blockers} path="/etc/hostname" dev="vda" ino=612'
LL_ALLOC = ('audit(1796402524.904:{serial}): domain=1c088ed1e status=allocated mode=enforcing pid=11087 uid=61236 '
            'exe="/usr/bin/python3.11" comm="python3"')
SYSCALL_REC = ('audit(1796402524.908:{serial}): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c ppid=1 '
               'pid=11087 auid=4294967295 uid=61236 gid=0 euid=61236 comm="python3" key=(null)')
DEALLOC = 'audit(1796402525.040:{serial}): domain=1c088ed1e status=deallocated denials={n}'

X86 = seccomp.SYSCALLS["x86_64"]
ERRNO = 0x00050000


def _ll_access(serial: int, blockers: str = "fs.read_file") -> audit.Record:
    return audit.parse(audit.LANDLOCK_ACCESS, "audit(" + LL_ACCESS.format(serial=serial, blockers=blockers))


def test_seccomp_records_parse_and_classify():
    rec = audit.parse(audit.SECCOMP, SECCOMP_REC.format(nr=X86["io_uring_setup"], code=ERRNO))
    assert rec.serial == 2 and rec.int("pid") == 10660 and rec.int("uid") == 61236
    assert rec.text("exe") == "/usr/bin/python3.11"
    assert classify_seccomp(rec.int("syscall"), rec.int("code"), rec.fields["arch"]) == ("io_uring_setup", True)
    # The kernel logs the action without the errno (code=0x50000): socket() refusals are
    # probes whatever their family, everything else is a strike at once.
    assert classify_seccomp(X86["socket"], ERRNO, "c000003e") == ("socket", False)
    assert classify_seccomp(X86["clone"], ERRNO, "c000003e") == ("clone-new-namespace", True)
    assert classify_seccomp(X86["ptrace"], ERRNO, "c000003e") == ("ptrace", True)
    assert classify_seccomp(11, 0x80000000, "40000003")[1] is True          # a foreign ABI: killed
    assert classify_landlock("fs.read_file") == ("fs.read_file", False)
    assert classify_landlock("net.connect_tcp") == ("net.connect_tcp", False)
    assert classify_landlock("scope.signal") == ("scope.signal", True)


def test_a_process_name_cannot_forge_the_fields_the_kernel_wrote():
    # The kernel quotes or hex-encodes what a process controls; and the first
    # occurrence of a field wins, so nothing after `uid=` can replace it.
    forged = SECCOMP_REC.format(nr=1, code=ERRNO).replace('comm="python3"', 'comm="x" uid=0 pid=1')
    rec = audit.parse(audit.SECCOMP, forged)
    assert rec.int("uid") == 61236 and rec.int("pid") == 10660
    hexed = audit.parse(audit.SECCOMP, SECCOMP_REC.format(nr=1, code=ERRNO).replace('comm="python3"',
                                                                                      "comm=782075"))
    assert hexed.text("comm") == "x u"
    assert audit.parse(audit.SECCOMP, "no header here uid=0") is None


def test_budget_class_strikes_only_above_its_budget_within_the_window():
    strikes = []
    ledger = Ledger(RefusalPolicy(window=60, budget={LANDLOCK: 3, EGRESS: 2, SECCOMP: 5}),
                    on_strike=lambda plugin, event: strikes.append((plugin, event)))
    for i in range(3):
        assert ledger.add("p", LANDLOCK, "fs.read_file", f"/etc/{i}", at_once=False, now=100 + i) is None
    # Old refusals leave the window: three more, a minute later, are still within budget.
    for i in range(3):
        assert ledger.add("p", LANDLOCK, "fs.read_file", "x", at_once=False, now=200 + i) is None
    event = ledger.add("p", LANDLOCK, "fs.read_file", "/etc/shadow", at_once=False, now=203)
    assert event and event["kind"] == LANDLOCK and "more than 3" in event["subject"], event
    assert strikes == [("p", event)]
    assert ledger.add("p", SECCOMP, "io_uring_setup", "", at_once=True, now=204)["kind"] == SECCOMP
    # A burst of dangerous refusals is counted in full but reported to the ladder once a second.
    assert ledger.add("p", SECCOMP, "io_uring_setup", "", at_once=True, now=204.5) is None
    summary = ledger.summary("p")
    assert summary["counts"] == {SECCOMP: 2, LANDLOCK: 7, EGRESS: 0} and summary["strikes"] == 2
    assert summary["kinds"] == {"landlock:fs.read_file": 7, "seccomp:io_uring_setup": 2}
    assert ledger.summary("q")["total"] == 0


def test_landlock_records_are_attributed_by_the_kernel_reported_uid_and_totals_recover_losses():
    ledger = Ledger(RefusalPolicy(budget={LANDLOCK: 100, SECCOMP: 100, EGRESS: 100}))
    owners = {61236: "victim-of-probes"}
    records = KernelRecords(ledger, lambda pid, uid: owners.get(uid))
    # Access first, then the domain's "allocated" record of the same event.
    records(_ll_access(4))
    assert ledger.summary("victim-of-probes")["total"] == 0           # not attributed yet
    records(audit.parse(audit.LANDLOCK_DOMAIN, LL_ALLOC.format(serial=4)))
    assert ledger.summary("victim-of-probes")["counts"][LANDLOCK] == 1
    # Later events of the known domain count at once; a SYSCALL record is not needed.
    records(_ll_access(5))
    assert ledger.summary("victim-of-probes")["counts"][LANDLOCK] == 2
    # The domain ends with 5 denials in the kernel's count: 3 records were lost.
    records(audit.parse(audit.LANDLOCK_DOMAIN, DEALLOC.format(serial=9, n=5)))
    summary = ledger.summary("victim-of-probes")
    assert summary["counts"][LANDLOCK] == 5 and summary["recovered_from_domain_totals"] == 3, summary
    # An unknown domain is attributed through its SYSCALL record (pid/uid of the denied task).
    other = _ll_access(12)
    other.fields["domain"] = "1c0000002"
    records(other)
    records(audit.parse(audit.SYSCALL, SYSCALL_REC.format(serial=12)))
    assert ledger.summary("victim-of-probes")["counts"][LANDLOCK] == 6
    # Someone else's process (not one of ours) is never counted.
    records(audit.parse(audit.SECCOMP, SECCOMP_REC.format(nr=X86["ptrace"], code=ERRNO).replace("61236", "5")))
    assert ledger.summary("victim-of-probes")["counts"][SECCOMP] == 0


def test_strikes_climb_the_violation_ladder(tmp_path):
    class FakeSlot:
        def __init__(self):
            from precinct.conditions import Conditions

            self.conditions = Conditions()

    slot = FakeSlot()
    ladder = Ladder(LadderPolicy(), tmp_path, lambda pid: slot)
    ledger = Ledger(on_strike=lambda plugin, event: ladder.observe(plugin, event))
    ledger.add("p", SECCOMP, "ptrace", "pid 7", at_once=True)
    summary = ladder.summary("p")
    assert summary["strikes"] == 1 and summary["last_action"] == WARN and summary["counts"] == {SECCOMP: 1}
    assert slot.conditions.get("PermissionsCompliant").status == "False"


# -- the example plugins in normal use: counted, never struck -------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="confinement (and the kernel's refusal records) need root")
def test_example_plugins_in_normal_use_earn_no_strikes(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("dice-roller", "markov_plugin", "url-title"):
        copy_plugin(EXAMPLES / name, plugins)
    for name in ("8ball", "quotes", "counter"):
        copy_plugin(FIXTURES / name, plugins)
    up = Up(plugins, tmp_path / "state")
    cgroups: set[str] = set()
    ids = ("dice-roller", "markov-plugin", "url-title", "eightball", "quotes", "counter")
    try:
        status = up.wait_running(*ids, timeout=240)
        cgroups |= {d for p in status["plugins"].values() for d in (p.get("confinement") or {}).get("cgroups", {}).values()}
        assert status["refusals"]["reporting"]["seccomp"].startswith("kernel audit"), status["refusals"]
        for text in ("!roll 2d6", "!flip", "!markov", "!8ball is it safe?", "!quote add the cake is a lie", "!quote",
                     "!count", "!roll 3d20+2", "!flip"):
            done = up.say(text, "--timeout", "20")
            assert done.returncode in (0, 3), (text, done.stdout, done.stderr)   # 3: answered with an error
        # A user pastes a link to a private address: the proxy refuses it. That is
        # the user's doing, so it is counted against url-title but is no strike.
        done = up.say("!title http://127.0.0.1/", "--timeout", "30")
        assert "403" in done.stdout + done.stderr, (done.stdout, done.stderr)
        status = up.wait_for(lambda s: s["plugins"]["url-title"]["refusals"]["counts"]["egress"] >= 1,
                             "the proxy refusal counted", timeout=30)
        print({pid: p["refusals"]["kinds"] for pid, p in status["plugins"].items()})
        for pid in ids:
            plugin = status["plugins"][pid]
            assert plugin["state"] == "Running", (pid, plugin["state"])
            assert plugin["refusals"]["strikes"] == 0, (pid, plugin["refusals"])
            assert plugin["violations"]["strikes"] == 0, (pid, plugin["violations"])
            assert plugin["restarts"] == 0, (pid, plugin["restarts"])
    finally:
        up.stop()
        cleanup_cgroups(cgroups)


def test_attribution_uses_cgroups_while_the_process_lives_and_the_uid_after(tmp_path):
    from precinct.confine.host import HostConfinement, _Plugin

    class FakeCgroup:                       # what _owner reads: the /proc/<pid>/cgroup fields of its members
        def __init__(self, paths):
            self.paths = paths

        def expected_paths(self):
            return self.paths

    host = HostConfinement(tmp_path, disable=[])
    mine = open(f"/proc/{os.getpid()}/cgroup").read().splitlines()[0].split(":", 2)
    host._plugins["inside"] = _Plugin("inside", uid=61500, cgroup=FakeCgroup({mine[1]: mine[2]}))
    host._plugins["elsewhere"] = _Plugin("elsewhere", uid=61501, cgroup=FakeCgroup({mine[1]: "/not/this/one"}))
    # A live process: its cgroup decides, whatever uid the record carries.
    assert host._owner(os.getpid(), 61501) == "inside"
    # A process that is gone: the kernel-reported uid decides.
    gone = 2**22 + 12345
    assert host._owner(gone, 61501) == "elsewhere"
    assert host._owner(gone, 61999) is None
