"""ChangeFeed: wakes blocked requests (UWS ``WAIT``) when a job's phase changes, in any process.

One asyncio task serves every waiter. While anyone waits it reads the global change feed
(``JobStore.events_since``) every ``interval`` seconds (a fixed period) in a worker thread, one
short indexed query, and wakes the waiters of each job that had a phase-changing event. A
waiting request holds no thread and no database connection, only an ``asyncio.Future``; changes
made by another jobmill process sharing the database are seen like local ones, because they are
read from the database.

Two checks close the gaps an event feed alone would leave:

* a new waiter says which phase its request saw; the first pass after it registers compares that
  with the job's current phase (``JobStore.phases``), so a change that happened between the
  request's read and its registration is not missed;
* every ``reconcile`` seconds all waited jobs are compared the same way, which covers events a
  reader skipped (PostgreSQL may commit sequence numbers out of order) and deleted jobs.

When nobody waits, the task sleeps and runs no queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from jobmill.domain.jobs import Event
from jobmill.domain.lifecycle import Phase
from jobmill.storage.jobs import JobStore

log = logging.getLogger(__name__)
BATCH = 1000


@dataclass(eq=False)
class Waiter:
    """One blocked request: the job, the phase the request saw, and the future it awaits."""

    job_id: str
    phase: Phase
    future: asyncio.Future[None]
    checked: bool = False

    def wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


@dataclass
class _Pass:
    """What one pass read from the database (in a worker thread)."""

    events: list[Event] = field(default_factory=list)
    phases: dict[str, Phase] = field(default_factory=dict)
    checked: set[str] = field(default_factory=set)
    start_seq: int | None = None


class ChangeFeed:
    """Wakes per-job waiters on phase changes read from the store's event log."""

    def __init__(self, store: JobStore, *, interval: float = 0.03, reconcile: float = 1.0) -> None:
        self.store = store
        self.interval = interval
        self.reconcile = reconcile
        self._waiters: dict[str, set[Waiter]] = {}
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_seq: int | None = None
        self._next_reconcile = 0.0

    # -- lifetime ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the task on the running event loop (a no-op when it already runs there)."""
        loop = asyncio.get_running_loop()
        if self.running and self._loop is loop:
            return
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._last_seq = None
        self._task = loop.create_task(self._run(), name="jobmill-change-feed")

    async def stop(self) -> None:
        """Stop the task; every current waiter is woken so its request can answer."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.wake()

    def notify(self, job_id: str | None = None) -> None:
        """Look at the database now rather than at the next interval (from any thread).

        For changes made in this process; ``job_id`` is informational, a pass checks them all.
        """
        loop, wakeup = self._loop, self._wakeup
        if loop is None or wakeup is None or not self._waiters:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(wakeup.set)

    # -- waiting ----------------------------------------------------------------------------

    async def wait(self, job_id: str, phase: Phase, timeout: float) -> bool:
        """Block until the job leaves ``phase`` (the phase the caller saw), or ``timeout``.

        Returns True when woken by a change (or a deleted job, or shutdown), False on timeout.
        """
        if timeout <= 0:
            return False
        await self.start()
        assert self._loop is not None and self._wakeup is not None
        waiter = Waiter(job_id, phase, self._loop.create_future())
        self._waiters.setdefault(job_id, set()).add(waiter)
        self._wakeup.set()
        try:
            await asyncio.wait_for(waiter.future, timeout)
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[job_id]
        return True

    def waiting(self) -> int:
        """How many requests wait right now."""
        return sum(len(w) for w in self._waiters.values())

    # -- the task ---------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._waiters:
                # Idle: no queries until someone waits; the log position is then stale.
                self._last_seq = None
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._wakeup.clear()
            started = time.monotonic()
            try:
                more = await self._pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("change feed: reading the event log failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if more:
                continue  # a backlog: read on at once
            # A fixed period from the start of each pass, not a pause after it: a change made by
            # another process is then seen within ``interval`` plus one read, not two. A short
            # floor keeps a slow database from being read back to back.
            pause = max(self.interval - (time.monotonic() - started), self.interval / 5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), pause)

    async def _pass(self) -> bool:
        """One pass over the event log and the phases to check; True if more events wait."""
        now = time.monotonic()
        if now >= self._next_reconcile:
            self._next_reconcile = now + self.reconcile
            ids = set(self._waiters)
        else:
            ids = {job_id for job_id, ws in self._waiters.items() if any(not w.checked for w in ws)}
        for job_id in ids:
            for waiter in self._waiters.get(job_id, ()):
                waiter.checked = True
        # Waiters registered after this point are checked by the next pass.
        result = await asyncio.to_thread(self._read, self._last_seq, ids)
        for event in result.events:
            if event.to_phase is None or event.to_phase == event.from_phase:
                continue
            for waiter in self._waiters.get(event.job_id, ()):
                if waiter.phase != event.to_phase:
                    waiter.wake()
        for job_id in result.checked:
            current = result.phases.get(job_id)  # None: the job is gone
            for waiter in self._waiters.get(job_id, ()):
                if waiter.checked and current != waiter.phase:
                    waiter.wake()
        if result.start_seq is not None:
            self._last_seq = result.start_seq
        if result.events:
            self._last_seq = result.events[-1].seq
        return len(result.events) >= BATCH

    def _read(self, last_seq: int | None, ids: set[str]) -> _Pass:
        result = _Pass(checked=ids)
        if last_seq is None:
            # Start from the end of the log; changes before now are caught by the phase check.
            result.start_seq = self.store.last_event_seq()
        else:
            result.events = self.store.events_since(last_seq, limit=BATCH)
        if ids:
            result.phases = self.store.phases(sorted(ids))
        return result
