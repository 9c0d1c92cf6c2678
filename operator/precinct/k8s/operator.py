"""`precinct operator`: run the kopf operator standalone.

Settings chosen against the known kopf pitfalls (anchors.md):
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
import base64
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from . import handlers, health, violations
from . import reconcile as rc
from .api import Api, Connection
from .render import Settings, digest

FINALIZER = "precinct.dev/revoke-nats-account"
ANNOTATIONS_PREFIX = "precinct.dev"


@dataclass(frozen=True)
class OperatorConfig:
    state_dir: Path
    nats_url: str | None = None
    render: Settings = field(default_factory=Settings)
    namespaces: tuple[str, ...] = ()          # empty: all namespaces
    server: str | None = None                 # API server override (tests); else in-cluster or kubeconfig
    retry_delay: float = 60.0
    server_timeout: int = 300                 # whole seconds: the API server refuses "300.0" (issue 15)
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
    settings.watching.server_timeout = config.server_timeout
    settings.watching.client_timeout = config.client_timeout
    settings.watching.connect_timeout = 30
    settings.watching.inactivity_timeout = config.client_timeout + 30
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS_PREFIX)
    settings.persistence.diffbase_storage = DigestDiffBase(prefix=ANNOTATIONS_PREFIX, key="last-handled-digest")
    settings.posting.level = logging.WARNING       # kopf's own per-handler events: only problems
    settings.execution.max_workers = 4
    settings.queueing.error_delays = [1, 5, 15, 60, 120]


def _pem(data: str | bytes | None) -> bytes | None:
    """A kubeconfig's *-data fields arrive from kopf still base64-encoded (issue 15)."""
    if data is None:
        return None
    raw = data if isinstance(data, bytes) else data.encode()
    return raw if raw.lstrip().startswith(b"-----BEGIN") else base64.b64decode(raw)


def _as_file(data: str | bytes | None, suffix: str) -> str | None:
    raw = _pem(data)
    if raw is None:
        return None
    handle = tempfile.NamedTemporaryFile(prefix="precinct-", suffix=suffix, delete=False)  # noqa: SIM115
    handle.write(raw)
    handle.close()
    return handle.name


def connection_from(info: kopf.ConnectionInfo) -> Connection:
    """kopf's login result -> our client's connection (same credentials)."""
    ca_data = _pem(info.ca_data)
    return Connection(
        server=info.server, token=info.token, ca_path=str(info.ca_path) if info.ca_path else None,
        ca_data=ca_data, insecure=bool(info.insecure),
        cert_path=str(info.certificate_path) if info.certificate_path else _as_file(info.certificate_data, ".crt"),
        key_path=str(info.private_key_path) if info.private_key_path else _as_file(info.private_key_data, ".key"),
    )


def login(config: OperatorConfig, settings: kopf.OperatorSettings, logger: Any) -> kopf.ConnectionInfo:
    if config.server:
        return kopf.ConnectionInfo(server=config.server, insecure=True)
    info = kopf.login_with_service_account(settings=settings, logger=logger) or \
        kopf.login_with_kubeconfig(settings=settings, logger=logger)
    if info is None:
        raise kopf.LoginError("no in-cluster service account and no kubeconfig: nothing to connect to")
    return info


def build_runtime(config: OperatorConfig, info: kopf.ConnectionInfo,
                  credentials: rc.Credentials | None = None) -> handlers.Runtime:
    ctx = rc.Context(
        api=Api(connection_from(info)), settings=config.render,
        credentials=credentials or rc.Credentials.from_state_dir(config.state_dir, config.nats_url),
        retry_delay=config.retry_delay,
    )
    return handlers.Runtime(ctx)


def make_registry(config: OperatorConfig, holder: dict[str, Any],
                  credentials: rc.Credentials | None = None) -> kopf.OperatorRegistry:
    """The handlers' registry plus startup/login/cleanup bound to `config`."""
    registry = handlers.register(kopf.OperatorRegistry())
    health.register(registry, holder)

    @kopf.on.startup(registry=registry)
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, config)

    @kopf.on.login(registry=registry)
    async def _login(settings: kopf.OperatorSettings, logger: Any, memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
        info = login(config, settings, logger)
        if "runtime" not in holder:
            runtime = build_runtime(config, info, credentials)
            holder["runtime"] = memo.precinct = runtime
            if config.nats_url:
                runtime.violations_subscribed = False
                runtime.background.append(asyncio.create_task(_watch_violations(config.nats_url, runtime)))
        return info

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        runtime = holder.get("runtime")
        if runtime is not None:
            for task in runtime.background:
                task.cancel()
            await asyncio.gather(*runtime.background, return_exceptions=True)
            await runtime.ctx.api.close()
            await runtime.ctx.credentials.identity.close()

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
                credentials: rc.Credentials | None = None, holder: dict[str, Any] | None = None) -> None:
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
    if config.metrics_port is not None:
        from .metrics import serve as serve_metrics

        serve_metrics(config.metrics_port)
    asyncio.run(serve(config))
    return 0
