"""The bodies of `precinct render` and `precinct operator` (cli.py only
declares their options, so the Kubernetes code loads only when used)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from ..plan.sandbox import observer_warning
from ..spec.load import BotPluginResource, load_path
from ..spec.model import Manifest
from ..k8s.render import CREDS_PLACEHOLDER, Settings, plan_for, render, resource_from_manifest


def _say(message: str) -> None:
    print(f"precinct: {message}", file=sys.stderr)


def read_settings(path: Path | None) -> Settings:
    """--settings FILE: a YAML mapping of render.Settings fields."""
    from ..k8s.render import load_settings

    if path is None:
        return Settings()
    try:
        return load_settings(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValueError, TypeError) as exc:
        raise SettingsError(f"{path}: {exc}") from None


class SettingsError(ValueError):
    pass


def render_command(path: Path, *, as_json: bool, namespace: str, runtime_class: str | None,
                   settings_file: Path | None = None) -> int:
    try:
        settings = read_settings(settings_file)
    except SettingsError as exc:
        _say(str(exc))
        return 2
    loaded, problems = load_path(path)
    for problem in problems:
        print(str(problem), file=sys.stderr)
    if loaded is None:
        return 1
    resource = resource_from_manifest(loaded, namespace) if isinstance(loaded, Manifest) else loaded
    assert isinstance(resource, BotPluginResource)
    if runtime_class:
        settings = replace(settings, runtime_class_name=runtime_class)
    warning = observer_warning(plan_for(resource))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    objects = render(resource, settings, creds=CREDS_PLACEHOLDER)
    if as_json:
        sys.stdout.write(json.dumps(objects, indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, width=4096))
    return 0


def operator_command(*, namespaces: list[str], nats_url: str | None, state_dir: Path,
                     runtime_class: str | None, runner_image: str | None, verbose: bool,
                     settings_file: Path | None = None, metrics_port: int | None = None,
                     liveness: str | None = None) -> int:
    from ..k8s.operator import OperatorConfig, run

    try:
        settings = read_settings(settings_file)
    except SettingsError as exc:
        _say(str(exc))
        return 2
    if nats_url:
        settings = replace(settings, nats_url=nats_url)
    if runtime_class:
        settings = replace(settings, runtime_class_name=runtime_class)
    if runner_image:
        settings = replace(settings, runner_image=runner_image)
    config = OperatorConfig(state_dir=state_dir, nats_url=nats_url, render=settings,
                            namespaces=tuple(namespaces), metrics_port=metrics_port, liveness_endpoint=liveness)
    try:
        return run(config, verbose=verbose)
    except KeyboardInterrupt:
        return 0


def resume_command(namespace: str, name: str, *, wait: float, as_json: bool) -> int:
    """`precinct plugin resume --namespace NS NAME`: set the BotPlugin's resume
    annotation to a new value (k8s/ladder.py) and wait for the operator to act."""
    import asyncio

    return asyncio.run(_resume(namespace, name, wait, as_json))


async def _resume(namespace: str, name: str, wait: float, as_json: bool) -> int:
    import asyncio
    import time

    import aiohttp

    from ..k8s.client import Api, ApiError
    from ..k8s.ladder import RESUME_ANNOTATION, stamp, state

    try:
        api = await Api.connect(attempts=3)
    except Exception as exc:  # noqa: BLE001 - ConfigException, file and YAML errors alike
        _say(f"no cluster to talk to: set KUBECONFIG (or run inside a Pod with a service account): {exc}")
        return 1
    server = api.cfg.host
    where = f"{namespace}/{name}"
    acknowledged = False
    try:
        body = await api.get("BotPlugin", namespace, name)
        if body is None:
            _say(f"no BotPlugin {where} in the cluster at {server}")
            return 1
        before = state(body)
        if not before.get("suspendedAt"):
            _say(f"{where} is not suspended (nothing to resume); `kubectl describe botplugin {name} -n {namespace}`")
            return 1
        token = stamp(time.time())
        await api.patch("BotPlugin", namespace, name, {"metadata": {"annotations": {RESUME_ANNOTATION: token}}})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while wait > 0:
            body = await api.get("BotPlugin", namespace, name)
            if body is None or state(body).get("resumed") == token:
                acknowledged = body is not None
                break
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.5)
    except (ApiError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        _say(f"the Kubernetes API at {server} refused or did not answer: {exc}")
        return 1
    finally:
        await api.close()
    reply = {"namespace": namespace, "name": name, "resumed": token, "was_suspended": True,
             "suspended_because": before.get("suspendedBecause"), "acknowledged": acknowledged}
    if as_json:
        print(json.dumps(reply))
    elif acknowledged:
        print(f"{where} resumed: the operator scales it back up")
    else:
        print(f"{where}: asked to resume ({RESUME_ANNOTATION}={token})")
    if wait > 0 and not acknowledged:
        _say(f"the operator has not acted on it within {wait:g} s: is it running? It will act when it runs")
        return 1
    return 0
