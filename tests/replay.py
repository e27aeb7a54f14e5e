"""Replay every job's events against the transition table (``domain.lifecycle``).

``impossible_steps(url)`` reads the whole event log of a database in ONE query (events, with
their job's current phase and reason) and replays each job's history: it must start with a
``created`` event in a phase and reason jobs are created in, every phase-changing event must be
an action the table allows from the phase *and reason* the job was in, ``n`` must count 1, 2,
3..., a ``deleted`` event must come last, and the replayed phase and reason must be the job's
stored ones (or, for a deleted job, the ones its ``deleted`` event kept). The ``settings``
fixture runs it after every test that built a jobmill on its database.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import groupby
from typing import Any

from sqlalchemy import create_engine, inspect, select

from jobmill.domain.lifecycle import Action, Phase, can_create, reason_allowed, reason_of, target
from jobmill.storage.tables import events, jobs

_HISTORY = (
    select(
        events.c.job_id,
        events.c.n,
        events.c.name,
        events.c.from_phase,
        events.c.to_phase,
        events.c.data,
        jobs.c.phase.label("job_phase"),
        jobs.c.reason.label("job_reason"),
        jobs.c.event_count.label("job_events"),
    )
    .select_from(events.outerjoin(jobs, jobs.c.id == events.c.job_id))
    .order_by(events.c.job_id, events.c.n)
)


def impossible_steps(url: str) -> list[str]:
    """What is impossible in the history of each job stored at ``url`` (empty: all is well)."""
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table("events"):
            return []
        with engine.connect() as conn:
            rows = conn.execute(_HISTORY).all()
    finally:
        engine.dispose()
    problems: list[str] = []
    for job_id, history in groupby(rows, key=lambda row: row.job_id):
        problems.extend(f"job {job_id}: {problem}" for problem in replay(list(history)))
    return problems


def replay(history: list[Any]) -> Iterator[str]:
    """The impossible steps of one job's history (rows of ``_HISTORY``, in order of ``n``)."""
    first = history[0]
    if first.name != "created" or first.from_phase is not None or first.to_phase is None:
        yield f"event 1 is {first.name} ({first.from_phase} -> {first.to_phase}), not created"
        return
    phase = Phase(first.to_phase)
    reason = _reason(first)
    if not can_create(phase, reason):
        yield f"created {phase.value} ({reason or 'no reason'}), which no job is created in"
    deleted = None
    for expected_n, row in enumerate(history, start=1):
        where = f"event {row.n} ({row.name})"
        if row.n != expected_n:
            yield f"{where}: numbered {row.n}, expected {expected_n}"
            return
        if deleted is not None:
            yield f"{where}: comes after the job was deleted"
            return
        if row.n == 1:
            continue
        if row.name == "deleted":
            deleted = row
        if row.from_phase is None and row.to_phase is None:
            continue  # a note: no phase change
        try:
            action = Action(row.name)
        except ValueError:
            yield f"{where}: changes the phase but is no action"
            return
        before = Phase(row.from_phase) if row.from_phase else None
        after = Phase(row.to_phase) if row.to_phase else None
        if before is not phase:
            yield f"{where}: from {row.from_phase}, but the job was {phase.value}"
            return
        if after is None or target(phase, action) is not after:
            yield f"{where}: {phase.value} --{action.value}--> {row.to_phase} is not in the table"
            return
        new_reason = reason_of(after, _reason(row))
        if not reason_allowed(action, reason_of(phase, reason), new_reason):
            yield (
                f"{where}: reason {reason or 'none'} -> {new_reason or 'none'} is not allowed for "
                f"{action.value}"
            )
            return
        phase, reason = after, new_reason
    last = history[-1]
    if last.job_phase is None:
        if deleted is None:
            yield "its row is gone without a deleted event"
        elif (deleted.data or {}).get("phase") != phase.value:
            yield f"deleted as {(deleted.data or {}).get('phase')}, but its events say {phase}"
        return
    if deleted is not None:
        yield "a deleted event, but its row is still there"
    if (last.job_phase, last.job_reason) != (phase.value, reason):
        yield (
            f"stored {last.job_phase} ({last.job_reason}), but its events say "
            f"{phase.value} ({reason})"
        )
    if last.job_events != last.n:
        yield f"event_count {last.job_events}, but {last.n} events"


def _reason(row: Any) -> str | None:
    data = row.data if isinstance(row.data, dict) else {}
    value = data.get("reason")
    return value if isinstance(value, str) else None
