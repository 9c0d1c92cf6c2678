"""The bodies of `precinct render` and `precinct operator` (cli.py only
declares their options, so the Kubernetes code loads only when used)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from ..spec.load import BotPluginResource, load_path
from ..spec.model import Manifest
from .render import CREDS_PLACEHOLDER, Settings, render, resource_from_manifest


def _say(message: str) -> None:
    print(f"precinct: {message}", file=sys.stderr)


def read_settings(path: Path | None) -> Settings:
    """--settings FILE: a YAML mapping of render.Settings fields."""
    from .render import load_settings

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
    objects = render(resource, settings, creds=CREDS_PLACEHOLDER)
    if as_json:
        sys.stdout.write(json.dumps(objects, indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, width=4096))
    return 0


def operator_command(*, namespaces: list[str], nats_url: str | None, state_dir: Path,
                     runtime_class: str | None, runner_image: str | None, verbose: bool,
                     settings_file: Path | None = None, metrics_port: int | None = None) -> int:
    from .operator import OperatorConfig, run

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
                            namespaces=tuple(namespaces), metrics_port=metrics_port)
    try:
        return run(config, verbose=verbose)
    except KeyboardInterrupt:
        return 0
