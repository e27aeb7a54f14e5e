"""Every job list stays flat with the table's size: each filter is served by an index that
also gives the order (newest first), so a page reads about a page of rows.

The plans are read from the database itself (SQLite ``EXPLAIN QUERY PLAN``, PostgreSQL
``EXPLAIN``) for the statements ``JobStore`` runs. On SQLite the planner does not look at the
table's size (no ``ANALYZE``), so an empty table shows the plan of a large one. PostgreSQL picks
a sequential scan for a small table, so the test forbids it (``enable_seqscan``,
``enable_sort`` off): a plan with a ``Seq Scan`` or a ``Sort`` left then means no index serves
the list. Each plan test runs on the one database whose plan it reads.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, select, text

from jobmill.domain.jobs import JobFilter, NewJob, utcnow
from jobmill.domain.lifecycle import Phase
from jobmill.storage.jobs import JobStore
from jobmill.storage.tables import job_tags, jobs

LISTED = tuple(p for p in Phase if p is not Phase.ARCHIVED)  # a UWS list without PHASE

CASES: dict[str, JobFilter] = {
    "phase": JobFilter(phases=[Phase.EXECUTING]),
    "two phases": JobFilter(phases=[Phase.QUEUED, Phase.EXECUTING]),
    "owner": JobFilter(owner="alice"),
    "owner and phase (a user's phase list)": JobFilter(owner="alice", phases=[Phase.ERROR]),
    "type": JobFilter(type="sim"),
    "type and phase (UWS PHASE=)": JobFilter(type="sim", phases=[Phase.EXECUTING]),
    "UWS list (type, every phase but ARCHIVED)": JobFilter(type="sim", phases=LISTED),
    "UWS list of a user": JobFilter(type="sim", phases=LISTED, owner="alice"),
    "UWS PHASE= of a user": JobFilter(type="sim", phases=[Phase.QUEUED], owner="alice"),
    "tag": JobFilter(tag="calib"),
    "tag and phase": JobFilter(tag="calib", phases=[Phase.ERROR]),
    "tag and two phases": JobFilter(tag="calib", phases=[Phase.QUEUED, Phase.EXECUTING]),
    "tag of a user": JobFilter(tag="calib", owner="alice"),
}


def statements(flt: JobFilter, dialect: str) -> list[Any]:
    """The two list statements of ``JobStore`` (whole jobs, and UWS ``jobref`` columns)."""
    refs = select(
        jobs.c.id, jobs.c.phase, jobs.c.run_id, jobs.c.owner, jobs.c.created_at, jobs.c.seq
    )
    return [
        JobStore._list_query(select(jobs), flt, 101, None, dialect),
        JobStore._list_query(refs, flt, 101, 5000, dialect),  # a later page: seq < cursor
    ]


def plan(conn: Connection, statement: Any) -> list[str]:
    compiled = statement.compile(conn, compile_kwargs={"literal_binds": True})
    if conn.dialect.name == "sqlite":
        return [row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))]
    return [row[0] for row in conn.execute(text(f"EXPLAIN {compiled}"))]


def sqlite_problems(lines: list[str]) -> list[str]:
    """What makes a list grow with the table: ``SCAN jobs`` (the whole table in key order),
    ``TEMP B-TREE`` (every match sorted), or a search of ``jobs`` not on a filter's column
    (the key walked with the filter applied row by row) and not one job by its key (the jobs
    of a tag), or a search of ``job_tags`` not on its index ``(tag, seq)``."""
    return [
        line
        for line in lines
        if line.startswith("SCAN ")
        or "TEMP B-TREE" in line
        or (line.startswith("SEARCH jobs") and not _SQLITE_SEEK.match(line))
        or (line.startswith("SEARCH job_tags") and not _SQLITE_TAG_SEEK.match(line))
    ]


_SQLITE_SEEK = re.compile(
    r"SEARCH jobs USING ((COVERING )?INDEX \w+ \((phase|owner|type)=\?"
    r"|INTEGER PRIMARY KEY \(rowid=\?\))"
)
_SQLITE_TAG_SEEK = re.compile(r"SEARCH job_tags USING COVERING INDEX ix_job_tags_tag_seq \(tag=\?")


_PG_SORT = re.compile(r"\s*(->\s*)?(Incremental )?Sort\s+\(")  # a Sort node, not a Sort Key
_PG_FILTER = re.compile(r"\b(phase|owner|type|tag)\b|\(seq = \w+\.seq\)")
"""An index condition on a filter's column, or one job (or tag) by the other's ``seq``."""


def postgres_problems(lines: list[str]) -> list[str]:
    """The same on PostgreSQL: a ``Seq Scan``, a ``Sort``, or an index condition that is not
    on a filter's column."""
    found = [line for line in lines if "Seq Scan" in line or _PG_SORT.match(line)]
    conditions = [line for line in lines if "Index Cond" in line]
    found += [line for line in conditions if not _PG_FILTER.search(line)]
    return found or ([] if conditions else ["no index condition"])


def postgres_plans(store: JobStore, flt: JobFilter) -> list[list[str]]:
    """The plans of the list statements on PostgreSQL, which must then use an index even on
    an empty table."""
    with store.read_engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        conn.execute(text("SET enable_sort = off"))
        return [plan(conn, statement) for statement in statements(flt, conn.dialect.name)]


def sqlite_plans(store: JobStore, flt: JobFilter) -> list[list[str]]:
    with store.read_engine.connect() as conn:
        return [plan(conn, statement) for statement in statements(flt, conn.dialect.name)]


# Each plan test asks for the one database it reads (``db_url`` given directly): PostgreSQL's
# skip without a server locally (with the reason), and fail without one in CI.
ON_SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
ON_POSTGRES = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


@ON_SQLITE
@pytest.mark.parametrize("case", list(CASES))
def test_sqlite_lists_use_an_ordered_index(store: JobStore, case: str) -> None:
    for lines in sqlite_plans(store, CASES[case]):
        assert any(line.startswith("SEARCH jobs USING") for line in lines), lines
        assert not sqlite_problems(lines), lines


@pytest.mark.postgres
@ON_POSTGRES
@pytest.mark.parametrize("case", list(CASES))
def test_postgres_lists_use_an_ordered_index(store: JobStore, case: str) -> None:
    for lines in postgres_plans(store, CASES[case]):
        assert any("Index" in line for line in lines), lines
        assert not postgres_problems(lines), lines


@ON_SQLITE
def test_sqlite_reads_a_tag_newest_first_from_its_index(store: JobStore) -> None:
    """A list by tag reads the tag's rows newest first from ``job_tags (tag, seq)`` (a later
    page from the cursor on), then each job by its key: no sort of the tag's jobs."""
    first, later = sqlite_plans(store, JobFilter(tag="calib"))
    assert first == [
        "SEARCH job_tags USING COVERING INDEX ix_job_tags_tag_seq (tag=?)",
        "SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)",
    ]
    assert later[0] == first[0].replace("(tag=?)", "(tag=? AND seq<?)")


@pytest.mark.postgres
@ON_POSTGRES
def test_postgres_reads_a_tag_newest_first_from_its_index(store: JobStore) -> None:
    for lines in postgres_plans(store, JobFilter(tag="calib")):
        text_of = "\n".join(lines)
        assert "Index Only Scan Backward using ix_job_tags_tag_seq on job_tags" in text_of, lines
        assert "(seq = job_tags.seq)" in text_of, lines  # each job by its key
        assert not postgres_problems(lines), lines


def test_the_checks_see_a_scan_and_a_sort(store: JobStore) -> None:
    """Lists no index serves are caught on either database: filtered on a column without an
    index (the key walked, or the table scanned), and ordered by another column (a sort)."""
    unindexed = select(jobs).where(jobs.c.exit_code == 1).order_by(jobs.c.seq.desc()).limit(10)
    unsorted = (
        select(jobs).where(jobs.c.phase == "ERROR").order_by(jobs.c.ended_at.desc()).limit(10)
    )
    # A list by tag before the tags had the job's seq: every tagged job read, then sorted
    # (on SQLite; PostgreSQL's plan of it on an empty table is another).
    tag_ids = select(job_tags.c.job_id).where(job_tags.c.tag == "calib")
    by_ids = select(jobs).where(jobs.c.id.in_(tag_ids)).order_by(jobs.c.seq.desc()).limit(10)
    with store.read_engine.connect() as conn:
        problems = sqlite_problems
        if conn.dialect.name != "sqlite":
            conn.execute(text("SET enable_seqscan = off"))
            conn.execute(text("SET enable_sort = off"))
            problems = postgres_problems
        assert problems(plan(conn, unindexed))
        assert problems(plan(conn, unsorted))
        if conn.dialect.name == "sqlite":
            assert problems(plan(conn, by_ids))


def test_a_list_of_several_phases_is_newest_first_across_pages(store: JobStore) -> None:
    """The merged legs give what ``phase IN (...)`` gave: one order, pages that join up."""
    later = utcnow() + timedelta(days=1)
    cycle = [Phase.QUEUED, Phase.COMPLETED, Phase.ERROR, Phase.PENDING]
    store.create(
        [
            NewJob(
                type="sim",
                owner="alice" if i % 3 else "bob",
                parameters={},
                executor="local",
                execution_duration=60,
                destruction_at=later,
                phase=cycle[i % len(cycle)],
                reason="capacity" if cycle[i % len(cycle)] is Phase.QUEUED else None,
            )
            for i in range(40)
        ],
        actor="test",
    )
    every = store.list(JobFilter(), limit=1000)
    for flt in (
        JobFilter(phases=[Phase.ERROR, Phase.QUEUED]),
        JobFilter(phases=[Phase.ERROR, Phase.QUEUED, Phase.PENDING], owner="alice"),
    ):
        wanted = [
            job.seq for job in every if job.phase in flt.phases and flt.owner in (None, job.owner)
        ]
        assert wanted == sorted(wanted, reverse=True) and len(wanted) > 7
        pages: list[int] = []
        before = None
        while True:
            page = store.list(flt, limit=7, before_seq=before)
            pages += [job.seq for job in page]
            if len(page) < 7:
                break
            before = page[-1].seq
        assert pages == wanted
        assert [ref.seq for ref in store.list_refs(flt, limit=5)] == wanted[:5]


def test_a_list_by_tag_is_newest_first_across_pages(store: JobStore) -> None:
    """Tags written with a new job (a batch without its ``seq`` read back, or one job) and
    added later carry their job's ``seq``; a list by tag, alone or with other filters, gives
    the tagged jobs newest first in pages that join up."""
    later = utcnow() + timedelta(days=1)
    cycle = [Phase.QUEUED, Phase.COMPLETED, Phase.ERROR]

    def new(i: int) -> NewJob:
        return NewJob(
            type="sim",
            owner="alice" if i % 3 else "bob",
            parameters={},
            executor="local",
            execution_duration=60,
            destruction_at=later,
            phase=cycle[i % len(cycle)],
            reason="capacity" if cycle[i % len(cycle)] is Phase.QUEUED else None,
            tags=("calib",) if i % 2 else ("rare",) if i % 5 == 0 else (),
        )

    store.create([new(i) for i in range(30)], actor="test", with_seq=False)
    store.create([new(30)], actor="test")
    for job in store.list(JobFilter(), limit=1000)[::4]:
        store.tags.add(job.id, "calib", actor="test")  # some have it: no second row
    every = store.list(JobFilter(), limit=1000)
    store.tags.attach(every)
    with store.read_engine.connect() as conn:
        rows = conn.execute(select(job_tags.c.job_id, job_tags.c.seq)).all()
    assert dict(rows) == {job.id: job.seq for job in every if job.tags}
    for flt in (
        JobFilter(tag="calib"),
        JobFilter(tag="rare"),
        JobFilter(tag="calib", phases=[Phase.ERROR, Phase.QUEUED]),
        JobFilter(tag="calib", owner="alice", phases=[Phase.COMPLETED]),
        JobFilter(tag="calib", seq_min=every[-1].seq + 3, seq_max=every[0].seq - 2),
    ):
        wanted = [
            job.seq
            for job in every
            if flt.tag in job.tags
            and (not flt.phases or job.phase in flt.phases)
            and flt.owner in (None, job.owner)
            and (flt.seq_min or 0) <= job.seq <= (flt.seq_max or job.seq)
        ]
        assert wanted == sorted(wanted, reverse=True) and len(wanted) >= 4, flt
        pages: list[int] = []
        before = None
        while True:
            page = store.list(flt, limit=4, before_seq=before)
            pages += [job.seq for job in page]
            if len(page) < 4:
                break
            before = page[-1].seq
        assert pages == wanted, flt
        assert [ref.seq for ref in store.list_refs(flt, limit=3)] == wanted[:3]
