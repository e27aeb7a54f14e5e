"""Triggers: jobs that wait for data.

``DataTriggers`` is what ``JobService`` and the faces call: it resolves conditions, stores jobs
with their conditions in one transaction, hands them to the one ``DataWatcher``, and releases a
job by its secret key (OCPS ``monitor/complete``). The other triggers live beside it:
experiments and autorun (ARP) in ``service.experiments``, rules in ``service.rules`` (see
``docs/triggers.md``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from jobmill.domain.conditions import DataCondition, resolve
from jobmill.domain.jobs import Job, NewJob, utcnow
from jobmill.domain.lifecycle import Reason
from jobmill.service.datawatch import DataWatcher
from jobmill.storage.conditions import ConditionStore, WaitingCondition
from jobmill.storage.jobs import JobStore

log = logging.getLogger(__name__)
KEY_BYTES = 32
"""Random bytes in a ``monitor/complete`` key (256 bits; only its SHA-256 is stored)."""
MONITOR = "monitor/complete"


def new_key() -> str:
    return secrets.token_urlsafe(KEY_BYTES)


@dataclass
class KeyRelease:
    """The outcome of ``release_by_key``: the job, and whether this call released it."""

    job: Job
    released: bool


class DataTriggers:
    """Jobs that wait for data: creation, the watcher, release by key."""

    def __init__(
        self,
        jobs: JobStore,
        conditions: ConditionStore,
        watcher: DataWatcher,
        data_root: Path,
        *,
        on_released: Callable[[], None] = lambda: None,
    ) -> None:
        self.jobs = jobs
        self.conditions = conditions
        self.watcher = watcher
        self.data_root = data_root
        self.on_released = on_released

    def prepare(self, condition: DataCondition, job_id: str, *, field: str) -> DataCondition:
        """Check ``condition`` and make its paths absolute (raises ``ValidationError``)."""
        return resolve(condition, job_id, str(self.data_root), field=field)

    def create(
        self,
        new_jobs: Sequence[NewJob],
        conditions: Sequence[DataCondition | None],
        *,
        actor: str,
    ) -> list[Job]:
        """Store jobs with their (prepared) conditions in one transaction, then watch them."""
        jobs = self.conditions.create_jobs(new_jobs, conditions, actor=actor)
        waiting = []
        for job, condition in zip(jobs, conditions, strict=True):
            if condition is None or job.reason != Reason.DATA.value:
                continue
            deadline = None
            if condition.timeout is not None:
                deadline = job.created_at + timedelta(seconds=condition.timeout)
            waiting.append(
                WaitingCondition(job.id, _without_key(condition), deadline, job.created_at)
            )
        self.watcher.add(waiting)
        return jobs

    def has_condition(self, job_id: str) -> bool:
        return self.conditions.has_condition(job_id)

    def watch(self, job_id: str) -> None:
        """A job with a condition was just queued (run after PENDING): start watching.

        Its time-out counts from now."""
        waiting = self.conditions.waiting([job_id])
        deadlines = {}
        for item in waiting:
            if item.deadline is None and item.condition.timeout is not None:
                item.deadline = utcnow() + timedelta(seconds=item.condition.timeout)
                deadlines[item.job_id] = item.deadline
        if deadlines:
            self.conditions.set_deadlines(deadlines)
        self.watcher.add(waiting)

    def condition(self, job_id: str) -> WaitingCondition | None:
        return self.conditions.get(job_id)

    def release_by_key(self, key: str) -> KeyRelease | None:
        """Release the job ``key`` was issued for; None for an unknown key.

        Checked like every release: a second call, or a call after the data arrived, finds the
        job no longer waiting and changes nothing (``released`` is False).
        """
        job_id = self.conditions.find_key(key) if key else None
        if job_id is None:
            return None
        released = bool(self.conditions.release({job_id: MONITOR}, actor=MONITOR))
        if released:
            self.watcher.forget([job_id])
            self.on_released()
        job = self.jobs.get(job_id)
        if job is None:
            return None
        return KeyRelease(job, released)

    def released(self, job_ids: list[str]) -> None:
        """The watcher released jobs: tell the engine."""
        if job_ids:
            self.on_released()


def _without_key(condition: DataCondition) -> DataCondition:
    if condition.key is None:
        return condition
    return DataCondition(
        condition.paths,
        condition.mode,
        condition.timeout,
        condition.marker,
        condition.stable_seconds,
    )
