"""The manager's verbs (brownthrower's ``job edit|reset|clone|tags``): change what a PENDING job
runs with, put a failed job back to PENDING, copy a job, and tag jobs.

Every change here is checked: it applies only while the job is as the caller saw it (its phase,
and with a ``version`` its ``event_count``, which every change of the job bumps), in the one
``UPDATE`` that makes it. Two clients changing the same job at once get one winner; the others
get a 409 naming what changed, never a silent overwrite (docs/workflows.md, "Concurrency").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from jobmill.domain.errors import Conflict, ValidationError
from jobmill.domain.jobs import Job, JobRequest, utcnow
from jobmill.domain.lifecycle import Action, Phase
from jobmill.domain.users import User
from jobmill.domain.values import check_tag, check_value
from jobmill.service.jobs.creation import JobCreation
from jobmill.storage.tags import stale

RESET_VALUES: dict[str, Any] = {
    "exit_code": None,
    "error": None,
    "native_id": None,
    "node": None,
    "token_hash": None,
    "started_at": None,
    "ended_at": None,
    "report": {},
    "stage": None,  # a job that created sub-jobs runs its main step again (docs/workflows.md)
}
"""What ``reset`` clears: the traces of the run that failed (they stay in its events)."""


class JobManagement(JobCreation):
    """``edit``, ``reset``, ``clone`` and tags."""

    def shown(self, user: User, job_id: str) -> Job:
        """The job as the faces show it: with its tags."""
        return self.with_tags(self.get(user, job_id))

    def with_tags(self, job: Job) -> Job:
        self.store.tags.attach([job])
        return job

    def _check_version(self, job: Job, version: int | None, what: str) -> None:
        if version is not None and job.event_count != version:
            raise stale(job.id, version, job.event_count, what)

    # -- edit -------------------------------------------------------------------------------

    def edit(
        self,
        user: User,
        job_id: str,
        parameters: Mapping[str, Any],
        *,
        version: int | None = None,
    ) -> Job:
        """Change parameters of a PENDING job: merged with its current ones and validated by
        its job type (422 naming the parameter). Applied only while the job is PENDING and,
        with ``version``, unchanged since it was read at that version; without one, unchanged
        since this call read it. Otherwise 409 and nothing is written."""
        job = self.get(user, job_id)
        self._check_version(job, version, "edit")
        if job.phase is not Phase.PENDING:
            raise Conflict(
                f"job {job.id} is {job.phase.value}: only a PENDING job can be edited "
                "(reset a failed or aborted one first)",
                phase=job.phase.value,
            )
        if not isinstance(parameters, Mapping) or not parameters:
            raise ValidationError("give at least one parameter to change", field="parameters")
        check_value(parameters, "parameters")
        jobtype = self.jobtype(job.type)
        merged = {**job.extra_parameters, **job.parameters, **parameters}
        declared, extra = jobtype.validate_parameters(
            merged, prefix="parameters", allow_unknown=not jobtype.reject_unknown_parameters
        )
        check_value(declared, "parameters")
        changed = self.store.record(
            job.id,
            "edited",
            actor=user.name,
            data={"set": dict(parameters)},
            values={"parameters": declared, "extra_parameters": extra},
            phases=[Phase.PENDING],
            version=job.event_count,
        )
        return self.with_tags(changed)

    # -- reset ------------------------------------------------------------------------------

    def reset(self, user: User, job_id: str, *, version: int | None = None) -> Job:
        """Put a job that ended in ERROR or ABORTED back to PENDING (brownthrower's ``job
        reset``): the traces of its run are cleared, its events keep them; its files get a new
        lifetime. 409 for a job in any other phase."""
        job = self.get(user, job_id)
        self._check_version(job, version, "reset")
        if job.phase not in (Phase.ERROR, Phase.ABORTED):
            raise Conflict(
                f"job {job.id} is {job.phase.value}: only a job in ERROR or ABORTED can be reset",
                phase=job.phase.value,
                action=Action.RESET.value,
            )
        if self.data is not None and self.data.has_condition(job.id):
            raise Conflict(
                f"job {job.id} waited for data, which was used up: it cannot be reset "
                "(submit a new job with its wait_for)",
                phase=job.phase.value,
                action=Action.RESET.value,
            )
        values = dict(RESET_VALUES)
        jobtype = self.jobtypes.get(job.type)
        if jobtype is not None:
            values["destruction_at"] = utcnow() + timedelta(seconds=jobtype.destruction)
        changed = self.store.transition(
            job.id,
            Action.RESET,
            actor=user.name,
            data={"was": job.phase.value, "exit_code": job.exit_code, "error": job.error},
            values=values,
        )
        return self.with_tags(changed)

    # -- clone ------------------------------------------------------------------------------

    def clone(self, user: User, job_id: str, *, start: bool = False) -> Job:
        """A new job with the same type, parameters, run id, executor, execution duration,
        log directory and tags, validated again against its job type as it is now: PENDING
        (brownthrower's STASHED), or queued at once with ``start``."""
        job = self.shown(user, job_id)
        request = JobRequest(
            type=job.type,
            parameters={**job.extra_parameters, **job.parameters},
            run_id=job.run_id,
            executor=job.executor,
            execution_duration=job.execution_duration,
            log_dir=job.log_dir,
            start=start,
            allow_unknown=bool(job.extra_parameters),
            tags=job.tags,
        )
        return self.create(user, request)

    # -- tags -------------------------------------------------------------------------------

    def tag(self, user: User, job_id: str, tag: str, *, version: int | None = None) -> Job:
        """Add a tag (a no-op when the job has it)."""
        check_tag(tag)
        job = self.get(user, job_id)
        self._check_version(job, version, "tag change")
        return self.store.tags.add(job.id, tag, actor=user.name, version=version)

    def untag(self, user: User, job_id: str, tag: str, *, version: int | None = None) -> Job:
        """Remove a tag (404 naming ``tag`` when the job does not have it)."""
        check_tag(tag)
        job = self.get(user, job_id)
        self._check_version(job, version, "tag change")
        return self.store.tags.remove(job.id, tag, actor=user.name, version=version)

    def tags_of(self, job_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        return self.store.tags.of(job_ids)
