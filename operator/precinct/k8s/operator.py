"""`precinct operator`: run the kopf operator standalone.

Settings chosen against the kopf pitfalls other operators have hit (silent
watch streams, peering freezes, an oversized last-handled annotation):
  - standalone: no peering (its freezes); deploy the operator with
    `strategy: Recreate` so two never run at once;
  - watch streams time out on both ends (server 5 min, client a bit later)
    and restart, so a silently dead stream cannot hang the operator;
  - the diff base is a short digest annotation, not the whole last-handled
    spec (a big `config` would otherwise hit the annotation size limit);
  - progress annotations live under precinct.dev and only while a handler
    retries; our own finalizer name says what it waits for.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from . import handlers, health, violations
from . import reconcile as rc
from .client import Api, configuration, connection_info
from .credentials import Credentials
from .render import Settings, digest
from ..wire.kubernetes import FINALIZER, OPERATOR_PREFIX as ANNOTATIONS_PREFIX



@dataclass(frozen=True)
class OperatorConfig:
    state_dir: Path
    nats_url: str | None = None
    render: Settings = field(default_factory=Settings)
    namespaces: tuple[str, ...] = ()          # empty: all namespaces
    server: str | None = None                 # API server override (tests); else in-cluster or kubeconfig
    retry_delay: float = 60.0
    server_timeout: int = 300                 # an integer: the API server parses timeoutSeconds with ParseInt
    client_timeout: float = 330.0
    metrics_port: int | None = None           # Prometheus /metrics (k8s/metrics.py); None = off
    liveness_endpoint: str | None = None      # kopf's health endpoint, e.g. http://0.0.0.0:8080/healthz (k8s/health.py)


class DigestDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Keeps only a digest of the last handled essence: enough to tell that
    something changed (the handlers are level-based and never read the diff)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        return {"digest": digest(dict(essence), 32)}


def configure(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    settings.watching.server_timeout = int(config.server_timeout)
    settings.watching.client_timeout = config.client_timeout
    settings.watching.connect_timeout = 30
    settings.watching.inactivity_timeout = config.client_timeout + 30
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS_PREFIX)
    settings.persistence.diffbase_storage = DigestDiffBase(prefix=ANNOTATIONS_PREFIX, key="last-handled-digest")
    settings.posting.level = logging.WARNING       # kopf's own per-handler events: only problems
    settings.execution.max_workers = 4
    settings.queueing.error_delays = [1, 5, 15, 60, 120]
    # SIGTERM: workers get 2 s to finish, then kopf's cleanup; past 30 s kopf kills itself.
    settings.queueing.exit_timeout = 2.0
    settings.process.ultimate_exiting_timeout = 30.0


async def login(config: OperatorConfig) -> tuple[Api, kopf.ConnectionInfo]:
    """Credentials through the official client's loaders (service account with
    token refresh, else kubeconfig with embedded data decoded), shared with
    kopf's watches."""
    try:
        cfg = await configuration(config.server)
    except Exception as exc:  # noqa: BLE001 - ConfigException and file errors alike
        raise kopf.LoginError(f"no in-cluster service account and no usable kubeconfig: {exc}") from exc
    return Api(cfg), connection_info(cfg)


def build_runtime(config: OperatorConfig, api: Api, credentials: Credentials | None = None) -> handlers.Runtime:
    ctx = rc.Context(
        api=api, settings=config.render,
        credentials=credentials or Credentials.from_state_dir(config.state_dir, config.nats_url),
        retry_delay=config.retry_delay,
    )
    runtime = handlers.Runtime(ctx)
    assert ctx.fleet is not None
    if ctx.fleet.enabled:
        runtime.background.append(asyncio.create_task(ctx.fleet.run()))
    return runtime


def make_registry(config: OperatorConfig, holder: dict[str, Any],
                  credentials: Credentials | None = None) -> kopf.OperatorRegistry:
    """The handlers' registry plus startup/login/cleanup bound to `config`."""
    registry = handlers.register(kopf.OperatorRegistry())
    health.register(registry, holder)

    @kopf.on.startup(registry=registry)
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, config)

    @kopf.on.login(registry=registry)
    async def _login(settings: kopf.OperatorSettings, logger: Any, memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
        api, info = await login(config)
        if "runtime" not in holder:
            runtime = build_runtime(config, api, credentials)
            holder["runtime"] = memo.precinct = runtime
            if config.nats_url:
                runtime.violations_subscribed = False
                runtime.background.append(asyncio.create_task(_watch_violations(config.nats_url, runtime)))
        else:   # a re-login (kopf saw a 401): our client re-reads a rotated token by itself
            await api.close()
        return info

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        runtime = holder.get("runtime")
        if runtime is not None:
            await runtime.stop()
            if runtime.ctx.fleet is not None and runtime.ctx.fleet.enabled:
                try:   # what changed in the last second still reaches the gateway and storage
                    await asyncio.wait_for(runtime.ctx.fleet.flush(), timeout=5)
                except Exception as exc:  # noqa: BLE001 - shutting down anyway
                    logging.getLogger("precinct.operator").warning("last fleet flush failed: %s", exc)
            for task in runtime.background:
                task.cancel()
            await asyncio.gather(*runtime.background, return_exceptions=True)
            await runtime.ctx.api.close()
            await runtime.ctx.credentials.close()

    return registry


async def _watch_violations(url: str, runtime: handlers.Runtime) -> None:
    """Subscribe to the gateway's violation events once platform creds exist
    (the first reconcile issues them)."""
    identity = runtime.ctx.credentials.identity
    nc = None
    try:
        while nc is None:
            try:
                creds = identity.platform_creds()
                nc = await violations.subscribe(url, str(creds), runtime.on_violation)
                runtime.violations_subscribed = True
            except (KeyError, OSError, asyncio.TimeoutError) as exc:
                logging.getLogger("precinct.operator").debug("violations: not subscribed yet: %s", exc)
                await asyncio.sleep(5)
            except Exception as exc:  # noqa: BLE001 - NATS not reachable yet
                logging.getLogger("precinct.operator").warning("violations: cannot subscribe: %s", exc)
                await asyncio.sleep(5)
        from .metrics import poll_services   # the gateway's and storage's counters, for /metrics

        await poll_services(nc)
    finally:
        if nc is not None:
            await nc.close()


async def serve(config: OperatorConfig, *, stop_flag: asyncio.Event | None = None,
                credentials: Credentials | None = None, holder: dict[str, Any] | None = None) -> None:
    """Run until `stop_flag` is set (or forever)."""
    holder = holder if holder is not None else {}
    registry = make_registry(config, holder, credentials)
    memo = kopf.Memo()
    await kopf.operator(
        registry=registry, standalone=True, memo=memo, stop_flag=stop_flag,
        clusterwide=not config.namespaces, namespaces=list(config.namespaces),
        liveness_endpoint=config.liveness_endpoint,
    )


def run(config: OperatorConfig, *, verbose: bool = False) -> int:
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.PLAIN)
    if not verbose:
        # kopf logs every handler run per object at INFO: thousands of lines a
        # second in a burst, for nothing an admin acts on. Problems stay visible.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if config.metrics_port is not None:
        from .metrics import serve as serve_metrics

        serve_metrics(config.metrics_port)
    asyncio.run(serve(config))
    return 0
