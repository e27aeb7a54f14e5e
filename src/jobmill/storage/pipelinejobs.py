"""PipelineStore: the curation status and history of PipelineJobs (``domain.pipelinejobs``).

An accepted event is one transaction: the lifecycle actions it applies to the job (through
``storage.writes.apply``, the one write path of phases), the checked change of the curation
status (``UPDATE ... WHERE job_id AND curation IS <as found>``) and its history row. The history
row's uuid is unique: a delivery repeated with the same event uuid finds it and changes nothing
(and two deliveries racing each other end with one row, the other one rolled back).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from jobmill.domain.errors import Conflict, NotFound
from jobmill.domain.jobs import Job, NewJob, utcnow
from jobmill.domain.lifecycle import ENDED, Phase, Reason, transition
from jobmill.domain.pipelinejobs import (
    HistoryEntry,
    Nonce,
    PipelineEvent,
    PipelineStatus,
    State,
    step,
)
from jobmill.storage.cursors import EventCursor
from jobmill.storage.db import aware
from jobmill.storage.group import GroupCommit, Write
from jobmill.storage.jobs import JobStore
from jobmill.storage.tables import (
    events,
    jobs,
    pipeline_events,
    pipeline_jobs,
    pipeline_nonces,
)
from jobmill.storage.writes import Found, apply, created_event_row, insert_jobs, job_row

CURSOR = "pipelinejobs"
"""The name of the PipelineJobs watcher's row in ``rule_cursors``."""

_STATUS = (
    select(
        jobs.c.id,
        jobs.c.owner,
        jobs.c.type,
        jobs.c.phase,
        jobs.c.reason,
        jobs.c.started_at,
        jobs.c.executor,
        pipeline_jobs.c.curation,
        pipeline_jobs.c.last_event,
        pipeline_jobs.c.indexer_job,
        pipeline_jobs.c.token_hash,
    )
    .select_from(jobs.join(pipeline_jobs, pipeline_jobs.c.job_id == jobs.c.id))
    .where(jobs.c.id == bindparam("p_id"))
)
_STATUS_LOCKED = _STATUS.with_for_update(of=jobs)
# The status with what only the record shows (the fingerprint, the re-run, the token's state).
_RECORD = _STATUS.add_columns(pipeline_jobs.c.fingerprint, pipeline_jobs.c.superseded_by)
_RECORD_LOCKED = _RECORD.with_for_update(of=jobs)
_HOLDER = select(pipeline_jobs.c.job_id).where(pipeline_jobs.c.fingerprint == bindparam("p_fp"))
_DUPLICATE = select(pipeline_events).where(pipeline_events.c.uuid == bindparam("p_uuid"))
_INSERT_HISTORY = insert(pipeline_events).returning(pipeline_events.c.seq)
_CURATION_VALUES: dict[str, Any] = {
    "curation": bindparam("v_curation"),
    "last_event": bindparam("v_last_event"),
    "updated_at": bindparam("v_updated_at"),
}
# The checked change of the curation status: it matches only while it is as it was found.
_SET_CURATION = {
    True: update(pipeline_jobs)
    .where(pipeline_jobs.c.job_id == bindparam("p_id"), pipeline_jobs.c.curation.is_(None))
    .values(_CURATION_VALUES),
    False: update(pipeline_jobs)
    .where(
        pipeline_jobs.c.job_id == bindparam("p_id"),
        pipeline_jobs.c.curation == bindparam("p_curation"),
    )
    .values(_CURATION_VALUES),
}

Authorise = Callable[[PipelineStatus, str | None], str]
"""Checks the caller against the job's status and its update token's hash (or raises), and
returns the actor the event is recorded for."""


class _Race(Exception):
    """The job changed between reading and the checked update: look again."""


def _status(row: Any) -> PipelineStatus:
    return PipelineStatus(
        job_id=row.id,
        owner=row.owner,
        type=row.type,
        phase=Phase(row.phase),
        executor=row.executor,
        curation=State(row.curation) if row.curation else None,
        last_event=row.last_event,
        indexer_job=row.indexer_job,
    )


@dataclass(frozen=True)
class PipelineRecord(PipelineStatus):
    """A PipelineJob's status as its own record shows it: its fingerprint (None for a job
    created before fingerprints, or once handed over to a re-run), the re-run it was handed
    over to, and whether its update token is still valid (not revoked)."""

    fingerprint: str | None = None
    superseded_by: str | None = None
    update_token: bool = True


def _record(row: Any) -> PipelineRecord:
    return PipelineRecord(
        **vars(_status(row)),
        fingerprint=row.fingerprint,
        superseded_by=row.superseded_by,
        update_token=row.token_hash is not None,
    )


def duplicate(found: PipelineRecord, fingerprint: str, rerun: frozenset[State]) -> Conflict:
    """The 409 of a create whose fingerprint ``found`` holds: it names the job and its state."""
    states = ", ".join(s.value for s in State if s in rerun)
    again = f"; a re-run is created once it is {states}" if states else ""
    return Conflict(
        f"PipelineJob {found.job_id} ({found.state.value}) has the same type, parameters and "
        f"parents: a second create is a duplicate{again}",
        field="fingerprint",
        uuid=found.job_id,
        state=found.state.value,
        fingerprint=fingerprint,
    )


def _nonce(row: Any) -> Nonce:
    return Nonce(
        id=row.id,
        job_id=row.job_id,
        events=tuple(row.events or ()),
        created_by=row.created_by,
        created_at=aware(row.created_at) or utcnow(),
        expires_at=aware(row.expires_at) or utcnow(),
        revoked_at=aware(row.revoked_at),
    )


def _entry(row: Row[Any]) -> HistoryEntry:
    m = row._mapping
    return HistoryEntry(
        job_id=m["job_id"],
        uuid=m["uuid"],
        at=aware(m["at"]) or utcnow(),
        name=m["name"],
        state=m["state"],
        actor=m["actor"],
        data=m["data"] or {},
        seq=m["seq"],
    )


@dataclass(frozen=True)
class Applied:
    """An event's outcome: the job's status after it, its history entry, and whether it had
    been recorded before (a repeated delivery: nothing changed this time)."""

    status: PipelineStatus
    entry: HistoryEntry
    duplicate: bool = False


@dataclass(frozen=True)
class PhaseChange:
    """An ``events`` row that moved a job to a new phase, as the PipelineJobs watcher reads it."""

    seq: int
    job_id: str
    type: str
    executor: str
    to_phase: Phase
    at: datetime
    parent: str | None = None
    """For an indexer job: the job it indexes."""


class PipelineStore:
    """PipelineJobs rows beside the jobs of a ``JobStore``."""

    def __init__(self, store: JobStore) -> None:
        self.jobs = store
        self.engine = store.engine
        self.read_engine = store.read_engine
        self._cursor = EventCursor(self.engine, self.read_engine, CURSOR)

    # -- creation ---------------------------------------------------------------------------

    def create(
        self,
        new: NewJob,
        *,
        token_hash: str,
        actor: str,
        event_uuid: str,
        data: Mapping[str, Any],
        fingerprint: str | None = None,
        rerun: frozenset[State] = frozenset(),
    ) -> tuple[Job, HistoryEntry, str | None]:
        """Insert the job, its PipelineJobs row and its ``create`` history entry, together;
        returns them and the job it is a re-run of (or None).

        A ``fingerprint`` is taken in the same transaction: a job holding it already makes the
        create a duplicate (``Conflict`` naming that job; nothing is written), unless its state
        is in ``rerun``: then it hands the fingerprint over (``superseded_by``). The unique
        index settles two creates racing each other: one wins, the other one is a duplicate."""
        for _attempt in range(5):
            now = utcnow()
            try:
                with self.engine.begin() as conn:
                    replaced = None
                    if fingerprint is not None:
                        replaced = self._claim(conn, fingerprint, new.id, rerun)
                    created = insert_jobs(
                        conn, [job_row(new, now)], [created_event_row(new, now, actor)],
                        with_seq=True,
                    )[0]  # fmt: skip
                    conn.execute(
                        insert(pipeline_jobs).values(
                            job_id=new.id,
                            curation=None,
                            last_event=PipelineEvent.CREATE.value,
                            token_hash=token_hash,
                            created_at=now,
                            updated_at=now,
                            fingerprint=fingerprint,
                        )
                    )
                    entry = self._history(
                        conn, new.id, event_uuid, now, PipelineEvent.CREATE.value,
                        State.CREATED, actor, data,
                    )  # fmt: skip
                return created, entry, replaced
            except _Race:
                continue
            except IntegrityError:
                # Another create of the same job committed first (everything here rolled back).
                found = self.holder(fingerprint) if fingerprint is not None else None
                if found is None:
                    raise
                if found.state not in rerun:
                    raise duplicate(found, fingerprint or "", rerun) from None
        raise Conflict("the job's fingerprint keeps changing; try again", field="fingerprint")

    def _claim(
        self, conn: Connection, fingerprint: str, job_id: str, rerun: frozenset[State]
    ) -> str | None:
        """Take ``fingerprint`` for the new job ``job_id``: None when no job holds it; the job
        it is handed over from when that job's state is in ``rerun``; else ``Conflict``."""
        holder = conn.execute(_HOLDER, {"p_fp": fingerprint}).scalar()
        if holder is None:
            return None
        # On PostgreSQL, lock the holder's job row as an event does: its state is final here.
        query = _RECORD_LOCKED if conn.dialect.name == "postgresql" else _RECORD
        row = conn.execute(query, {"p_id": holder}).first()
        if row is None or row.fingerprint != fingerprint:
            raise _Race  # deleted or handed over meanwhile: look again
        found = _record(row)
        if found.state not in rerun:
            raise duplicate(found, fingerprint, rerun)
        handed = conn.execute(
            update(pipeline_jobs)
            .where(pipeline_jobs.c.job_id == holder, pipeline_jobs.c.fingerprint == fingerprint)
            .values(fingerprint=None, superseded_by=job_id)
        )
        if handed.rowcount != 1:
            raise _Race
        return str(holder)

    # -- reading ----------------------------------------------------------------------------

    def status(self, job_id: str) -> PipelineStatus | None:
        """The job's PipelineJobs status, or None when it is not a PipelineJob."""
        with self.read_engine.connect() as conn:
            row = conn.execute(_STATUS, {"p_id": job_id}).first()
        return _status(row) if row is not None else None

    def details(self, job_id: str) -> PipelineRecord | None:
        """The job's status with its fingerprint, re-run and token state (``PipelineRecord``),
        or None when it is not a PipelineJob."""
        with self.read_engine.connect() as conn:
            row = conn.execute(_RECORD, {"p_id": job_id}).first()
        return _record(row) if row is not None else None

    def holder(self, fingerprint: str) -> PipelineRecord | None:
        """The PipelineJob holding ``fingerprint``, if any."""
        with self.read_engine.connect() as conn:
            job_id = conn.execute(_HOLDER, {"p_fp": fingerprint}).scalar()
            row = conn.execute(_RECORD, {"p_id": job_id}).first() if job_id else None
        return _record(row) if row is not None else None

    def set_token(self, job_id: str, token_hash: str | None) -> bool:
        """Replace the hash of the job's update token (None: revoke it); False if the job is no
        PipelineJob. On PostgreSQL the job's row is locked as an event locks it: an event in
        flight commits first, and every event after this commit checks the new hash."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(_STATUS_LOCKED, {"p_id": job_id})
            changed = conn.execute(
                update(pipeline_jobs)
                .where(pipeline_jobs.c.job_id == job_id)
                .values(token_hash=token_hash)
            )
            return changed.rowcount == 1

    def token_hash(self, job_id: str) -> str | None:
        query = select(pipeline_jobs.c.token_hash).where(pipeline_jobs.c.job_id == job_id)
        with self.read_engine.connect() as conn:
            value = conn.execute(query).scalar()
        return value if isinstance(value, str) else None

    def history(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[HistoryEntry]:
        """The job's history, oldest first, after history sequence number ``after``."""
        query = (
            select(pipeline_events)
            .where(pipeline_events.c.job_id == job_id, pipeline_events.c.seq > after)
            .order_by(pipeline_events.c.seq)
            .limit(max(1, min(limit, 1000)))
        )
        with self.read_engine.connect() as conn:
            return [_entry(row) for row in conn.execute(query)]

    def indexed_by(self, indexer_job: str) -> str | None:
        """The job ``indexer_job`` indexes, if it is an indexer job."""
        query = select(pipeline_jobs.c.job_id).where(pipeline_jobs.c.indexer_job == indexer_job)
        with self.read_engine.connect() as conn:
            return conn.execute(query).scalar()

    # -- events -----------------------------------------------------------------------------

    def apply(
        self,
        job_id: str,
        event: PipelineEvent,
        *,
        actor: str,
        event_uuid: str,
        data: Mapping[str, Any],
        authorise: Authorise | None = None,
        named: bool = True,
    ) -> Applied:
        """Apply ``event`` to the job (``domain.pipelinejobs.step``), in one transaction with its
        history entry. Raises ``NotFound``, or ``Conflict`` naming the state and the event (and
        writes nothing). A repeated ``event_uuid`` changes nothing and answers ``duplicate``
        (``named=False``: a fresh random uuid, not looked up first; the unique key still holds).
        ``authorise`` checks the caller against the job as read in the transaction."""
        for _attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    return self._apply_in(
                        conn, job_id, event, actor, event_uuid, data,
                        authorise=authorise, named=named,
                    )  # fmt: skip
            except _Race:
                continue
            except IntegrityError:
                with self.engine.begin() as conn:
                    done = self._duplicate(conn, job_id, event_uuid)
                if done is not None:  # the same event, delivered twice at the same moment
                    return done
                raise
        raise Conflict(f"job {job_id} keeps changing; try again", event=event.value)

    def apply_write(
        self,
        job_id: str,
        event: PipelineEvent,
        *,
        actor: str,
        event_uuid: str,
        data: Mapping[str, Any],
        authorise: Authorise | None = None,
        named: bool = True,
    ) -> Write[Applied]:
        """``apply`` as a write for the group commit (``storage.group``): in a shared
        transaction, or alone (with ``apply``'s retries) when the group fails."""
        return Write(
            work=lambda conn: self._apply_in(
                conn, job_id, event, actor, event_uuid, data, authorise=authorise, named=named
            ),
            alone=lambda: self.apply(
                job_id,
                event,
                actor=actor,
                event_uuid=event_uuid,
                data=data,
                authorise=authorise,
                named=named,
            ),
        )

    @property
    def group(self) -> GroupCommit:
        """The group commit of the job store's writer engine."""
        return self.jobs.group

    def start_index(
        self,
        job_id: str,
        indexer: NewJob,
        *,
        actor: str,
        event_uuid: str,
        data: Mapping[str, Any],
    ) -> Job | None:
        """The job's ``index`` event and its indexer job, in one transaction: the indexer job
        is created only if the event is accepted and its uuid was never recorded. Returns the
        indexer job, or None (indexed before, by this or another process)."""
        for _attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    if conn.dialect.name == "postgresql":
                        # Lock the job's status row first: a process racing for the same index
                        # step waits here, then sees the recorded event (read committed) instead
                        # of creating a second indexer job.
                        conn.execute(_STATUS_LOCKED, {"p_id": job_id})
                    if self._duplicate(conn, job_id, event_uuid) is not None:
                        return None
                    now = utcnow()
                    created = insert_jobs(
                        conn, [job_row(indexer, now)],
                        [created_event_row(indexer, now, actor, {"indexes": job_id})],
                    )[0]  # fmt: skip
                    self._apply_in(
                        conn,
                        job_id,
                        PipelineEvent.INDEX,
                        actor,
                        event_uuid,
                        {**data, "indexer_job": created.id},
                        indexer_job=created.id,
                    )
                    return created
            except _Race:
                continue
            except IntegrityError:
                with self.engine.begin() as conn:
                    if self._duplicate(conn, job_id, event_uuid) is not None:
                        return None
                raise
        raise Conflict(f"job {job_id} keeps changing; try again", event="index")

    def record(
        self, job_id: str, name: str, *, actor: str, event_uuid: str, data: Mapping[str, Any]
    ) -> bool:
        """Append a history entry without checking the table: the run/finish/fail a job that
        jobmill runs emits from its own phases (its state follows its phase already). False
        when ``event_uuid`` was recorded before, or the job is no PipelineJob."""
        try:
            with self.engine.begin() as conn:
                row = conn.execute(_STATUS, {"p_id": job_id}).first()
                if row is None or conn.execute(_DUPLICATE, {"p_uuid": event_uuid}).first():
                    return False
                status = _status(row)
                now = utcnow()
                conn.execute(
                    update(pipeline_jobs)
                    .where(pipeline_jobs.c.job_id == job_id)
                    .values(last_event=name, updated_at=now)
                )
                self._history(conn, job_id, event_uuid, now, name, status.state, actor, data)
                return True
        except IntegrityError:
            return False

    def _duplicate(self, conn: Connection, job_id: str, event_uuid: str) -> Applied | None:
        done = conn.execute(_DUPLICATE, {"p_uuid": event_uuid}).first()
        if done is None:
            return None
        if done.job_id != job_id:
            raise Conflict(
                f"event uuid {event_uuid} was already used for another job", field="uuid"
            )
        row = conn.execute(_STATUS, {"p_id": job_id}).first()
        if row is None:
            raise NotFound(f"no PipelineJob {job_id}", field="uuid")
        return Applied(_status(row), _entry(done), duplicate=True)

    def _apply_in(
        self,
        conn: Connection,
        job_id: str,
        event: PipelineEvent,
        actor: str,
        event_uuid: str,
        data: Mapping[str, Any],
        *,
        indexer_job: str | None = None,
        authorise: Authorise | None = None,
        named: bool = True,
    ) -> Applied:
        query = _STATUS_LOCKED if conn.dialect.name == "postgresql" else _STATUS
        row = conn.execute(query, {"p_id": job_id}).first()
        if row is None:
            raise NotFound(f"no PipelineJob {job_id}", field="uuid")
        found = _status(row)
        if authorise is not None:
            actor = authorise(found, row.token_hash)
        if named:
            done = self._duplicate(conn, job_id, event_uuid)
            if done is not None:
                return done
        change = step(event, found.phase, found.curation, external=found.external)
        phase, reason, started_at = found.phase, row.reason, row.started_at
        for action in change.actions:
            target = transition(action).target
            after = Reason.CAPACITY.value if target is Phase.QUEUED else None
            changed = apply(
                conn,
                action,
                [Found(job_id, phase, reason, started_at)],
                actor=actor,
                reason=after,
                data_for=lambda _job_id: {"pipelinejobs": event.value},
            )
            if not changed.jobs:
                raise _Race
            phase, reason, started_at = target, after, changed.jobs[0].started_at
        now = utcnow()
        params = {
            "p_id": job_id,
            "p_curation": found.curation.value if found.curation is not None else None,
            "v_curation": change.curation.value if change.curation is not None else None,
            "v_last_event": event.value,
            "v_updated_at": now,
        }
        if conn.execute(_SET_CURATION[found.curation is None], params).rowcount != 1:
            raise _Race
        if indexer_job is not None:
            conn.execute(
                update(pipeline_jobs)
                .where(pipeline_jobs.c.job_id == job_id)
                .values(indexer_job=indexer_job)
            )
        entry = self._history(
            conn, job_id, event_uuid, now, event.value, change.target, actor, data
        )
        status = PipelineStatus(
            job_id=job_id,
            owner=found.owner,
            type=found.type,
            phase=phase,
            executor=found.executor,
            curation=change.curation,
            last_event=event.value,
            indexer_job=indexer_job or found.indexer_job,
        )
        return Applied(status, entry)

    @staticmethod
    def _history(
        conn: Connection,
        job_id: str,
        event_uuid: str,
        at: datetime,
        name: str,
        state: State,
        actor: str,
        data: Mapping[str, Any],
    ) -> HistoryEntry:
        values = {
            "job_id": job_id,
            "uuid": event_uuid,
            "at": at,
            "name": name,
            "state": state.value,
            "actor": actor,
            "data": dict(data),
        }
        seq = conn.execute(_INSERT_HISTORY, values)
        return HistoryEntry(
            job_id, event_uuid, at, name, state.value, actor, dict(data), seq=int(seq.scalar_one())
        )

    # -- nonces ------------------------------------------------------------------------------

    def add_nonce(
        self,
        job_id: str,
        nonce_hash: str,
        *,
        events: tuple[str, ...],
        created_by: str,
        expires_at: datetime,
    ) -> Nonce:
        now = utcnow()
        values = {
            "job_id": job_id,
            "nonce_hash": nonce_hash,
            "events": list(events),
            "created_by": created_by,
            "created_at": now,
            "expires_at": expires_at,
        }
        with self.engine.begin() as conn:
            nonce_id = conn.execute(
                insert(pipeline_nonces).returning(pipeline_nonces.c.id), values
            ).scalar_one()
        return Nonce(int(nonce_id), job_id, events, created_by, now, expires_at)

    def nonce(self, nonce_hash: str) -> Nonce | None:
        query = select(pipeline_nonces).where(pipeline_nonces.c.nonce_hash == nonce_hash)
        with self.read_engine.connect() as conn:
            row = conn.execute(query).first()
        return _nonce(row) if row is not None else None

    def nonces(self, job_id: str) -> list[Nonce]:
        query = (
            select(pipeline_nonces)
            .where(pipeline_nonces.c.job_id == job_id)
            .order_by(pipeline_nonces.c.id)
        )
        with self.read_engine.connect() as conn:
            return [_nonce(row) for row in conn.execute(query)]

    def revoke_nonce(self, job_id: str, nonce_id: int) -> Nonce | None:
        """Revoke the job's nonce (a no-op when it was revoked already); None if none."""
        with self.engine.begin() as conn:
            conn.execute(
                update(pipeline_nonces)
                .where(
                    pipeline_nonces.c.id == nonce_id,
                    pipeline_nonces.c.job_id == job_id,
                    pipeline_nonces.c.revoked_at.is_(None),
                )
                .values(revoked_at=utcnow())
            )
            row = conn.execute(
                select(pipeline_nonces).where(
                    pipeline_nonces.c.id == nonce_id, pipeline_nonces.c.job_id == job_id
                )
            ).first()
        return _nonce(row) if row is not None else None

    # -- the watcher's cursor over the events table -------------------------------------------

    def cursor(self) -> int:
        """How far the PipelineJobs watcher has read the events; created at the current end
        the first time."""
        return self._cursor.get()

    def advance(self, seq: int) -> None:
        """Move the cursor forward to ``seq`` (never back)."""
        self._cursor.advance(seq)

    def last_event(self) -> int:
        return self._cursor.last_event()

    def phase_changes(self, seq: int, *, limit: int = 1000) -> list[PhaseChange]:
        """The phase changes after ``seq`` of PipelineJobs, and the ends of indexer jobs, in
        order (an index range on ``events.seq``)."""
        watched = [Phase.EXECUTING.value, *(p.value for p in ENDED)]
        moved = (
            events.c.seq > seq,
            events.c.to_phase.in_(watched),
            events.c.from_phase.is_not(None),
            events.c.from_phase != events.c.to_phase,
        )
        own = (
            select(
                events.c.seq, events.c.job_id, events.c.to_phase, events.c.at,
                jobs.c.type, jobs.c.executor,
            )
            .select_from(
                events.join(jobs, jobs.c.id == events.c.job_id).join(
                    pipeline_jobs, pipeline_jobs.c.job_id == events.c.job_id
                )
            )
            .where(*moved)
            .order_by(events.c.seq)
            .limit(limit)
        )  # fmt: skip
        indexers = (
            select(
                events.c.seq, events.c.job_id, events.c.to_phase, events.c.at,
                pipeline_jobs.c.job_id.label("parent"),
            )
            .select_from(
                events.join(pipeline_jobs, pipeline_jobs.c.indexer_job == events.c.job_id)
            )
            .where(*moved, events.c.to_phase.in_([p.value for p in ENDED]))
            .order_by(events.c.seq)
            .limit(limit)
        )  # fmt: skip
        with self.read_engine.connect() as conn:
            found = [
                PhaseChange(
                    r.seq, r.job_id, r.type, r.executor, Phase(r.to_phase), aware(r.at) or utcnow()
                )
                for r in conn.execute(own)
            ]
            found += [
                PhaseChange(
                    r.seq, r.job_id, "", "", Phase(r.to_phase), aware(r.at) or utcnow(), r.parent
                )
                for r in conn.execute(indexers)
            ]
        found.sort(key=lambda change: change.seq)
        return found[:limit]
