"""The operator's Kubernetes API calls, through the official asyncio client
(`kubernetes_asyncio`): typed API classes per kind, pagination, credentials
from the in-cluster service account (the token file is re-read as it rotates)
or a kubeconfig (embedded certificate data included), and retries with
backoff on 429 and 5xx. kopf's own watches use the same credentials
(`connection_info()`).

The verbs take and return plain dicts (the renderer's output and what
status.py reads). Single objects are read as JSON (`_preload_content=False`)
instead of through the typed models: turning a Deployment into a
V1Deployment and back costs ~5 ms of CPU against 0.03 ms for the JSON, which
at thousands of BotPlugins was most of the operator's CPU. Lists use the
typed replies (their items are small and rare). Replies nobody reads
(applies of children, status patches, Events) are not parsed at all.

Memory: importing `kubernetes_asyncio.client` loads every model (~860
modules, about 39 MiB RSS); kopf imports it too when it is installed
(kopf's third-party type checks), so it is paid once (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from ..wire.kubernetes import API_GROUP, API_VERSION

log = logging.getLogger("precinct.operator")

FIELD_MANAGER = "precinct-operator"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
PAGE = 500

# kind -> (typed API class, method stem); None = the BotPlugin custom resource
KINDS: dict[str, tuple[type, str] | None] = {
    "ServiceAccount": (k8s.CoreV1Api, "service_account"),
    "Secret": (k8s.CoreV1Api, "secret"),
    "ConfigMap": (k8s.CoreV1Api, "config_map"),
    "Pod": (k8s.CoreV1Api, "pod"),
    "Event": (k8s.CoreV1Api, "event"),
    "NetworkPolicy": (k8s.NetworkingV1Api, "network_policy"),
    "Deployment": (k8s.AppsV1Api, "deployment"),
    "BotPlugin": None,
}
PLURAL = "botplugins"


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body).get("message") or exc.reason or ""
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or exc.reason or "")


async def configuration(server: str | None = None) -> k8s.Configuration:
    """In-cluster service account (token re-read as it rotates), else the
    kubeconfig; `server` (tests, benchmarks) = that URL without credentials."""
    if server:
        return plain_configuration(server)
    cfg = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=cfg, try_refresh_token=True)
    except k8s_config.ConfigException:
        # $KUBECONFIG as it is now (the library reads it once, at import)
        await k8s_config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=cfg)
    return cfg


def plain_configuration(server: str) -> k8s.Configuration:
    """A server URL without credentials (the tests' and benchmark's stand-in)."""
    cfg = k8s.Configuration()
    cfg.host = server.rstrip("/")
    cfg.verify_ssl = False
    return cfg


def connection_info(cfg: k8s.Configuration) -> Any:
    """The same credentials as a kopf.ConnectionInfo (file paths: the client
    already decoded any embedded base64 data into files)."""
    import kopf

    token = (cfg.api_key or {}).get("BearerToken") or (cfg.api_key or {}).get("authorization") or ""
    scheme, _, value = token.partition(" ") if " " in token else ("Bearer", "", token)
    return kopf.ConnectionInfo(
        server=cfg.host, insecure=not cfg.verify_ssl, ca_path=cfg.ssl_ca_cert or None,
        certificate_path=cfg.cert_file or None, private_key_path=cfg.key_file or None,
        scheme=scheme if value else None, token=value or None,
        username=cfg.username or None, password=cfg.password or None,
    )


class Api:
    """The verbs the operator uses, with retries (`attempts`, exponential backoff)."""

    def __init__(self, cfg: k8s.Configuration, *, attempts: int = 6, base_delay: float = 0.2,
                 max_delay: float = 10.0, pool: int = 32, page: int = PAGE) -> None:
        cfg.connection_pool_maxsize = pool
        self.cfg = cfg
        self.client = k8s.ApiClient(cfg)
        self.client.user_agent = f"{FIELD_MANAGER}/kubernetes_asyncio"
        self.attempts, self.base_delay, self.max_delay, self.page = attempts, base_delay, max_delay, page
        self._apis: dict[type, Any] = {}
        self.custom = k8s.CustomObjectsApi(self.client)

    @classmethod
    async def connect(cls, server: str | None = None, **kwargs: Any) -> "Api":
        return cls(await configuration(server), **kwargs)

    async def close(self) -> None:
        await self.client.close()

    def _typed(self, kind: str) -> tuple[Any, str]:
        entry = KINDS[kind]
        assert entry is not None
        api_class, stem = entry
        if api_class not in self._apis:
            self._apis[api_class] = api_class(self.client)
        return self._apis[api_class], stem

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call `fn`, retrying 429/5xx and connection failures with backoff
        (Retry-After is honoured). Other errors raise ApiError at once."""
        delay = self.base_delay
        for attempt in range(1, self.attempts + 1):
            try:
                reply = await fn(*args, **kwargs)
                if kwargs.get("_preload_content") is False:
                    return await self._raw(what, reply)
                return reply
            except ApiException as exc:
                if exc.status not in RETRY_STATUS or attempt == self.attempts:
                    raise ApiError(exc.status, f"{what}: {_message(exc)}") from None
                wait = _retry_after(exc) or delay
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                if attempt == self.attempts:
                    raise ApiError(0, f"{what}: {type(exc).__name__}: {exc}") from None
                wait = delay
            except _Retry as exc:
                if attempt == self.attempts:
                    raise ApiError(exc.status, f"{what}: {exc.message}") from None
                wait = exc.after or delay
            log.debug("%s: retrying in %.1f s (attempt %d)", what, wait, attempt)
            await asyncio.sleep(wait * (0.5 + random.random()))   # nosec B311 - jitter spreads retries, not a secret
            delay = min(delay * 2, self.max_delay)
        raise AssertionError("unreachable")

    @staticmethod
    async def _raw(what: str, response: Any) -> dict[str, Any]:
        """A reply read as JSON, without the client's model deserializer."""
        try:
            data = await response.read()
        finally:
            response.release()
        if 200 <= response.status < 300:
            return json.loads(data) if data else {}
        try:
            message = json.loads(data).get("message", "")
        except (ValueError, AttributeError):
            message = data.decode(errors="replace")[:300]
        if response.status in RETRY_STATUS:
            raise _Retry(response.status, message, _seconds(response.headers.get("Retry-After")))
        raise ApiError(response.status, f"{what}: {message}")

    def _plain(self, obj: Any) -> dict[str, Any]:
        return obj if isinstance(obj, dict) else self.client.sanitize_for_serialization(obj)

    # -- verbs ---------------------------------------------------------------

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        what = f"GET {kind} {namespace}/{name}"
        try:
            if KINDS[kind] is None:
                return await self._call(what, self.custom.get_namespaced_custom_object,
                                        API_GROUP, API_VERSION, namespace, PLURAL, name)
            api, stem = self._typed(kind)
            return await self._call(what, getattr(api, f"read_namespaced_{stem}"), name, namespace,
                                    _preload_content=False)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every page (limit/continue), as dicts."""
        selector = ",".join(f"{k}={v}" for k, v in (labels or {}).items())
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.page}
            if selector:
                kwargs["label_selector"] = selector
            if token:
                kwargs["_continue"] = token
            what = f"LIST {kind} {namespace}"
            if KINDS[kind] is None:
                reply = await self._call(what, self.custom.list_namespaced_custom_object,
                                         API_GROUP, API_VERSION, namespace, PLURAL, **kwargs)
                items.extend(reply.get("items") or [])
                token = (reply.get("metadata") or {}).get("continue")
            else:
                api, stem = self._typed(kind)
                reply = await self._call(what, getattr(api, f"list_namespaced_{stem}"), namespace, **kwargs)
                items.extend(self._plain(i) for i in reply.items or [])
                token = reply.metadata._continue if reply.metadata else None
            if not token:
                return items

    async def apply(self, obj: dict[str, Any], *, reply: bool = True) -> dict[str, Any]:
        """Server-side apply as FIELD_MANAGER, forcing ownership of the fields we set.
        `reply=False`: the applied object is not needed (not deserialized; {} returned)."""
        meta = obj["metadata"]
        kind, namespace, name = obj["kind"], meta["namespace"], meta["name"]
        what = f"APPLY {kind} {namespace}/{name}"
        options = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY}
        if KINDS[kind] is None:
            return await self._call(what, self.custom.patch_namespaced_custom_object, API_GROUP, API_VERSION,
                                    namespace, PLURAL, name, obj, **options)
        api, stem = self._typed(kind)
        options["_preload_content"] = False
        result = await self._call(what, getattr(api, f"patch_namespaced_{stem}"), name, namespace, obj, **options)
        return result if reply else {}

    async def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any],
                    subresource: str | None = None, *, reply: bool = True) -> dict[str, Any]:
        """JSON merge patch (of `status` with subresource='status')."""
        what = f"PATCH {kind} {namespace}/{name}" + (f"/{subresource}" if subresource else "")
        suffix = "_status" if subresource == "status" else ""
        options: dict[str, Any] = {"_content_type": MERGE, "field_manager": FIELD_MANAGER,
                                   "_preload_content": False}
        if KINDS[kind] is None:
            fn = getattr(self.custom, f"patch_namespaced_custom_object{suffix}")
            return await self._call(what, fn, API_GROUP, API_VERSION, namespace, PLURAL, name, body, **options)
        api, stem = self._typed(kind)
        result = await self._call(what, getattr(api, f"patch_namespaced_{stem}{suffix}"), name, namespace, body,
                                  **options)
        return result if reply else {}

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        what = f"DELETE {kind} {namespace}/{name}"
        try:
            if KINDS[kind] is None:
                await self._call(what, self.custom.delete_namespaced_custom_object, API_GROUP, API_VERSION,
                                 namespace, PLURAL, name, _preload_content=False)
            else:
                api, stem = self._typed(kind)
                await self._call(what, getattr(api, f"delete_namespaced_{stem}"), name, namespace,
                                 _preload_content=False)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def create(self, obj: dict[str, Any], *, reply: bool = True) -> dict[str, Any]:
        meta = obj["metadata"]
        kind, namespace = obj["kind"], meta["namespace"]
        what = f"CREATE {kind} {namespace}/{meta.get('name') or meta.get('generateName', '')}"
        options: dict[str, Any] = {"field_manager": FIELD_MANAGER, "_preload_content": False}
        if KINDS[kind] is None:
            return await self._call(what, self.custom.create_namespaced_custom_object, API_GROUP, API_VERSION,
                                    namespace, PLURAL, obj, **options)
        api, stem = self._typed(kind)
        result = await self._call(what, getattr(api, f"create_namespaced_{stem}"), namespace, obj, **options)
        return result if reply else {}


class _Retry(Exception):
    def __init__(self, status: int, message: str, after: float | None) -> None:
        super().__init__(message)
        self.status, self.message, self.after = status, message, after


def _seconds(value: str | None) -> float | None:
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None


def _retry_after(exc: ApiException) -> float | None:
    return _seconds((exc.headers or {}).get("Retry-After"))
