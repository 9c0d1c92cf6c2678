"""`python -m precinct_runner`: host one plugin until SIGTERM.

Every option can also come from the environment (`--plugin-id` or
PRECINCT_PLUGIN_ID), so a Kubernetes Pod can configure the runner with env
alone; an option given on the command line wins over its variable.

Exit codes:
  0  stopped by SIGTERM/SIGINT after shutdown() and drain
  1  unexpected error in the runner itself (a bug: please report it)
  2  bad options or configuration (unreadable config JSON, missing creds file, ...)
  3  the plugin failed to load: import, entrypoint, or constructor
  4  the plugin's initialize() raised or did not finish in --init-timeout
  5  NATS: no connection within --connect-timeout, or the connection was
     closed for good (e.g. credentials revoked)

Lifecycle: load the class (before touching NATS, so a broken plugin fails
fast) -> connect -> construct -> initialize() (sync or async; skipped when the
plugin has none) -> answer the health
ping on precinct.ping.<id>.<instance> (and take config reloads on
precinct.config.<id>.<instance>) -> wait for a signal -> drain the command
subscriptions (answer what was delivered, take nothing new) -> shutdown()
(sync or async, if the plugin has one) -> drain (which also ends the
subscriptions of a plugin without shutdown()) -> exit 0.

With --data-wait (PRECINCT_DATA_WAIT=1, set by `precinct up` for the new
instance of a hot reload of a plugin that may write its data dir, whose data
dir is read-only until the old instance has stopped): connect -> answer the
health ping at once -> wait for {"data": "rw"} on precinct.config.<id>.<instance>
(platform only) -> construct -> initialize() -> commands, then answer that
message. The plugin never runs with a read-only data dir it was promised to
write, and takes no command before its initialize() has run; commands meanwhile
go to the old instance, and those sent between its drain and this one's
initialize() are retried by the dispatcher until this one subscribes.

Keep imports here minimal: this process exists once per plugin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from . import __version__, wire

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_LOAD = 3
EXIT_INIT = 4
EXIT_CONNECTION = 5

DEFAULT_SERVER = "nats://127.0.0.1:4222"
ID_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
INSTANCE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# A command subject: NATS tokens, no wildcards, no whitespace.
SUBJECT_PATTERN = re.compile(r"^[^.\s*>]+(\.[^.\s*>]+)*$")
ACTION_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_-]{0,62}[A-Za-z0-9])?$")

RECONNECT_BASE = 0.25      # seconds; doubles per failed attempt
RECONNECT_MAX = 8.0


class UsageError(Exception):
    pass


class PluginExit(Exception):
    """Plugin code called sys.exit(): turned into an ordinary error so it
    cannot escape the event loop and skip the runner's exit codes."""

    def __init__(self, code: object) -> None:
        super().__init__(f"plugin code called sys.exit({code!r})")
        self.code = code


async def _guarded(coro):
    try:
        return await coro
    except SystemExit as exc:
        raise PluginExit(exc.code) from exc


def _env(name: str) -> str | None:
    value = os.environ.get(f"{wire.ENV_PREFIX}{name}")
    return value if value else None


def _float_env(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"PRECINCT_{name}={raw!r} is not a number") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m precinct_runner",
        description="Host one Rosey-style plugin and connect it to NATS. "
        "Each option may also be set with the environment variable shown.",
        epilog="Exit codes: 0 stopped cleanly, 1 runner bug, 2 bad options/config, 3 plugin failed to load, "
        "4 initialize() failed, 5 NATS connection failed or closed for good.",
    )
    p.add_argument("--plugin-dir", help="the plugin's folder [PRECINCT_PLUGIN_DIR] (required)")
    p.add_argument("--plugin-id", help="the plugin id, a DNS-1123 label [PRECINCT_PLUGIN_ID] (required)")
    p.add_argument("--instance", help="this instance's name, a NATS token [PRECINCT_INSTANCE] (default: random)")
    p.add_argument("--server", help=f"NATS URL(s), comma-separated [PRECINCT_SERVER] (default {DEFAULT_SERVER})")
    p.add_argument("--creds", help="NATS credentials file [PRECINCT_CREDS] (default: no auth)")
    p.add_argument("--nats-fd", type=int, help="connect to NATS with sockets handed in over this unix channel, not "
                   "by dialling --server; set by `precinct up` in its sandbox [PRECINCT_NATS_FD] (default: dial)")
    p.add_argument("--deps", help="a folder of the plugin's installed dependencies, searched after the runner's "
                   "own packages [PRECINCT_DEPS] (default: none; <plugin-dir>/.deps is always searched)")
    p.add_argument("--entrypoint", help="module:Class in the plugin folder [PRECINCT_ENTRYPOINT] "
                   "(default: the one class in plugin.py with initialize() and/or shutdown())")
    p.add_argument("--config", help="JSON file with the plugin's config object [PRECINCT_CONFIG]; "
                   "PRECINCT_CONFIG_JSON may hold the JSON itself (default: {})")
    p.add_argument("--command", action="append", metavar="SUBJECT",
                   help="a command subject the plugin claims; repeat for each "
                   "[PRECINCT_COMMANDS, a JSON list]; these subscriptions join queue group precinct.<plugin-id>")
    p.add_argument("--export", action="append", metavar="ACTION",
                   help="an action other plugins may call; repeat for each [PRECINCT_EXPORTS, a JSON list]; "
                   "served on precinct.export.<plugin-id>.<action> in the same queue group")
    p.add_argument("--connect-timeout", type=float,
                   help="seconds to keep trying the first connection, 0 = forever [PRECINCT_CONNECT_TIMEOUT] (default 60)")
    p.add_argument("--init-timeout", type=float,
                   help="seconds initialize() may take [PRECINCT_INIT_TIMEOUT] (default 20)")
    p.add_argument("--shutdown-timeout", type=float,
                   help="seconds shutdown() may take [PRECINCT_SHUTDOWN_TIMEOUT] (default 5)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ... [PRECINCT_LOG_LEVEL] (default INFO)")
    p.add_argument("--data-wait", action="store_true", default=None,
                   help="answer the health ping, but construct and initialize the plugin only once the platform "
                   "says its data dir is writable (a hot reload) [PRECINCT_DATA_WAIT=1] (default: at once)")
    p.add_argument("--version", action="version", version=f"precinct-runner {__version__}")
    return p


class Options(argparse.Namespace):
    plugin_dir: Path
    plugin_id: str
    instance: str
    servers: list[str]
    creds: str | None
    nats_fd: int | None
    entrypoint: str | None
    deps: Path | None
    config: dict[str, Any]
    commands: list[str]
    exports: list[str]
    connect_timeout: float
    init_timeout: float
    shutdown_timeout: float
    log_level: str
    data_wait: bool


def resolve_options(argv: list[str] | None = None) -> Options:
    """Command line over environment; raise UsageError with one clear line."""
    ns = build_parser().parse_args(argv)
    opts = Options()

    plugin_dir = ns.plugin_dir or _env("PLUGIN_DIR")
    if not plugin_dir:
        raise UsageError("--plugin-dir (or PRECINCT_PLUGIN_DIR) is required")
    opts.plugin_dir = Path(plugin_dir).resolve()

    plugin_id = ns.plugin_id or _env("PLUGIN_ID")
    if not plugin_id:
        raise UsageError("--plugin-id (or PRECINCT_PLUGIN_ID) is required")
    if not ID_PATTERN.match(plugin_id):
        raise UsageError(f"plugin id {plugin_id!r} must be a DNS-1123 label (lowercase letters, digits, '-')")
    opts.plugin_id = plugin_id

    instance = ns.instance or _env("INSTANCE")
    if instance is None:
        import secrets

        instance = secrets.token_hex(4)
    if not INSTANCE_PATTERN.match(instance):
        raise UsageError(f"instance {instance!r} must be 1-64 letters, digits, '-' or '_' (one NATS token)")
    opts.instance = instance

    server = ns.server or _env("SERVER") or DEFAULT_SERVER
    opts.servers = [s.strip() for s in server.split(",") if s.strip()]
    if not opts.servers:
        raise UsageError("--server is empty")

    opts.creds = ns.creds or _env("CREDS")
    if opts.creds and not os.access(opts.creds, os.R_OK):
        raise UsageError(f"credentials file {opts.creds} does not exist or is not readable")

    nats_fd = ns.nats_fd if ns.nats_fd is not None else _env("NATS_FD")
    try:
        opts.nats_fd = int(nats_fd) if nats_fd is not None else None
    except ValueError:
        raise UsageError(f"PRECINCT_NATS_FD={nats_fd!r} is not a file descriptor number") from None
    if opts.nats_fd is not None:
        try:
            os.fstat(opts.nats_fd)
        except OSError:
            raise UsageError(f"--nats-fd {opts.nats_fd} is not open") from None

    opts.entrypoint = ns.entrypoint or _env("ENTRYPOINT")
    deps = ns.deps or _env("DEPS")
    opts.deps = Path(deps).resolve() if deps else None
    if opts.deps is not None and not opts.deps.is_dir():
        raise UsageError(f"dependencies folder {opts.deps} does not exist")
    opts.config = _resolve_config(ns.config)
    opts.commands = _resolve_commands(ns.command)
    opts.exports = _resolve_exports(ns.export)

    opts.connect_timeout = ns.connect_timeout if ns.connect_timeout is not None else _float_env("CONNECT_TIMEOUT", 60.0)
    opts.init_timeout = ns.init_timeout if ns.init_timeout is not None else _float_env("INIT_TIMEOUT", 20.0)
    opts.shutdown_timeout = ns.shutdown_timeout if ns.shutdown_timeout is not None else _float_env("SHUTDOWN_TIMEOUT", 5.0)
    for name in ("connect_timeout", "init_timeout", "shutdown_timeout"):
        if getattr(opts, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative")
    if opts.init_timeout == 0 or opts.shutdown_timeout == 0:
        raise UsageError("--init-timeout and --shutdown-timeout must be greater than zero")

    level = (ns.log_level or _env("LOG_LEVEL") or "INFO").upper()
    if not isinstance(logging.getLevelName(level), int):
        raise UsageError(f"log level {level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    opts.log_level = level
    wait = _env("DATA_WAIT")
    if ns.data_wait is None and wait not in (None, "0", "1"):
        raise UsageError(f"PRECINCT_DATA_WAIT={wait!r} must be 0 or 1")
    opts.data_wait = bool(ns.data_wait) or wait == "1"
    return opts


def _resolve_config(path: str | None) -> dict[str, Any]:
    if path is None:
        env_path, env_json = _env("CONFIG"), _env("CONFIG_JSON")
        if env_path and env_json:
            raise UsageError("set only one of PRECINCT_CONFIG (a file) and PRECINCT_CONFIG_JSON (inline JSON)")
        if env_json:
            return _parse_config(env_json, "PRECINCT_CONFIG_JSON")
        path = env_path
    if path is None:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not UTF-8 text") from None
    return _parse_config(text, path)


def _parse_config(text: str, label: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{label}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{label}: the plugin config must be a JSON object, got {type(value).__name__}")
    return value


def _string_list(cli: list[str] | None, name: str, what: str) -> list[str]:
    """The repeated option's values, else PRECINCT_<name> as a JSON list of strings."""
    if cli:
        return cli
    raw = _env(name)
    if raw is None:
        return []
    try:
        values = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"PRECINCT_{name}: invalid JSON ({exc.msg}); expected a list of {what}") from None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise UsageError(f"PRECINCT_{name} must be a JSON list of {what}")
    return values


def _resolve_commands(cli: list[str] | None) -> list[str]:
    commands = _string_list(cli, "COMMANDS", "subject strings")
    for subject in commands:
        if not SUBJECT_PATTERN.match(subject):
            raise UsageError(f"command subject {subject!r} is not a NATS subject without wildcards")
    return list(dict.fromkeys(commands))


def _resolve_exports(cli: list[str] | None) -> list[str]:
    exports = _string_list(cli, "EXPORTS", "action names")
    for action in exports:
        if not ACTION_PATTERN.fullmatch(action):
            raise UsageError(f"export {action!r} must be 1-64 letters, digits, '-' or '_' (one NATS token)")
    return list(dict.fromkeys(exports))


# -- running ------------------------------------------------------------------


class Runner:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.tag = f"precinct-runner[{opts.plugin_id}/{opts.instance}]"
        self.stop = asyncio.Event()
        self.lost = asyncio.Event()
        self.closing = False
        self.nc: Any = None
        self._last_error: tuple[str, float] = ("", 0.0)

    def say(self, message: str) -> None:
        print(f"{self.tag}: {message}", file=sys.stderr, flush=True)

    def fail(self, message: str, exc: BaseException | None) -> None:
        """One clear line, then the traceback of what caused it."""
        self.say(f"ERROR {message}")
        cause = exc.__cause__ if exc is not None and exc.__cause__ is not None else exc
        if cause is not None:
            traceback.print_exception(type(cause), cause, cause.__traceback__, file=sys.stderr)
        sys.stderr.flush()

    # nats-py callbacks
    async def _error_cb(self, exc: Exception) -> None:
        from nats import errors as nats_errors

        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        now = asyncio.get_running_loop().time()
        last_text, last_time = self._last_error
        if text == last_text and now - last_time < 30:
            return                      # the same connect error every second is noise
        self._last_error = (text, now)
        connectionish = isinstance(exc, (OSError, asyncio.TimeoutError, nats_errors.Error))
        self.say(f"nats error: {text}")
        if not connectionish and exc.__traceback__ is not None:
            # Most likely raised by a plugin's message handler.
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)

    async def _disconnected_cb(self) -> None:
        if not self.closing:
            self.say("disconnected from NATS; reconnecting")

    async def _reconnected_cb(self) -> None:
        url = getattr(self.nc, "connected_url", None)
        self.say(f"reconnected to NATS at {url.netloc if url else '?'}")

    async def _closed_cb(self) -> None:
        if not self.closing:
            self.lost.set()

    @staticmethod
    def _next_server(servers: list[Any], _info: dict) -> tuple[Any, float]:
        """Exponential backoff with jitter, rotating to the least-tried server."""
        server = min(servers, key=lambda s: s.reconnects)
        delay = min(RECONNECT_MAX, RECONNECT_BASE * 2 ** min(server.reconnects, 10))
        return server, delay * random.uniform(0.8, 1.2)  # nosec B311 - reconnect jitter, not cryptography

    async def _until_stopped(self, awaitable, timeout: float | None):
        """Await `awaitable`; None if a stop signal came first (it is cancelled);
        raises TimeoutError after `timeout` seconds (0/None = no limit)."""
        task = asyncio.ensure_future(awaitable)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            done, _ = await asyncio.wait({task, stopper}, timeout=timeout or None,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task in done:
            return (task.result(),)
        task.cancel()
        try:
            await task
        except BaseException:
            pass
        if self.stop.is_set():
            return None
        raise asyncio.TimeoutError

    async def connect(self):
        import inspect

        from nats.aio.client import Client

        opts = self.opts
        if opts.nats_fd is not None:
            from . import transport

            transport.install(opts.nats_fd)
        nc = Client()
        self.nc = nc
        kwargs: dict[str, Any] = dict(
            servers=opts.servers,
            name=f"precinct-runner:{opts.plugin_id}:{opts.instance}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,          # forever
            reconnect_time_wait=1,              # between first-connection attempts
            connect_timeout=2,
            ping_interval=30,
            max_outstanding_pings=2,
            drain_timeout=2,
            error_cb=self._error_cb,
            disconnected_cb=self._disconnected_cb,
            reconnected_cb=self._reconnected_cb,
            closed_cb=self._closed_cb,
        )
        if "reconnect_to_server_handler" in inspect.signature(nc.connect).parameters:
            kwargs["reconnect_to_server_handler"] = self._next_server
        else:
            kwargs["reconnect_time_wait"] = 2
        if opts.creds:
            kwargs["user_credentials"] = opts.creds
        return await self._until_stopped(nc.connect(**kwargs), opts.connect_timeout)

    async def run(self) -> int:
        from .loader import LoadError, call_hook, construct, load_plugin_class, plugin_version
        from .proxy import ClientProxy

        opts = self.opts
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

        try:
            cls = load_plugin_class(opts.plugin_dir, opts.entrypoint, deps=opts.deps)
        except LoadError as exc:
            self.fail(f"plugin failed to load from {opts.plugin_dir}: {exc}", exc)
            return EXIT_LOAD

        try:
            connected = await self.connect()
        except asyncio.TimeoutError:
            self.fail(f"no connection to NATS at {', '.join(opts.servers)} within "
                      f"{opts.connect_timeout:g} s (last error: {self._last_error[0] or 'none'})", None)
            return EXIT_CONNECTION
        if connected is None:
            self.say("stopped before connecting to NATS")
            return EXIT_OK
        nc = self.nc

        ping_subject = wire.ping(opts.plugin_id, opts.instance)
        pong = {"ok": True, "id": opts.plugin_id, "instance": opts.instance,
                "pid": os.getpid(), "version": None, "runner": __version__}
        holder: dict[str, Any] = {}          # the plugin, once constructed
        activation: asyncio.Future = loop.create_future()

        async def on_ping(msg) -> None:
            if msg.reply:
                await msg.respond(json.dumps(pong).encode())

        async def on_config(msg) -> None:
            if "plugin" in holder:
                await self._on_config(msg, holder["plugin"])
            else:
                await self._on_data(msg, activation)

        async def subscribe_control() -> None:
            await nc.subscribe(ping_subject, cb=on_ping)
            await nc.subscribe(wire.config(opts.plugin_id, opts.instance), cb=on_config)

        answer = None
        if opts.data_wait:
            # Read-only data until the instance this one replaces has stopped:
            # be pingable (the rollout waits for that), run no plugin code yet.
            pong["data"] = "waiting"
            await subscribe_control()
            try:
                await nc.flush(timeout=10)
            except Exception:  # nosec B110 - reconnecting: the subscription is replayed
                pass
            self.say(f"waiting for the data dir to become writable; health ping on {ping_subject}")
            waited = await self._until_stopped(asyncio.shield(activation), None)
            if waited is None:
                await self._close()
                self.say("stopped before the data dir became writable")
                return EXIT_OK
            answer = waited[0]
            pong["data"] = "rw"
            data = os.environ.get(f"{wire.ENV_PREFIX}DATA_DIR")
            if data and not os.access(data, os.W_OK):
                self.say(f"WARNING told the data dir is writable, but {data} is not")

        async def refuse(message: str) -> None:
            if answer is not None:
                with contextlib.suppress(Exception):
                    await answer.respond(json.dumps({"ok": False, "error": message}).encode())
                    await nc.flush(timeout=2)

        try:
            proxy = ClientProxy(nc, opts.plugin_id, opts.commands, opts.exports)
            plugin = construct(cls, proxy, opts.config)
        except LoadError as exc:
            self.fail(f"plugin failed to load from {opts.plugin_dir}: {exc}", exc)
            await refuse(f"plugin failed to load: {exc}")
            await self._close()
            return EXIT_LOAD
        pong["version"] = plugin_version(plugin)

        try:
            started = await self._until_stopped(_guarded(call_hook(plugin, "initialize")), opts.init_timeout)
        except asyncio.TimeoutError:
            self.fail(f"{cls.__name__}.initialize() did not finish within {opts.init_timeout:g} s", None)
            await refuse(f"{cls.__name__}.initialize() did not finish within {opts.init_timeout:g} s")
            await self._close()
            return EXIT_INIT
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            what = f"called sys.exit({exc.code!r})" if isinstance(exc, PluginExit) else f"raised {type(exc).__name__}: {exc}"
            self.fail(f"{cls.__name__}.initialize() {what}", exc)
            await refuse(f"{cls.__name__}.initialize() {what}")
            await self._close()
            return EXIT_INIT
        if started is None:
            await self._shutdown(plugin, cls.__name__)
            self.say("stopped during initialize()")
            return EXIT_OK

        holder["plugin"] = plugin
        version = pong["version"]
        if not opts.data_wait:
            await subscribe_control()
        await proxy.serve_exports()
        try:
            await nc.flush(timeout=10)
        except Exception:  # nosec B110 - reconnecting: the subscription is replayed
            pass
        self.say(f"ready: {cls.__name__} {version or ''} serving {len(opts.commands)} command subject(s)"
                 f"{f' and {len(opts.exports)} export(s)' if opts.exports else ''}; "
                 f"health ping on {ping_subject}")
        if answer is not None:          # the plugin serves: the platform's switch-over is complete
            with contextlib.suppress(Exception):
                await answer.respond(json.dumps({"ok": True, "data": "rw"}).encode())

        stop_wait = asyncio.ensure_future(self.stop.wait())
        lost_wait = asyncio.ensure_future(self.lost.wait())
        await asyncio.wait({stop_wait, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        lost_wait.cancel()
        if self.lost.is_set() and not self.stop.is_set():
            err = getattr(nc, "last_error", None)
            self.fail(f"NATS connection closed for good ({err or 'no reason given'}); exiting", None)
            # Still let the plugin tidy up (files, tasks); it cannot reach NATS any more.
            await self._shutdown(plugin, cls.__name__, timeout=1.0, connected=False)
            return EXIT_CONNECTION
        if nc.is_connected:  # finish the commands already delivered here, take no new ones
            await proxy.drain_commands(self.opts.shutdown_timeout)
        await self._shutdown(plugin, cls.__name__)
        self.say("stopped")
        return EXIT_OK

    async def _on_data(self, msg, activation: asyncio.Future) -> None:
        """Before the plugin exists (--data-wait): {"data": "rw"} starts it;
        its answer comes once it serves. A config reload cannot be taken yet."""
        try:
            body = json.loads(msg.data)
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("data") == "rw":
            if not activation.done():
                activation.set_result(msg)
            elif msg.reply:
                await msg.respond(json.dumps({"ok": False, "error": "already starting"}).encode())
            return
        if msg.reply:
            await msg.respond(json.dumps({"ok": False, "error": "the plugin is not initialized yet"}).encode())

    async def _on_config(self, msg, plugin: Any) -> None:
        """Hot config reload: the supervisor (platform account only; the server
        enforces that) sends {"config": {...}}. A plugin that defines
        `reconfigure(config)` (or `on_config_change(config)`), sync or async,
        takes it without a restart; otherwise the answer says "unsupported"
        and the supervisor falls back to a rolling restart."""
        if not msg.reply:
            return
        hook = getattr(plugin, "reconfigure", None) or getattr(plugin, "on_config_change", None)
        try:
            config = json.loads(msg.data).get("config")
            if not isinstance(config, dict):
                raise ValueError("config must be a JSON object")
        except (ValueError, AttributeError) as exc:
            await msg.respond(json.dumps({"ok": False, "error": f"bad request: {exc}"}).encode())
            return
        if not callable(hook):
            await msg.respond(json.dumps({"ok": False, "error": "unsupported"}).encode())
            return
        try:
            result = hook(config)
            if asyncio.iscoroutine(result):
                await asyncio.wait_for(result, self.opts.init_timeout)
        except BaseException as exc:  # a failing hook is reported; the supervisor restarts instead
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.say(f"WARNING reconfigure() raised {type(exc).__name__}: {exc}")
            await msg.respond(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}).encode())
            return
        self.opts.config = config
        self.say("config reloaded without a restart")
        await msg.respond(json.dumps({"ok": True}).encode())

    def _on_signal(self, sig: int) -> None:
        if self.stop.is_set():
            self.say(f"got {signal.Signals(sig).name} again; already stopping")
            return
        self.say(f"got {signal.Signals(sig).name}; stopping")
        self.stop.set()

    async def _shutdown(self, plugin: Any, name: str, timeout: float | None = None, connected: bool = True) -> None:
        """Await the plugin's shutdown() (bounded), then drain the connection.
        A failing shutdown() is reported, never fatal: the process is stopping."""
        from .loader import call_hook

        limit = timeout or self.opts.shutdown_timeout
        try:
            await asyncio.wait_for(_guarded(call_hook(plugin, "shutdown")), limit)
        except asyncio.TimeoutError:
            self.say(f"WARNING {name}.shutdown() did not finish within {limit:g} s")
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            if connected:
                self.say(f"WARNING {name}.shutdown() raised {type(exc).__name__}: {exc}")
                traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            else:
                self.say(f"{name}.shutdown() without a connection: {type(exc).__name__}: {exc}")
        await self._close(drain=connected)

    async def _close(self, drain: bool = False) -> None:
        nc = self.nc
        self.closing = True
        if nc is None or nc.is_closed:
            return
        try:
            if drain and nc.is_connected:
                await nc.drain()
            else:
                await nc.close()
        except Exception as exc:
            self.say(f"closing the NATS connection: {type(exc).__name__}: {exc}")
            try:
                await nc.close()
            except Exception:  # nosec B110 - a second, last-chance close while shutting down
                pass


def main(argv: list[str] | None = None) -> int:
    try:
        opts = resolve_options(argv)
    except UsageError as exc:
        print(f"precinct-runner: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    logging.basicConfig(level=opts.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = Runner(opts)
    try:
        return asyncio.run(runner.run())
    except KeyboardInterrupt:
        return EXIT_OK
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            runner.fail(f"plugin code called sys.exit({exc.code!r}) outside initialize()", exc)
        else:
            runner.fail(f"runner crashed: {type(exc).__name__}: {exc}", exc)
        return EXIT_INTERNAL
