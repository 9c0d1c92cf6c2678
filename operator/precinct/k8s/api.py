"""A small async Kubernetes REST client: just the verbs the operator uses.

Why not the `kubernetes` package: it is synchronous and costs ~100 MB of the
operator's memory (anchors.md). kopf already brings aiohttp; this module
speaks plain REST over it, with server-side apply for children so that
fields we stop setting disappear and fields others own (for example
`kubectl rollout restart`'s annotation) stay.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

FIELD_MANAGER = "precinct-operator"

# kind -> (api prefix, plural). Only what the operator touches.
KINDS: dict[str, tuple[str, str]] = {
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Secret": ("/api/v1", "secrets"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "BotPlugin": ("/apis/precinct.dev/v1alpha1", "botplugins"),
}


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class Connection:
    server: str
    token: str | None = None
    ca_path: str | None = None
    ca_data: bytes | None = None
    cert_path: str | None = None
    key_path: str | None = None
    insecure: bool = False


def path_for(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    prefix, plural = KINDS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class Api:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        c = self.connection
        if not c.server.startswith("https"):
            return False
        if c.insecure:
            return False
        ctx = ssl.create_default_context(cafile=c.ca_path, cadata=c.ca_data.decode() if c.ca_data else None)
        if c.cert_path:
            ctx.load_cert_chain(c.cert_path, c.key_path)
        return ctx

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json"}
            if self.connection.token:
                headers["Authorization"] = f"Bearer {self.connection.token}"
            self._session = aiohttp.ClientSession(
                base_url=self.connection.server.rstrip("/") + "/", headers=headers,
                connector=aiohttp.TCPConnector(ssl=self._ssl()),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, *, body: Any = None, content_type: str = "application/json",
                    params: dict[str, str] | None = None) -> dict[str, Any] | None:
        session = await self.session()
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        async with session.request(method, path.lstrip("/"), data=data, headers=headers, params=params) as resp:
            text = await resp.text()
            if resp.status == 404 and method in ("GET", "DELETE"):
                return None
            if resp.status >= 400:
                try:
                    message = json.loads(text).get("message", text)
                except (ValueError, AttributeError):
                    message = text
                raise ApiError(resp.status, f"{method} {path}: {message}")
            return json.loads(text) if text else {}

    # -- verbs ---------------------------------------------------------------

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._call("GET", path_for(kind, namespace, name))

    async def list(self, kind: str, namespace: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        reply = await self._call("GET", path_for(kind, namespace), params=params) or {}
        items = reply.get("items") or []
        if labels:   # also filter here: cheap, and safe against servers that ignore the selector
            items = [i for i in items if all(i.get("metadata", {}).get("labels", {}).get(k) == v
                                              for k, v in labels.items())]
        return items

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply, forcing ownership of the fields we set."""
        meta = obj["metadata"]
        path = path_for(obj["kind"], meta["namespace"], meta["name"])
        reply = await self._call("PATCH", path, body=obj, content_type="application/apply-patch+yaml",
                                 params={"fieldManager": FIELD_MANAGER, "force": "true"})
        assert reply is not None
        return reply

    async def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any],
                    subresource: str | None = None) -> dict[str, Any]:
        reply = await self._call("PATCH", path_for(kind, namespace, name, subresource), body=body,
                                 content_type="application/merge-patch+json")
        assert reply is not None
        return reply

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        return await self._call("DELETE", path_for(kind, namespace, name)) is not None

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        reply = await self._call("POST", path_for(obj["kind"], meta["namespace"]), body=obj)
        assert reply is not None
        return reply
