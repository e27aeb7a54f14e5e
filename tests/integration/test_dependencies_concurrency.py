"""Releases and links under concurrency, on SQLite and on PostgreSQL (where each thread's
transaction is a separate connection, as two jobmill processes sharing the database are):
parents of one job that end at the same moment release it exactly once, and two links that
would together close a cycle cannot both be made."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from jobmill.domain.errors import Conflict
from jobmill.domain.jobs import NewJob, utcnow
from jobmill.domain.lifecycle import Action, Phase
from jobmill.storage.jobs import JobStore

ROUNDS = 15


def new(**values: Any) -> NewJob:
    base: dict[str, Any] = {
        "type": "sleep",
        "owner": "alice",
        "parameters": {},
        "executor": "local",
        "execution_duration": 0,
        "destruction_at": utcnow(),
        "reason": "capacity",
    }
    return NewJob(**(base | values))


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` in threads released together; their results (or exceptions)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_parents_ending_together_release_their_child_once(store: JobStore) -> None:
    for _ in range(ROUNDS):
        parents = store.create([new(), new(), new()], actor="alice")
        child = store.create([new(after=tuple(p.id for p in parents))], actor="alice")[0]
        assert child.reason == "waiting for upstream jobs"
        for parent in parents:
            store.transition(parent.id, Action.START, actor="jobmill")
        outcomes = at_once(
            *(
                (lambda p=p: store.transition(p.id, Action.COMPLETE, actor="jobmill"))
                for p in parents
            )
        )
        assert all(getattr(o, "phase", None) is Phase.COMPLETED for o in outcomes), outcomes
        released = store.get(child.id)
        assert released is not None and released.reason == "capacity"
        waits = [e for e in store.events(child.id) if e.name == "wait"]
        assert len(waits) == 1


def test_a_child_run_while_its_parent_completes_is_never_stranded(store: JobStore) -> None:
    for _ in range(ROUNDS):
        parent = store.create([new()], actor="alice")[0]
        child = store.create([new(phase=Phase.PENDING, reason=None)], actor="alice")[0]
        store.links.link(child.id, [parent.id], actor="alice")
        store.transition(parent.id, Action.START, actor="jobmill")

        def run(child_id: str = child.id) -> None:
            upstream = store.links.upstream_pending(child_id) > 0
            reason = "waiting for upstream jobs" if upstream else "capacity"
            store.transition(child_id, Action.RUN, actor="alice", reason=reason)
            if upstream:
                store.links.release_if_ready(child_id)

        def complete(parent_id: str = parent.id) -> None:
            store.transition(parent_id, Action.COMPLETE, actor="jobmill")

        at_once(run, complete)
        ran = store.get(child.id)
        assert ran is not None and (ran.phase, ran.reason) == (Phase.QUEUED, "capacity")


def test_two_links_closing_a_cycle_together_are_not_both_made(store: JobStore) -> None:
    for _ in range(ROUNDS):
        a, b = store.create(
            [new(phase=Phase.PENDING, reason=None), new(phase=Phase.PENDING, reason=None)],
            actor="alice",
        )
        outcomes = at_once(
            lambda a=a, b=b: store.links.link(b.id, [a.id], actor="alice"),
            lambda a=a, b=b: store.links.link(a.id, [b.id], actor="alice"),
        )
        refused = [o for o in outcomes if isinstance(o, Conflict)]
        assert len(refused) == 1, outcomes
        assert "cycle" in str(refused[0])
        graph = store.links.graph([a.id, b.id])
        assert len(graph.after) == 1
