"""The API stand-in is strict where a real kube-apiserver is (k8s_standin's
docstring lists what it reproduces and what not). Each test here is a
behaviour the operator once got wrong or could get wrong without noticing:
the requests go over HTTP, through the official client where the operator
uses it."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp
import pytest

from precinct.k8s.client import Api, ApiError, plain_configuration

from k8s_standin import StandIn

NS = "bots"


@pytest.fixture
async def k8s() -> Any:
    server = await StandIn(history=50, gc_delay=0.02, bookmark_interval=0.2).start()
    await server.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    yield server
    await server.stop()


@pytest.fixture
async def api(k8s: StandIn) -> Any:
    client = Api(plain_configuration(k8s.url), attempts=3, base_delay=0.01, page=2)
    yield client
    await client.close()


async def http(k8s: StandIn, method: str, path: str, body: Any = None, content_type: str = "application/json",
               **params: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        data = None if body is None else json.dumps(body)
        async with session.request(method, k8s.url + path, params=params, data=data,
                                   headers={"Content-Type": content_type}) as resp:
            text = await resp.text()
            return resp.status, text


def cm(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS}, "data": data}


async def test_float_timeout_seconds_is_a_bad_request_as_on_a_real_server(k8s: StandIn) -> None:
    path = f"/api/v1/namespaces/{NS}/configmaps"
    status, text = await http(k8s, "GET", path, watch="true", timeoutSeconds="300.0")
    assert status == 400 and 'strconv.ParseInt: parsing "300.0"' in json.loads(text)["message"]
    status, _ = await http(k8s, "GET", path, limit="1.5")
    assert status == 400
    status, _ = await http(k8s, "GET", path, watch="true", timeoutSeconds="1")
    assert status == 200


async def test_operator_watches_ask_for_integer_timeouts() -> None:
    import kopf

    from precinct.k8s.operator import OperatorConfig, configure

    settings = kopf.OperatorSettings()
    configure(settings, OperatorConfig(state_dir=__import__("pathlib").Path("/nonexistent")))
    assert isinstance(settings.watching.server_timeout, int)
    assert str(settings.watching.server_timeout) == "300"


async def test_stale_resource_version_is_a_conflict(k8s: StandIn, api: Api) -> None:
    created = await api.create(cm("a", x="1"))
    await api.patch("ConfigMap", NS, "a", {"data": {"x": "2"}})
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "data": {"x": "3"}}
    with pytest.raises(ApiError) as err:
        await api.patch("ConfigMap", NS, "a", stale)
    assert err.value.status == 409
    status, _ = await http(k8s, "PUT", f"/api/v1/namespaces/{NS}/configmaps/a", {**cm("a", x="4"), "metadata": {
        "name": "a", "namespace": NS, "resourceVersion": created["metadata"]["resourceVersion"]}})
    assert status == 409
    assert k8s.get("ConfigMap", NS, "a")["data"] == {"x": "2"}


async def test_status_only_through_the_subresource(k8s: StandIn, api: Api) -> None:
    body = {"apiVersion": "precinct.dev/v1alpha1", "kind": "BotPlugin", "metadata": {"name": "p", "namespace": NS},
            "spec": {"version": "1.0.0"}, "status": {"observedGeneration": 9}}
    created = await api.create(body)
    assert "status" not in created
    await api.patch("BotPlugin", NS, "p", {"status": {"observedGeneration": 5}})
    assert "status" not in k8s.get("BotPlugin", NS, "p")
    await api.patch("BotPlugin", NS, "p", {"status": {"observedGeneration": 1}, "spec": {"version": "2.0.0"}},
                    subresource="status")
    obj = k8s.get("BotPlugin", NS, "p")
    assert obj["status"] == {"observedGeneration": 1} and obj["spec"]["version"] == "1.0.0"
    assert obj["metadata"]["generation"] == 1
    await api.patch("BotPlugin", NS, "p", {"spec": {"version": "2.0.0"}})
    assert k8s.get("BotPlugin", NS, "p")["metadata"]["generation"] == 2


async def test_server_side_apply_tracks_field_managers(k8s: StandIn, api: Api) -> None:
    await api.apply({**cm("a", mine="1", dropped="1")})
    # someone else (kubectl) adds a key: a separate manager owns it
    status, _ = await http(k8s, "PATCH", f"/api/v1/namespaces/{NS}/configmaps/a", {"data": {"theirs": "t"}},
                           content_type="application/merge-patch+json", fieldManager="kubectl-edit")
    assert status == 200
    await api.apply(cm("a", mine="2"))             # stops sending `dropped`: removed; `theirs` stays
    assert k8s.get("ConfigMap", NS, "a")["data"] == {"mine": "2", "theirs": "t"}
    managers = {(m["manager"], m["operation"]) for m in k8s.get("ConfigMap", NS, "a")["metadata"]["managedFields"]}
    assert {("precinct-operator", "Apply"), ("kubectl-edit", "Update")} <= managers
    # a different applier sending a field another manager owns, with another value: conflict unless forced
    status, text = await http(k8s, "PATCH", f"/api/v1/namespaces/{NS}/configmaps/a", cm("a", mine="3"),
                              content_type="application/apply-patch+yaml", fieldManager="other")
    assert status == 409 and "precinct-operator" in text
    status, _ = await http(k8s, "PATCH", f"/api/v1/namespaces/{NS}/configmaps/a", cm("a", mine="3"),
                           content_type="application/apply-patch+yaml", fieldManager="other", force="true")
    assert status == 200 and k8s.get("ConfigMap", NS, "a")["data"]["mine"] == "3"
    status, text = await http(k8s, "PATCH", f"/api/v1/namespaces/{NS}/configmaps/a", cm("a"),
                              content_type="application/apply-patch+yaml")
    assert status == 400 and "fieldManager" in text


async def test_garbage_collection_is_asynchronous(k8s: StandIn, api: Api) -> None:
    owner = await api.create(cm("owner"))
    child = cm("child")
    child["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                                             "uid": owner["metadata"]["uid"], "controller": True}]
    await api.create(child)
    await api.delete("ConfigMap", NS, "owner")
    assert k8s.get("ConfigMap", NS, "child") is not None          # not in the same request
    await k8s.wait_collected()
    assert k8s.get("ConfigMap", NS, "child") is None


async def test_watch_resumes_and_too_old_is_410_gone(k8s: StandIn, api: Api) -> None:
    first = await api.create(cm("w0"))
    for i in range(1, 60):                      # history keeps 50 events per kind
        await api.create(cm(f"w{i}"))
    path = f"/api/v1/namespaces/{NS}/configmaps"
    status, text = await http(k8s, "GET", path, watch="true", timeoutSeconds="1",
                              resourceVersion=first["metadata"]["resourceVersion"])
    event = json.loads(text.splitlines()[0])
    assert status == 200 and event["type"] == "ERROR" and event["object"]["code"] == 410
    latest = k8s.get("ConfigMap", NS, "w58")["metadata"]["resourceVersion"]
    status, text = await http(k8s, "GET", path, watch="true", timeoutSeconds="1", allowWatchBookmarks="true",
                              resourceVersion=latest)
    types = [json.loads(line)["type"] for line in text.splitlines()]
    assert types[0] == "ADDED" and "BOOKMARK" in types          # w59, then bookmarks while idle


async def test_lists_paginate_with_limit_and_continue(k8s: StandIn, api: Api) -> None:
    for i in range(5):
        await api.create(cm(f"p{i}"))
    status, text = await http(k8s, "GET", f"/api/v1/namespaces/{NS}/configmaps", limit="2")
    page = json.loads(text)
    assert len(page["items"]) == 2 and page["metadata"]["continue"]
    assert [c["metadata"]["name"] for c in await api.list("ConfigMap", NS)] == [f"p{i}" for i in range(5)]


async def test_events_are_refused_in_a_terminating_namespace(k8s: StandIn, api: Api) -> None:
    held = cm("held")
    held["metadata"]["finalizers"] = ["example.com/hold"]
    await api.create(held)
    await k8s.delete("Namespace", None, NS)
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "x.", "namespace": NS},
             "involvedObject": {"kind": "ConfigMap", "name": "held", "namespace": NS}, "reason": "Test"}
    with pytest.raises(ApiError) as err:
        await api.create(event)
    assert err.value.status == 403 and "being terminated" in str(err.value)
    await api.patch("ConfigMap", NS, "held", {"metadata": {"finalizers": None}})
    for _ in range(200):
        if k8s.get("Namespace", None, NS) is None:
            break
        await asyncio.sleep(0.02)
    assert k8s.get("Namespace", None, NS) is None


async def test_configmaps_over_one_mebibyte_are_refused(api: Api) -> None:
    with pytest.raises(ApiError) as err:
        await api.apply(cm("big", data="x" * (1024 * 1024 + 1)))
    assert err.value.status == 422 and "Too long" in str(err.value)


async def test_client_retries_server_errors_then_gives_up(k8s: StandIn, api: Api) -> None:
    await api.create(cm("r"))
    k8s.fail[("GET", "ConfigMap")] = 2                  # the client makes 3 attempts
    assert (await api.get("ConfigMap", NS, "r"))["metadata"]["name"] == "r"
    k8s.fail[("GET", "ConfigMap")] = 3
    with pytest.raises(ApiError) as err:
        await api.get("ConfigMap", NS, "r")
    assert err.value.status == 500
    assert await api.get("ConfigMap", NS, "missing") is None


def test_claims_index_decides_as_resolve_does() -> None:
    """The incremental claims index against spec.ownership.resolve over the
    whole fleet, after every step of random creates, edits and deletes."""
    from precinct.k8s.claims import Claims
    from precinct.spec.model import load_botplugin_spec
    from precinct.spec.ownership import Plugin, resolve

    rng = random.Random(15)
    words = ["roll", "dice", "quote", "weather", "8ball"]
    for trial in range(60):
        claims, live = Claims(), {}
        for step in range(20):
            i = rng.randrange(10)
            name = f"p{i}"
            if name in live and rng.random() < 0.25:
                del live[name]
                claims.remove(NS, name)
                continue
            commands = {w: f"{name}.{w}{rng.randrange(2)}" for w in rng.sample(words, rng.randrange(1, 3))}
            generation = live[name]["metadata"]["generation"] + 1 if name in live else 1
            live[name] = {"metadata": {"namespace": NS, "name": name, "uid": name, "generation": generation,
                                       "creationTimestamp": f"2026-01-01T00:00:{i:02d}Z"},
                          "spec": {"version": "1.0.0", "image": "r/x@sha256:" + "a" * 64, "commands": commands}}
            claims.observe(live[name])
            ordered = sorted(live.values(), key=lambda b: (b["metadata"]["creationTimestamp"], NS, b["metadata"]["name"]))
            want = resolve([Plugin(f"{NS}-{b['metadata']['name']}", load_botplugin_spec(b["spec"])) for b in ordered])
            expected = {r.plugin: (r.reason, r.message) for r in want.rejected}
            got = {e.id: e.rejection for e in claims.entries.values() if e.rejection}
            assert got == expected, (trial, step)
            assert {p.id for p in claims.accepted_plans()} == {p.id for p in want.accepted}


def test_claims_index_warns_when_a_botplugin_first_holds_the_observe_grant(caplog) -> None:
    """The operator's counterpart of `precinct up`'s warning: logged when the
    grant first appears, not again for a later edit that keeps it."""
    from precinct.k8s.claims import Claims

    def body(generation: int, permissions: list[str]) -> dict:
        return {"metadata": {"namespace": NS, "name": "inspector", "uid": "u", "generation": generation,
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"version": f"1.0.{generation}", "image": "r/x@sha256:" + "a" * 64, "permissions": permissions}}

    claims = Claims()
    with caplog.at_level("WARNING", logger="precinct.operator"):
        claims.observe(body(1, []))
        claims.observe(body(2, ["observe_chat_and_events"]))
        claims.observe(body(3, ["observe_chat_and_events", "read_messages"]))
    said = [r.getMessage() for r in caplog.records if "observe_chat_and_events" in r.getMessage()]
    assert said == [f"{NS}/inspector: {NS}-inspector is granted observe_chat_and_events: it reads every chat message "
                    "and bot event in the fleet (not commands, replies, storage or credentials). Grant it only to "
                    "plugins you trust with all chat."]


async def test_kubeconfig_with_embedded_certificate_data(tmp_path, monkeypatch) -> None:
    """kopf hands embedded data over base64-encoded; the operator's client
    loads the kubeconfig itself (the official loader decodes it into files),
    and kopf gets the same credentials as file paths."""
    import base64
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not found: cannot make a test certificate")
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "1", "-subj", "/CN=precinct-test"], check=True, capture_output=True)
    b64 = lambda p: base64.b64encode(p.read_bytes()).decode()   # noqa: E731
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443",
                                               "certificate-authority-data": b64(crt)}}],
        "users": [{"name": "u", "user": {"client-certificate-data": b64(crt), "client-key-data": b64(key)}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(var, raising=False)
    from precinct.k8s.client import configuration, connection_info

    cfg = await configuration()
    info = connection_info(cfg)
    assert info.server == "https://127.0.0.1:6443"
    assert open(info.ca_path).read().startswith("-----BEGIN CERTIFICATE-----")
    assert open(info.private_key_path).read().startswith("-----BEGIN")
    context = info.as_ssl_context()          # what kopf's watches use: loads without error
    assert context.verify_mode != 0
    client = Api(cfg)                        # what our calls use: same files
    await client.close()
