"""Group commit (``storage/group.py``): writes waiting at the same moment share a transaction,
each caller is answered after the commit, and one write's refusal or the database's failure
does not spoil the others."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, String, Table, select

from jobmill.domain.errors import Conflict
from jobmill.storage.db import make_engine
from jobmill.storage.group import GroupCommit, Write

metadata = MetaData()
rows = Table(
    "rows",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("value", String, unique=True, nullable=False),
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = make_engine(f"sqlite:///{tmp_path / 'group.sqlite'}")
    metadata.create_all(made)
    try:
        yield made
    finally:
        made.dispose()


@pytest.fixture
def group(engine: Engine) -> Iterator[GroupCommit]:
    committer = GroupCommit(engine)
    try:
        yield committer
    finally:
        committer.close()


def values(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [row.value for row in conn.execute(select(rows.c.value).order_by(rows.c.id))]


def insert(engine: Engine, value: str, *, then: Callable[[], None] | None = None) -> Write[str]:
    """A write that inserts ``value`` (then runs ``then``, which may raise)."""

    def work(conn: Connection) -> str:
        conn.execute(rows.insert().values(value=value))
        if then is not None:
            then()
        return value

    def alone() -> str:
        with engine.begin() as conn:
            return work(conn)

    return Write(work=work, alone=alone)


def run_all(group: GroupCommit, writes: list[Write[str]]) -> list[str | BaseException]:
    """Run the writes from one thread each, the first one first; their answers in order."""
    answers: list[str | BaseException] = [RuntimeError("no answer")] * len(writes)

    def call(index: int) -> None:
        try:
            answers[index] = group.run(writes[index])
        except Exception as exc:  # noqa: BLE001 - the test compares them
            answers[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(writes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


def held_first(engine: Engine) -> tuple[Write[str], threading.Event, threading.Event]:
    """A first write that holds the writer thread until released, so the others queue up."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        assert release.wait(30)

    return insert(engine, "first", then=hold), entered, release


def test_writes_waiting_together_share_one_transaction(engine: Engine, group: GroupCommit) -> None:
    first, entered, release = held_first(engine)
    runner = threading.Thread(target=group.run, args=(first,))
    runner.start()
    assert entered.wait(10)
    later = [insert(engine, f"v{i}") for i in range(10)]
    done: list[list[str | BaseException]] = []
    waiter = threading.Thread(target=lambda: done.append(run_all(group, later)))
    waiter.start()
    while len(group._queue) < 10:  # all ten are queued behind the first
        threading.Event().wait(0.01)
    release.set()
    runner.join(30)
    waiter.join(30)
    assert done[0] == [f"v{i}" for i in range(10)]
    assert sorted(values(engine)) == sorted(["first"] + [f"v{i}" for i in range(10)])
    assert (group.transactions, group.writes) == (2, 11)


def test_a_refused_write_leaves_nothing_and_spoils_no_other(
    engine: Engine, group: GroupCommit
) -> None:
    first, entered, release = held_first(engine)
    runner = threading.Thread(target=group.run, args=(first,))
    runner.start()
    assert entered.wait(10)

    def refuse() -> None:
        raise Conflict("no", field="value")

    writes = [insert(engine, "a"), insert(engine, "b", then=refuse), insert(engine, "c")]
    answers: list[list[str | BaseException]] = []
    waiter = threading.Thread(target=lambda: answers.append(run_all(group, writes)))
    waiter.start()
    while len(group._queue) < 3:
        threading.Event().wait(0.01)
    release.set()
    runner.join(30)
    waiter.join(30)
    a, b, c = answers[0]
    assert (a, c) == ("a", "c")
    assert isinstance(b, Conflict)
    assert sorted(values(engine)) == ["a", "c", "first"]  # b's insert was rolled back


def test_when_the_database_fails_the_group_each_write_runs_alone(
    engine: Engine, group: GroupCommit
) -> None:
    """Two writes of one group insert the same unique value: the group's transaction fails,
    so each runs alone; the first wins, the second gets the database's error."""
    first, entered, release = held_first(engine)
    runner = threading.Thread(target=group.run, args=(first,))
    runner.start()
    assert entered.wait(10)
    writes = [insert(engine, "same"), insert(engine, "same"), insert(engine, "other")]
    answers: list[list[str | BaseException]] = []
    waiter = threading.Thread(target=lambda: answers.append(run_all(group, writes)))
    waiter.start()
    while len(group._queue) < 3:
        threading.Event().wait(0.01)
    release.set()
    runner.join(30)
    waiter.join(30)
    got = answers[0]
    assert got.count("same") == 1 and "other" in got
    assert sum(isinstance(answer, Exception) for answer in got) == 1
    assert sorted(values(engine)) == ["first", "other", "same"]


def test_a_caller_is_answered_only_after_the_commit(engine: Engine, group: GroupCommit) -> None:
    seen: list[list[str]] = []
    assert group.run(insert(engine, "x")) == "x"
    seen.append(values(engine))  # read on another connection, right after the answer
    assert seen == [["x"]]


def test_from_the_event_loop_without_a_thread(engine: Engine, group: GroupCommit) -> None:
    async def main() -> list[str]:
        return list(
            await asyncio.gather(*(group.run_async(insert(engine, f"a{i}")) for i in range(20)))
        )

    assert asyncio.run(main()) == [f"a{i}" for i in range(20)]
    assert len(values(engine)) == 20
    assert group.transactions < 20  # the twenty waited together at least once


def test_an_abandoned_async_caller_does_not_stop_the_writer(
    engine: Engine, group: GroupCommit
) -> None:
    first, entered, release = held_first(engine)

    async def main() -> str:
        holder = asyncio.create_task(group.run_async(first))
        assert await asyncio.to_thread(entered.wait, 10)
        gone = asyncio.create_task(group.run_async(insert(engine, "gone")))
        await asyncio.sleep(0.05)
        gone.cancel()  # the client went away; its write still commits
        release.set()
        return await holder

    assert asyncio.run(main()) == "first"
    assert group.run(insert(engine, "after")) == "after"
    assert sorted(values(engine)) == ["after", "first", "gone"]


def test_a_write_that_waits_for_another_write_is_refused_not_hung(
    engine: Engine, group: GroupCommit
) -> None:
    """Work that calls ``run`` would wait for its own thread: it gets an error at once, the
    group fails, and the write runs alone."""
    nested = Write(work=lambda conn: group.run(insert(engine, "inner")), alone=lambda: "alone")
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(group.run(nested)))
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert result == ["alone"]
    assert values(engine) == []


def test_close_runs_what_is_queued_then_refuses(engine: Engine) -> None:
    committer = GroupCommit(engine)
    assert committer.run(insert(engine, "before")) == "before"
    committer.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        committer.run(insert(engine, "after"))
    assert values(engine) == ["before"]


def test_an_idle_writer_thread_ends_and_the_next_write_starts_another(
    engine: Engine, group: GroupCommit, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jobmill.storage.group as module

    monkeypatch.setattr(module, "IDLE_SECONDS", 0.05)
    assert group.run(insert(engine, "one")) == "one"
    first = group._thread
    assert first is not None
    first.join(5)
    assert not first.is_alive() and group._thread is None  # no thread while unused
    assert group.run(insert(engine, "two")) == "two"
    assert values(engine) == ["one", "two"]
