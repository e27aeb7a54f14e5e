"""ChangeFeed: per-job waiters woken by phase changes read from the store, from any writer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobmill.config import Settings
from jobmill.domain.jobs import NewJob
from jobmill.domain.lifecycle import Action, Phase
from jobmill.factory import open_store
from jobmill.service.feed import ChangeFeed
from jobmill.storage.jobs import JobStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    store = open_store(Settings(home=tmp_path))
    yield store
    store.engine.dispose()
    store.read_engine.dispose()


def new_job(store: JobStore, phase: Phase = Phase.PENDING) -> str:
    reason = "capacity" if phase is Phase.QUEUED else None
    job = NewJob(type="echo", owner="me", parameters={}, executor="local", execution_duration=0,
                 destruction_at=datetime.now(UTC) + timedelta(days=1), phase=phase,
                 reason=reason)  # fmt: skip
    return store.create([job], actor="me")[0].id


def soon(delay: float, action: Callable[[], object]) -> threading.Thread:
    """``action`` in another thread (another writer) after ``delay`` seconds."""

    def run() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


async def timed_wait(
    feed: ChangeFeed, job_id: str, phase: Phase, timeout: float
) -> tuple[bool, float]:
    started = time.monotonic()
    woken = await feed.wait(job_id, phase, timeout)
    return woken, time.monotonic() - started


def run(coro_fn: Callable[[ChangeFeed], object], store: JobStore, **kwargs: float) -> object:
    async def main() -> object:
        feed = ChangeFeed(store, **kwargs)
        await feed.start()
        try:
            return await coro_fn(feed)  # type: ignore[misc]
        finally:
            await feed.stop()

    return asyncio.run(main())


def test_a_phase_change_wakes_the_waiter(store: JobStore) -> None:
    job_id = new_job(store)

    async def scenario(feed: ChangeFeed) -> tuple[bool, float]:
        thread = soon(
            0.3, lambda: store.transition(job_id, Action.RUN, actor="other", reason="capacity")
        )
        result = await timed_wait(feed, job_id, Phase.PENDING, 10)
        thread.join()
        return result

    woken, elapsed = run(scenario, store)  # type: ignore[misc]
    assert woken and 0.25 < elapsed < 1.0


def test_timeout_without_a_change(store: JobStore) -> None:
    job_id = new_job(store)

    async def scenario(feed: ChangeFeed) -> tuple[bool, float]:
        return await timed_wait(feed, job_id, Phase.PENDING, 0.5)

    woken, elapsed = run(scenario, store)  # type: ignore[misc]
    assert not woken and 0.45 < elapsed < 1.0


def test_events_that_do_not_change_the_phase_do_not_wake(store: JobStore) -> None:
    job_id = new_job(store, Phase.QUEUED)

    async def scenario(feed: ChangeFeed) -> tuple[bool, float]:
        def changes() -> None:
            store.record(job_id, "note", actor="other", data={"x": 1})
            store.transition(job_id, Action.WAIT, actor="other", reason="backend")

        thread = soon(0.2, changes)
        result = await timed_wait(feed, job_id, Phase.QUEUED, 0.8)
        thread.join()
        return result

    woken, _elapsed = run(scenario, store)  # type: ignore[misc]
    assert not woken


def test_a_change_before_the_waiter_registered_is_not_missed(store: JobStore) -> None:
    """The request saw PENDING, the job moved on before the waiter was registered."""
    job_id = new_job(store)

    async def scenario(feed: ChangeFeed) -> tuple[bool, float]:
        other = new_job(store)
        keep_busy = asyncio.create_task(feed.wait(other, Phase.PENDING, 5))  # feed is active
        await asyncio.sleep(0.2)
        store.transition(job_id, Action.RUN, actor="other", reason="capacity")
        await asyncio.sleep(0.2)  # the event has been read before anyone waited for this job
        result = await timed_wait(feed, job_id, Phase.PENDING, 5)
        keep_busy.cancel()
        return result

    woken, elapsed = run(scenario, store, reconcile=60)  # type: ignore[misc]
    assert woken and elapsed < 0.5


def test_reconciliation_catches_what_the_log_skipped(store: JobStore) -> None:
    """A waiter whose phase is stale without any event (as after an out-of-order commit)."""
    job_id = new_job(store)

    async def scenario(feed: ChangeFeed) -> tuple[bool, float]:
        # Pretend the request saw QUEUED: no event will ever say the job left QUEUED.
        return await timed_wait(feed, job_id, Phase.QUEUED, 5)

    woken, elapsed = run(scenario, store, reconcile=0.3)  # type: ignore[misc]
    assert woken and elapsed < 1.0


def test_a_deleted_job_wakes_its_waiters(store: JobStore) -> None:
    job_id = new_job(store)

    async def scenario(feed: ChangeFeed) -> tuple[bool, float]:
        thread = soon(0.3, lambda: store.delete(job_id))
        result = await timed_wait(feed, job_id, Phase.PENDING, 5)
        thread.join()
        return result

    woken, elapsed = run(scenario, store, reconcile=0.3)  # type: ignore[misc]
    assert woken and elapsed < 4.0  # woken by the delete, before the wait's 5 s timeout


def test_notify_wakes_at_once_without_waiting_for_the_interval(store: JobStore) -> None:
    job_id = new_job(store)

    async def scenario(feed: ChangeFeed) -> tuple[bool, float]:
        def change() -> None:
            store.transition(job_id, Action.ABORT, actor="me")
            feed.notify(job_id)

        await asyncio.sleep(0)
        thread = soon(0.5, change)
        result = await timed_wait(feed, job_id, Phase.PENDING, 10)
        thread.join()
        return result

    woken, elapsed = run(scenario, store, interval=30, reconcile=30)  # type: ignore[misc]
    assert woken and 0.45 < elapsed < 1.5


def test_many_waiters_and_a_backlog(store: JobStore) -> None:
    ids = [new_job(store) for _ in range(50)]

    async def scenario(feed: ChangeFeed) -> list[bool]:
        waits = [asyncio.create_task(feed.wait(i, Phase.PENDING, 10)) for i in ids]
        await asyncio.sleep(0.2)
        assert feed.waiting() == 50

        def changes() -> None:
            for _ in range(3):  # more than one batch of unrelated events
                for other in [new_job(store) for _ in range(400)]:
                    store.record(other, "note", actor="x")
            for i in ids:
                store.transition(i, Action.RUN, actor="x", reason="capacity")

        await asyncio.to_thread(changes)
        return await asyncio.wait_for(asyncio.gather(*waits), 5)

    assert run(scenario, store, reconcile=60) == [True] * 50


def test_stop_releases_every_waiter(store: JobStore) -> None:
    job_id = new_job(store)

    async def main() -> bool:
        feed = ChangeFeed(store)
        waiting = asyncio.create_task(feed.wait(job_id, Phase.PENDING, 30))
        await asyncio.sleep(0.2)
        await feed.stop()
        return await asyncio.wait_for(waiting, 2)

    assert asyncio.run(main()) is True
