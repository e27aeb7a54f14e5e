"""JobStore: the only code that reads and writes jobs and their events.

Rule 1 of the design: a phase changes only through ``transition`` (and its batch forms), a
checked ``UPDATE ... WHERE id = :id AND phase = :seen [AND reason = :seen_reason]`` plus its event
row, in one transaction; the rows themselves are built by ``storage.writes``. A lost race is
retried against the new phase, and an action the transition table refuses raises ``Conflict``;
nothing is ever overwritten blindly.
"""

from __future__ import annotations

import builtins
import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Connection,
    Engine,
    Row,
    Select,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    union_all,
    update,
)

from jobmill.domain.errors import Conflict, Forbidden, NotFound
from jobmill.domain.jobs import Event, Job, JobFilter, JobRef, NewJob, iso, utcnow
from jobmill.domain.lifecycle import (
    TERMINAL,
    Action,
    Phase,
    Reason,
    allowed,
    reason_allowed,
    reason_of,
    transition,
)
from jobmill.storage import idempotency, links
from jobmill.storage.db import aware
from jobmill.storage.group import GroupCommit, Write
from jobmill.storage.tables import events, jobs
from jobmill.storage.tags import TagStore, stale, tag_seq, tagged
from jobmill.storage.tokens import TokenStore, hash_secret
from jobmill.storage.writes import (
    INSERT_EVENTS,
    Found,
    apply,
    check,
    created_event_row,
    event_row,
    insert_jobs,
    job_from_row,
    job_row,
    note_row,
    settable,
    transition_in,
    update_statement,
)

MAX_PAGE = 1000


# Statements built once: building SQLAlchemy statements per call costs more than running them.
_GET_JOB = select(jobs).where(jobs.c.id == bindparam("p_id"))
_GET_STATES = select(jobs.c.id, jobs.c.phase, jobs.c.reason, jobs.c.started_at).where(
    jobs.c.id.in_(bindparam("p_ids", expanding=True))
)
_GET_TOKEN = select(jobs.c.token_hash, jobs.c.phase).where(jobs.c.id == bindparam("p_id"))
_GET_REPORT = select(jobs.c.report, jobs.c.phase, jobs.c.token_hash).where(
    jobs.c.id == bindparam("p_id")
)
_GET_REPORT_FOR_UPDATE = _GET_REPORT.with_for_update()
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


def _deleted_data(job: Job) -> dict[str, Any]:
    """What a deleted job was, kept in its ``deleted`` event once its row is gone."""
    return {
        "phase": job.phase.value,
        "reason": job.reason,
        "type": job.type,
        "owner": job.owner,
        "run_id": job.run_id,
        "parameters": job.parameters,
        "extra_parameters": job.extra_parameters,
        "report": job.report,
        "executor": job.executor,
        "native_id": job.native_id,
        "node": job.node,
        "exit_code": job.exit_code,
        "error": job.error,
        "parent_id": job.parent_id,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "ended_at": iso(job.ended_at),
    }


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
        self.tags = TagStore(engine, self.read_engine)
        self.links = links.LinkStore(engine, self.read_engine)
        self.group = GroupCommit(engine)  # writes of many requests in one transaction

    # -- creation ---------------------------------------------------------------------------

    def create(self, new_jobs: Sequence[NewJob], *, actor: str, with_seq: bool = True) -> list[Job]:
        """Insert jobs with their ``created`` events, all or nothing.

        ``with_seq=False`` skips reading back the sequence numbers of a batch (faster; the
        returned jobs then carry ``seq`` 0). Jobs created ``after`` others, or as sub-jobs,
        are linked in the same transaction (``storage.links``)."""
        if not new_jobs:
            return []
        with self.engine.begin() as conn:
            return self._create_in(conn, new_jobs, actor, with_seq)

    def create_write(
        self, new_jobs: Sequence[NewJob], *, actor: str, with_seq: bool = True
    ) -> Write[list[Job]]:
        """``create`` as a write for the group commit (``storage.group``)."""
        return Write(
            work=lambda conn: self._create_in(conn, new_jobs, actor, with_seq),
            alone=lambda: self.create(new_jobs, actor=actor, with_seq=with_seq),
        )

    def create_once_write(
        self, new_jobs: Sequence[NewJob], *, actor: str, key: idempotency.IdempotencyKey
    ) -> Write[idempotency.Created]:
        """``create_write`` under an idempotency key: the job ``key`` already names, else new
        jobs with the key recorded in their transaction (``storage.idempotency``)."""
        return idempotency.create_write(self.engine, self._create_in, new_jobs, actor, key)

    @staticmethod
    def _create_in(
        conn: Connection, new_jobs: Sequence[NewJob], actor: str, with_seq: bool
    ) -> list[Job]:
        now = utcnow()
        linked = any(new.after or new.parent_id for new in new_jobs)
        if linked:
            new_jobs = links.prepare_new(conn, new_jobs)
        job_rows = []
        event_rows = []
        for new in new_jobs:
            job_rows.append(job_row(new, now))
            extra = {"after": list(new.after)} if new.after else None
            event_rows.append(created_event_row(new, now, actor, extra))
        created = insert_jobs(conn, job_rows, event_rows, with_seq=with_seq)
        if linked:
            links.insert_new(conn, new_jobs, now)
            for job, new in zip(created, new_jobs, strict=True):
                job.after = tuple(sorted(new.after))  # as the job JSON lists them
        return created

    # -- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self.read_engine.connect() as conn:
            row = conn.execute(_GET_JOB, {"p_id": job_id}).first()
        return job_from_row(row) if row else None

    def by_cluster_id(self, cluster: int, *, owner: str | None = None) -> Job | None:
        """The newest job (of ``owner``) whose native id carries this number: an HTCondor
        cluster (``N.0``), a batch job (``N``) or a local process (``N@<start>``); the OCPS
        prototype's lookup by cluster id."""
        text = str(int(cluster))
        query = select(jobs).where(
            or_(
                jobs.c.native_id.in_([text, f"{text}.0"]),
                jobs.c.native_id.like(f"{text}.%"),
                jobs.c.native_id.like(f"{text}@%"),
            )
        )
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self.read_engine.connect() as conn:
            row = conn.execute(query.order_by(jobs.c.seq.desc()).limit(1)).first()
        return job_from_row(row) if row else None

    def require(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", field="id")
        return job

    def list(
        self, flt: JobFilter, *, limit: int = 100, before_seq: int | None = None
    ) -> builtins.list[Job]:
        """Jobs matching ``flt``, newest first, at most ``limit``, older than ``before_seq``."""
        dialect = self.read_engine.dialect.name
        query = self._list_query(select(jobs), flt, limit, before_seq, dialect)
        with self.read_engine.connect() as conn:
            return [job_from_row(row) for row in conn.execute(query)]

    def list_refs(self, flt: JobFilter, *, limit: int = 100) -> builtins.list[JobRef]:
        """Like ``list``, only the columns of a ``JobRef``."""
        columns = select(
            jobs.c.id, jobs.c.phase, jobs.c.run_id, jobs.c.owner, jobs.c.created_at, jobs.c.seq
        )
        query = self._list_query(columns, flt, limit, None, self.read_engine.dialect.name)
        with self.read_engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            JobRef(r.id, Phase(r.phase), r.run_id, r.owner, aware(r.created_at) or utcnow(), r.seq)
            for r in rows
        ]

    @staticmethod
    def _list_query(
        query: Select[Any],
        flt: JobFilter,
        limit: int,
        before_seq: int | None,
        dialect: str = "sqlite",
    ) -> Select[Any] | CompoundSelect:
        """Newest first, each filter served by an index ending in ``seq`` (``jobs (phase,
        seq)``, ``(owner, phase, seq)``, ``(type, phase, seq)`` ...), so a page reads about a
        page of rows whatever the table's size (``tests/unit/test_query_plans.py``). A tag's
        jobs come from ``job_tags (tag, seq)`` newest first, each job then by its key."""
        conditions: builtins.list[ColumnElement[bool]] = []
        phases = sorted({p.value for p in flt.phases})
        # The order: the tag's copy of ``seq`` when a tag is given (its index), else the job's;
        # bounds on both (PostgreSQL does not carry them across the join).
        seqs = [jobs.c.seq, tag_seq] if flt.tag else [jobs.c.seq]
        if len(phases) == 1:
            conditions.append(jobs.c.phase == phases[0])
        elif phases and flt.tag:
            conditions.append(jobs.c.phase.in_(phases))  # a filter on the tag's jobs
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
        if flt.id_prefix:
            # A range the unique index on ``id`` serves, then the exact prefix.
            last = flt.id_prefix[-1]
            upper = flt.id_prefix[:-1] + chr(ord(last) + 1)
            conditions.append(jobs.c.id >= flt.id_prefix)
            conditions.append(jobs.c.id < upper)
            conditions.append(jobs.c.id.startswith(flt.id_prefix, autoescape=True))
        if flt.tag:
            query = tagged(query, flt.tag)
        for seq in seqs:
            if flt.seq_min is not None:
                conditions.append(seq >= flt.seq_min)
            if flt.seq_max is not None:
                conditions.append(seq <= flt.seq_max)
            if before_seq is not None:
                conditions.append(seq < before_seq)
        if conditions:
            query = query.where(and_(*conditions))
        # One more than a page is allowed, so a caller can tell whether another page follows.
        limit = max(1, min(limit, MAX_PAGE + 1))
        if len(phases) > 1 and not flt.tag:
            # ``phase IN (...)`` would read every matching row and sort them: one leg per phase
            # instead, each newest first from its index, merged until the page is full (SQLite
            # ``MERGE (UNION ALL)``; PostgreSQL's ``Merge Append`` needs each leg ordered and
            # limited, SQLite would sort such legs).
            legs = [query.where(jobs.c.phase == phase) for phase in phases]
            if dialect != "sqlite":
                legs = [leg.order_by(jobs.c.seq.desc()).limit(limit) for leg in legs]
            merged = union_all(*legs)
            return merged.order_by(merged.selected_columns.seq.desc()).limit(limit)
        return query.order_by(seqs[-1].desc()).limit(limit)

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
            return [job_from_row(row) for row in conn.execute(query)]

    def due_for_destruction(self, now: datetime, *, limit: int = 100) -> builtins.list[Job]:
        """Jobs whose destruction time has passed and that are not archived yet."""
        query = (
            select(jobs)
            .where(jobs.c.destruction_at <= now, jobs.c.phase != Phase.ARCHIVED.value)
            .order_by(jobs.c.destruction_at)
            .limit(limit)
        )
        with self.read_engine.connect() as conn:
            return [job_from_row(row) for row in conn.execute(query)]

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
        Raises ``NotFound`` or ``Conflict`` (the table does not allow the action in the job's
        current phase and reason).
        """
        extra = settable(values, "a transition")
        for _attempt in range(5):
            with self.engine.begin() as conn:
                job = transition_in(
                    conn, job_id, action, actor=actor, reason=reason, data=data, values=extra,
                    expect_reason=expect_reason,
                )  # fmt: skip
            if job is not None:
                return job
        raise Conflict(f"job {job_id} keeps changing; try again", action=action.value)

    def transition_many(
        self, changes: Sequence[Change], *, actor: str
    ) -> dict[str, Job | Conflict | NotFound]:
        """Apply several transitions in ONE transaction (jobs that started or ended together).

        Each change is checked like ``transition``; one that is illegal or whose job is gone
        does not stop the others. The jobs' states are read with one query and the changes
        applied with one ``apply`` per action and reason (one insert of their events, one
        release of the jobs that waited for them). A job may appear more than once: its
        changes apply in order. Returns, by job id, the changed job (after its last change) or
        the error."""
        outcomes: dict[str, Job | Conflict | NotFound] = {}
        if not changes:
            return outcomes
        # A job changed twice (started and ended together) has its second change in a second
        # round: each round is grouped, the rounds go in order.
        rounds: builtins.list[builtins.list[Change]] = []
        count: dict[str, int] = {}
        for change in changes:
            n = count[change.job_id] = count.get(change.job_id, -1) + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(change)
        with self.engine.begin() as conn:
            for pending in rounds:
                for _attempt in range(5):
                    pending = self._transition_group(conn, pending, actor, outcomes)
                    if not pending:
                        break
                for change in pending:
                    outcomes[change.job_id] = Conflict(
                        f"job {change.job_id} keeps changing; try again"
                    )
        return outcomes

    @staticmethod
    def _transition_group(
        conn: Connection,
        changes: Sequence[Change],
        actor: str,
        outcomes: dict[str, Job | Conflict | NotFound],
    ) -> builtins.list[Change]:
        """One pass of ``transition_many``: the changes whose job changed meanwhile (to try
        again) are returned."""
        states = {
            row.id: row for row in conn.execute(_GET_STATES, {"p_ids": [c.job_id for c in changes]})
        }
        groups: dict[tuple[Action, str | None], builtins.list[tuple[Change, Found]]] = {}
        for change in changes:
            row = states.get(change.job_id)
            if row is None:
                outcomes[change.job_id] = NotFound(f"no job {change.job_id}", field="id")
                continue
            found = Found(change.job_id, Phase(row.phase), row.reason, aware(row.started_at))
            try:
                if change.expect_reason is not None and row.reason != change.expect_reason:
                    raise Conflict(
                        f"cannot {change.action.value} a job that is {row.phase} "
                        f"({row.reason or 'no reason'})",
                        phase=row.phase,
                        action=change.action.value,
                    )
                check(change.action, found, change.reason)
            except Conflict as exc:
                outcomes[change.job_id] = exc
                continue
            groups.setdefault((change.action, change.reason), []).append((change, found))
        again: builtins.list[Change] = []
        for (action, reason), members in groups.items():
            data = {change.job_id: change.data for change, _ in members}
            values = {change.job_id: change.values for change, _ in members}
            changed = apply(
                conn,
                action,
                [found for _, found in members],
                actor=actor,
                reason=reason,
                data_for=data.__getitem__,
                values_for=values.__getitem__,
            )
            for job in changed.jobs:
                outcomes[job.id] = job
            again += [change for change, _ in members if change.job_id not in outcomes]
        return again

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
        after = reason_of(transition(action).target, reason)
        if limit <= 0 or not (
            allowed(Phase.QUEUED, action) and reason_allowed(action, from_reason, after)
        ):
            return []
        with self.engine.begin() as conn:
            query = _CLAIM_CANDIDATES
            if conn.dialect.name == "postgresql":
                query = _CLAIM_CANDIDATES_LOCKED
            candidates = conn.execute(
                query, {"p_executor": executor, "p_reason": from_reason, "p_limit": limit}
            ).all()
            found = [Found(c.id, Phase.QUEUED, from_reason, c.started_at) for c in candidates]
            # A job taken by another process meanwhile no longer matches: it is left out.
            changed = apply(conn, action, found, actor=actor, reason=reason, values_for=values_for)
        return changed.jobs

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
                columns = {**settable(entry.values, "record"), "updated_at": now}
                statement = update_statement(frozenset(columns), False, True)
                params = {f"v_{k}": v for k, v in columns.items()} | {"p_id": job_id}
                result = conn.execute(statement, params).first()
                if result is None:
                    continue
                job = changed[job_id] = job_from_row(result)
                event_rows.append(note_row(job, now, name, actor, entry.data))
            if event_rows:
                conn.execute(INSERT_EVENTS, event_rows)
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
        version: int | None = None,
    ) -> Job:
        """Append an event that does not change the phase, optionally setting columns.

        With ``phases``, the change applies only while the job is in one of them; with
        ``version``, only while the job's ``event_count`` is still that (nothing happened to it
        since it was read: no lost update). Both are checked in the same ``UPDATE``; otherwise
        it raises ``Conflict`` and writes nothing.
        """
        extra = settable(values, "record")
        now = utcnow()
        only_in = [p.value for p in phases] if phases is not None else None
        with self.engine.begin() as conn:
            columns = {**extra, "updated_at": now}
            params = {f"v_{k}": v for k, v in columns.items()} | {"p_id": job_id}
            if only_in is None and version is None:
                statement = update_statement(frozenset(columns), False, True)
            else:
                checks = [jobs.c.id == bindparam("p_id")]
                if only_in is not None:
                    checks.append(jobs.c.phase.in_(only_in))
                if version is not None:
                    checks.append(jobs.c.event_count == version)
                statement = (
                    update(jobs)
                    .where(*checks)
                    .values(
                        {k: bindparam(f"v_{k}") for k in columns}
                        | {"event_count": jobs.c.event_count + 1}
                    )
                    .returning(jobs)
                )
            result = conn.execute(statement, params).first()
            if result is None:
                now_row = conn.execute(
                    select(jobs.c.phase, jobs.c.event_count).where(jobs.c.id == job_id)
                ).first()
                if now_row is None:
                    raise NotFound(f"no job {job_id}", field="id")
                current = now_row.phase
                if (
                    version is not None
                    and now_row.event_count != version
                    and (only_in is None or current in only_in)
                ):
                    raise stale(job_id, version, now_row.event_count, name)
                raise Conflict(
                    f"cannot change a job that is {current} ({name})", phase=current, action=name
                )
            job = job_from_row(result)
            conn.execute(INSERT_EVENTS, note_row(job, now, name, actor, data))
        return job

    def merge_report(
        self,
        job_id: str,
        merge: Any,
        payload: Mapping[str, Any],
        *,
        actor: str,
        token: str | None = None,
    ) -> dict[str, Any]:
        """Merge ``payload`` into the stored report with ``merge(old, payload)``, atomically.

        Returns the merged report. With ``token``, the post is the job's own: a token that is
        not the job's, or the token of a job that has ended (it stopped working then), is a 403
        read in the same statement as the report. Without, a job that has ended is a 409."""
        with self.engine.begin() as conn:
            return self._merge_report_in(conn, job_id, merge, payload, actor, token)

    def merge_report_write(
        self,
        job_id: str,
        merge: Any,
        payload: Mapping[str, Any],
        *,
        actor: str,
        token: str | None = None,
    ) -> Write[dict[str, Any]]:
        """``merge_report`` as a write for the group commit (``storage.group``)."""
        return Write(
            work=lambda conn: self._merge_report_in(conn, job_id, merge, payload, actor, token),
            alone=lambda: self.merge_report(job_id, merge, payload, actor=actor, token=token),
        )

    @staticmethod
    def _merge_report_in(
        conn: Connection,
        job_id: str,
        merge: Any,
        payload: Mapping[str, Any],
        actor: str,
        token: str | None,
    ) -> dict[str, Any]:
        query = _GET_REPORT_FOR_UPDATE if conn.dialect.name == "postgresql" else _GET_REPORT
        current = conn.execute(query, {"p_id": job_id}).first()
        if token is not None and (
            current is None
            or not isinstance(current.token_hash, str)
            or not hmac.compare_digest(current.token_hash, hash_secret(token))
            or Phase(current.phase) in TERMINAL
        ):
            raise Forbidden("this token is not valid for this job", field="token")
        if current is None:
            raise NotFound(f"no job {job_id}", field="id")
        if Phase(current.phase) in TERMINAL:
            raise Conflict(
                f"job {job_id} has ended ({current.phase}): its token no longer reports",
                field="token",
            )
        report = merge(dict(current.report or {}), payload)
        now = utcnow()
        statement = update_statement(frozenset({"report", "updated_at"}), False, False)
        n = conn.execute(
            statement, {"p_id": job_id, "v_report": report, "v_updated_at": now}
        ).scalar_one()
        conn.execute(INSERT_EVENTS, event_row(job_id, n, now, "report", actor, payload))
        return cast(dict[str, Any], report)

    def check_job_token(self, job_id: str, token: str) -> bool:
        """Whether ``token`` is the job's own and the job has not ended (a job's token stops
        working when the job ends)."""
        with self.read_engine.connect() as conn:
            row = conn.execute(_GET_TOKEN, {"p_id": job_id}).first()
        if row is None or not isinstance(row.token_hash, str) or Phase(row.phase) in TERMINAL:
            return False
        return hmac.compare_digest(row.token_hash, hash_secret(token))

    def delete(self, job_id: str, *, actor: str = "jobmill") -> None:
        """Remove the job (UWS ``DELETE``): it is no longer found (404) nor listed, and its
        data condition goes with it, but its history stays for audit: a last ``deleted`` event,
        which keeps what the job was, closes its events, which are not removed."""
        with self.engine.begin() as conn:
            statement = update_statement(frozenset({"updated_at"}), False, True)
            row = conn.execute(statement, {"p_id": job_id, "v_updated_at": utcnow()}).first()
            if row is None:
                raise NotFound(f"no job {job_id}", field="id")
            job = job_from_row(row)
            kept = _deleted_data(job)
            at = job.updated_at or utcnow()
            conn.execute(
                INSERT_EVENTS, event_row(job.id, job.event_count, at, "deleted", actor, kept)
            )
            links.forget(conn, job_id)  # its dependents no longer wait for it
            conn.execute(delete(jobs).where(jobs.c.id == job_id))
