"""Typed configuration: every PRECINCT_* variable the control plane reads,
loaded and validated by pydantic-settings when a command runs (never at
import time).

Three groups, one per program that reads them:

  HostSettings      `precinct up` and the single-host runtime
  OperatorSettings  `precinct operator`
  MarketSettings    the marketplace commands (`precinct plugin ...`, `precinct market ...`)

A command-line flag wins over its variable: commands pass what was given on
the command line to `load(...)`, which fills the rest from the environment
and the defaults. A bad value is a `SettingsError` naming the variable.
`python -m precinct.settings` prints the table in docs/configuration.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from .wire import environment as env

T = TypeVar("T", bound="_Settings")


class SettingsError(ValueError):
    """A PRECINCT_* variable (or the flag standing for it) has a bad value."""


def _var(name: str, flag: str | None, description: str, **kw: Any) -> Any:
    """A field read from environment variable `name` (or given as `flag`)."""
    return Field(validation_alias=name,
                 description=description, json_schema_extra={"variable": name, "flag": flag}, **kw)


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True, populate_by_name=True)

    @classmethod
    def load(cls: type[T], **given: Any) -> T:
        """The environment, overridden by what the command line gave (None = not given)."""
        try:
            return cls(**{k: v for k, v in given.items() if v is not None})
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                field = cls.model_fields.get(str(err["loc"][0])) if err["loc"] else None
                extra = (field.json_schema_extra or {}) if field else {}
                name = extra.get("variable") or ".".join(map(str, err["loc"]))
                if extra.get("flag"):
                    name += f" ({extra['flag']})"
                problems.append(f"{name}: {err['msg']}")
            raise SettingsError("; ".join(problems)) from None


class HostSettings(_Settings):
    state_dir: Path | None = _var(env.STATE_DIR, "--state-dir", "State dir: keys, credentials, databases. Default: "
                                  "/var/lib/precinct/state as root, else $XDG_STATE_HOME/precinct.", default=None)
    wheel_index: str | None = _var(env.WHEEL_INDEX, "--wheel-index", "Where plugins' `dependencies` come from: a "
                                   "PEP 503 index URL or a folder of wheels. Default: pip's configured index.",
                                   default=None)
    runner_python: str | None = _var(env.RUNNER_PYTHON, None, "The interpreter of the plugin runner's environment "
                                     "(default: Debian's /usr/bin/python3, then python3 on PATH).", default=None)
    runner_env: Path | None = _var(env.RUNNER_ENV, None, "Where the runner's environment is built "
                                   "(default: /var/lib/precinct/runner-<hash>).", default=None)
    runner_source: Path | None = _var(env.RUNNER_SOURCE, None, "The runner's sources, when not run from a "
                                      "checkout (default: the checkout's plugins/runner).", default=None)
    confine_disable: str = _var(env.CONFINE_DISABLE, None, "Sandbox layers to switch off, comma-separated "
                                "(uid, cgroups, pidns, netns, landlock, seccomp, disk, view): for debugging; "
                                "status reports each as MISSING. `handoff` and `zygote` are not protections: "
                                "without `handoff` plugins reach NATS through the supervisor's relay; without "
                                "`zygote` each instance starts by exec instead of being forked from the runner "
                                "environment's pre-imported template (more memory and start time, no shared "
                                "hash secret).", default="")
    egress_test_allow: str = _var(env.EGRESS_TEST_ALLOW, None, "TEST ONLY: ADDR:PORT pairs the egress proxy "
                                  "lets plugins reach although the policy refuses them.", default="")
    uid_base: int = _var(env.UID_BASE, None, "First uid handed to plugins.", default=61000, ge=1000, le=2**31 - 2**16)
    uid_count: int = _var(env.UID_COUNT, None, "How many uids plugins may use.", default=1000, ge=1, le=65536)
    uid_table: Path | None = _var(env.UID_TABLE, None, "The host-wide uid table (default: "
                                  "/var/lib/precinct/uids.json).", default=None)

    @property
    def disabled_layers(self) -> set[str]:
        return {x.strip() for x in self.confine_disable.split(",") if x.strip()}

    def default_state_dir(self) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        if os.geteuid() == 0:
            return Path("/var/lib/precinct/state")
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "precinct"


class OperatorSettings(_Settings):
    nats_url: str | None = _var(env.NATS_URL, "--nats-url", "NATS URL the operator pushes accounts to, and "
                                "plugins connect to.", default=None)
    operator_state: Path | None = _var(env.OPERATOR_STATE, "--state-dir", "The operator's NATS keys and JWTs "
                                       "(a mounted Secret or PVC).", default=None)
    operator_settings: Path | None = _var(env.OPERATOR_SETTINGS, "--settings", "YAML: NATS/DNS/index peers, "
                                          "cluster CIDRs, images (docs/operator.md).", default=None)
    operator_metrics_port: int | None = _var(env.OPERATOR_METRICS_PORT, "--metrics-port", "Serve Prometheus "
                                             "/metrics on this port.", default=None, ge=0, le=65535)
    operator_liveness: str | None = _var(env.OPERATOR_LIVENESS, "--liveness", "Serve kopf's health endpoint at "
                                         "this URL, e.g. http://0.0.0.0:8080/healthz.", default=None)
    fleet_configmap: str = _var(env.FLEET_CONFIGMAP, None, "NAMESPACE/NAME of the ConfigMap the operator writes "
                                "every plugin's NATS edges to (the chart sets it).", default="")
    fleet_shards: int = _var(env.FLEET_SHARDS, None, "How many keys the fleet ConfigMap spreads plugins over.",
                             default=64, ge=1, le=4096)

    @property
    def fleet_target(self) -> tuple[str, str] | None:
        namespace, _, name = self.fleet_configmap.strip().partition("/")
        return (namespace, name) if namespace and name else None


class MarketSettings(_Settings):
    key_passphrase: SecretStr | None = _var(env.KEY_PASSPHRASE, None, "Encrypts a publisher's private key "
                                            "(`plugin keygen`) and unlocks it (`plugin sign`).", default=None)
    index_root: Path | None = _var(env.INDEX_ROOT, "--root", "The index's pinned TUF root (its "
                                   "repository/metadata/1.root.json).", default=None)
    index_root_json: str | None = _var(env.INDEX_ROOT_JSON, None, "The pinned root's JSON itself (how the "
                                       "operator hands it to a bundle's fetch container).", default=None)
    market_log: bool = _var(env.MARKET_LOG, None, "Log each request `precinct market serve` answers.",
                            default=False)


GROUPS = {"precinct up and the single-host runtime": HostSettings, "precinct operator": OperatorSettings,
          "the marketplace commands": MarketSettings}


def table() -> str:
    """docs/configuration.md: every variable, its flag, its meaning."""
    out = ["# Configuration: every PRECINCT_* variable", "",
           "Generated by `python -m precinct.settings` from operator/precinct/settings.py (the loader) and",
           "operator/precinct/wire/environment.py (the names). A command-line flag wins over its variable.", ""]
    for title, model in GROUPS.items():
        out += [f"## {title}", "", "| variable | flag | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            extra = field.json_schema_extra or {}
            default = "" if field.default in (None, "") else f"`{field.default}`"
            flag = f"`{extra['flag']}`" if extra.get("flag") else ""
            out.append(f"| `{extra['variable']}` | {flag} | {default} | {field.description} |")
        out.append("")
    out += ["## set by the platform", "", "| variable | meaning |", "|---|---|",
            f"| `{env.DATA_DIR}` | a plugin's data dir inside its sandbox (with `file_system_read`/`_write`) |", "",
            "## the plugin runner", "",
            "The runner (plugins/runner) reads each option from the command line or from",
            "`PRECINCT_<OPTION>`; `python -m precinct_runner --help` describes them:", "",
            ", ".join(f"`{env.PREFIX}{o}`" for o in env.RUNNER_OPTIONS) + ".", ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(table())
