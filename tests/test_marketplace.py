"""The marketplace (issue 19): the permission diff, `precinct plugin update`
asking before an update that widens what a plugin may do, the page's routes
(cross-site requests refused, the same install code as the CLI) and the page
itself in headless Chromium, driving install -> update with a permission diff
-> rollback against a real `precinct up`, with a screenshot for
docs/marketplace.md.

Indexes, bundles and wheels are built in a tmp dir by each test
(test_market.py's helpers); the index is served from a file:// URL."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from precinct.market import install
from precinct.market.errors import PermissionsNotAccepted
from precinct.plan import permissions_doc
from precinct.plan.permission_diff import compare, diff
from precinct.runtime.market_web import MarketRoutes
from precinct.runtime.monitor import Monitor
from precinct.runtime.web import HttpServer
from precinct.spec.model import load_manifest
from runtime_support import PRECINCT, Up
from test_market import market, packed, plugin_folders, run  # noqa: F401 - `market` is a fixture
from test_monitoring import CHROMIUM, CHROMIUM_ARGS, _chromium_or_skip

ROOT = Path(__file__).parents[1]
SCREENSHOT = ROOT / "docs" / "img" / "marketplace.png"

BASE = {"name": "greeter", "version": "1.0.0", "commands": {"hello": "greeter.hello"},
        "permissions": ["send_messages"]}


def manifest(**changes):
    return load_manifest({**BASE, **changes})


# -- the diff (pure) -------------------------------------------------------------------


def test_diff_names_new_grants_higher_limits_commands_events_and_dependencies():
    new = manifest(version="1.1.0", permissions=["send_messages", "http_requests", "database_write"],
                   commands={"hello": "greeter.hello", "bye": "greeter.bye"}, events=["greetings"],
                   dependencies=["httpx>=0.27"], resources={"memory_limit": "512Mi", "disk_limit": "32Mi"},
                   description="now with the weather")
    d = diff(manifest(), new)
    widening = {(c.path, c.item) for c in d.widening}
    assert {("permissions", "http_requests"), ("permissions", "database_write"),
            ("permissions", "database_read"),                          # implied by database_write: the compiler says so
            ("commands", "!bye -> rosey.command.greeter.bye"), ("event_roots", "rosey.event.greetings.>"),
            ("dependencies.httpx", "httpx>=0.27"), ("limits.memory_bytes", "256Mi -> 512Mi"),
            ("network", "http-egress-public")} <= widening, widening
    assert d.needs_consent
    # Lower limits and informational fields show, but never need consent.
    by_path = {c.path: c for c in d.changes}
    assert by_path["limits.disk_bytes"].kind == "lowered" and not by_path["limits.disk_bytes"].widens
    assert by_path["description"].kind == "added" and not by_path["description"].widens
    # The grant's words are docs/permissions.md's row for it, with this plugin's own subjects.
    http = next(c for c in d.changes if c.item == "http_requests")
    row = next(r for r in permissions_doc.grant_rows("greeter") if r.grant and r.grant.value == "http_requests")
    assert row.words() in http.words and "egress proxy" in http.words
    write = next(c for c in d.changes if c.item == "database_write")
    assert "rosey.db.row.greeter.insert" in write.words and ".example." not in write.words
    text = "\n".join(d.lines())
    assert "+ new grant: http_requests" in text and "+ higher memory limit: 256Mi -> 512Mi" in text
    assert "- lower disk limit: 64Mi -> 32Mi" in text and "+ new dependency: httpx>=0.27" in text


def test_diff_that_only_narrows_or_changes_nothing_needs_no_consent():
    wide = manifest(permissions=["send_messages", "http_requests"])
    narrowed = diff(wide, manifest(version="1.1.0"))
    assert narrowed.changes and not narrowed.needs_consent
    assert {c.kind for c in narrowed.changes} == {"removed"}
    same = diff(manifest(), manifest(version="1.0.1"))
    assert same.changes == () and not same.needs_consent
    assert same.lines() == ["greeter 1.0.0 -> 1.0.1: may do exactly what it may do now"]
    # The fingerprint names exactly one diff: another offer has another one.
    assert diff(manifest(), wide).fingerprint() != diff(manifest(), manifest(permissions=["http_requests"])).fingerprint()


def test_a_field_the_diff_has_never_heard_of_still_shows_and_needs_consent():
    """A field the diff has no label for (`new_knob`) shows up under its own
    name, and an addition there is never waved through; `exports` and `calls`
    (added after the diff was written) only got labels."""
    before = {"exports": [], "calls": ["quotes.lookup"], "limits": {"pids": 8}}
    after = {"exports": ["lookup"], "calls": ["quotes.lookup", "weather.now"], "limits": {"pids": 8},
             "new_knob": {"level": 3}}
    d = compare("quotes", "1", "2", before, after, "quotes")
    assert {(c.path, c.item, c.widens) for c in d.changes} == {
        ("exports", "lookup", True), ("calls", "weather.now", True), ("new_knob.level", "3", True)}
    assert "  + new new_knob.level: 3" in d.lines()
    assert "  + new action other plugins may call: lookup" in d.lines()
    assert "  + new call to another plugin: weather.now" in d.lines()


def test_may_do_is_the_permissions_doc_rows_for_the_grants_held():
    rows = permissions_doc.may_do(manifest(permissions=["database_write"]))
    assert [r.grant.value if r.grant else None for r in rows] == [None, "database_read", "database_write"]
    # The every-plugin row names this plugin's own command (not the doc's example), and no grant's subjects.
    assert "`rosey.command.greeter.hello`" in rows[0].nats and ".do`" not in rows[0].nats
    assert "rosey.db" not in rows[0].nats
    # A grant's row is the doc's row, with this plugin's subject namespace in place of `example`.
    doc = (ROOT / "docs" / "permissions.md").read_text()
    for row in rows[1:]:
        example = next(r for r in permissions_doc.grant_rows() if r.grant == row.grant)
        assert f"| {example.label} | {example.nats or '—'} | {example.kernel or '—'} | {example.services or '—'} |" in doc
        assert row.nats == example.nats.replace(".example.", ".greeter.")


# -- the CLI and the install functions -----------------------------------------------------


def _publish(m, version: str, **kw) -> None:
    m["index"].add(packed(m["tmp"], version, **kw), m["alice"])


def test_update_that_adds_grants_is_never_applied_silently(market):
    m = market
    common = ["--plugins-dir", str(m["plugins"]), "--state-dir", str(m["state"])]
    code, out = run("plugin", "install", "greeter", *common, "--index", m["url"], "--root", str(m["root"]))
    assert code == 0, out
    _publish(m, "1.1.0", permissions=["http_requests"])
    # The test runner has no terminal: without the flag nobody can be asked, so it is refused.
    code, out = run("plugin", "update", "greeter", *common)
    assert code == 1, out
    assert "+ new grant: http_requests" in out and "egress proxy" in out, out
    assert "permissions: greeter 1.1.0 may do more than the installed 1.0.0" in out and "--accept-permissions" in out
    assert "version: 1.0.0" in (m["plugins"] / "greeter" / "plugin.yaml").read_text()
    assert not list((m["plugins"] / ".precinct" / "staging").iterdir())
    code, out = run("plugin", "update", "greeter", *common, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["check"] == "permissions" and doc["permissions"]["needs_consent"], out
    assert ["permissions", "http_requests"] in [[c["path"], c["item"]] for c in doc["permissions"]["changes"]]
    # The library refuses too when nobody is asked (consent=None): the page and the CLI share this.
    trust = install.Trust()
    with pytest.raises(PermissionsNotAccepted):
        install.install("greeter", m["plugins"], m["state"], trust, update=True)
    code, out = run("plugin", "update", "greeter", *common, "--accept-permissions")
    assert code == 0 and "accepted (--accept-permissions)" in out and "updated greeter 1.1.0 (was 1.0.0)" in out, out
    # An update that only narrows is applied, and its diff printed.
    _publish(m, "1.2.0")
    code, out = run("plugin", "update", "greeter", *common)
    assert code == 0 and "- removed grant: http_requests" in out and "updated greeter 1.2.0" in out, out
    # Rolling back to a version that may do more is asked about like an update.
    code, out = run("plugin", "rollback", "greeter", "--to", "1.1.0", *common)
    assert code == 1 and "+ new grant: http_requests" in out and "rollback was not applied" in out, out
    assert "version: 1.2.0" in (m["plugins"] / "greeter" / "plugin.yaml").read_text()
    code, out = run("plugin", "rollback", "greeter", "--to", "1.1.0", *common, "--accept-permissions")
    assert code == 0 and "rolled back greeter 1.1.0 (was 1.2.0)" in out, out


def _at_a_terminal(args: list[str], answer: str) -> tuple[int, str]:
    """Run the CLI with a terminal on stdin (a pty) and type `answer` when asked."""
    import os
    import pty
    import select
    import subprocess

    primary, secondary = pty.openpty()
    proc = subprocess.Popen([*PRECINCT, *args], stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    out, answered, deadline = b"", False, time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(primary, 4096)
            except OSError:       # the child closed the terminal: it has finished
                break
            if not chunk:
                break
            out += chunk
        if not answered and b"Apply these changes?" in out:
            os.write(primary, answer.encode() + b"\n")
            answered = True
        if proc.poll() is not None and not ready:
            break
    os.close(primary)
    return proc.wait(timeout=60), out.decode(errors="replace")


def test_update_asks_at_a_terminal(market):
    m = market
    trust = install.Trust(index_url=m["url"], root=m["root"])
    install.install("greeter", m["plugins"], m["state"], trust)
    _publish(m, "1.1.0", permissions=["http_requests"])
    args = ["plugin", "update", "greeter", "--plugins-dir", str(m["plugins"]), "--state-dir", str(m["state"])]
    code, out = _at_a_terminal(args, "n")
    assert code == 1 and "+ new grant: http_requests" in out and "update was not applied" in out, out
    assert "version: 1.0.0" in (m["plugins"] / "greeter" / "plugin.yaml").read_text()
    code, out = _at_a_terminal(args, "y")
    assert code == 0 and "updated greeter 1.1.0 (was 1.0.0)" in out, out
    assert "version: 1.1.0" in (m["plugins"] / "greeter" / "plugin.yaml").read_text()


# -- the page's routes ---------------------------------------------------------------------


def _request(url: str, body: dict | None = None, token: str | None = "s3cret", origin: str | None = "same",
             content_type: str = "application/json") -> tuple[int, dict | str]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", content_type)
        if origin == "same":
            origin = url.split("/api/")[0]
        if origin:
            req.add_header("Origin", origin)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data.decode()


def _wait_job(base: str, job: str, deadline: float = 120) -> dict:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        code, state = _request(f"{base}api/market/jobs/{job}")
        assert code == 200, state
        if state["state"] != "running":
            return state
        time.sleep(0.2)
    raise AssertionError(f"job {job} still running after {deadline} s: {state}")


async def test_market_routes_refuse_cross_site_requests_and_share_the_cli_code(market):
    m = market
    install.install("greeter", m["plugins"], m["state"], install.Trust(index_url=m["url"], root=m["root"]))
    _publish(m, "1.1.0", permissions=["http_requests"])

    async def status():
        return {"plugins": {}, "services": {}}

    monitor = Monitor(status)
    routes = MarketRoutes(m["plugins"], m["state"], lambda: {"greeter": "Running"})
    server = HttpServer(monitor, 0, token="s3cret", market=routes)
    await server.start()
    try:
        base = server.url

        def checks():
            install_url = base + "api/market/update"
            body = {"plugin": "greeter", "version": "1.1.0"}
            # Cross-site or unauthenticated requests change nothing.
            assert _request(install_url, body, origin=None)[0] == 403                     # no Origin
            assert _request(install_url, body, origin="http://evil.example")[0] == 403    # another site
            assert _request(install_url, body, origin=base.replace("127.0.0.1", "localhost").rstrip("/"))[0] == 403
            assert _request(install_url, body, token=None)[0] == 401                      # no token in the header
            assert _request(install_url, body, token="wrong")[0] == 401
            assert _request(install_url, body, content_type="text/plain")[0] == 415       # a plain form post
            assert _request(base + "api/market/update?token=s3cret", body, token=None)[0] == 401
            code, answer = _request(install_url, {"plugin": "../../etc"})
            assert code == 400 and "plugin id" in answer["error"], answer
            assert _request(install_url, {"plugin": "greeter", "source": "/tmp/x.roseyplug"})[0] == 400
            assert _request(base + "api/view", {"x": 1})[0] == 405                        # the rest stays read-only
            assert "version: 1.0.0" in (m["plugins"] / "greeter" / "plugin.yaml").read_text()

            # The listing: signature from the TUF client, what it may do, scan, the diff on offer.
            code, listing = _request(base + "api/market")
            assert code == 200 and listing["index"] == m["url"] and listing["error"] is None, listing
            (entry,) = listing["plugins"]
            assert entry["signature"]["ok"] and "TUF" in entry["signature"]["text"]
            assert entry["publisher"] == [m["alice"].public_key.keyid]
            assert entry["versions"] == ["1.0.0", "1.1.0"] and entry["version"] == "1.1.0"
            assert entry["installed"]["version"] == "1.0.0" and entry["installed"]["state"] == "Running"
            assert [r["grant"] for r in entry["may_do"]] == [None, "http_requests"]
            assert entry["scan"]["verdict"] == "clean" and entry["action"] == "update"
            offer = entry["permissions"]
            assert offer["needs_consent"] and "+ new grant: http_requests" in "\n".join(offer["lines"])

            # Without accepting, the update is refused by install.check_consent, with the diff to show.
            code, answer = _request(install_url, body)
            assert code == 202, answer
            job = _wait_job(base, answer["job"])
            assert job["state"] == "failed" and job["check"] == "permissions", job
            assert job["permissions"]["fingerprint"] == offer["fingerprint"]
            assert "version: 1.0.0" in (m["plugins"] / "greeter" / "plugin.yaml").read_text()
            # Accepting another diff than this one does not help.
            code, answer = _request(install_url, {**body, "accept": "0" * 32})
            assert _wait_job(base, answer["job"])["check"] == "permissions"
            # Accepting exactly the diff shown applies it, step by step.
            code, answer = _request(install_url, {**body, "accept": offer["fingerprint"]})
            job = _wait_job(base, answer["job"])
            assert job["state"] == "done", job
            assert job["steps"][0].startswith("fetching and verifying greeter 1.1.0")
            assert "scanning the code" in job["steps"] and job["steps"][-1] == "updated greeter 1.1.0 (was 1.0.0)"
            assert "version: 1.1.0" in (m["plugins"] / "greeter" / "plugin.yaml").read_text()
            # Rollback narrows: no consent needed. Remove keeps the data, as the CLI does.
            code, answer = _request(base + "api/market/rollback", {"plugin": "greeter"})
            assert _wait_job(base, answer["job"])["state"] == "done"
            assert "version: 1.0.0" in (m["plugins"] / "greeter" / "plugin.yaml").read_text()
            code, answer = _request(base + "api/market/remove", {"plugin": "greeter"})
            assert _wait_job(base, answer["job"])["state"] == "done"
            assert plugin_folders(m["plugins"]) == []
            # Errors come back in words.
            code, answer = _request(base + "api/market/rollback", {"plugin": "greeter"})
            job = _wait_job(base, answer["job"])
            assert job["state"] == "failed" and job["error"] == "greeter is not installed", job

        await asyncio.to_thread(checks)
    finally:
        await server.close()


def test_the_listing_shows_what_the_tuf_client_found(market, tmp_path):
    """The page never checks a signature: it shows the TUF client's verdict, in words."""
    from precinct.market.catalog import Catalog

    m = market
    assert Catalog(m["plugins"], tmp_path / "other-state").browse()["error"].startswith("no index configured")
    install.install("greeter", m["plugins"], m["state"], install.Trust(index_url=m["url"], root=m["root"]))
    listing = Catalog(m["plugins"], m["state"]).browse()
    assert listing["plugins"][0]["signature"]["ok"] and listing["plugins"][0]["action"] == "current"
    # The index now serves other bytes than the publisher signed for 1.1.0.
    _publish(m, "1.1.0")
    target = m["index"].targets_dir / "greeter" / "greeter-1.1.0.roseyplug"
    target.write_bytes(target.read_bytes()[:-1] + b"x")
    (entry,) = Catalog(m["plugins"], m["state"]).browse()["plugins"]
    assert entry["signature"] == {"ok": False, "check": "hash", "text": entry["signature"]["text"]}
    assert "tampered file rejected" in entry["signature"]["text"]
    assert "action" not in entry and "may_do" not in entry          # nothing from it is offered
    assert entry["installed"]["version"] == "1.0.0"


# -- the page in a browser, against `precinct up` -------------------------------------------


def test_marketplace_page_install_update_with_a_permission_diff_and_rollback(market):
    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    m = market
    _publish(m, "1.1.0", permissions=["http_requests"])
    m["plugins"].mkdir()
    # Pin the index on the state dir `precinct up` will use: the page uses the index remembered there.
    code, out = run("plugin", "index", "--state-dir", str(m["state"]))
    assert code == 1 and "no index configured" in out, out
    code, out = run("plugin", "index", m["url"], "--root", str(m["root"]), "--state-dir", str(m["state"]))
    assert code == 0 and "plugins: greeter" in out, out
    up = Up(m["plugins"], m["state"])
    try:
        up.wait_for(lambda s: s is not None, "the supervisor")
        url = json.loads((m["state"] / "dashboard.json").read_text())["url"].replace("/#token=", "/market#token=")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                failed = []
                page.on("requestfailed", lambda r: failed.append(r.url))
                page.goto(url)
                card = page.locator('section.plugin[data-plugin="greeter"]')
                card.locator("button[data-action=install]").wait_for(timeout=60_000)
                assert "✔ signature" in card.locator(".signature").inner_text()
                assert card.locator(".versions").inner_text() == "versions: 1.0.0, 1.1.0"
                assert card.locator('.may-do li[data-grant="http_requests"]').count() == 1

                # The page offers the latest; install 1.0.0 first, then update to 1.1.0.
                card.locator("select.version-pick").select_option("1.0.0")
                card.locator("button[data-action=install]").click()
                page.wait_for_selector('#job[data-state="done"]', timeout=120_000)
                assert "installed greeter 1.0.0" in page.locator("#job-steps").inner_text()
                up.wait_for(lambda s: s["plugins"].get("greeter", {}).get("state") == "Running", "greeter running")

                accept = card.locator("button.accept[data-action=update]")
                accept.wait_for(timeout=60_000)
                # The dashboard samples every 2 s: reload the listing until it shows greeter running.
                page.wait_for_function(
                    "() => document.querySelector('section[data-plugin=greeter] .installed .state.Running')"
                    " || (load(), false)", polling=2000, timeout=60_000)
                diff_text = card.locator(".diff").inner_text()
                assert "new grant: http_requests" in diff_text and "egress proxy" in diff_text, diff_text
                page.screenshot(path=str(SCREENSHOT), full_page=True)
                accept.click()
                page.wait_for_selector('#job[data-state="done"]', timeout=120_000)
                assert "updated greeter 1.1.0 (was 1.0.0)" in page.locator("#job-steps").inner_text()
                assert "version: 1.1.0" in (m["plugins"] / "greeter" / "plugin.yaml").read_text()
                up.wait_for(lambda s: s["plugins"].get("greeter", {}).get("version") == "1.1.0"
                            and s["plugins"]["greeter"].get("state") == "Running", "greeter 1.1.0 running")

                page.wait_for_function("() => document.querySelector("
                                       "'section[data-plugin=greeter] button[data-action=rollback]')", timeout=60_000)
                card.locator("button[data-action=rollback]").click()
                page.wait_for_selector('#job[data-state="done"]', timeout=120_000)
                assert "rolled back greeter 1.0.0 (was 1.1.0)" in page.locator("#job-steps").inner_text()
                assert "version: 1.0.0" in (m["plugins"] / "greeter" / "plugin.yaml").read_text()
                up.wait_for(lambda s: s["plugins"].get("greeter", {}).get("version") == "1.0.0", "greeter 1.0.0 back")
                assert not failed, failed
            finally:
                browser.close()
    finally:
        up.stop()
