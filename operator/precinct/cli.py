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

from . import __version__

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
    claimant of a command or namespace is rejected, as the runtimes would.
    """
    from .plan.fleet import check_fleet

    report = check_fleet(paths)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            typer.echo(str(problem), err=False)
        if not report.problems:
            typer.echo(f"{len(report.plugins)} plugin(s) valid: " + ", ".join(p.id for p in report.plugins))
    raise typer.Exit(0 if not report.problems else 1)


@app.command()
def plan(
    paths: list[Path] = typer.Argument(..., help="Plugin folders, manifests, or a folder of plugins."),
    as_json: bool = typer.Option(False, "--json", help="Print the full plans as JSON."),
) -> None:
    """Print the sandbox plan each plugin compiles to: NATS edges, limits, fence, rates."""
    from .plan.fleet import check_fleet
    from .plan.render_text import describe_plan

    report = check_fleet(paths)
    for problem in report.problems:
        typer.echo(str(problem), err=True)
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
    from .k8s.crd import crd_yaml

    text = crd_yaml()
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
