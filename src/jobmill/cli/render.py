"""Rich renderings of jobs, events and job types for the CLI.

Every value that comes from a job or a user goes into a ``Text`` (never markup), so a run id
such as ``[bold]`` prints as itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

STARTING_GRACE = 10.0
"""Seconds a job ready to run is shown as ``starting`` rather than waiting for a slot."""
PHASE_STYLES = {
    "PENDING": "cyan",
    "QUEUED": "blue",
    "EXECUTING": "yellow",
    "COMPLETED": "green",
    "ERROR": "red",
    "ABORTED": "magenta",
    "UNKNOWN": "red",
    "HELD": "cyan",
    "SUSPENDED": "cyan",
    "ARCHIVED": "dim",
}


def text(value: Any, style: str = "") -> Text:
    """A cell: ``None`` as a dim dash, containers as compact JSON-ish text, never markup."""
    if value is None or value == "":
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no", style=style)
    return Text(str(value), style=style)


def reason_shown(job: Mapping[str, Any], now: datetime | None = None) -> str | None:
    """The reason a queued job waits, in words: ``capacity`` (the stored reason of every job
    ready to run) reads as ``starting`` for its first ``STARTING_GRACE`` seconds, as the engine
    takes a job at once when a slot is free; only after that is a slot known to be short."""
    reason = job.get("reason")
    if job.get("phase") != "QUEUED" or reason != "capacity":
        return str(reason) if reason else None
    created = _instant(job.get("created"))
    age = ((now or datetime.now(UTC)) - created).total_seconds() if created else None
    if age is not None and age < STARTING_GRACE:
        return "starting"
    return "waiting for a free slot"


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def phase(job: Mapping[str, Any], now: datetime | None = None) -> Text:
    """``PHASE`` in its colour, with the reason a queued job waits (``reason_shown``)."""
    result = Text(job["phase"], style=PHASE_STYLES.get(job["phase"], ""))
    reason = reason_shown(job, now)
    if reason:
        result.append(f" ({reason})", style="dim")
    return result


def flags_without_types() -> None:
    """Show on/off options as bare flags in ``--help`` (``--wait``), not as ``--wait <bool>``,
    which reads as if they took a value. Typer's rich help gives every option a type column."""
    from typer.core import TyperOption

    original = TyperOption.display_type_rich
    if getattr(original, "jobmill_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if self.is_flag:
            return None
        return original(self, ctx)

    display_type_rich.jobmill_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def short_time(value: str | None) -> Text:
    """``2025-01-02T03:04:05.678Z`` as ``2025-01-02 03:04:05``."""
    return text(value[:19].replace("T", " ") if value else None)


def counter(value: Any) -> Text:
    """An ARP counter: a plain value, or ``[value, colour]``."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], str):
        return Text(str(value[0]), style=_colour(value[1]))
    return text(value)


def _colour(name: str) -> str:
    from rich.color import Color, ColorParseError

    try:
        Color.parse(name)
    except ColorParseError:
        return ""
    return name


def jobs_table(jobs: Iterable[Mapping[str, Any]], width: int = 200) -> Table:
    """One row per job; below 110 columns only id, type, phase and a short creation time."""
    wide = width >= 110
    table = Table(box=None, pad_edge=False, header_style="bold")
    if wide:
        table.add_column("#", justify="right", no_wrap=True)  # ``jobmill ls id>10``
    table.add_column("ID", no_wrap=True)
    table.add_column("TYPE", no_wrap=True)
    table.add_column("PHASE", min_width=9)
    if wide:
        table.add_column("RUN ID", overflow="fold")
        table.add_column("OWNER", overflow="fold")
    table.add_column("CREATED", no_wrap=True)
    if wide:
        table.add_column("EXIT", justify="right")
        table.add_column("TAGS", overflow="fold")
    for job in jobs:
        created = short_time(job.get("created"))
        if wide:
            table.add_row(
                text(job.get("seq")),
                text(job["id"]),
                text(job["type"]),
                phase(job),
                text(job.get("run_id")),
                text(job.get("owner")),
                created,
                text(job.get("exit_code")),
                text(",".join(job.get("tags") or []) or None),
            )
        else:
            table.add_row(text(job["id"]), text(job["type"]), phase(job), created[5:16])
    return table


def counters_table(report: Mapping[str, Any]) -> Table | None:
    """The report's counters and other fields, or ``None`` when it is empty."""
    rows: list[tuple[str, Text]] = []
    for name, value in (report.get("counters") or {}).items():
        rows.append((str(name), counter(value)))
    for name, value in report.items():
        if name != "counters":
            rows.append((str(name), counter(value)))
    if not rows:
        return None
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(Text(name), value)
    return table


def job_details(job: Mapping[str, Any]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    fields: list[tuple[str, RenderableType]] = [
        ("id", text(job["id"])),
        ("type", text(job["type"])),
        ("phase", phase(job)),
        ("owner", text(job.get("owner"))),
        ("run id", text(job.get("run_id"))),
        ("executor", text(f"{job.get('executor')} {job.get('native_id') or ''}".strip())),
        ("created", text(job.get("created"))),
        ("started", text(job.get("started"))),
        ("ended", text(job.get("ended"))),
        ("exit code", text(job.get("exit_code"))),
        ("error", text(job.get("error"), style="red")),
        (
            "max duration",
            text(f"{job['execution_duration']} s" if job.get("execution_duration") else None),
        ),
        ("destruction", text(job.get("destruction"))),
        ("parent", text(job.get("parent"))),
        ("log dir", text(job.get("log_dir"))),
        ("tags", text(", ".join(job.get("tags") or []) or None)),
        ("sequence", text(job.get("seq"))),
        ("version", text(job.get("version"))),
        ("pipeline", text(pipeline_state(job.get("pipeline")))),  # a PipelineJob's state
    ]
    for key in ("after", "dependents", "children"):  # the job's links, when it has some
        linked = job.get(key)
        if linked:
            ids = [x if isinstance(x, str) else str(x.get("id", x)) for x in linked]
            fields.append((key, text(", ".join(ids))))
    params = {**job.get("parameters", {}), **job.get("extra_parameters", {})}
    if params:
        fields.append(("parameters", Text("")))
        fields.extend((f"  {name}", text(value)) for name, value in params.items())
    report = counters_table(job.get("report") or {})
    if report is not None:
        fields.append(("report", report))
    for name, value in fields:
        table.add_row(Text(name), value)
    return table


def pipeline_state(pipeline: Mapping[str, Any] | None) -> str | None:
    """A PipelineJob's state and last event (docs/pipelinejobs.md), or None."""
    if not pipeline:
        return None
    return f"{pipeline.get('state')} (last event {pipeline.get('last_event')})"


def events_table(events: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("AT", no_wrap=True)
    table.add_column("EVENT")
    table.add_column("PHASE")
    table.add_column("ACTOR")
    table.add_column("DATA")
    for event in events:
        change = ""
        if event.get("to_phase"):
            change = f"{event.get('from_phase') or '-'} -> {event['to_phase']}"
        data = event.get("data") or {}
        table.add_row(
            text(event["n"]),
            short_time(event.get("at")),
            text(event["name"]),
            text(change),
            text(event.get("actor")),
            text(", ".join(f"{k}={v}" for k, v in data.items())),
        )
    return table


def tokens_table(tokens: Iterable[Mapping[str, Any]]) -> Table:
    """User tokens as ``jobmill token list`` shows them (never their secrets)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("ID", "USER", "ADMIN", "STATE", "CREATED", "EXPIRES", "LAST USED", "NOTE"):
        table.add_column(name, no_wrap=name != "NOTE")
    for t in tokens:
        table.add_row(
            text(t["id"]),
            text(t["user"]),
            text("yes" if t["admin"] else ""),
            text(t["state"], "green" if t["state"] == "active" else "red"),
            short_time(t["created_at"]),
            short_time(t["expires_at"]),
            short_time(t["last_used_at"]),
            text(t["note"]),
        )
    return table


def jobtypes_table(types: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("NAME", no_wrap=True)
    table.add_column("VERSION")
    table.add_column("EXECUTOR")
    table.add_column("PARAMETERS")
    table.add_column("DESCRIPTION")
    for jt in types:
        params = ", ".join(
            p["name"] + ("*" if p.get("required") else "") for p in jt.get("parameters", [])
        )
        table.add_row(
            text(jt["name"]),
            text(jt.get("version")),
            text(jt.get("executor")),
            text(params),
            text(jt.get("description")),
        )
    return table


def parameters_table(jobtype: Mapping[str, Any]) -> Table:
    title = f"{jobtype['name']} {jobtype.get('version', '')}: {jobtype.get('description', '')}"
    table = Table(
        title=Text(title),
        title_justify="left",
        box=None,
        pad_edge=False,
        header_style="bold",
    )
    for column in (
        "PARAMETER",
        "TYPE",
        "REQUIRED",
        "DEFAULT",
        "ALLOWED",
        "UNIT",
        "DELIVERY",
        "DESCRIPTION",
    ):
        table.add_column(column)
    for p in jobtype.get("parameters", []):
        if p.get("options"):
            allowed = ", ".join(str(o) for o in p["options"])
        elif p.get("min") is not None or p.get("max") is not None:
            allowed = f"{_num(p.get('min'))} .. {_num(p.get('max'))}"
        else:
            allowed = None
        delivery = p.get("deliver", "argv")
        if delivery != "argv":
            delivery = f"{delivery} ${p.get('env')}"
        table.add_row(
            text(p["name"]),
            text(p.get("type")),
            text(bool(p.get("required"))),
            text(p.get("default")),
            text(allowed),
            text(p.get("unit")),
            text(delivery),
            text(p.get("description")),
        )
    return table


def _num(value: Any) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def progress(job: Mapping[str, Any]) -> RenderableType:
    """What ``submit --wait`` shows while the job runs: spinner, phase, counters."""
    line = Text.assemble(Text(f"{job['type']} "), Text(job["id"], style="dim"), " ", phase(job))
    head: RenderableType = Spinner("dots", line)
    report = counters_table(job.get("report") or {})
    return Group(head, report) if report is not None else head
