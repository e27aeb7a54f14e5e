"""Changing jobs: run, abort, hold, release and delete them, and change what a PENDING job
will run with."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from jobmill.domain.errors import Conflict, ValidationError
from jobmill.domain.jobs import Job
from jobmill.domain.lifecycle import LIVE, TERMINAL, Action, Phase, Reason
from jobmill.domain.users import User
from jobmill.domain.values import INT32_MAX, check_int, check_text, check_value
from jobmill.executors.base import ExecutorUnavailable, Holding
from jobmill.service.jobs.base import BackendUnavailable, JobServiceBase
from jobmill.service.jobs.creation import MAX_RUN_ID

NOT_HANDED_OVER = frozenset({Reason.CAPACITY.value, Reason.BACKEND_UNAVAILABLE.value})
"""Reasons of a QUEUED job that is ready but not in a backend yet: held in the database."""


class JobControl(JobServiceBase):
    """A user's changes to jobs."""

    def run(self, user: User, job_id: str) -> Job:
        """Queue a PENDING job (UWS ``PHASE=RUN``); a HELD job is released (UWS: HELD waits
        for ``PHASE=RUN`` like PENDING)."""
        job = self.get(user, job_id)
        if job.phase is Phase.HELD:
            return self.release(user, job.id)
        waits = self.data is not None and self.data.has_condition(job.id)
        reason = Reason.DATA if waits else Reason.CAPACITY
        upstream = self.store.links.upstream_pending(job.id) > 0
        if upstream:
            reason = Reason.UPSTREAM
        job = self.store.transition(job.id, Action.RUN, actor=user.name, reason=reason.value)
        if upstream:  # its last parent may have completed meanwhile (storage.links)
            if self.store.links.release_if_ready(job.id):
                self.on_queued()
                job = self.store.require(job.id)
            return job
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

    # -- what a PENDING job will run with ---------------------------------------------------

    def update_parameters(self, user: User, job_id: str, values: Mapping[str, Any]) -> Job:
        """Change parameters of a PENDING job (UWS); merged with the current ones, revalidated.

        The merge is written only over the parameters it was made from (checked against the
        job's version): a change made meanwhile by another client is merged again, never lost."""
        check_value(values, "parameters")
        for attempt in range(5):
            job = self.get(user, job_id)
            if job.phase is not Phase.PENDING:
                raise Conflict(
                    f"parameters can only change while the job is PENDING "
                    f"(it is {job.phase.value})",
                    phase=job.phase.value,
                )
            jobtype = self.jobtype(job.type)
            merged = {**job.extra_parameters, **job.parameters, **values}
            declared, extra = jobtype.validate_parameters(
                merged, allow_unknown=not jobtype.reject_unknown_parameters
            )
            check_value(declared, "parameters")
            try:
                return self.store.record(
                    job.id,
                    "parameters",
                    actor=user.name,
                    data={"set": dict(values)},
                    values={"parameters": declared, "extra_parameters": extra},
                    phases=[Phase.PENDING],
                    version=job.event_count,
                )
            except Conflict:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def set_run_id(self, user: User, job_id: str, run_id: str) -> Job:
        """Change the run id (the client's label) of a PENDING job, as UWS/DALI clients do."""
        job = self.get(user, job_id)
        check_text(run_id, "run_id", max_length=MAX_RUN_ID)
        if job.phase is not Phase.PENDING:
            raise Conflict(
                f"the run id can only change while the job is PENDING (it is {job.phase.value})",
                phase=job.phase.value,
            )
        return self.store.record(
            job.id,
            "run_id",
            actor=user.name,
            data={"run_id": run_id},
            values={"run_id": run_id},
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


def _not_holdable(job: Job) -> str:
    if job.reason == Reason.BACKEND.value:
        return f"job {job.id} is being handed to its backend right now: try again in a moment"
    return (
        f"job {job.id} is QUEUED ({job.reason or 'no reason'}): it can be held once it is "
        "ready to run"
    )
