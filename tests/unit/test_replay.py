"""The event-replay check that runs after every test that built a jobmill (``tests/replay.py``)
finds impossible histories, and passes the ones jobmill writes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import insert, update

from jobmill.domain.jobs import NewJob, utcnow
from jobmill.domain.lifecycle import Action, Phase, Reason
from jobmill.storage.jobs import JobStore
from jobmill.storage.tables import events, jobs
from tests.replay import impossible_steps


def create(store: JobStore, **overrides: Any) -> str:
    values: dict[str, Any] = {
        "type": "sleep",
        "owner": "alice",
        "parameters": {},
        "executor": "local",
        "execution_duration": 0,
        "destruction_at": utcnow() + timedelta(days=1),
        "reason": Reason.CAPACITY.value,
    }
    return store.create([NewJob(**(values | overrides))], actor="t")[0].id


def raw_event(store: JobStore, job_id: str, n: int, name: str, src: str, dst: str) -> None:
    """An event written behind the store's back, as a bug would."""
    row = {"job_id": job_id, "n": n, "at": utcnow(), "name": name, "from_phase": src,
           "to_phase": dst, "actor": "bug", "data": {}}  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(insert(events), row)
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(phase=dst, event_count=n))


def test_what_jobmill_writes_replays(store: JobStore, db_url: str) -> None:
    a = create(store)
    store.transition(a, Action.WAIT, actor="t", reason=Reason.BACKEND.value)
    store.transition(a, Action.START, actor="t", reason=Reason.BACKEND.value)
    store.transition(a, Action.LOSE_CONTACT, actor="t")
    store.transition(a, Action.SUSPEND, actor="t")
    store.transition(a, Action.RESUME, actor="t")
    store.record(a, "note", actor="t", data={"reason": "not a reason change"})
    store.transition(a, Action.COMPLETE, actor="t")
    store.transition(a, Action.ARCHIVE, actor="t")
    b = create(store, phase=Phase.PENDING, reason=None)
    store.transition(b, Action.RUN, actor="t", reason=Reason.DATA.value)
    store.delete(b)
    assert impossible_steps(db_url) == []


def test_an_impossible_transition_is_found(store: JobStore, db_url: str) -> None:
    job_id = create(store)
    store.transition(job_id, Action.START, actor="t")
    raw_event(store, job_id, 3, "release", "EXECUTING", "QUEUED")
    [problem] = impossible_steps(db_url)
    assert job_id in problem and "EXECUTING --release--> QUEUED is not in the table" in problem


def test_a_wrong_from_phase_or_a_gap_is_found(store: JobStore, db_url: str) -> None:
    one, two = create(store), create(store)
    raw_event(store, one, 2, "complete", "EXECUTING", "COMPLETED")  # it was QUEUED
    raw_event(store, two, 3, "start", "QUEUED", "EXECUTING")  # no event 2
    problems = impossible_steps(db_url)
    assert any(one in p and "from EXECUTING, but the job was QUEUED" in p for p in problems)
    assert any(two in p and "numbered 3, expected 2" in p for p in problems)


def test_a_reason_change_outside_the_table_is_found(store: JobStore, db_url: str) -> None:
    job_id = create(store, reason=Reason.DATA.value)
    raw_event(store, job_id, 2, "start", "QUEUED", "EXECUTING")  # still waiting for data
    [problem] = impossible_steps(db_url)
    assert "reason waiting for data -> none is not allowed for start" in problem


def test_a_stored_phase_its_events_do_not_explain_is_found(store: JobStore, db_url: str) -> None:
    job_id = create(store)
    with store.engine.begin() as conn:  # a blind overwrite, without an event
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(phase="EXECUTING"))
    [problem] = impossible_steps(db_url)
    assert "stored EXECUTING (capacity), but its events say QUEUED (capacity)" in problem


def test_an_event_after_deleted_is_found(store: JobStore, db_url: str) -> None:
    job_id = create(store)
    store.delete(job_id)
    with store.engine.begin() as conn:
        conn.execute(insert(events), {"job_id": job_id, "n": 3, "at": utcnow(), "name": "note",
                                      "from_phase": None, "to_phase": None, "actor": "bug",
                                      "data": {}})  # fmt: skip
    [problem] = impossible_steps(db_url)
    assert "comes after the job was deleted" in problem
