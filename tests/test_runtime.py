"""The single-host runtime with real processes: `precinct up`, `say`, status,
crash isolation, clean stop, live removal."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time

from runtime_support import PRECINCT, pid_alive, precinct, processes_mentioning


def test_say_round_trip_and_clear_errors(fleet):
    start, _plugins, state = fleet
    up = start("dice-roller", "8ball")
    up.wait_running("dice-roller", "eightball")

    rolled = up.say("!roll 2d6")
    assert rolled.returncode == 0, rolled.stderr
    numbers = [int(n) for n in re.findall(r"\d+", rolled.stdout)]
    assert numbers and any(2 <= n <= 12 for n in numbers), rolled.stdout

    asked = up.say("!8ball will it work?", "--user", "alice")
    assert asked.returncode == 0 and asked.stdout.strip(), asked.stderr

    unknown = up.say("!nosuchcommand")
    assert unknown.returncode == 1
    assert "no plugin handles !nosuchcommand" in unknown.stderr

    bad = up.say("!roll 5000d6")
    assert bad.returncode == 3 and bad.stderr.strip()

    # Plain chat is published and not answered.
    assert up.say("hello everyone").returncode == 0

    creds = precinct("creds", "core", "--state-dir", str(state))
    assert creds.returncode == 0, creds.stderr
    url, path = creds.stdout.splitlines()
    endpoint = json.loads((state / "endpoint.json").read_text())
    assert url == f"NATS_URL={endpoint['nats']}" and url.startswith("NATS_URL=nats://127.0.0.1:")
    assert path == f"NATS_CREDS={endpoint['core_creds']}" and path.endswith(".creds")
    as_json = json.loads(precinct("creds", "core", "--json", "--state-dir", str(state)).stdout)
    assert as_json == {"nats": endpoint["nats"], "creds": endpoint["core_creds"]}


def test_status_shows_version_and_revision_across_a_reload(fleet):
    start, plugins, state = fleet
    up = start("dice-roller")
    status = up.wait_running("dice-roller")
    dice = status["plugins"]["dice-roller"]
    assert dice["version"] == "1.0.0" and dice["revision"] == 1, dice
    assert re.fullmatch(r"[0-9a-f]{12}", dice["digest"]), dice
    text = precinct("status", "--state-dir", str(state))
    assert text.returncode == 0 and "VERSION" in text.stdout and "1.0.0 r1" in text.stdout, text.stdout

    # A new version is hot-reloaded: the same code, revision 2.
    manifest = plugins / "dice-roller" / "plugin.yaml"
    manifest.write_text(manifest.read_text().replace("version: 1.0.0", "version: 1.0.1", 1))
    status = up.wait_for(lambda s: s["plugins"]["dice-roller"].get("version") == "1.0.1"
                         and s["plugins"]["dice-roller"]["state"] == "Running", "version 1.0.1 running")
    dice2 = status["plugins"]["dice-roller"]
    assert dice2["revision"] == 2 and dice2["digest"] == dice["digest"], dice2
    assert "1.0.1 r2" in precinct("status", "--state-dir", str(state)).stdout
    assert up.say("!roll 1d6").returncode == 0


def test_status_from_memory_follows_state_changes_and_one_plugin_gets_kernel_counters(fleet):
    """`precinct status` reads no file per plugin (CPU and memory are the
    monitor's last sample), yet a change of state shows at once, not one
    sample later; `precinct status ID` measures that plugin now."""
    start, plugins, state = fleet
    up = start("dice-roller", "8ball")
    up.wait_running("dice-roller", "eightball")
    status = up.wait_for(lambda s: all(p["memory_bytes"] > 0 for p in s["plugins"].values()),
                         "the monitor's sample of every plugin's memory", 60)
    for p in status["plugins"].values():
        # The sandbox as set up, limits read back at start: no kernel counters for the whole fleet.
        assert not {"cgroup_pids", "oom_kills", "cpu_stat", "pids_refused"} & set(p["confinement"]), p["confinement"]
        if p["enforcement"].get("memory", "").startswith("cgroup-"):
            assert p["confinement"]["limits"]["memory"] == p["limits"]["memory_bytes"], p

    one = up.status(plugin="dice-roller")
    assert list(one["plugins"]) == ["dice-roller"] and one["services"], one
    dice = one["plugins"]["dice-roller"]
    assert dice["state"] == "Running" and dice["memory_bytes"] > 0, dice
    if dice["enforcement"].get("memory", "").startswith("cgroup-"):     # confined (as root)
        conf = dice["confinement"]
        assert conf["runner_pid"] in conf["cgroup_pids"] and conf["pids_refused"] == 0, conf
        assert "nr_throttled" in conf["cpu_stat"] and conf["oom_kills"] == 0, conf
    text = precinct("status", "dice-roller", "--state-dir", str(state))
    assert text.returncode == 0 and "dice-roller" in text.stdout and "eightball" not in text.stdout, text.stdout
    unknown = precinct("status", "nosuch", "--state-dir", str(state))
    assert unknown.returncode != 0 and "no plugin 'nosuch'" in unknown.stderr and "dice-roller" in unknown.stderr

    # A crash shows as soon as the supervisor sees the exit; a removed plugin
    # is gone from status once it is stopped. Generous deadlines: the CLI
    # alone can take seconds to start on a loaded machine.
    restarts = status["plugins"]["eightball"]["restarts"]
    os.kill(status["plugins"]["eightball"]["pid"], signal.SIGKILL)
    up.wait_for(lambda s: s["plugins"]["eightball"]["restarts"] > restarts, "the killed plugin's restart", 60)
    (plugins / "dice-roller" / "plugin.yaml").unlink()
    after = up.wait_for(lambda s: "dice-roller" not in s["plugins"], "the removed plugin gone from status", 60)
    assert after["plugins"]["eightball"]["state"] in ("Running", "Starting", "BackOff"), after["plugins"]["eightball"]


def test_second_up_on_the_same_state_dir_refuses(fleet):
    start, _plugins, _state = fleet
    first = start("8ball")
    first.wait_running("eightball")
    second = start()
    assert second.proc.wait(60) == 1
    assert "already running" in second.output()
    assert first.proc.poll() is None


def test_crash_loop_is_contained(fleet):
    start, _plugins, state = fleet
    up = start("crasher", "8ball")
    up.wait_running("eightball")
    status = up.wait_for(lambda s: s["plugins"]["crasher"]["state"] == "CrashLoopBackOff",
                         "crasher in CrashLoopBackOff", timeout=120)
    crasher = status["plugins"]["crasher"]
    assert re.fullmatch(r"ExitCode[1-9]\d*", crasher["last_exit"]), crasher
    assert crasher["restarts"] >= 3
    assert any("crasher" in line.lower() for line in crasher["stderr_tail"]), crasher["stderr_tail"]
    ready = next(c for c in crasher["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "CrashLoopBackOff"
    # Meanwhile the well-behaved plugin keeps answering, and kept its process.
    eightball_pid = status["plugins"]["eightball"]["pid"]
    for _ in range(3):
        assert up.say("!8ball still there?").returncode == 0
    assert up.status()["plugins"]["eightball"]["pid"] == eightball_pid

    # `precinct logs`: the crasher's captured output, plain and --json.
    logs = precinct("logs", "crasher", "--state-dir", str(state))
    assert logs.returncode == 0, logs.stderr
    assert "CRASHER-FIXTURE" in logs.stdout, logs.stdout
    as_json = json.loads(precinct("logs", "crasher", "--json", "--state-dir", str(state)).stdout)
    assert as_json["plugin"] == "crasher" and any("CRASHER-FIXTURE" in ln for ln in as_json["lines"])
    assert as_json["next"] >= len(as_json["lines"]) > 0
    assert len(precinct("logs", "crasher", "-n", "1", "--state-dir", str(state)).stdout.splitlines()) == 1
    unknown = precinct("logs", "nosuchplugin", "--state-dir", str(state))
    assert unknown.returncode == 1 and "no plugin 'nosuchplugin'" in unknown.stderr, unknown
    assert "crasher" in unknown.stderr and "Traceback" not in unknown.stderr + unknown.stdout

    # -f follows: show the last line, then the next crash's lines as they come; Ctrl-C ends it cleanly.
    follower = subprocess.Popen([*PRECINCT, "logs", "crasher", "-f", "-n", "1", "--interval", "0.2",
                                 "--state-dir", str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen, deadline = b"", time.monotonic() + 120
        while time.monotonic() < deadline and seen.count(b"CRASHER-FIXTURE") < 3:
            ready, _, _ = select.select([follower.stdout], [], [], 1)
            if ready:
                chunk = os.read(follower.stdout.fileno(), 65536)
                if not chunk:
                    break
                seen += chunk
        assert seen.count(b"CRASHER-FIXTURE") >= 3, (seen, follower.poll())
        follower.send_signal(signal.SIGINT)
        assert follower.wait(60) == 0
        assert b"Traceback" not in follower.stderr.read()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_sigterm_stops_everything_and_leaves_nothing(fleet):
    start, _plugins, state = fleet
    up = start("dice-roller", "8ball")
    status = up.wait_running("dice-roller", "eightball")
    pids = [p["pid"] for p in status["plugins"].values()] + [s["pid"] for s in status["services"].values()]
    assert all(pids) and all(pid_alive(p) for p in pids)
    assert up.stop() == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if pid_alive(p)]
    assert processes_mentioning(str(state)) == []
    assert not (state / "control.sock").exists()


async def _can_connect(url: str, creds: str) -> bool:
    import nats

    try:
        nc = await nats.connect(url, user_credentials=creds, allow_reconnect=False, connect_timeout=3,
                                max_reconnect_attempts=0)
    except Exception:
        return False
    await nc.close()
    return True


def test_plugin_removed_from_dir_is_stopped_and_revoked(fleet, tmp_path):
    import asyncio
    import json
    import shutil

    start, plugins, state = fleet
    up = start("dice-roller", "8ball")
    status = up.wait_running("dice-roller", "eightball")
    dice_pid = status["plugins"]["dice-roller"]["pid"]
    url = json.loads((state / "endpoint.json").read_text())["nats"]
    stolen = tmp_path / "dice.creds"
    shutil.copy(state / "nats" / "creds" / "plugins" / "dice-roller.creds", stolen)
    assert asyncio.run(_can_connect(url, str(stolen)))

    shutil.rmtree(plugins / "dice-roller")
    up.wait_for(lambda s: "dice-roller" not in s["plugins"], "dice-roller gone from status", timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and pid_alive(dice_pid):
        time.sleep(0.2)
    assert not pid_alive(dice_pid)
    gone = up.say("!roll d6")
    assert gone.returncode == 1 and "no plugin handles !roll" in gone.stderr
    assert up.say("!8ball still fine?").returncode == 0
    # Its credentials are dead: the account and user were revoked live.
    assert not asyncio.run(_can_connect(url, str(stolen)))


def test_console_chat_reaches_plugins_and_answers_print(fleet):
    """`precinct console`: chat lines reach read_messages plugins (markov learns
    them) and `!commands` print their answer, like a chat room in a terminal."""
    import subprocess
    import sys

    start, _plugins, state = fleet
    up = start("markov_plugin", "8ball")
    up.wait_running("markov-plugin", "eightball")
    console = subprocess.Popen(
        [sys.executable, "-m", "precinct.cli", "console", "--state-dir", str(state), "--user", "alice"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )
    try:
        assert "connected as alice" in console.stdout.readline()
        console.stdin.write("the zebracorn gallops over quiet hills\n")
        console.stdin.write("a zebracorn gallops under quiet stars\n")
        console.stdin.write("!8ball is this a console?\n")
        console.stdin.flush()
        line = console.stdout.readline()
        assert line.startswith("eightball> ") and len(line.strip()) > len("eightball>"), line
        # Markov learned the console chat through its read_messages grant.
        console.stdin.write("!markov zebracorn\n")
        console.stdin.flush()
        line = console.stdout.readline()
        assert line.startswith("markov-plugin> ") and "gallops" in line, line
    finally:
        console.stdin.close()
        assert console.wait(30) == 0
