"""`precinct up`: the single-host supervisor.

It owns everything trusted on the machine and starts each piece as its own
process: the NATS server (the enforcer), the trusted services (dispatcher,
and later gateway and storage), and one runner per plugin folder. Every one
of them lives in a `Slot`, so a crashed service is restarted exactly like a
crashed plugin, with backoff.

The plugins dir is watched: a folder that appears is validated and started, a
folder that disappears is stopped and its NATS account revoked, a changed
manifest restarts the plugin under its new plan. Claims (the plugin id
itself, commands, namespaces) are granted to plugins already running first,
then to the folder that owned the id before a restart (owners.json), then in
folder-name order, so a newcomer can never take a running plugin's commands,
nor its id with the account, uid, credentials and data that come with it.
One plugin that cannot be compiled, does not fit the fleet ceiling or whose
account the server refuses is rejected on its own; the rest keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nats

from .. import conditions as cond
from ..plan.sandbox import SandboxPlan, compile_plan, observer_warning, plugin_account
from ..spec.load import SKIPPED_MESSAGE, Problem, as_plugin, find_manifest, load_path, skipped_folders
from ..spec.ownership import ID_CONFLICT, Plugin, id_conflict, resolve
from .control import ControlError, ControlServer
from .rollout import Rollouts, folder_digest, folder_fingerprint
from ..confine.launch import Confinement, LaunchSpec
from .slot import REJECTED, RestartPolicy, Slot
from ..wire import subjects as wire
from .violations import Ladder, LadderPolicy, LaunchRefused

log = logging.getLogger("precinct.supervisor")

RUNNER_MODULE = "precinct_runner"
WATCH_INTERVAL = 1.0
# Plugin instances starting at once: a sandboxed start costs about half a
# second of CPU across its processes, so more than a few per core only makes
# every start slower (and late starts miss their ready timeout).
STARTS_IN_FLIGHT = max(2, 2 * (os.cpu_count() or 1))
MIGRATION_TIMEOUT = 30.0  # seconds storage may take to apply one plugin's migrations
ENDPOINT_NAME = "endpoint.json"   # where `precinct say/console/creds` find NATS and the core creds
OWNERS_NAME = "owners.json"       # plugin id -> the folder that owns it, kept across restarts
RECONCILE_RETRY = 10.0            # seconds before a scan that failed is tried again
INVALID_PLAN = "InvalidPlan"
ACCOUNT_REFUSED = "AccountRefused"


class SupervisorError(RuntimeError):
    """A reason `precinct up` cannot run, worded for the person who typed it."""


@dataclass
class PluginEntry:
    folder: Path
    plugin: Plugin
    plan: SandboxPlan
    digest: str
    slot: Slot
    # What status shows of this entry that never changes (version, limits,
    # permissions...), worked out on first use: an entry is replaced, never
    # edited, when its plugin changes.
    shown: dict | None = None
    fleet_text: tuple[str, str] | None = None   # (account key, this entry's fleet.json text)

    def fleet_json(self, account_key: str) -> str:
        """This entry in fleet.json (services/fleetfile.py), serialised once
        per account key: the plan of an entry never changes."""
        if self.fleet_text is None or self.fleet_text[0] != account_key:
            body = {"folder": str(self.folder), "plan": self.plan.to_dict(), "account_key": account_key}
            self.fleet_text = (account_key, json.dumps(body, indent=1, sort_keys=True).replace("\n", "\n "))
        return self.fleet_text[1]

    def static_status(self) -> dict:
        if self.shown is None:
            self.shown = {"version": self.plugin.spec.version,
                          "digest": self.digest.partition(":")[2][:12],   # the code's sha256, short
                          "folder": str(self.folder), "limits": asdict(self.plan.limits),
                          "permissions": list(self.plan.permissions)}
        return self.shown


class StateLock:
    """One supervisor per state dir: a second `precinct up` refuses to start."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "supervisor.lock"
        self._fh = None

    def acquire(self) -> None:
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise SupervisorError(
                f"another `precinct up` (pid {holder}) is already running on {self.path.parent}; "
                "stop it first or use a different --state-dir"
            ) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()

    def release(self) -> None:
        if self._fh:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()


def _digest(folder: Path) -> str:
    """Changes when the manifest or any of the plugin's files change
    (`<manifest sha256>:<code sha256>`, bounded; see runtime/rollout.py)."""
    return folder_digest(folder)


class Supervisor:
    def __init__(self, plugins_dir: Path, state_dir: Path, policy: RestartPolicy | None = None,
                 nats_port: int | None = None, runner_python: str | None = None,
                 confinement: Confinement | None = None) -> None:
        self.plugins_dir = plugins_dir.resolve()
        self.state_dir = state_dir.resolve()
        self.policy = policy or RestartPolicy()
        self.nats_port = nats_port
        self.runner_python = runner_python
        # Where plugins' dependencies come from (runtime/plugin_deps.py): a
        # wheel index URL or folder; None = pip's configured index.
        self.wheel_index: str | None = None
        self.entries: dict[str, PluginEntry] = {}
        self.routes: dict[str, dict] = {}       # chat word -> route (Ownership.routes()): routes.json
        self.rejected: dict[str, dict] = {}     # folder name -> why it does not run
        self.owners: dict[str, str] = {}        # plugin id -> folder name (owners.json)
        self._retry_at: float | None = None
        self._warned_skipped: set[Path] = set()   # plugins-dir folders without a manifest, already warned about
        self.services: dict[str, Slot] = {}
        # The kernel sandbox (precinct.confine): HostConfinement as root, else one
        # that reports every protection as MISSING in status.
        self.confinement = confinement if confinement is not None else _default_confinement(self.state_dir)
        # Trusted services, started in this order once NATS is up. Each reads
        # routes.json / fleet.json from the state dir and reloads on SIGHUP.
        self.service_launchers = {"dispatcher": self._launch_dispatcher, "storage": self._launch_storage,
                                  "gateway": self._launch_gateway}
        # Repeat offenders: warn -> restart -> suspend (runtime/violations.py).
        self.violations = Ladder(LadderPolicy(), self.state_dir, self._slot_of)
        if hasattr(self.confinement, "on_refusal_strike"):  # the sandbox's refusals climb the same ladder
            self.confinement.on_refusal_strike = self.violations.report
        self._stop = asyncio.Event()
        self._lock = StateLock(self.state_dir)
        self._nc = None
        self.identity = None
        self.server_url = ""
        self.started_at = time.time()
        self._last_fingerprint: tuple | None = None
        self._published: dict[str, str] = {}   # routes.json / fleet.json as last written
        self._watch = None      # runtime/dirwatch.py: is a fingerprint comparison worth it this tick?
        # At most this many plugin instances starting at once (runtime/slot.py).
        self._starts = asyncio.Semaphore(STARTS_IN_FLIGHT)
        self.rollouts = Rollouts(self)   # hot reload: replace a changed plugin without losing commands
        # Health dashboard and Prometheus endpoint (runtime/dashboard.py): None = off, 0 = a free port.
        self.dashboard_port: int | None = None
        self.metrics_port: int | None = None
        self.monitoring = None

    # -- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self._lock.acquire()
        try:
            await self._start()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            log.info("precinct is up: %d plugin(s), NATS at %s", len(self.entries), self.server_url)
            while not self._stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), WATCH_INTERVAL)
                if not self._stop.is_set():
                    await self._reconcile_guarded()
        finally:
            await self._shutdown()
            self._lock.release()

    def stop(self) -> None:
        self._stop.set()

    def stopping(self) -> bool:
        return self._stop.is_set()

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """A NATS request as the platform user (hot reload's config hook); the reply's data."""
        msg = await self._nc.request(subject, payload, timeout=timeout)
        return msg.data

    async def _start(self) -> None:
        from ..natsauth.identity import Identity  # heavy imports only when running
        from .runner_env import ensure_runner_env

        if self.runner_python is None:
            self.runner_python = str(ensure_runner_env())
        self.identity = Identity(self.state_dir / "nats", port=self.nats_port)
        self.owners = self._read_owners()
        from .dirwatch import DirWatch

        self._watch = DirWatch(self.plugins_dir)   # before the first fingerprint: no edit falls between
        log.info("watching %s: %s", self.plugins_dir,
                 f"polling ({self._watch.problem})" if self._watch.polling else
                 f"inotify on {len(self._watch.watched)} folder(s), full rescan every {self._watch.rescan:g} s")
        self._last_fingerprint = self._fingerprint()
        plans = self._scan()
        self.identity.prepare([e.plan for e in plans])
        self.services["nats"] = Slot("nats", self._launch_nats, self._tcp_ready, self.policy)
        self.services["nats"].start()
        self.server_url = self.identity.url
        if not await self._tcp_ready("", 30):
            raise SupervisorError(f"nats-server did not start; see {self.identity.log_path}")
        await self.identity.connect(self.server_url)  # as the system user: live account pushes
        self._nc = await nats.connect(self.server_url, user_credentials=str(self.identity.platform_creds()),
                                      name="precinct-supervisor", max_reconnect_attempts=-1,
                                      reconnect_time_wait=0.5)
        await self._nc.subscribe(wire.VIOLATIONS, cb=self.violations.on_message)
        for entry in plans:
            self.entries[entry.plugin.id] = entry
        self.publish_fleet()
        for name, launcher in self.service_launchers.items():
            self.services[name] = Slot(name, launcher, self._alive, self.policy)
            self.services[name].start()
        self.control = ControlServer(self.state_dir, {"status": self._op_status, "resume": self._op_resume,
                                                     "logs": self._op_logs})
        await self.control.start()
        from .dashboard import Monitoring
        self.monitoring = Monitoring(self.state_dir, self._sampled_status, nc=self._nc,
                                     core=(self.server_url, str(self.identity.core_creds())),
                                     dashboard_port=self.dashboard_port, metrics_port=self.metrics_port,
                                     plugins_dir=self.plugins_dir)
        await self.monitoring.start()
        self.control.handlers["top"] = self.monitoring.monitor.op_top
        endpoint = {"nats": self.server_url, "core_creds": str(self.identity.core_creds()), "pid": os.getpid()}
        (self.state_dir / ENDPOINT_NAME).write_text(json.dumps(endpoint))
        for entry in plans:
            entry.slot.start()

    async def _shutdown(self) -> None:
        if self.monitoring is not None:
            await self.monitoring.close()
        slots = [e.slot for e in self.entries.values()]
        await asyncio.gather(*(s.stop() for s in slots), return_exceptions=True)
        for name in reversed(list(self.service_launchers)):
            if name in self.services:
                await self.services[name].stop()
        if self._nc:
            with contextlib.suppress(Exception):
                await self._nc.close()
        if self.identity:
            with contextlib.suppress(Exception):
                await self.identity.close()
        if "nats" in self.services:
            await self.services["nats"].stop()
        if getattr(self, "control", None):
            await self.control.close()
        if self._watch is not None:
            self._watch.close()
        await self.confinement.close()
        (self.state_dir / ENDPOINT_NAME).unlink(missing_ok=True)

    # -- the plugins dir ------------------------------------------------------

    def _folders(self) -> list[Path]:
        if not self.plugins_dir.is_dir():
            return []
        skipped = set(skipped_folders(self.plugins_dir))
        for folder in skipped - self._warned_skipped:       # said once per folder, as `validate` says it
            log.warning("%s: %s", folder, SKIPPED_MESSAGE)
        self._warned_skipped = skipped
        return sorted(p for p in self.plugins_dir.iterdir() if p.is_dir() and find_manifest(p))

    def _scan(self) -> list[PluginEntry]:
        """Validate every folder; grant ids and claims running-first, then to
        the id's recorded owner folder, then by folder name; then compile each
        plan and fit the fleet ceiling. Every refusal is kept per folder."""
        from ..natsauth.budget import FLEET_FULL, fit

        loaded: dict[Path, Plugin] = {}
        self.rejected = {}
        folders = self._folders()
        for folder in folders:
            manifest, problems = load_path(folder)
            if manifest is None:
                self._reject(folder.name, None, "InvalidManifest", [str(p) for p in problems])
                continue
            loaded[folder] = as_plugin(manifest, folder.name)
        # An id stays with the folder that owns it (running now, or before a
        # restart) for as long as that folder exists, even while its manifest
        # is invalid; only then do other folders compete in folder-name order.
        names = {f.name for f in folders}
        owners = {pid: name for pid, name in self.owners.items() if name in names}
        running = [f for f, p in loaded.items() if p.id in self.entries and self.entries[p.id].plugin.source == f.name]
        recorded = [f for f, p in loaded.items() if f not in running and owners.get(p.id) == f.name]
        order = running + recorded + [f for f in loaded if f not in running and f not in recorded]
        candidates = []
        for folder in order:
            plugin = loaded[folder]
            owner = owners.get(plugin.id)
            if owner is not None and owner != folder.name:
                # Reserved while the owner's folder claims the id, even if that
                # plugin is itself refused (a conflict, a broken manifest).
                mine = loaded.get(self.plugins_dir / owner)
                if mine is None or mine.id == plugin.id:
                    why = ", whose manifest is invalid right now" if mine is None else ""
                    self._reject(folder.name, plugin.id, ID_CONFLICT, [id_conflict(plugin.id, folder.name, owner, why)])
                    continue
            candidates.append(plugin)
        ownership = resolve(candidates)
        for r in ownership.rejected:
            self._reject(r.source, r.plugin, r.reason, [r.message])
        # Compile each accepted plugin on its own: one that cannot be compiled is rejected alone.
        plans: dict[str, SandboxPlan] = {}
        for plugin in list(ownership.accepted):
            existing = self.entries.get(plugin.id)
            if existing and existing.plugin == plugin:
                plans[plugin.id] = existing.plan
                continue
            try:
                plans[plugin.id] = compile_plan(plugin)
                warning = observer_warning(plans[plugin.id])
                # Said at start, and again only when a running plugin newly gains the grant.
                if warning and not (existing and observer_warning(existing.plan)):
                    log.warning("%s", warning)
            except Exception as exc:  # noqa: BLE001 - any bug or limit in compilation stays with this plugin
                log.exception("plugin %s: cannot compile its sandbox plan", plugin.id)
                ownership.withdraw(plugin.id, INVALID_PLAN, f"cannot compile its sandbox plan: {exc}")
                self._reject(plugin.source, plugin.id, INVALID_PLAN, [f"cannot compile its sandbox plan: {exc}"])
        fitted = fit([plans[p.id] for p in ownership.accepted])
        for refusal in fitted.refused:
            plugin = next(p for p in ownership.accepted if p.id == refusal.plan.id)
            ownership.withdraw(plugin.id, FLEET_FULL, refusal.message)
            self._reject(plugin.source, plugin.id, FLEET_FULL, [refusal.message])
        entries = []
        for plugin in ownership.accepted:
            folder = self.plugins_dir / plugin.source
            existing = self.entries.get(plugin.id)
            digest = _digest(folder)
            if existing and existing.digest == digest and existing.folder == folder:
                entries.append(existing)
                continue
            if existing and self.rollouts.failed.get(plugin.id) == digest and (
                    existing.folder == folder or self.rollouts.is_snapshot(existing.folder)):
                entries.append(existing)  # this version already failed to become ready: keep the old one
                continue
            slot = Slot(plugin.id, self._gated_launcher(plugin.id), self._ping_for(plugin.id), self.policy,
                        self.confinement, starts=self._starts)
            self.rollouts.snapshot(plugin.id, folder, digest)  # the code a failed hot reload falls back to
            entries.append(PluginEntry(folder, plugin, plans[plugin.id], digest, slot))
        # Record who owns each id: the accepted plugins, and owners whose folder
        # still exists (an invalid or refused folder keeps its id).
        kept = {pid: name for pid, name in owners.items()
                if (self.plugins_dir / name) not in loaded or loaded[self.plugins_dir / name].id == pid}
        self._write_owners({**kept, **{p.id: p.source for p in ownership.accepted}})
        self.routes = ownership.routes()
        return entries

    def _reject(self, folder: str, plugin_id: str | None, reason: str, problems: list[str]) -> None:
        self.rejected[folder] = {"state": REJECTED, "reason": reason, "problems": problems,
                                 "id": plugin_id, "folder": folder}

    def _read_owners(self) -> dict[str, str]:
        try:
            data = json.loads((self.state_dir / OWNERS_NAME).read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("%s is damaged; plugin ids are granted in folder-name order", self.state_dir / OWNERS_NAME)
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _write_owners(self, owners: dict[str, str]) -> None:
        if owners == self.owners and (self.state_dir / OWNERS_NAME).exists():
            return
        self.owners = dict(sorted(owners.items()))
        tmp = self.state_dir / f"{OWNERS_NAME}.tmp"
        tmp.write_text(json.dumps(self.owners, indent=1))
        tmp.replace(self.state_dir / OWNERS_NAME)

    def _fingerprint(self) -> tuple:
        """Cheap view of the plugins dir (names, and stat of each plugin's
        files, bounded): parsing every manifest each second would be the
        supervisor's main idle cost."""
        return tuple((folder.name, folder_fingerprint(folder)) for folder in self._folders())

    async def _reconcile_guarded(self) -> None:
        """One watch tick. Nothing a plugin folder holds may stop the
        supervisor: a failed scan is logged and retried later."""
        force = self._retry_at is not None and time.monotonic() >= self._retry_at
        if force:
            self._retry_at = None
        elif self._watch is not None and not self._watch.changed():
            return          # nothing in the plugins dir changed: no fingerprint to compare
        try:
            await self.reconcile(force=force)
        except Exception:  # noqa: BLE001 - keep the fleet running; the log says what failed
            log.exception("reconciling the plugins dir failed; retrying in %.0fs", RECONCILE_RETRY)
            self._retry_at = time.monotonic() + RECONCILE_RETRY

    async def reconcile(self, force: bool = False) -> None:
        """Bring running plugins in line with the plugins dir."""
        fingerprint = self._fingerprint()
        if not force and fingerprint == self._last_fingerprint:
            return
        self._last_fingerprint = fingerprint
        wanted = {e.plugin.id: e for e in self._scan()}
        removed = [pid for pid in self.entries if pid not in wanted]
        # A changed plugin in the same folder is replaced by a rollout (hot
        # reload: the old version serves until the new one answers its ping);
        # one that moved to another folder is stopped and started.
        changed = [pid for pid, e in wanted.items()
                   if pid in self.entries and self.entries[pid] is not e
                   and (self.entries[pid].folder == e.folder or self.rollouts.is_snapshot(self.entries[pid].folder))]
        moved = [pid for pid, e in wanted.items()
                 if pid in self.entries and self.entries[pid] is not e and pid not in changed]
        added = [pid for pid in wanted if pid not in self.entries] + moved
        if not removed and not added and not changed:
            return
        for pid in [*removed, *moved]:
            log.info("stopping plugin %s (%s)", pid, "moved" if pid in wanted else "removed")
            await self.entries.pop(pid).slot.stop()
            if pid not in wanted:
                self.rollouts.forget(pid)
        # Plugins the server already knows (moved ones keep their account); new
        # ones are pushed last, by _sync_newcomers, so one refused account
        # cannot block removals, hot reloads or the rest of the fleet.
        known = [pid for pid in wanted if pid not in added or pid in moved]
        if not changed:
            await self.identity.sync([wanted[pid].plan for pid in known])  # revokes removed plugins live
        for pid in changed:  # each rollout syncs identity itself, with only its own plugin's new plan
            current = [wanted[q].plan if q == pid or q not in self.entries else self.entries[q].plan for q in known]
            await self.rollouts.replace(self.entries[pid], wanted[pid], current)
        for pid in added:
            self.entries[pid] = wanted[pid]
        if any(self.entries[pid] is not wanted[pid] for pid in changed):
            self.rollouts.reroute()  # a rollout was rolled back: routes follow the versions that run
        if added:
            added = await self._sync_newcomers(added)
        self.publish_fleet()
        for pid in added:
            log.info("starting plugin %s", pid)
            wanted[pid].slot.start()

    async def _sync_newcomers(self, added: list[str]) -> list[str]:
        """Push the accounts of plugins just added. If the server refuses
        (or we cannot build) the accounts, find out which newcomer causes it
        by adding them one at a time: that one is rejected (AccountRefused,
        with the server's words) and the rest of the fleet is unaffected."""
        try:
            await self.identity.sync([e.plan for e in self.entries.values()])
            return added
        except Exception as exc:  # noqa: BLE001
            log.warning("pushing the accounts of %s failed (%s); adding them one at a time", ", ".join(added), exc)
        newcomers = {pid: self.entries.pop(pid) for pid in added}
        await self.identity.sync([e.plan for e in self.entries.values()])  # the fleet as it was: must still work
        kept = []
        for pid, entry in newcomers.items():
            self.entries[pid] = entry
            try:
                await self.identity.sync([e.plan for e in self.entries.values()])
                kept.append(pid)
            except Exception as exc:  # noqa: BLE001 - the server's reason goes into status
                log.warning("plugin %s rejected: its NATS account was refused: %s", pid, exc)
                del self.entries[pid]
                self._reject(entry.plugin.source, pid, ACCOUNT_REFUSED,
                             [f"its NATS account could not be pushed: {exc}"])
                self.routes = {w: route for w, route in self.routes.items() if route.get("plugin") != pid}
                await self.identity.sync([e.plan for e in self.entries.values()])
        return kept

    def publish_fleet(self) -> None:
        """Tell the trusted services what changed: routes.json (chat word ->
        its route and owner, Ownership.routes()) and fleet.json (every running
        plugin's plan, folder and account key), written atomically, then
        SIGHUP to each service. Nothing is written and no service woken when
        neither file would change; each entry's JSON is kept with the entry,
        so a change costs the serialisation of what changed (fleet.json is
        several MB at 500 plugins)."""
        parts = [f" {json.dumps(pid)}: {e.fleet_json(self.identity.account_key(plugin_account(pid)))}"
                 for pid, e in sorted(self.entries.items())]
        texts = {"routes.json": json.dumps(self.routes, indent=1, sort_keys=True),
                 "fleet.json": "{\n" + ",\n".join(parts) + "\n}" if parts else "{}"}
        changed = False
        for name, text in texts.items():
            if self._published.get(name) == text:
                continue
            tmp = self.state_dir / f"{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.state_dir / name)
            self._published[name] = text
            changed = True
        if not changed:
            return
        for name, slot in self.services.items():
            if name != "nats" and slot.status.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.status.pid, signal.SIGHUP)

    # -- launching ------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1"}

    def _launcher_for(self, plugin_id: str):
        async def launch(instance: str) -> LaunchSpec:
            entry = self.entries[plugin_id]
            run_dir = self.state_dir / "plugins" / plugin_id
            run_dir.mkdir(parents=True, exist_ok=True)
            config_path = run_dir / "config.json"
            config_path.write_text(json.dumps(entry.plugin.spec.config))
            argv = [self.runner_python, "-m", RUNNER_MODULE,
                    "--plugin-dir", str(entry.folder), "--plugin-id", plugin_id, "--instance", instance,
                    "--server", self.server_url, "--creds", str(self.identity.creds_for(plugin_id)),
                    "--config", str(config_path)]
            deps = await self._dependencies(entry.folder, entry.plugin.spec.dependencies)
            if deps is not None:
                argv += ["--deps", str(deps)]
            if entry.plugin.spec.entrypoint:
                argv += ["--entrypoint", entry.plugin.spec.entrypoint]
            for subject in entry.plan.command_subjects():
                argv += ["--command", subject]
            for action in entry.plan.exports:
                argv += ["--export", action]
            set_plan = getattr(self.confinement, "set_plan", None)
            if set_plan is not None:  # the sandbox needs the plan and the host paths it must expose
                set_plan(plugin_id, plan=entry.plan, folder=entry.folder, creds=self.identity.creds_for(plugin_id),
                         config=config_path, nats=(self.identity.host, self.identity.port))
            return LaunchSpec(argv=argv, env=self._base_env(), cwd=str(entry.folder), instance=instance)
        return launch

    async def _dependencies(self, folder: Path, requirements: list[str]) -> Path | None:
        """The plugin's installed dependencies (runtime/plugin_deps.py), or
        None when it lists none or was installed from a bundle (whose wheels,
        hash-checked, are in its .deps/, which the runner finds itself).
        Failing to install them is a refused launch."""
        if not requirements or (folder / ".deps").is_dir():
            return None
        from .plugin_deps import DependencyError, ensure

        try:
            return await asyncio.to_thread(ensure, requirements, runner_python=self.runner_python,
                                           state_dir=self.state_dir, index=self.wheel_index)
        except DependencyError as exc:
            raise LaunchRefused(exc.reason, str(exc)) from None

    def _ping_for(self, plugin_id: str):
        async def ping(instance: str, deadline: float) -> bool:
            end = time.monotonic() + deadline
            while time.monotonic() < end:
                try:
                    await self._nc.request(wire.ping(plugin_id, instance), b"{}", timeout=0.5)
                    return True
                except Exception:
                    # No responder yet answers at once: retry soon. A forked
                    # instance is up within tens of ms, and the start gate
                    # (slot.py) waits on this answer for the next start.
                    await asyncio.sleep(0.02)
            return False
        return ping

    async def _launch_nats(self, instance: str) -> LaunchSpec:
        argv = self.identity.server_argv()
        return LaunchSpec(argv=argv, env=self._base_env(), cwd=str(self.state_dir), instance=instance)

    async def _launch_dispatcher(self, instance: str) -> LaunchSpec:
        argv = [sys.executable, "-m", "precinct.services.dispatcher", "--server", self.server_url,
                "--creds", str(self.identity.core_creds()), "--routes", str(self.state_dir / "routes.json")]
        env = {**self._base_env(), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        return LaunchSpec(argv=argv, env=env, cwd=str(self.state_dir), instance=instance)

    async def _launch_storage(self, instance: str) -> LaunchSpec:
        argv = [sys.executable, "-m", "precinct.services.storage", "--server", self.server_url,
                "--creds", str(self.identity.platform_creds()), "--fleet", str(self.state_dir / "fleet.json"),
                "--data-dir", str(self.state_dir / "storage")]
        env = {**self._base_env(), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        return LaunchSpec(argv=argv, env=env, cwd=str(self.state_dir), instance=instance)

    async def _launch_gateway(self, instance: str) -> LaunchSpec:
        argv = [sys.executable, "-m", "precinct.services.gateway", "--server", self.server_url,
                "--creds", str(self.identity.platform_creds()), "--fleet", str(self.state_dir / "fleet.json"),
                "--server-log", str(self.identity.log_path),
                "--offset-file", str(self.state_dir / "gateway-log-offset.json")]
        env = {**self._base_env(), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        return LaunchSpec(argv=argv, env=env, cwd=str(self.state_dir), instance=instance)

    # -- before a plugin starts: suspension and migrations ----------------------

    def _slot_of(self, plugin_id: str) -> Slot | None:
        entry = self.entries.get(plugin_id)
        return entry.slot if entry else None

    def _gated_launcher(self, plugin_id: str):
        """`_launcher_for` behind two gates: a suspended plugin does not start,
        and the migrations in its folder are applied (by storage) first. A
        refusal is a failed launch with a reason (`Suspended`, `MigrationFailed`)."""
        launch = self._launcher_for(plugin_id)

        async def gated(instance: str) -> LaunchSpec:
            entry = self.entries.get(plugin_id)
            if self.violations.is_suspended(plugin_id):
                if entry is not None:
                    self.violations.schedule_suspend(plugin_id, entry.slot)
                raise LaunchRefused(cond.SUSPENDED, self.violations.suspension_message(plugin_id))
            if entry is not None:
                await self._migrate(plugin_id, entry.folder)
            return await launch(instance)
        return gated

    async def _migrate(self, plugin_id: str, folder: Path, wait: float = 60.0) -> None:
        """Ask storage to apply the folder's migrations/NNN_name.sql; waits for
        storage to come up (it starts alongside the plugins)."""
        if not any((folder / "migrations").glob("*.sql")):
            return
        body = json.dumps({"plugin": plugin_id, "folder": str(folder)}).encode()
        deadline = time.monotonic() + wait
        while True:
            try:
                msg = await self._nc.request(wire.STORAGE_MIGRATE, body, timeout=MIGRATION_TIMEOUT)
                break
            except Exception as exc:  # no responders / timeout while storage (re)starts
                if time.monotonic() > deadline:
                    raise LaunchRefused("MigrationFailed", f"the storage service did not answer ({exc!r})") from None
                await asyncio.sleep(0.5)
        try:
            reply = json.loads(msg.data)
        except ValueError:
            reply = {"success": False, "error": {"message": "storage answered with something that is not JSON"}}
        if not reply.get("success"):
            err = reply.get("error") or {}
            text = err.get("message", err) if isinstance(err, dict) else err
            raise LaunchRefused("MigrationFailed", f"migrations not applied: {text}")

    async def _tcp_ready(self, _instance: str, deadline: float) -> bool:
        end = time.monotonic() + deadline
        host, port = self.identity.host, self.identity.port
        while time.monotonic() < end:
            try:
                _r, w = await asyncio.open_connection(host, port)
                w.close()
                return True
            except OSError:
                await asyncio.sleep(0.1)
        return False

    async def _alive(self, _instance: str, _deadline: float) -> bool:
        await asyncio.sleep(0.5)
        return True

    # -- control API ------------------------------------------------------------

    def measure(self) -> None:
        """The monitor's tick: read CPU and memory of every live instance
        (two cgroup reads each). Status requests report these numbers and
        read nothing themselves, so `precinct status` costs the same at 500
        plugins whether or not anyone is watching."""
        for entry in self.entries.values():
            entry.slot.measure()
        for slot in self.services.values():
            slot.measure()

    async def _sampled_status(self) -> dict:
        """What the monitor samples (runtime/monitor.py): fresh numbers, then status."""
        self.measure()
        return await self._op_status({})

    async def _op_status(self, request: dict) -> dict:
        """The fleet's status, built from what the supervisor holds in memory:
        states and conditions as they are now, CPU and memory as the monitor
        last measured them (every `interval_seconds`), the sandbox as it was
        set up (uid, cgroup dirs, limits read back at start). No file is read
        per plugin. `{"plugin": ID}` (`precinct status ID`) answers for that
        plugin alone, measured now and with what only the kernel knows
        (`confinement`: cgroup members, OOM kills, CPU and pids counters)."""
        one = request.get("plugin")
        if one is not None:
            return self._status_of(str(one))
        plugins = {pid: self._plugin_status(pid, entry) for pid, entry in sorted(self.entries.items())}
        for key, row in self._rejected_rows(plugins):
            plugins[key] = row
        return self._status_body(plugins)

    def _status_of(self, name: str) -> dict:
        entry = self.entries.get(name)
        if entry is not None:
            entry.slot.measure()
            return self._status_body({name: self._plugin_status(name, entry, kernel=True)})
        rows = dict(self._rejected_rows({pid: None for pid in self.entries}))
        if name in rows:
            return self._status_body({name: rows[name]})
        known = sorted([*self.entries, *rows])
        raise ControlError(f"no plugin {name!r} here (known: {', '.join(known) or 'none'})")

    def _status_body(self, plugins: dict) -> dict:
        services = {name: slot.snapshot_dict() for name, slot in self.services.items()}
        reporting = getattr(self.confinement, "refusal_reporting", None)
        return {"plugins": plugins, "services": services, "nats": self.server_url,
                "refusals": reporting() if reporting is not None else {},
                "state_dir": str(self.state_dir), "uptime_seconds": round(time.time() - self.started_at, 1)}

    def _plugin_status(self, pid: str, entry: PluginEntry, kernel: bool = False) -> dict:
        self.violations.refresh(pid, entry.slot)
        _limits_condition(entry.slot, self.confinement.enforcement(pid))
        snap = entry.slot.snapshot_dict()
        details = getattr(self.confinement, "details", None)
        snap["confinement"] = details(pid, kernel=kernel) if details is not None else {}
        snap["uid"] = snap["confinement"].get("uid", snap["uid"])
        snap["violations"] = self.violations.summary(pid)
        refusals = getattr(self.confinement, "refusals", None)
        snap["refusals"] = refusals(pid) if refusals is not None else {}
        snap["reloads"] = dict(self.rollouts.outcomes.get(pid, {}))
        snap["revision"] = self.rollouts.revision(pid)
        shown = entry.static_status()
        snap.update(shown, limits=dict(shown["limits"]), permissions=list(shown["permissions"]))
        return snap

    def _rejected_rows(self, taken: dict) -> list[tuple[str, dict]]:
        """Folders that do not run, keyed by plugin id (folder name if the
        manifest has none); a folder whose id another plugin owns appears as
        `<id>@<folder>`."""
        rows: list[tuple[str, dict]] = []
        used = set(taken)
        for folder, info in sorted(self.rejected.items()):
            key = info.get("id") or folder
            if key in used or info["reason"] == ID_CONFLICT:
                key = f"{key}@{folder}"
            while key in used:
                key += "+"
            used.add(key)
            reason = info["reason"]
            rows.append((key, {"id": info.get("id"), "folder": folder, "state": REJECTED, "last_exit": None,
                               "restarts": 0,
                               "conditions": [{"type": cond.READY, "status": "False", "reason": reason,
                                               "message": "; ".join(info["problems"])}],
                               "problems": info["problems"]}))
        return rows

    async def _op_logs(self, request: dict) -> dict:
        """`precinct logs PLUGIN [-f]`: the plugin's captured output (plugin_log.py
        keeps the last TAIL_LINES lines, sanitised). `since` (a sequence number
        from the previous answer) returns only newer lines, for following."""
        name = str(request.get("plugin") or "").strip()
        entry = self.entries.get(name)
        if entry is None:
            rejected = sorted(info.get("id") or folder for folder, info in self.rejected.items())
            hint = f"; {name} was rejected: see `precinct status`" if name in rejected else ""
            raise ControlError(f"no plugin {name!r} is running here (known: "
                               f"{', '.join(sorted(self.entries)) or 'none'}){hint}")
        since = request.get("since")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
            raise ControlError("since must be a sequence number (a whole number >= 0) from an earlier answer")
        lines, next_seq, missed = entry.slot.log.since(since)
        return {"plugin": name, "state": entry.slot.status.state, "lines": lines, "next": next_seq,
                "missed": missed, "dropped_bytes": entry.slot.log.dropped_bytes,
                # A hot reload gives the plugin a new log: a follower starts over on it.
                "log_id": f"{id(entry.slot.log):x}"}

    async def _op_resume(self, request: dict) -> dict:
        """`precinct plugin resume NAME`: lift a suspension and start the plugin."""
        from ..spec.identity import IdError, canonical_id

        name = str(request.get("plugin") or "").strip()
        pid = name
        if pid not in self.entries and not self.violations.is_suspended(pid):
            try:
                pid = canonical_id(name)
            except IdError as exc:
                raise ControlError(f"{name!r} is not a plugin name: {exc}") from None
        entry = self.entries.get(pid)
        suspended = self.violations.is_suspended(pid)
        if entry is None and not suspended:
            raise ControlError(f"no plugin {name!r} (known: {', '.join(sorted(self.entries)) or 'none'})")
        if not suspended and entry is not None and entry.slot.status.state != cond.SUSPENDED:
            raise ControlError(f"plugin {pid} is not suspended (state {entry.slot.status.state})")
        self.violations.resume(pid)
        if entry is None:
            return {"plugin": pid, "resumed": True, "started": False,
                    "message": f"{pid} is no longer suspended; it starts when its folder is back"}
        entry.slot.start()
        log.info("plugin %s resumed by an operator", pid)
        return {"plugin": pid, "resumed": True, "started": True}


def _default_confinement(state_dir: Path) -> Confinement:
    from ..confine.host import for_supervisor

    return for_supervisor(state_dir)


def _limits_condition(slot: Slot, enforcement: dict[str, str]) -> None:
    """LimitsEnforced: False, naming each protection that is not enforced."""
    if not enforcement:
        return
    gaps = [f"{name}: {value}" for name, value in sorted(enforcement.items()) if "MISSING" in value]
    if gaps:
        slot.conditions.set(cond.LIMITS_ENFORCED, False, "NotEnforced", "; ".join(gaps)[:2000])
    else:
        slot.conditions.set(cond.LIMITS_ENFORCED, True, "Enforced",
                            ", ".join(f"{k}={v}" for k, v in sorted(enforcement.items()))[:2000])


__all__ = ["Supervisor", "SupervisorError", "ControlError", "Problem"]
