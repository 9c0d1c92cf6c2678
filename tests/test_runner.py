"""The plugin runner, as a real subprocess of the lean runner environment,
against a real nats-server. Nothing is mocked: the runner env is built with
ensure_runner_env once per session (Debian's /usr/bin/python3, no aiohttp).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import secrets
import subprocess
import threading
from pathlib import Path

import nats
import pytest

from precinct.runtime.runner_env import MARKER, RunnerEnvError, ensure_runner_env, world_executable_problems
from runner_support import (
    EXAMPLE_PLUGINS,
    FIXTURE_PLUGINS,
    NATS_SERVER,
    NatsServer,
    Runner,
    free_port,
    next_message,
    request_json,
)

EIGHTBALL = FIXTURE_PLUGINS / "8ball"
ASK = "rosey.command.eightball.ask"
CRASHER_MARKER = "CRASHER-FIXTURE: deliberate failure"


# -- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="session")
def runner_python(tmp_path_factory) -> Path:
    """The runner environment, built once per session in a temporary base dir."""
    if not NATS_SERVER.exists():
        pytest.skip(f"nats-server not installed at {NATS_SERVER}")
    try:
        return ensure_runner_env(tmp_path_factory.mktemp("runner-env"))
    except RunnerEnvError as exc:
        pytest.fail(f"cannot build the runner environment: {exc}")


@pytest.fixture
def plain_nats(tmp_path):
    server = NatsServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def client(plain_nats):
    nc = await nats.connect(plain_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield nc
    await nc.close()


@pytest.fixture
def start_runner(runner_python, plain_nats, tmp_path):
    """Start runners; every one still running at the end is killed."""
    started: list[Runner] = []

    def start(plugin_dir: Path, plugin_id: str, **kwargs) -> Runner:
        kwargs.setdefault("instance", "i" + secrets.token_hex(3))
        runner = Runner(runner_python, plugin_dir, plugin_id, plain_nats.url, tmp_path, **kwargs)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.kill()


async def subscribe_queue(nc, subject: str) -> asyncio.Queue:
    queue: asyncio.Queue = asyncio.Queue()

    async def cb(msg):
        await queue.put(msg)

    await nc.subscribe(subject, cb=cb)
    await nc.flush()
    return queue


def write_plugin(folder: Path, source: str, manifest: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.py").write_text(source)
    (folder / "plugin.yaml").write_text(manifest or f"name: {folder.name}\nversion: 1.0.0\n")
    return folder


# -- the runner environment -------------------------------------------------------


def test_runner_env_has_no_aiohttp_but_has_what_the_runner_needs(runner_python):
    no_aiohttp = subprocess.run([str(runner_python), "-c", "import aiohttp"], capture_output=True, text=True)
    assert no_aiohttp.returncode != 0
    assert "No module named 'aiohttp'" in no_aiohttp.stderr

    probe = subprocess.run(
        [str(runner_python), "-c",
         "import json, nats, nkeys, nacl, precinct_runner, sys; "
         "print(json.dumps({'runner': precinct_runner.__file__, 'prefix': sys.prefix}))"],
        capture_output=True, text=True, check=True)
    paths = json.loads(probe.stdout)
    env_dir = runner_python.parent.parent
    assert Path(paths["runner"]).is_relative_to(env_dir), "the runner must be installed, not imported from the checkout"
    assert Path(paths["prefix"]) == env_dir


def test_runner_env_interpreter_is_executable_by_other_uids(runner_python):
    real = os.path.realpath(runner_python)
    assert not real.startswith("/root/"), real
    assert world_executable_problems(real) == []


def test_runner_env_is_reused_when_complete(runner_python):
    marker = runner_python.parent.parent / MARKER
    before = marker.stat().st_mtime_ns
    again = ensure_runner_env(runner_python.parent.parent.parent)
    assert again == runner_python
    assert marker.stat().st_mtime_ns == before, "a complete environment must not be rebuilt"


def test_world_executable_check_spots_a_private_directory(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    tool = private / "python3"
    tool.write_text("#!/bin/sh\n")
    os.chmod(tool, 0o755)
    problems = world_executable_problems(tool)
    assert any(str(private) in p and "cannot enter" in p for p in problems), problems

    os.chmod(private, 0o755)
    os.chmod(tool, 0o700)
    problems = world_executable_problems(tool)
    assert any("cannot execute" in p for p in problems), problems


# -- hosting plugins ----------------------------------------------------------------


async def test_8ball_folder_answers_on_its_command(start_runner, client):
    runner = start_runner(EIGHTBALL, "eightball", commands=[ASK])
    await runner.wait_ready(client)

    answer = await request_json(client, ASK, {"channel": "lobby", "user": "ann", "args": "will it work?"})
    assert answer["success"] is True
    assert answer["result"]["question"] == "will it work?"
    assert answer["result"]["formatted"].startswith("🎱 will it work?")

    # The payload reply_to path, as the dispatcher uses it.
    nonce = secrets.token_hex(4)
    replies = await subscribe_queue(client, f"rosey.reply.eightball.{nonce}")
    await client.publish(ASK, json.dumps({"channel": "lobby", "user": "ann", "args": "again?",
                                          "reply_to": f"rosey.reply.eightball.{nonce}"}).encode())
    reply = json.loads((await next_message(replies, "payload reply")).data)
    assert reply["success"] is True and reply["result"]["question"] == "again?"


async def test_package_with_relative_imports_loads_and_answers(start_runner, client):
    runner = start_runner(FIXTURE_PLUGINS / "relimport", "relimport", commands=["rosey.command.relimport.wisdom"])
    await runner.wait_ready(client)
    answer = await request_json(client, "rosey.command.relimport.wisdom", {"args": ""})
    assert answer["success"] is True
    assert answer["result"]["formatted"] == "A WATCHED POT NEVER BOILS."
    assert answer["result"]["helpers_module"].endswith(".helpers")


async def test_ping_is_answered_with_identity(start_runner, client):
    runner = start_runner(EIGHTBALL, "eightball", instance="pingme", commands=[ASK])
    pong = await runner.wait_ready(client)
    assert pong == {"ok": True, "id": "eightball", "instance": "pingme", "pid": runner.pid,
                    "version": "1.2.3", "runner": pong["runner"]}


async def test_two_instances_answer_each_request_exactly_once(start_runner, client):
    a = start_runner(EIGHTBALL, "eightball", instance="a", commands=[ASK])
    b = start_runner(EIGHTBALL, "eightball", instance="b", commands=[ASK])
    await a.wait_ready(client)
    await b.wait_ready(client)

    n = 40
    prefix = f"_INBOX.t{secrets.token_hex(4)}"
    counts = {i: 0 for i in range(n)}
    pids: set[int] = set()
    got_all = asyncio.Event()

    async def on_reply(msg):
        i = int(msg.subject.rsplit(".", 1)[1])
        counts[i] += 1
        pids.add(json.loads(msg.data)["result"]["pid"])
        if all(counts.values()):
            got_all.set()

    await client.subscribe(f"{prefix}.*", cb=on_reply)
    await client.flush()
    for i in range(n):
        await client.publish(ASK, json.dumps({"user": "u", "args": f"q{i}?"}).encode(), reply=f"{prefix}.{i}")
    await client.flush()
    await asyncio.wait_for(got_all.wait(), 30)
    # Give a duplicate every chance to arrive before counting.
    await client.request(a.ping_subject, b"", timeout=10)
    await client.request(b.ping_subject, b"", timeout=10)
    await asyncio.sleep(1.0)

    assert sorted(set(counts.values())) == [1], {i: c for i, c in counts.items() if c != 1}
    assert pids == {a.pid, b.pid}, "both instances should have served some requests"

    # Everything else passes through unchanged: both instances see every chat event.
    seen = await subscribe_queue(client, "rosey.event.eightball.seen")
    await client.publish("rosey.platform.cytube.chatMsg",
                         json.dumps({"event_type": "chatMsg", "data": {"username": "ann", "message": "hi"}}).encode())
    first = json.loads((await next_message(seen, "first seen event")).data)
    second = json.loads((await next_message(seen, "second seen event")).data)
    assert {first["pid"], second["pid"]} == {a.pid, b.pid}


async def test_sigterm_runs_shutdown_then_exits_zero(start_runner, client):
    runner = start_runner(EIGHTBALL, "eightball", commands=[ASK])
    await runner.wait_ready(client)
    byes = await subscribe_queue(client, "rosey.event.eightball.bye")

    runner.terminate()
    bye = json.loads((await next_message(byes, "the bye event from shutdown()")).data)
    assert bye["pid"] == runner.pid
    assert await runner.wait_exit() == 0, runner.output()
    assert "got SIGTERM" in runner.output()


async def test_sigint_also_stops_cleanly(start_runner, client):
    runner = start_runner(EIGHTBALL, "eightball", commands=[ASK])
    await runner.wait_ready(client)
    byes = await subscribe_queue(client, "rosey.event.eightball.bye")
    runner.proc.send_signal(2)
    await next_message(byes, "the bye event from shutdown()")
    assert await runner.wait_exit() == 0, runner.output()


@pytest.mark.parametrize("fail_in,code,line", [
    ("initialize", 4, "initialize() raised RuntimeError"),
    ("exit", 4, "initialize() called sys.exit(9)"),
    ("construct", 3, "constructing CrasherPlugin failed: ValueError"),
])
async def test_crasher_exits_with_its_code_and_stderr_line(start_runner, client, tmp_path, fail_in, code, line):
    config = tmp_path / f"crasher-{fail_in}.json"
    config.write_text(json.dumps({"fail_in": fail_in}))
    runner = start_runner(FIXTURE_PLUGINS / "crasher", "crasher", commands=["rosey.command.crasher.crash"],
                          args=["--config", str(config)])
    assert await runner.wait_exit() == code, runner.output()
    out = runner.output()
    assert CRASHER_MARKER in out
    error_lines = [row for row in out.splitlines() if "ERROR" in row]
    assert len(error_lines) == 1 and line in error_lines[0], out
    assert "Traceback (most recent call last)" in out


async def test_import_error_exits_3_without_needing_nats(runner_python, tmp_path):
    dead_port = free_port()                         # nothing listens there
    runner = Runner(runner_python, FIXTURE_PLUGINS / "crasher", "crasher", f"nats://127.0.0.1:{dead_port}", tmp_path,
                    env={"CRASHER_FAIL_AT_IMPORT": "1"})
    try:
        assert await runner.wait_exit() == 3, runner.output()
        assert "plugin failed to load" in runner.output() and CRASHER_MARKER in runner.output()
    finally:
        runner.kill()


@pytest.mark.parametrize("classes,expected", [
    ("", "no plugin class"),
    ("Alpha Beta", "2 plugin classes"),
])
async def test_default_entrypoint_must_be_unambiguous(runner_python, tmp_path, classes, expected):
    body = "".join(
        f"class {name}:\n    async def initialize(self): pass\n    async def shutdown(self): pass\n\n"
        for name in classes.split()
    ) + "class Helper:\n    pass\n"
    folder = write_plugin(tmp_path / "ambiguous-plugin", body)
    runner = Runner(runner_python, folder, "ambiguous", "nats://127.0.0.1:1", tmp_path)
    try:
        assert await runner.wait_exit() == 3, runner.output()
        out = runner.output()
        assert expected in out
        for name in classes.split():
            assert name in out
    finally:
        runner.kill()


async def test_entrypoint_option_picks_a_class(start_runner, client, tmp_path):
    source = (
        "import json\n"
        "class Base:\n"
        "    SUBJECT = 'rosey.command.pick.which'\n"
        "    def __init__(self, nats_client, config=None):\n"
        "        self.nc = nats_client\n"
        "    async def initialize(self):\n"
        "        await self.nc.subscribe(self.SUBJECT, cb=self.on)\n"
        "    async def shutdown(self): pass\n"
        "    async def on(self, msg):\n"
        "        await msg.respond(json.dumps({'success': True, 'result': {'formatted': type(self).__name__}}).encode())\n"
        "class First(Base): pass\n"
        "class Second(Base): pass\n"
    )
    folder = write_plugin(tmp_path / "pick", source)
    runner = start_runner(folder, "pick", commands=["rosey.command.pick.which"], args=["--entrypoint", "plugin:Second"])
    await runner.wait_ready(client)
    answer = await request_json(client, "rosey.command.pick.which", {})
    assert answer["result"]["formatted"] == "Second"


async def test_constructor_with_plugin_manager_and_env_only_configuration(runner_python, plain_nats, client, tmp_path):
    source = (
        "import json\n"
        "class ManagedPlugin:\n"
        "    def __init__(self, nats_client, config=None, plugin_manager='unset'):\n"
        "        self.nc, self.config, self.pm = nats_client, config, plugin_manager\n"
        "    async def initialize(self):\n"
        "        self.sub = await self.nc.subscribe('rosey.command.managed.show', cb=self.on)\n"
        "    async def shutdown(self):\n"
        "        await self.sub.unsubscribe()\n"
        "    async def on(self, msg):\n"
        "        body = {'config': self.config, 'plugin_manager': self.pm, 'queue': self.sub.queue}\n"
        "        await msg.respond(json.dumps({'success': True, 'result': body}).encode())\n"
    )
    folder = write_plugin(tmp_path / "managed", source)
    env = {
        "PRECINCT_PLUGIN_DIR": str(folder),
        "PRECINCT_PLUGIN_ID": "managed",
        "PRECINCT_INSTANCE": "fromenv",
        "PRECINCT_SERVER": plain_nats.url,
        "PRECINCT_CONFIG_JSON": json.dumps({"greeting": "hello"}),
        "PRECINCT_COMMANDS": json.dumps(["rosey.command.managed.show"]),
    }
    runner = Runner(runner_python, folder, "managed", plain_nats.url, tmp_path, instance="fromenv",
                    env=env, use_cli=False)
    try:
        await runner.wait_ready(client)
        answer = await request_json(client, "rosey.command.managed.show", {})
        assert answer["result"] == {"config": {"greeting": "hello"}, "plugin_manager": None,
                                    "queue": "precinct.managed"}
    finally:
        runner.kill()


async def test_plugin_modules_do_not_shadow_the_runners_imports(runner_python, plain_nats, client, tmp_path):
    """The runner starts with the plugin folder as its working directory;
    a plugin module named like a stdlib one (Rosey's playlist has queue.py)
    must not replace the real one for the runner. (Connecting to a host
    name makes asyncio resolve it in a thread pool, which imports `queue`.)"""
    source = (
        "import json\n"
        "from . import queue as plugin_queue\n"
        "class QueuePlugin:\n"
        "    def __init__(self, nats_client, config=None):\n"
        "        self.nc = nats_client\n"
        "    async def initialize(self):\n"
        "        self.sub = await self.nc.subscribe('rosey.command.shadow.which', cb=self.on)\n"
        "    async def shutdown(self):\n"
        "        await self.sub.unsubscribe()\n"
        "    async def on(self, msg):\n"
        "        await msg.respond(json.dumps({'success': True, 'result': {'formatted': plugin_queue.NAME}}).encode())\n"
    )
    folder = write_plugin(tmp_path / "shadow", source)
    (folder / "queue.py").write_text(
        "import sys\n"
        "if __name__ == 'queue':\n"
        "    raise ImportError('the plugin folder shadowed the standard library queue module')\n"
        "NAME = 'plugin queue'\n"
    )
    runner = Runner(runner_python, folder, "shadow", f"nats://localhost:{plain_nats.port}", tmp_path,
                    commands=["rosey.command.shadow.which"])
    try:
        await runner.wait_ready(client)
        answer = await request_json(client, "rosey.command.shadow.which", {})
        assert answer["result"]["formatted"] == "plugin queue"
        assert "shadowed" not in runner.output()
    finally:
        runner.kill()


async def test_usage_errors_exit_2(runner_python, tmp_path):
    done = subprocess.run([str(runner_python), "-m", "precinct_runner", "--plugin-dir", str(EIGHTBALL)],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "--plugin-id" in done.stderr

    done = subprocess.run([str(runner_python), "-m", "precinct_runner", "--plugin-dir", str(EIGHTBALL),
                           "--plugin-id", "eightball"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PRECINCT_CONFIG_JSON": "[1, 2]"})
    assert done.returncode == 2
    assert "must be a JSON object" in done.stderr


async def test_no_nats_within_connect_timeout_exits_5(runner_python, tmp_path):
    dead_port = free_port()
    runner = Runner(runner_python, EIGHTBALL, "eightball", f"nats://127.0.0.1:{dead_port}", tmp_path,
                    commands=[ASK], args=["--connect-timeout", "2"])
    try:
        assert await runner.wait_exit() == 5, runner.output()
        assert "no connection to NATS" in runner.output()
    finally:
        runner.kill()


async def test_a_nats_restart_is_survived(start_runner, plain_nats, client):
    runner = start_runner(EIGHTBALL, "eightball", commands=[ASK])
    await runner.wait_ready(client)

    plain_nats.stop()
    await asyncio.sleep(0.5)
    plain_nats.start()

    await runner.wait_ready(client, deadline=60)
    answer = await request_json(client, ASK, {"user": "ann", "args": "still there?"})
    assert answer["success"] is True
    assert runner.proc.poll() is None
    assert "reconnected to NATS" in runner.output()


def eightball_plan():
    from precinct.plan.sandbox import compile_plan
    from precinct.spec.load import load_path
    from precinct.spec.ownership import Plugin

    manifest, problems = load_path(EIGHTBALL)
    assert not problems
    return compile_plan(Plugin(manifest.id, manifest.without_name()))


async def test_runner_with_creds_on_an_authenticated_server(runner_python, nats_env, tmp_path):
    """The runner env can do creds auth (nkeys is installed), and its
    subscriptions work through the plugin's own account."""
    plan = eightball_plan()
    await nats_env.sync(plan)
    runner = Runner(runner_python, EIGHTBALL, "eightball", nats_env.server.url, tmp_path, instance="authed",
                    commands=sorted(set(plan.commands.values())),
                    args=["--creds", str(nats_env.identity.creds_for("eightball"))])
    try:
        platform = await nats_env.platform()
        pong = await runner.wait_ready(platform.nc)
        assert pong["id"] == "eightball"
        core = await nats_env.core()
        answer = await request_json(core.nc, ASK, {"user": "ann", "args": "authenticated?"})
        assert answer["success"] is True
    finally:
        runner.kill()


async def test_revoked_credentials_exit_5(runner_python, nats_env, tmp_path):
    """Once the plugin's account is revoked the server drops the connection
    and refuses it back: the runner says so and exits 5."""
    plan = eightball_plan()
    await nats_env.sync(plan)
    runner = Runner(runner_python, EIGHTBALL, "eightball", nats_env.server.url, tmp_path, instance="revoked",
                    commands=sorted(set(plan.commands.values())),
                    args=["--creds", str(nats_env.identity.creds_for("eightball"))])
    try:
        platform = await nats_env.platform()
        await runner.wait_ready(platform.nc)
        await nats_env.sync()                     # the plugin is removed: its account is revoked
        assert await runner.wait_exit() == 5, runner.output()
        assert "NATS connection closed for good" in runner.output()
    finally:
        runner.kill()


# -- the example plugins, through the runner ----------------------------------------


async def test_dice_roller_rolls_flips_and_refuses_bad_input(start_runner, client, tmp_path):
    config = tmp_path / "dice.json"
    config.write_text(json.dumps({"max_dice": 5, "max_sides": 100}))
    runner = start_runner(EXAMPLE_PLUGINS / "dice-roller", "dice-roller",
                          commands=["rosey.command.dice.roll", "rosey.command.dice.flip"], args=["--config", str(config)])
    await runner.wait_ready(client)

    for args, count, sides, modifier in (("2d6", 2, 6, 0), ("d20", 1, 20, 0), ("3d6+2", 3, 6, 2), ("4d10-3", 4, 10, -3)):
        answer = await request_json(client, "rosey.command.dice.roll", {"channel": "c", "user": "ann", "args": args})
        assert answer["success"] is True, answer
        result = answer["result"]
        assert len(result["rolls"]) == count and all(1 <= r <= sides for r in result["rolls"])
        assert result["total"] == sum(result["rolls"]) + modifier
        assert isinstance(result["formatted"], str) and str(result["total"]) in result["formatted"]

    for args, fragment in (("6d6", "too many dice"), ("1d101", "too many sides"), ("banana", "can't read"),
                           ("0d6", "at least one"), ("2d1", "at least 2 sides")):
        answer = await request_json(client, "rosey.command.dice.roll", {"args": args})
        assert answer["success"] is False and fragment in answer["error"], (args, answer)

    flip = await request_json(client, "rosey.command.dice.flip", {"user": "ann"})
    assert flip["success"] is True and flip["result"]["side"] in ("heads", "tails")


async def test_markov_learns_answers_and_chatters(start_runner, client, tmp_path):
    config = tmp_path / "markov.json"
    config.write_text(json.dumps({"chatter_every": 3, "order": 1}))
    runner = start_runner(EXAMPLE_PLUGINS / "markov_plugin", "markov-plugin",
                          commands=["rosey.command.markov.markov"], args=["--config", str(config)])
    await runner.wait_ready(client)

    empty = await request_json(client, "rosey.command.markov.markov", {"args": ""})
    assert empty["success"] is False

    said = await subscribe_queue(client, "rosey.chat.lobby.send")
    for text in ("the cat sat on the mat", "the dog sat on the rug", "a bird sang in the tree"):
        envelope = {"event_type": "chatMsg", "source": "cytube",
                    "data": {"username": "ann", "message": text, "channel": "lobby", "time": 0}}
        await client.publish("rosey.platform.cytube.chatMsg", json.dumps(envelope).encode())
    line = json.loads((await next_message(said, "an unprompted markov line")).data)
    assert line["channel"] == "lobby" and line["type"] == "chat" and line["message"]
    learned = {w for t in ("the cat sat on the mat", "the dog sat on the rug", "a bird sang in the tree") for w in t.split()}
    assert set(line["message"].split()) <= learned

    answer = await request_json(client, "rosey.command.markov.markov", {"args": "bird"})
    assert answer["success"] is True and answer["result"]["formatted"].startswith("bird")
    unknown = await request_json(client, "rosey.command.markov.markov", {"args": "zebra"})
    assert unknown["success"] is False and "zebra" in unknown["error"]


class _TitlePage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/page")
            self.end_headers()
            return
        if self.path == "/image":
            body, ctype = b"\x89PNG....", "image/png"
        else:
            body = b"<html><head><title>\n  Hello &amp; welcome  </title></head><body>" + b"x" * 100 + b"</body></html>"
            ctype = "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


async def test_url_title_fetches_a_pages_title(start_runner, client):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TitlePage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        runner = start_runner(EXAMPLE_PLUGINS / "url-title", "url-title", commands=["rosey.command.urltitle.title"])
        await runner.wait_ready(client)

        answer = await request_json(client, "rosey.command.urltitle.title", {"args": f"{base}/redirect"})
        assert answer["success"] is True, answer
        assert answer["result"]["title"] == "Hello & welcome"
        assert answer["result"]["url"].endswith("/page")

        for args, fragment in ((f"{base}/image", "image/png"), ("file:///etc/passwd", "only http"), ("", "usage")):
            answer = await request_json(client, "rosey.command.urltitle.title", {"args": args})
            assert answer["success"] is False and fragment in answer["error"], (args, answer)
    finally:
        server.shutdown()
        server.server_close()


# -- every Rosey plugin shape (fixtures in tests/fixtures/plugins/rosey-*) -----------


async def _request_when_served(nc, subject: str, payload: dict) -> dict:
    """Request `subject`, retrying while nobody subscribes yet (a sync
    initialize() schedules its subscription after the runner reports ready)."""
    from nats.errors import NoRespondersError

    deadline = asyncio.get_running_loop().time() + REQUEST_DEADLINE
    while True:
        try:
            return await request_json(nc, subject, payload)
        except NoRespondersError:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"nobody served {subject} within {REQUEST_DEADLINE} s") from None
            await asyncio.sleep(0.1)


REQUEST_DEADLINE = 30.0


async def test_rosey_shape_without_shutdown_and_config(start_runner, client):
    """quote-db's shape: `__init__(nats_client)`, no shutdown(), code in a
    module named by the entrypoint. It serves, and SIGTERM still exits 0."""
    folder = FIXTURE_PLUGINS / "rosey-noshutdown"
    runner = start_runner(folder, "rosey-noshutdown", commands=["rosey.command.notes.count"],
                          args=["--entrypoint", "notes_db:NotesDBPlugin"])
    await runner.wait_ready(client)
    first = await request_json(client, "rosey.command.notes.count", {"args": ""})
    second = await request_json(client, "rosey.command.notes.count", {"args": ""})
    assert (first["result"]["asked"], second["result"]["asked"]) == (1, 2)
    runner.terminate()
    assert await runner.wait_exit() == 0, runner.output()
    assert "shutdown() raised" not in runner.output() and "stopped" in runner.output()


async def test_rosey_shape_without_shutdown_is_found_by_default(start_runner, client, tmp_path):
    """Without an entrypoint, a plugin.py class with only initialize() is the plugin."""
    source = (FIXTURE_PLUGINS / "rosey-noshutdown" / "notes_db.py").read_text()
    folder = write_plugin(tmp_path / "notes", source)
    runner = start_runner(folder, "notes", commands=["rosey.command.notes.count"])
    await runner.wait_ready(client)
    answer = await request_json(client, "rosey.command.notes.count", {})
    assert answer["result"]["formatted"] == "📝 asked 1 time(s)"


async def test_rosey_shape_with_sync_hooks(start_runner, client, tmp_path):
    marker = tmp_path / "shutdown-marker"
    config = tmp_path / "synchooks.json"
    config.write_text(json.dumps({"marker": str(marker)}))
    runner = start_runner(FIXTURE_PLUGINS / "rosey-synchooks", "rosey-synchooks",
                          commands=["rosey.command.synchooks.echo"], args=["--config", str(config)])
    await runner.wait_ready(client)
    answer = await _request_when_served(client, "rosey.command.synchooks.echo", {"args": "hello there"})
    assert answer == {"success": True, "result": "hello there"}
    assert not marker.exists()
    runner.terminate()
    assert await runner.wait_exit() == 0, runner.output()
    assert marker.read_text() == "shutdown ran"


async def test_rosey_shape_with_extra_keyword_parameters(start_runner, client, tmp_path):
    """inspector's shape: `(nats_client, config: dict = None, plugin_manager=None,
    buffer_size=1000)`: config by name, no plugin manager, other defaults kept."""
    config = tmp_path / "kwargs.json"
    config.write_text(json.dumps({"greeting": "hello"}))
    runner = start_runner(FIXTURE_PLUGINS / "rosey-kwargs", "rosey-kwargs",
                          commands=["rosey.command.kwinspect.show"], args=["--config", str(config)])
    await runner.wait_ready(client)
    answer = await request_json(client, "rosey.command.kwinspect.show", {})
    result = answer["result"]
    assert (result["config"], result["plugin_manager"], result["buffer_size"]) == ({"greeting": "hello"}, None, 1000)


async def test_rosey_shape_without_initialize(start_runner, client):
    runner = start_runner(FIXTURE_PLUGINS / "rosey-noinit", "rosey-noinit")
    pong = await runner.wait_ready(client)
    assert pong["ok"] is True
    byes = await subscribe_queue(client, "rosey.event.noinit.bye")
    runner.terminate()
    bye = json.loads((await next_message(byes, "the bye event from shutdown()")).data)
    assert bye["pid"] == runner.pid
    assert await runner.wait_exit() == 0, runner.output()


@pytest.mark.parametrize("signature,expected", [
    ("self, nats_client, config, secret_key", "Needy() needs secret_key"),
    ("self, nats_client, *, token", "Needy() needs token"),
])
async def test_constructor_the_runner_cannot_fill_is_a_clear_load_error(start_runner, tmp_path, signature, expected):
    source = (f"class Needy:\n    def __init__({signature}):\n        pass\n"
              "    async def initialize(self): pass\n")
    folder = write_plugin(tmp_path / "needy", source)
    runner = start_runner(folder, "needy")
    assert await runner.wait_exit() == 3, runner.output()
    error_lines = [row for row in runner.output().splitlines() if "ERROR" in row]
    assert len(error_lines) == 1 and expected in error_lines[0], runner.output()


# -- PRECINCT_DATA_WAIT: a hot reload's new instance of a plugin that writes its data dir ------

WAITER = '''
import json


class Waiter:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        if {fail!r}:
            raise RuntimeError("initialize is broken")
        await self.nats.publish("rosey.event.waiter.initialized", b"{{}}")
        await self.nats.subscribe("rosey.command.waiter.go", cb=self.go)

    async def go(self, msg):
        await msg.respond(json.dumps({{"success": True}}).encode())
'''


@pytest.mark.parametrize("fail", [False, True])
async def test_data_wait_answers_the_ping_and_initializes_only_when_told(start_runner, client, tmp_path, fail):
    """The runner pings at once but constructs and initializes the plugin,
    and subscribes its commands, only after {"data": "rw"} on its config
    subject; it answers that message once the plugin serves (or with the
    reason it failed, then exits 4)."""
    folder = write_plugin(tmp_path / "waiter", WAITER.format(fail=fail))
    runner = start_runner(folder, "waiter", instance="next", commands=["rosey.command.waiter.go"],
                          env={"PRECINCT_DATA_WAIT": "1"})
    inits = await subscribe_queue(client, "rosey.event.waiter.initialized")
    pong = await runner.wait_ready(client)
    assert pong["data"] == "waiting", pong
    with pytest.raises(nats.errors.NoRespondersError):
        await client.request("rosey.command.waiter.go", b"{}", timeout=5)
    config = "precinct.config.waiter.next"
    assert await request_json(client, config, {"config": {}}) == {"ok": False,
                                                                 "error": "the plugin is not initialized yet"}
    assert inits.empty()
    answer = await request_json(client, config, {"data": "rw"}, timeout=60)
    if fail:
        assert answer["ok"] is False and "initialize is broken" in answer["error"], answer
        assert await runner.wait_exit() == 4, runner.output()
        return
    assert answer == {"ok": True, "data": "rw"}, answer
    await next_message(inits, "the initialized event")
    assert (await request_json(client, "rosey.command.waiter.go", {}))["success"] is True
    assert (await request_json(client, runner.ping_subject, {}))["data"] == "rw"
    assert "waiting for the data dir to become writable" in runner.output()
