"""The fleet's NATS accounts, through natsauth.Identity (one per operator).

natsauth works on the whole fleet (`Identity.sync(plans)` issues what is new,
re-signs what changed and revokes any plugin missing from the list), and a
durable issue costs several fsyncs per plugin. So syncs are coalesced: every
reconcile or finalizer asks for "a sync that includes the fleet as it is
now", one worker runs syncs back to back with the accepted plans of the
claims index at that moment, and every caller waiting when a sync starts is
answered by it. A burst of N new BotPlugins costs a handful of syncs, not N.

The worker runs in a thread with its own event loop (and its own NATS
connection): signing and fsync never stall the operator's event loop, where
kopf's watches and every other reconcile run.

Callers must only ask once the claims index holds the whole fleet (kopf
fills its indexes before handlers run): a sync of a partial fleet would
revoke the plugins missing from it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ..natsauth.identity import Identity
from ..plan.sandbox import SandboxPlan

log = logging.getLogger("precinct.operator")

NATS_UNAVAILABLE = "NatsUnavailable"
Result = tuple[bool, str, str]          # (ok, reason, message) for CredentialsReady


class Credentials:
    def __init__(self, identity: Identity, nats_url: str | None,
                 plans: Callable[[], list[SandboxPlan]] | None = None, *, threaded: bool = True) -> None:
        self.identity = identity
        self.threaded = threaded          # False: sync in the caller's loop (an Identity already connected there)
        self.nats_url = nats_url
        self.plans = plans or (lambda: [])
        self.problem: str | None = None
        self.syncs = 0                                  # completed syncs (tests, metrics)
        self.issued: dict[str, SandboxPlan] = {}        # plugin id -> plan of the last successful sync
        self._asked = 0                                 # requests so far
        self._started = 0                               # requests covered by the sync under way or done
        self._done = 0                                  # requests answered
        self._result: Result = (False, "NotIssued", "no sync yet")
        self._changed: asyncio.Condition | None = None
        self._runner: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_state_dir(cls, state_dir: Path, nats_url: str | None) -> "Credentials":
        return cls(Identity(state_dir), nats_url)

    # -- the worker thread --------------------------------------------------------

    def _worker(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            ready = threading.Event()

            def main() -> None:
                self._loop = asyncio.new_event_loop()
                ready.set()
                self._loop.run_forever()

            self._thread = threading.Thread(target=main, name="precinct-credentials", daemon=True)
            self._thread.start()
            ready.wait()
        assert self._loop is not None
        return self._loop

    async def _in_worker(self, coro: Any) -> Any:
        if not self.threaded:
            return await coro
        future: Future = asyncio.run_coroutine_threadsafe(coro, self._worker())
        return await asyncio.wrap_future(future)

    async def _sync_now(self, plans: list[SandboxPlan]) -> Result:
        """Runs in the worker thread's loop."""
        try:
            if self.nats_url and self.identity._nc is None:
                self.identity.prepare(plans)      # system creds must exist before connecting
                await self.identity.connect(self.nats_url)
            result = await self.identity.sync(plans)
        except Exception as exc:  # noqa: BLE001 - any NATS trouble is reported, then retried
            self.problem = f"{type(exc).__name__}: {exc}"
            log.warning("NATS account sync failed: %s", self.problem)
            return False, NATS_UNAVAILABLE, f"could not push accounts to {self.nats_url}: {self.problem}"[:1000]
        self.problem = None
        if result.live:
            return True, "Pushed", "account and user issued and pushed to the NATS resolver"
        return True, "Issued", "account and user issued (no NATS URL configured: not pushed)"

    # -- coalescing -----------------------------------------------------------------

    async def sync(self) -> Result:
        """Wait for a sync that started after this call (so it saw the fleet as it is now)."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        self._asked += 1
        mine = self._asked
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        async with self._changed:
            self._changed.notify_all()
            await self._changed.wait_for(lambda: self._done >= mine)
        return self._result

    async def _run(self) -> None:
        assert self._changed is not None
        while self._started < self._asked:
            self._started = self._asked
            plans = self.plans()
            began = time.monotonic()
            try:
                self._result = await self._in_worker(self._sync_now(plans))
            except Exception as exc:  # noqa: BLE001 - never leave callers waiting
                self._result = (False, NATS_UNAVAILABLE, f"{type(exc).__name__}: {exc}"[:1000])
            if self._result[0]:
                self.issued = {plan.id: plan for plan in plans}
            self.syncs += 1
            log.info("NATS accounts synced for %d plugin(s) in %.1f s (%s)", len(plans), time.monotonic() - began,
                     self._result[1])
            async with self._changed:
                self._done = self._started
                self._changed.notify_all()

    # -- reading ----------------------------------------------------------------------

    @property
    def last(self) -> Result:
        """What the last sync reported."""
        return self._result

    def creds_text(self, plugin_id: str) -> str | None:
        try:
            return self.identity.creds_for(plugin_id).read_text()
        except (KeyError, OSError):
            return None

    def has_account(self, plugin_id: str) -> bool:
        """Its user creds exist (one stat; listing every plugin's keys would cost O(fleet))."""
        try:
            self.identity.creds_for(plugin_id)
        except KeyError:
            return False
        return True

    def account_key(self, role: str) -> str:
        return self.identity.account_key(role)

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        if self._loop is not None:
            # A sync under way (seconds of signing at thousands of plugins) is not
            # waited for: its writes are atomic files, and the thread dies with the process.
            try:
                await asyncio.wait_for(self._in_worker(self.identity.close()), timeout=3)
            except Exception as exc:  # noqa: BLE001 - closing anyway
                log.debug("closing the NATS connection of the credentials worker: %s", exc)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
        else:
            await self.identity.close()
