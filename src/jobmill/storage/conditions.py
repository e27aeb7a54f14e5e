"""ConditionStore: data conditions of jobs waiting for data, and their checked release.

A job waiting for data is QUEUED with reason ``waiting for data``; its row in
``data_conditions`` says what it waits for. Both are written in one transaction
(``create_jobs``), so a job never waits for nothing and no condition is left without its job.

Release is the batch form of ``JobStore.transition(WAIT, reason="capacity",
expect_reason="waiting for data")``, through the same ``storage.writes.apply``: one ``UPDATE``
matches only jobs still QUEUED *and* waiting for data, and their event rows are written in the
same transaction. Whoever loses the race (a second watcher, a second ``monitor/complete``, a file
seen twice) matches no row and does nothing, so a job is released exactly once. A time-out
changes the phase through ``JobStore.transition`` (DESIGN rule 1).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, Text, and_, bindparam, cast, func, insert, or_, select, update

from jobmill.domain.conditions import DataCondition, WaitingCondition
from jobmill.domain.errors import Conflict, NotFound
from jobmill.domain.jobs import Job, NewJob, utcnow
from jobmill.domain.lifecycle import Action, Phase, Reason
from jobmill.storage.db import aware as _aware
from jobmill.storage.jobs import JobStore
from jobmill.storage.tables import data_conditions, jobs
from jobmill.storage.tokens import hash_secret
from jobmill.storage.writes import Found, apply, created_event_row, insert_jobs, job_row

CHUNK = 500
_MARK_RELEASED = (
    update(data_conditions)
    .where(data_conditions.c.job_id == bindparam("b_id"))
    .values(released_at=bindparam("b_at"), released_by=bindparam("b_by"))
)


def _waiting(row: Row[Any]) -> WaitingCondition:
    m = row._mapping
    return WaitingCondition(
        job_id=m["job_id"],
        condition=DataCondition(
            paths=tuple(m["paths"]),
            mode=m["mode"],
            timeout=m["timeout"],
            marker=bool(m["marker"]),
            stable_seconds=m["stable_seconds"],
        ),
        deadline=_aware(m["deadline"]),
        created_at=_aware(m["created_at"]) or utcnow(),
        released_at=_aware(m["released_at"]),
        released_by=m["released_by"],
    )


def _is_waiting() -> Any:
    return and_(jobs.c.phase == Phase.QUEUED.value, jobs.c.reason == Reason.DATA.value)


class ConditionStore:
    """Data conditions in the jobmill database (the engines of the given ``JobStore``)."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self.engine = jobs.engine
        self.read_engine = jobs.read_engine

    # -- creation ---------------------------------------------------------------------------

    def create_jobs(
        self,
        new_jobs: Sequence[NewJob],
        conditions: Sequence[DataCondition | None],
        *,
        actor: str,
    ) -> list[Job]:
        """Insert jobs, their ``created`` events and their conditions: all or nothing.

        ``conditions[i]`` belongs to ``new_jobs[i]`` (None: the job waits for nothing). The
        condition of a QUEUED job gets its deadline now; a PENDING job's gets it when the
        watcher first loads it after the job was run.
        """
        if len(new_jobs) != len(conditions):
            raise ValueError("one condition (or None) per job")
        if not new_jobs:
            return []
        now = utcnow()
        job_rows: list[dict[str, Any]] = []
        event_rows: list[dict[str, Any]] = []
        condition_rows: list[dict[str, Any]] = []
        for new, condition in zip(new_jobs, conditions, strict=True):
            job_rows.append(job_row(new, now))
            data: dict[str, Any] = {}
            if condition is not None:
                data["wait_for"] = condition_dict(condition)
                deadline = None
                if condition.timeout is not None and new.phase is Phase.QUEUED:
                    deadline = now + timedelta(seconds=condition.timeout)
                condition_rows.append(
                    {
                        "job_id": new.id,
                        "paths": list(condition.paths),
                        "mode": condition.mode,
                        "marker": condition.marker,
                        "stable_seconds": condition.stable_seconds,
                        "timeout": condition.timeout,
                        "deadline": deadline,
                        "key_hash": hash_secret(condition.key) if condition.key else None,
                        "created_at": now,
                    }
                )
            event_rows.append(created_event_row(new, now, actor, data))
        with self.engine.begin() as conn:
            created = insert_jobs(conn, job_rows, event_rows)
            if condition_rows:
                conn.execute(insert(data_conditions), condition_rows)
        return created

    # -- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> WaitingCondition | None:
        with self.read_engine.connect() as conn:
            row = conn.execute(
                select(data_conditions).where(data_conditions.c.job_id == job_id)
            ).first()
        return _waiting(row) if row else None

    def waiting(self, job_ids: Iterable[str] | None = None) -> list[WaitingCondition]:
        """Conditions of the jobs that are waiting for data now (all, or those of ``job_ids``)."""
        query = (
            select(data_conditions)
            .join(jobs, jobs.c.id == data_conditions.c.job_id)
            .where(_is_waiting())
        )
        with self.read_engine.connect() as conn:
            if job_ids is None:
                return [_waiting(row) for row in conn.execute(query)]
            wanted = list(job_ids)
            found: list[WaitingCondition] = []
            for start in range(0, len(wanted), CHUNK):
                chunk = wanted[start : start + CHUNK]
                rows = conn.execute(query.where(data_conditions.c.job_id.in_(chunk)))
                found.extend(_waiting(row) for row in rows)
            return found

    def waiting_ids(self) -> set[str]:
        """The ids of every job waiting for data (one indexed query, no condition bodies)."""
        query = (
            select(data_conditions.c.job_id)
            .join(jobs, jobs.c.id == data_conditions.c.job_id)
            .where(_is_waiting())
        )
        with self.read_engine.connect() as conn:
            return {row.job_id for row in conn.execute(query)}

    def active_of(self, owner: str, *, wildcards: bool = False) -> tuple[int, list[list[str]]]:
        """How many of ``owner``'s jobs wait for data (or will once run: PENDING with a
        condition), and, if ``wildcards``, the paths of those that have a wildcard pattern."""
        joined = data_conditions.join(jobs, jobs.c.id == data_conditions.c.job_id)
        active = and_(
            jobs.c.owner == owner,
            jobs.c.phase.in_([Phase.PENDING.value, Phase.QUEUED.value]),
            data_conditions.c.released_at.is_(None),
        )
        with self.read_engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(joined).where(active)).scalar()
            deep: list[list[str]] = []
            if wildcards:
                text = cast(data_conditions.c.paths, Text)
                magic = or_(*(text.like(f"%{c}%") for c in "*?["))
                rows = conn.execute(
                    select(data_conditions.c.paths).select_from(joined).where(active, magic)
                )
                deep = [list(row.paths) for row in rows]
        return int(count or 0), deep

    def has_condition(self, job_id: str) -> bool:
        with self.read_engine.connect() as conn:
            found = conn.execute(
                select(data_conditions.c.job_id).where(data_conditions.c.job_id == job_id)
            ).first()
        return found is not None

    def find_key(self, key: str) -> str | None:
        """The job a ``monitor/complete`` key belongs to (looked up by its hash)."""
        digest = hash_secret(key)
        with self.read_engine.connect() as conn:
            row = conn.execute(
                select(data_conditions.c.job_id, data_conditions.c.key_hash).where(
                    data_conditions.c.key_hash == digest
                )
            ).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return str(row.job_id)

    def keyed(self, job_id: str) -> bool:
        """Whether the job's condition was issued a ``monitor/complete`` key."""
        with self.read_engine.connect() as conn:
            found = conn.execute(
                select(data_conditions.c.job_id).where(
                    data_conditions.c.job_id == job_id, data_conditions.c.key_hash.is_not(None)
                )
            ).first()
        return found is not None

    # -- changing ---------------------------------------------------------------------------

    def set_deadlines(self, deadlines: Mapping[str, datetime]) -> None:
        """Give conditions that have a time-out but no deadline yet (jobs run after PENDING)."""
        with self.engine.begin() as conn:
            for job_id, deadline in deadlines.items():
                conn.execute(
                    update(data_conditions)
                    .where(data_conditions.c.job_id == job_id, data_conditions.c.deadline.is_(None))
                    .values(deadline=deadline)
                )

    def release(self, causes: Mapping[str, str], *, actor: str) -> list[str]:
        """Release waiting jobs (QUEUED + waiting for data -> QUEUED + capacity), checked.

        ``causes`` maps job id -> what released it (a file path, ``monitor/complete``). Returns
        the ids actually released; a job no longer waiting is left alone.
        """
        released: list[str] = []
        ids = list(causes)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            now = utcnow()
            waiting = [Found(job_id, Phase.QUEUED, Reason.DATA.value) for job_id in chunk]
            with self.engine.begin() as conn:
                changed = apply(
                    conn,
                    Action.WAIT,
                    waiting,
                    actor=actor,
                    reason=Reason.CAPACITY.value,
                    data_for=lambda job_id: {"released_by": causes[job_id]},
                    read_back=False,
                    now=now,
                ).ids
                if not changed:
                    continue
                marks = [{"b_id": i, "b_at": now, "b_by": causes[i][:4096]} for i in changed]
                conn.execute(_MARK_RELEASED, marks)
            released.extend(changed)
        return released

    def time_out(self, job_id: str, *, actor: str) -> bool:
        """End a job that is still waiting for data ERROR, because its time-out passed."""
        with self.read_engine.connect() as conn:
            timeout = conn.execute(
                select(data_conditions.c.timeout).where(data_conditions.c.job_id == job_id)
            ).scalar()
        seconds = f"{timeout:g}" if isinstance(timeout, float | int) else "?"
        error = f"timed out waiting for data after {seconds} s"
        try:
            self.jobs.transition(
                job_id,
                Action.FAIL,
                actor=actor,
                values={"error": error},
                data={"why": error},
                expect_reason=Reason.DATA.value,
            )
        except (Conflict, NotFound):
            return False
        return True


def condition_dict(condition: DataCondition) -> dict[str, Any]:
    """A condition as the API and the event log show it (never its key)."""
    return {
        "paths": list(condition.paths),
        "mode": condition.mode,
        "timeout": condition.timeout,
        "marker": condition.marker,
        "stable_seconds": condition.stable_seconds,
    }
