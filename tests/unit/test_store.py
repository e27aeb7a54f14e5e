"""JobStore on SQLite and PostgreSQL: creation, listing, checked transitions, reports, tokens."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from jobmill.config import Settings
from jobmill.domain.errors import Conflict, NotFound
from jobmill.domain.jobs import Job, NewJob, utcnow
from jobmill.domain.lifecycle import Action, Phase, Reason
from jobmill.factory import open_store
from jobmill.service import reports
from jobmill.service.files import JobFiles
from jobmill.service.jobs import JobService, User
from jobmill.storage.jobs import (
    MAX_PAGE,
    Change,
    Entry,
    JobFilter,
    JobStore,
    hash_secret,
)
from jobmill.storage.tables import events, jobs
from jobmill.storage.tables import tokens as tokens_table

THREADS = 8


def new_job(**overrides: Any) -> NewJob:
    values: dict[str, Any] = {
        "type": "sleep",
        "owner": "alice",
        "parameters": {"seconds": 1},
        "executor": "local",
        "execution_duration": 60,
        "destruction_at": utcnow() + timedelta(days=7),
        "phase": Phase.QUEUED,
        "reason": Reason.CAPACITY.value,
    }
    return NewJob(**(values | overrides))


def create(store: JobStore, **overrides: Any) -> Job:
    return store.create([new_job(**overrides)], actor="tester")[0]


def is_sqlite(store: JobStore) -> bool:
    return store.engine.dialect.name == "sqlite"


def count_rows(store: JobStore, table: Any, job_id: str | None = None) -> int:
    query = select(func.count()).select_from(table)
    if job_id is not None:
        query = query.where((table.c.id if table is jobs else table.c.job_id) == job_id)
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def race(n: int, work: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run ``work(i)`` in ``n`` threads released together; return results and errors."""
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            value = work(i)
        except BaseException as exc:  # noqa: BLE001 - collected and checked by the test
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a racing thread hung"
    return results, errors


# -- creation and reading -------------------------------------------------------------------


def test_create_and_get(store: JobStore) -> None:
    new = new_job(
        run_id="run-7",
        parameters={"seconds": 2.5, "label": "a b"},
        extra_parameters={"LANG": "ADQL"},
        log_dir="/logs",
    )
    [job] = store.create([new], actor="alice")
    assert job.id == new.id
    assert (job.type, job.owner, job.run_id) == ("sleep", "alice", "run-7")
    assert job.phase is Phase.QUEUED and job.reason == "capacity"
    assert job.parameters == {"seconds": 2.5, "label": "a b"}
    assert job.extra_parameters == {"LANG": "ADQL"}
    assert job.report == {}
    assert (job.executor, job.execution_duration, job.log_dir) == ("local", 60, "/logs")
    assert job.event_count == 1 and job.seq > 0
    assert job.created_at.tzinfo is not None
    assert abs(job.created_at - utcnow()) < timedelta(minutes=1)
    assert job.started_at is None and job.ended_at is None
    assert store.get(job.id) == job
    assert store.require(job.id) == job

    [event] = store.events(job.id)
    assert (event.n, event.name, event.from_phase, event.to_phase) == (
        1,
        "created",
        None,
        Phase.QUEUED,
    )
    assert event.actor == "alice" and event.data == {"reason": "capacity"}


def test_create_pending_job_has_no_reason_in_its_event(store: JobStore) -> None:
    job = create(store, phase=Phase.PENDING, reason=None)
    assert job.phase is Phase.PENDING and job.reason is None
    assert store.events(job.id)[0].data == {}


def test_create_nothing(store: JobStore) -> None:
    assert store.create([], actor="x") == []
    assert store.count() == 0


def test_batch_create_keeps_order(store: JobStore) -> None:
    news = [new_job(run_id=f"r{i}") for i in range(25)]
    created = store.create(news, actor="batch")
    assert [j.id for j in created] == [n.id for n in news]
    assert [j.run_id for j in created] == [f"r{i}" for i in range(25)]
    assert len({j.seq for j in created}) == 25
    assert store.count() == 25
    assert count_rows(store, events) == 25


def test_get_missing(store: JobStore) -> None:
    missing = str(uuid.uuid4())
    assert store.get(missing) is None
    with pytest.raises(NotFound) as info:
        store.require(missing)
    assert info.value.field == "id"


def test_batch_create_is_all_or_nothing(store: JobStore) -> None:
    first = new_job()
    batch = [first, new_job(), new_job(id=first.id), new_job()]
    with pytest.raises(IntegrityError):
        store.create(batch, actor="tester")
    assert store.count() == 0
    assert count_rows(store, events) == 0
    for new in batch:
        assert store.get(new.id) is None


def test_batch_clashing_with_an_existing_job_leaves_nothing(store: JobStore) -> None:
    existing = create(store)
    batch = [new_job(), new_job(id=existing.id), new_job()]
    with pytest.raises(IntegrityError):
        store.create(batch, actor="tester")
    assert store.count() == 1
    assert count_rows(store, events) == 1
    assert store.get(batch[0].id) is None and store.get(batch[2].id) is None
    assert store.get(existing.id) == existing


# -- listing ----------------------------------------------------------------------------------


@pytest.fixture
def population(store: JobStore) -> list[Job]:
    specs = [
        {"type": "sleep", "owner": "alice", "run_id": "r1", "executor": "local"},
        {"type": "echo", "owner": "alice", "run_id": "r2", "executor": "slurm"},
        {
            "type": "sleep",
            "owner": "bob",
            "run_id": "r1",
            "executor": "slurm",
            "phase": Phase.PENDING,
            "reason": None,
        },
        {"type": "echo", "owner": "bob", "run_id": None, "executor": "local"},
        {"type": "fail", "owner": "carol", "run_id": "r3", "executor": "local"},
        {"type": "sleep", "owner": "alice", "run_id": "r3", "executor": "local"},
    ]
    created = [create(store, **spec) for spec in specs]
    store.transition(created[3].id, Action.START, actor="t")
    store.transition(created[4].id, Action.FAIL, actor="t")
    return [store.require(job.id) for job in created]


def listed(store: JobStore, flt: JobFilter, **kwargs: Any) -> list[str]:
    return [job.id for job in store.list(flt, **kwargs)]


def ids(population: list[Job], *indexes: int) -> list[str]:
    """The ids of the given jobs, newest first (the order of ``list``)."""
    return [population[i].id for i in sorted(indexes, reverse=True)]


def test_list_everything_newest_first(store: JobStore, population: list[Job]) -> None:
    assert listed(store, JobFilter()) == ids(population, 0, 1, 2, 3, 4, 5)
    assert store.list(JobFilter())[0] == population[5]


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (JobFilter(phases=[Phase.QUEUED]), (0, 1, 5)),
        (JobFilter(phases=[Phase.PENDING, Phase.EXECUTING]), (2, 3)),
        (JobFilter(phases=[Phase.ERROR]), (4,)),
        (JobFilter(phases=[Phase.COMPLETED]), ()),
        (JobFilter(type="sleep"), (0, 2, 5)),
        (JobFilter(type="nothing"), ()),
        (JobFilter(owner="alice"), (0, 1, 5)),
        (JobFilter(owner="bob"), (2, 3)),
        (JobFilter(run_id="r1"), (0, 2)),
        (JobFilter(run_id="r3"), (4, 5)),
        (JobFilter(executor="slurm"), (1, 2)),
        (JobFilter(executor="local"), (0, 3, 4, 5)),
        (JobFilter(type="sleep", owner="alice"), (0, 5)),
        (
            JobFilter(
                type="sleep", owner="alice", run_id="r3", executor="local", phases=[Phase.QUEUED]
            ),
            (5,),
        ),
        (JobFilter(type="echo", executor="slurm", phases=[Phase.EXECUTING]), ()),
    ],
)
def test_list_filters(
    store: JobStore, population: list[Job], flt: JobFilter, expected: tuple[int, ...]
) -> None:
    assert listed(store, flt) == ids(population, *expected)
    # The job list's lean variant selects the same jobs in the same order.
    assert [ref.id for ref in store.list_refs(flt, limit=100)] == ids(population, *expected)


def test_list_refs_carry_what_a_jobref_shows(store: JobStore, population: list[Job]) -> None:
    refs = store.list_refs(JobFilter(), limit=2)
    assert [ref.id for ref in refs] == ids(population, 4, 5)
    for ref in refs:
        job = store.require(ref.id)
        assert (ref.phase, ref.run_id, ref.owner, ref.created_at, ref.seq) == (
            job.phase,
            job.run_id,
            job.owner,
            job.created_at,
            job.seq,
        )
        assert ref.created_at.tzinfo is not None


def test_list_created_after(store: JobStore, population: list[Job]) -> None:
    assert len({job.created_at for job in population}) == len(population)
    pivot = population[2].created_at
    assert listed(store, JobFilter(created_after=pivot)) == ids(population, 3, 4, 5)
    assert listed(store, JobFilter(created_after=pivot - timedelta(days=1))) == ids(
        population, 0, 1, 2, 3, 4, 5
    )
    assert listed(store, JobFilter(created_after=utcnow() + timedelta(hours=1))) == []
    assert listed(store, JobFilter(created_after=pivot, owner="alice")) == ids(population, 5)


@pytest.mark.parametrize("hours", [5, -5])
def test_list_created_after_with_a_utc_offset(
    store: JobStore, population: list[Job], hours: int
) -> None:
    pivot = population[2].created_at.astimezone(timezone(timedelta(hours=hours)))
    assert listed(store, JobFilter(created_after=pivot)) == ids(population, 3, 4, 5)


def test_list_limit(store: JobStore, population: list[Job]) -> None:
    assert listed(store, JobFilter(), limit=2) == ids(population, 4, 5)
    assert listed(store, JobFilter(), limit=0) == ids(population, 5)  # at least one
    assert MAX_PAGE == 1000


def test_cursor_pagination(store: JobStore) -> None:
    created = store.create(
        [new_job(owner="alice" if i % 3 else "bob") for i in range(23)], actor="t"
    )
    expected = [job.id for job in reversed(created)]

    def pages(flt: JobFilter, size: int) -> list[list[str]]:
        result: list[list[str]] = []
        before: int | None = None
        while True:
            page = store.list(flt, limit=size, before_seq=before)
            if not page:
                return result
            assert [j.seq for j in page] == sorted((j.seq for j in page), reverse=True)
            result.append([j.id for j in page])
            before = page[-1].seq

    for size in (1, 5, 7, 23, 100):
        got = pages(JobFilter(), size)
        assert [job_id for page in got for job_id in page] == expected
        assert all(len(page) == size for page in got[:-1])
    alice = [job_id for job_id in expected if store.require(job_id).owner == "alice"]
    got = pages(JobFilter(owner="alice"), 4)
    assert [job_id for page in got for job_id in page] == alice


def test_pagination_does_not_shift_when_jobs_are_added(store: JobStore) -> None:
    created = store.create([new_job() for _ in range(10)], actor="t")
    first = store.list(JobFilter(), limit=4)
    store.create([new_job() for _ in range(3)], actor="t")
    rest = store.list(JobFilter(), limit=100, before_seq=first[-1].seq)
    assert [j.id for j in first + rest] == [j.id for j in reversed(created)]


def service(store: JobStore, tmp_path: Path) -> JobService:
    return JobService(store, {}, JobFiles(tmp_path / "home"), ["local"])


def test_service_cursor_pages(store: JobStore, tmp_path: Path) -> None:
    created = store.create([new_job() for _ in range(11)], actor="t")
    jobs_service = service(store, tmp_path)
    alice = User("alice")
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        page = jobs_service.list(alice, JobFilter(), limit=4, cursor=cursor)
        seen.extend(j.id for j in page.jobs)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [j.id for j in reversed(created)]
    assert jobs_service.list(User("bob"), JobFilter()).jobs == []


def test_service_full_page_of_maximum_size_has_a_next_cursor(
    store: JobStore, tmp_path: Path
) -> None:
    store.create([new_job() for _ in range(MAX_PAGE + 1)], actor="t")
    page = service(store, tmp_path).list(User("alice"), JobFilter(), limit=MAX_PAGE)
    assert len(page.jobs) == MAX_PAGE
    assert page.next_cursor is not None


def test_phases_ids_in_phase_and_count(store: JobStore, population: list[Job]) -> None:
    assert store.count() == 6
    wanted = [j.id for j in population] + [str(uuid.uuid4())]
    assert store.phases(wanted) == {j.id: j.phase for j in population}
    queued = store.ids_in_phase([Phase.QUEUED])
    assert [j.id for j in queued] == [population[i].id for i in (0, 1, 5)]  # oldest first
    local = store.ids_in_phase([Phase.QUEUED], executor="local", reason="capacity", limit=1)
    assert [j.id for j in local] == [population[0].id]


# -- transitions -------------------------------------------------------------------------------


def test_transition_writes_one_event(store: JobStore) -> None:
    job = create(store)
    before_events = count_rows(store, events)
    moved = store.transition(
        job.id,
        Action.START,
        actor="engine",
        data={"pid": 42},
        values={"native_id": "1234", "node": "n1"},
    )
    assert moved.phase is Phase.EXECUTING and moved.reason is None
    assert (moved.native_id, moved.node) == ("1234", "n1")
    assert moved.event_count == 2
    assert moved.started_at is not None and moved.ended_at is None
    assert moved.updated_at is not None and job.updated_at is not None
    assert moved.updated_at >= job.updated_at
    assert count_rows(store, events) == before_events + 1
    event = store.events(job.id)[-1]
    assert (event.n, event.name, event.from_phase, event.to_phase, event.actor) == (
        2,
        "start",
        Phase.QUEUED,
        Phase.EXECUTING,
        "engine",
    )
    assert event.data == {"pid": 42}
    assert store.get(job.id) == moved


def test_event_numbers_increase_per_job(store: JobStore) -> None:
    a, b = create(store), create(store)
    steps = [
        Action.START,
        Action.SUSPEND,
        Action.RESUME,
        Action.HOLD,
        Action.RELEASE,
        Action.START,
        Action.COMPLETE,
        Action.ARCHIVE,
    ]
    for action in steps:
        reason = Reason.CAPACITY.value if action is Action.RELEASE else None
        store.transition(a.id, action, actor="t", reason=reason)
    store.transition(b.id, Action.ABORT, actor="t")
    a_events = store.events(a.id)
    assert [e.n for e in a_events] == list(range(1, len(steps) + 2))
    assert [e.name for e in a_events] == ["created"] + [s.value for s in steps]
    for previous, event in zip(a_events, a_events[1:], strict=False):
        assert event.from_phase == previous.to_phase
    assert [e.n for e in store.events(b.id)] == [1, 2]
    assert store.require(a.id).event_count == len(steps) + 1
    assert [e.n for e in store.events(a.id, after=3, limit=2)] == [4, 5]
    feed = store.events_since(0)
    assert len(feed) == len(steps) + 3
    assert store.last_event_seq() == feed[-1].seq
    assert [e.seq for e in feed] == sorted(e.seq for e in feed)


def test_timestamps_and_reasons(store: JobStore) -> None:
    job = create(store, phase=Phase.PENDING, reason=None)
    job = store.transition(job.id, Action.RUN, actor="t", reason=Reason.CAPACITY.value)
    assert job.phase is Phase.QUEUED and job.reason == "capacity"
    assert store.events(job.id)[-1].data == {"reason": "capacity"}
    job = store.transition(job.id, Action.WAIT, actor="t", reason=Reason.BACKEND.value)
    assert job.phase is Phase.QUEUED and job.reason == "backend"
    event = store.events(job.id)[-1]
    assert (event.from_phase, event.to_phase, event.data) == (
        Phase.QUEUED,
        Phase.QUEUED,
        {"reason": "backend"},
    )
    job = store.transition(job.id, Action.START, actor="t")
    assert job.reason is None
    started = job.started_at
    assert started is not None
    job = store.transition(job.id, Action.SUSPEND, actor="t")
    job = store.transition(job.id, Action.RESUME, actor="t")
    assert job.started_at == started
    job = store.transition(job.id, Action.COMPLETE, actor="t", values={"exit_code": 0})
    assert job.phase is Phase.COMPLETED and job.exit_code == 0
    assert job.ended_at is not None and job.ended_at >= started
    ended = job.ended_at
    job = store.transition(job.id, Action.ARCHIVE, actor="t")
    assert job.phase is Phase.ARCHIVED and job.ended_at == ended


def test_reasons_are_checked_like_phases(store: JobStore) -> None:
    waiting = create(store, reason=Reason.DATA.value)
    for action, reason in [(Action.START, None), (Action.HOLD, None), (Action.WAIT, "backend")]:
        with pytest.raises(Conflict) as refused:
            store.transition(waiting.id, action, actor="t", reason=reason)
        assert refused.value.extra == {"phase": "QUEUED", "action": action.value}
        assert "waiting for data" in refused.value.message
    with pytest.raises(ValueError, match="reason None"):  # a QUEUED job always has a reason
        store.transition(waiting.id, Action.WAIT, actor="t")
    assert store.require(waiting.id) == waiting
    assert [e.name for e in store.events(waiting.id)] == ["created"]
    claimed = store.claim_queued(
        executor="local", action=Action.START, limit=5, actor="engine",
        values_for=lambda _: {}, from_reason=Reason.DATA.value,
    )  # fmt: skip
    assert claimed == []
    released = store.transition(waiting.id, Action.WAIT, actor="t", reason=Reason.CAPACITY.value)
    assert (released.phase, released.reason) == (Phase.QUEUED, "capacity")


def test_a_job_is_created_with_a_reason_exactly_when_queued(store: JobStore) -> None:
    for phase, reason in [(Phase.QUEUED, None), (Phase.PENDING, "capacity")]:
        with pytest.raises(ValueError):
            create(store, phase=phase, reason=reason)
    assert count_rows(store, jobs) == 0 and count_rows(store, events) == 0


def test_illegal_transition_raises_conflict_and_writes_nothing(store: JobStore) -> None:
    job = create(store)
    store.transition(job.id, Action.START, actor="t")
    store.transition(job.id, Action.COMPLETE, actor="t")
    before = store.require(job.id)
    before_events = store.events(job.id)
    for action in (Action.START, Action.ABORT, Action.RUN, Action.COMPLETE, Action.RELEASE):
        with pytest.raises(Conflict) as info:
            store.transition(job.id, action, actor="t", values={"error": "nope"})
        assert info.value.status == 409
        assert info.value.extra == {"phase": "COMPLETED", "action": action.value}
        assert "COMPLETED" in info.value.message
    assert store.require(job.id) == before
    assert store.events(job.id) == before_events


def test_transition_of_a_missing_job(store: JobStore) -> None:
    with pytest.raises(NotFound):
        store.transition(str(uuid.uuid4()), Action.START, actor="t")
    assert count_rows(store, events) == 0


def test_transition_refuses_unsettable_columns(store: JobStore) -> None:
    job = create(store)
    with pytest.raises(ValueError, match="cannot set"):
        store.transition(job.id, Action.START, actor="t", values={"owner": "mallory"})
    assert store.require(job.id) == job
    assert len(store.events(job.id)) == 1


def test_racing_threads_one_transition_wins(store: JobStore) -> None:
    job = create(store)
    results, errors = race(
        THREADS, lambda i: store.transition(job.id, Action.START, actor=f"thread-{i}")
    )
    assert len(results) == 1, errors
    assert len(errors) == THREADS - 1
    assert all(isinstance(e, Conflict) for e in errors), errors
    final = store.require(job.id)
    assert final.phase is Phase.EXECUTING and final.event_count == 2
    starts = [e for e in store.events(job.id) if e.name == "start"]
    assert len(starts) == 1
    assert (starts[0].from_phase, starts[0].to_phase) == (Phase.QUEUED, Phase.EXECUTING)
    assert starts[0].actor.startswith("thread-")


def test_racing_different_terminal_actions_one_wins(store: JobStore) -> None:
    job = create(store)
    store.transition(job.id, Action.START, actor="t")
    actions = [Action.COMPLETE, Action.FAIL, Action.ABORT] * 3
    results, errors = race(
        THREADS, lambda i: store.transition(job.id, actions[i], actor=f"thread-{i}")
    )
    assert len(results) == 1 and all(isinstance(e, Conflict) for e in errors)
    final = store.require(job.id)
    assert final.phase is results[0].phase
    assert final.event_count == 3 and len(store.events(job.id)) == 3


def test_record_appends_an_event_without_changing_phase(store: JobStore) -> None:
    job = create(store)
    updated = store.record(
        job.id, "submitted", actor="engine", data={"x": 1}, values={"native_id": "99"}
    )
    assert updated.phase is Phase.QUEUED and updated.native_id == "99"
    assert updated.event_count == 2
    event = store.events(job.id)[-1]
    assert (event.name, event.from_phase, event.to_phase, event.data) == (
        "submitted",
        None,
        None,
        {"x": 1},
    )
    with pytest.raises(NotFound):
        store.record(str(uuid.uuid4()), "x", actor="t")
    with pytest.raises(ValueError):
        store.record(job.id, "x", actor="t", values={"phase": "COMPLETED"})


# -- grouped dispatch ------------------------------------------------------------------------


def test_claim_queued_takes_the_oldest_ready_jobs_of_one_executor(store: JobStore) -> None:
    ready = [create(store) for _ in range(5)]
    create(store, executor="slurm")
    create(store, reason=Reason.BACKEND_UNAVAILABLE.value)
    create(store, phase=Phase.PENDING, reason=None)
    claimed = store.claim_queued(
        executor="local",
        action=Action.WAIT,
        reason=Reason.BACKEND.value,
        limit=3,
        actor="engine",
        values_for=lambda job_id: {"node": "n1", "token_hash": hash_secret(job_id)},
    )
    assert [job.id for job in claimed] == [job.id for job in ready[:3]]
    for job in claimed:
        stored = store.require(job.id)
        assert (stored.phase, stored.reason, stored.node) == (Phase.QUEUED, "backend", "n1")
        assert store.check_job_token(job.id, job.id)
        event = store.events(job.id)[-1]
        assert (event.name, event.n, event.from_phase, event.data) == (
            "wait",
            2,
            Phase.QUEUED,
            {"reason": "backend"},
        )
    rest = store.claim_queued(
        executor="local", action=Action.START, limit=10, actor="engine", values_for=lambda _: {}
    )
    assert [job.id for job in rest] == [job.id for job in ready[3:]]
    assert all(job.phase is Phase.EXECUTING and job.started_at for job in rest)
    again = store.claim_queued(
        executor="local", action=Action.START, limit=10, actor="engine", values_for=lambda _: {}
    )
    assert again == []


def test_claim_queued_refuses_unsettable_columns_and_writes_nothing(store: JobStore) -> None:
    job = create(store)
    with pytest.raises(ValueError, match="cannot set"):
        store.claim_queued(
            executor="local",
            action=Action.START,
            limit=1,
            actor="engine",
            values_for=lambda _: {"phase": "COMPLETED"},
        )
    assert store.require(job.id).phase is Phase.QUEUED
    assert count_rows(store, events, job.id) == 1


def test_claimers_sharing_the_database_never_claim_a_job_twice(
    store: JobStore, tmp_path: Path, db_url: str
) -> None:
    """Four stores (as four jobmill processes) claim small groups until the queue is empty."""
    jobs_ = store.create([new_job() for _ in range(60)], actor="tester")
    others = [open_store(Settings(home=tmp_path / "home", database_url=db_url)) for _ in range(4)]

    def drain(i: int) -> list[str]:
        mine: list[str] = []
        while batch := others[i].claim_queued(
            executor="local", action=Action.START, limit=7, actor=f"p{i}", values_for=lambda _: {}
        ):
            mine += [job.id for job in batch]
        return mine

    try:
        results, errors = race(4, drain)
    finally:
        for other in others:
            other.engine.dispose()
            other.read_engine.dispose()
    assert not errors
    claimed = [job_id for result in results for job_id in result]
    assert sorted(claimed) == sorted(job.id for job in jobs_)  # each exactly once
    for job in jobs_:
        assert [e.name for e in store.events(job.id)] == ["created", "start"]


def test_record_many_in_one_transaction(store: JobStore) -> None:
    first, second = create(store), create(store)
    gone = str(uuid.uuid4())
    changed = store.record_many(
        "submitted",
        {
            first.id: Entry({"native_id": "1_0"}, {"native_id": "1_0"}),
            second.id: Entry({"native_id": "1_1"}, {"native_id": "1_1"}),
            gone: Entry({}, {"native_id": "1_2"}),
        },
        actor="engine",
    )
    assert set(changed) == {first.id, second.id}
    assert store.require(second.id).native_id == "1_1"
    event = store.events(first.id)[-1]
    assert (event.name, event.n, event.data) == ("submitted", 2, {"native_id": "1_0"})
    with pytest.raises(ValueError):
        store.record_many("x", {first.id: Entry(values={"phase": "ERROR"})}, actor="t")
    assert store.record_many("x", {}, actor="t") == {}


def test_transition_many_applies_each_change_on_its_own_merits(store: JobStore) -> None:
    running = store.transition(create(store).id, Action.START, actor="t")
    ended = store.transition(create(store).id, Action.ABORT, actor="t")
    gone = str(uuid.uuid4())
    outcomes = store.transition_many(
        [
            Change(running.id, Action.COMPLETE, data={"exit_code": 0}, values={"exit_code": 0}),
            Change(ended.id, Action.COMPLETE),
            Change(gone, Action.FAIL),
        ],
        actor="engine",
    )
    done = outcomes[running.id]
    assert isinstance(done, Job) and done.phase is Phase.COMPLETED and done.exit_code == 0
    assert isinstance(outcomes[ended.id], Conflict)
    assert isinstance(outcomes[gone], NotFound)
    assert store.require(ended.id).phase is Phase.ABORTED
    assert [e.name for e in store.events(running.id)] == ["created", "start", "complete"]
    assert store.transition_many([], actor="t") == {}


def test_transition_many_groups_by_action_and_keeps_each_jobs_data(store: JobStore) -> None:
    queued = [create(store) for _ in range(3)]
    running = store.transition(create(store).id, Action.START, actor="t")
    gone = str(uuid.uuid4())
    outcomes = store.transition_many(
        [
            *(
                Change(job.id, Action.START, data={"n": n}, values={"native_id": f"{n}@1"})
                for n, job in enumerate(queued)
            ),
            Change(running.id, Action.FAIL, data={"exit_code": 3}, values={"exit_code": 3}),
            Change(gone, Action.START),
        ],
        actor="engine",
    )
    assert isinstance(outcomes[gone], NotFound)
    for n, job in enumerate(queued):
        done = outcomes[job.id]
        assert isinstance(done, Job) and done.phase is Phase.EXECUTING, done
        assert done.native_id == f"{n}@1" and done.started_at is not None
        assert store.events(job.id)[-1].data == {"n": n}
    failed = outcomes[running.id]
    assert isinstance(failed, Job) and (failed.phase, failed.exit_code) == (Phase.ERROR, 3)


def test_transition_many_applies_two_changes_of_one_job_in_order(store: JobStore) -> None:
    job = create(store)
    outcomes = store.transition_many(
        [
            Change(job.id, Action.START, values={"native_id": "9@1"}),
            Change(job.id, Action.COMPLETE, values={"exit_code": 0}),
        ],
        actor="engine",
    )
    done = outcomes[job.id]
    assert isinstance(done, Job) and done.phase is Phase.COMPLETED and done.native_id == "9@1"
    assert [e.name for e in store.events(job.id)] == ["created", "start", "complete"]


def test_transition_many_checks_the_expected_reason(store: JobStore) -> None:
    job = create(store)
    outcomes = store.transition_many(
        [Change(job.id, Action.START, expect_reason="backend")], actor="engine"
    )
    assert isinstance(outcomes[job.id], Conflict)
    assert store.require(job.id).phase is Phase.QUEUED


# -- reports ---------------------------------------------------------------------------------


def test_merge_report(store: JobStore) -> None:
    job = create(store)
    store.merge_report(
        job.id, reports.merge, {"counters": {"a": 1, "b": 2}, "status": "x"}, actor="job"
    )
    merged = store.merge_report(
        job.id, reports.merge, {"counters": {"b": 3, "c": 4}, "note": "n"}, actor="job"
    )
    assert merged == {"counters": {"a": 1, "b": 3, "c": 4}, "status": "x", "note": "n"}
    assert store.require(job.id).event_count == 3
    assert store.require(job.id).report == merged
    event = store.events(job.id)[-1]
    assert (event.name, event.actor, event.from_phase, event.to_phase) == (
        "report",
        "job",
        None,
        None,
    )
    assert event.data == {"counters": {"b": 3, "c": 4}, "note": "n"}
    assert store.require(job.id).phase is Phase.QUEUED
    with pytest.raises(NotFound):
        store.merge_report(str(uuid.uuid4()), reports.merge, {"a": 1}, actor="job")


def test_concurrent_reports_lose_no_counter(store: JobStore) -> None:
    job = create(store)
    store.transition(job.id, Action.START, actor="t")
    posts = 50

    def post_many(thread: int) -> None:
        for k in range(posts):
            payload = reports.normalise({"counters": {f"t{thread}-{k}": k}, f"last-{thread}": k})
            store.merge_report(job.id, reports.merge, payload, actor=f"job-{thread}")

    _results, errors = race(THREADS, post_many)
    assert errors == []
    report = store.require(job.id).report
    assert report["counters"] == {f"t{t}-{k}": k for t in range(THREADS) for k in range(posts)}
    assert {key: report[key] for key in report if key != "counters"} == {
        f"last-{t}": posts - 1 for t in range(THREADS)
    }
    history = store.events(job.id, limit=1000)
    assert len([e for e in history if e.name == "report"]) == THREADS * posts
    assert [e.n for e in history] == list(range(1, THREADS * posts + 3))
    assert store.require(job.id).event_count == THREADS * posts + 2


# -- tokens and deletion ------------------------------------------------------------------------


def test_check_job_token(store: JobStore) -> None:
    job = create(store)
    assert not store.check_job_token(job.id, "")
    assert not store.check_job_token(job.id, "anything")
    store.transition(job.id, Action.START, actor="t", values={"token_hash": hash_secret("s3cret")})
    assert store.check_job_token(job.id, "s3cret")
    assert not store.check_job_token(job.id, "s3cret ")
    assert not store.check_job_token(job.id, hash_secret("s3cret"))
    assert not store.check_job_token(str(uuid.uuid4()), "s3cret")
    other = create(store)
    assert not store.check_job_token(other.id, "s3cret")
    with store.engine.connect() as conn:
        stored = conn.execute(select(jobs.c.token_hash).where(jobs.c.id == job.id)).scalar()
    assert stored == hash_secret("s3cret") != "s3cret"
    store.transition(job.id, Action.COMPLETE, actor="t")
    assert not store.check_job_token(job.id, "s3cret")  # a job's token ends with the job


def test_an_ended_job_takes_no_report(store: JobStore) -> None:
    job = create(store)
    store.transition(job.id, Action.START, actor="t")
    store.merge_report(job.id, reports.merge, {"a": 1}, actor="job")
    store.transition(job.id, Action.COMPLETE, actor="t")
    with pytest.raises(Conflict) as refused:
        store.merge_report(job.id, reports.merge, {"a": 2}, actor="job")
    assert refused.value.field == "token"
    ended = store.require(job.id)
    assert ended.report == {"a": 1}


def test_delete_removes_the_job_but_keeps_its_history(store: JobStore) -> None:
    keep, gone = create(store), create(store)
    for job in (keep, gone):
        store.transition(job.id, Action.START, actor="t")
        store.merge_report(job.id, reports.merge, {"a": 1}, actor="job")
    store.delete(gone.id, actor="alice")
    assert store.get(gone.id) is None
    assert count_rows(store, jobs, gone.id) == 0
    assert gone.id not in {j.id for j in store.list(JobFilter())}
    history = store.events(gone.id)
    assert [(e.n, e.name) for e in history] == [(1, "created"), (2, "start"), (3, "report"),
                                                (4, "deleted")]  # fmt: skip
    deleted = history[-1]
    assert (deleted.actor, deleted.from_phase, deleted.to_phase) == ("alice", None, None)
    assert deleted.data["phase"] == "EXECUTING" and deleted.data["owner"] == "alice"
    assert deleted.data["report"] == {"a": 1} and deleted.data["type"] == "sleep"
    assert count_rows(store, events, keep.id) == 3
    assert store.get(keep.id) is not None
    with pytest.raises(NotFound):
        store.delete(gone.id)
    assert len(store.events(gone.id)) == 4  # nothing after "deleted"


def test_user_tokens(store: JobStore) -> None:
    tokens = store.tokens
    assert not tokens.has_any()
    assert tokens.find("nothing") is None
    alice_id = tokens.add("alice", "alice-secret", admin=False, note="laptop")
    root_id = tokens.add("root", "root-secret", admin=True)
    assert alice_id != root_id
    assert tokens.has_any()
    alice = tokens.find("alice-secret")
    assert alice is not None and (alice.id, alice.user, alice.admin) == (alice_id, "alice", False)
    assert alice.note == "laptop" and alice.state() == "active" and alice.created_at is not None
    root = tokens.find("root-secret")
    assert root is not None and (root.id, root.user, root.admin) == (root_id, "root", True)
    assert tokens.find("alice-secret2") is None
    assert tokens.find("") is None
    with store.engine.connect() as conn:
        hashes = set(conn.execute(select(tokens_table.c.token_hash)).scalars())
    assert hashes == {hash_secret("alice-secret"), hash_secret("root-secret")}
    with pytest.raises(IntegrityError):
        tokens.add("mallory", "alice-secret", admin=True)
    revoked = tokens.revoke(alice_id)
    assert revoked.state() == "revoked" and revoked.revoked_at is not None
    assert tokens.revoke(alice_id).revoked_at == revoked.revoked_at  # twice changes nothing
    assert tokens.find("alice-secret") is None
    assert tokens.lookup("alice-secret") == revoked
    assert tokens.has_any()
    assert [t.id for t in tokens.list()] == [root_id]
    assert [t.id for t in tokens.list(include_inactive=True)] == [alice_id, root_id]
    assert tokens.list("alice") == []
    with pytest.raises(NotFound):
        tokens.revoke(root_id, user="alice")  # not hers
    with pytest.raises(NotFound):
        tokens.revoke(9999)
    tokens.revoke(root_id)
    assert not tokens.has_any()
    assert tokens.find("root-secret") is None


def test_token_expiry_and_last_use(store: JobStore) -> None:
    tokens = store.tokens
    now = utcnow()
    short = tokens.add("carol", "short", admin=False, expires_at=now + timedelta(seconds=60))
    gone = tokens.add("carol", "gone", admin=False, expires_at=now - timedelta(seconds=1))
    record = tokens.find("short")
    assert record is not None and record.expires_at is not None and record.last_used_at is None
    assert tokens.find("gone") is None
    gone_record = tokens.lookup("gone")
    assert gone_record is not None and gone_record.state() == "expired"
    assert [t.id for t in tokens.list("carol")] == [short]
    assert {t.id for t in tokens.list("carol", include_inactive=True)} == {short, gone}
    tokens.touch(short, now)
    first = tokens.lookup("short")
    assert first is not None and first.last_used_at is not None
    tokens.touch(short, now + timedelta(seconds=5))  # within a minute: not written again
    again = tokens.lookup("short")
    assert again is not None and again.last_used_at == first.last_used_at
    tokens.touch(short, now + timedelta(minutes=2))
    later = tokens.lookup("short")
    assert later is not None and later.last_used_at is not None
    assert later.last_used_at > first.last_used_at
