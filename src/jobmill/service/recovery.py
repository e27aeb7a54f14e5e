"""After a restart: the jobs an earlier jobmill process on this node left behind.

``left_behind`` finds them for ``Engine.recover``, which tracks them again: a local job by its
pid and start time (one that ended while jobmill was down is read from the exit status its
shepherd left behind; one handed to a shepherd that had not started it is queued again), a
batch job by its native id, or by its name when jobmill stopped between the submission and
recording the id. A job claimed but never started is queued again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from jobmill.domain.errors import Conflict, NotFound
from jobmill.domain.jobs import Job
from jobmill.domain.lifecycle import ACTIVE, RUNNING, Action, Phase, Reason
from jobmill.executors.base import Executor, ExecutorUnavailable, NativeStatus
from jobmill.executors.local import LocalExecutor
from jobmill.service.dispatcher import ACTOR
from jobmill.service.files import JobFiles
from jobmill.storage.jobs import JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeftBehind:
    """A job to track again."""

    job: Job
    executor: str
    native_id: str
    status: NativeStatus | None = None
    """A local job's state now (running, or how it ended); None for a batch job (the next
    reconciliation asks its backend)."""


def left_behind(
    store: JobStore, files: JobFiles, node: str, executors: Mapping[str, Executor]
) -> Iterator[LeftBehind]:
    """The jobs of ``node`` to re-attach to, executor by executor; those that never reached
    their backend are queued again on the way."""
    for name, executor in executors.items():
        if isinstance(executor, LocalExecutor):
            yield from _local(store, files, node, name, executor)
        else:
            yield from _batch(store, node, name, executor)


def _local(
    store: JobStore, files: JobFiles, node: str, name: str, executor: LocalExecutor
) -> Iterator[LeftBehind]:
    # The shepherd of a jobmill that died writes its jobs' pids as it sees the end of its
    # socket: read the directories only once it has (its lock is ours), or a job it started
    # would look never started and run twice.
    if not executor.attach():
        log.warning("%s: an earlier shepherd still holds its lock; recovering without it", name)
    jobs = store.ids_in_phase(RUNNING | {Phase.QUEUED}, executor=name, node=node)
    for job in jobs:
        if job.phase is Phase.QUEUED and job.reason != Reason.BACKEND.value:
            continue  # in the database's queue: dispatch takes it
        if job.phase is Phase.HELD and job.native_id is None:
            continue  # held by a user before it started: it waits in the database
        workdir = files.workdir(job.id)
        native_id = job.native_id or executor.find_started(workdir)
        if native_id is None:
            _requeue(store, job, "jobmill stopped before the process started")
            continue
        if job.native_id is None:
            job = _record_submitted(store, job, native_id)
        status = executor.status_after_restart(native_id, workdir)
        log.info("re-attached job %s (%s): %s", job.id, native_id, status.native_state)
        yield LeftBehind(job, name, native_id, status)


def _batch(store: JobStore, node: str, name: str, executor: Executor) -> Iterator[LeftBehind]:
    jobs = store.ids_in_phase(ACTIVE, executor=name, node=node)
    for job in jobs:
        if job.phase is Phase.QUEUED and job.reason != Reason.BACKEND.value:
            continue
        if job.phase is Phase.HELD and job.native_id is None:
            continue  # held by a user before it was handed over: not lost
        native_id = job.native_id
        if native_id is None:
            try:
                native_id = executor.find(job.id)
            except ExecutorUnavailable:
                continue  # looked at again after the next restart or by reconciliation
            if native_id is None:
                _requeue(store, job, "jobmill stopped before the backend took the job")
                continue
            job = _record_submitted(store, job, native_id)
        log.info("re-attached job %s (%s %s)", job.id, name, native_id)
        yield LeftBehind(job, name, native_id)


def _record_submitted(store: JobStore, job: Job, native_id: str) -> Job:
    return store.record(
        job.id,
        "submitted",
        actor=ACTOR,
        data={"native_id": native_id},
        values={"native_id": native_id},
    )


def _requeue(store: JobStore, job: Job, why: str) -> None:
    action = Action.REQUEUE if job.phase is Phase.EXECUTING else Action.WAIT
    with contextlib.suppress(Conflict, NotFound):
        store.transition(
            job.id, action, actor=ACTOR, reason=Reason.CAPACITY.value, data={"why": why}
        )
