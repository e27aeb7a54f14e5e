"""Dependencies and sub-jobs: the ``job_links`` table and the counters on ``jobs`` that release
waiting jobs, in the transaction that records the change that releases them.

A job created or linked ``after`` other jobs counts, in ``upstream_pending``, its parents that
have not completed; it waits QUEUED (``waiting for upstream jobs``) while the count is above
zero. A job that created sub-jobs counts, in ``children_pending``, those that have not ended;
its main step ending while they run puts it QUEUED (``waiting for children``, action
``stand_by``).

Every counter changes by ONE ``UPDATE ... SET n = n - k ... RETURNING`` on the waiting job's
row, in the transaction that records the parent's (or child's) end (``writes.apply`` calls
``after_change``): on PostgreSQL the row lock serialises two parents ending at once, and the
one that brings the count to zero sees the job waiting and releases it with a checked
transition. Linking and unlinking lock the parents' rows first (``FOR UPDATE``; SQLite
serialises writers), so a parent cannot end unseen meanwhile. No timer or poller is involved:
a release happens exactly once, in the transaction of the last end, and survives a restart as
any committed row does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    insert,
    or_,
    select,
    text,
    update,
)

from jobmill.domain.dag import find_cycle
from jobmill.domain.errors import Conflict, NotFound, ValidationError
from jobmill.domain.jobs import Job, NewJob, utcnow
from jobmill.domain.lifecycle import LIVE, Action, Phase, Reason
from jobmill.storage.tables import job_links, jobs
from jobmill.storage.writes import INSERT_EVENTS, Found, apply, event_row, job_from_row

ACTOR = "jobmill"
CHUNK = 500
# Any constant: the PostgreSQL advisory lock every link change takes, so two concurrent links
# cannot close a cycle neither saw (creating a job cannot: a new job has no dependents).
_LINK_LOCK = 0x6A6D6C6B

STAGE_SUBJOBS = "subjobs"
"""The job created sub-jobs while its main step runs."""
STAGE_EPILOG = "epilog"
"""Its sub-jobs completed: its epilog runs (or ran)."""
STAGE_JOINED = "joined"
"""Its main step ended and its job type has no epilog: it completes when its sub-jobs do."""

_WAITING_UPSTREAM = and_(jobs.c.phase == Phase.QUEUED.value, jobs.c.reason == Reason.UPSTREAM.value)
_LINKABLE = or_(jobs.c.phase == Phase.PENDING.value, _WAITING_UPSTREAM)
"""A job whose dependencies may change: PENDING, or QUEUED waiting for upstream jobs."""


def _always(value: Mapping[str, Any]) -> Callable[[str], Mapping[str, Any]]:
    return lambda _job_id: value


# Statements built once (the engine runs them for every group of jobs that start or end):
# building a statement costs more than running it.
_IDS: Any = bindparam("p_ids", expanding=True)
_DEPENDENTS = select(job_links.c.child, job_links.c.parent).where(job_links.c.parent.in_(_IDS))
_LINKS_OF = (
    select(job_links.c.child, job_links.c.parent)
    .where(or_(job_links.c.child.in_(_IDS), job_links.c.parent.in_(_IDS)))
    .order_by(job_links.c.child, job_links.c.parent)
)
_SUBJOBS_OF = (
    select(jobs.c.parent_id, jobs.c.id).where(jobs.c.parent_id.in_(_IDS)).order_by(jobs.c.seq)
)
_PARENTS_OF = select(jobs.c.parent_id).where(jobs.c.id.in_(_IDS), jobs.c.parent_id.isnot(None))
_STAGES = select(jobs.c.id, jobs.c.stage, jobs.c.type).where(
    jobs.c.id.in_(_IDS), jobs.c.stage.isnot(None)
)


def _chunks(ids: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield list(ids[start : start + CHUNK])


def _lock(query: Any, conn: Connection) -> Any:
    return query.with_for_update() if conn.dialect.name == "postgresql" else query


def _note(conn: Connection, job_id: str, name: str, data: Mapping[str, Any], now: datetime) -> None:
    """An event that changes no phase (``linked``, ``unlinked``...), counted on the job."""
    n = conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id)
        .values(event_count=jobs.c.event_count + 1, updated_at=now)
        .returning(jobs.c.event_count)
    ).scalar_one()
    conn.execute(INSERT_EVENTS, event_row(job_id, n, now, name, ACTOR, data))


# -- creation -----------------------------------------------------------------------------


def prepare_new(conn: Connection, new_jobs: Sequence[NewJob]) -> list[NewJob]:
    """Before new jobs are inserted: check the jobs they come ``after`` (locking them, so none
    ends unseen before this transaction commits) and queue each one that has a parent not
    completed yet as ``waiting for upstream jobs``. Raises ``ValidationError`` (an unknown
    parent) or ``Conflict`` (a parent that can never complete for it), naming the field."""
    wanted = sorted({p for new in new_jobs for p in new.after})
    if not wanted:
        return list(new_jobs)
    phases: dict[str, str] = {}
    for chunk in _chunks(wanted):
        query = _lock(select(jobs.c.id, jobs.c.phase).where(jobs.c.id.in_(chunk)), conn)
        phases.update({row.id: row.phase for row in conn.execute(query)})
    prepared = []
    for i, new in enumerate(new_jobs):
        field = "after" if len(new_jobs) == 1 else f"jobs[{i}].after"
        pending = 0
        for parent in new.after:
            phase = phases.get(parent)
            if phase is None:  # a value of the request (no job id in its path): 422
                raise ValidationError(f"no job {parent}", field=field)
            pending += _counts(parent, phase, new.on_parent_failure, field)
        if pending and new.phase is Phase.QUEUED:
            new = replace(new, reason=Reason.UPSTREAM.value)
        prepared.append(new)
    return prepared


def _counts(parent: str, phase: str, policy: str | None, field: str) -> int:
    """1 when ``parent`` in ``phase`` still has to complete, 0 when it has; raises
    ``Conflict`` when it never will for a job with ``policy``."""
    if phase == Phase.COMPLETED.value:
        return 0
    if phase == Phase.ARCHIVED.value or (phase in _FAILED and policy != "wait"):
        raise Conflict(
            f"job {parent} has ended ({phase}): it will never complete",
            field=field,
            phase=phase,
        )
    return 1


_FAILED = frozenset({Phase.ERROR.value, Phase.ABORTED.value})


def insert_new(conn: Connection, new_jobs: Sequence[NewJob], now: datetime) -> None:
    """After new jobs are inserted (``prepare_new`` first): their links, their counts of
    parents to wait for, and, for sub-jobs, their parent's count of sub-jobs (only a parent
    still running its main step may create them)."""
    rows = [{"child": new.id, "parent": parent} for new in new_jobs for parent in new.after]
    if rows:
        conn.execute(insert(job_links), rows)
        phases: dict[str, str] = {}
        for chunk in _chunks(sorted({row["parent"] for row in rows})):
            query = select(jobs.c.id, jobs.c.phase).where(jobs.c.id.in_(chunk))
            phases.update({row.id: row.phase for row in conn.execute(query)})
        for new in new_jobs:
            pending = sum(1 for p in new.after if phases[p] != Phase.COMPLETED.value)
            if pending:
                conn.execute(
                    update(jobs).where(jobs.c.id == new.id).values(upstream_pending=pending)
                )
    by_parent = Counter(new.parent_id for new in new_jobs if new.parent_id)
    for parent, count in by_parent.items():
        found = conn.execute(
            update(jobs)
            .where(
                jobs.c.id == parent,
                jobs.c.phase == Phase.EXECUTING.value,
                or_(jobs.c.stage.is_(None), jobs.c.stage == STAGE_SUBJOBS),
            )
            .values(
                children_pending=jobs.c.children_pending + count,
                stage=STAGE_SUBJOBS,
                updated_at=now,
            )
            .returning(jobs.c.id)
        ).first()
        if found is None:
            raise Conflict(
                f"job {parent} is not running its main step: it cannot create sub-jobs",
                field="token",
            )


# -- linking and unlinking ----------------------------------------------------------------


@dataclass(frozen=True)
class LinkChange:
    """What a link or unlink did: the job as it waits now, and whether it was released."""

    child: str
    after: list[str]
    released: bool = False


def _child_state(conn: Connection, child: str) -> Any:
    row = conn.execute(
        _lock(
            select(
                jobs.c.id,
                jobs.c.phase,
                jobs.c.reason,
                jobs.c.on_parent_failure,
                jobs.c.upstream_pending,
            ).where(jobs.c.id == child),
            conn,
        )
    ).first()
    if row is None:
        raise NotFound(f"no job {child}", field="id")
    waiting = row.phase == Phase.PENDING.value or (
        row.phase == Phase.QUEUED.value and row.reason == Reason.UPSTREAM.value
    )
    if not waiting:
        reason = f" ({row.reason})" if row.reason else ""
        raise Conflict(
            f"job {child} is {row.phase}{reason}: only a PENDING job or one waiting for "
            "upstream jobs can change what it depends on",
            field="id",
            phase=row.phase,
        )
    return row


def parents_of(conn: Connection, child: str) -> list[str]:
    query = (
        select(job_links.c.parent).where(job_links.c.child == child).order_by(job_links.c.parent)
    )
    return list(conn.execute(query).scalars())


def link(conn: Connection, child: str, parents: Sequence[str], *, actor: str) -> LinkChange:
    """Make ``child`` depend on ``parents`` too (already linked ones are kept): 404 for an
    unknown job, 409 for a child that is not waiting, for a parent that can never complete,
    and for a link that would close a cycle (the message names it)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LINK_LOCK})
    now = utcnow()
    wanted = sorted(set(parents))
    phases: dict[str, str] = {}
    for chunk in _chunks(wanted):
        query = _lock(select(jobs.c.id, jobs.c.phase).where(jobs.c.id.in_(chunk)), conn)
        phases.update({row.id: row.phase for row in conn.execute(query)})
    for parent in wanted:
        if parent not in phases:
            raise NotFound(f"no job {parent}", field="after")
    state = _child_state(conn, child)
    existing = set(parents_of(conn, child))
    new = [p for p in wanted if p not in existing]
    cycle = find_cycle(_descendants(conn, child), [(p, child) for p in new])
    if cycle is not None:
        raise Conflict(
            "the link would close a cycle: " + " -> ".join(cycle), field="after", cycle=cycle
        )
    pending = sum(_counts(p, phases[p], state.on_parent_failure, "after") for p in new)
    if new:
        conn.execute(insert(job_links), [{"child": child, "parent": p} for p in new])
        if pending:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == child)
                .values(upstream_pending=jobs.c.upstream_pending + pending)
            )
        _note(conn, child, "linked", {"after": new, "by": actor}, now)
    return LinkChange(child, parents_of(conn, child))


def unlink(conn: Connection, child: str, parent: str, *, actor: str) -> LinkChange:
    """``child`` no longer depends on ``parent``; a child waiting for nothing else any more is
    released. 404 when there is no such link, 409 for a child that is not waiting."""
    now = utcnow()
    phase = conn.execute(
        _lock(select(jobs.c.phase).where(jobs.c.id == parent), conn)
    ).scalar_one_or_none()
    _child_state(conn, child)
    gone = conn.execute(
        delete(job_links).where(job_links.c.child == child, job_links.c.parent == parent)
    ).rowcount
    if not gone:
        raise NotFound(f"job {child} does not depend on {parent}", field="parent_id")
    _note(conn, child, "unlinked", {"parent": parent, "by": actor}, now)
    released = False
    if phase is not None and phase != Phase.COMPLETED.value:
        released = bool(_count_down(conn, {child: 1}, now, parent))
    return LinkChange(child, parents_of(conn, child), released)


def _descendants(conn: Connection, root: str) -> dict[str, list[str]]:
    """The part of the graph below ``root``: each reachable job's children."""
    graph: dict[str, list[str]] = {}
    frontier = [root]
    while frontier:
        found: list[str] = []
        for chunk in _chunks(frontier):
            rows = conn.execute(
                select(job_links.c.parent, job_links.c.child).where(job_links.c.parent.in_(chunk))
            )
            for row in rows:
                graph.setdefault(row.parent, []).append(row.child)
                if row.child not in graph:
                    found.append(row.child)
        frontier = [node for node in dict.fromkeys(found) if node not in graph]
        for node in frontier:
            graph.setdefault(node, [])
    return graph


def forget(conn: Connection, job_id: str) -> list[str]:
    """Before a job is deleted: its dependents no longer wait for it (they are released when
    it was the last they waited for); returns the released ones."""
    now = utcnow()
    phase = conn.execute(select(jobs.c.phase).where(jobs.c.id == job_id)).scalar_one_or_none()
    children = list(
        conn.execute(select(job_links.c.child).where(job_links.c.parent == job_id)).scalars()
    )
    conn.execute(
        delete(job_links).where(or_(job_links.c.parent == job_id, job_links.c.child == job_id))
    )
    if not children or phase == Phase.COMPLETED.value:
        return []
    return _count_down(conn, dict.fromkeys(children, 1), now, job_id)


# -- releases, in the transaction of the change that causes them --------------------------


def _count_down(
    conn: Connection, counts: Mapping[str, int], now: datetime, parent: str | None
) -> list[str]:
    """Take ``counts[child]`` off each child's count of parents to wait for (one ``UPDATE``
    per distinct count) and release those that wait for nothing more. Returns their ids."""
    by_count: dict[int, list[str]] = {}
    for child, count in counts.items():
        by_count.setdefault(count, []).append(child)
    ready: list[Found] = []
    for count, children in by_count.items():
        for chunk in _chunks(sorted(children)):
            rows = conn.execute(
                update(jobs)
                .where(jobs.c.id.in_(chunk))
                .values(upstream_pending=jobs.c.upstream_pending - count)
                .returning(jobs.c.id, jobs.c.phase, jobs.c.reason, jobs.c.upstream_pending)
            )
            ready.extend(
                Found(row.id, Phase.QUEUED, row.reason)
                for row in rows
                if row.upstream_pending <= 0
                and row.phase == Phase.QUEUED.value
                and row.reason == Reason.UPSTREAM.value
            )
    if not ready:
        return []
    data = {"why": "upstream jobs completed"} | ({"released_by": parent} if parent else {})
    changed = apply(
        conn,
        Action.WAIT,
        ready,
        actor=ACTOR,
        reason=Reason.CAPACITY.value,
        data_for=lambda _job_id: data,
        read_back=False,
        now=now,
        cascade=False,
    )
    return changed.ids


def after_change(conn: Connection, action: Action, ids: Sequence[str], now: datetime) -> None:
    """What the ends (or stand-bys) of jobs ``ids`` release, in the same transaction: their
    dependents, the jobs waiting for them as sub-jobs, and, for a failed or aborted job, its
    dependents that fail with it and its sub-jobs, aborted. Iterative: a failure may run down
    a chain of thousands of jobs."""
    work: list[tuple[Action, list[str]]] = [(action, list(ids))]
    while work:
        action, ids = work.pop()
        if not ids:
            continue
        if action is Action.STAND_BY:
            waiting = _standing_by_done(conn, ids)
            work.extend(_release_parents(conn, waiting, now))
            continue
        if action is Action.COMPLETE:
            counts: Counter[str] = Counter()
            for chunk in _chunks(ids):
                for row in conn.execute(_DEPENDENTS, {"p_ids": chunk}):
                    counts[row.child] += 1
            if counts:
                parent = ids[0] if len(ids) == 1 else None
                _count_down(conn, counts, now, parent)
        else:
            work.append((Action.FAIL, _fail_dependents(conn, action, ids, now)))
            work.append((Action.ABORT, _abort_subjobs(conn, ids, now)))
        work.extend(_count_down_parents(conn, ids, now))


def _fail_dependents(
    conn: Connection, action: Action, ids: Sequence[str], now: datetime
) -> list[str]:
    """The waiting dependents of jobs that failed or were aborted, whose policy is ``fail``:
    they end in ERROR naming the job (``wait`` ones stay, with a note)."""
    failed_parent: dict[str, str] = {}
    for chunk in _chunks(ids):
        query = select(job_links.c.child, job_links.c.parent).where(job_links.c.parent.in_(chunk))
        for row in conn.execute(query):
            failed_parent.setdefault(row.child, row.parent)
    if not failed_parent:
        return []
    found: list[Found] = []
    for chunk in _chunks(sorted(failed_parent)):
        waiting = select(jobs.c.id, jobs.c.phase, jobs.c.reason, jobs.c.on_parent_failure).where(
            jobs.c.id.in_(chunk), _LINKABLE
        )
        for one in conn.execute(waiting):
            if one.on_parent_failure == "wait":
                _note(
                    conn,
                    one.id,
                    "upstream_failed",
                    {"parent": failed_parent[one.id], "policy": "wait"},
                    now,
                )
            else:
                found.append(Found(one.id, Phase(one.phase), one.reason))
    ended = "ERROR" if action is Action.FAIL else "ABORTED"

    def error(job_id: str) -> dict[str, Any]:
        return {"error": f"upstream job {failed_parent[job_id]} ended in {ended}"}

    changed = apply(
        conn,
        Action.FAIL,
        found,
        actor=ACTOR,
        data_for=lambda job_id: {"why": error(job_id)["error"], "parent": failed_parent[job_id]},
        values_for=error,
        read_back=False,
        now=now,
        cascade=False,
    )
    return changed.ids


def _abort_subjobs(conn: Connection, ids: Sequence[str], now: datetime) -> list[str]:
    """The live sub-jobs of jobs that failed or were aborted: aborted."""
    found: list[Found] = []
    for chunk in _chunks(ids):
        query = select(
            jobs.c.id, jobs.c.phase, jobs.c.reason, jobs.c.started_at, jobs.c.parent_id
        ).where(jobs.c.parent_id.in_(chunk), jobs.c.phase.in_([p.value for p in LIVE]))
        found.extend(
            Found(row.id, Phase(row.phase), row.reason, row.started_at)
            for row in conn.execute(query)
        )
    if not found:
        return []
    changed = apply(
        conn,
        Action.ABORT,
        found,
        actor=ACTOR,
        data_for=lambda _job_id: {"why": "its parent job ended"},
        values_for=lambda _job_id: {"error": "aborted: its parent job ended"},
        read_back=False,
        now=now,
        cascade=False,
    )
    return changed.ids


def _count_down_parents(
    conn: Connection, ids: Sequence[str], now: datetime
) -> list[tuple[Action, list[str]]]:
    """Sub-jobs among ``ids`` ended: their parents count them off; a parent waiting for
    children that now has none left is released."""
    per_parent: Counter[str] = Counter()
    for chunk in _chunks(ids):
        per_parent.update(conn.execute(_PARENTS_OF, {"p_ids": chunk}).scalars())
    waiting: list[str] = []
    for parent, count in per_parent.items():
        row = conn.execute(
            update(jobs)
            .where(jobs.c.id == parent)
            .values(children_pending=jobs.c.children_pending - count)
            .returning(jobs.c.phase, jobs.c.reason, jobs.c.children_pending)
        ).first()
        if (
            row is not None
            and row.children_pending <= 0
            and row.phase == Phase.QUEUED.value
            and row.reason == Reason.CHILDREN.value
        ):
            waiting.append(parent)
    return _release_parents(conn, waiting, now)


def _standing_by_done(conn: Connection, ids: Sequence[str]) -> list[str]:
    """Jobs that just stood by whose sub-jobs have all ended already."""
    query = select(jobs.c.id).where(
        jobs.c.id.in_(list(ids)),
        jobs.c.children_pending <= 0,
        jobs.c.phase == Phase.QUEUED.value,
        jobs.c.reason == Reason.CHILDREN.value,
    )
    return list(conn.execute(query).scalars())


def _release_parents(
    conn: Connection, parents: Sequence[str], now: datetime
) -> list[tuple[Action, list[str]]]:
    """Parents whose sub-jobs have all ended: ERROR naming a sub-job that did not complete,
    else their epilog is queued (``capacity``), or, without one, they complete."""
    more: list[tuple[Action, list[str]]] = []
    for parent in parents:
        stage = conn.execute(select(jobs.c.stage).where(jobs.c.id == parent)).scalar_one()
        bad = conn.execute(
            select(jobs.c.id, jobs.c.phase)
            .where(jobs.c.parent_id == parent, jobs.c.phase != Phase.COMPLETED.value)
            .order_by(jobs.c.seq)
            .limit(1)
        ).first()
        found = [Found(parent, Phase.QUEUED, Reason.CHILDREN.value)]
        if bad is not None:
            error = f"sub-job {bad.id} ended in {bad.phase}"
            why = {"why": error, "child": bad.id}
            changed = apply(
                conn,
                Action.FAIL,
                found,
                actor=ACTOR,
                data_for=_always(why),
                values_for=_always({"error": error}),
                now=now,
                cascade=False,
                read_back=False,
            )
            more.append((Action.FAIL, changed.ids))
        elif stage == STAGE_EPILOG:
            apply(
                conn,
                Action.WAIT,
                found,
                actor=ACTOR,
                reason=Reason.CAPACITY.value,
                data_for=lambda _job_id: {"why": "sub-jobs completed: its epilog runs"},
                now=now,
                cascade=False,
                read_back=False,
            )
        else:
            changed = apply(
                conn,
                Action.COMPLETE,
                found,
                actor=ACTOR,
                data_for=lambda _job_id: {"why": "sub-jobs completed"},
                now=now,
                cascade=False,
                read_back=False,
            )
            more.append((Action.COMPLETE, changed.ids))
    return more


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Graph:
    """Each job's parents, dependents and sub-jobs."""

    after: dict[str, list[str]]
    dependents: dict[str, list[str]]
    children: dict[str, list[str]]


def graph_of(conn: Connection, ids: Sequence[str]) -> Graph:
    """The links of jobs ``ids`` (a page of them), in three queries per chunk."""
    graph = Graph({}, {}, {})
    for chunk in _chunks(list(ids)):
        for row in conn.execute(_LINKS_OF, {"p_ids": chunk}):
            graph.after.setdefault(row.child, []).append(row.parent)
            graph.dependents.setdefault(row.parent, []).append(row.child)
        for row in conn.execute(_SUBJOBS_OF, {"p_ids": chunk}):
            graph.children.setdefault(row.parent_id, []).append(row.id)
    return graph


def component(conn: Connection, roots: Sequence[str], limit: int) -> set[str]:
    """The jobs connected to ``roots`` by dependencies or sub-jobs (both ways), at most
    ``limit`` of them."""
    seen = set(roots)
    frontier = list(roots)
    while frontier and len(seen) < limit:
        found: set[str] = set()
        for chunk in _chunks(frontier):
            for row in conn.execute(
                select(job_links.c.child, job_links.c.parent).where(
                    or_(job_links.c.child.in_(chunk), job_links.c.parent.in_(chunk))
                )
            ):
                found.update((row.child, row.parent))
            for row in conn.execute(
                select(jobs.c.id, jobs.c.parent_id).where(
                    or_(jobs.c.parent_id.in_(chunk), jobs.c.id.in_(chunk))
                )
            ):
                found.add(row.id)
                if row.parent_id:
                    found.add(row.parent_id)
        frontier = sorted(found - seen)[: max(0, limit - len(seen))]
        seen.update(frontier)
    return seen


class LinkStore:
    """Dependencies and sub-jobs, each change in its own transaction."""

    def __init__(self, engine: Engine, read_engine: Engine | None = None) -> None:
        self.engine = engine
        self.read_engine = read_engine or engine

    def link(self, child: str, parents: Sequence[str], *, actor: str) -> LinkChange:
        with self.engine.begin() as conn:
            return link(conn, child, parents, actor=actor)

    def unlink(self, child: str, parent: str, *, actor: str) -> LinkChange:
        with self.engine.begin() as conn:
            return unlink(conn, child, parent, actor=actor)

    def graph(self, ids: Sequence[str]) -> Graph:
        with self.read_engine.connect() as conn:
            return graph_of(conn, ids)

    def component(self, roots: Sequence[str], limit: int = 100_000) -> set[str]:
        with self.read_engine.connect() as conn:
            return component(conn, roots, limit)

    def stages(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """The stage (``STAGE_*``) and job type of each of ``ids`` that has a stage."""
        found: dict[str, tuple[str, str]] = {}
        with self.read_engine.connect() as conn:
            for chunk in _chunks(list(ids)):
                rows = conn.execute(_STAGES, {"p_ids": chunk})
                found.update({row.id: (row.stage, row.type) for row in rows})
        return found

    def release_if_ready(self, job_id: str) -> bool:
        """Release a job queued ``waiting for upstream jobs`` whose parents all completed
        (after ``run``, which reads the count before it queues the job: a parent that completed
        in between found it PENDING and released nothing)."""
        with self.engine.begin() as conn:
            row = conn.execute(
                _lock(
                    select(jobs.c.upstream_pending).where(jobs.c.id == job_id, _WAITING_UPSTREAM),
                    conn,
                )
            ).first()
            if row is None or row.upstream_pending > 0:
                return False
            return bool(_count_down(conn, {job_id: 0}, utcnow(), None))

    def upstream_pending(self, job_id: str) -> int:
        with self.read_engine.connect() as conn:
            query = select(jobs.c.upstream_pending).where(jobs.c.id == job_id)
            return int(conn.execute(query).scalar() or 0)

    def results(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """What jobs ``ids`` ended with, in that order: id, type, phase, exit code, error and
        report (what a dependent or an epilog reads)."""
        rows: dict[str, Any] = {}
        with self.read_engine.connect() as conn:
            for chunk in _chunks(list(ids)):
                query = select(
                    jobs.c.id, jobs.c.type, jobs.c.phase, jobs.c.exit_code, jobs.c.error,
                    jobs.c.report,
                ).where(jobs.c.id.in_(chunk))  # fmt: skip
                rows.update({row.id: row for row in conn.execute(query)})
        return [
            {
                "id": job_id,
                "type": rows[job_id].type,
                "phase": rows[job_id].phase,
                "exit_code": rows[job_id].exit_code,
                "error": rows[job_id].error,
                "report": rows[job_id].report or {},
            }
            for job_id in ids
            if job_id in rows
        ]

    def running_job_for_token(self, token_hash: str) -> tuple[str, str] | None:
        """The id and owner of the running job (EXECUTING) whose token hashes to
        ``token_hash``, or None."""
        with self.read_engine.connect() as conn:
            row = conn.execute(
                select(jobs.c.id, jobs.c.owner).where(
                    jobs.c.token_hash == token_hash, jobs.c.phase == Phase.EXECUTING.value
                )
            ).first()
        return (row.id, row.owner) if row is not None else None

    def linked_jobs(self, owner: str | None, limit: int) -> list[str]:
        """Jobs (of ``owner``, or anyone's) that have a dependency or a sub-job: the roots of
        a whole graph."""
        with self.read_engine.connect() as conn:
            linked = (
                select(job_links.c.child.label("id"))
                .union(
                    select(job_links.c.parent),
                    select(jobs.c.parent_id).where(jobs.c.parent_id.isnot(None)),
                )
                .subquery()
            )
            query = select(jobs.c.id).where(jobs.c.id.in_(select(linked.c.id)))
            if owner is not None:
                query = query.where(jobs.c.owner == owner)
            return list(conn.execute(query.order_by(jobs.c.seq).limit(limit)).scalars())

    def jobs(self, ids: Sequence[str]) -> list[Job]:
        """The jobs ``ids`` that exist, oldest first."""
        found: list[Job] = []
        with self.read_engine.connect() as conn:
            for chunk in _chunks(list(ids)):
                found.extend(
                    job_from_row(row)
                    for row in conn.execute(select(jobs).where(jobs.c.id.in_(chunk)))
                )
        return sorted(found, key=lambda job: job.seq)
