"""Kernel confinement on a single host, proven with real attacks.

Real processes, real cgroups, a real nats-server: one `precinct up` runs five of
the attack plugins in tests/attacks/plugins/ (staged by tests/attack_support.py,
like the attack suite's) and each test asks one of them to try something
through chat (`precinct say`), then checks the outcome from
outside. Every hog is armed by a command, and each test checks the cgroup
(status, /proc/<pid>/cgroup, the limit files) BEFORE arming it: an
unconfined memory hog takes a machine without swap down.

Which layer each test proves (docs/confinement.md has the full table); the
tests were run with each layer switched off (PRECINCT_CONFINE_DISABLE) to see
them fail.

Needs root (CI runs as root); skipped with the reason otherwise. The unit
tests at the end run anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from attack_support import AttackFleet
from netns_support import LoopbackHTTP, OwnedNetwork, UnixListener, can_own_networks
from runtime_support import pid_alive, precinct

PLUGINS = ("hog", "spinner", "orphanbomb", "prober", "fetcher", "sockprobe")
MiB = 2**20

needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="confinement tests need root (own uids, cgroups, namespaces); CI runs them as root",
)


# -- helpers --------------------------------------------------------------------


def _status_uid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def processes_of_uid(uid: int) -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and _status_uid(int(e.name)) == uid and pid_alive(int(e.name))]


def cgroup_of(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _hid, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def mountpoint_rel(cgroup_dir: str, controller: str) -> str:
    """/sys/fs/cgroup/memory/a/b -> /a/b (v1); /sys/fs/cgroup/a/b -> /a/b (v2)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        mp, fstype, opts = left.split()[4], right.split()[0], right.split()[2].split(",")
        if (fstype == "cgroup" and controller in opts) or (fstype == "cgroup2" and controller == ""):
            if cgroup_dir.startswith(mp + "/"):
                return cgroup_dir[len(mp):]
    raise AssertionError(f"{cgroup_dir} is not under a {controller or 'cgroup2'} mount")


class Listener:
    """A TCP listener on the host that counts the connections it gets."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


class Fleet(AttackFleet):
    def probe(self, kind: str, *args: str, plugin: str = "probe") -> object:
        return self.ask(" ".join([f"!{plugin}", kind, *args]))

    def assert_confined(self, plugin_id: str) -> dict:
        """Status names the cgroup mechanisms, the kernel holds the limits we
        asked for, and every process of the plugin's uid is inside its
        cgroups. Call before arming any hog."""
        info = self.plugin(plugin_id)
        enf, conf = info["enforcement"], info["confinement"]
        version = conf["cgroup_version"]
        assert version in ("v1", "v2"), info
        assert enf["memory"] == f"cgroup-{version}", enf
        assert enf["pids"] == f"cgroup-{version}", enf
        assert enf["cpu"].startswith(f"cgroup-{version}"), enf
        assert enf["cgroup-membership"].startswith("verified"), enf
        limits = conf["limits"]
        assert limits["memory"] == info["limits"]["memory_bytes"], (limits, info["limits"])
        assert limits["pids"] == info["limits"]["pids"], limits
        assert limits["cpu_quota_us"] == info["limits"]["cpu_millicores"] * limits["cpu_period_us"] // 1000, limits
        for controller, leaf in conf["cgroups"].items():     # the instance's leaf, under the plugin's cgroup
            assert Path(leaf).parent == Path(conf["plugin_cgroups"][controller]), (leaf, conf["plugin_cgroups"])
            assert Path(leaf).name == f"i-{info['instance']}", (leaf, info["instance"])
        members = processes_of_uid(conf["uid"])
        assert members, f"no process runs as uid {conf['uid']}"
        for pid in members:
            shown = cgroup_of(pid)
            for controller in ("memory", "pids", "cpu"):
                key = controller if version == "v1" else ""
                want = mountpoint_rel(conf["cgroups"][controller], key)
                assert shown.get(key) == want, f"pid {pid} is in {shown.get(key)}, not {want}"
        return info


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("confinement tests need root (own uids, cgroups, namespaces); CI runs them as root")
    # A loopback stand-in for a public site: the one destination the fetcher's
    # proxy is told to allow (the positive control for the egress refusals).
    standin = LoopbackHTTP()
    try:
        # The prober provokes refusals in test after test, each a strike for the
        # ladder. With the default 10 s cooldown, whether two tests' refusals
        # are one strike or two depended on how fast the machine ran them, and a
        # third suspended the prober mid-module. One strike per minute here: the
        # ladder itself is tested in test_refusals.py and the attack suite.
        with Fleet.started(tmp_path_factory.mktemp("confine"), PLUGINS, running=PLUGINS, timeout=180,
                           env={"PRECINCT_EGRESS_TEST_ALLOW": standin.address},
                           args=("--violation-cooldown", "60")) as fleet:
            fleet.standin = standin
            yield fleet
    finally:
        standin.close()


@pytest.fixture(scope="module")
def owned(tmp_path_factory):
    """A network namespace this module creates: 10.213.<n>.2 and its IPv6 forms
    (tests/netns_support.py), the only non-loopback addresses aimed at."""
    why = can_own_networks()
    if why:
        pytest.skip(f"end-to-end network tests {why}")
    with OwnedNetwork(tmp_path_factory.mktemp("owned")) as net:
        yield net


# -- status -------------------------------------------------------------------------


@needs_root
def test_status_names_the_mechanism_behind_every_protection(fleet):
    status = fleet.status()
    uids = set()
    for plugin_id in PLUGINS:
        info = status["plugins"][plugin_id]
        enf = info["enforcement"]
        missing = {k: v for k, v in enf.items() if "MISSING" in v}
        assert not missing, missing
        assert 61000 <= int(enf["uid"]) <= 61999, enf
        uids.add(enf["uid"])
        assert enf["pidns"] == "yes" and enf["proc"].startswith("private"), enf
        assert enf["landlock"].startswith("abi-"), enf
        assert enf["seccomp"] == "bpf", enf
        assert enf["network"] == "netns+handoff", enf
        assert enf["no_new_privs"] == "yes", enf
        assert enf["host_dirs"].startswith("hidden") and "/tmp" in enf["host_dirs"] and "/run" in enf["host_dirs"], enf
        limits = {c["type"]: c for c in info["conditions"]}["LimitsEnforced"]
        assert limits["status"] == ("False" if any("MISSING" in v for v in enf.values()) else "True"), limits
    assert len(uids) == len(PLUGINS), "every plugin gets its own uid"
    assert status["plugins"]["fetcher"]["enforcement"]["egress"].startswith("proxy"), status["plugins"]["fetcher"]
    assert "egress" not in status["plugins"]["prober"]["enforcement"]
    assert status["plugins"]["prober"]["enforcement"]["disk"].startswith("ext4 image 16 MiB"), status["plugins"]["prober"]


@needs_root
def test_plugin_code_runs_unprivileged_in_its_own_namespaces(fleet):
    """uid layer + no_new_privs + pid/uts namespaces + seccomp, seen from inside."""
    me = fleet.probe("whoami")
    uid = int(fleet.plugin("prober")["enforcement"]["uid"])
    assert me["uid"] == uid and me["gid"] == uid and me["groups"] == [], me
    assert me["status"]["NoNewPrivs"] == "1", me
    assert me["status"]["Seccomp"] == "2", me          # a filter is installed
    assert 2 <= me["pid"] <= 4, me                      # PID 1 is the trusted init; own PID namespace
    assert me["hostname"] == "prober", me
    assert me["cwd"] == "/run/precinct/sandbox/code", me


# -- limits -------------------------------------------------------------------------


@needs_root
def test_memory_hog_is_oom_killed_reported_and_restarted(fleet):
    before = fleet.assert_confined("hog")
    assert before["limits"]["memory_bytes"] == 64 * MiB
    restarts = before["restarts"]
    done = fleet.up.say("!hog", "--timeout", "8")
    assert done.returncode != 0, f"the hog survived its limit: {done.stdout}"
    after = fleet.up.wait_for(
        lambda s: s["plugins"]["hog"]["last_exit"] == "OOMKilled" and s["plugins"]["hog"]["restarts"] > restarts,
        "hog OOMKilled and restarted", timeout=60)
    hog = after["plugins"]["hog"]
    ready = {c["type"]: c for c in hog["conditions"]}["Ready"]
    assert ready["status"] == "True" or ready["reason"] == "OOMKilled", ready
    fleet.up.wait_running("hog", timeout=60)
    fleet.assert_confined("hog")


@needs_root
def test_cpu_spinner_is_held_to_its_quota(fleet):
    info = fleet.assert_confined("spinner")
    conf = info["confinement"]
    assert info["limits"]["cpu_millicores"] == 100
    # The quota is the plugin's, shared by its instances: its cgroup throttles.
    cpu_dir = Path(conf["plugin_cgroups"]["cpu"])

    def stat() -> dict[str, int]:
        return {k: int(v) for k, v in (line.split() for line in (cpu_dir / "cpu.stat").read_text().splitlines())}

    def usage() -> float:
        if conf["cgroup_version"] == "v2":
            return stat()["usage_usec"] / 1e6
        return int((Path(conf["plugin_cgroups"]["cpuacct"]) / "cpuacct.usage").read_text()) / 1e9

    throttled, used = stat()["nr_throttled"], usage()
    assert fleet.ask("!spin 3")["spinning"] == 3
    time.sleep(3.5)
    throttled_after, used_after = stat()["nr_throttled"], usage()
    assert throttled_after - throttled >= 5, (throttled, throttled_after)
    # Unconfined, the spinner would use ~3 s of CPU here; its quota is 0.1 core.
    assert used_after - used < 1.5, used_after - used


# -- filesystem --------------------------------------------------------------------


@needs_root
def test_cannot_read_other_plugins_secrets_or_anything_outside_its_view(fleet):
    state = fleet.state
    fetcher = fleet.plugin("fetcher")["confinement"]
    # The victim really keeps a secret in its data dir (an image only it mounts).
    own_secret = "/run/precinct/sandbox/data/secret.txt"
    assert fleet.probe("read", own_secret, plugin="fetch") == {own_secret: "ok"}
    victim_data = fetcher["data_dir"]
    # Outside the directories hidden from it (/var/cache is not), so that only Landlock refuses it.
    public_dir = Path("/var/cache") / f"precinct-attack-{secrets.token_hex(4)}"
    public_dir.mkdir(mode=0o755)
    public = public_dir / "public.txt"
    public.write_text("world-readable, outside the sandbox\n")
    os.chmod(public, 0o644)
    try:
        targets = [
            str(state / "nats" / "creds" / "plugins" / "fetcher.creds"),   # the victim's NATS creds
            fetcher["creds"],                                               # its copy, 0400 for its uid
            victim_data,                                                    # its data (the image)
            str(Path(victim_data).with_suffix("")),                         # or a plain dir, were there one
            str(state / "nats" / "creds" / "core.creds"),
            str(state / "control.token"),
            str(public),                                                    # only Landlock stops this one
        ]
        result = fleet.probe("read", *targets)
        leaked = {path: outcome for path, outcome in result.items() if outcome == "ok"}
        assert not leaked, leaked
        assert result[str(public)] == "EACCES", result
        listing = fleet.probe("list", str(state), "/root", "/var/tmp")
        assert all(not v.startswith("ok") for v in listing.values()), listing
        # What it is granted still works (positive control).
        own = fleet.probe("read", "/run/precinct/sandbox/nats.creds", "/run/precinct/sandbox/code/plugin.py",
                          "/run/precinct/sandbox/data/secret.txt")
        assert set(own.values()) == {"ok"}, own
    finally:
        shutil.rmtree(public_dir)


@needs_root
def test_cannot_write_outside_its_data_dir(fleet):
    name = f"precinct-attack-{secrets.token_hex(4)}"
    outside = [f"/tmp/{name}", f"/dev/shm/{name}", f"/var/tmp/{name}", f"/run/precinct/sandbox/code/{name}",
               f"/run/precinct/sandbox/{name}", str(fleet.state / name)]
    result = fleet.probe("write", *outside, f"/run/precinct/sandbox/data/{name}")
    assert result.pop(f"/run/precinct/sandbox/data/{name}") == "ok"
    written = {p: v for p, v in result.items() if v == "ok"}
    for path in outside:
        with contextlib.suppress(OSError):
            os.unlink(path)
    assert not written, written
    assert result[f"/tmp/{name}"] == "EACCES", result      # /tmp is 1777: Landlock, not file modes
    inside = f"/run/precinct/sandbox/data/{name}"
    assert fleet.probe("read", inside) == {inside: "ok"}           # it is really there
    assert fleet.probe("remove", inside) == {inside: "ok"}


@needs_root
def test_data_dir_is_capped_by_disk_limit(fleet):
    info = fleet.plugin("prober")
    assert info["limits"]["disk_bytes"] == 16 * MiB
    big = "/run/precinct/sandbox/data/big"
    try:
        outcome = fleet.probe("fill", f"{big}=64")[f"{big}=64"]     # bounded: 64 MiB even unconfined
        error, _, written = outcome.partition(":")
        assert error in ("ENOSPC", "EDQUOT"), outcome
        assert int(written) < 16, outcome
    finally:
        fleet.probe("remove", big)
    assert info["enforcement"]["disk"].startswith("ext4 image 16 MiB"), info["enforcement"]
    # The host filesystem never saw those bytes: the image stays at its size.
    assert Path(info["confinement"]["data_dir"]).stat().st_size == 16 * MiB


# -- network -----------------------------------------------------------------------


@needs_root
def test_network_reaches_nats_only(fleet, owned):
    status = fleet.status()
    nats_port = int(status["nats"].rsplit(":", 1)[1])
    loopback = Listener("127.0.0.1")
    # Landlock allows connecting to the NATS port number on ANY address; the
    # network namespace keeps this listener out of reach.
    same_port = Listener("127.0.0.2", nats_port)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.5)
    udp_target = f"127.0.0.1:{udp.getsockname()[1]}"
    try:
        assert set(owned.reachable_from_host().values()) == {"ok"}     # from the host they all answer
        hits = len(owned.hits())
        tcp = fleet.probe("connect", loopback.address, f"127.0.0.2:{nats_port}", f"{owned.v4}:80",
                          f"[{owned.mapped}]:80", f"[{owned.v6['NAT64']}]:80", f"[{owned.v6['6to4']}]:80")
        assert all(v != "ok" for v in tcp.values()), tcp
        assert len(owned.hits()) == hits, owned.hits()[hits:]
        control = fleet.probe("unix", str(fleet.state / "control.sock"))
        assert control[str(fleet.state / "control.sock")] != "ok", control
        sent = fleet.probe("udp", udp_target)
        assert sent[udp_target].startswith("socket:"), sent     # seccomp refuses the socket itself
        raw = fleet.probe("raw")
        assert "ok" not in raw.values(), raw
        assert fleet.probe("iouring") == "EPERM"                  # io_uring would bypass the socket filter
        assert fleet.probe("unshare") == "EPERM"
        time.sleep(0.3)
        assert loopback.accepted == 0 and same_port.accepted == 0, (loopback.accepted, same_port.accepted)
        with pytest.raises(socket.timeout):
            udp.recvfrom(100)
    finally:
        loopback.close()
        same_port.close()
        udp.close()
    # And NATS itself works: every answer above came over a handed-in socket.
    assert fleet.plugin("prober")["state"] == "Running"


def _running_again(fleet: Fleet, plugin_id: str) -> None:
    """Wait until `plugin_id` runs, resuming it if its refusals got it suspended
    (the ladder: warn, restart, suspend), so the next test finds it running."""
    def check(status: dict) -> bool:
        state = status["plugins"][plugin_id]["state"]
        if state == "Suspended":
            precinct("plugin", "resume", plugin_id, "--state-dir", str(fleet.state))
        return state == "Running"

    fleet.up.wait_for(check, f"{plugin_id} running", 120)


@needs_root
@pytest.mark.parametrize("variant", ["fd", "dup", "dupfd", "scm", "child"])
def test_a_handed_in_nats_socket_reaches_nats_only(fleet, owned, variant):
    """The NATS socket the monitor hands in belongs to the host's network
    namespace. Disconnected (connect AF_UNSPEC) and connected again, by the
    plugin, through any copy of its descriptor or from a forked child, it
    reaches the NATS server and nothing else (the connect fence); it cannot
    listen (seccomp), bind (the fence, Landlock), connect by a Fast Open
    send (seccomp), or change owner, and socket options change none of that."""
    nats_port = int(fleet.status()["nats"].rsplit(":", 1)[1])
    loopback = Listener("127.0.0.1")
    same_port = Listener("127.0.0.2", nats_port)        # the NATS port on another host address
    try:
        assert set(owned.reachable_from_host().values()) == {"ok"}
        hits = len(owned.hits())
        targets = [f"127.0.0.1:{nats_port}", same_port.address, loopback.address, f"{owned.v4}:80",
                   f"{owned.v4}:{nats_port}"]
        # Its own plugin: these refusals are strikes, and the ladder may restart it between variants.
        _running_again(fleet, "sockprobe")
        result = fleet.probe("handoff", variant, *targets, plugin="sock")
        assert isinstance(result, dict), result
        assert result["disconnect"] == "ok", result
        assert result[f"127.0.0.1:{nats_port}"] == "ok:INFO", result      # the one way that works: NATS
        for target in targets[1:]:
            # On the NATS port Landlock lets the call through and the fence refuses it (EPERM);
            # on other ports Landlock refuses first (EACCES).
            assert result[target] == ("EPERM" if target.endswith(f":{nats_port}") else "EACCES"), (target, result)
        assert result["listen"] == "EPERM" and result["bind"] in ("EACCES", "EPERM"), result
        assert result["fastopen"] == "EPERM", result
        # Binding to a device needs no privilege (and changes no address: the fence
        # still checks every connect, as the results above show); the rest need capabilities.
        for option in ("mark", "transparent", "repair", "fchown"):
            assert result[option] == "EPERM", (option, result)
        time.sleep(0.3)
        assert loopback.accepted == 0 and same_port.accepted == 0, (loopback.accepted, same_port.accepted)
        assert len(owned.hits()) == hits, owned.hits()[hits:]
        # The monitor counts what it hands out (status `confinement.nats_sockets`): at least the
        # runner's socket. (Refusals above are strikes: the ladder may have restarted it.)
        _running_again(fleet, "sockprobe")
        assert fleet.plugin("sockprobe")["confinement"]["nats_sockets"].get("handed", 0) >= 1
    finally:
        loopback.close()
        same_port.close()


@needs_root
def test_no_supervisor_copies_plugin_traffic(fleet):
    """With the handoff, the supervisor's only TCP connections to NATS are its own
    clients' (platform, system account, dashboard: at most 3), none per plugin
    (the relay held one or more for each)."""
    status = fleet.status()
    nats_port = int(status["nats"].rsplit(":", 1)[1])
    supervisor = json.loads((fleet.state / "endpoint.json").read_text())["pid"]
    inodes = {os.stat(f"/proc/{supervisor}/fd/{fd}").st_ino for fd in os.listdir(f"/proc/{supervisor}/fd")
              if os.readlink(f"/proc/{supervisor}/fd/{fd}").startswith("socket:")}
    to_nats = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == nats_port and int(fields[9]) in inodes:
            to_nats += 1
    assert to_nats <= 3, f"the supervisor holds {to_nats} connections to NATS for {len(PLUGINS)} plugins"
    assert all(status["plugins"][p]["enforcement"]["network"] == "netns+handoff" for p in PLUGINS)


@needs_root
def test_http_requests_cannot_reach_loopback_or_private_addresses(fleet, owned):
    """Through the proxy, every spelling of loopback and of an owned private
    address (IPv4, mapped, and each IPv6 form embedding it) is refused with
    403, and nothing arrives; the allowed loopback stand-in answers (so the
    proxy path works); around the proxy nothing connects."""
    port80 = None
    with contextlib.suppress(OSError):
        port80 = Listener("127.0.0.1", 80)
    try:
        assert set(owned.reachable_from_host().values()) == {"ok"}
        hits = len(owned.hits())
        loopback = ["http://127.0.0.1/", "http://localhost/", "https://127.0.0.1/", "http://[::1]/",
                    "http://[::ffff:127.0.0.1]/", "http://[::7f00:1]/", "http://[::ffff:0:7f00:1]/",
                    "http://2130706433/", f"http://127.0.0.1:{fleet.standin.port + 1}/"]
        urls = loopback + list(owned.urls().values())
        result: dict[str, str] = {}
        for batch in (urls[i:i + 4] for i in range(0, len(urls), 4)):     # answers are cut past ~2000 characters
            answer = fleet.ask("!fetch http " + " ".join(batch), timeout=60)
            assert isinstance(answer, dict), answer
            result.update(answer)
        for url in urls:
            outcome = result[url]
            assert "403" in outcome, (url, outcome)
            assert url.startswith("https") or "precinct egress proxy" in outcome, (url, outcome)
        assert len(owned.hits()) == hits, owned.hits()[hits:]
        allowed = f"http://{fleet.standin.address}/through-the-proxy"
        assert fleet.probe("http", allowed, plugin="fetch")[allowed] == "ok:200"
        assert fleet.standin.paths == ["/through-the-proxy"]
        who = fleet.probe("whoami", plugin="fetch")
        nats_port = int(fleet.status()["nats"].rsplit(":", 1)[1])
        # The proxy listens on the NATS port inside: the one TCP port the sandbox may use.
        assert who["env_proxy"] == f"http://127.0.0.1:{nats_port}", who
        assert "PRECINCT_EGRESS_TEST_ALLOW" in fleet.plugin("fetcher")["enforcement"]["egress"]
        # Going around the proxy does not work either.
        direct = fleet.probe("connect", "127.0.0.1:80", fleet.standin.address, f"{owned.v4}:80", plugin="fetch")
        assert "ok" not in direct.values(), direct
        assert fleet.standin.paths == ["/through-the-proxy"] and len(owned.hits()) == hits
        if port80 is not None:
            time.sleep(0.3)
            assert port80.accepted == 0
    finally:
        if port80 is not None:
            port80.close()


@needs_root
def test_host_unix_sockets_are_out_of_reach(fleet):
    """World-writable unix sockets in the host's /tmp, /run and /dev/shm:
    Landlock does not cover connect(); the plugin's own empty tmpfs over those
    directories does (the path does not exist for it)."""
    tag = secrets.token_hex(4)
    listeners = [UnixListener(f"{d}/precinct-attack-{tag}.sock") for d in ("/tmp", "/run", "/dev/shm")]
    try:
        for listener in listeners:                      # positive control: reachable from the host
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(listener.path)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(x.accepted == 0 for x in listeners):
            time.sleep(0.05)
        before = [x.accepted for x in listeners]
        assert before == [1, 1, 1], before
        result = fleet.probe("unix", *(x.path for x in listeners))
        assert result == {x.path: "ENOENT" for x in listeners}, result
        time.sleep(0.3)
        assert [x.accepted for x in listeners] == before
    finally:
        for listener in listeners:
            listener.close()


# -- processes -----------------------------------------------------------------------


@needs_root
def test_cannot_signal_ptrace_or_see_other_processes(fleet):
    status = fleet.status()
    victims = [fleet.up.proc.pid, status["services"]["nats"]["pid"],
               status["plugins"]["fetcher"]["confinement"]["runner_pid"], status["plugins"]["fetcher"]["pid"]]
    targets = [str(v) for v in victims] + ["1"]     # 1: its own trusted init
    killed = fleet.probe("kill", *targets)
    assert all(v != "ok" for v in killed.values()), killed
    traced = fleet.probe("ptrace", *targets)
    assert all(v != "ok" for v in traced.values()), traced
    for pid in victims:
        assert pid_alive(pid)
    seen = fleet.probe("procs")
    uid = fleet.plugin("prober")["confinement"]["uid"]
    assert seen and len(seen) <= 4, seen
    assert all(info["uid"] == uid for info in seen.values()), seen
    assert not any(word in info["cmd"] for info in seen.values() for word in ("nats-server", "precinct.cli", "confine.init")), seen


@needs_root
def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> set[int]:
    return {int(x) for task in Path(f"/proc/{pid}/task").iterdir() for x in (task / "children").read_text().split()}


def test_fork_bomb_is_stopped_and_nothing_outlives_a_sigkilled_supervisor(fleet):
    info = fleet.assert_confined("orphanbomb")
    pids_dir = Path(info["confinement"]["cgroups"]["pids"])
    limit = info["limits"]["pids"]
    assert limit == 16
    bomb = fleet.ask("!bomb")
    assert bomb["error"] == "EAGAIN", bomb
    assert 0 < bomb["forked"] < limit, bomb
    assert int((pids_dir / "pids.current").read_text()) <= limit

    status = fleet.status()
    uids = [p["confinement"]["uid"] for p in status["plugins"].values()]
    plugin_pids = {pid for uid in uids for pid in processes_of_uid(uid)}
    # Each instance's trusted monitor (the pid status shows) and its ns-init;
    # and the template that forked them (confine/template.py), if one did.
    monitors = {p["pid"] for p in status["plugins"].values() if p.get("pid")}
    inits = monitors | {child for m in monitors for child in _children(m)}
    templates = {_ppid(m) for m in monitors} - {fleet.up.proc.pid}
    cgroup_pids = {pid for p in status["plugins"].values() for d in p["confinement"]["cgroups"].values()
                   for pid in map(int, (Path(d) / "cgroup.procs").read_text().split())}
    assert len(plugin_pids) > limit // 2 and len(inits) == 2 * len(PLUGINS), (plugin_pids, inits)
    everything = plugin_pids | inits | templates | cgroup_pids

    os.kill(fleet.up.proc.pid, signal.SIGKILL)
    fleet.up.proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(pid_alive(p) for p in everything):
        time.sleep(0.1)
    survivors = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in everything if pid_alive(p)}
    assert not survivors, survivors
    for uid in uids:
        assert not processes_of_uid(uid), uid


# -- units: no root, no processes ---------------------------------------------------


def test_unprivileged_supervisor_reports_every_protection_missing():
    from precinct.confine.host import UnprivilegedConfinement

    enf = UnprivilegedConfinement().enforcement("x")
    for key in ("uid", "memory", "cpu", "pids", "pidns", "landlock", "seccomp", "network"):
        assert enf[key].startswith("MISSING: the supervisor is not root"), (key, enf[key])


def test_limits_enforced_condition_names_the_gaps():
    from precinct.runtime.slot import Slot, RestartPolicy
    from precinct.runtime.supervisor import _limits_condition

    async def launcher(_instance):
        raise AssertionError

    async def pinger(_instance, _deadline):
        return False

    slot = Slot("x", launcher, pinger, RestartPolicy())
    _limits_condition(slot, {"memory": "cgroup-v1", "seccomp": "MISSING: disabled"})
    cond = {c["type"]: c for c in slot.conditions.to_list()}["LimitsEnforced"]
    assert cond["status"] == "False" and cond["reason"] == "NotEnforced" and "seccomp" in cond["message"]
    _limits_condition(slot, {"memory": "cgroup-v1"})
    cond = {c["type"]: c for c in slot.conditions.to_list()}["LimitsEnforced"]
    assert cond["status"] == "True"


@needs_root
def test_the_connect_fence_lives_as_long_as_the_supervisor(tmp_path):
    with Fleet.started(tmp_path, ("prober",), running=("prober",), timeout=180) as fleet:
        fence = Path(fleet.plugin("prober")["confinement"]["nats_fence"])
        assert (fence / "cgroup.procs").is_file()
        monitors = [int(p) for p in (fence / "cgroup.procs").read_text().split()]
        assert monitors, "the prober's monitor makes its sockets from inside the fence"
    assert not fence.exists(), f"{fence} outlived its supervisor"


@needs_root
def test_without_the_handoff_nats_is_relayed_and_status_says_why(tmp_path):
    """The fallback (a host without cgroup v2 or cgroup BPF, or `handoff`
    switched off): the supervisor relays NATS, the plugin works, the port
    rule still keeps it in, and status names the mechanism and the reason."""
    with Fleet.started(tmp_path, ("prober",), running=("prober",), timeout=180,
                       env={"PRECINCT_CONFINE_DISABLE": "handoff"}) as fleet:
        info = fleet.plugin("prober")
        assert info["enforcement"]["network"] == "netns+relay", info["enforcement"]
        assert "handoff disabled" in info["confinement"]["network_relayed_because"], info["confinement"]
        assert "nats_sockets" not in info["confinement"]
        nats_port = int(fleet.status()["nats"].rsplit(":", 1)[1])
        same_port = Listener("127.0.0.2", nats_port)
        try:
            result = fleet.probe("connect", same_port.address)          # answered: NATS works through the relay
            assert result[same_port.address] != "ok", result
            assert fleet.probe("handoff", "fd", same_port.address) in ("EBADF", "ENOTSOCK")   # no channel to ask
            time.sleep(0.3)
            assert same_port.accepted == 0
        finally:
            same_port.close()


def test_disabled_layers_are_reported_not_silent(tmp_path):
    from precinct.confine.host import HostConfinement

    with pytest.raises(ValueError):
        HostConfinement(tmp_path, disable=["nonsense"])
    assert HostConfinement(tmp_path, disable=["seccomp"]).disabled == {"seccomp"}


def test_uids_are_stable_distinct_and_in_range(tmp_path):
    from precinct.confine.uids import allocate

    table = tmp_path / "uids.json"
    for name in ("s1", "s2", "s3"):
        (tmp_path / name).mkdir()
    a = allocate(tmp_path / "s1", "dice", table=table)
    assert allocate(tmp_path / "s1", "dice", table=table) == a
    b = allocate(tmp_path / "s2", "dice", table=table)       # another supervisor's "dice"
    c = allocate(tmp_path / "s1", "markov", table=table)
    assert len({a, b, c}) == 3
    assert all(61000 <= u <= 61999 for u in (a, b, c))
    small = [allocate(tmp_path / "s3", f"p{i}", table=table, base=62000, count=3) for i in range(3)]
    assert sorted(small) == [62000, 62001, 62002]
    with pytest.raises(Exception, match="no free uid"):
        allocate(tmp_path / "s3", "p4", table=table, base=62000, count=3)
    (tmp_path / "s3").rmdir()          # a state dir that is gone gives its uids back
    assert allocate(tmp_path / "s1", "p4", table=table, base=62000, count=3) in small


def test_seccomp_program_is_well_formed():
    from precinct.confine import seccomp

    for arch in seccomp.SYSCALLS:
        program = seccomp.build(arch)
        assert len(program) % 8 == 0 and 0 < len(program) // 8 < 4096
    assert seccomp.build("x86_64") == seccomp.build("x86_64")


def test_cgroup_v2_detection_and_files_on_a_fake_tree(tmp_path):
    from precinct.confine.cgroups import CgroupError, CgroupHost

    root = tmp_path / "sys" / "fs" / "cgroup"
    own = root / "system.slice" / "precinct.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (own / "cgroup.subtree_control").write_text("")
    (own / "cgroup.procs").write_text("")
    mountinfo = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    host = CgroupHost.detect("precinct-t", mountinfo=mountinfo, proc_cgroup="0::/system.slice/precinct.service\n",
                             prefix=tmp_path)
    assert host.version == "v2"
    # A fake tree does not create interface files on mkdir: pre-create what create() writes/reads.
    parent = own / "precinct-t"
    group_dir = parent / "dice"
    group_dir.mkdir(parents=True)
    (parent / "cgroup.subtree_control").write_text("")
    for name, value in (("memory.max", "67108864"), ("cpu.max", "25000 100000"), ("pids.max", "32"),
                        ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"), ("cgroup.procs", ""),
                        ("memory.current", "1234"), ("cpu.stat", "usage_usec 2500000\nnr_throttled 7\n")):
        (group_dir / name).write_text(value)
    from precinct.confine.cgroups import PluginCgroup

    group = PluginCgroup(host, "dice")
    group.set_limits(250, 64 * MiB, 32)
    assert (group_dir / "memory.max").read_text() == str(64 * MiB)
    assert (group_dir / "cpu.max").read_text() == "25000 100000"
    assert (group_dir / "pids.max").read_text() == "32"
    assert group.expected_paths() == {"": "/system.slice/precinct.service/precinct-t/dice"}
    assert group.oom_baseline == 1
    (group_dir / "memory.events").write_text("oom 2\noom_kill 2\n")
    assert group.oom_killed_since_start()
    assert group.cpu_seconds() == 2.5 and group.memory_bytes() == 1234
    # v2 mounted but without our controllers (these machines: only hugetlb) -> v1 or an error, never v2.
    (own / "cgroup.controllers").write_text("hugetlb\n")
    with pytest.raises(CgroupError, match="lacks memory"):
        CgroupHost.detect("precinct-t", mountinfo=mountinfo, proc_cgroup="0::/system.slice/precinct.service\n",
                          prefix=tmp_path)


def test_cgroup_v2_instance_leaves_on_a_fake_tree(tmp_path):
    """v2 (not this host): the plugin cgroup hands memory, cpu and pids to its
    leaves; a leaf gets its own memory and pids limits and no CPU quota (the
    plugin's is shared); members are expected in the leaf."""
    from precinct.confine.cgroups import CgroupHost

    root = tmp_path / "sys" / "fs" / "cgroup"
    own = root / "system.slice" / "precinct.service"
    plugin = own / "precinct-t" / "dice"
    leaf = plugin / "i-abc123"
    leaf.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpu memory pids\n")
    for d in (own, own / "precinct-t", plugin):
        (d / "cgroup.subtree_control").write_text("")
        (d / "cgroup.procs").write_text("")
    for name, value in (("cpu.max", "max 100000"), ("cgroup.procs", ""), ("memory.events", "oom_kill 0\n")):
        (leaf / name).write_text(value)
    mountinfo = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    host = CgroupHost.detect("precinct-t", mountinfo=mountinfo, proc_cgroup="0::/system.slice/precinct.service\n",
                             prefix=tmp_path)
    group = host.plugin_group("dice", fresh=False)
    assert (plugin / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    instance = host.instance_group(group, "abc123", 64 * MiB, 32)
    assert (leaf / "memory.max").read_text() == str(64 * MiB) and (leaf / "pids.max").read_text() == "32"
    assert (leaf / "cpu.max").read_text() == "max 100000"
    assert instance.expected_paths() == {"": "/system.slice/precinct.service/precinct-t/dice/i-abc123"}
    assert instance.limits()["cpu_quota_us"] == -1


@needs_root
def test_instance_leaves_and_the_plugin_backstop_on_this_hosts_cgroups(tmp_path):
    """Real cgroups: two instances of one plugin, each with its own memory and
    pids limit in its leaf; the plugin cgroup holds the CPU quota and a
    backstop raised (never lowered) to cover both, even when the second
    instance's limit is larger (v1: memsw must be raised before memory).
    Releasing one leaves the other and the plugin cgroup; the last takes the
    plugin cgroup with it."""
    import subprocess
    from types import SimpleNamespace

    from precinct.confine.host import HostConfinement, _Instance, _Plugin

    host = HostConfinement(tmp_path, disable=[])
    cgroups = host.capabilities().cgroups
    if cgroups is None:
        pytest.skip(f"no usable cgroups: {host.capabilities().cgroups_problem}")
    p = _Plugin("twin")
    host._plugins["twin"] = p

    async def scenario():
        old = p.instances["aaaaaa"] = _Instance("aaaaaa", tmp_path / "a")
        old.cgroup = await host._instance_cgroup(p, old, cgroups, SimpleNamespace(
            memory_bytes=64 * MiB, pids=16, cpu_millicores=200))
        assert p.backstop == (128 * MiB, 32)
        new = p.instances["bbbbbb"] = _Instance("bbbbbb", tmp_path / "b")
        new.cgroup = await host._instance_cgroup(p, new, cgroups, SimpleNamespace(
            memory_bytes=256 * MiB, pids=8, cpu_millicores=100))
        assert p.backstop == (512 * MiB, 32)            # twice the new one's memory; the pids backstop kept
        assert old.cgroup.limits()["memory"] == 64 * MiB and new.cgroup.limits()["memory"] == 256 * MiB
        assert old.cgroup.limits()["pids"] == 16 and new.cgroup.limits()["pids"] == 8
        shared = p.cgroup.limits()
        assert shared["memory"] == 512 * MiB and shared["pids"] == 32, shared
        assert shared["cpu_quota_us"] == 100 * shared["cpu_period_us"] // 1000     # the newest plan's, shared
        assert old.cgroup.limits()["cpu_quota_us"] == -1                           # none of its own
        proc = subprocess.Popen(["sleep", "30"])
        try:
            for d in old.cgroup.dirs():
                (d / "cgroup.procs").write_text(str(proc.pid))
            assert old.cgroup.membership_problems(proc.pid) == []
            assert new.cgroup.membership_problems(proc.pid)               # in its own leaf, not the other's
            assert host._lookup_owner(proc.pid, 0) == "twin"               # an instance leaf maps to its plugin
            await host.release("twin", "bbbbbb")
            assert proc.poll() is None and all(d.is_dir() for d in old.cgroup.dirs())
            assert not any(d.is_dir() for d in new.cgroup.dirs()) and p.cgroup is not None
            await host.release("twin", "aaaaaa")                            # the last: kills what is left
            assert proc.wait(10) == -signal.SIGKILL
            assert p.cgroup is None and not any(d.is_dir() for d in old.cgroup.dirs())
        finally:
            proc.kill()
            proc.wait()

    asyncio.run(scenario())


def test_cgroup_v1_detection_matches_this_kind_of_host(tmp_path):
    from precinct.confine.cgroups import CgroupHost

    mountinfo = "\n".join([
        "35 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
        "36 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
        "37 30 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids",
        "38 30 0:33 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw",
    ])
    proc = "4:memory:/job/1\n2:cpu,cpuacct:/\n8:pids:/\n0::/\n"
    (tmp_path / "sys/fs/cgroup/unified").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/unified/cgroup.controllers").write_text("hugetlb\n")
    host = CgroupHost.detect("precinct-t", mountinfo=mountinfo, proc_cgroup=proc, prefix=tmp_path)
    assert host.version == "v1"
    assert host.hierarchies["memory"].own == "/job/1"
    assert host.hierarchies["cpu"] is host.hierarchies["cpuacct"]
    from precinct.confine.cgroups import PluginCgroup

    group = PluginCgroup(host, "dice")
    assert group.expected_paths() == {"memory": "/job/1/precinct-t/dice", "cpu,cpuacct": "/precinct-t/dice",
                                      "pids": "/precinct-t/dice"}


def test_egress_proxy_tunnels_only_to_what_it_checked():
    """The proxy end to end on loopback, with a resolver and policy under test
    control: the allowed name goes to the checked address, the refused one
    never connects."""
    from precinct.confine.egress import EgressProxy

    async def scenario() -> None:
        hits: list[bytes] = []

        async def origin(reader, writer):
            hits.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(origin, "127.0.0.1", 0)
        origin_port = server.sockets[0].getsockname()[1]

        async def resolver(host, _port):
            return {"good.example": ["127.0.0.1"], "evil.example": ["127.0.0.2"]}[host]

        proxy = EgressProxy(resolver=resolver, allowed_ports=(origin_port,),
                            check=lambda a: None if a == "127.0.0.1" else f"{a} refused")
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        front = proxy.server("test", listener)
        await front.start()

        async def request(raw: bytes) -> bytes:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(raw)
            await w.drain()
            data = await asyncio.wait_for(r.read(), 5)
            w.close()
            return data

        ok = await request(f"GET http://good.example:{origin_port}/path HTTP/1.1\r\nHost: good.example\r\n"
                           f"Proxy-Authorization: x\r\n\r\n".encode())
        assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b"hi"), ok
        assert hits and hits[0].startswith(b"GET /path HTTP/1.1") and b"Proxy-Authorization" not in hits[0]
        refused = await request(f"GET http://evil.example:{origin_port}/ HTTP/1.1\r\n\r\n".encode())
        assert refused.startswith(b"HTTP/1.1 403") and b"127.0.0.2 refused" in refused
        port_refused = await request(b"CONNECT good.example:22 HTTP/1.1\r\n\r\n")
        assert port_refused.startswith(b"HTTP/1.1 403") and b"port 22" in port_refused
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(f"CONNECT good.example:{origin_port} HTTP/1.1\r\n\r\n".encode())
        assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(r.read(), 5)).endswith(b"hi")
        w.close()
        assert len(hits) == 2
        front.close()
        server.close()

    asyncio.run(scenario())
