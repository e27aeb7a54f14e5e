"""brownthrower's manager verbs in ``jobmill``: ``create``, ``run``, ``edit``, ``reset``,
``clone``, ``remove``, ``tags`` and ``tasks`` (docs/workflows.md has the side-by-side table),
and the filter grammar of ``jobmill ls`` (``cli/filters.py``).

``register(app, connect)`` adds the commands to the ``jobmill`` app; ``matching`` is what ``ls``
lists for a parsed filter. Every change a command makes is checked on the server against the
job's ``version`` as the command read it: a job changed by somebody else meanwhile is a 409
(``error: job ... changed since it was read``), never a silent overwrite.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated, Any

import typer

from jobmill.cli import jobtypes
from jobmill.cli.common import JsonOpt, TokenOpt, UrlOpt, fail, out, print_json
from jobmill.cli.filters import Query
from jobmill.cli.ids import resolve
from jobmill.client import Client, JobList

Connect = Callable[[typer.Context, str | None, str | None], AbstractContextManager[Client]]

MAX_SCANNED_PAGES = 20
"""``ls`` with client-side checks reads at most this many pages of 1000 jobs."""

TagOpt = Annotated[
    list[str] | None, typer.Option("--tag", help="Tag the job (repeatable; docs/workflows.md).")
]
ParamsArg = Annotated[list[str] | None, typer.Argument(metavar="KEY=VALUE", help="Parameters.")]
IdArg = Annotated[str, typer.Argument(metavar="ID", help="Job id, or its first characters.")]


def pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """``key=value`` arguments as a dict; a malformed or repeated one is a usage error."""
    result: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{what} '{item}' is not key=value", 2)
        if key in result:
            fail(f"{what} '{key}' is given twice", 2)
        result[key] = value
    return result


def matching(jm: Client, query: Query, limit: int, **base: Any) -> tuple[JobList, bool]:
    """The newest ``limit`` jobs matching ``query`` (and ``base``, ``Client.list`` filters),
    and whether more match. What the server can filter it filters; the client's checks read
    on through further pages (at most ``MAX_SCANNED_PAGES``) so that a page is never short."""
    server = query.server()
    if "phase" in base and "phase" in server:  # --phase and status=...: both hold
        server["phase"] = [p for p in server["phase"] if p in base["phase"]]
        if not server["phase"]:
            return [], False
    if query.empty:
        return [], False
    params = {**base, **server}
    if not query.checks:
        page = jm.list(limit=limit, **params)
        return page.jobs, page.next_cursor is not None
    found: JobList = []
    cursor = None
    for _ in range(MAX_SCANNED_PAGES):
        page = jm.list(limit=1000, cursor=cursor, **params)
        found.extend(job for job in page.jobs if query.matches(job))
        if len(found) > limit:
            return found[:limit], True
        cursor = page.next_cursor
        if cursor is None:
            return found, False
    return found[:limit], True


def register(app: typer.Typer, connect: Connect) -> None:
    """Add the manager's verbs to ``app``."""
    app.add_typer(
        jobtypes.types_app, name="tasks", help="The job types (brownthrower's task list)."
    )

    @app.command()
    def create(
        ctx: typer.Context,
        jobtype: Annotated[str, typer.Argument(metavar="TYPE", help="Job type name.")],
        parameters: ParamsArg = None,
        tag: TagOpt = None,
        run_id: Annotated[str | None, typer.Option("--run-id", help="Run id to record.")] = None,
        executor: Annotated[str | None, typer.Option("--executor", help="Executor name.")] = None,
        json_: JsonOpt = False,
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """Create a PENDING job (brownthrower's STASHED): edit it, then queue it with run."""
        values = pairs(parameters, "parameter")
        with connect(ctx, url, token) as jm:
            job = jm.submit(
                jobtype, values, run_id=run_id, executor=executor, phase="PENDING", tags=tag
            )
        if json_:
            print_json(job)
        else:
            typer.echo(job["id"])

    @app.command()
    def run(ctx: typer.Context, job_id: IdArg, url: UrlOpt = None, token: TokenOpt = None) -> None:
        """Queue a PENDING job (brownthrower's job submit ID); a HELD one is released."""
        with connect(ctx, url, token) as jm:
            job = jm.run(resolve(jm, job_id))
        typer.echo(f"{job['id']} {job['phase']}")

    @app.command()
    def edit(
        ctx: typer.Context,
        job_id: IdArg,
        parameters: ParamsArg = None,
        version: Annotated[
            int | None,
            typer.Option("--version", min=0, help="Only if the job is still at this version."),
        ] = None,
        json_: JsonOpt = False,
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """Change parameters of a PENDING job, only if nobody changed it since it was read."""
        values = pairs(parameters, "parameter")
        if not values:
            fail("nothing to change: give KEY=VALUE", 2)
        with connect(ctx, url, token) as jm:
            full = resolve(jm, job_id)
            seen = version if version is not None else int(jm.get(full)["version"])
            job = jm.edit(full, values, version=seen)
        if json_:
            print_json(job)
        else:
            typer.echo(f"{job['id']} edited (version {job['version']})")

    @app.command()
    def reset(
        ctx: typer.Context, job_id: IdArg, url: UrlOpt = None, token: TokenOpt = None
    ) -> None:
        """Put a job in ERROR or ABORTED back to PENDING (its history stays in its events)."""
        with connect(ctx, url, token) as jm:
            job = jm.reset(resolve(jm, job_id))
        typer.echo(f"{job['id']} {job['phase']}")

    @app.command()
    def clone(
        ctx: typer.Context,
        job_id: IdArg,
        run_now: Annotated[bool, typer.Option("--run", help="Queue the copy at once.")] = False,
        json_: JsonOpt = False,
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """Copy a job (type, parameters, tags) into a new PENDING job, or a queued one."""
        with connect(ctx, url, token) as jm:
            job = jm.clone(resolve(jm, job_id), phase="QUEUED" if run_now else "PENDING")
        if json_:
            print_json(job)
        else:
            typer.echo(job["id"])

    @app.command("remove")
    def remove(
        ctx: typer.Context, job_id: IdArg, url: UrlOpt = None, token: TokenOpt = None
    ) -> None:
        """Delete a job, its events and its files (the same as rm)."""
        with connect(ctx, url, token) as jm:
            full = resolve(jm, job_id)
            jm.delete(full)
        typer.echo(f"{full} deleted")

    @app.command()
    def tags(
        ctx: typer.Context,
        job_id: IdArg,
        action: Annotated[
            str | None, typer.Argument(metavar="[add|remove]", help="Add or remove tags.")
        ] = None,
        names: Annotated[list[str] | None, typer.Argument(metavar="[TAG]...")] = None,
        json_: JsonOpt = False,
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        """List a job's tags, or add or remove some (jobmill ls tag=NAME lists tagged jobs)."""
        if action is not None and action not in ("add", "remove"):
            fail(f"'{action}': say add or remove", 2)
        if action is not None and not names:
            fail(f"give the tags to {action}", 2)
        with connect(ctx, url, token) as jm:
            full = resolve(jm, job_id)
            if action is None:
                current = list(jm.tags(full))
            else:
                current = []
                for name in names or []:
                    call = jm.add_tag if action == "add" else jm.remove_tag
                    current = list(call(full, name)["tags"])
        if json_:
            print_json(current)
        elif current:
            out.print("\n".join(current), markup=False, highlight=False)
        else:
            typer.echo(f"(job {full} has no tags)", err=True)
