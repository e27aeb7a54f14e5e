"""The engine: one thread that dispatches queued jobs and watches running ones, on every executor.

It sleeps in ``poll()`` on a wake-up pipe plus one pidfd per running local job, so a new job
starts and a finished local job is recorded the moment either happens, with no per-job watcher.
Every ``poll_interval`` it reconciles: it asks each executor about *all* of its jobs in one call
(one ``squeue``, one schedd query...), records each answer as the transition table's one action
from the job's phase to the answered one (UNKNOWN only when the backend answered it two polls in
a row: ``lose_contact``), enforces execution durations,
stops jobs whose phase was ended elsewhere (an abort through another jobmill process sharing the
database), retries submissions a backend refused while it was down, and archives jobs past their
destruction time. On start it re-attaches to the jobs an earlier jobmill process left behind.

Every job is handed to its executor while QUEUED (reason ``backend``) and becomes EXECUTING when
the executor says it runs. Local jobs go to the shepherd (``executors.shepherd``), which runs
``max_local_jobs`` at a time; when local jobs end quickly the engine hands it up to
``MAX_AHEAD`` more than it has slots (as many as ended in the last second or so), so the
shepherd starts the next job the moment one ends instead of waiting for the engine's next
cycle, and the engine records starts and ends in groups, one transaction each.

Beside it: ``service.submission`` hands claimed jobs to a backend, ``service.recovery`` finds
the jobs to re-attach to after a restart, ``service.outputs`` applies the output cap and notes
a full disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jobmill.config import Settings
from jobmill.domain.arp import split_jobtype_name
from jobmill.domain.errors import Conflict, NotFound
from jobmill.domain.jobs import Job
from jobmill.domain.lifecycle import ENDED, TERMINAL, Action, Phase, Reason, action_between
from jobmill.executors.base import RETURNED, Executor, ExecutorUnavailable, NativeStatus
from jobmill.executors.local import LocalExecutor
from jobmill.service.dispatcher import ACTOR, Dispatcher
from jobmill.service.failures import REPORT_EVERY, FailureLog
from jobmill.service.files import STREAMS
from jobmill.service.handover import hand_over
from jobmill.service.lease import Lease
from jobmill.service.outputs import ended_as, over_cap, past_cap
from jobmill.service.recovery import left_behind
from jobmill.service.space import DiskSpace
from jobmill.service.submission import Submitter
from jobmill.service.worker import Worker
from jobmill.storage.jobs import Change, JobStore
from jobmill.storage.links import STAGE_EPILOG, STAGE_JOINED, STAGE_SUBJOBS

log = logging.getLogger(__name__)
SUBMIT_BATCH = 200  # batch jobs handed to a backend per dispatch pass
MAX_AHEAD = 200  # local jobs handed to the shepherd beyond its free slots, at most
SPACE_EVERY = 0.5  # seconds between two looks at the free space before dispatching
GATHER = 0.01
"""Seconds the local shepherd's news gather before the engine reads them again: starts and
ends are recorded in groups (a transaction per group), at most this much later."""
RETRY_UNAVAILABLE = 10.0  # seconds before a refused submission is tried again
# Polls in a row a backend must answer UNKNOWN before the job is recorded UNKNOWN: a job seen
# once between two queues (HTCondor's queue and history) is not "lost contact".
LOSE_CONTACT_AFTER = 2


@dataclass
class Tracked:
    """A job this engine is responsible for."""

    job_id: str
    executor: str
    native_id: str
    phase: Phase
    deadline: float | None  # wall-clock epoch seconds, from started_at + execution_duration
    stopping: bool = False
    logs: tuple[Path, ...] = ()  # a local job's stdout and stderr (the output cap)
    final: NativeStatus | None = None  # how it ended, once seen (kept while not yet recorded)
    unknown_polls: int = 0  # polls in a row that answered UNKNOWN
    handover: bool = False  # an ARP job: may hand over to the batch job it submits (handover)


class Engine(Worker):
    """Dispatches and monitors jobs on every configured executor."""

    thread_name = "jobmill-engine"

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        dispatcher: Dispatcher,
        executors: Mapping[str, Executor],
        *,
        on_ended: Callable[[], None] | None = None,
        space: DiskSpace | None = None,
        lease: Lease | None = None,
    ) -> None:
        """``on_ended`` is called (on the engine thread) after jobs ended, e.g. to wake the
        rules at once; ``space`` is the free-space rule the job service also applies (by
        default one of the settings' home); with ``lease`` (``service.lease``) the engine
        touches jobs only while it holds its executors' leases."""
        super().__init__()
        self.lease = lease
        if lease is not None:
            lease.on_lost = self.wake
            lease.on_renewed = self._lease_renewed
            for executor in executors.values():
                if isinstance(executor, LocalExecutor):
                    # A shepherd not pinged for two thirds of the lease lets go of its jobs
                    # before a standby can take them over (this engine frozen, or lease lost).
                    executor.silence = max(0.5, lease.ttl * 2 / 3)
        self.settings = settings
        self.store = store
        self.dispatcher = dispatcher
        self.submitter = Submitter(dispatcher, settings.slow_submit)
        self.executors = dict(executors)
        self.tracked: dict[str, Tracked] = {}
        self._by_native: dict[tuple[str, str], str] = {}
        self._cancels: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.on_ended = on_ended
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._queued_hint = True
        self._next_reconcile = 0.0
        self._next_sweep = 0.0
        self._next_retry = 0.0
        self.space = space or DiskSpace(settings.home, settings.min_free)
        self._next_space_warning = 0.0
        self._next_space_check = 0.0
        self._space_low = False
        self._ends = _EndRate()
        self._next_gather = 0.0

    # -- control from other threads -------------------------------------------------------

    def _interrupt(self) -> None:
        self.wake()

    def _closing(self) -> None:
        if self.lease is not None:
            self.lease.release()  # a standby engine takes over at once
        for executor in self.executors.values():
            close = getattr(executor, "close", None)
            if close is not None:
                close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _lease_renewed(self) -> None:
        """(on the lease's thread) The shepherds hear that this engine still holds it."""
        for executor in self.executors.values():
            if isinstance(executor, LocalExecutor):
                executor.ping()

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def notify_queued(self) -> None:
        self._queued_hint = True
        self.wake()

    def request_cancel(self, job: Job) -> None:
        self._cancels.put(job.id)
        self.wake()

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            # With a lease: stand by until this engine holds it, and again if it is lost.
            if self.lease is not None and not self.lease.acquire(self._stop):
                return
            try:
                self.recover()
            except Exception:  # pragma: no cover - logged, the loop still serves new jobs
                log.exception("recovery after restart failed")
            failures = FailureLog(log, "engine cycle")
            while not self._stop.is_set() and (self.lease is None or self.lease.held):
                try:
                    self._cycle()
                except Exception as exc:  # a bug, a full disk: must not stop the engine
                    self._stop.wait(failures.failed(exc))
                else:
                    failures.succeeded()
            if not self._stop.is_set():
                self._stand_down()

    def _stand_down(self) -> None:
        """The lease was lost: forget the tracked jobs (the new holder re-attaches to them);
        the shepherd drops the jobs it had not started (the new holder queues them again)."""
        log.error("engine: lease lost, no longer dispatching or watching; standing by")
        self.tracked.clear()
        self._by_native.clear()
        for executor in self.executors.values():
            if isinstance(executor, LocalExecutor):
                executor.close()

    def _cycle(self) -> None:
        self._drain_cancels()
        if self._queued_hint:
            self._queued_hint = False
            self._dispatch()
        now = time.monotonic()
        if now >= self._next_reconcile:
            self._next_reconcile = now + self.settings.poll_interval
            self._reconcile()
            # Jobs queued by other processes on the database (``jobmill api``) wake nobody
            # here: one claim query per executor and poll interval finds them.
            self._queued_hint = True
        if now >= self._next_sweep:
            self._next_sweep = now + max(self.settings.poll_interval, 5.0)
            self._destroy_due()
        if now >= self._next_retry:
            self._next_retry = now + RETRY_UNAVAILABLE
            self._retry_unavailable()
        timeout = max(0.0, self._next_reconcile - time.monotonic())
        if self._queued_hint:
            timeout = 0.0  # more jobs are waiting: only look at what has happened meanwhile
        fds: dict[int, tuple[str, str]] = {}
        gather = self._next_gather - time.monotonic()
        for name, executor in self.executors.items():
            wait = executor.tick()
            if wait is not None:
                timeout = min(timeout, wait)
            for fd, nid in executor.watch_fds().items():
                if nid or gather <= 0:
                    fds[fd] = (name, nid)
                else:  # the shepherd's news: read once they had GATHER seconds to gather
                    timeout = min(timeout, gather)
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        for fd in fds:
            poller.register(fd, select.POLLIN)
        ended: dict[str, list[str]] = {}
        for fd, _mask in poller.poll(timeout * 1000):
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
            elif fd in fds:
                name, native_id = fds[fd]
                if native_id:
                    ended.setdefault(name, []).append(native_id)
                elif isinstance(executor := self.executors[name], LocalExecutor):
                    ended.setdefault(name, []).extend(executor.changed())  # the shepherd's
                    self._next_gather = time.monotonic() + GATHER
        for name, native_ids in ended.items():
            self._apply(name, self.executors[name].poll(native_ids))

    # -- dispatch -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        now = time.monotonic()
        if now >= self._next_space_check:  # (a statfs per dispatch pass would cost more)
            self._next_space_check = now + SPACE_EVERY
            self._space_low = self.space.low()
        if self._space_low:  # jobs would fail for want of space: they wait in the queue
            if now >= self._next_space_warning:
                self._next_space_warning = now + REPORT_EVERY
                log.warning("not starting jobs: %s", self.space.message())
            return
        for name, executor in self.executors.items():
            if isinstance(executor, LocalExecutor):
                self._dispatch_local(name, executor)
            else:
                self._dispatch_batch(name, executor)

    def _local_running(self, name: str) -> int:
        return sum(1 for t in self.tracked.values() if t.executor == name)

    def _dispatch_local(self, name: str, executor: LocalExecutor) -> None:
        """Claim what the shepherd can start (its free slots, plus ``_EndRate.ahead`` when
        jobs end quickly) in one transaction and hand it over; the shepherd's reports move
        the jobs to EXECUTING and their end (``_apply``)."""
        ahead = self._ends.ahead()
        free = self.settings.max_local_jobs + ahead - self._local_running(name)
        if free <= 0 or free < ahead // 4:
            return  # (the shepherd has enough waiting: topped up in larger groups)
        claimed = self.dispatcher.claim_group(name, free)
        for job, token in claimed:
            spec = self.dispatcher.spec_for(job, token)
            if isinstance(spec, str):
                self.dispatcher.fail(job, spec)
            else:
                self._track(job, name, executor.enqueue(spec))
        if len(claimed) == free:
            self._queued_hint = True  # more may be waiting: the next cycle does not sleep

    def _dispatch_batch(self, name: str, executor: Executor) -> None:
        """Claim up to SUBMIT_BATCH queued jobs (one transaction), hand them to the backend in
        groups, record their ids (one transaction). With more waiting, the next cycle does it
        again without sleeping, after cancellations and finished local jobs had their turn."""
        claimed = self.dispatcher.claim_group(name, SUBMIT_BATCH)
        self._submit_group(name, executor, claimed)
        if len(claimed) == SUBMIT_BATCH:
            self._queued_hint = True  # more are waiting: the next cycle does not sleep

    def _submit_group(self, name: str, executor: Executor, claimed: list[tuple[Job, str]]) -> None:
        """Start claimed jobs (``Submitter.submit``), then ONE transaction records every native
        id. Until then a crash leaves them QUEUED (reason ``backend``) without an id: recovery
        finds them by name (``executor.find``)."""
        submitted = self.submitter.submit(executor, claimed)
        if not submitted:
            return
        recorded = self.store.record_many("submitted", submitted, actor=ACTOR)
        for job_id, entry in submitted.items():
            native_id = entry.values["native_id"]
            changed = recorded.get(job_id)
            if changed is None:  # deleted meanwhile
                executor.cancel(native_id)
            else:
                self._track(changed, name, native_id)

    def _is_local(self, executor: str) -> bool:
        return isinstance(self.executors.get(executor), LocalExecutor)

    def _track(self, job: Job, executor: str, native_id: str) -> None:
        logs: tuple[Path, ...] = ()
        local = self._is_local(executor)
        if local:
            logs = tuple(self.dispatcher.files.log_path(job, stream) for stream in STREAMS)
        self.tracked[job.id] = Tracked(
            job.id, executor, native_id, job.phase, _deadline(job), logs=logs,
            handover=local and split_jobtype_name(job.type) is not None,
        )  # fmt: skip
        self._by_native[(executor, native_id)] = job.id

    def _untrack(self, job_id: str) -> None:
        """Forget a job whose end is recorded (the shepherd need keep it no longer)."""
        tracked = self.tracked.pop(job_id, None)
        if tracked is not None:
            self._by_native.pop((tracked.executor, tracked.native_id), None)
            executor = self.executors.get(tracked.executor)
            if isinstance(executor, LocalExecutor):
                executor.recorded(tracked.native_id)
        self._queued_hint = True  # a slot is free

    def _retry_unavailable(self) -> None:
        """Hand back to dispatch the jobs a backend refused while it was unreachable."""
        for name in self.executors:
            for job in self.store.ids_in_phase(
                [Phase.QUEUED], executor=name, reason=Reason.BACKEND_UNAVAILABLE.value, limit=1000
            ):
                with contextlib.suppress(Conflict, NotFound):
                    self.store.transition(
                        job.id,
                        Action.WAIT,
                        actor=ACTOR,
                        reason=Reason.CAPACITY.value,
                        expect_reason=Reason.BACKEND_UNAVAILABLE.value,
                        data={"why": "retrying the submission"},
                    )
                    self._queued_hint = True

    # -- monitoring -----------------------------------------------------------------------

    def _apply(self, executor: str, statuses: Mapping[str, NativeStatus]) -> None:
        ended: list[tuple[Tracked, NativeStatus]] = []
        started: list[Tracked] = []
        returned: list[Tracked] = []
        seen: set[str] = set()  # job ids answered (a renamed job may be asked about twice)
        for native_id, status in statuses.items():
            job_id = self._by_native.get((executor, native_id))
            tracked = self.tracked.get(job_id) if job_id else None
            if tracked is None or tracked.job_id in seen:
                continue
            seen.add(tracked.job_id)
            if status.native_state == RETURNED:
                returned.append(tracked)
                continue
            just_started = status.native_id is not None and status.native_id != tracked.native_id
            if just_started:  # named once it runs (or already ran): its start recorded first
                self._renamed(tracked, str(status.native_id))
                started.append(tracked)
            if status.phase is Phase.UNKNOWN:
                tracked.unknown_polls += 1
                if tracked.unknown_polls < LOSE_CONTACT_AFTER:
                    continue
            else:
                tracked.unknown_polls = 0
            if status.phase in ENDED:
                ended.append((tracked, status))
                continue
            # The table's one action from the recorded phase to the backend's: start, hold,
            # suspend, resume, release or requeue (preemption, node failure), lose contact, or
            # none (the same phase, or a change the table does not allow).
            action = action_between(tracked.phase, status.phase)
            if action is not None and not just_started:
                self._move(tracked, status, action)
        self._finish_many(ended, started)
        self._returned(returned)

    def _returned(self, returned: list[Tracked]) -> None:
        """Jobs the executor gave back before they started go back to the queue, in ONE
        transaction, while this engine holds its lease (without it, the new holder does)."""
        if not returned:
            return
        if self.lease is None or self.lease.held:
            why = {"why": "the executor gave it back before it started"}
            changes = [
                Change(t.job_id, Action.WAIT, reason=Reason.CAPACITY.value, data=why,
                       expect_reason=Reason.BACKEND.value)
                for t in returned
            ]  # fmt: skip
            self.store.transition_many(changes, actor=ACTOR)
        for tracked in returned:
            self._untrack(tracked.job_id)

    def _renamed(self, tracked: Tracked, native_id: str) -> None:
        """The executor named a job that waited in its queue (the pid of a local job)."""
        self._by_native.pop((tracked.executor, tracked.native_id), None)
        tracked.native_id = native_id
        self._by_native[(tracked.executor, native_id)] = tracked.job_id
        if tracked.stopping:  # cancelled while it waited: it must not run on
            tracked.stopping = False
            self._stop_tracked(tracked)

    def _started(self, started: list[Tracked]) -> None:
        """Record in ONE transaction that jobs handed over while QUEUED started."""
        if started:
            outcomes = self.store.transition_many(self._start_changes(started), actor=ACTOR)
            self._follow_starts(started, outcomes)

    @staticmethod
    def _start_changes(started: list[Tracked]) -> list[Change]:
        """The starts of jobs handed over while QUEUED, with their native ids."""
        return [
            Change(
                t.job_id,
                Action.START,
                reason=Reason.BACKEND.value,
                data={"state": "running", "native_id": t.native_id},
                values={"native_id": t.native_id},
            )
            for t in started
            if t.phase is Phase.QUEUED
        ]

    @staticmethod
    def _follow_starts(started: list[Tracked], outcomes: Mapping[str, object]) -> None:
        for tracked in started:
            job = outcomes.get(tracked.job_id)
            if isinstance(job, Job):
                tracked.phase = job.phase
                tracked.deadline = _deadline(job)
            elif isinstance(job, Conflict):  # held, aborted meanwhile: follow it
                with contextlib.suppress(ValueError):
                    tracked.phase = Phase(str(job.extra.get("phase")))

    def _move(self, tracked: Tracked, status: NativeStatus, action: Action) -> None:
        data = {"state": status.native_state}
        if status.error:
            data["why"] = status.error
        try:
            job = self.store.transition(
                tracked.job_id, action, actor=ACTOR, data=data, reason=Reason.BACKEND.value
            )
        except Conflict as exc:  # e.g. a user's hold or release recorded it first: follow it
            with contextlib.suppress(ValueError):
                tracked.phase = Phase(str(exc.extra.get("phase")))
            return
        except NotFound:
            return
        tracked.phase = job.phase
        tracked.deadline = _deadline(job)

    def _finish(self, tracked: Tracked, status: NativeStatus) -> None:
        self._finish_many([(tracked, status)])

    def _finish_many(
        self, ended: list[tuple[Tracked, NativeStatus]], started: list[Tracked] | None = None
    ) -> None:
        """Record the ends of jobs that ended together and the starts of jobs handed over
        while QUEUED that started meanwhile, in ONE transaction: the ends of the jobs that ran
        before first, then the starts, then the ends of the jobs that just started. The jobs
        EXECUTING in the database so never outnumber the executor's slots."""
        started = started or []
        just = {t.job_id for t in started}
        if any(t.handover and t.job_id in just for t, _ in ended):
            self._started(started)  # an ARP job hands over from its recorded start
            started, just = [], set()
        ended = [(t, s) for t, s in ended if not self._hand_over(t, s)]
        ended = [(tracked, self._final(tracked, status)) for tracked, status in ended]
        ends = self._standing_by([_end_change(t.job_id, status) for t, status in ended])
        changes = [c for c in ends if c.job_id not in just] + self._start_changes(started)
        changes += [c for c in ends if c.job_id in just]
        outcomes = self.store.transition_many(changes, actor=ACTOR)
        self._follow_starts(started, outcomes)
        if not ended:
            return
        self._ends.add(sum(1 for t, _ in ended if self._is_local(t.executor)))
        for tracked, status in ended:
            if isinstance(outcomes.get(tracked.job_id), Conflict) and status.exit_code is not None:
                # Already ended (aborted, timed out): keep the exit status for the record.
                with contextlib.suppress(Conflict, NotFound):
                    self.store.record(
                        tracked.job_id,
                        "exited",
                        actor=ACTOR,
                        data={"exit_code": status.exit_code},
                        values={"exit_code": status.exit_code},
                    )
            self._untrack(tracked.job_id)
        if self.on_ended is not None:
            try:
                self.on_ended()
            except Exception:  # a listener must not stop the engine
                log.exception("on_ended listener failed")

    def _hand_over(self, tracked: Tracked, status: NativeStatus) -> bool:
        """An ARP job whose script submitted a batch job and exited 0: follow that batch job
        from now on (``service.handover``) instead of recording the end."""
        if not tracked.handover or status.phase is not Phase.COMPLETED or not tracked.logs:
            return False
        job = hand_over(self.store, self.executors, tracked.job_id, tracked.logs[0], actor=ACTOR)
        if job is None or job.native_id is None:
            return False
        self._untrack(tracked.job_id)
        self._track(job, job.executor, job.native_id)
        with contextlib.suppress(ExecutorUnavailable):  # else the next reconciliation asks
            self._apply(job.executor, self.executors[job.executor].poll([job.native_id]))
        return True

    def _standing_by(self, changes: list[Change]) -> list[Change]:
        """A main step that completed while sub-jobs it created may still run: the job stands
        by for them (``stand_by``, reason ``waiting for children``), then runs its job type's
        epilog or, without one, completes with them (``storage.links``)."""
        completed = [c.job_id for c in changes if c.action is Action.COMPLETE]
        stages = self.store.links.stages(completed) if completed else {}
        if not stages:
            return changes
        result = []
        for change in changes:
            stage, type_name = stages.get(change.job_id, (None, ""))
            if change.action is Action.COMPLETE and stage == STAGE_SUBJOBS:
                jobtype = self.dispatcher.jobtypes.get(type_name)
                then = STAGE_EPILOG if jobtype is not None and jobtype.epilog else STAGE_JOINED
                change = Change(
                    change.job_id,
                    Action.STAND_BY,
                    reason=Reason.CHILDREN.value,
                    data={**change.data, "then": then},
                    values={**change.values, "stage": then},
                )
            result.append(change)
        return result

    def _final(self, tracked: Tracked, status: NativeStatus) -> NativeStatus:
        """How a local job ended, as recorded (``outputs.ended_as``: ERROR past the output
        cap, a note when the disk was full). Kept on ``tracked``, so a retry after a failed
        write records the same (the disk may have room again by then)."""
        if tracked.final is None:
            tracked.final = ended_as(
                status,
                tracked.logs,
                self.settings.max_job_output,
                self.dispatcher.files.workdir(tracked.job_id),
                self.settings.min_free,
            )
        return tracked.final

    def _check_output(self) -> None:
        """Stop local jobs whose stdout + stderr passed ``max_job_output`` (checked at every
        reconciliation: a job may write one poll interval's worth past the cap)."""
        cap = self.settings.max_job_output
        if cap <= 0:
            return
        for tracked in list(self.tracked.values()):
            if not tracked.stopping and past_cap(tracked.logs, cap):
                error = over_cap(cap)
                log.warning("job %s: %s: stopping it", tracked.job_id, error)
                with contextlib.suppress(Conflict, NotFound):
                    self.store.transition(
                        tracked.job_id,
                        Action.FAIL,
                        actor=ACTOR,
                        values={"error": error},
                        data={"why": error},
                    )
                self._stop_tracked(tracked)

    def _drain_cancels(self) -> None:
        while True:
            try:
                job_id = self._cancels.get_nowait()
            except queue.Empty:
                return
            tracked = self.tracked.get(job_id)
            if tracked is not None:
                self._stop_tracked(tracked)

    def _stop_tracked(self, tracked: Tracked) -> None:
        if tracked.stopping:
            return
        tracked.stopping = True
        try:
            self.executors[tracked.executor].cancel(tracked.native_id)
        except ExecutorUnavailable as exc:
            tracked.stopping = False  # try again at the next reconciliation
            log.warning("cannot cancel %s yet: %s", tracked.native_id, exc)

    def _reconcile(self) -> None:
        for name, executor in self.executors.items():
            native_ids = [t.native_id for t in self.tracked.values() if t.executor == name]
            if not native_ids:
                continue
            try:
                statuses = executor.poll(native_ids)
            except ExecutorUnavailable as exc:
                log.warning("%s: cannot poll: %s", name, exc)
                continue
            self._apply(name, statuses)
        now = datetime.now(UTC).timestamp()
        for tracked in list(self.tracked.values()):
            if tracked.deadline is not None and now >= tracked.deadline and not tracked.stopping:
                self._time_out(tracked)
        self._check_output()
        self._stop_ended_elsewhere()
        self._queued_hint = True

    def _time_out(self, tracked: Tracked) -> None:
        job = self.store.get(tracked.job_id)
        if job is None:
            return
        error = f"execution duration exceeded ({job.execution_duration} s)"
        with contextlib.suppress(Conflict, NotFound):
            self.store.transition(
                job.id, Action.FAIL, actor=ACTOR, values={"error": error}, data={"why": error}
            )
        self._stop_tracked(tracked)

    def _stop_ended_elsewhere(self) -> None:
        phases = self.store.phases([t.job_id for t in self.tracked.values() if not t.stopping])
        for tracked in list(self.tracked.values()):
            if tracked.stopping:
                continue
            phase = phases.get(tracked.job_id)
            if phase is None or phase in TERMINAL:
                self._stop_tracked(tracked)

    def _destroy_due(self) -> None:
        """Archive jobs past their destruction time: stop them, remove their files, keep
        their metadata (UWS destruction, enforced by jobmill itself, no cron needed)."""
        for job in self.store.due_for_destruction(datetime.now(UTC)):
            if job.node not in (None, self.settings.node):
                continue  # its files live on another node; that jobmill archives it
            if job.phase not in TERMINAL:
                with contextlib.suppress(Conflict, NotFound):
                    job = self.store.transition(
                        job.id,
                        Action.ABORT,
                        actor=ACTOR,
                        values={"error": "destruction time reached"},
                        data={"why": "destruction time reached"},
                    )
                tracked = self.tracked.get(job.id)
                if tracked is not None:
                    self._stop_tracked(tracked)
            self.dispatcher.files.remove(job)
            with contextlib.suppress(Conflict, NotFound):
                self.store.transition(
                    job.id, Action.ARCHIVE, actor=ACTOR, data={"why": "destruction time reached"}
                )

    # -- after a restart ------------------------------------------------------------------

    def recover(self) -> None:
        """Re-attach to the jobs an earlier jobmill process on this node left behind
        (``service.recovery``)."""
        files, node = self.dispatcher.files, self.settings.node
        for found in left_behind(self.store, files, node, self.executors):
            self._track(found.job, found.executor, found.native_id)
            if found.status is not None and found.status.phase is not Phase.EXECUTING:
                self._finish(self.tracked[found.job.id], found.status)
        self._queued_hint = True


class _EndRate:
    """How many local jobs ended lately: the shepherd is handed that many jobs beyond its free
    slots (``MAX_AHEAD`` at most), none when jobs run long (a job handed over is out of the
    database's queue: it can no longer be held)."""

    WINDOW = 1.0  # seconds

    def __init__(self) -> None:
        self._since = time.monotonic()
        self._now = 0
        self._before = 0

    def add(self, count: int) -> None:
        self._roll()
        self._now += count

    def ahead(self) -> int:
        self._roll()
        return min(MAX_AHEAD, self._now + self._before)

    def _roll(self) -> None:
        now = time.monotonic()
        if now - self._since >= self.WINDOW:
            windows = int((now - self._since) // self.WINDOW)
            self._before = self._now if windows == 1 else 0
            self._now = 0
            self._since += windows * self.WINDOW


def _end_change(job_id: str, status: NativeStatus) -> Change:
    """The transition that records a job's end as the backend reported it."""
    values: dict[str, object] = {"exit_code": status.exit_code}
    if status.phase is Phase.COMPLETED:
        action = Action.COMPLETE
    elif status.phase is Phase.ABORTED:
        action = Action.ABORT
        values["error"] = status.error or "cancelled outside jobmill"
    else:
        action = Action.FAIL
        values["error"] = status.error or status.native_state
    data = {"exit_code": status.exit_code, "state": status.native_state}
    return Change(job_id, action, data=data, values=values)


def _deadline(job: Job) -> float | None:
    if job.execution_duration and job.started_at is not None:
        return job.started_at.timestamp() + job.execution_duration
    return None
