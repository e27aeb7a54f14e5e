"""Dependencies and sub-jobs: what a job runs after (link, unlink), which job a running job's
own token names (it may create sub-jobs), and the graph the faces show (docs/workflows.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from jobmill.domain.dag import POLICIES
from jobmill.domain.errors import NotFound, ValidationError
from jobmill.domain.jobs import Job, JobRequest, parse_job_id
from jobmill.domain.jobtypes import JobType
from jobmill.domain.users import User
from jobmill.service.jobs.base import JobServiceBase
from jobmill.storage.jobs import hash_secret

MAX_AFTER = 10_000
"""The most jobs one job may run after (a fan-in)."""
MAX_GRAPH = 100_000
"""The most jobs ``graph`` returns."""


@dataclass
class Graph:
    """Jobs connected by dependencies and sub-jobs: the jobs, and the edges ``(parent,
    child)`` of each kind."""

    jobs: list[Job]
    after: list[tuple[str, str]] = field(default_factory=list)
    subjobs: list[tuple[str, str]] = field(default_factory=list)
    truncated: bool = False


class JobLinks(JobServiceBase):
    """Link, unlink, sub-jobs and the graph."""

    # -- creation ----------------------------------------------------------------------------

    def upstream(
        self, user: User, request: JobRequest, jobtype: JobType, prefix: str = ""
    ) -> tuple[tuple[str, ...], str | None, str | None]:
        """A request's ``after`` (canonical ids of jobs the user may see), its policy on a
        parent's failure, and its parent job when a running job's own token creates it."""
        field_name = f"{prefix}after"
        # No job id in the path: an unknown parent is a value that breaks a rule (422).
        after = self._parents(user, request.after, field_name, missing=ValidationError)
        policy = request.on_parent_failure
        if policy is not None and policy not in POLICIES:
            raise ValidationError(
                f"must be one of: {', '.join(POLICIES)}", field=f"{prefix}on_parent_failure"
            )
        if after and request.wait_for is not None:
            raise ValidationError(
                "a job cannot wait for data and for upstream jobs at once", field=field_name
            )
        return after, (policy or jobtype.on_parent_failure) if after else policy, user.job

    def _parents(
        self,
        user: User,
        raw: Sequence[str],
        field_name: str,
        missing: type[NotFound | ValidationError] = NotFound,
    ) -> tuple[str, ...]:
        if isinstance(raw, str) or len(raw) > MAX_AFTER:
            raise ValidationError(f"a list of at most {MAX_AFTER} job ids", field=field_name)
        ids: list[str] = []
        for i, value in enumerate(raw):
            canonical = parse_job_id(value) if isinstance(value, str) else None
            if canonical is None:
                raise ValidationError("not a job id", field=f"{field_name}[{i}]")
            ids.append(canonical)
        unique = tuple(dict.fromkeys(ids))
        if not user.sees_all and unique:
            phases = self.store.phases(list(unique))
            for job_id in unique:
                if job_id not in phases:
                    raise missing(f"no job {job_id}", field=field_name)
            owners = {job.id: job.owner for job in (self.store.get(i) for i in unique) if job}
            for job_id in unique:
                if owners.get(job_id) != user.name:
                    raise missing(f"no job {job_id}", field=field_name)
        return unique

    def job_token_user(self, secret: str) -> User | None:
        """The user a running job's own token acts as: the job's owner, scoped to the job (it
        may create its sub-jobs), or None when no running job has this token."""
        found = self.store.links.running_job_for_token(hash_secret(secret))
        if found is None:
            return None
        job_id, owner = found
        return User(owner, job=job_id)

    # -- link and unlink ---------------------------------------------------------------------

    def link(self, user: User, job_id: str, after: Sequence[str]) -> Job:
        """``job_id`` also runs after ``after`` (PENDING, or QUEUED waiting for upstream jobs).
        409 naming the cycle a link would close."""
        job = self.get(user, job_id)
        self._writer(user)
        parents = self._parents(user, after, "after")
        if not parents:
            raise ValidationError("name at least one job", field="after")
        self.store.links.link(job.id, parents, actor=user.name)
        return self.with_links([self.get(user, job.id)])[0]

    def unlink(self, user: User, job_id: str, parent_id: str) -> Job:
        """``job_id`` no longer runs after ``parent_id``; released when it waited for nothing
        else."""
        job = self.get(user, job_id)
        self._writer(user)
        parent = parse_job_id(parent_id)
        if parent is None:
            raise NotFound(f"job {job.id} does not depend on {parent_id}", field="parent_id")
        change = self.store.links.unlink(job.id, parent, actor=user.name)
        if change.released:
            self.on_queued()
        return self.with_links([self.get(user, job.id)])[0]

    @staticmethod
    def _writer(user: User) -> None:
        if user.reader:
            raise NotFound("anonymous readers cannot change jobs", field="id")

    # -- reading -----------------------------------------------------------------------------

    def with_links(self, jobs: list[Job]) -> list[Job]:
        """``jobs`` with what each runs after, its dependents and its sub-jobs filled in."""
        if not jobs:
            return jobs
        graph = self.store.links.graph([job.id for job in jobs])
        for job in jobs:
            job.after = tuple(graph.after.get(job.id, ()))
            job.dependents = tuple(graph.dependents.get(job.id, ()))
            job.children = tuple(graph.children.get(job.id, ()))
        return jobs

    def graph(self, user: User, job_id: str | None = None, *, limit: int = MAX_GRAPH) -> Graph:
        """The jobs connected to ``job_id`` (both ways, through dependencies and sub-jobs), or,
        without one, every job of the user that has a dependency or a sub-job."""
        if job_id is not None:
            try:
                roots = [self.get(user, job_id).id]
            except NotFound:  # a query argument, not a path: 422 naming it
                raise ValidationError(f"no job {job_id}", field="job") from None
        else:
            roots = self.store.links.linked_jobs(None if user.sees_all else user.name, limit)
        ids = sorted(self.store.links.component(roots, limit)) if roots else []
        jobs = [j for j in self.store.links.jobs(ids) if user.sees_all or j.owner == user.name]
        self.with_links(jobs)
        shown = {job.id for job in jobs}
        result = Graph(sorted(jobs, key=lambda j: j.seq), truncated=len(ids) >= limit)
        for job in result.jobs:
            result.after.extend((p, job.id) for p in job.after or () if p in shown)
            if job.parent_id in shown:
                result.subjobs.append((str(job.parent_id), job.id))
        return result
