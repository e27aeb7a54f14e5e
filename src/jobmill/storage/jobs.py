"""JobStore: the only code that reads and writes jobs and their events.

Rule 1 of the design lives here: a phase changes only through ``transition``, a checked
``UPDATE ... WHERE id = :id AND phase = :seen`` (``seen`` being one of the phases the action
allows) plus its event row, in one transaction. A lost race is retried against the new phase,
and an illegal action raises ``Conflict``; nothing is ever overwritten blindly.
"""

from __future__ import annotations

import builtins
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Select,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

from jobmill.domain.errors import Conflict, NotFound
from jobmill.domain.jobs import Event, Job, NewJob, utcnow
from jobmill.domain.lifecycle import TERMINAL, Action, Phase, Reason, Transition, transition
from jobmill.storage.db import aware
from jobmill.storage.tables import events, jobs
from jobmill.storage.tokens import TokenStore, hash_secret

MAX_PAGE = 1000
_SETTABLE = frozenset(
    {
        "native_id",
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
    }
)


# Statements built once: building SQLAlchemy statements per call costs more than running them.
_GET_JOB = select(jobs).where(jobs.c.id == bindparam("p_id"))
_GET_PHASE = select(jobs.c.phase, jobs.c.reason, jobs.c.started_at).where(
    jobs.c.id == bindparam("p_id")
)
_GET_TOKEN = select(jobs.c.token_hash, jobs.c.phase).where(jobs.c.id == bindparam("p_id"))
_GET_REPORT = select(jobs.c.report, jobs.c.phase).where(jobs.c.id == bindparam("p_id"))
_GET_REPORT_FOR_UPDATE = _GET_REPORT.with_for_update()
_INSERT_JOBS = insert(jobs)
_INSERT_JOBS_SEQ = insert(jobs).returning(jobs.c.seq, sort_by_parameter_order=True)
_INSERT_JOB_SEQ = insert(jobs).returning(jobs.c.seq)
_INSERT_EVENT = insert(events)
_UPDATES: dict[tuple[frozenset[str], bool, bool, bool], Any] = {}
# The queued jobs of one executor waiting for a slot, oldest first (grouped dispatch).
_CLAIM_CANDIDATES = (
    select(jobs.c.id, jobs.c.started_at)
    .where(
        jobs.c.phase == Phase.QUEUED.value,
        jobs.c.executor == bindparam("p_executor"),
        jobs.c.reason == bindparam("p_reason"),
    )
    .order_by(jobs.c.seq)
    .limit(bindparam("p_limit"))
)
_CLAIM_CANDIDATES_LOCKED = _CLAIM_CANDIDATES.with_for_update(skip_locked=True)


def _update_statement(
    columns: frozenset[str], checked: bool, returning_all: bool, *, reason_checked: bool = False
) -> Any:
    """``UPDATE jobs SET <columns>, event_count = event_count + 1 WHERE id [AND phase [AND
    reason]]``, built once per shape; parameters are ``v_<column>``, ``p_id``, ``p_phase`` and
    ``p_reason``."""
    key = (columns, checked, returning_all, reason_checked)
    statement = _UPDATES.get(key)
    if statement is None:
        statement = update(jobs).where(jobs.c.id == bindparam("p_id"))
        if checked:
            statement = statement.where(jobs.c.phase == bindparam("p_phase"))
        if reason_checked:
            statement = statement.where(jobs.c.reason == bindparam("p_reason"))
        statement = statement.values(
            {name: bindparam(f"v_{name}") for name in sorted(columns)}
            | {"event_count": jobs.c.event_count + 1}
        )
        statement = statement.returning(*(jobs.c if returning_all else [jobs.c.event_count]))
        _UPDATES[key] = statement
    return statement


def _settable(values: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """``values`` as a dict, after checking that each is a column callers may set."""
    extra = dict(values or {})
    unknown = set(extra) - _SETTABLE
    if unknown:
        raise ValueError(f"cannot set {sorted(unknown)} through {what}")
    return extra


def _note_row(
    job: Job, now: datetime, name: str, actor: str, data: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The event row of a change that is not a phase change (``record``): a note on ``job``."""
    return {
        "job_id": job.id,
        "n": job.event_count,
        "at": now,
        "name": name,
        "from_phase": None,
        "to_phase": None,
        "actor": actor,
        "data": dict(data or {}),
    }


def _phase_columns(
    row_def: Transition, reason: str | None, started_at: datetime | None, now: datetime
) -> dict[str, Any]:
    """The columns every phase change sets: the phase, ``updated_at``, the reason (kept only
    in QUEUED), ``started_at`` on a first start and ``ended_at`` on an ending."""
    changes: dict[str, Any] = {
        "phase": row_def.target.value,
        "updated_at": now,
        "reason": reason if row_def.target is Phase.QUEUED else None,
    }
    if row_def.target is Phase.EXECUTING and started_at is None:
        changes["started_at"] = now
    if row_def.target in TERMINAL and row_def.target is not Phase.ARCHIVED:
        changes["ended_at"] = now
    return changes


def _transition_in(
    conn: Connection,
    job_id: str,
    action: Action,
    row_def: Transition,
    actor: str,
    reason: str | None,
    data: Mapping[str, Any] | None,
    extra: Mapping[str, Any],
    expect_reason: str | None,
) -> Job | None:
    """One checked transition inside an open transaction: the changed job, or None when the
    checked ``UPDATE`` lost a race (look again). Raises ``NotFound`` or ``Conflict``."""
    current = conn.execute(_GET_PHASE, {"p_id": job_id}).first()
    if current is None:
        raise NotFound(f"no job {job_id}", field="id")
    seen = Phase(current.phase)
    if expect_reason is not None and current.reason != expect_reason:
        raise Conflict(
            f"cannot {action.value} a job that is {seen.value} ({current.reason or 'no reason'})",
            phase=seen.value,
            action=action.value,
        )
    if seen not in row_def.sources:
        raise Conflict(
            f"cannot {action.value} a job that is {seen.value}",
            phase=seen.value,
            action=action.value,
        )
    now = utcnow()
    changes = _phase_columns(row_def, reason, current.started_at, now)
    changes.update(extra)
    statement = _update_statement(
        frozenset(changes), True, True, reason_checked=expect_reason is not None
    )
    params = {f"v_{k}": v for k, v in changes.items()}
    params.update(p_id=job_id, p_phase=seen.value, p_reason=expect_reason)
    result = conn.execute(statement, params).first()
    if result is None:
        return None
    job = _job(result)
    event_data = dict(data or {})
    if reason:
        event_data.setdefault("reason", reason)
    conn.execute(
        _INSERT_EVENT,
        {
            "job_id": job_id,
            "n": job.event_count,
            "at": now,
            "name": action.value,
            "from_phase": seen.value,
            "to_phase": row_def.target.value,
            "actor": actor,
            "data": event_data,
        },
    )
    return job


def _job(row: Row[Any]) -> Job:
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
    )


def job_row(new: NewJob, now: datetime) -> dict[str, Any]:
    """The ``jobs`` row of a job about to be inserted (every store that creates jobs uses it)."""
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
    }


def created_event_row(
    new: NewJob, now: datetime, actor: str, data: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``created`` event row of a job about to be inserted (beside ``job_row``): its data is
    the queued reason, if any, plus ``data`` (what created it: a rule, an ARP run...)."""
    return {
        "job_id": new.id,
        "n": 1,
        "at": now,
        "name": "created",
        "from_phase": None,
        "to_phase": new.phase.value,
        "actor": actor,
        "data": {**({"reason": new.reason} if new.reason else {}), **(data or {})},
    }


def insert_jobs(
    conn: Connection,
    job_rows: builtins.list[dict[str, Any]],
    event_rows: builtins.list[dict[str, Any]],
    *,
    with_seq: bool = True,
) -> builtins.list[Job]:
    """Insert new jobs (``job_row``) and their events (``created_event_row``) in the caller's
    transaction, and return the jobs; with ``with_seq`` their ``seq`` is read back."""
    if len(job_rows) == 1:
        job_rows[0]["seq"] = conn.execute(_INSERT_JOB_SEQ, job_rows[0]).scalar_one()
    elif with_seq and job_rows:
        seqs = conn.execute(_INSERT_JOBS_SEQ, job_rows).scalars().all()
        for row, seq in zip(job_rows, seqs, strict=True):
            row["seq"] = seq
    elif job_rows:
        conn.execute(_INSERT_JOBS, job_rows)
    if event_rows:
        conn.execute(_INSERT_EVENT, event_rows)
    return [_job_from_values(row) for row in job_rows]


def _job_from_values(values: dict[str, Any]) -> Job:
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


def _event(row: Row[Any]) -> Event:
    m = row._mapping
    return Event(
        seq=m["seq"],
        job_id=m["job_id"],
        n=m["n"],
        at=aware(m["at"]) or utcnow(),
        name=m["name"],
        from_phase=Phase(m["from_phase"]) if m["from_phase"] else None,
        to_phase=Phase(m["to_phase"]) if m["to_phase"] else None,
        actor=m["actor"],
        data=m["data"] or {},
    )


@dataclass
class JobFilter:
    """What ``JobStore.list`` selects on; every field is optional and they combine with AND."""

    phases: Sequence[Phase] = ()
    type: str | None = None
    owner: str | None = None
    run_id: str | None = None
    created_after: datetime | None = None
    executor: str | None = None


@dataclass(frozen=True)
class JobRef:
    """The columns a job list shows (a UWS ``jobref``): a fraction of the cost of a ``Job``,
    whose 25 columns and JSON documents make up half the time of a 100-job list."""

    id: str
    phase: Phase
    run_id: str | None
    owner: str
    created_at: datetime
    seq: int


@dataclass(frozen=True)
class Change:
    """One transition of ``JobStore.transition_many`` (the arguments of ``transition``)."""

    job_id: str
    action: Action
    reason: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)
    expect_reason: str | None = None


@dataclass(frozen=True)
class Entry:
    """One job's part of ``JobStore.record_many``: its event's data, the columns to set."""

    data: Mapping[str, Any] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)


class JobStore:
    """Jobs, events and tokens in one SQL database."""

    def __init__(self, engine: Engine, read_engine: Engine | None = None) -> None:
        self.engine = engine
        self.read_engine = read_engine or engine
        self.tokens = TokenStore(engine, self.read_engine)

    # -- creation ---------------------------------------------------------------------------

    def create(self, new_jobs: Sequence[NewJob], *, actor: str, with_seq: bool = True) -> list[Job]:
        """Insert jobs with their ``created`` events, all or nothing.

        ``with_seq=False`` skips reading back the sequence numbers of a batch (faster; the
        returned jobs then carry ``seq`` 0)."""
        now = utcnow()
        job_rows = []
        event_rows = []
        for new in new_jobs:
            job_rows.append(job_row(new, now))
            event_rows.append(created_event_row(new, now, actor))
        if not job_rows:
            return []
        with self.engine.begin() as conn:
            return insert_jobs(conn, job_rows, event_rows, with_seq=with_seq)

    # -- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self.read_engine.connect() as conn:
            row = conn.execute(_GET_JOB, {"p_id": job_id}).first()
        return _job(row) if row else None

    def require(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", field="id")
        return job

    def list(
        self, flt: JobFilter, *, limit: int = 100, before_seq: int | None = None
    ) -> builtins.list[Job]:
        """Jobs matching ``flt``, newest first, at most ``limit``, older than ``before_seq``."""
        query = self._list_query(select(jobs), flt, limit, before_seq)
        with self.read_engine.connect() as conn:
            return [_job(row) for row in conn.execute(query)]

    def list_refs(self, flt: JobFilter, *, limit: int = 100) -> builtins.list[JobRef]:
        """Like ``list``, only the columns of a ``JobRef``."""
        columns = select(
            jobs.c.id, jobs.c.phase, jobs.c.run_id, jobs.c.owner, jobs.c.created_at, jobs.c.seq
        )
        query = self._list_query(columns, flt, limit, None)
        with self.read_engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            JobRef(r.id, Phase(r.phase), r.run_id, r.owner, aware(r.created_at) or utcnow(), r.seq)
            for r in rows
        ]

    @staticmethod
    def _list_query(
        query: Select[Any], flt: JobFilter, limit: int, before_seq: int | None
    ) -> Select[Any]:
        conditions: builtins.list[ColumnElement[bool]] = []
        if flt.phases:
            conditions.append(jobs.c.phase.in_([p.value for p in flt.phases]))
        if flt.type:
            conditions.append(jobs.c.type == flt.type)
        if flt.owner:
            conditions.append(jobs.c.owner == flt.owner)
        if flt.run_id:
            conditions.append(jobs.c.run_id == flt.run_id)
        if flt.executor:
            conditions.append(jobs.c.executor == flt.executor)
        if flt.created_after:
            after = flt.created_after
            after = after.astimezone(UTC) if after.tzinfo else after.replace(tzinfo=UTC)
            conditions.append(jobs.c.created_at > after)
        if before_seq is not None:
            conditions.append(jobs.c.seq < before_seq)
        if conditions:
            query = query.where(and_(*conditions))
        # One more than a page is allowed, so a caller can tell whether another page follows.
        return query.order_by(jobs.c.seq.desc()).limit(max(1, min(limit, MAX_PAGE + 1)))

    def ids_in_phase(
        self,
        phases: Iterable[Phase],
        *,
        executor: str | None = None,
        node: str | None = None,
        reason: str | None = None,
        limit: int = 10000,
    ) -> builtins.list[Job]:
        """Jobs in any of ``phases`` (oldest first), for schedulers and monitors."""
        query = select(jobs).where(jobs.c.phase.in_([p.value for p in phases]))
        if executor is not None:
            query = query.where(jobs.c.executor == executor)
        if node is not None:
            query = query.where(jobs.c.node == node)
        if reason is not None:
            query = query.where(jobs.c.reason == reason)
        query = query.order_by(jobs.c.seq).limit(limit)
        with self.read_engine.connect() as conn:
            return [_job(row) for row in conn.execute(query)]

    def due_for_destruction(self, now: datetime, *, limit: int = 100) -> builtins.list[Job]:
        """Jobs whose destruction time has passed and that are not archived yet."""
        query = (
            select(jobs)
            .where(jobs.c.destruction_at <= now, jobs.c.phase != Phase.ARCHIVED.value)
            .order_by(jobs.c.destruction_at)
            .limit(limit)
        )
        with self.read_engine.connect() as conn:
            return [_job(row) for row in conn.execute(query)]

    def phases(self, job_ids: Sequence[str]) -> dict[str, Phase]:
        """The current phase of each given job that still exists, in one query."""
        result: dict[str, Phase] = {}
        with self.read_engine.connect() as conn:
            for start in range(0, len(job_ids), 500):
                chunk = list(job_ids[start : start + 500])
                for row in conn.execute(
                    select(jobs.c.id, jobs.c.phase).where(jobs.c.id.in_(chunk))
                ):
                    result[row.id] = Phase(row.phase)
        return result

    def events(self, job_id: str, *, after: int = 0, limit: int = 1000) -> builtins.list[Event]:
        query = (
            select(events)
            .where(events.c.job_id == job_id, events.c.n > after)
            .order_by(events.c.n)
            .limit(max(1, min(limit, MAX_PAGE)))
        )
        with self.read_engine.connect() as conn:
            return [_event(row) for row in conn.execute(query)]

    def events_since(self, seq: int, *, limit: int = 1000) -> builtins.list[Event]:
        """The change feed: every event after global sequence ``seq``."""
        query = select(events).where(events.c.seq > seq).order_by(events.c.seq).limit(limit)
        with self.read_engine.connect() as conn:
            return [_event(row) for row in conn.execute(query)]

    def last_event_seq(self) -> int:
        with self.read_engine.connect() as conn:
            return int(conn.execute(select(func.max(events.c.seq))).scalar() or 0)

    def count(self) -> int:
        with self.read_engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(jobs)).scalar() or 0)

    def ping(self) -> None:
        """Read one row's worth from the jobs table: the database answers and has the schema.

        Constant time, unlike ``count()``, which reads a whole index (tens of ms on PostgreSQL
        with 100,000 jobs).
        """
        with self.read_engine.connect() as conn:
            conn.execute(select(jobs.c.id).limit(1)).all()

    # -- changing ---------------------------------------------------------------------------

    def transition(
        self,
        job_id: str,
        action: Action,
        *,
        actor: str,
        reason: str | None = None,
        data: Mapping[str, Any] | None = None,
        values: Mapping[str, Any] | None = None,
        expect_reason: str | None = None,
    ) -> Job:
        """Apply ``action`` to the job: checked phase update plus event, in one transaction.

        ``values`` sets other columns at the same time (native id, exit code, error...).
        ``expect_reason`` also requires the job's current reason (claims of QUEUED jobs).
        Raises ``NotFound`` or ``Conflict`` (the action is not allowed in the current phase).
        """
        row_def = transition(action)
        extra = _settable(values, "a transition")
        for _attempt in range(5):
            with self.engine.begin() as conn:
                job = _transition_in(
                    conn, job_id, action, row_def, actor, reason, data, extra, expect_reason
                )
            if job is not None:
                return job
        raise Conflict(f"job {job_id} keeps changing; try again", action=action.value)

    def transition_many(
        self, changes: Sequence[Change], *, actor: str
    ) -> dict[str, Job | Conflict | NotFound]:
        """Apply several transitions in ONE transaction (jobs that ended together).

        Each change is checked like ``transition``; one that is illegal or whose job is gone
        does not stop the others. Returns, by job id, the changed job or the error."""
        outcomes: dict[str, Job | Conflict | NotFound] = {}
        if not changes:
            return outcomes
        with self.engine.begin() as conn:
            for change in changes:
                row_def = transition(change.action)
                extra = _settable(change.values, "a transition")
                try:
                    for _attempt in range(5):
                        job = _transition_in(
                            conn, change.job_id, change.action, row_def, actor, change.reason,
                            change.data, extra, change.expect_reason,
                        )  # fmt: skip
                        if job is not None:
                            outcomes[change.job_id] = job
                            break
                    else:
                        raise Conflict(f"job {change.job_id} keeps changing; try again")
                except (Conflict, NotFound) as exc:
                    outcomes[change.job_id] = exc
        return outcomes

    def claim_queued(
        self,
        *,
        executor: str,
        action: Action,
        limit: int,
        actor: str,
        values_for: Callable[[str], Mapping[str, Any]],
        reason: str | None = None,
        from_reason: str = Reason.CAPACITY.value,
    ) -> builtins.list[Job]:
        """Claim up to ``limit`` QUEUED jobs of ``executor`` whose reason is ``from_reason``,
        oldest first, with ``action``, in ONE transaction (the engine's grouped dispatch).

        Every job is changed by the same checked ``UPDATE ... WHERE id AND phase AND reason``
        as ``transition`` (plus its event), so a job claimed by another jobmill process sharing
        the database is skipped, never claimed twice. On PostgreSQL the candidates are locked
        with ``FOR UPDATE SKIP LOCKED``: concurrent claimers split the queue instead of waiting
        for each other; SQLite serialises writers (``BEGIN IMMEDIATE``). ``values_for(job_id)``
        gives the columns set on each claimed job (node, token hash)."""
        row_def = transition(action)
        if Phase.QUEUED not in row_def.sources or limit <= 0:
            return []
        claimed: builtins.list[Job] = []
        event_rows: builtins.list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            query = _CLAIM_CANDIDATES
            if conn.dialect.name == "postgresql":
                query = _CLAIM_CANDIDATES_LOCKED
            candidates = conn.execute(
                query, {"p_executor": executor, "p_reason": from_reason, "p_limit": limit}
            ).all()
            now = utcnow()
            for candidate in candidates:
                changes = _phase_columns(row_def, reason, candidate.started_at, now)
                changes.update(_settable(values_for(candidate.id), "a claim"))
                statement = _update_statement(frozenset(changes), True, True, reason_checked=True)
                params = {f"v_{k}": v for k, v in changes.items()}
                params.update(p_id=candidate.id, p_phase=Phase.QUEUED.value, p_reason=from_reason)
                result = conn.execute(statement, params).first()
                if result is None:
                    continue  # taken by another process meanwhile
                job = _job(result)
                claimed.append(job)
                event_rows.append(
                    {
                        "job_id": job.id,
                        "n": job.event_count,
                        "at": now,
                        "name": action.value,
                        "from_phase": Phase.QUEUED.value,
                        "to_phase": row_def.target.value,
                        "actor": actor,
                        "data": {"reason": reason} if reason else {},
                    }
                )
            if event_rows:
                conn.execute(_INSERT_EVENT, event_rows)
        return claimed

    def record_many(self, name: str, entries: Mapping[str, Entry], *, actor: str) -> dict[str, Job]:
        """``record`` for many jobs in ONE transaction: by job id, the event's data and the
        columns to set. Returns the changed jobs; a job that no longer exists is left out."""
        changed: dict[str, Job] = {}
        if not entries:
            return changed
        now = utcnow()
        event_rows: builtins.list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            for job_id, entry in entries.items():
                columns = {**_settable(entry.values, "record"), "updated_at": now}
                statement = _update_statement(frozenset(columns), False, True)
                params = {f"v_{k}": v for k, v in columns.items()} | {"p_id": job_id}
                result = conn.execute(statement, params).first()
                if result is None:
                    continue
                job = changed[job_id] = _job(result)
                event_rows.append(_note_row(job, now, name, actor, entry.data))
            if event_rows:
                conn.execute(_INSERT_EVENT, event_rows)
        return changed

    def record(
        self,
        job_id: str,
        name: str,
        *,
        actor: str,
        data: Mapping[str, Any] | None = None,
        values: Mapping[str, Any] | None = None,
        phases: Iterable[Phase] | None = None,
    ) -> Job:
        """Append an event that does not change the phase, optionally setting columns.

        With ``phases``, the change applies only while the job is in one of them (checked in the
        same ``UPDATE``); otherwise it raises ``Conflict`` and writes nothing.
        """
        extra = _settable(values, "record")
        now = utcnow()
        allowed = [p.value for p in phases] if phases is not None else None
        with self.engine.begin() as conn:
            columns = {**extra, "updated_at": now}
            params = {f"v_{k}": v for k, v in columns.items()} | {"p_id": job_id}
            if allowed is None:
                statement = _update_statement(frozenset(columns), False, True)
            else:
                statement = (
                    update(jobs)
                    .where(jobs.c.id == bindparam("p_id"), jobs.c.phase.in_(allowed))
                    .values(
                        {k: bindparam(f"v_{k}") for k in columns}
                        | {"event_count": jobs.c.event_count + 1}
                    )
                    .returning(jobs)
                )
            result = conn.execute(statement, params).first()
            if result is None:
                current = conn.execute(select(jobs.c.phase).where(jobs.c.id == job_id)).scalar()
                if current is None:
                    raise NotFound(f"no job {job_id}", field="id")
                raise Conflict(
                    f"cannot change a job that is {current} ({name})", phase=current, action=name
                )
            job = _job(result)
            conn.execute(_INSERT_EVENT, _note_row(job, now, name, actor, data))
        return job

    def merge_report(
        self, job_id: str, merge: Any, payload: Mapping[str, Any], *, actor: str
    ) -> dict[str, Any]:
        """Merge ``payload`` into the stored report with ``merge(old, payload)``, atomically.

        Returns the merged report. A job that has ended takes no more reports (409): its token
        stopped working when it ended."""
        now = utcnow()
        with self.engine.begin() as conn:
            query = _GET_REPORT_FOR_UPDATE if conn.dialect.name == "postgresql" else _GET_REPORT
            current = conn.execute(query, {"p_id": job_id}).first()
            if current is None:
                raise NotFound(f"no job {job_id}", field="id")
            if Phase(current.phase) in TERMINAL:
                raise Conflict(
                    f"job {job_id} has ended ({current.phase}): its token no longer reports",
                    field="token",
                )
            report = merge(dict(current.report or {}), payload)
            statement = _update_statement(frozenset({"report", "updated_at"}), False, False)
            n = conn.execute(
                statement, {"p_id": job_id, "v_report": report, "v_updated_at": now}
            ).scalar_one()
            conn.execute(
                _INSERT_EVENT,
                {
                    "job_id": job_id,
                    "n": n,
                    "at": now,
                    "name": "report",
                    "from_phase": None,
                    "to_phase": None,
                    "actor": actor,
                    "data": dict(payload),
                },
            )
        return report

    def check_job_token(self, job_id: str, token: str) -> bool:
        """Whether ``token`` is the job's own and the job has not ended (a job's token stops
        working when the job ends)."""
        with self.read_engine.connect() as conn:
            row = conn.execute(_GET_TOKEN, {"p_id": job_id}).first()
        if row is None or not isinstance(row.token_hash, str) or Phase(row.phase) in TERMINAL:
            return False
        return hmac.compare_digest(row.token_hash, hash_secret(token))

    def delete(self, job_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(events).where(events.c.job_id == job_id))
            result = conn.execute(delete(jobs).where(jobs.c.id == job_id))
            if result.rowcount == 0:
                raise NotFound(f"no job {job_id}", field="id")
