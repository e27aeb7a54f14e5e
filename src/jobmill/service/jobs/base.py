"""What every part of ``JobService`` shares: its collaborators, the job types, and finding a
job the asking user may see."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from jobmill.domain.confine import Roots
from jobmill.domain.errors import JobmillError, NotFound
from jobmill.domain.jobs import Job, parse_job_id
from jobmill.domain.jobtypes import JobType
from jobmill.domain.users import User
from jobmill.executors.base import Executor, LaunchSpec
from jobmill.service.files import JobFiles
from jobmill.service.space import DiskSpace
from jobmill.storage.jobs import JobStore

if TYPE_CHECKING:
    from jobmill.service.triggers import DataTriggers

LaunchSpecFor = Callable[[Job, str], LaunchSpec | str]


class BackendUnavailable(JobmillError):
    """The job's backend cannot be asked right now (503; try again later)."""

    status = 503
    code = "backend_unavailable"


class JobServiceBase:
    """The state the parts of ``JobService`` (``service.jobs``) work on."""

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

    # -- job types --------------------------------------------------------------------------

    def replace_jobtypes(self, jobtypes: Mapping[str, JobType]) -> None:
        """Serve these job types from now on (a reload); jobs already created keep theirs."""
        self.jobtypes = dict(jobtypes)

    def jobtype(self, name: str) -> JobType:
        jobtype = self.jobtypes.get(name)
        if jobtype is None:
            raise NotFound(f"unknown job type '{name}'", field="type")
        return jobtype

    # -- finding a job ----------------------------------------------------------------------

    def get(self, user: User, job_id: str) -> Job:
        canonical = parse_job_id(job_id)
        job = self.store.get(canonical) if canonical else None
        if job is None or not (user.sees_all or job.owner == user.name):
            raise NotFound(f"no job {job_id}", field="id")
        return job
