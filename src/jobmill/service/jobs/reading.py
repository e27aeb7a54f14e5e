"""Reading jobs: lists, events, logs, results, and what a job's backend says about it."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from jobmill.domain.errors import Conflict, NotFound, ValidationError
from jobmill.domain.jobs import Event, Job, JobFilter, JobRef
from jobmill.domain.users import User
from jobmill.domain.values import INT32_MAX, check_id_prefix, check_int, check_tag, check_text
from jobmill.executors.base import ExecutorUnavailable
from jobmill.service.files import LogChunk
from jobmill.service.jobs.base import BackendUnavailable, JobServiceBase
from jobmill.service.jobs.creation import MAX_LOG_DIR
from jobmill.service.results import ResultFile, find_result, list_results, open_result


@dataclass
class Page:
    """One page of a job list; ``next_cursor`` is None on the last page."""

    jobs: list[Job]
    next_cursor: str | None


class JobReading(JobServiceBase):
    """Look at jobs (only those the user may see)."""

    def list(
        self, user: User, flt: JobFilter, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        _check_filter(flt)
        if not _visible_to(user, flt):
            return Page([], None)
        before = None
        if cursor:
            try:
                before = check_int(int(cursor), "cursor", low=0, high=INT32_MAX)
            except ValueError:
                raise ValidationError("not a cursor from an earlier page", field="cursor") from None
        if not 1 <= limit <= 1000:
            raise ValidationError("must be between 1 and 1000", field="limit")
        jobs = self.store.list(flt, limit=limit + 1, before_seq=before)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        self.store.tags.attach(jobs)
        return Page(jobs, str(jobs[-1].seq) if more and jobs else None)

    def list_refs(self, user: User, flt: JobFilter, *, limit: int) -> builtins.list[JobRef]:
        """The newest ``limit`` (1 to 1000) jobs matching ``flt`` as ``JobRef``s (UWS lists)."""
        if not 1 <= limit <= 1000:
            raise ValidationError("must be between 1 and 1000", field="limit")
        _check_filter(flt)
        if not _visible_to(user, flt):
            return []
        return self.store.list_refs(flt, limit=limit)

    def events(
        self, user: User, job_id: str, *, after: int = 0, limit: int = 1000
    ) -> builtins.list[Event]:
        check_int(after, "after", low=0, high=INT32_MAX)
        job = self.get(user, job_id)
        return self.store.events(job.id, after=after, limit=limit)

    def read_log(
        self,
        user: User,
        job_id: str,
        stream: str,
        *,
        offset: int = 0,
        tail: int | None = None,
        limit: int = 1 << 20,
    ) -> LogChunk:
        job = self.get(user, job_id)
        return self.files.read_log(job, stream, offset=offset, tail=tail, limit=limit)

    # -- results ----------------------------------------------------------------------------

    def results(self, user: User, job_id: str) -> builtins.list[ResultFile]:
        job = self.get(user, job_id)
        return list_results(self.files, self.jobtypes.get(job.type), job)

    def result(self, user: User, job_id: str, result_id: str) -> ResultFile:
        job = self.get(user, job_id)
        return find_result(self.files, self.jobtypes.get(job.type), job, result_id)

    def open_result(self, user: User, job_id: str, result_id: str) -> tuple[ResultFile, BinaryIO]:
        """The result and its file, opened without following a symbolic link (403 for one)."""
        job = self.get(user, job_id)
        return open_result(self.files, self.jobtypes.get(job.type), job, result_id)

    # -- what the backend says --------------------------------------------------------------

    def details(self, user: User, job_id: str) -> tuple[Job, str]:
        """The job and its backend's own description of it (``scontrol show job``,
        ``condor_q -l``, ``bjobs -l``, the local process)."""
        job = self.get(user, job_id)
        return job, self.backend_details(job)

    def by_cluster_id(self, user: User, cluster: int) -> Job:
        """The newest of the caller's jobs (any for an administrator) whose backend id carries
        this cluster (or batch job, or process) number; 404 when none does."""
        job = self.store.by_cluster_id(cluster, owner=None if user.sees_all else user.name)
        if job is None:
            raise NotFound(f"no job with cluster id {cluster}", field="id")
        return job

    def backend_details(self, job: Job) -> str:
        """``details`` for a job already found (the ARP face finds its own)."""
        if not job.native_id:
            raise Conflict(
                f"job {job.id} has not reached its backend yet ({job.phase.value})",
                field="id",
                phase=job.phase.value,
            )
        executor = self.backends.get(job.executor)
        if executor is None:
            raise Conflict(f"executor '{job.executor}' is not configured here", field="id")
        try:
            return executor.details(job.native_id)
        except ExecutorUnavailable as exc:
            raise BackendUnavailable(f"{job.executor}: {exc}", field="id") from None


def parse_time(value: str, field_name: str) -> datetime:
    """An ISO 8601 time from a query string (``Z`` or an offset; naive means UTC)."""
    from datetime import UTC

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise ValidationError(f"'{value}' is not an ISO 8601 time", field=field_name) from None
    if not parsed.tzinfo:
        return parsed.replace(tzinfo=UTC)
    try:
        parsed.astimezone(UTC)  # an offset can move a time out of the calendar
    except OverflowError:
        raise ValidationError(f"'{value}' is out of range", field=field_name) from None
    return parsed


def _check_filter(flt: JobFilter) -> None:
    """The text a job list is filtered on: the input rule (a NUL, say, cannot be a query
    parameter on PostgreSQL)."""
    for name in ("type", "owner", "run_id", "executor"):
        value = getattr(flt, name)
        if isinstance(value, str):
            check_text(value, name, max_length=MAX_LOG_DIR)
    if flt.tag is not None:
        check_tag(flt.tag)
    if flt.id_prefix is not None:
        flt.id_prefix = check_id_prefix(flt.id_prefix.lower())
    for name in ("seq_min", "seq_max"):
        value = getattr(flt, name)
        if value is not None:
            check_int(value, name, low=0, high=INT32_MAX)


def _visible_to(user: User, flt: JobFilter) -> bool:
    """Narrow ``flt`` to what ``user`` may see (a user sees their own jobs, an admin all);
    False when it asked for somebody else's jobs."""
    if user.sees_all:
        return True
    if flt.owner and flt.owner != user.name:
        return False
    flt.owner = user.name
    return True
