"""``jobmill event ID NAME [--data JSON]``: send a PipelineJobs event to a job (an operator's
validate, validated, finalize, reject, retire; an administrator's reset and ready; see
docs/pipelinejobs.md). ``jobmill show`` shows a PipelineJob's state. ``jobmill job-token ID
[--revoke]``: issue a PipelineJob a new update token (the old one stops working), or revoke it.

``register(app, connect)`` adds the commands to the ``jobmill`` app.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated, Any

import typer

from jobmill.cli.common import JsonOpt, TokenOpt, UrlOpt, fail, print_json
from jobmill.cli.ids import resolve
from jobmill.client import Client

Connect = Callable[[typer.Context, str | None, str | None], AbstractContextManager[Client]]


def parse_data(raw: str | None) -> dict[str, Any] | None:
    """``--data``: a JSON object, or None when not given."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        fail(f"--data is not JSON: {exc}", 2)
    if not isinstance(value, dict):
        fail("--data must be a JSON object", 2)
    return value


def job_token(jm: Client, job_id: str, *, revoke: bool = False) -> dict[str, Any]:
    """``POST`` (a new update token) or ``DELETE`` (revoke it) ``/pipelinejobs/{id}/token``."""
    return jm.pipeline_token(job_id, revoke=revoke)


def register(app: typer.Typer, connect: Connect) -> None:
    """Add ``jobmill event`` and ``jobmill job-token``."""

    @app.command("job-token")
    def rotate(
        ctx: typer.Context,
        job_id: Annotated[str, typer.Argument(metavar="ID", help="The job (or an id prefix).")],
        revoke: Annotated[
            bool,
            typer.Option(
                "--revoke", help="Revoke the token: events then need a bearer token or a nonce."
            ),
        ] = False,
        url: UrlOpt = None,
        token: TokenOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Issue a PipelineJob a new update token and callback URL (the old ones stop working
        at once), or --revoke it. The job's owner or an administrator."""
        with connect(ctx, url, token) as jm:
            job_id = resolve(jm, job_id)
            answer = job_token(jm, job_id, revoke=revoke)
        if as_json:
            print_json(answer)
        elif revoke:
            typer.echo(f"{answer['uuid']}  update token revoked")
        else:
            typer.echo(f"{answer['uuid']}  token {answer['token']}")
            typer.echo(f"callback {answer['callback']}")

    @app.command("event")
    def event(
        ctx: typer.Context,
        job_id: Annotated[str, typer.Argument(metavar="ID", help="The job (or an id prefix).")],
        name: Annotated[
            str, typer.Argument(metavar="NAME", help="validate, validated, finalize, reject...")
        ],
        data: Annotated[
            str | None, typer.Option("--data", help="The event's data, a JSON object.")
        ] = None,
        job_token: Annotated[
            str | None, typer.Option("--job-token", help="The job's update token.")
        ] = None,
        event_id: Annotated[
            str | None,
            typer.Option("--event-id", help="Names this delivery: repeated, it counts once."),
        ] = None,
        url: UrlOpt = None,
        token: TokenOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Send a PipelineJobs event to a job; prints its new state."""
        values = parse_data(data)
        with connect(ctx, url, token) as jm:
            job_id = resolve(jm, job_id)
            answer = jm.pipeline_event(job_id, name, values, token=job_token, event_id=event_id)
        if as_json:
            print_json(answer)
            return
        again = " (already recorded)" if answer.get("duplicate") else ""
        typer.echo(f"{answer['uuid']}  {answer['event']['name']} -> {answer['state']}{again}")
