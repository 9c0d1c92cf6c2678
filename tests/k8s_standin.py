"""A small in-process Kubernetes API server for the operator tests.

Why not kmock's KubernetesEmulator alone: it merges every write into one
dict, so it has no status subresource (status writes and spec writes mix),
no metadata.generation, uid, creationTimestamp or resourceVersion (kopf's
watches resume from a resourceVersion), no label selectors, no server-side
apply, no ownerReference garbage collection and no Deployment controller.
Each would need overriding its private (name-mangled) methods. This stand-in
implements exactly those semantics, faithfully enough for the handlers:

  - create / get / list (labelSelector a=b,...) / delete, 409 and 404 Status
  - PATCH: merge-patch (RFC 7386, null deletes) and server-side apply
    (fields the applier sends replace ours; labels/annotations merge, so
    annotations set by others, like kubectl's restartedAt, survive)
  - /status is a subresource: it changes only status; the main resource
    ignores status; metadata.generation grows when anything but
    metadata/status changes
  - finalizers block deletion (deletionTimestamp is set instead); removing
    the last one deletes; deletion collects dependents by ownerReferences
  - watch streams (?watch=true&resourceVersion=N&timeoutSeconds=S) and the
    discovery documents kopf reads

What it does not do is run controllers: tests script the Deployment status
and the Pods (`set_status`, `put`), as a kubelet and the Deployment
controller would.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

@dataclass(frozen=True)
class Res:
    prefix: str          # /api/v1 or /apis/<group>/<version>
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = False


RESOURCES = [
    Res("/api/v1", "pods", "Pod", status=True),
    Res("/api/v1", "secrets", "Secret"),
    Res("/api/v1", "configmaps", "ConfigMap"),
    Res("/api/v1", "serviceaccounts", "ServiceAccount"),
    Res("/api/v1", "events", "Event"),
    Res("/api/v1", "namespaces", "Namespace", namespaced=False),
    Res("/apis/apps/v1", "deployments", "Deployment", status=True),
    Res("/apis/networking.k8s.io/v1", "networkpolicies", "NetworkPolicy"),
    Res("/apis/precinct.dev/v1alpha1", "botplugins", "BotPlugin", status=True),
    Res("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False),
]
BY_PATH = {(r.prefix, r.plural): r for r in RESOURCES}


@dataclass(frozen=True)
class Call:
    """One request as the server saw it (tests map these to RBAC verbs)."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    authorization: str
BY_KIND = {r.kind: r for r in RESOURCES}


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[Any]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """RFC 6902: add, remove, replace, test (what API clients send)."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        kind = op["op"]
        if kind == "test":
            current = target[int(last)] if isinstance(target, list) else target.get(last)
            if current != op.get("value"):
                raise web.HTTPUnprocessableEntity(text="test failed")
        elif kind == "remove":
            if isinstance(target, list):
                del target[int(last)]
            else:
                target.pop(last, None)
        elif kind in ("add", "replace"):
            if isinstance(target, list):
                if last == "-":
                    target.append(copy.deepcopy(op["value"]))
                elif kind == "add":
                    target.insert(int(last), copy.deepcopy(op["value"]))
                else:
                    target[int(last)] = copy.deepcopy(op["value"])
            else:
                target[last] = copy.deepcopy(op["value"])
        else:
            raise web.HTTPUnprocessableEntity(text=f"unsupported op {kind}")


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class StandIn:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}   # (kind, ns, name)
        self.rv = 0
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []            # (rv, kind, type, object)
        self.changed = asyncio.Condition()
        self.requests: list[tuple[str, str]] = []
        self.calls: list[Call] = []                                               # every request, for RBAC checks
        self.created_by_apply: set[tuple[str, str | None, str]] = set()           # SSA that created: RBAC `create`
        self.fail: dict[tuple[str, str], int] = {}                                # (method, kind) -> times
        self.hang: dict[tuple[str, str], asyncio.Event] = {}                      # (method, kind) -> released when set
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> "StandIn":
        # shutdown_timeout: watches of a client that is gone end at once, not after 60 s
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- scripting (what controllers and kubelets would do) ----------------------

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    def all(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [o for (k, ns, _), o in sorted(self.objects.items()) if k == kind and (namespace is None or ns == namespace)]

    async def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        async with self.changed:
            return self._create(BY_KIND[obj["kind"]], obj["metadata"].get("namespace"), copy.deepcopy(obj))

    async def set_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        async with self.changed:
            obj = self.objects[(kind, namespace, name)]
            obj["status"] = copy.deepcopy(status)
            self._touch(kind, "MODIFIED", obj)
            return obj

    # -- storage -----------------------------------------------------------------

    def _touch(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, kind, type_, copy.deepcopy(obj)))
        self.changed.notify_all()

    def _create(self, res: Res, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        key = (res.kind, namespace if res.namespaced else None, meta["name"])
        if key in self.objects:
            raise web.HTTPConflict(text=self._status(409, "AlreadyExists", f"{res.plural} {meta['name']!r} already exists"),
                                   content_type="application/json")
        prefix = res.prefix[len("/apis/"):] if res.prefix.startswith("/apis/") else "v1"
        obj["apiVersion"], obj["kind"] = prefix, res.kind
        if res.namespaced:
            meta["namespace"] = namespace
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        self.objects[key] = obj
        self._touch(res.kind, "ADDED", obj)
        return obj

    def _remove(self, key: tuple[str, str | None, str]) -> None:
        obj = self.objects.pop(key)
        self._touch(key[0], "DELETED", obj)
        uid = obj["metadata"]["uid"]
        # Garbage collection: dependents go with their owner.
        for other_key, other in list(self.objects.items()):
            refs = other["metadata"].get("ownerReferences") or []
            if other_key in self.objects and any(ref.get("uid") == uid for ref in refs):
                self._delete(other_key)

    def _delete(self, key: tuple[str, str | None, str]) -> dict[str, Any]:
        obj = self.objects[key]
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = _now()
                self._touch(key[0], "MODIFIED", obj)
        else:
            self._remove(key)
        return obj

    def _write(self, res: Res, key: tuple[str, str | None, str], new: dict[str, Any]) -> dict[str, Any]:
        old = self.objects[key]
        if _content(new) != _content(old):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if new == old:
            return old
        self.objects[key] = new
        self._touch(res.kind, "MODIFIED", new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(key)
        return new

    @staticmethod
    def _status(code: int, reason: str, message: str) -> str:
        return json.dumps({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code,
                           "reason": reason, "message": message})

    # -- HTTP ------------------------------------------------------------------------

    def _route(self, path: str) -> tuple[Res, str | None, str | None, str | None]:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            prefix, rest = "/api/v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            prefix, rest = "/" + "/".join(parts[:3]), parts[3:]
        else:
            raise web.HTTPNotFound(text=self._status(404, "NotFound", path), content_type="application/json")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        res = BY_PATH.get((prefix, rest[0] if rest else ""))
        if res is None:
            raise web.HTTPNotFound(text=self._status(404, "NotFound", path), content_type="application/json")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return res, namespace, name, sub

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.calls.append(Call(request.method, path, dict(request.query), request.content_type,
                               request.headers.get("Authorization", "")))
        if request.method == "GET":
            discovery = self._discovery(path)
            if discovery is not None:
                return web.json_response(discovery)
        res, namespace, name, sub = self._route(path)
        self.requests.append((request.method, res.kind))
        failing = self.fail.get((request.method, res.kind), 0)
        if failing:
            self.fail[(request.method, res.kind)] = failing - 1
            return web.json_response(json.loads(self._status(500, "InternalError", "scripted failure")), status=500)
        gate = self.hang.get((request.method, res.kind))
        if gate is not None:
            await gate.wait()
        if request.method == "GET" and name is None and request.query.get("watch") in ("true", "1"):
            return await self._watch(request, res, namespace)
        body = await request.json() if request.can_read_body else None
        async with self.changed:
            if request.method == "GET":
                if name is None:
                    items = [o for (k, ns, _), o in sorted(self.objects.items())
                             if k == res.kind and (namespace is None or ns == namespace)
                             and self._selected(o, request.query.get("labelSelector", ""))]
                    return web.json_response({"kind": f"{res.kind}List", "apiVersion": "v1",
                                              "metadata": {"resourceVersion": str(self.rv)}, "items": items})
                return web.json_response(self._existing(res, namespace, name))
            if request.method == "POST":
                return web.json_response(self._create(res, namespace, body), status=201)
            if request.method == "DELETE":
                key = (res.kind, namespace, name)
                self._existing(res, namespace, name)
                return web.json_response(self._delete(key))
            if request.method in ("PATCH", "PUT"):
                return web.json_response(self._patch(request, res, namespace, name, sub, body))
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST", "PATCH", "DELETE"])

    def _existing(self, res: Res, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.objects.get((res.kind, namespace, name))
        if obj is None:
            raise web.HTTPNotFound(text=self._status(404, "NotFound", f"{res.plural} {name!r} not found"),
                                   content_type="application/json")
        return obj

    def _patch(self, request: web.Request, res: Res, namespace: str | None, name: str, sub: str | None,
               body: dict[str, Any]) -> dict[str, Any]:
        key = (res.kind, namespace, name)
        apply = request.content_type == "application/apply-patch+yaml"
        if apply and key not in self.objects:
            self.created_by_apply.add(key)
            return self._create(res, namespace, copy.deepcopy(body))
        old = self._existing(res, namespace, name)
        new = copy.deepcopy(old)
        if isinstance(body, list):          # RFC 6902 JSON patch (kopf uses it for finalizers)
            json_patch(new, body)
            if sub == "status":
                new = {**old, "status": new.get("status")}
            elif res.status:
                new["status"] = old.get("status")
            return self._write(res, key, new)
        if sub == "status":
            new["status"] = merge_patch(old.get("status") or {}, (body or {}).get("status") or {})
            return self._write(res, key, new)
        body = {k: v for k, v in (body or {}).items() if not (res.status and k == "status")}
        if apply:
            for k, v in body.items():
                if k == "metadata":
                    for mk, mv in v.items():
                        if mk in ("labels", "annotations"):
                            new["metadata"][mk] = {**(new["metadata"].get(mk) or {}), **mv}
                        elif mk not in ("name", "namespace"):
                            new["metadata"][mk] = copy.deepcopy(mv)
                elif k not in ("apiVersion", "kind"):
                    new[k] = self._apply_value(new.get(k), v)
        else:
            new = merge_patch(new, body)
        return self._write(res, key, new)

    @staticmethod
    def _apply_value(old: Any, applied: Any) -> Any:
        """Ours replaces ours; template annotations others added survive (restartedAt)."""
        if isinstance(old, dict) and isinstance(applied, dict) and "template" in applied:
            kept = ((old.get("template") or {}).get("metadata") or {}).get("annotations") or {}
            out = copy.deepcopy(applied)
            ann = out["template"].setdefault("metadata", {}).setdefault("annotations", {})
            for k, v in kept.items():
                if k.startswith("kubectl.kubernetes.io/"):
                    ann.setdefault(k, v)
            return out
        return copy.deepcopy(applied)

    @staticmethod
    def _selected(obj: dict[str, Any], selector: str) -> bool:
        labels = obj["metadata"].get("labels") or {}
        for term in filter(None, selector.split(",")):
            k, _, v = term.partition("=")
            if labels.get(k) != v:
                return False
        return True

    async def _watch(self, request: web.Request, res: Res, namespace: str | None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 60)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if since == 0:
            for o in self.all(res.kind, namespace):
                await response.write(json.dumps({"type": "ADDED", "object": o}).encode() + b"\n")
            since = self.rv
        try:
            while loop.time() < deadline:
                pending = [e for e in self.events if e[0] > since and e[1] == res.kind
                           and (namespace is None or e[3]["metadata"].get("namespace") == namespace)]
                for rv, _, type_, obj in pending:
                    await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")
                since = self.rv
                async with self.changed:
                    try:
                        await asyncio.wait_for(self.changed.wait(), timeout=max(0.01, deadline - loop.time()))
                    except asyncio.TimeoutError:
                        pass
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    def _discovery(self, path: str) -> dict[str, Any] | None:
        path = path.rstrip("/")
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            groups = sorted({r.prefix for r in RESOURCES if r.prefix.startswith("/apis/")})
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g.split("/")[2], "versions": [{"groupVersion": "/".join(g.split("/")[2:4]), "version": g.split("/")[3]}],
                 "preferredVersion": {"groupVersion": "/".join(g.split("/")[2:4]), "version": g.split("/")[3]}}
                for g in groups]}
        if path == "/version":
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-standin"}
        matching = [r for r in RESOURCES if r.prefix == path]
        if matching:
            resources = []
            for r in matching:
                verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
                resources.append({"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                                  "kind": r.kind, "verbs": verbs})
                if r.status:
                    resources.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced,
                                      "kind": r.kind, "verbs": ["get", "patch", "update"]})
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": path.removeprefix("/apis/").removeprefix("/api/") if path.startswith("/apis") else "v1",
                    "resources": resources}
        return None
