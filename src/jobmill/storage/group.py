"""Group commit: the writes of many requests share one transaction, and each request is answered
only after that transaction has committed.

A request that writes (a PipelineJobs event, a progress report) hands a ``Write`` to the store's
``GroupCommit`` and waits: an ``asyncio`` future for a request on the event loop (no thread-pool
hop), a ``concurrent.futures`` future for a caller in a thread. One writer thread takes every
write waiting at that moment, runs them one after another on one connection in one
transaction, commits once, and only then answers each caller. Under load the cost of opening
and committing a transaction (on PostgreSQL, the WAL flush) is shared by the whole group; alone,
a write runs at once, without waiting for company.

One write cannot spoil the others' transaction:

* a write that refuses (any ``JobmillError``: not found, a conflict, forbidden) raises before
  its caller is answered; the transaction is rolled back, that caller gets the error, and the
  writes that ran before it run again in a new transaction without it. Writes are functions of
  the database state, so the replay gives them what they gave before, and the order in which
  the group's writes take effect stays the order in which they came;
* when the database itself fails the group (a lock timeout, a deadlock with another process, a
  lost connection, a unique key two processes raced for), each write of the group runs again
  alone, through its ``alone`` function: the write's own transaction with its own retries, as
  without group commit.

Nothing a write does outside the database may happen inside ``work``: a caller acts on its
answer (wakes the engine, say) after the commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

from jobmill.domain.errors import JobmillError

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_GROUP = 64  # writes per transaction: bounds the replay work after a refusal
IDLE_SECONDS = 5.0  # the writer thread ends after about twice this without work


@dataclass(frozen=True)
class Write(Generic[T]):
    """One caller's write: ``work`` runs inside a shared transaction; ``alone`` does the same in
    a transaction of its own (with the retries the write needs when it races another process)."""

    work: Callable[[Connection], T]
    alone: Callable[[], T]


@dataclass(eq=False)
class _Pending:
    write: Write[Any]
    answer: Callable[[Any, BaseException | None], None]


class _Refused(Exception):
    """A write of the group refused: roll the transaction back, replay the others."""


@dataclass
class GroupCommit:
    """Runs the writes handed to it in shared transactions on ``engine``, from one thread."""

    engine: Engine
    max_group: int = MAX_GROUP
    name: str = "jobmill-group-commit"
    transactions: int = 0  # committed groups, for tests and benchmarks
    writes: int = 0
    _queue: deque[_Pending] = field(default_factory=deque)
    _ready: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None
    _closed: bool = False
    _idle_since: float | None = None

    # -- callers ----------------------------------------------------------------------------

    def run(self, write: Write[T]) -> T:
        """Run ``write`` and return its result once committed (or raise its error); blocks."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def answer(value: Any, error: BaseException | None) -> None:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        if threading.current_thread() is self._thread:
            # A write's work waiting for another write would wait for itself.
            raise RuntimeError("a write may not wait for another write")
        self._put(_Pending(write, answer))
        return future.result()

    async def run_async(self, write: Write[T]) -> T:
        """Run ``write`` and return its result once committed; the event loop stays free."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if future.done():  # the request went away meanwhile
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        def answer(value: Any, error: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(settle, value, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        self._put(_Pending(write, answer))
        return await future

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _put(self, pending: _Pending) -> None:
        with self._ready:
            if self._closed:
                raise RuntimeError("jobmill is shutting down")
            self._queue.append(pending)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._thread.start()
            self._ready.notify()

    # -- the writer thread ------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._ready:
                if not self._queue and not self._closed:
                    self._ready.wait(IDLE_SECONDS)
                if not self._queue:
                    if self._closed or self._idle_since is not None:
                        # Closed and drained, or idle twice over: end the thread (the next
                        # write starts another), so an unused store holds no thread.
                        self._thread = None
                        return
                    self._idle_since = time.monotonic()
                    continue
                self._idle_since = None
                count = min(len(self._queue), self.max_group)
                group = [self._queue.popleft() for _ in range(count)]
            try:
                self._commit(group)
            except BaseException as exc:  # never leave a caller waiting
                log.exception("group commit failed")
                for pending in group:
                    pending.answer(None, exc)

    def _commit(self, group: list[_Pending]) -> None:
        waiting = list(group)
        while waiting:
            results: list[Any] = []
            refused: tuple[_Pending, JobmillError] | None = None
            try:
                with self.engine.begin() as conn:
                    for pending in waiting:
                        try:
                            results.append(pending.write.work(conn))
                        except JobmillError as exc:
                            refused = (pending, exc)
                            raise _Refused from exc
            except _Refused:
                assert refused is not None
                pending, error = refused
                pending.answer(None, error)
                waiting.remove(pending)
                continue
            except Exception:
                # The database refused the group: every write on its own, with its retries.
                log.debug("group of %d failed; running each alone", len(waiting), exc_info=True)
                for pending in waiting:
                    self._alone(pending)
                return
            self.transactions += 1
            self.writes += len(waiting)
            for pending, value in zip(waiting, results, strict=True):
                pending.answer(value, None)
            return

    @staticmethod
    def _alone(pending: _Pending) -> None:
        try:
            value = pending.write.alone()
        except Exception as exc:  # noqa: BLE001 - it is the caller's answer
            pending.answer(None, exc)
        else:
            pending.answer(value, None)
