"""``jobmill runs start|end EXPERIMENT RUN``: what a DAQ or an eLog calls when a run of an
experiment starts or ends (the ARP face's ``runs/{run}/start`` and ``end``; docs/triggers.md,
"Experiments and autorun (ARP)"). Ending a run applies every autorun definition to it; the
command prints the jobs that made. Both are safe to repeat: the first start and end count.

``register(app, connect)`` adds the ``runs`` group to the ``jobmill`` app.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated, Any

import typer

from jobmill.cli.common import JsonOpt, TokenOpt, UrlOpt, fail, print_json
from jobmill.client import Client

Connect = Callable[[typer.Context, str | None, str | None], AbstractContextManager[Client]]

ExperimentArg = Annotated[
    str, typer.Argument(metavar="EXPERIMENT", help="The experiment's name, or its numeric id.")
]
RunArg = Annotated[int, typer.Argument(metavar="RUN", min=0, help="The run number.")]
ParamsArg = Annotated[
    list[str] | None,
    typer.Argument(metavar="KEY=VALUE", help="Run parameters to record with it."),
]

runs_app = typer.Typer(
    no_args_is_help=True,
    help="Tell jobmill a run started or ended (ARP; for a DAQ or an eLog).",
)


def run_parameters(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` arguments; a value that looks like a number is one."""
    parameters: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"run parameter '{item}' is not key=value", 2)
        if key in parameters:
            fail(f"run parameter '{key}' is given twice", 2)
        if re.fullmatch(r"[-+]?\d+", value):
            parameters[key] = int(value)
        elif re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?", value):
            parameters[key] = float(value)
        else:
            parameters[key] = value
    return parameters


def register(app: typer.Typer, connect: Connect) -> None:
    """Add ``jobmill runs start`` and ``jobmill runs end``."""

    @runs_app.command("start")
    def start(
        ctx: typer.Context,
        experiment: ExperimentArg,
        run: RunArg,
        parameters: ParamsArg = None,
        url: UrlOpt = None,
        token: TokenOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """A run started (the first start counts; repeating it only adds parameters)."""
        values = run_parameters(parameters)
        with connect(ctx, url, token) as jm:
            answer = jm.run_start(experiment, run, values)
        if as_json:
            print_json(answer)
            return
        typer.echo(f"run {answer['experiment']}/{answer['run']} started {answer['started_at']}")

    @runs_app.command("end")
    def end(
        ctx: typer.Context,
        experiment: ExperimentArg,
        run: RunArg,
        parameters: ParamsArg = None,
        url: UrlOpt = None,
        token: TokenOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """A run ended: every autorun definition gets its job for it (exactly once)."""
        values = run_parameters(parameters)
        with connect(ctx, url, token) as jm:
            answer = jm.run_end(experiment, run, values)
        if as_json:
            print_json(answer)
            return
        ended = answer.get("run") or {}
        jobs = answer.get("jobs") or []
        typer.echo(
            f"run {ended.get('experiment', experiment)}/{ended.get('run', run)} ended "
            f"{ended.get('ended_at')}: {len(jobs)} job(s)"
        )
        for job in jobs:
            typer.echo(f"  {job['job_id']}  {job['hash']}  {job['status']}")
        for error in answer.get("errors") or []:
            typer.echo(f"  {error['definition']}: error: {error['error']}", err=True)

    app.add_typer(runs_app, name="runs")
