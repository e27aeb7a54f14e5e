"""The lifecycle write path: every row of ``jobs`` and of ``events`` is built here.

Rule 1 of the design lives here. A job is inserted only by ``insert_jobs`` (its row from
``job_row``, which refuses a phase and reason a job cannot be created in, and its ``created``
event from ``created_event_row``). A phase or a reason changes only through ``apply``: the action
is checked against the transition table (phases *and* reasons, ``domain.lifecycle``), then a
checked ``UPDATE ... WHERE id AND phase [AND reason]`` matches the job only while it is still as
it was found, and its event row is written in the same transaction. A job that changed meanwhile
is left out: the caller looks again (``transition_in``) or skips it (claims, releases). Events
that change no phase are ``note_row``\\ s. Every event row is an ``event_row``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, insert, select, update

from jobmill.domain.errors import Conflict, NotFound
from jobmill.domain.jobs import Job, NewJob, utcnow
from jobmill.domain.lifecycle import (
    ENDED,
    Action,
    Phase,
    Transition,
    reason_allowed,
    reason_of,
    reasons_set_by,
    transition,
)
from jobmill.storage.db import aware
from jobmill.storage.tables import events, job_tags, jobs

SETTABLE = frozenset(
    {
        "native_id",
        "executor",  # an ARP job handed over to the batch job it submitted (service.handover)
        "node",
        "exit_code",
        "error",
        "token_hash",
        "started_at",
        "ended_at",
        "report",
        "parameters",
        "extra_parameters",
        "execution_duration",
        "destruction_at",
        "run_id",
        "stage",
    }
)
"""The columns callers may set beside a change (never the phase, the reason or the owner)."""

# Statements built once: building SQLAlchemy statements per call costs more than running them.
_GET_STATE = select(jobs.c.phase, jobs.c.reason, jobs.c.started_at).where(
    jobs.c.id == bindparam("p_id")
)
_INSERT_JOBS = insert(jobs)
_INSERT_JOBS_SEQ = insert(jobs).returning(jobs.c.seq, sort_by_parameter_order=True)
_INSERT_JOB_SEQ = insert(jobs).returning(jobs.c.seq)
INSERT_EVENTS = insert(events)
INSERT_TAGS = insert(job_tags).from_select(
    ["job_id", "tag", "seq"],
    select(
        bindparam("job_id", type_=job_tags.c.job_id.type),
        bindparam("tag", type_=job_tags.c.tag.type),
        jobs.c.seq,
    ).where(jobs.c.id == bindparam("job_id")),
)
"""Tag rows (``job_id``, ``tag``) with their job's ``seq`` (the order of a list by tag)."""
TAGS_KEY = "_tags"
"""The key of a ``job_row`` holding the job's tags (``insert_jobs`` writes them to ``job_tags``)."""
_UPDATES: dict[tuple[frozenset[str], bool, bool, bool, bool], Any] = {}


def update_statement(
    columns: frozenset[str],
    checked: bool,
    returning_all: bool,
    *,
    reason_checked: bool = False,
    many: bool = False,
) -> Any:
    """``UPDATE jobs SET <columns>, event_count = event_count + 1 WHERE id [AND phase [AND
    reason]]``, built once per shape; parameters are ``v_<column>``, ``p_id`` (``p_ids``, a
    list, when ``many``), ``p_phase`` and ``p_reason``. It returns the whole row, or only
    ``event_count`` (with ``id`` first when ``many``)."""
    key = (columns, checked, returning_all, reason_checked, many)
    statement = _UPDATES.get(key)
    if statement is None:
        if many:
            statement = update(jobs).where(jobs.c.id.in_(bindparam("p_ids", expanding=True)))
        else:
            statement = update(jobs).where(jobs.c.id == bindparam("p_id"))
        if checked:
            statement = statement.where(jobs.c.phase == bindparam("p_phase"))
        if reason_checked:
            statement = statement.where(jobs.c.reason == bindparam("p_reason"))
        statement = statement.values(
            {name: bindparam(f"v_{name}") for name in sorted(columns)}
            | {"event_count": jobs.c.event_count + 1}
        )
        columns_back = [jobs.c.id, jobs.c.event_count] if many else [jobs.c.event_count]
        statement = statement.returning(*(jobs.c if returning_all else columns_back))
        _UPDATES[key] = statement
    return statement


def settable(values: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """``values`` as a dict, after checking that each is a column callers may set."""
    extra = dict(values or {})
    unknown = set(extra) - SETTABLE
    if unknown:
        raise ValueError(f"cannot set {sorted(unknown)} through {what}")
    return extra


# -- rows -----------------------------------------------------------------------------------


def event_row(
    job_id: str,
    n: int,
    at: datetime,
    name: str,
    actor: str,
    data: Mapping[str, Any] | None,
    *,
    from_phase: Phase | None = None,
    to_phase: Phase | None = None,
) -> dict[str, Any]:
    """One ``events`` row: the ``n``-th event of the job (its ``event_count`` once counted)."""
    return {
        "job_id": job_id,
        "n": n,
        "at": at,
        "name": name,
        "from_phase": from_phase.value if from_phase is not None else None,
        "to_phase": to_phase.value if to_phase is not None else None,
        "actor": actor,
        "data": dict(data or {}),
    }


def note_row(
    job: Job, now: datetime, name: str, actor: str, data: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The event row of a change that is not a phase change (``record``): a note on ``job``."""
    return event_row(job.id, job.event_count, now, name, actor, data)


def job_row(new: NewJob, now: datetime) -> dict[str, Any]:
    """The ``jobs`` row of a job about to be inserted (every store that creates jobs uses it).
    Raises ``ValueError`` unless the job has a reason exactly when it is QUEUED. (The services
    create jobs only as ``lifecycle.CREATED`` says; tests and benchmarks may seed other phases.)"""
    if new.reason != reason_of(new.phase, new.reason) or (
        new.phase is Phase.QUEUED and not new.reason
    ):
        raise ValueError(f"a {new.phase.value} job cannot have reason {new.reason!r}")
    return {
        "id": new.id,
        "type": new.type,
        "owner": new.owner,
        "run_id": new.run_id,
        "phase": new.phase.value,
        "reason": new.reason,
        "parameters": new.parameters,
        "extra_parameters": new.extra_parameters,
        "report": {},
        "executor": new.executor,
        "created_at": now,
        "updated_at": now,
        "destruction_at": new.destruction_at,
        "execution_duration": new.execution_duration,
        "parent_id": new.parent_id,
        "log_dir": new.log_dir,
        "event_count": 1,
        "on_parent_failure": new.on_parent_failure,  # counts: ``storage.links``
        TAGS_KEY: tuple(sorted(set(new.tags))),
    }


def created_event_row(
    new: NewJob, now: datetime, actor: str, data: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``created`` event row of a job about to be inserted (beside ``job_row``): its data is
    the queued reason, if any, plus ``data`` (what created it: a rule, an ARP run...)."""
    reason = {"reason": new.reason} if new.reason else {}
    tags = {"tags": sorted(set(new.tags))} if new.tags else {}
    data = {**reason, **tags, **(data or {})}
    return event_row(new.id, 1, now, "created", actor, data, to_phase=new.phase)


def insert_jobs(
    conn: Connection,
    job_rows: list[dict[str, Any]],
    event_rows: list[dict[str, Any]],
    *,
    with_seq: bool = True,
) -> list[Job]:
    """Insert new jobs (``job_row``) and their events (``created_event_row``) in the caller's
    transaction, and return the jobs; with ``with_seq`` their ``seq`` is read back. The only
    ``INSERT`` of jobs (and of the tags they are created with)."""
    tag_rows = [
        {"job_id": row["id"], "tag": tag} for row in job_rows for tag in row.pop(TAGS_KEY, ())
    ]
    if len(job_rows) == 1:
        job_rows[0]["seq"] = conn.execute(_INSERT_JOB_SEQ, job_rows[0]).scalar_one()
    elif with_seq and job_rows:
        seqs = conn.execute(_INSERT_JOBS_SEQ, job_rows).scalars().all()
        for row, seq in zip(job_rows, seqs, strict=True):
            row["seq"] = seq
    elif job_rows:
        conn.execute(_INSERT_JOBS, job_rows)
    if event_rows:
        conn.execute(INSERT_EVENTS, event_rows)
    if tag_rows:
        conn.execute(INSERT_TAGS, tag_rows)
    created = [job_from_values(row) for row in job_rows]
    if tag_rows:
        by_job: dict[str, list[str]] = {}
        for tag_row in tag_rows:
            by_job.setdefault(tag_row["job_id"], []).append(tag_row["tag"])
        for job in created:
            job.tags = tuple(by_job.get(job.id, ()))
    return created


def job_from_row(row: Row[Any]) -> Job:
    """A ``Job`` from a ``jobs`` row read back."""
    m = row._mapping
    return Job(
        id=m["id"],
        type=m["type"],
        owner=m["owner"],
        phase=Phase(m["phase"]),
        parameters=m["parameters"] or {},
        created_at=aware(m["created_at"]) or utcnow(),
        run_id=m["run_id"],
        reason=m["reason"],
        extra_parameters=m["extra_parameters"] or {},
        report=m["report"] or {},
        executor=m["executor"],
        native_id=m["native_id"],
        node=m["node"],
        exit_code=m["exit_code"],
        error=m["error"],
        started_at=aware(m["started_at"]),
        ended_at=aware(m["ended_at"]),
        updated_at=aware(m["updated_at"]),
        destruction_at=aware(m["destruction_at"]),
        execution_duration=m["execution_duration"],
        parent_id=m["parent_id"],
        log_dir=m["log_dir"],
        event_count=m["event_count"],
        seq=m["seq"],
        stage=m["stage"],
    )


def job_from_values(values: dict[str, Any]) -> Job:
    """The Job just inserted, without reading it back (``seq`` 0 when it was not asked for)."""
    return Job(
        id=values["id"],
        type=values["type"],
        owner=values["owner"],
        phase=Phase(values["phase"]),
        parameters=values["parameters"],
        created_at=values["created_at"],
        run_id=values["run_id"],
        reason=values["reason"],
        extra_parameters=values["extra_parameters"],
        report={},
        executor=values["executor"],
        updated_at=values["updated_at"],
        destruction_at=values["destruction_at"],
        execution_duration=values["execution_duration"],
        parent_id=values["parent_id"],
        log_dir=values["log_dir"],
        event_count=1,
        seq=values.get("seq", 0),
    )


# -- checked changes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A job as a change requires it to be: the checked ``UPDATE`` matches it only while its
    phase (and, in QUEUED, its reason) are still these."""

    job_id: str
    phase: Phase
    reason: str | None = None
    started_at: datetime | None = None


def phase_columns(
    row_def: Transition, reason: str | None, started_at: datetime | None, now: datetime
) -> dict[str, Any]:
    """The columns every phase change sets: the phase, ``updated_at``, the reason (kept only
    in QUEUED), ``started_at`` on a first start and ``ended_at`` on an ending."""
    changes: dict[str, Any] = {
        "phase": row_def.target.value,
        "updated_at": now,
        "reason": reason_of(row_def.target, reason),
    }
    if row_def.target is Phase.EXECUTING and started_at is None:
        changes["started_at"] = now
    if row_def.target in ENDED:
        changes["ended_at"] = now
    return changes


def check(action: Action, found: Found, reason: str | None) -> None:
    """Refuse ``action`` on a job ``found`` so, leaving it with ``reason``, unless the table
    allows it: ``Conflict`` for the job's state, ``ValueError`` for a reason the action can
    never leave (a caller's mistake)."""
    row_def = transition(action)
    if found.phase not in row_def.sources:
        raise Conflict(
            f"cannot {action.value} a job that is {found.phase.value}",
            phase=found.phase.value,
            action=action.value,
        )
    after = reason_of(row_def.target, reason)
    if after not in reasons_set_by(action):
        raise ValueError(f"{action.value} cannot leave a job with reason {after!r}")
    before = reason_of(found.phase, found.reason)
    if not reason_allowed(action, before, after):
        raise Conflict(
            f"cannot {action.value} a job that is {found.phase.value} ({before or 'no reason'})"
            + (f" to {after}" if after else ""),
            phase=found.phase.value,
            action=action.value,
        )


@dataclass
class Changed:
    """What ``apply`` changed: the ids of the jobs, and the jobs as they are now (only when
    they were read back)."""

    ids: list[str]
    jobs: list[Job]


def apply(
    conn: Connection,
    action: Action,
    found: Sequence[Found],
    *,
    actor: str,
    reason: str | None = None,
    data_for: Callable[[str], Mapping[str, Any]] | None = None,
    values_for: Callable[[str], Mapping[str, Any]] | None = None,
    read_back: bool = True,
    now: datetime | None = None,
    cascade: bool = True,
) -> Changed:
    """Apply ``action`` to the jobs ``found``, in the caller's transaction: the one function
    that changes a phase or a reason.

    Each job is checked against the table (``check`` raises for the first refused), then changed
    by a checked ``UPDATE`` that matches it only while it is still as found, with its event row
    (data: ``data_for(job_id)`` plus the reason). ``values_for(job_id)`` gives other columns to
    set. Jobs found in the same state with no columns of their own are changed by ONE
    ``UPDATE`` (a release of many jobs). A job that changed meanwhile is left out. Without
    ``read_back`` only the ids of the changed jobs come back (cheaper for many).

    Jobs that ended (or stood by for their sub-jobs) release, in the same transaction, the
    jobs that waited for them (``storage.links.after_change``); ``cascade=False`` is for
    ``storage.links`` itself, which follows the cascade without recursing."""
    row_def = transition(action)
    states: dict[tuple[Phase, str | None], Found] = {}
    for each in found:
        if (each.phase, each.reason) not in states:
            check(action, each, reason)
            states[(each.phase, each.reason)] = each
    now = now or utcnow()
    by_id = {each.job_id: each for each in found}
    counted: list[tuple[str, int]] = []  # (job id, its event number)
    changed = Changed([], [])
    if (
        len(found) > 1
        and values_for is None
        and len(states) == 1
        and row_def.target is not Phase.EXECUTING
    ):
        first = found[0]
        changes = phase_columns(row_def, reason, None, now)
        reason_checked = first.phase is Phase.QUEUED and first.reason is not None
        statement = update_statement(
            frozenset(changes), True, read_back, reason_checked=reason_checked, many=True
        )
        params = {f"v_{k}": v for k, v in changes.items()}
        params.update(p_ids=list(by_id), p_phase=first.phase.value, p_reason=first.reason)
        for row in conn.execute(statement, params):
            counted.append((row.id, row.event_count))
            if read_back:
                changed.jobs.append(job_from_row(row))
    else:
        for each in found:
            changes = phase_columns(row_def, reason, each.started_at, now)
            if values_for is not None:
                changes.update(settable(values_for(each.job_id), "a transition"))
            reason_checked = each.phase is Phase.QUEUED and each.reason is not None
            statement = update_statement(
                frozenset(changes), True, read_back, reason_checked=reason_checked
            )
            params = {f"v_{k}": v for k, v in changes.items()}
            params.update(p_id=each.job_id, p_phase=each.phase.value, p_reason=each.reason)
            one = conn.execute(statement, params).first()
            if one is not None:
                counted.append((each.job_id, one.event_count))
                if read_back:
                    changed.jobs.append(job_from_row(one))
    event_rows: list[dict[str, Any]] = []
    for job_id, n in counted:
        changed.ids.append(job_id)
        data = dict(data_for(job_id) if data_for is not None else {})
        if reason:
            data.setdefault("reason", reason)
        event_rows.append(
            event_row(
                job_id,
                n,
                now,
                action.value,
                actor,
                data,
                from_phase=by_id[job_id].phase,
                to_phase=row_def.target,
            )
        )
    if event_rows:
        conn.execute(INSERT_EVENTS, event_rows)
    if cascade and changed.ids and (row_def.target in ENDED or action is Action.STAND_BY):
        from jobmill.storage import links  # links builds on this module

        links.after_change(conn, action, changed.ids, now)
    return changed


def transition_in(
    conn: Connection,
    job_id: str,
    action: Action,
    *,
    actor: str,
    reason: str | None,
    data: Mapping[str, Any] | None,
    values: Mapping[str, Any],
    expect_reason: str | None,
) -> Job | None:
    """One checked transition of the job as it is now, inside an open transaction: the changed
    job, or None when the checked ``UPDATE`` lost a race (look again). ``expect_reason`` also
    requires the job's current reason. Raises ``NotFound`` or ``Conflict``."""
    current = conn.execute(_GET_STATE, {"p_id": job_id}).first()
    if current is None:
        raise NotFound(f"no job {job_id}", field="id")
    seen = Phase(current.phase)
    if expect_reason is not None and current.reason != expect_reason:
        raise Conflict(
            f"cannot {action.value} a job that is {seen.value} ({current.reason or 'no reason'})",
            phase=seen.value,
            action=action.value,
        )
    changed = apply(
        conn,
        action,
        [Found(job_id, seen, current.reason, current.started_at)],
        actor=actor,
        reason=reason,
        data_for=lambda _job_id: data or {},
        values_for=(lambda _job_id: values) if values else None,
    )
    return changed.jobs[0] if changed.jobs else None
