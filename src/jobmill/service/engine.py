"""The engine: one thread that dispatches queued jobs and watches running ones.

It sleeps in ``poll()`` on a wake-up pipe plus one pidfd per running local job, so a new job
starts and a finished job is recorded the moment either happens, with no per-job watcher. Every
``poll_interval`` it also reconciles: it asks each executor about all of its jobs in one call,
enforces execution durations, and stops jobs whose phase was ended elsewhere (an abort through
another jobmill process sharing the database). On start it re-attaches to the jobs an earlier
jobmill process left running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from jobmill.config import Settings
from jobmill.domain.errors import Conflict, NotFound
from jobmill.domain.jobs import Job
from jobmill.domain.lifecycle import TERMINAL, Action, Phase, Reason
from jobmill.executors.base import NativeStatus
from jobmill.executors.local import LocalExecutor
from jobmill.service.dispatcher import ACTOR, Dispatcher
from jobmill.storage.jobs import JobStore

log = logging.getLogger(__name__)
RUNNING_PHASES = (Phase.EXECUTING, Phase.HELD, Phase.SUSPENDED, Phase.UNKNOWN)


@dataclass
class Tracked:
    """A job this engine is responsible for."""

    job_id: str
    native_id: str
    deadline: float | None  # wall-clock epoch seconds, from started_at + execution_duration
    stopping: bool = False


class Engine:
    """Dispatches and monitors the jobs of the local executor."""

    def __init__(
        self, settings: Settings, store: JobStore, dispatcher: Dispatcher, executor: LocalExecutor
    ) -> None:
        self.settings = settings
        self.store = store
        self.dispatcher = dispatcher
        self.executor = executor
        self.tracked: dict[str, Tracked] = {}
        self._by_native: dict[str, str] = {}
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
        self.executor.close()
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
        timeout = max(0.0, self._next_reconcile - time.monotonic())
        kill_wait = self.executor.tick()
        if kill_wait is not None:
            timeout = min(timeout, kill_wait)
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        fds = self.executor.watch_fds()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        ended: list[str] = []
        for fd, _mask in poller.poll(timeout * 1000):
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
            elif fd in fds:
                ended.append(fds[fd])
        if ended:
            self._apply(self.executor.poll(ended))

    # -- dispatch -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        free = self.settings.max_local_jobs - len(self.tracked)
        while free > 0:
            candidates = self.store.ids_in_phase(
                [Phase.QUEUED], executor="local", reason=Reason.CAPACITY.value, limit=free
            )
            if not candidates:
                return
            for job in candidates:
                if self._launch(job):
                    free -= 1
            if len(candidates) < free:
                return

    def _launch(self, job: Job) -> bool:
        claimed = self.dispatcher.claim(job)
        if claimed is None:
            return False
        job, token = claimed
        spec = self.dispatcher.spec_for(job, token)
        if isinstance(spec, str):
            self.dispatcher.fail(job, spec)
            return False
        try:
            native_id = self.executor.submit(spec)
        except OSError as exc:
            self.dispatcher.fail(job, f"cannot start the process: {exc.strerror or exc}")
            return False
        try:
            self.store.record(
                job.id,
                "submitted",
                actor=ACTOR,
                data={"native_id": native_id},
                values={"native_id": native_id},
            )
        except NotFound:  # deleted meanwhile
            self.executor.cancel(native_id)
            return True
        self._track(job, native_id)
        return True

    def _track(self, job: Job, native_id: str) -> None:
        deadline = None
        if job.execution_duration and job.started_at is not None:
            deadline = job.started_at.timestamp() + job.execution_duration
        self.tracked[job.id] = Tracked(job.id, native_id, deadline)
        self._by_native[native_id] = job.id

    def _untrack(self, job_id: str) -> None:
        tracked = self.tracked.pop(job_id, None)
        if tracked is not None:
            self._by_native.pop(tracked.native_id, None)
        self._queued_hint = True  # a slot is free

    # -- monitoring -----------------------------------------------------------------------

    def _apply(self, statuses: dict[str, NativeStatus]) -> None:
        for native_id, status in statuses.items():
            job_id = self._by_native.get(native_id)
            if job_id is None:
                continue
            if status.phase is Phase.EXECUTING:
                continue
            self._finish(job_id, status)

    def _finish(self, job_id: str, status: NativeStatus) -> None:
        values = {"exit_code": status.exit_code}
        action = Action.COMPLETE if status.phase is Phase.COMPLETED else Action.FAIL
        if action is Action.FAIL:
            values["error"] = status.error or status.native_state  # type: ignore[assignment]
        try:
            self.store.transition(
                job_id,
                action,
                actor=ACTOR,
                values=values,
                data={"exit_code": status.exit_code, "state": status.native_state},
            )
        except Conflict:
            # Already ended (aborted, timed out): keep the exit status for the record.
            with contextlib.suppress(NotFound):
                self.store.record(
                    job_id,
                    "exited",
                    actor=ACTOR,
                    data={"exit_code": status.exit_code},
                    values={"exit_code": status.exit_code},
                )
        except NotFound:
            pass
        self._untrack(job_id)

    def _drain_cancels(self) -> None:
        while True:
            try:
                job_id = self._cancels.get_nowait()
            except queue.Empty:
                return
            tracked = self.tracked.get(job_id)
            if tracked is not None and not tracked.stopping:
                tracked.stopping = True
                self.executor.cancel(tracked.native_id)

    def _reconcile(self) -> None:
        if not self.tracked:
            self._queued_hint = True
            return
        self._apply(self.executor.poll([t.native_id for t in self.tracked.values()]))
        now = datetime.now(UTC).timestamp()
        for tracked in list(self.tracked.values()):
            if tracked.deadline is not None and now >= tracked.deadline and not tracked.stopping:
                self._time_out(tracked)
        self._stop_ended_elsewhere()
        self._queued_hint = True

    def _destroy_due(self) -> None:
        """Archive jobs past their destruction time: stop them, remove their files, keep
        their metadata (UWS destruction, enforced by jobmill itself, no cron needed)."""
        for job in self.store.due_for_destruction(datetime.now(UTC)):
            if job.executor == "local" and job.node not in (None, self.settings.node):
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
                if tracked is not None and not tracked.stopping:
                    tracked.stopping = True
                    self.executor.cancel(tracked.native_id)
            self.dispatcher.files.remove(job)
            with contextlib.suppress(Conflict, NotFound):
                self.store.transition(
                    job.id, Action.ARCHIVE, actor=ACTOR, data={"why": "destruction time reached"}
                )

    def _time_out(self, tracked: Tracked) -> None:
        job = self.store.get(tracked.job_id)
        if job is None:
            return
        error = f"execution duration exceeded ({job.execution_duration} s)"
        with contextlib.suppress(Conflict, NotFound):
            self.store.transition(
                job.id, Action.FAIL, actor=ACTOR, values={"error": error}, data={"why": error}
            )
        tracked.stopping = True
        self.executor.cancel(tracked.native_id)

    def _stop_ended_elsewhere(self) -> None:
        phases = self.store.phases([t.job_id for t in self.tracked.values() if not t.stopping])
        for tracked in list(self.tracked.values()):
            if tracked.stopping:
                continue
            phase = phases.get(tracked.job_id)
            if phase is None or phase in TERMINAL:
                tracked.stopping = True
                self.executor.cancel(tracked.native_id)

    # -- after a restart ------------------------------------------------------------------

    def recover(self) -> None:
        """Re-attach to the local jobs an earlier jobmill process on this node left behind."""
        jobs = self.store.ids_in_phase(RUNNING_PHASES, executor="local", node=self.settings.node)
        for job in jobs:
            workdir = self.dispatcher.files.workdir(job.id)
            native_id = job.native_id or self.executor.find_started(workdir)
            if native_id is None:
                # Claimed but its process never started: queue it again (it runs once).
                with contextlib.suppress(Conflict, NotFound):
                    self.store.transition(
                        job.id,
                        Action.REQUEUE,
                        actor=ACTOR,
                        reason=Reason.CAPACITY.value,
                        data={"why": "jobmill stopped before the process started"},
                    )
                continue
            if job.native_id is None:
                self.store.record(
                    job.id,
                    "submitted",
                    actor=ACTOR,
                    data={"native_id": native_id},
                    values={"native_id": native_id},
                )
            status = self.executor.status_after_restart(native_id, workdir)
            self._track(job, native_id)
            log.info("re-attached job %s (%s): %s", job.id, native_id, status.native_state)
            if status.phase is not Phase.EXECUTING:
                self._finish(job.id, status)
        self._queued_hint = True
