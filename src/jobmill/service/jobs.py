"""JobService: create, validate, look at, abort, hold, release and delete jobs; show what a
job's backend says about it and the exact script a job would be submitted with. Every face
calls this."""

from __future__ import annotations

import builtins
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from jobmill.domain.confine import Roots
from jobmill.domain.errors import (
    Conflict,
    Forbidden,
    JobmillError,
    NotFound,
    Unauthorized,
    ValidationError,
)
from jobmill.domain.jobs import Event, Job, JobFilter, JobRef, NewJob, parse_job_id, utcnow
from jobmill.domain.jobtypes import JobType
from jobmill.domain.lifecycle import LIVE, TERMINAL, Action, Phase, Reason
from jobmill.domain.values import INT32_MAX, check_int, check_text, check_value
from jobmill.executors.base import Executor, ExecutorUnavailable, Holding, LaunchSpec
from jobmill.service import reports
from jobmill.service.files import JobFiles, LogChunk
from jobmill.service.results import ResultFile, find_result, list_results, open_result
from jobmill.service.space import DiskSpace, disk_full
from jobmill.storage.jobs import JobStore, hash_secret

if TYPE_CHECKING:
    from jobmill.domain.conditions import DataCondition
    from jobmill.service.triggers import DataTriggers

MAX_RUN_ID = 256
MAX_TYPE_NAME = 256
MAX_EXECUTOR_NAME = 64
MAX_LOG_DIR = 4096
TOKEN_CACHE_SECONDS = 10.0
DRY_RUN_TOKEN = "<made when the job starts>"
"""Stands for the job's secret token in a dry run's script (the token exists only once the
job is dispatched)."""
NOT_HANDED_OVER = frozenset({Reason.CAPACITY.value, Reason.BACKEND_UNAVAILABLE.value})
"""Reasons of a QUEUED job that is ready but not in a backend yet: held in the database."""

LaunchSpecFor = Callable[[Job, str], LaunchSpec | str]


class BackendUnavailable(JobmillError):
    """The job's backend cannot be asked right now (503; try again later)."""

    status = 503
    code = "backend_unavailable"


@dataclass(frozen=True)
class Rendered:
    """What a dry run shows: the executor and the exact script or submit description."""

    executor: str
    script: str
    job_id: str
    """The id the script was written for; a real submission gets a new one."""


@dataclass(frozen=True)
class User:
    """Who is asking: a named user, an administrator, or an anonymous reader (a deployment
    that lets callers without credentials read, ``JOBMILL_ANONYMOUS=read``)."""

    name: str
    admin: bool = False
    reader: bool = False

    @property
    def sees_all(self) -> bool:
        """May read every job (an administrator, or an anonymous reader)."""
        return self.admin or self.reader


@dataclass
class JobRequest:
    """What a face asks for when it creates a job (before validation)."""

    type: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    executor: str | None = None
    execution_duration: int | None = None
    log_dir: str | None = None
    start: bool = True
    allow_unknown: bool = False
    wait_for: DataCondition | None = None
    """Data the job waits for before it may run (QUEUED, reason "waiting for data")."""


@dataclass
class Page:
    """One page of a job list; ``next_cursor`` is None on the last page."""

    jobs: list[Job]
    next_cursor: str | None


class JobService:
    """The rules about jobs, in one place."""

    def __init__(
        self,
        store: JobStore,
        jobtypes: Mapping[str, JobType],
        files: JobFiles,
        executors: Sequence[str],
        *,
        max_batch: int = 100_000,
        on_queued: Callable[[], None] = lambda: None,
        on_cancel: Callable[[Job], None] = lambda job: None,
        data: DataTriggers | None = None,
        backends: Mapping[str, Executor] | None = None,
        launch_spec: LaunchSpecFor | None = None,
        log_roots: Roots | None = None,
        space: DiskSpace | None = None,
    ) -> None:
        """``executors`` names the executors jobs may ask for; ``backends`` are those
        executors themselves (hold, release, details, render) and ``launch_spec`` builds a
        job's ``LaunchSpec`` the way dispatch does (``Dispatcher.spec_for``). ``log_roots``
        confine ``log_dir`` (None: not confined); ``space`` refuses new jobs on a full disk."""
        self.log_roots = log_roots
        self.space = space
        self.store = store
        self.backends = dict(backends or {})
        self.launch_spec = launch_spec
        self.data = data
        self.jobtypes = dict(jobtypes)
        self.files = files
        self.executors = tuple(executors)
        self.on_queued = on_queued
        self.on_cancel = on_cancel
        self.max_batch = max_batch
        self._verified: dict[tuple[str, str], float] = {}

    # -- job types --------------------------------------------------------------------------

    def replace_jobtypes(self, jobtypes: Mapping[str, JobType]) -> None:
        """Serve these job types from now on (a reload); jobs already created keep theirs."""
        self.jobtypes = dict(jobtypes)

    def jobtype(self, name: str) -> JobType:
        jobtype = self.jobtypes.get(name)
        if jobtype is None:
            raise NotFound(f"unknown job type '{name}'", field="type")
        return jobtype

    # -- creation ---------------------------------------------------------------------------

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
        with self.room():
            if request.wait_for is not None:
                return self._create_waiting(user, [request])[0]
            job = self.store.create([self.validate(user, request)], actor=user.name)[0]
        if job.phase is Phase.QUEUED:
            self.on_queued()
        return job

    def create_many(self, user: User, requests: Sequence[JobRequest]) -> list[Job]:
        """All or nothing: one bad request rejects the whole batch, naming its index."""
        if len(requests) > self.max_batch:
            raise ValidationError(f"at most {self.max_batch} jobs per batch", field="jobs")
        with self.room():
            if any(r.wait_for is not None for r in requests):
                return self._create_waiting(user, requests, prefix="jobs[{i}].")
            new_jobs = [
                self.validate(user, r, prefix=f"jobs[{i}].") for i, r in enumerate(requests)
            ]
            jobs = self.store.create(new_jobs, actor=user.name, with_seq=False)
        if any(job.phase is Phase.QUEUED for job in jobs):
            self.on_queued()
        return jobs

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

    # -- reading ----------------------------------------------------------------------------

    def get(self, user: User, job_id: str) -> Job:
        canonical = parse_job_id(job_id)
        job = self.store.get(canonical) if canonical else None
        if job is None or not (user.sees_all or job.owner == user.name):
            raise NotFound(f"no job {job_id}", field="id")
        return job

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

    # -- changing ---------------------------------------------------------------------------

    def update_parameters(self, user: User, job_id: str, values: Mapping[str, Any]) -> Job:
        """Change parameters of a PENDING job (UWS); merged with the current ones, revalidated."""
        job = self.get(user, job_id)
        if job.phase is not Phase.PENDING:
            raise Conflict(
                f"parameters can only change while the job is PENDING (it is {job.phase.value})",
                phase=job.phase.value,
            )
        jobtype = self.jobtype(job.type)
        check_value(values, "parameters")
        merged = {**job.extra_parameters, **job.parameters, **values}
        declared, extra = jobtype.validate_parameters(
            merged, allow_unknown=not jobtype.reject_unknown_parameters
        )
        check_value(declared, "parameters")
        return self.store.record(
            job.id,
            "parameters",
            actor=user.name,
            data={"set": dict(values)},
            values={"parameters": declared, "extra_parameters": extra},
            phases=[Phase.PENDING],
        )

    def set_execution_duration(self, user: User, job_id: str, seconds: int) -> Job:
        """Change the execution duration before the job runs; capped by the job type."""
        job = self.get(user, job_id)
        if seconds < 0:
            raise ValidationError("must not be negative", field="execution_duration")
        check_int(seconds, "execution_duration", low=0, high=INT32_MAX)
        jobtype = self.jobtypes.get(job.type)
        cap = jobtype.max_execution_duration if jobtype else 0
        if cap and (seconds == 0 or seconds > cap):
            seconds = cap
        return self.store.record(
            job.id,
            "execution_duration",
            actor=user.name,
            data={"seconds": seconds},
            values={"execution_duration": seconds},
            phases=[Phase.PENDING],
        )

    def set_destruction(self, user: User, job_id: str, when: datetime) -> Job:
        """Change when the job's files are removed and it is archived."""
        job = self.get(user, job_id)
        if job.phase is Phase.ARCHIVED:
            raise Conflict("the job is already archived", phase=job.phase.value)
        return self.store.record(
            job.id,
            "destruction",
            actor=user.name,
            data={"at": when.isoformat()},
            values={"destruction_at": when},
        )

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

    def run(self, user: User, job_id: str) -> Job:
        """Queue a PENDING job (UWS ``PHASE=RUN``); a HELD job is released (UWS: HELD waits
        for ``PHASE=RUN`` like PENDING)."""
        job = self.get(user, job_id)
        if job.phase is Phase.HELD:
            return self.release(user, job.id)
        waits = self.data is not None and self.data.has_condition(job.id)
        reason = Reason.DATA if waits else Reason.CAPACITY
        job = self.store.transition(job.id, Action.RUN, actor=user.name, reason=reason.value)
        if self.data is not None and waits:
            self.data.watch(job.id)
        else:
            self.on_queued()
        return job

    def abort(self, user: User, job_id: str) -> Job:
        job = self.get(user, job_id)
        if job.phase in TERMINAL:
            raise Conflict(
                f"job {job.id} has already ended ({job.phase.value})", phase=job.phase.value
            )
        job = self.store.transition(
            job.id,
            Action.ABORT,
            actor=user.name,
            data={"by": "user request"},
            values={"error": f"aborted by {user.name}"},
        )
        if job.native_id:
            self.on_cancel(job)
        return job

    # -- hold and release -------------------------------------------------------------------

    def hold(self, user: User, job_id: str) -> Job:
        """Keep a QUEUED job from starting (HELD) until ``release``.

        A job not yet handed to a backend is held in the database (dispatch takes only QUEUED
        jobs); one waiting in a batch system is held there first (``scontrol hold``, ``bstop``,
        ``JobAction.Hold``) and recorded HELD once the backend said yes. A job that started
        cannot be held (suspending is not holding), nor one still waiting for data or
        upstream jobs: 409 naming its phase.
        """
        job = self.get(user, job_id)
        if job.phase is Phase.EXECUTING:
            raise Conflict(
                f"job {job.id} is EXECUTING: only a job that has not started can be held "
                "(hold does not suspend a running job)",
                phase=job.phase.value,
            )
        if job.phase is not Phase.QUEUED:
            raise Conflict(
                f"job {job.id} is {job.phase.value}: only a QUEUED job can be held",
                phase=job.phase.value,
            )
        by = {"by": user.name}
        if job.native_id is None:
            if job.reason not in NOT_HANDED_OVER:
                raise Conflict(_not_holdable(job), phase=job.phase.value, reason=job.reason)
            return self._change(
                job, Action.HOLD, user, data={**by, "where": "jobmill"}, expect_reason=job.reason
            )
        why = f"held through jobmill by {user.name}"
        self._backend_call(job, "hold", lambda executor: executor.hold(str(job.native_id), why))
        return self._change(
            job,
            Action.HOLD,
            user,
            data={**by, "where": job.executor, "why": why},
            expect_reason=Reason.BACKEND.value,
        )

    def release(self, user: User, job_id: str) -> Job:
        """Let a HELD job start: back to QUEUED, in the database or in its batch system (which
        may refuse a hold it did not get from this user, such as an administrator's)."""
        job = self.get(user, job_id)
        if job.phase is not Phase.HELD:
            raise Conflict(
                f"job {job.id} is {job.phase.value}: only a HELD job can be released",
                phase=job.phase.value,
            )
        by = {"by": user.name}
        if job.native_id is None:
            job = self._change(job, Action.RELEASE, user, data=by, reason=Reason.CAPACITY.value)
            self.on_queued()
            return job
        why = f"released through jobmill by {user.name}"
        self._backend_call(
            job, "release", lambda executor: executor.release(str(job.native_id), why)
        )
        return self._change(
            job, Action.RELEASE, user, data={**by, "why": why}, reason=Reason.BACKEND.value
        )

    def _backend_call(self, job: Job, what: str, call: Callable[[Holding], None]) -> None:
        """Ask the job's backend to hold or release it: 503 when it cannot be reached, 409 when
        it refuses or cannot hold at all."""
        executor = self.backends.get(job.executor)
        if not isinstance(executor, Holding):
            raise Conflict(
                f"the {job.executor} executor cannot {what} a job it runs", phase=job.phase.value
            )
        try:
            call(executor)
        except ExecutorUnavailable as exc:
            raise BackendUnavailable(f"{job.executor}: {exc}", field="id") from None
        except OSError as exc:
            raise Conflict(
                f"{job.executor} refused to {what} job {job.id}: {exc}", phase=job.phase.value
            ) from None

    def _change(
        self,
        job: Job,
        action: Action,
        user: User,
        *,
        data: Mapping[str, Any],
        reason: str | None = None,
        expect_reason: str | None = None,
    ) -> Job:
        """A user's hold or release; when the engine (or a backend) got there first, the job
        as it is now if it already reached the same phase, else 409 naming its phase."""
        try:
            return self.store.transition(
                job.id,
                action,
                actor=user.name,
                data=data,
                reason=reason,
                expect_reason=expect_reason,
            )
        except Conflict:
            now = self.store.require(job.id)
            wanted = Phase.HELD if action is Action.HOLD else Phase.QUEUED
            if now.phase is wanted:
                return now
            state = f"{now.phase.value} ({now.reason})" if now.reason else now.phase.value
            raise Conflict(
                f"job {job.id} became {state} meanwhile: it cannot {action.value} now",
                phase=now.phase.value,
            ) from None

    # -- what the backend says --------------------------------------------------------------

    def details(self, user: User, job_id: str) -> tuple[Job, str]:
        """The job and its backend's own description of it (``scontrol show job``,
        ``condor_q -l``, ``bjobs -l``, the local process)."""
        job = self.get(user, job_id)
        return job, self.backend_details(job)

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

    def delete(self, user: User, job_id: str) -> None:
        """UWS ``DELETE``: abort the job if it is live, remove its files, and remove it from
        jobmill (404 from now on); its events stay, closed by a ``deleted`` event (audit)."""
        job = self.get(user, job_id)
        if job.phase in LIVE:
            try:
                job = self.abort(user, job.id)
            except Conflict:
                job = self.get(user, job.id)
        self.store.delete(job.id, actor=user.name)
        self.files.remove(job)

    def report(self, job_id: str, token: str | None, payload: Any) -> dict[str, Any]:
        """Merge a progress report posted by the job itself, authorised by its own token.

        Returns the merged report. A token once verified is remembered for a few seconds, so
        a job posting often costs one database transaction per post, not two.
        """
        canonical = parse_job_id(job_id)
        if not token:
            raise Unauthorized("a job token is required", field="token")
        if canonical is None or not self._token_valid(canonical, token):
            raise Forbidden("this token is not valid for this job", field="token")
        check_value(payload, "")  # fields: "counters.done", "status"
        return self.store.merge_report(
            canonical, reports.merge, reports.normalise(payload), actor=f"job:{canonical}"
        )

    def _token_valid(self, job_id: str, token: str) -> bool:
        key = (job_id, hash_secret(token))
        now = time.monotonic()
        if self._verified.get(key, 0.0) > now:
            return True
        if not self.store.check_job_token(job_id, token):
            return False
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[key] = now + TOKEN_CACHE_SECONDS
        return True


def _not_holdable(job: Job) -> str:
    if job.reason == Reason.BACKEND.value:
        return f"job {job.id} is being handed to its backend right now: try again in a moment"
    return (
        f"job {job.id} is QUEUED ({job.reason or 'no reason'}): it can be held once it is "
        "ready to run"
    )


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
    duration = request.execution_duration
    if duration is not None and duration > INT32_MAX:  # negative ones: validate_for says so
        name = f"{prefix}execution_duration"
        raise ValidationError(f"{name}: at most {INT32_MAX} seconds", field=name)


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


def _visible_to(user: User, flt: JobFilter) -> bool:
    """Narrow ``flt`` to what ``user`` may see (a user sees their own jobs, an admin all);
    False when it asked for somebody else's jobs."""
    if user.sees_all:
        return True
    if flt.owner and flt.owner != user.name:
        return False
    flt.owner = user.name
    return True
