"""`precinct`: the one command-line entry point.

Exit codes: 0 success, 1 the input or the system is not as it should be (the
message says what), 2 the command line itself is wrong.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .. import __version__

app = typer.Typer(
    help="Precinct runs untrusted chat-bot plugins behind hard boundaries.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"precinct {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Precinct runs untrusted chat-bot plugins behind hard boundaries."""


@app.command()
def validate(
    paths: list[Path] = typer.Argument(..., help="plugin.yaml files, BotPlugin files, plugin folders, or a folder of plugins."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report instead of lines."),
) -> None:
    """Check manifests and BotPlugin resources; one line per problem, `file: field: message`.

    Plugins are also checked against each other in the order given: a second
    claimant of a command or namespace is rejected, as the runtimes would. A
    manifest is plugin.yaml or plugin.yml (not both); a folder inside a
    plugins dir without one is not a plugin and gets a warning (as in `up`).
    """
    from dataclasses import asdict

    from .fleet import check_fleet
    from ..spec import requirements as reqs

    report = check_fleet(paths)
    if as_json:
        body = report.to_dict()
        body["dependencies"] = {p.id: asdict(reqs.plan(p.spec.dependencies))
                                for p in report.plugins if p.spec.dependencies}
        typer.echo(json.dumps(body, indent=2))
    else:
        for warning in report.warnings:
            typer.echo(f"warning: {warning}", err=True)
        for problem in report.problems:
            typer.echo(str(problem), err=False)
        for p in report.plugins:
            for line in reqs.describe(p.id, p.spec.dependencies):
                typer.echo(line)
        if not report.problems:
            typer.echo(f"{len(report.plugins)} plugin(s) valid: " + ", ".join(p.id for p in report.plugins))
    raise typer.Exit(0 if not report.problems else 1)


@app.command()
def plan(
    paths: list[Path] = typer.Argument(..., help="Plugin folders, manifests, or a folder of plugins."),
    as_json: bool = typer.Option(False, "--json", help="Print the full plans as JSON."),
) -> None:
    """Print the sandbox plan each plugin compiles to: NATS edges, limits, fence, rates."""
    from .fleet import check_fleet
    from ..plan.render_text import describe_plan

    report = check_fleet(paths)
    for problem in report.problems:
        typer.echo(str(problem), err=True)
    if not as_json:
        # (The observer warning is part of each plan's text already.)
        for warning in (w for w in report.warnings if w.field != "permissions"):
            typer.echo(f"warning: {warning}", err=True)
    if as_json:
        typer.echo(json.dumps({p.id: p.to_dict() for p in report.plans}, indent=2))
    else:
        for p in report.plans:
            typer.echo(describe_plan(p))
    raise typer.Exit(0 if not report.problems else 1)


@app.command()
def crd(
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
) -> None:
    """Print the BotPlugin CustomResourceDefinition generated from the spec model."""
    from ..k8s.crd import crd_yaml

    text = crd_yaml()
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


STATE_HELP = "State dir (keys, credentials, databases). Default: $PRECINCT_STATE_DIR, /var/lib/precinct/state as root, else ~/.local/state/precinct."


def _state(state_dir: Optional[Path]) -> Path:
    from ..settings import HostSettings, SettingsError

    try:
        return HostSettings.load(state_dir=state_dir).default_state_dir()
    except SettingsError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"precinct: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def up(
    plugins_dir: Path = typer.Argument(Path("plugins"), help="Folder holding one folder per plugin (plugin.yaml + code)."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
    nats_port: Optional[int] = typer.Option(None, "--nats-port", help="Loopback port for NATS (default: a free one)."),
    grace: float = typer.Option(10.0, "--grace", help="Seconds between SIGTERM and SIGKILL when stopping a plugin."),
    initial_backoff: float = typer.Option(1.0, "--initial-backoff", help="First restart delay after a crash (s)."),
    max_backoff: float = typer.Option(60.0, "--max-backoff", help="Longest restart delay (s)."),
    reset_after: float = typer.Option(300.0, "--reset-after", help="Healthy this long resets the backoff (s)."),
    violation_window: float = typer.Option(
        600.0, "--violation-window", help="Violation strikes older than this are forgotten (s); also how long "
        "PermissionsCompliant stays False after the last violation."),
    violation_cooldown: float = typer.Option(
        10.0, "--violation-cooldown", help="Violations this soon after a strike count as the same strike (s)."),
    suspend_after: int = typer.Option(
        3, "--suspend-after", min=0, help="Strike that suspends a plugin (1st warns, later ones restart); "
        "0 never suspends."),
    dashboard_port: int = typer.Option(
        0, "--dashboard-port", min=0, help="Loopback port of the health dashboard (0: a free one; the URL with "
        "its token is logged and printed by `precinct dashboard --url`)."),
    no_dashboard: bool = typer.Option(False, "--no-dashboard", help="Do not serve the health dashboard."),
    wheel_index: Optional[str] = typer.Option(
        None, "--wheel-index",
        help="Where plugins' `dependencies` come from: a PEP 503 index URL or a folder of wheels; then the only "
        "source (pip's own configuration is ignored). Default: pip's configured index. [PRECINCT_WHEEL_INDEX]"),
    metrics_port: Optional[int] = typer.Option(
        None, "--metrics-port", min=0, help="Serve Prometheus /metrics on this loopback port, no token "
        "(default: off; docs/monitoring.md suggests 9470)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail."),
) -> None:
    """Run NATS, the trusted services and every plugin in PLUGINS_DIR until Ctrl-C or SIGTERM."""
    import asyncio
    import logging

    from ..runtime.slot import RestartPolicy
    from ..runtime.supervisor import Supervisor, SupervisorError
    from ..runtime.violations import LadderPolicy
    from ..settings import HostSettings

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not plugins_dir.is_dir():
        _fail(f"{plugins_dir} is not a folder of plugins")
    from ..confine.host import environment_problem

    problem = environment_problem()
    if problem:
        _fail(problem)
    policy = RestartPolicy(initial_backoff=initial_backoff, max_backoff=max_backoff,
                           reset_after=reset_after, grace_period=grace)
    supervisor = Supervisor(plugins_dir, _state(state_dir), policy=policy, nats_port=nats_port)
    supervisor.violations.policy = LadderPolicy(window=violation_window, cooldown=violation_cooldown,
                                                suspend_after=suspend_after)
    supervisor.dashboard_port = None if no_dashboard else dashboard_port
    supervisor.metrics_port = metrics_port
    supervisor.wheel_index = HostSettings.load(wheel_index=wheel_index).wheel_index
    try:
        asyncio.run(supervisor.run())
    except SupervisorError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass


@app.command()
def status(
    plugin: Optional[str] = typer.Argument(
        None, help="One plugin's id: it alone, measured now, with what the kernel says of its sandbox "
                   "(cgroup members, OOM kills, CPU throttling, refused forks)."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the full status as JSON."),
) -> None:
    """Show every plugin: state, pid, restarts, last exit, CPU, memory, conditions.

    States are as they are now; CPU and memory are as the supervisor last
    sampled them (every 2 s, longer with more than 500 plugins). Name a
    plugin for its numbers read now and its sandbox's kernel counters."""
    from ..runtime.control import ControlError, call
    from ..runtime.status_view import render_status

    try:
        reply = call(_state(state_dir), "status", **({"plugin": plugin} if plugin is not None else {}))
    except ControlError as exc:
        _fail(str(exc))
    reply.pop("ok", None)
    if as_json:
        typer.echo(json.dumps(reply, indent=2))
    else:
        render_status(reply, kernel=plugin is not None)


@app.command()
def logs(
    plugin: str = typer.Argument(..., help="The plugin's id, as `precinct status` lists it."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until Ctrl-C."),
    lines: int = typer.Option(0, "--lines", "-n", min=0,
                              help="Only the last N lines of what is kept (0: all, at most 200)."),
    interval: float = typer.Option(0.5, "--interval", min=0.1, help="Seconds between polls with -f."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
    as_json: bool = typer.Option(False, "--json", help="JSON: one object; with -f, one object per line."),
) -> None:
    """A plugin's stdout and stderr, as the supervisor captured them.

    The supervisor keeps the last 200 lines per plugin (each cut to 500
    characters, control characters replaced) and drops output over the
    plugin's log rate; a hot reload starts a new log."""
    from ..runtime.logs_view import follow_logs, print_logs

    try:
        if follow:
            follow_logs(_state(state_dir), plugin, last=lines, interval=interval, as_json=as_json)
        else:
            print_logs(_state(state_dir), plugin, last=lines, as_json=as_json)
    except KeyboardInterrupt:
        pass


@app.command()
def say(
    text: str = typer.Argument(..., help="A line of chat, e.g. '!roll 2d6'."),
    user: str = typer.Option("console", "--user", help="Who says it."),
    channel: str = typer.Option("console", "--channel", help="Channel it is said in."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for an answer."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the dispatcher's outcome as JSON."),
) -> None:
    """Say one line in the console channel; for a !command, print the answer.

    `!help` lists the commands the fleet serves, `!help WORD` one command's
    subcommands. Exits 1 when no plugin owns the command, the plugin is not
    running, or no answer arrives in time; 3 when the plugin answered with an
    error, or the words fit none of the command's subcommands (its usage is
    printed).
    """
    import asyncio

    from ..runtime.chat import ChatClient, ChatError, read_endpoint

    async def go():
        client = ChatClient(read_endpoint(_state(state_dir)))
        await client.connect()
        try:
            return await client.say(text, user=user, channel=channel, timeout=timeout)
        finally:
            await client.close()

    try:
        outcome = asyncio.run(go())
    except ChatError as exc:
        _fail(str(exc))
    if outcome is None:
        return
    if as_json:
        typer.echo(json.dumps(outcome))
    status_ = outcome.get("status")
    if status_ == "ok":
        if not as_json:
            typer.echo(outcome.get("message", ""))
        return
    if not as_json:
        typer.echo(f"precinct: {outcome.get('message')}", err=True)
    raise typer.Exit(3 if status_ in ("error", "usage") else 1)


@app.command()
def console(
    user: str = typer.Option("console", "--user", help="Your name in chat."),
    channel: str = typer.Option("console", "--channel", help="Channel to talk in."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
) -> None:
    """An interactive chat with the bot: type lines, `!commands` reach their plugin. Ctrl-D quits."""
    import asyncio

    from ..runtime.chat import ChatClient, ChatError, read_endpoint

    async def go():
        client = ChatClient(read_endpoint(_state(state_dir)))

        def show(body: dict) -> None:
            who = body.get("plugin") or "bot"
            typer.echo(f"{who}> {body.get('message', '')}")

        client.on_message = show
        await client.connect()
        typer.echo(f"connected as {user} in #{channel}; type !commands or chat, Ctrl-D to quit")
        loop = asyncio.get_running_loop()
        try:
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    break
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                try:
                    outcome = await client.say(line, user=user, channel=channel)
                except ChatError as exc:
                    typer.echo(f"precinct: {exc}", err=True)
                    continue
                if outcome and outcome.get("status") != "ok":
                    typer.echo(f"precinct: {outcome.get('message')}", err=True)
        finally:
            await client.close()

    try:
        asyncio.run(go())
    except ChatError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass


@app.command()
def creds(
    account: str = typer.Argument("core", help="Whose credentials: only `core` is handed out."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
    as_json: bool = typer.Option(False, "--json", help='Print {"nats": URL, "creds": PATH}.'),
) -> None:
    """Print the NATS URL and the core credentials path, for connecting a real Rosey core (connector, DB service).

    The lines are `NATS_URL=...` and `NATS_CREDS=...`, so a shell can take
    both with `eval "$(precinct creds core)"`.
    """
    from ..runtime.chat import ChatError, read_endpoint

    if account != "core":
        _fail("only the core credentials are handed out; plugin credentials never leave their sandbox", 2)
    try:
        endpoint = read_endpoint(_state(state_dir))
    except ChatError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps({"nats": endpoint.nats, "creds": endpoint.core_creds}))
    else:
        typer.echo(f"NATS_URL={endpoint.nats}")
        typer.echo(f"NATS_CREDS={endpoint.core_creds}")


plugin_app = typer.Typer(help="Manage the plugins of a running `precinct up`.", no_args_is_help=True)
app.add_typer(plugin_app, name="plugin")

# Bundles, signatures, scanning, install/update/rollback/remove, and the index.
from .market import market_app, register_plugin_commands  # noqa: E402

register_plugin_commands(plugin_app)
app.add_typer(market_app, name="market")


@plugin_app.command("resume")
def plugin_resume(
    name: str = typer.Argument(..., help="The plugin's name or id, e.g. markov_plugin or markov-plugin "
                                         "(with --namespace: the BotPlugin's name)."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n",
                                            help="Kubernetes: resume the BotPlugin NAME in this namespace "
                                                 "(the cluster KUBECONFIG points at)."),
    wait: float = typer.Option(60.0, "--wait", min=0,
                               help="Kubernetes: seconds to wait for the operator to act (0: do not wait)."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
) -> None:
    """Start a plugin that was suspended for repeated violations, with a clean record.

    On a single host it asks the running supervisor. With --namespace it sets
    the BotPlugin's `precinct.dev/resume` annotation to a new value (never the
    spec) and waits until the operator has acted on it.

    Exits 1 when no supervisor (or no cluster) answers, the plugin is unknown,
    it is not suspended, or the operator did not act within --wait seconds.
    """
    if namespace is not None:
        from .kubernetes import resume_command

        raise typer.Exit(resume_command(namespace, name, wait=wait, as_json=as_json))
    from ..runtime.control import ControlError, call

    try:
        reply = call(_state(state_dir), "resume", plugin=name)
    except ControlError as exc:
        _fail(str(exc))
    reply.pop("ok", None)
    if as_json:
        typer.echo(json.dumps(reply))
    elif reply.get("started"):
        typer.echo(f"{reply['plugin']} resumed: starting")
    else:
        typer.echo(reply.get("message") or f"{reply['plugin']} resumed")


@app.command()
def render(
    path: Path = typer.Argument(..., help="A BotPlugin file, a plugin.yaml, or a plugin folder."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a YAML stream."),
    namespace: str = typer.Option("default", "--namespace", "-n", help="Namespace for a plugin.yaml (a BotPlugin names its own)."),
    runtime_class: Optional[str] = typer.Option(None, "--runtime-class", help="runtimeClassName for plugin Pods (an untrusted tier)."),
    settings_file: Optional[Path] = typer.Option(None, "--settings", help="The operator's settings (YAML), to render as a cluster would."),
) -> None:
    """Print exactly the objects the operator would create for one plugin (no cluster needed).

    A plugin.yaml is shown as the BotPlugin `precinct plugin install` would
    create: named after the plugin id, run from a bundle of its version.
    """
    from .kubernetes import render_command

    raise typer.Exit(render_command(path, as_json=as_json, namespace=namespace, runtime_class=runtime_class,
                                    settings_file=settings_file))


@app.command("operator")
def operator_command(
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="Watch this namespace (repeat for more)."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Watch BotPlugins in every namespace."),
    nats_url: Optional[str] = typer.Option(None, "--nats-url", help="NATS URL the operator pushes accounts to, "
                                           "and plugins connect to. [PRECINCT_NATS_URL]"),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="NATS keys and JWTs (a mounted Secret or "
                                             "PVC); required. [PRECINCT_OPERATOR_STATE]"),
    runtime_class: Optional[str] = typer.Option(None, "--runtime-class", help="runtimeClassName for plugin Pods."),
    runner_image: Optional[str] = typer.Option(None, "--runner-image", help="The generic runner image for bundles."),
    settings_file: Optional[Path] = typer.Option(None, "--settings", help="YAML: NATS/DNS/index peers, cluster "
                                                 "CIDRs, images (docs/operator.md). [PRECINCT_OPERATOR_SETTINGS]"),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Serve Prometheus /metrics on this "
                                               "port (docs/monitoring.md). [PRECINCT_OPERATOR_METRICS_PORT]"),
    liveness: Optional[str] = typer.Option(None, "--liveness", help="Serve kopf's health endpoint at this URL, "
                                           "e.g. http://0.0.0.0:8080/healthz: 200 when logged in and healthy (for "
                                           "the Pod's probes; docs/operator.md). [PRECINCT_OPERATOR_LIVENESS]"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail."),
) -> None:
    """Run the Kubernetes operator (kopf, standalone): BotPlugins -> confined Pods."""
    from ..settings import OperatorSettings, SettingsError
    from .kubernetes import operator_command as run_operator

    if bool(namespace) == all_namespaces:
        _fail("give --namespace NAME (repeatable) or --all-namespaces", 2)
    try:
        opts = OperatorSettings.load(nats_url=nats_url, operator_state=state_dir, operator_settings=settings_file,
                                     operator_metrics_port=metrics_port, operator_liveness=liveness)
    except SettingsError as exc:
        _fail(str(exc), 2)
    if opts.operator_state is None:
        _fail("--state-dir (or PRECINCT_OPERATOR_STATE) is required", 2)
    if opts.operator_liveness is not None and not opts.operator_liveness.startswith("http://"):
        _fail(f"--liveness must be an http:// URL (host, port and path), not {opts.operator_liveness!r}", 2)
    raise typer.Exit(run_operator(namespaces=namespace, nats_url=opts.nats_url, state_dir=opts.operator_state,
                                  runtime_class=runtime_class, runner_image=runner_image, verbose=verbose,
                                  settings_file=opts.operator_settings, metrics_port=opts.operator_metrics_port,
                                  liveness=opts.operator_liveness))


@app.command()
def dashboard(
    url: bool = typer.Option(False, "--url", help="Print the dashboard's URL (with its token) and exit."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
) -> None:
    """The running `precinct up`'s health dashboard: print its URL, or open it in a browser."""
    from ..runtime.dashboard import read_info

    try:
        info = read_info(_state(state_dir))
    except FileNotFoundError:
        _fail(f"no dashboard on {_state(state_dir)}: is `precinct up` running (without --no-dashboard)?")
    except (PermissionError, ValueError) as exc:
        _fail(f"cannot read the dashboard's address: {exc}")
    if not info.get("url"):
        _fail("the supervisor runs without a dashboard (--no-dashboard, or its port was taken: see its log)")
    if url:
        typer.echo(info["url"])
        return
    import webbrowser

    typer.echo(info["url"])
    webbrowser.open(info["url"])


@app.command()
def top(
    once: bool = typer.Option(False, "--once", help="Print one frame and exit."),
    interval: float = typer.Option(2.0, "--interval", min=0.2, help="Seconds between refreshes."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help=STATE_HELP),
) -> None:
    """A live view of every plugin: state, CPU and memory against limits, traffic, violations, restarts."""
    from ..runtime.control import ControlError
    from ..runtime.top_view import run_top

    try:
        run_top(_state(state_dir), once=once, interval=interval)
    except ControlError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass


def main() -> None:
    app()


if __name__ == "__main__":
    main()
