"""Creating jobs: validation against the job type, creation (one, a batch, jobs waiting for
data) and the dry run that shows the script a job would be submitted with."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from jobmill.domain.errors import Conflict, JobmillError, ValidationError
from jobmill.domain.jobs import Job, JobRequest, NewJob, utcnow
from jobmill.domain.jobtypes import JobType
from jobmill.domain.lifecycle import Phase, Reason
from jobmill.domain.users import User
from jobmill.domain.values import INT32_MAX, check_tag, check_text, check_value
from jobmill.service.jobs.links import JobLinks
from jobmill.service.space import DiskSpace, disk_full
from jobmill.storage.idempotency import Created, IdempotencyKey, body_hash, check_key

MAX_RUN_ID = 256
MAX_TYPE_NAME = 256
MAX_EXECUTOR_NAME = 64
MAX_LOG_DIR = 4096
DRY_RUN_TOKEN = "<made when the job starts>"
"""Stands for the job's secret token in a dry run's script (the token exists only once the
job is dispatched)."""


@dataclass(frozen=True)
class Rendered:
    """What a dry run shows: the executor and the exact script or submit description."""

    executor: str
    script: str
    job_id: str
    """The id the script was written for; a real submission gets a new one."""


class JobCreation(JobLinks):
    """Validate, create and dry-run jobs."""

    def validate(
        self, user: User, request: JobRequest, *, prefix: str = "", dry_run: bool = False
    ) -> NewJob:
        """Check a request against its job type; raise ``ValidationError`` naming the field.

        ``dry_run`` checks a ``log_dir`` without creating it."""
        if not isinstance(request.type, str) or not request.type:
            raise ValidationError("missing job type", field=f"{prefix}type")
        check_text(request.type, f"{prefix}type", max_length=MAX_TYPE_NAME)
        jobtype = self.jobtypes.get(request.type)
        if jobtype is None:
            known = ", ".join(sorted(self.jobtypes)) or "none"
            raise ValidationError(
                f"unknown job type '{request.type}' (known: {known})", field=f"{prefix}type"
            )
        return self.validate_for(jobtype, user, request, prefix=prefix, dry_run=dry_run)

    def validate_for(
        self,
        jobtype: JobType,
        user: User,
        request: JobRequest,
        *,
        prefix: str = "",
        dry_run: bool = False,
    ) -> NewJob:
        """``validate`` against a prepared job type that is not in ``jobtypes`` (an ARP
        definition, see ``service.experiments``)."""
        check_request(request, prefix)
        declared, extra = jobtype.validate_parameters(
            request.parameters,
            prefix=f"{prefix}parameters",
            allow_unknown=request.allow_unknown and not jobtype.reject_unknown_parameters,
        )
        check_value(declared, f"{prefix}parameters")  # typed: the text "1" * 30 is an integer now
        executor = request.executor or jobtype.executor
        if executor not in self.executors:
            raise ValidationError(
                f"executor '{executor}' is not available (available: {', '.join(self.executors)})",
                field=f"{prefix}executor",
            )
        duration = request.execution_duration
        if duration is None:
            duration = jobtype.execution_duration
        if duration < 0:
            raise ValidationError("must not be negative", field=f"{prefix}execution_duration")
        if jobtype.max_execution_duration and (
            duration == 0 or duration > jobtype.max_execution_duration
        ):
            duration = jobtype.max_execution_duration
        if request.run_id is not None and len(request.run_id) > MAX_RUN_ID:
            raise ValidationError(f"longer than {MAX_RUN_ID} characters", field=f"{prefix}run_id")
        after, on_parent_failure, parent_id = self.upstream(user, request, jobtype, prefix)
        log_dir = None
        if request.log_dir is not None:
            log_dir = self._log_dir(
                request.log_dir, f"{prefix}log_dir", user.name, create=not dry_run
            )
        return NewJob(
            type=jobtype.name,
            owner=user.name,
            parameters=declared,
            extra_parameters=extra,
            executor=executor,
            execution_duration=duration,
            destruction_at=utcnow() + timedelta(seconds=jobtype.destruction),
            phase=Phase.QUEUED if request.start else Phase.PENDING,
            reason=(Reason.DATA if request.wait_for else Reason.CAPACITY).value
            if request.start
            else None,
            run_id=request.run_id,
            log_dir=log_dir,
            tags=tuple(sorted(set(request.tags))),
            after=after,
            on_parent_failure=on_parent_failure,
            parent_id=parent_id,
        )

    def _log_dir(self, value: str, field_name: str, owner: str, *, create: bool = True) -> str:
        """The real path of a ``log_dir`` under the owner's log roots, made unless ``create``
        is false."""
        if not value or "\x00" in value:
            raise ValidationError("must be a directory path", field=field_name)
        if self.log_roots is not None:
            path = Path(self.log_roots.resolve(value, owner, field=field_name))
        else:
            path = Path(value).expanduser().resolve()
        if not create:  # a dry run: the same answer, nothing made
            existing = next(p for p in (path, *path.parents) if p.exists())
            if not existing.is_dir():
                raise ValidationError(f"cannot create '{value}': not a directory", field=field_name)
            if not os.access(existing, os.W_OK):
                raise ValidationError(f"'{value}' is not writable", field=field_name)
            return str(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if disk_full(exc):
                raise (self.space or DiskSpace(path, 0)).refused() from None
            raise ValidationError(
                f"cannot create '{value}': {exc.strerror}", field=field_name
            ) from None
        if not os.access(path, os.W_OK):
            raise ValidationError(f"'{value}' is not writable", field=field_name)
        return str(path)

    @contextlib.contextmanager
    def room(self) -> Iterator[None]:
        """507, never 500: refuse when the disk is under the minimum, and when it fills up
        while the job is stored (nothing is left behind: the transaction rolls back)."""
        if self.space is not None:
            self.space.check()
        try:
            yield
        except JobmillError:
            raise
        except Exception as exc:
            if disk_full(exc):
                raise (self.space or DiskSpace(self.files.root, 0)).refused() from None
            raise

    def create(self, user: User, request: JobRequest) -> Job:
        """Validate and store one job; its insert is committed with the others of the same
        moment (``storage.group``)."""
        with self.room():
            if request.wait_for is not None:
                return self._create_waiting(user, [request])[0]
            new = self.validate(user, request)
            job = self.store.group.run(self.store.create_write([new], actor=user.name))[0]
        return self._created(job)

    async def create_async(self, user: User, request: JobRequest) -> Job:
        """``create`` for a request on the event loop: validation runs there, and the request
        waits for the commit without a thread (a job that waits for data still takes one)."""
        if request.wait_for is not None:
            return await asyncio.to_thread(self.create, user, request)
        with self.room():
            new = self.validate(user, request)
            write = self.store.create_write([new], actor=user.name)
            job = (await self.store.group.run_async(write))[0]
        return self._created(job)

    async def create_once_async(
        self, user: User, request: JobRequest, key: str, body: Any
    ) -> tuple[Job, bool]:
        """``create_async`` under the caller's ``Idempotency-Key``: the first request creates
        the job and records the key in the same transaction; a later one with the same key
        and ``body`` (the request as JSON values) gets that job (True: replayed), another body
        a 409 naming the key (``storage.idempotency``). Not with ``wait_for``."""
        check_key(key)
        if request.wait_for is not None:
            raise ValidationError(
                "an Idempotency-Key cannot be used with wait_for", field="Idempotency-Key"
            )
        with self.room():
            new = self.validate(user, request)
            write = self.store.create_once_write(
                [new], actor=user.name, key=IdempotencyKey(user.name, key, body_hash(body))
            )
            created = await self.store.group.run_async(write)
        job = created.jobs[0]
        return (job, True) if created.replayed else (self._created(job), False)

    def _created(self, job: Job) -> Job:
        if job.phase is Phase.QUEUED:
            self.on_queued()
        return job

    def create_many(
        self,
        user: User,
        requests: Sequence[JobRequest],
        key: str | None = None,
        body: Any = None,
    ) -> tuple[list[Job], bool]:
        """All or nothing: one bad request rejects the whole batch, naming its index.

        Under the caller's ``Idempotency-Key`` (``key``, with ``body``: the request as JSON
        values) as in ``create_once_async``: a repeat with the same body answers the jobs the
        first request created (True: replayed), in one transaction of its own. Not with
        ``wait_for``."""
        if key is not None:
            check_key(key)
        if len(requests) > self.max_batch:
            raise ValidationError(f"at most {self.max_batch} jobs per batch", field="jobs")
        waiting = [i for i, r in enumerate(requests) if r.wait_for is not None]
        if waiting and key is not None:
            raise ValidationError(
                f"an Idempotency-Key cannot be used with wait_for (jobs[{waiting[0]}])",
                field="Idempotency-Key",
            )
        with self.room():
            if waiting:
                return self._create_waiting(user, requests, prefix="jobs[{i}]."), False
            new_jobs = [
                self.validate(user, r, prefix=f"jobs[{i}].") for i, r in enumerate(requests)
            ]
            if key is None:
                jobs = self.store.create(new_jobs, actor=user.name, with_seq=False)
                created = Created(jobs, replayed=False)
            else:
                keyed = IdempotencyKey(user.name, key, body_hash(body))
                created = self.store.create_once_write(new_jobs, actor=user.name, key=keyed).alone()
        if not created.replayed and any(job.phase is Phase.QUEUED for job in created.jobs):
            self.on_queued()
        return created.jobs, created.replayed

    def _create_waiting(
        self, user: User, requests: Sequence[JobRequest], prefix: str = ""
    ) -> list[Job]:
        """Jobs of which some wait for data: jobs and conditions in one transaction."""
        if self.data is None:
            raise ValidationError(
                "waiting for data is not enabled", field=f"{prefix.format(i=0)}wait_for"
            )
        new_jobs, conditions = [], []
        for i, request in enumerate(requests):
            where = prefix.format(i=i)
            new = self.validate(user, request, prefix=where)
            wait_for = request.wait_for
            new_jobs.append(new)
            conditions.append(
                self.data.prepare(wait_for, new.id, field=f"{where}wait_for", owner=new.owner)
                if wait_for
                else None
            )
        jobs = self.data.create(new_jobs, conditions, actor=user.name)
        if any(job.phase is Phase.QUEUED and job.reason == Reason.CAPACITY for job in jobs):
            self.on_queued()
        return jobs

    def render(self, user: User, request: JobRequest) -> Rendered:
        """A dry run: validate ``request`` exactly as ``create`` does and return the script or
        submit description its executor would be given, creating nothing (no row, no file,
        no directory). A job the executor cannot write (a newline in a Slurm path...) is a
        ``ValidationError``, where a real submission would fail at dispatch."""
        new = self.validate(user, request, dry_run=True)
        if request.wait_for is not None:
            if self.data is None:
                raise ValidationError("waiting for data is not enabled", field="wait_for")
            self.data.prepare(request.wait_for, new.id, field="wait_for", owner=new.owner)
        executor = self.backends.get(new.executor)
        if executor is None or self.launch_spec is None:
            raise Conflict(f"executor '{new.executor}' is not configured here", field="executor")
        spec = self.launch_spec(_unsaved(new), DRY_RUN_TOKEN)
        if isinstance(spec, str):
            raise ValidationError(spec, field="parameters")
        try:
            script = executor.render(spec)
        except ValueError as exc:
            raise ValidationError(
                f"the {new.executor} executor cannot write this job: {exc}", field="parameters"
            ) from None
        return Rendered(new.executor, script, new.id)


def check_request(request: JobRequest, prefix: str = "") -> None:
    """The input rule (``domain.values``) on everything a request carries, before anything
    of it is stored or echoed in a message: 422 naming the field."""
    check_value(request.parameters, f"{prefix}parameters")
    for name, value, limit in (
        ("type", request.type, MAX_TYPE_NAME),
        ("run_id", request.run_id, MAX_RUN_ID),
        ("executor", request.executor, MAX_EXECUTOR_NAME),
        ("log_dir", request.log_dir, MAX_LOG_DIR),
    ):
        if isinstance(value, str):
            check_text(value, f"{prefix}{name}", max_length=limit)
    check_tags(request.tags, f"{prefix}tags")
    duration = request.execution_duration
    if duration is not None and duration > INT32_MAX:  # negative ones: validate_for says so
        name = f"{prefix}execution_duration"
        raise ValidationError(f"{name}: at most {INT32_MAX} seconds", field=name)


MAX_TAGS = 32
"""Tags a job may be created with."""


def check_tags(tags: Sequence[str], field: str = "tags") -> None:
    """The tags of a new job: at most ``MAX_TAGS``, each one a tag (``domain.values``)."""
    if isinstance(tags, str) or len(tags) > MAX_TAGS:
        raise ValidationError(f"{field}: a list of at most {MAX_TAGS} tags", field=field)
    for i, tag in enumerate(tags):
        check_tag(tag, f"{field}[{i}]")


def _unsaved(new: NewJob) -> Job:
    """The job ``new`` would become, without storing it (for a dry run)."""
    return Job(
        id=new.id,
        type=new.type,
        owner=new.owner,
        phase=new.phase,
        parameters=dict(new.parameters),
        created_at=utcnow(),
        run_id=new.run_id,
        reason=new.reason,
        extra_parameters=dict(new.extra_parameters),
        executor=new.executor,
        execution_duration=new.execution_duration,
        destruction_at=new.destruction_at,
        parent_id=new.parent_id,
        log_dir=new.log_dir,
    )
