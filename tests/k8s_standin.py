"""A strict in-process Kubernetes API server for the operator tests and the
operator benchmark (the same class, unpatched, in both).

Strict where a real kube-apiserver is strict, because a lenient stand-in let
an operator pass every test and then reconcile nothing on a real server
(`timeoutSeconds=300.0` is a 400 there). What it reproduces:

  - query parameters parsed as the apiserver does: `timeoutSeconds` and
    `limit` are integers (`300.0` -> 400 `strconv.ParseInt`), `resourceVersion`
    is an integer string, unknown `fieldSelector` fields and malformed
    `labelSelector`s are 400; `fieldManager` is required for apply
  - names: DNS-1123 subdomains (422); create in a namespace that does not
    exist -> 404; in a terminating namespace -> 403 (NamespaceLifecycle), so
    Events can be refused
  - optimistic concurrency: a PUT, or a PATCH whose body carries
    `metadata.resourceVersion`, against a newer object -> 409 Conflict
  - `status` only through the `/status` subresource for kinds that have one
    (main-resource writes ignore it; `/status` writes change nothing else);
    `metadata.generation` grows when anything outside metadata/status changes
    and when deletion starts
  - server-side apply with field managers: `managedFields` (FieldsV1) per
    manager; an apply sets what it sends, removes fields it owned before and no
    longer sends (unless another manager owns them too), and a field another
    manager owns with a different value is a 409 conflict unless `force=true`;
    merge/JSON patches and PUTs take ownership of the fields they change
    (operation Update). Lists are atomic (no merge keys: a real server merges
    `containers` by name)
  - ConfigMap/Secret data over 1 MiB -> 422 (`Too long`)
  - finalizers hold deletion (deletionTimestamp set); the last one removed
    deletes; namespace deletion empties the namespace first
  - garbage collection through ownerReferences is asynchronous: a collector
    task deletes dependents whose owners are all gone, shortly after, as
    kube-controller-manager's garbage collector does (background propagation)
  - watches resume from `resourceVersion`; history is compacted (`history`
    events per kind kept), and a watch or `continue` from before the oldest
    kept event gets `410 Gone` (an ERROR event / Expired); bookmarks are sent
    when `allowWatchBookmarks=true` (also ending `sendInitialEvents`)
  - lists paginate with `limit` / `continue`; the list's resourceVersion is
    the first page's

What it does not reproduce: admission webhooks, RBAC and authentication (any
request is allowed), CRD schema validation and defaulting, strategic merge
patch, list merge keys in apply, foreground/orphan deletion propagation,
consistent snapshots across pages (later pages read the current state), the
Deployment and ReplicaSet controllers and the kubelet (tests script
Deployment status and Pods with `set_status` and `put`), and Event
deduplication or rate limiting.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import copy
import json
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import yaml
from aiohttp import web


@dataclass(frozen=True)
class Res:
    prefix: str          # /api/v1 or /apis/<group>/<version>
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = False

    @property
    def api_version(self) -> str:
        return self.prefix[len("/apis/"):] if self.prefix.startswith("/apis/") else "v1"


RESOURCES = [
    Res("/api/v1", "pods", "Pod", status=True),
    Res("/api/v1", "secrets", "Secret"),
    Res("/api/v1", "configmaps", "ConfigMap"),
    Res("/api/v1", "serviceaccounts", "ServiceAccount"),
    Res("/api/v1", "events", "Event"),
    Res("/api/v1", "namespaces", "Namespace", namespaced=False, status=True),
    Res("/apis/apps/v1", "deployments", "Deployment", status=True),
    Res("/apis/networking.k8s.io/v1", "networkpolicies", "NetworkPolicy"),
    Res("/apis/precinct.dev/v1alpha1", "botplugins", "BotPlugin", status=True),
    Res("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False),
]
BY_PATH = {(r.prefix, r.plural): r for r in RESOURCES}
BY_KIND = {r.kind: r for r in RESOURCES}


@dataclass(frozen=True)
class Call:
    """One request as the server saw it (tests map these to RBAC verbs)."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    authorization: str


MAX_DATA = 1024 * 1024                     # ConfigMap / Secret data, as the apiserver checks it
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_INT = re.compile(r"-?[0-9]+\Z")
Key = tuple[str, "str | None", str]         # (kind, namespace, name)


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class ApiFailure(web.HTTPException):
    """A Kubernetes Status response."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        self.status_code = code
        super().__init__(text=json.dumps({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code,
                                          "reason": reason, "message": message}), content_type="application/json")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
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
    """RFC 6902: add, remove, replace, test (what kopf sends for finalizers)."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        kind = op["op"]
        try:
            if kind == "test":
                current = target[int(last)] if isinstance(target, list) else target.get(last)
                if current != op.get("value"):
                    raise ApiFailure(422, "Invalid", f"the server rejected our request due to an error in our request: "
                                                     f"test operation failed at {op['path']}")
            elif kind == "remove":
                if isinstance(target, list):
                    del target[int(last)]
                else:
                    del target[last]
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
                raise ApiFailure(422, "Invalid", f"unsupported JSON patch op {kind}")
        except (KeyError, IndexError, ValueError) as exc:
            raise ApiFailure(422, "Invalid", f"JSON patch {kind} {op.get('path')}: {exc}") from None


# -- field ownership (server-side apply) ---------------------------------------------

_UNMANAGED_META = {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                   "deletionTimestamp", "managedFields", "generateName", "selfLink", "deletionGracePeriodSeconds"}


def leaves(obj: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Field path -> value for every leaf (lists are atomic leaves)."""
    if isinstance(obj, dict) and obj:
        out: dict[tuple[str, ...], Any] = {}
        for k, v in obj.items():
            if not prefix and k in ("apiVersion", "kind"):
                continue
            if prefix == ("metadata",) and k in _UNMANAGED_META:
                continue
            out.update(leaves(v, (*prefix, k)))
        return out
    return {prefix: obj} if prefix else {}


def _fields_v1(paths: set[tuple[str, ...]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in paths:
        node = root
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    return root


def _paths(fields: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for k, v in fields.items():
        path = (*prefix, k[2:])
        if v:
            out |= _paths(v, path)
        else:
            out.add(path)
    return out


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


def _set(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        nxt = obj.get(part)
        if not isinstance(nxt, dict):
            nxt = obj[part] = {}
        obj = nxt
    obj[path[-1]] = copy.deepcopy(value)


def _drop(obj: dict[str, Any], path: tuple[str, ...]) -> None:
    chain = [obj]
    for part in path[:-1]:
        nxt = chain[-1].get(part)
        if not isinstance(nxt, dict):
            return
        chain.append(nxt)
    chain[-1].pop(path[-1], None)
    for parent, part in zip(reversed(chain[:-1]), reversed(path[:-1])):   # prune emptied maps
        if parent.get(part) == {}:
            parent.pop(part)


_MISSING = object()


class Managers:
    """managedFields of one object: {(manager, operation): paths}. A manager's
    Apply and Update entries are apart, as on a real server: an apply removes
    only what that manager applied before."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.owned: dict[tuple[str, str], set[tuple[str, ...]]] = {}
        for entry in meta.get("managedFields") or []:
            self.owned[(entry["manager"], entry.get("operation", "Update"))] = _paths(entry.get("fieldsV1") or {})

    def store(self, meta: dict[str, Any], api_version: str) -> None:
        """Write managedFields; an unchanged entry keeps its time (no spurious new resourceVersion)."""
        before = {(e["manager"], e.get("operation")): e for e in meta.get("managedFields") or []}
        entries = []
        for (m, op), paths in sorted(self.owned.items()):
            if not paths:
                continue
            fields = _fields_v1(paths)
            kept = before.get((m, op))
            stamp = kept["time"] if kept is not None and kept.get("fieldsV1") == fields else _now()
            entries.append({"manager": m, "operation": op, "apiVersion": api_version, "time": stamp,
                            "fieldsType": "FieldsV1", "fieldsV1": fields})
        meta["managedFields"] = entries

    def take(self, manager: str, operation: str, paths: set[tuple[str, ...]], *, replace: bool) -> None:
        mine = (manager, operation)
        for other in list(self.owned):
            if other != mine:
                self.owned[other] = self.owned[other] - paths
        self.owned[mine] = set(paths) if replace else self.owned.get(mine, set()) | paths

    def others(self, manager: str) -> dict[tuple[str, ...], str]:
        """Paths owned by other managers (apply conflicts)."""
        return {p: m for (m, _), paths in self.owned.items() if m != manager for p in paths}

    def besides(self, manager: str, operation: str) -> set[tuple[str, ...]]:
        """Paths owned by any other entry (kept when an apply stops sending them)."""
        return {p for key, paths in self.owned.items() if key != (manager, operation) for p in paths}


# -- label selectors -----------------------------------------------------------------

_SET_TERM = re.compile(r"\s*([A-Za-z0-9./_-]+)\s+(in|notin)\s+\(([^)]*)\)\s*\Z")
_EQ_TERM = re.compile(r"\s*([A-Za-z0-9./_-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*\Z")
_EXISTS_TERM = re.compile(r"\s*(!?)([A-Za-z0-9./_-]+)\s*\Z")


def parse_selector(selector: str) -> list[tuple[str, str, set[str]]]:
    terms: list[tuple[str, str, set[str]]] = []
    for raw in re.split(r",(?![^()]*\))", selector):
        if not raw.strip():
            continue
        if m := _SET_TERM.match(raw):
            terms.append((m[1], m[2], {v.strip() for v in m[3].split(",") if v.strip()}))
        elif m := _EQ_TERM.match(raw):
            terms.append((m[1], "!=" if m[2] == "!=" else "=", {m[3]}))
        elif m := _EXISTS_TERM.match(raw):
            terms.append((m[2], "!" if m[1] else "exists", set()))
        else:
            raise ApiFailure(400, "BadRequest", f"unable to parse requirement: {raw!r}")
    return terms


def selected(labels: dict[str, str], terms: list[tuple[str, str, set[str]]]) -> bool:
    for key, op, values in terms:
        have = labels.get(key)
        if op == "=" and have not in values:
            return False
        if op in ("!=", "notin") and have in values:
            return False
        if op == "in" and have not in values:
            return False
        if op == "exists" and have is None:
            return False
        if op == "!" and have is not None:
            return False
    return True


# -- the server ----------------------------------------------------------------------


class StandIn:
    def __init__(self, *, history: int = 50_000, gc_delay: float = 0.05, bookmark_interval: float = 5.0) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.rv = 0
        self.history = history                     # watch events kept per kind (older: 410 Gone)
        self.gc_delay = gc_delay
        self.bookmark_interval = bookmark_interval
        # kind -> ([rv...], [(rv, namespace, line)...]); a line is the serialized watch event
        self.events: dict[str, tuple[list[int], list[tuple[int, str | None, bytes]]]] = defaultdict(lambda: ([], []))
        self.compacted: dict[str, int] = defaultdict(int)     # kind -> oldest rv still resumable
        self.dependents: dict[str, set[Key]] = defaultdict(set)    # owner uid -> keys
        self.uids: dict[str, Key] = {}
        self.changed = asyncio.Condition()
        self.requests: list[tuple[str, str]] = []
        self.calls: list[Call] = []                                 # every request, for RBAC checks
        self.created_by_apply: set[Key] = set()                    # SSA that created: RBAC `create`
        self.fail: dict[tuple[str, str], int] = {}                 # (method, kind) -> times to answer 500
        self.hang: dict[tuple[str, str], asyncio.Event] = {}       # (method, kind) -> released when set
        self._orphans: set[Key] = set()                            # dependents to check for collection
        self._closing = False
        self._tasks: list[asyncio.Task] = []
        self.app = web.Application(client_max_size=3 * 1024 * 1024)
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
        self._tasks.append(asyncio.create_task(self._collector()))
        return self

    async def stop(self) -> None:
        self._closing = True                 # end open watches now, not at their timeoutSeconds
        async with self.changed:
            self.changed.notify_all()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- scripting (what controllers and kubelets would do) ----------------------

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    def all(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [o for (k, ns, _), o in sorted(self.objects.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2]))
                if k == kind and (namespace is None or ns == namespace)]

    async def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create as a controller or kubelet would (status included)."""
        async with self.changed:
            res = BY_KIND[obj["kind"]]
            return self._create(res, obj["metadata"].get("namespace"), copy.deepcopy(obj), "standin", keep_status=True)

    async def set_status(self, kind: str, namespace: str | None, name: str, status: dict[str, Any]) -> dict[str, Any]:
        async with self.changed:
            obj = copy.deepcopy(self.objects[(kind, namespace, name)])
            obj["status"] = copy.deepcopy(status)
            return self._store(BY_KIND[kind], (kind, namespace, name), obj)

    async def delete(self, kind: str, namespace: str | None, name: str) -> None:
        """DELETE as a client would (finalizers hold it; dependents follow later)."""
        async with self.changed:
            if (kind, namespace, name) in self.objects:
                self._delete((kind, namespace, name))

    async def wait_collected(self, timeout: float = 10.0) -> None:
        """Until the garbage collector has nothing left to do."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._orphans and loop.time() < deadline:
            await asyncio.sleep(0.02)

    # -- storage -----------------------------------------------------------------

    def _record(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        rvs, lines = self.events[kind]
        rvs.append(self.rv)
        lines.append((self.rv, obj["metadata"].get("namespace"),
                      json.dumps({"type": type_, "object": obj}).encode() + b"\n"))
        if len(rvs) > self.history:                  # compaction, as etcd's
            cut = len(rvs) - self.history
            del rvs[:cut], lines[:cut]
            self.compacted[kind] = rvs[0] - 1
        self.changed.notify_all()

    def _index_owners(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        for obj, add in ((old, False), (new, True)):
            for ref in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []:
                if add:
                    self.dependents[ref.get("uid", "")].add(key)
                else:
                    self.dependents[ref.get("uid", "")].discard(key)

    def _create(self, res: Res, namespace: str | None, obj: Any, manager: str, *, keep_status: bool = False,
                operation: str = "Update") -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise ApiFailure(400, "BadRequest", "the body is not an object")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name") or ""
        if not _NAME.match(name) or len(name) > 253:
            raise ApiFailure(422, "Invalid", f"{res.kind} {name!r} is invalid: metadata.name: Invalid value: "
                                             f"a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                                             f"characters, '-' or '.'")
        if res.namespaced:
            if meta.get("namespace") not in (None, namespace):
                raise ApiFailure(400, "BadRequest", "the namespace of the provided object does not match the "
                                                    "namespace sent on the request")
            ns = self.objects.get(("Namespace", None, namespace or ""))
            if ns is None:
                raise ApiFailure(404, "NotFound", f'namespaces "{namespace}" not found')
            if ns["metadata"].get("deletionTimestamp"):
                raise ApiFailure(403, "Forbidden", f'{res.plural} "{name}" is forbidden: unable to create new content '
                                                   f"in namespace {namespace} because it is being terminated")
        key = (res.kind, namespace if res.namespaced else None, name)
        if key in self.objects:
            raise ApiFailure(409, "AlreadyExists", f'{res.plural} "{name}" already exists')
        api_version = obj.get("apiVersion")
        if api_version not in (None, res.api_version) or obj.get("kind") not in (None, res.kind):
            raise ApiFailure(400, "BadRequest", f"the API version in the data ({api_version}) does not match the "
                                                f"expected API version ({res.api_version})")
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        if res.namespaced:
            meta["namespace"] = namespace
        if res.status and not keep_status:
            obj.pop("status", None)
        if res.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
        for k in ("resourceVersion", "uid", "deletionTimestamp", "managedFields"):
            meta.pop(k, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        self._validate(res, obj)
        managers = Managers({})
        managers.take(manager, operation, set(leaves(_content_and_meta(obj))), replace=True)
        managers.store(meta, res.api_version)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self.objects[key] = obj
        self.uids[meta["uid"]] = key
        self._index_owners(key, None, obj)
        self._record(res.kind, "ADDED", obj)
        self._check_owners(key)
        return obj

    def _validate(self, res: Res, obj: dict[str, Any]) -> None:
        if res.kind in ("ConfigMap", "Secret"):
            size = sum(len(str(v).encode()) for part in ("data", "binaryData", "stringData")
                       for v in (obj.get(part) or {}).values())
            if size > MAX_DATA:
                raise ApiFailure(422, "Invalid", f'{res.kind} "{obj["metadata"]["name"]}" is invalid: []: Too long: '
                                                 f"must have at most {MAX_DATA} bytes")

    def _store(self, res: Res, key: Key, new: dict[str, Any], manager: str | None = None) -> dict[str, Any]:
        """Write `new` over the stored object (a new resourceVersion if it differs)."""
        old = self.objects[key]
        meta = new["metadata"]
        for k in ("uid", "creationTimestamp", "name", "namespace"):
            if old["metadata"].get(k) is not None:
                meta[k] = old["metadata"][k]
        if old["metadata"].get("deletionTimestamp"):
            meta["deletionTimestamp"] = old["metadata"]["deletionTimestamp"]
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        generation = int(old["metadata"].get("generation", 1))
        if _content(new) != _content(old):
            generation += 1
        meta["generation"] = generation
        if manager is None:          # apply and scripted writes bring their own managedFields
            meta.setdefault("managedFields", copy.deepcopy(old["metadata"].get("managedFields", [])))
        else:
            meta["managedFields"] = copy.deepcopy(old["metadata"].get("managedFields", []))
            before, after = leaves(_content_and_meta(old)), leaves(_content_and_meta(new))
            touched = {p for p in set(before) | set(after) if before.get(p, _MISSING) != after.get(p, _MISSING)}
            if touched:
                managers = Managers(old["metadata"])
                managers.owned = {k: {p for p in paths if p in after} for k, paths in managers.owned.items()}
                managers.take(manager, "Update", {p for p in touched if p in after}, replace=False)
                managers.store(meta, res.api_version)
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return old
        self._validate(res, new)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self.objects[key] = new
        self._index_owners(key, old, new)
        self._record(res.kind, "MODIFIED", new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(key)
        else:
            self._check_owners(key)
        return new

    def _remove(self, key: Key) -> None:
        obj = self.objects.pop(key)
        uid = obj["metadata"]["uid"]
        self.uids.pop(uid, None)
        self._index_owners(key, obj, None)
        self.rv += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        self._record(key[0], "DELETED", obj)
        self._orphans |= self.dependents.pop(uid, set())       # the collector looks at them soon
        if key[0] == "Namespace":
            return

    def _delete(self, key: Key) -> dict[str, Any]:
        obj = self.objects[key]
        if key[0] == "Namespace":
            if not obj["metadata"].get("deletionTimestamp"):
                new = copy.deepcopy(obj)
                new["metadata"]["deletionTimestamp"] = _now()
                new["status"] = {"phase": "Terminating"}
                self.objects[key] = new
                self.rv += 1
                new["metadata"]["resourceVersion"] = str(self.rv)
                self._record("Namespace", "MODIFIED", new)
                self._orphans.add(key)
            return self.objects[key]
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                new = copy.deepcopy(obj)
                new["metadata"]["deletionTimestamp"] = _now()
                new["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1
                self.objects[key] = new
                self.rv += 1
                new["metadata"]["resourceVersion"] = str(self.rv)
                self._record(key[0], "MODIFIED", new)
            return self.objects[key]
        self._remove(key)
        return obj

    def _check_owners(self, key: Key) -> None:
        refs = (self.objects[key]["metadata"].get("ownerReferences") or [])
        if refs and all(ref.get("uid") not in self.uids for ref in refs):
            self._orphans.add(key)

    async def _collector(self) -> None:
        """kube-controller-manager's garbage collector and namespace controller, in short."""
        while True:
            await asyncio.sleep(self.gc_delay)
            if not self._orphans:
                continue
            async with self.changed:
                todo, self._orphans = self._orphans, set()
                for key in sorted(todo, key=lambda k: (k[0], k[1] or "", k[2])):
                    obj = self.objects.get(key)
                    if obj is None:
                        continue
                    if key[0] == "Namespace":
                        inside = [k for k in self.objects if k[1] == key[2]]
                        for k in inside:
                            self._delete(k)
                        if any(k[1] == key[2] for k in self.objects):
                            self._orphans.add(key)            # finalizers still hold some: look again
                        else:
                            self._remove(key)
                        continue
                    refs = obj["metadata"].get("ownerReferences") or []
                    if refs and all(ref.get("uid") not in self.uids for ref in refs):
                        self._delete(key)

    # -- HTTP ------------------------------------------------------------------------

    def _route(self, path: str) -> tuple[Res, str | None, str | None, str | None]:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            prefix, rest = "/api/v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            prefix, rest = "/" + "/".join(parts[:3]), parts[3:]
        else:
            raise ApiFailure(404, "NotFound", f"the server could not find the requested resource ({path})")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        res = BY_PATH.get((prefix, rest[0] if rest else ""))
        if res is None:
            raise ApiFailure(404, "NotFound", f"the server could not find the requested resource ({path})")
        if res.kind == "Namespace" and len(rest) > 1:
            namespace = None
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub not in (None, "status") or (sub == "status" and not res.status):
            raise ApiFailure(404, "NotFound", f"the server could not find the requested resource ({path})")
        return res, namespace, name, sub

    @staticmethod
    def _int_param(request: web.Request, name: str) -> int | None:
        raw = request.query.get(name)
        if raw is None or raw == "":
            return None
        if not _INT.match(raw):
            raise ApiFailure(400, "BadRequest", f'strconv.ParseInt: parsing "{raw}": invalid syntax')
        return int(raw)

    def _rv_param(self, request: web.Request) -> int | None:
        raw = request.query.get("resourceVersion")
        if raw is None or raw == "":
            return None
        if not _INT.match(raw):
            raise ApiFailure(400, "BadRequest", f"invalid resource version {raw!r}")
        return int(raw)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._serve(request)
        except ApiFailure as exc:
            return web.Response(status=exc.status_code, text=exc.text, content_type="application/json")

    async def _serve(self, request: web.Request) -> web.StreamResponse:
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
            raise ApiFailure(500, "InternalError", "scripted failure")
        gate = self.hang.get((request.method, res.kind))
        if gate is not None:
            await gate.wait()
        self._int_param(request, "timeoutSeconds")
        self._int_param(request, "limit")
        self._rv_param(request)
        if request.method == "GET" and name is None and request.query.get("watch") in ("true", "1"):
            return await self._watch(request, res, namespace)
        body = await self._body(request)
        manager = request.query.get("fieldManager") or request.headers.get("User-Agent", "unknown").split("/")[0]
        async with self.changed:
            if request.method == "GET":
                if name is None:
                    return web.json_response(self._list(request, res, namespace))
                return web.json_response(self._existing(res, namespace, name))
            if request.method == "POST" and name is None:
                return web.json_response(self._create(res, namespace, body, manager), status=201)
            if request.method == "DELETE" and name is not None:
                key = (res.kind, namespace, name)
                self._existing(res, namespace, name)
                return web.json_response(self._delete(key))
            if request.method in ("PATCH", "PUT") and name is not None:
                return web.json_response(self._write(request, res, namespace, name, sub, body, manager))
        raise ApiFailure(405, "MethodNotAllowed", f"{request.method} is not supported on {path}")

    @staticmethod
    async def _body(request: web.Request) -> Any:
        if not request.can_read_body:
            return None
        text = await request.text()
        try:
            if request.content_type == "application/apply-patch+yaml":
                return yaml.safe_load(text)
            return json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiFailure(400, "BadRequest", f"the body cannot be decoded: {exc}") from None

    def _existing(self, res: Res, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.objects.get((res.kind, namespace if res.namespaced else None, name))
        if obj is None:
            raise ApiFailure(404, "NotFound", f'{res.plural}.{res.api_version.split("/")[0]} "{name}" not found')
        return obj

    def _list(self, request: web.Request, res: Res, namespace: str | None) -> dict[str, Any]:
        terms = parse_selector(request.query.get("labelSelector", ""))
        fields = self._field_selector(request.query.get("fieldSelector", ""))
        limit = self._int_param(request, "limit") or 0
        token = request.query.get("continue")
        list_rv, after = self.rv, None
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                list_rv, after = int(state["rv"]), tuple(state["start"])
            except (ValueError, KeyError, TypeError):
                raise ApiFailure(400, "BadRequest", "continue key is not valid") from None
            if list_rv < self.compacted[res.kind]:
                raise ApiFailure(410, "Expired", "The provided continue parameter is too old to display a consistent "
                                                 "list result. You can start a new list without the continue parameter.")
        keys = sorted((k for k in self.objects if k[0] == res.kind and (namespace is None or k[1] == namespace)),
                      key=lambda k: (k[1] or "", k[2]))
        items: list[dict[str, Any]] = []
        more = None
        for k in keys:
            if after is not None and (k[1] or "", k[2]) <= after:
                continue
            obj = self.objects[k]
            if not selected(obj["metadata"].get("labels") or {}, terms) or not fields(obj):
                continue
            if limit and len(items) == limit:
                last = items[-1]["metadata"]
                more = base64.urlsafe_b64encode(json.dumps(
                    {"rv": list_rv, "start": [last.get("namespace") or "", last["name"]]}).encode()).decode()
                break
            items.append(obj)
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if more:
            meta["continue"] = more
        return {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta, "items": items}

    @staticmethod
    def _field_selector(selector: str):
        checks = []
        for term in filter(None, selector.split(",")):
            key, op, value = re.match(r"([^!=]+)(!=|==|=)(.*)", term).groups() if re.match(r"([^!=]+)(!=|==|=)(.*)", term) \
                else (term, "", "")
            if key not in ("metadata.name", "metadata.namespace") or not op:
                raise ApiFailure(400, "BadRequest", f'"{key}" is not a known field selector: only "metadata.name", '
                                                    f'"metadata.namespace"')
            field = key.split(".")[1]
            checks.append((field, op != "!=", value))
        return lambda obj: all((obj["metadata"].get(f) == v) == eq for f, eq, v in checks)

    def _write(self, request: web.Request, res: Res, namespace: str | None, name: str, sub: str | None,
               body: Any, manager: str) -> dict[str, Any]:
        key = (res.kind, namespace if res.namespaced else None, name)
        kind = request.content_type
        if request.method == "PATCH" and kind == "application/apply-patch+yaml":
            if not request.query.get("fieldManager"):
                raise ApiFailure(400, "BadRequest", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required '
                                                    "value: is required for apply patch")
            return self._apply(request, res, key, sub, body)
        old = self._existing(res, namespace, name)
        if request.method == "PUT":
            if not isinstance(body, dict):
                raise ApiFailure(400, "BadRequest", "the body is not an object")
            new = copy.deepcopy(body)
            new.setdefault("metadata", {})
            self._precondition(old, new["metadata"].get("resourceVersion"), required=True)
        elif kind == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiFailure(400, "BadRequest", "a JSON patch must be a list of operations")
            new = copy.deepcopy(old)
            json_patch(new, body)
            self._precondition(old, (new.get("metadata") or {}).get("resourceVersion"))
        elif kind in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if kind == "application/strategic-merge-patch+json" and res.kind == "BotPlugin":
                raise ApiFailure(415, "UnsupportedMediaType", "strategic merge patch is not supported for custom "
                                                              "resources")
            if not isinstance(body, dict):
                raise ApiFailure(400, "BadRequest", "a merge patch must be an object")
            self._precondition(old, (body.get("metadata") or {}).get("resourceVersion"))
            new = merge_patch(copy.deepcopy(old), body)
        else:
            raise ApiFailure(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {kind}")
        new.setdefault("metadata", {})
        return self._store(res, key, self._scope(res, sub, old, new), manager)

    @staticmethod
    def _precondition(old: dict[str, Any], given: Any, required: bool = False) -> None:
        if given is None:
            if required:
                raise ApiFailure(422, "Invalid", "metadata.resourceVersion: Invalid value: 0: must be specified for "
                                                 "an update")
            return
        if str(given) != old["metadata"]["resourceVersion"]:
            raise ApiFailure(409, "Conflict", f'Operation cannot be fulfilled on {old["kind"].lower()}s '
                                              f'"{old["metadata"]["name"]}": the object has been modified; please '
                                              f"apply your changes to the latest version and try again")

    @staticmethod
    def _scope(res: Res, sub: str | None, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """The status subresource writes only status; the main resource never does."""
        if sub == "status":
            out = copy.deepcopy(old)
            if "status" in new:
                out["status"] = new["status"]
            else:
                out.pop("status", None)
            return out
        if res.status:
            new = {**new}
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        return new

    def _apply(self, request: web.Request, res: Res, key: Key, sub: str | None, body: Any) -> dict[str, Any]:
        manager = request.query["fieldManager"]
        force = request.query.get("force") in ("true", "1")
        if not isinstance(body, dict):
            raise ApiFailure(400, "BadRequest", "an apply patch must be an object")
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, key[2]):
            raise ApiFailure(400, "BadRequest", "the name of the object does not match the name on the URL")
        if body.get("apiVersion") != res.api_version or body.get("kind") != res.kind:
            raise ApiFailure(400, "BadRequest", f"apply needs apiVersion {res.api_version} and kind {res.kind}")
        if key not in self.objects:
            if sub == "status":
                self._existing(res, key[1], key[2])
            self.created_by_apply.add(key)
            return self._create(res, key[1], copy.deepcopy(body), manager, operation="Apply")
        old = self.objects[key]
        self._precondition(old, meta.get("resourceVersion"))
        applied = copy.deepcopy(body)
        if sub == "status":
            applied = {"status": applied.get("status") or {}}
        elif res.status:
            applied.pop("status", None)
        wanted = leaves(_content_and_meta(applied))
        managers = Managers(old["metadata"])
        others = managers.others(manager)
        conflicts = sorted(".".join(p) for p, value in wanted.items()
                           if p in others and _get(old, p) not in (_MISSING, value))
        if conflicts and not force:
            raise ApiFailure(409, "Conflict", f"Apply failed with {len(conflicts)} conflict(s): "
                                              + "; ".join(f'conflict with "{others[tuple(c.split("."))]}": .{c}'
                                                          for c in conflicts[:5]))
        new = copy.deepcopy(old)
        before = managers.owned.get((manager, "Apply"), set())
        shared = managers.besides(manager, "Apply")
        for path in before - set(wanted) - shared:
            _drop(new, path)
        for path, value in wanted.items():
            _set(new, path, value)
        managers.take(manager, "Apply", set(wanted), replace=True)
        managers.store(new["metadata"], res.api_version)
        return self._store(res, key, self._scope(res, sub, old, new))

    async def _watch(self, request: web.Request, res: Res, namespace: str | None) -> web.StreamResponse:
        since = self._rv_param(request)
        timeout = self._int_param(request, "timeoutSeconds")
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1")
        initial = request.query.get("sendInitialEvents") in ("true", "1")
        terms = parse_selector(request.query.get("labelSelector", ""))
        fields = self._field_selector(request.query.get("fieldSelector", ""))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout else 1800)
        rvs, lines = self.events[res.kind]

        def wanted(obj: dict[str, Any]) -> bool:
            return selected((obj.get("metadata") or {}).get("labels") or {}, terms) and fields(obj)

        def bookmark(rv: int) -> bytes:
            return json.dumps({"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version,
                                                              "metadata": {"resourceVersion": str(rv)}}}).encode() + b"\n"

        try:
            if since is not None and since != 0 and since < self.compacted[res.kind]:
                await response.write(json.dumps({"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                    "message": f"too old resource version: {since} ({self.compacted[res.kind] + 1})"}}).encode() + b"\n")
                return response
            if not since:
                # rv unset or 0: the current state as ADDED events, then changes.
                since = self.rv
                chunk = [json.dumps({"type": "ADDED", "object": o}).encode() + b"\n"
                         for o in self.all(res.kind, namespace) if wanted(o)]
                if chunk:
                    await response.write(b"".join(chunk))
                if initial and bookmarks:
                    await response.write(json.dumps({"type": "BOOKMARK", "object": {
                        "kind": res.kind, "apiVersion": res.api_version, "metadata": {
                            "resourceVersion": str(since),
                            "annotations": {"k8s.io/initial-events-end": "true"}}}}).encode() + b"\n")
            last_bookmark = loop.time()
            while loop.time() < deadline and not self._closing:
                if since < self.compacted[res.kind]:
                    await response.write(json.dumps({"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                        "message": "too old resource version: the watch fell behind compaction"}}).encode() + b"\n")
                    return response
                start = bisect.bisect_right(rvs, since)
                upto = self.rv
                chunk = []
                for rv, ns, line in lines[start:]:
                    if rv > upto:
                        break
                    if namespace is not None and ns != namespace:
                        continue
                    if terms or request.query.get("fieldSelector"):
                        if not wanted(json.loads(line)["object"]):
                            continue
                    chunk.append(line)
                if chunk:
                    await response.write(b"".join(chunk))
                since = upto
                if bookmarks and loop.time() - last_bookmark >= self.bookmark_interval:
                    await response.write(bookmark(since))
                    last_bookmark = loop.time()
                async with self.changed:
                    if self.rv == since and not self._closing:
                        wait = min(deadline - loop.time(), self.bookmark_interval if bookmarks else 3600)
                        try:
                            await asyncio.wait_for(self.changed.wait(), timeout=max(0.01, wait))
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
            return {"kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": path.removeprefix("/apis/") if path.startswith("/apis") else "v1",
                    "resources": resources}
        return None


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _content_and_meta(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
