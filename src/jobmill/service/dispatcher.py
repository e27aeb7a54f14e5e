"""Dispatch: turn a queued job into a running one on its executor.

Jobs are claimed in groups with checked transitions (``JobStore.claim_queued``) before their
processes start, so two jobmill processes sharing a database never start the same job twice.
Each job's secret token is made here, handed to its process in its environment, and only its
hash is stored.
"""

from __future__ import annotations

import logging
import os
import secrets
import uuid
from collections.abc import Mapping

from jobmill.config import Settings
from jobmill.domain.confine import has_symlink
from jobmill.domain.errors import Conflict, NotFound
from jobmill.domain.jobs import Job
from jobmill.domain.jobtypes import JobType, build_argv, build_env
from jobmill.domain.lifecycle import Action, Reason
from jobmill.executors.base import LaunchSpec
from jobmill.service.files import JobFiles
from jobmill.storage.jobs import JobStore, hash_secret

log = logging.getLogger(__name__)
ACTOR = "jobmill"


def report_url(settings: Settings, job_id: str) -> str:
    return f"{settings.callback_url}/api/v1/jobs/{job_id}/report"


def job_environment(
    settings: Settings, jobtype: JobType, job: Job, token: str, base_env: Mapping[str, str]
) -> dict[str, str]:
    """The whole environment of a job's process: nothing else of the server leaks in."""
    env = {name: base_env[name] for name in settings.pass_env if name in base_env}
    env.update(build_env(jobtype, job.parameters))
    url = report_url(settings, job.id)
    env.update(
        {
            "JOBMILL_JOB_ID": job.id,
            "JOBMILL_URL": settings.callback_url,
            "JOBMILL_REPORT_URL": url,
            "JOBMILL_TOKEN": token,
            "BATCH_UPDATE_URL": f"{url}?token={token}",
        }
    )
    return env


def launch_spec(
    settings: Settings, files: JobFiles, jobtype: JobType, job: Job, token: str
) -> LaunchSpec:
    workdir = files.workdir(job.id)
    builtins = {
        "jobtype_dir": jobtype.directory or ".",
        "job_dir": str(workdir),
        "job_id": job.id,
    }
    return LaunchSpec(
        job_id=job.id,
        argv=build_argv(jobtype, job.parameters, builtins),
        env=job_environment(settings, jobtype, job, token, os.environ),
        workdir=workdir,
        stdout=files.log_path(job, "stdout"),
        stderr=files.log_path(job, "stderr"),
        resources=jobtype.resources,
        execution_duration=job.execution_duration,
        umask=settings.umask,
    )


class Dispatcher:
    """Claims queued jobs and starts them."""

    def __init__(
        self, settings: Settings, store: JobStore, files: JobFiles, jobtypes: Mapping[str, JobType]
    ) -> None:
        self.settings = settings
        self.store = store
        self.files = files
        self.jobtypes = jobtypes

    def claim_group(self, executor: str, limit: int, *, local: bool) -> list[tuple[Job, str]]:
        """Claim up to ``limit`` ready jobs of ``executor`` in one transaction, oldest first:
        ``local`` jobs move to EXECUTING on this node, batch jobs to QUEUED (reason
        ``backend``).
        Jobs another process claimed first are skipped. Returns each job with its token."""
        tokens: dict[str, str] = {}

        def values_for(job_id: str) -> dict[str, str]:
            tokens[job_id] = token = secrets.token_urlsafe(24)
            return {"node": self.settings.node, "token_hash": hash_secret(token)}

        claimed = self.store.claim_queued(
            executor=executor,
            action=Action.START if local else Action.WAIT,
            reason=None if local else Reason.BACKEND.value,
            limit=limit,
            actor=ACTOR,
            values_for=values_for,
        )
        return [(job, tokens[job.id]) for job in claimed]

    def backend_unavailable(self, job: Job, why: str) -> None:
        """The backend refused or could not be reached: keep the job, retry later (ARP's
        "Persisted")."""
        log.warning("job %s: backend unavailable: %s", job.id, why)
        try:
            self.store.transition(
                job.id,
                Action.WAIT,
                actor=ACTOR,
                reason=Reason.BACKEND_UNAVAILABLE.value,
                data={"why": why},
            )
        except (Conflict, NotFound):
            pass

    def spec_for(self, job: Job, token: str) -> LaunchSpec | str:
        """The launch spec, or the reason the job cannot be launched."""
        jobtype = self.jobtypes.get(job.type)
        if jobtype is None:
            return f"job type '{job.type}' is no longer defined"
        if job.log_dir and has_symlink(job.log_dir):  # checked when the job was created
            return f"log_dir {job.log_dir} now goes through a symbolic link (refused)"
        try:
            return launch_spec(self.settings, self.files, jobtype, job, token)
        except (KeyError, ValueError) as exc:
            return f"cannot build the command: {exc}"

    def fail(self, job: Job, error: str) -> None:
        log.warning("job %s cannot start: %s", job.id, error)
        try:
            self.store.transition(job.id, Action.FAIL, actor=ACTOR, values={"error": error})
        except (Conflict, NotFound):
            pass

    @staticmethod
    def ocps_hex(job_id: str) -> str:
        return uuid.UUID(job_id).hex
