"""The ``jobmill`` command line: run the server, and submit, watch and steer jobs through it.

Client commands (this module) talk to a server over the native API (``--url``/``JOBMILL_URL``,
``--token``/``JOBMILL_API_TOKEN``, else the local credential); ``serve``, ``token`` and ``db``
(``cli/server.py``) work on this machine's configuration and database. Every failure is one
``error: ...`` line on stderr and a non-zero exit code: 1 when the server (or the database)
refuses or cannot be reached, 2 for a usage or start-up problem (bad arguments, a request the
server refuses as invalid: the kinds of ``domain.errors.KINDS``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.text import Text

from jobmill.cli import (
    filters,
    jobtypes,
    manager,
    pipeline,
    processes,
    render,
    runs,
    server,
    workflow,
)
from jobmill.cli.common import (
    TAIL_BYTES,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    fail,
    out,
    print_json,
)
from jobmill.cli.ids import resolve
from jobmill.client import TERMINAL_PHASES, Client, JobDict, JobmillClientError

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="jobmill: a job manager for scientific data pipelines.",
)
POLL = 0.5
BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off"})
rules_app = typer.Typer(no_args_is_help=True, help="Rules that create jobs (docs/triggers.md).")
app.add_typer(server.token_app, name="token")
app.add_typer(server.db_app, name="db")
app.add_typer(rules_app, name="rules")
app.add_typer(jobtypes.types_app, name="types")
render.flags_without_types()  # --wait, not --wait <bool>, in --help
app.command()(server.serve)
app.command()(processes.api)
app.command()(processes.engine)


@contextmanager
def connect(ctx: typer.Context, url: str | None, token: str | None) -> Iterator[Client]:
    """A client for the command's (or the global) URL and token; refusals become ``fail``."""
    obj = ctx.obj or {}
    try:
        with Client(url or obj.get("url"), token or obj.get("token")) as client:
            yield client
    except JobmillClientError as exc:
        if exc.code == "unreachable":  # say how to point the CLI at the right server
            fail(
                f"{exc}\n  is it running ('jobmill serve', 'make run')? For a server elsewhere "
                "or on another port: --url http://HOST:PORT or JOBMILL_URL=http://HOST:PORT"
            )
        fail(str(exc))  # the server (or the client) refused: 1, as for every refusal
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def scalar(raw: str) -> Any:
    """``"3"`` -> 3, ``"2.5"`` -> 2.5, anything else stays a string."""
    if re.fullmatch(r"[-+]?\d+", raw):
        return int(raw)
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", raw):
        return float(raw)
    return raw


def pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """``key=value`` arguments as a dict; a malformed or repeated one is a usage error."""
    result: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep and item.lower() in BOOLEAN_WORDS:
            fail(f"{what} '{item}' is not key=value: flags such as --wait take no value", 2)
        if not sep or not key:
            fail(f"{what} '{item}' is not key=value", 2)
        if key in result:
            fail(f"{what} '{key}' is given twice", 2)
        result[key] = value
    return result


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option("--url", envvar="JOBMILL_URL", help="jobmill URL for client commands."),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="JOBMILL_API_TOKEN", help="API token.")
    ] = None,
) -> None:
    """jobmill: a job manager for scientific data pipelines."""
    ctx.obj = {"url": url, "token": token}


# -- jobs --------------------------------------------------------------------------------------


@app.command()
def submit(
    ctx: typer.Context,
    jobtype: Annotated[str, typer.Argument(metavar="TYPE", help="Job type name.")],
    parameters: Annotated[
        list[str] | None, typer.Argument(metavar="KEY=VALUE", help="Parameters.")
    ] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Run id to record.")] = None,
    executor: Annotated[str | None, typer.Option("--executor", help="Executor name.")] = None,
    duration: Annotated[
        int | None, typer.Option("--duration", help="Maximum execution duration in seconds.")
    ] = None,
    tag: manager.TagOpt = None,
    after: workflow.AfterOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until the job ends.")] = False,
    abort_on_interrupt: Annotated[
        bool,
        typer.Option(
            "--abort-on-interrupt",
            help="With --wait: Ctrl-C aborts the job (otherwise it goes on running).",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Validate, print the script the executor would get; create nothing."
        ),
    ] = False,
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Submit a job and print its id (with --wait: exit 0 only if it COMPLETED)."""
    values = pairs(parameters, "parameter")
    if dry_run and wait:
        fail("--dry-run and --wait cannot be combined", 2)
    with connect(ctx, url, token) as jm:
        if dry_run:
            rendered = jm.render(
                jobtype, values, run_id=run_id, executor=executor, execution_duration=duration
            )
            if json_:
                print_json(rendered)
            else:
                typer.echo(f"# dry run: executor {rendered['executor']}; nothing was submitted")
                typer.echo(rendered["script"], nl=False)
            return
        job = jm.submit(
            jobtype, values, run_id=run_id, executor=executor, execution_duration=duration,
            tags=tag, after=[resolve(jm, a) for a in after or []],
        )  # fmt: skip
        if wait:
            try:
                job = jm.wait(job["id"], poll=POLL) if json_ else watch(jm, job)
            except KeyboardInterrupt:
                interrupted(jm, job["id"], abort_on_interrupt)
    if json_:
        print_json(job)
    elif not wait:
        typer.echo(job["id"])
    if wait:
        raise typer.Exit(0 if job["phase"] == "COMPLETED" else 1)


def interrupted(jm: Client, job_id: str, abort: bool) -> None:
    """Ctrl-C while waiting: abort the job (``--abort-on-interrupt``), or say that it goes on
    running and how to follow or abort it. Exit 130 either way."""
    if abort:
        job = jm.abort(job_id)
        typer.echo(f"interrupted: job {job_id} aborted ({job['phase']})", err=True)
    else:
        try:
            phase = jm.get(job_id)["phase"]
        except (JobmillClientError, KeyboardInterrupt):
            phase = "running"
        if phase in TERMINAL_PHASES:
            typer.echo(f"interrupted: job {job_id} has ended meanwhile ({phase})", err=True)
            raise typer.Exit(130)
        typer.echo(
            f"interrupted: job {job_id} is still {phase} on the server.\n"
            f"  follow it: jobmill show {job_id}   (or: jobmill logs -f {job_id})\n"
            f"  abort it:  jobmill abort {job_id}",
            err=True,
        )
    raise typer.Exit(130)


def watch(jm: Client, job: JobDict) -> JobDict:
    """Follow a job to its end: a live display on a terminal, one line per phase otherwise."""
    if out.is_terminal:
        with Live(render.progress(job), console=out, transient=True) as live:
            job = jm.wait(job["id"], poll=POLL, on_update=lambda j: live.update(render.progress(j)))
    else:
        seen: list[str] = []

        def line(current: JobDict) -> None:
            if current["phase"] not in seen and current["phase"] not in TERMINAL_PHASES:
                seen.append(current["phase"])
                out.print(Text.assemble(current["id"], " ", render.phase(current)))

        line(job)
        job = jm.wait(job["id"], poll=POLL, on_update=line)
    summary = Text.assemble(job["id"], " ", render.phase(job))
    if job.get("exit_code") is not None:
        summary.append(f" exit code {job['exit_code']}")
    if job.get("error") and job["error"] != f"exit code {job.get('exit_code')}":
        summary.append(f": {job['error']}", style="red")
    counters = render.counters_table(job.get("report") or {})
    out.print(Group(summary, counters) if counters is not None else summary)
    return job


@app.command("ls")
def list_jobs(
    ctx: typer.Context,
    terms: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[FILTER]...",
            help="brownthrower's filters: status!=DONE name=add2 id>10 tag=calib "
            "(docs/workflows.md).",
        ),
    ] = None,
    phase: Annotated[list[str] | None, typer.Option("--phase", help="Phase (repeatable).")] = None,
    jobtype: Annotated[str | None, typer.Option("--type", help="Job type.")] = None,
    owner: Annotated[str | None, typer.Option("--owner")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List jobs, newest first (FILTER terms combine with AND)."""
    try:
        query = filters.parse(terms or [])
    except filters.FilterError as exc:
        fail(f"filter {exc}", 2)
    base: dict[str, Any] = {"type": jobtype, "owner": owner, "run_id": run_id}
    if phase:
        base["phase"] = [p.upper() for p in phase]
    with connect(ctx, url, token) as jm:
        jobs, more = manager.matching(
            jm, query, limit, **{k: v for k, v in base.items() if v is not None}
        )
    if json_:
        print_json(jobs)
        return
    if not jobs:
        typer.echo("no jobs", err=True)
        return
    out.print(render.jobs_table(jobs, out.width))
    if more:
        typer.echo(f"(only the newest {limit}; use --limit for more)", err=True)


@app.command()
def show(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    events: Annotated[int, typer.Option("--events", help="How many recent events.")] = 20,
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show a job's details and its recent events."""
    with connect(ctx, url, token) as jm:
        job_id = resolve(jm, job_id)
        job = jm.get(job_id)
        history = jm.events(job_id)
    if json_:
        print_json({**job, "events": history})
        return
    out.print(render.job_details(job))
    if events > 0 and history:
        out.print()
        out.print(render.events_table(history[-events:]))


@app.command()
def logs(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    stderr: Annotated[bool, typer.Option("--stderr", help="Show stderr, not stdout.")] = False,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep reading until the job ends.")
    ] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", min=0, help="Start with the last N lines.")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print a job's stdout (or stderr); with -f, follow it until the job ends."""
    stream = "stderr" if stderr else "stdout"
    with connect(ctx, url, token) as jm:
        job_id = resolve(jm, job_id)
        offset = 0
        if tail is not None:
            chunk = jm.log(job_id, stream, tail=TAIL_BYTES)
            write(b"".join(chunk.data.splitlines(keepends=True)[-tail:]) if tail else b"")
            offset = chunk.next_offset
        done = not follow
        while True:
            chunk = jm.log(job_id, stream, offset=offset)
            write(chunk.data)
            offset = chunk.next_offset
            if chunk.data:
                continue
            if done:
                break
            if jm.get(job_id)["phase"] in TERMINAL_PHASES:
                done = True  # one more read: whatever was written just before the end
            else:
                time.sleep(POLL)
    if not chunk.exists:
        typer.echo(f"(job {job_id} has no {stream} yet)", err=True)


def write(data: bytes) -> None:
    if data:
        typer.echo(data, nl=False)


def _phase_command(name: str, doc: str, call: Callable[[Client, str], JobDict]) -> None:
    """Register ``jobmill <name> ID``: one call that changes a job's phase, then its new phase."""

    def command(
        ctx: typer.Context,
        job_id: Annotated[str, typer.Argument(metavar="ID")],
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        with connect(ctx, url, token) as jm:
            job = call(jm, resolve(jm, job_id))
        typer.echo(f"{job['id']} {job['phase']}")

    command.__doc__ = doc
    app.command(name=name)(command)


_phase_command("abort", "Abort a job (a running one is terminated).", Client.abort)
_phase_command("hold", "Hold a QUEUED job: it does not start until released.", Client.hold)
_phase_command("release", "Release a HELD job (back to QUEUED).", Client.release)


@app.command()
def details(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print what the job's backend says about it (scontrol show job, condor_q -l, bjobs -l)."""
    with connect(ctx, url, token) as jm:
        answer = jm.details(resolve(jm, job_id))
    if json_:
        print_json(answer)
        return
    text = answer["details"]
    typer.echo(text if text.endswith("\n") else text + "\n", nl=False)


@app.command()
def results(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List a job's result files (name, size, content type)."""
    with connect(ctx, url, token) as jm:
        job_id = resolve(jm, job_id)
        found = jm.results(job_id)
    if json_:
        print_json(found)
        return
    if not found:
        typer.echo(f"(job {job_id} has no results)", err=True)
    for result in found:
        typer.echo(f"{result['id']}\t{result['size']}\t{result['content_type']}")


@app.command()
def get(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    names: Annotated[
        list[str] | None, typer.Argument(metavar="[NAME]...", help="Results (default: all).")
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="Directory to write them to.")
    ] = ".",
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Download a job's result files into a directory."""
    with connect(ctx, url, token) as jm:
        job_id = resolve(jm, job_id)
        wanted = names or [r["id"] for r in jm.results(job_id)]
        if not wanted:
            fail(f"job {job_id} has no results")
        for name in wanted:
            typer.echo(jm.download(job_id, name, output))


@app.command("rm")
def remove(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Delete a job, its events and its files (a running job is aborted first)."""
    with connect(ctx, url, token) as jm:
        job_id = resolve(jm, job_id)
        jm.delete(job_id)
    typer.echo(f"{job_id} deleted")


@rules_app.command("list")
def rules_list(
    ctx: typer.Context, json_: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None
) -> None:
    """List the rules: name, kind, what fires them, the job type they create, on or off."""
    with connect(ctx, url, token) as jm:
        rules = jm.rules()
    if json_:
        print_json(rules)
        return
    from rich.table import Table

    table = Table("NAME", "KIND", "WHEN", "CREATES", "ENABLED", "SOURCE", box=None)
    for rule in rules:
        definition = rule["definition"]
        when = str(definition.get(rule["kind"], ""))
        table.add_row(
            rule["name"],
            rule["kind"],
            when,
            definition.get("create", ""),
            "yes" if rule["enabled"] else "no",
            rule["origin"],
        )
    out.print(table)


@rules_app.command("show")
def rules_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The rule's name.")],
    firings: Annotated[int, typer.Option("--firings", help="How many firings to show.")] = 10,
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show one rule and its latest firings."""
    with connect(ctx, url, token) as jm:
        rule = jm.rule(name)
        latest = jm.rule_firings(name, limit=max(1, firings))
    if json_:
        print_json({"rule": rule, "firings": latest})
        return
    typer.echo(json.dumps(rule["definition"], indent=2))
    typer.echo(f"enabled: {'yes' if rule['enabled'] else 'no'}   source: {rule['origin']}")
    for firing in latest:
        outcome = firing["job_id"] or f"error: {firing['error']}"
        typer.echo(f"{firing['fired_at']}  {firing['key']}  {outcome}")


def _switch_rule(name: str, on: bool) -> None:
    verb = "enable" if on else "disable"

    @rules_app.command(verb)
    def command(
        ctx: typer.Context,
        rule: Annotated[str, typer.Argument(metavar="NAME", help="The rule's name.")],
        url: UrlOpt = None,
        token: TokenOpt = None,
    ) -> None:
        with connect(ctx, url, token) as jm:
            answer = jm.enable_rule(rule) if on else jm.disable_rule(rule)
        state = "enabled" if answer.get("enabled") else "disabled"
        typer.echo(f"rule {rule}: {state}")

    command.__doc__ = f"{verb.capitalize()} a rule (administrators only)."


_switch_rule("enable", True)
_switch_rule("disable", False)


manager.register(app, connect)  # create, run, edit, reset, clone, remove, tags, tasks
runs.register(app, connect)  # runs start|end EXPERIMENT RUN (ARP)
pipeline.register(app, connect)  # event ID NAME (PipelineJobs)
workflow.register(app, connect)  # link, unlink, graph (docs/workflows.md)

# -- inside a job ------------------------------------------------------------------------------

COLOUR_RE = re.compile(r"^(?P<value>.*):(?P<colour>[A-Za-z_]+|#[0-9A-Fa-f]{6})$")


def counter_value(raw: str) -> Any:
    """``VALUE`` (a number if it looks like one) or ``VALUE:colour`` -> ``[value, colour]``."""
    match = COLOUR_RE.match(raw)
    if match:
        return [scalar(match["value"]), match["colour"]]
    return scalar(raw)


@app.command()
def report(
    counter: Annotated[
        list[str] | None, typer.Option("--counter", "-c", help="NAME=VALUE or NAME=VALUE:colour.")
    ] = None,
    fields: Annotated[
        list[str] | None, typer.Option("--set", help="key=value: a top-level report field.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the merged report.")] = False,
) -> None:
    """Report progress from inside a job (uses JOBMILL_REPORT_URL and JOBMILL_TOKEN)."""
    counters = {k: counter_value(v) for k, v in pairs(counter, "counter").items()}
    extra = {k: scalar(v) for k, v in pairs(fields, "field").items()}
    if "counters" in extra:
        fail("use --counter NAME=VALUE for counters, not --set counters=...", 2)
    if not counters and not extra:
        fail("nothing to report: give --counter NAME=VALUE or --set key=value", 2)
    try:
        with Client() as client:
            merged = client.report(counters or None, **extra)
    except JobmillClientError as exc:
        fail(str(exc))  # the server (or the client) refused: 1, as for every refusal
    if json_:
        print_json(merged)


@app.command()
def version() -> None:
    """Print the version."""
    from jobmill import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
