"""The engine: one thread that dispatches queued jobs and watches running ones, on every executor.

It sleeps in ``poll()`` on a wake-up pipe plus one pidfd per running local job, so a new job
starts and a finished local job is recorded the moment either happens, with no per-job watcher.
Every ``poll_interval`` it reconciles: it asks each executor about *all* of its jobs in one call
(one ``squeue``, one schedd query...), maps the answers to phases, enforces execution durations,
stops jobs whose phase was ended elsewhere (an abort through another jobmill process sharing the
database), retries submissions a backend refused while it was down, and archives jobs past their
destruction time. On start it re-attaches to the jobs an earlier jobmill process left behind.

Local jobs start EXECUTING when their process starts and are limited by ``max_local_jobs``. A
batch job is handed to its backend while QUEUED (reason ``backend``) and becomes EXECUTING when
the backend says it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from jobmill.config import Settings
from jobmill.domain.errors import Conflict, NotFound
from jobmill.domain.jobs import Job
from jobmill.domain.lifecycle import TERMINAL, Action, Phase, Reason
from jobmill.executors.base import Executor, ExecutorUnavailable, NativeStatus
from jobmill.executors.local import LocalExecutor
from jobmill.service.dispatcher import ACTOR, Dispatcher
from jobmill.storage.jobs import JobStore

log = logging.getLogger(__name__)
RUNNING_PHASES = (Phase.EXECUTING, Phase.HELD, Phase.SUSPENDED, Phase.UNKNOWN)
SUBMIT_BATCH = 200  # batch jobs handed to a backend per dispatch pass
RETRY_UNAVAILABLE = 10.0  # seconds before a refused submission is tried again

# Native state -> the action that brings a job there (terminal states are handled apart).
_STATE_ACTIONS = {
    Phase.EXECUTING: Action.START,
    Phase.HELD: Action.HOLD,
    Phase.SUSPENDED: Action.SUSPEND,
}
_BACK_TO_QUEUE = {Phase.HELD: Action.RELEASE, Phase.EXECUTING: Action.REQUEUE}


@dataclass
class Tracked:
    """A job this engine is responsible for."""

    job_id: str
    executor: str
    native_id: str
    phase: Phase
    deadline: float | None  # wall-clock epoch seconds, from started_at + execution_duration
    stopping: bool = False


class Engine:
    """Dispatches and monitors jobs on every configured executor."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        dispatcher: Dispatcher,
        executors: Mapping[str, Executor],
    ) -> None:
        self.settings = settings
        self.store = store
        self.dispatcher = dispatcher
        self.executors = dict(executors)
        self.tracked: dict[str, Tracked] = {}
        self._by_native: dict[tuple[str, str], str] = {}
        self._cancels: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._closed = False
        self._queued_hint = True
        self._thread: threading.Thread | None = None
        self._next_reconcile = 0.0
        self._next_sweep = 0.0
        self._next_retry = 0.0

    # -- control from other threads -------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="jobmill-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and release its resources; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        for executor in self.executors.values():
            close = getattr(executor, "close", None)
            if close is not None:
                close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

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
        try:
            self.recover()
        except Exception:  # pragma: no cover - logged, the loop still serves new jobs
            log.exception("recovery after restart failed")
        while not self._stop.is_set():
            try:
                self._cycle()
            except Exception:  # pragma: no cover - a bug must not stop the engine
                log.exception("engine cycle failed")
                time.sleep(0.5)

    def _cycle(self) -> None:
        self._drain_cancels()
        if self._queued_hint:
            self._queued_hint = False
            self._dispatch()
        now = time.monotonic()
        if now >= self._next_reconcile:
            self._next_reconcile = now + self.settings.poll_interval
            self._reconcile()
        if now >= self._next_sweep:
            self._next_sweep = now + max(self.settings.poll_interval, 5.0)
            self._destroy_due()
        if now >= self._next_retry:
            self._next_retry = now + RETRY_UNAVAILABLE
            self._retry_unavailable()
        timeout = max(0.0, self._next_reconcile - time.monotonic())
        fds: dict[int, tuple[str, str]] = {}
        for name, executor in self.executors.items():
            wait = executor.tick()
            if wait is not None:
                timeout = min(timeout, wait)
            fds.update({fd: (name, nid) for fd, nid in executor.watch_fds().items()})
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
                ended.setdefault(name, []).append(native_id)
        for name, native_ids in ended.items():
            self._apply(name, self.executors[name].poll(native_ids))

    # -- dispatch -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        for name, executor in self.executors.items():
            if isinstance(executor, LocalExecutor):
                self._dispatch_local(name, executor)
            else:
                self._dispatch_batch(name, executor)

    def _local_running(self, name: str) -> int:
        return sum(1 for t in self.tracked.values() if t.executor == name)

    def _dispatch_local(self, name: str, executor: Executor) -> None:
        free = self.settings.max_local_jobs - self._local_running(name)
        while free > 0:
            candidates = self.store.ids_in_phase(
                [Phase.QUEUED], executor=name, reason=Reason.CAPACITY.value, limit=free
            )
            if not candidates:
                return
            for job in candidates:
                claimed = self.dispatcher.claim(job)
                if claimed is not None and self._submit(name, executor, *claimed):
                    free -= 1
            if len(candidates) < free:
                return

    def _dispatch_batch(self, name: str, executor: Executor) -> None:
        candidates = self.store.ids_in_phase(
            [Phase.QUEUED], executor=name, reason=Reason.CAPACITY.value, limit=SUBMIT_BATCH
        )
        for job in candidates:
            claimed = self.dispatcher.claim_for_backend(job)
            if claimed is not None:
                self._submit(name, executor, *claimed)
        if len(candidates) == SUBMIT_BATCH:
            self._queued_hint = True  # more are waiting: next cycle

    def _submit(self, name: str, executor: Executor, job: Job, token: str) -> bool:
        spec = self.dispatcher.spec_for(job, token)
        if isinstance(spec, str):
            self.dispatcher.fail(job, spec)
            return False
        started = time.monotonic()
        try:
            native_id = executor.submit(spec)
        except ExecutorUnavailable as exc:
            self.dispatcher.backend_unavailable(job, str(exc))
            return False
        except OSError as exc:
            self.dispatcher.fail(job, f"cannot start the job: {exc.strerror or exc}")
            return False
        took = time.monotonic() - started
        data = {"native_id": native_id, "seconds": round(took, 3)}
        if took > self.settings.slow_submit:
            data["slow"] = True  # ARP's "LSF_Slow": flagged, then reconciled by polling
        try:
            job = self.store.record(
                job.id, "submitted", actor=ACTOR, data=data, values={"native_id": native_id}
            )
        except NotFound:  # deleted meanwhile
            executor.cancel(native_id)
            return True
        self._track(job, name, native_id)
        return True

    def _track(self, job: Job, executor: str, native_id: str) -> None:
        self.tracked[job.id] = Tracked(job.id, executor, native_id, job.phase, _deadline(job))
        self._by_native[(executor, native_id)] = job.id

    def _untrack(self, job_id: str) -> None:
        tracked = self.tracked.pop(job_id, None)
        if tracked is not None:
            self._by_native.pop((tracked.executor, tracked.native_id), None)
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
        for native_id, status in statuses.items():
            job_id = self._by_native.get((executor, native_id))
            tracked = self.tracked.get(job_id) if job_id else None
            if tracked is None:
                continue
            if status.phase in (Phase.COMPLETED, Phase.ERROR, Phase.ABORTED):
                self._finish(tracked, status)
            elif status.phase in _STATE_ACTIONS and status.phase is not tracked.phase:
                self._move(tracked, status, _STATE_ACTIONS[status.phase])
            elif status.phase is Phase.QUEUED and tracked.phase in _BACK_TO_QUEUE:
                # Released from a hold, or requeued by the backend (preemption, node failure).
                self._move(tracked, status, _BACK_TO_QUEUE[tracked.phase])

    def _move(self, tracked: Tracked, status: NativeStatus, action: Action) -> None:
        data = {"state": status.native_state}
        if status.error:
            data["why"] = status.error
        try:
            job = self.store.transition(
                tracked.job_id, action, actor=ACTOR, data=data, reason=Reason.BACKEND.value
            )
        except (Conflict, NotFound):
            return
        tracked.phase = job.phase
        tracked.deadline = _deadline(job)

    def _finish(self, tracked: Tracked, status: NativeStatus) -> None:
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
        try:
            self.store.transition(tracked.job_id, action, actor=ACTOR, values=values, data=data)
        except Conflict:
            # Already ended (aborted, timed out): keep the exit status for the record.
            with contextlib.suppress(NotFound):
                self.store.record(
                    tracked.job_id,
                    "exited",
                    actor=ACTOR,
                    data={"exit_code": status.exit_code},
                    values={"exit_code": status.exit_code},
                )
        except NotFound:
            pass
        self._untrack(tracked.job_id)

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
        """Re-attach to the jobs an earlier jobmill process on this node left behind."""
        for name, executor in self.executors.items():
            if isinstance(executor, LocalExecutor):
                self._recover_local(name, executor)
            else:
                self._recover_batch(name, executor)
        self._queued_hint = True

    def _recover_local(self, name: str, executor: LocalExecutor) -> None:
        jobs = self.store.ids_in_phase(RUNNING_PHASES, executor=name, node=self.settings.node)
        for job in jobs:
            workdir = self.dispatcher.files.workdir(job.id)
            native_id = job.native_id or executor.find_started(workdir)
            if native_id is None:
                self._requeue(job, "jobmill stopped before the process started")
                continue
            if job.native_id is None:
                job = self.store.record(
                    job.id,
                    "submitted",
                    actor=ACTOR,
                    data={"native_id": native_id},
                    values={"native_id": native_id},
                )
            status = executor.status_after_restart(native_id, workdir)
            self._track(job, name, native_id)
            log.info("re-attached job %s (%s): %s", job.id, native_id, status.native_state)
            if status.phase is not Phase.EXECUTING:
                self._finish(self.tracked[job.id], status)

    def _recover_batch(self, name: str, executor: Executor) -> None:
        jobs = self.store.ids_in_phase(
            [Phase.QUEUED, *RUNNING_PHASES], executor=name, node=self.settings.node
        )
        for job in jobs:
            if job.phase is Phase.QUEUED and job.reason != Reason.BACKEND.value:
                continue
            native_id = job.native_id
            if native_id is None:
                try:
                    native_id = executor.find(job.id)
                except ExecutorUnavailable:
                    continue  # looked at again after the next restart or by reconciliation
                if native_id is None:
                    self._requeue(job, "jobmill stopped before the backend took the job")
                    continue
                job = self.store.record(
                    job.id,
                    "submitted",
                    actor=ACTOR,
                    data={"native_id": native_id},
                    values={"native_id": native_id},
                )
            self._track(job, name, native_id)
            log.info("re-attached job %s (%s %s)", job.id, name, native_id)

    def _requeue(self, job: Job, why: str) -> None:
        action = Action.REQUEUE if job.phase is Phase.EXECUTING else Action.WAIT
        with contextlib.suppress(Conflict, NotFound):
            self.store.transition(
                job.id, action, actor=ACTOR, reason=Reason.CAPACITY.value, data={"why": why}
            )


def _deadline(job: Job) -> float | None:
    if job.execution_duration and job.started_at is not None:
        return job.started_at.timestamp() + job.execution_duration
    return None
