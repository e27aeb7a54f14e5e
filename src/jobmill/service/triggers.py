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

from jobmill.domain.conditions import (
    DataCondition,
    WaitingCondition,
    has_magic,
    join,
    literal_prefix,
    parts,
    recursive,
    resolve,
)
from jobmill.domain.confine import Roots
from jobmill.domain.errors import TooMany, ValidationError
from jobmill.domain.jobs import Job, NewJob, utcnow
from jobmill.domain.lifecycle import Reason
from jobmill.service.datawatch import DataWatcher
from jobmill.storage.conditions import ConditionStore
from jobmill.storage.jobs import JobStore

log = logging.getLogger(__name__)
KEY_BYTES = 32
"""Random bytes in a ``monitor/complete`` key (256 bits; only its SHA-256 is stored)."""
MONITOR = "monitor/complete"
MAX_GLOBSTARS = 2
"""``**`` components in one pattern (matching costs grow with the power of their number)."""


def new_key() -> str:
    return secrets.token_urlsafe(KEY_BYTES)


@dataclass(frozen=True)
class WaitLimits:
    """What jobs may wait for (docs/security.md): per job, and per user (the settings
    ``max_wait_paths``, ``max_wait_wildcard_dirs``, ``max_user_waits``, ``max_user_wildcards``,
    ``max_user_wildcard_dirs``).

    An exact path costs the watcher one look-up per file; a wildcard in the file name, a test
    of every file of its directory; a wildcard in a directory (``**`` included), watching every
    directory it can lead to and a test of every file there."""

    max_paths: int = 32
    max_wildcard_dirs: int = 4
    max_user_waits: int = 10_000
    max_user_wildcards: int = 1000
    max_user_wildcard_dirs: int = 64


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
        roots: Roots | None = None,
        limits: WaitLimits | None = None,
    ) -> None:
        """``roots``: where waits may look (None: anywhere); ``limits``: the caps."""
        self.jobs = jobs
        self.conditions = conditions
        self.watcher = watcher
        self.data_root = data_root
        self.on_released = on_released
        self.roots = roots
        self.limits = limits or WaitLimits()

    def prepare(
        self, condition: DataCondition, job_id: str, *, field: str, owner: str = ""
    ) -> DataCondition:
        """Check ``condition`` (within the per-job caps, under ``owner``'s data roots) and make
        its paths absolute; raises ``ValidationError`` naming the field."""
        limits = self.limits
        if len(condition.paths) > limits.max_paths:
            raise ValidationError(
                f"at most {limits.max_paths} paths or patterns (JOBMILL_MAX_WAIT_PATHS)",
                field=f"{field}.paths",
            )
        resolved = resolve(condition, job_id, str(self.data_root), field=field)
        for i, path in enumerate(resolved.paths):
            where = f"{field}.paths[{i}]"
            if recursive(path) > MAX_GLOBSTARS:
                raise ValidationError(f"at most {MAX_GLOBSTARS} '**' in one pattern", field=where)
            self._check_root(path, owner, where)
        if sum(map(wildcard_dirs, resolved.paths)) > limits.max_wildcard_dirs:
            raise ValidationError(
                f"at most {limits.max_wildcard_dirs} patterns with a wildcard in a directory "
                "('**' included; JOBMILL_MAX_WAIT_WILDCARD_DIRS)",
                field=f"{field}.paths",
            )
        return resolved

    def _check_root(self, pattern: str, owner: str, field: str) -> None:
        """The directory a pattern starts from (before its first wildcard) must lie under one
        of the data roots; the watcher only looks below it."""
        if self.roots is None:
            return
        start = join(literal_prefix(parts(pattern)[:-1]))
        if not self.roots.contains(start, owner):
            allowed = ", ".join(self.roots.for_user(owner)) or "none"
            raise ValidationError(
                f"'{pattern}' is outside the data directories allowed here ({allowed}); an "
                f"administrator can allow more with {self.roots.setting}",
                field=field,
            )

    def check_user_limits(
        self, new_jobs: Sequence[NewJob], conditions: Sequence[DataCondition | None]
    ) -> None:
        """429 when an owner would have too many jobs waiting for data, too many wildcard
        patterns, or too many with a wildcard in a directory (counting the jobs waiting now and
        the PENDING ones that will once run)."""
        wanted: dict[str, list[DataCondition]] = {}
        for new, condition in zip(new_jobs, conditions, strict=True):
            if condition is not None:
                wanted.setdefault(new.owner, []).append(condition)
        limits = self.limits
        for owner, asked in wanted.items():
            asked_magic = [p for c in asked for p in c.paths if has_magic(p)]
            count, stored = self.conditions.active_of(owner, wildcards=bool(asked_magic))
            if count + len(asked) > limits.max_user_waits:
                raise TooMany(
                    f"user '{owner}' has {count} jobs waiting for data and asks for {len(asked)} "
                    f"more: at most {limits.max_user_waits} (JOBMILL_MAX_USER_WAITS)",
                    field="wait_for",
                )
            magic = asked_magic + [p for paths in stored for p in paths if has_magic(p)]
            if len(magic) > limits.max_user_wildcards:
                raise TooMany(
                    f"user '{owner}' would wait with {len(magic)} wildcard patterns: at most "
                    f"{limits.max_user_wildcards} (JOBMILL_MAX_USER_WILDCARDS)",
                    field="wait_for",
                )
            deep = sum(map(wildcard_dirs, magic))
            if deep > limits.max_user_wildcard_dirs:
                raise TooMany(
                    f"user '{owner}' would wait with {deep} patterns with a wildcard in a "
                    f"directory: at most {limits.max_user_wildcard_dirs} "
                    "(JOBMILL_MAX_USER_WILDCARD_DIRS)",
                    field="wait_for",
                )

    def create(
        self,
        new_jobs: Sequence[NewJob],
        conditions: Sequence[DataCondition | None],
        *,
        actor: str,
    ) -> list[Job]:
        """Store jobs with their (prepared) conditions in one transaction, then watch them;
        ``TooMany`` (429) past a per-user cap."""
        self.check_user_limits(new_jobs, conditions)
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
        return self._release(job_id)

    def release_by_job_id(self, job_id: str) -> KeyRelease | None:
        """Release a job by its id, as the OCPS prototype's ``monitor.py`` did: only a job that
        was issued a key (the caller's setting allows this weaker form); None otherwise."""
        if not self.conditions.keyed(job_id):
            return None
        return self._release(job_id)

    def _release(self, job_id: str) -> KeyRelease | None:
        released = bool(self.conditions.release({job_id: MONITOR}, actor=MONITOR))
        if released:
            self.watcher.forget([job_id])
            self.on_released()
        job = self.jobs.get(job_id)
        if job is None:
            return None
        return KeyRelease(job, released)


def wildcard_dirs(pattern: str) -> int:
    """1 when the pattern has a wildcard in a directory (``**`` included), else 0."""
    directory = parts(pattern)[:-1]
    return int(literal_prefix(directory) != directory)


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
