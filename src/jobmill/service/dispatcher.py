"""Dispatch: turn a queued job into a running one on its executor.

Jobs are claimed in groups with checked transitions (``JobStore.claim_queued``) before their
processes start, so two jobmill processes sharing a database never start the same job twice.
Each job's secret token is made here, handed to its process in its environment, and only its
hash is stored.
"""

from __future__ import annotations

import json
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
    env.update(workflow_environment(job))
    return env


PARENTS_FILE = "jobmill-parents.json"
CHILDREN_FILE = "jobmill-children.json"
MAX_IDS_IN_ENV = 100
"""Ids listed in ``JOBMILL_PARENT_IDS`` / ``JOBMILL_CHILD_IDS`` at most: one environment string
may not pass 128 KiB (a fan-in of thousands could not start); the files list them all."""


def workflow_environment(job: Job) -> dict[str, str]:
    """What a job of a workflow learns from its environment (docs/workflows.md): the jobs it
    ran after and, in its epilog, its sub-jobs; the files listing them are written in its job
    directory when it is claimed (``Dispatcher.write_inputs``)."""
    env: dict[str, str] = {}
    if job.parent_id:
        env["JOBMILL_SUPER_JOB_ID"] = job.parent_id
    if job.after:
        if len(job.after) <= MAX_IDS_IN_ENV:
            env["JOBMILL_PARENT_IDS"] = ",".join(job.after)
        env["JOBMILL_PARENTS_FILE"] = PARENTS_FILE
    if job.stage == "epilog":
        env["JOBMILL_STEP"] = "epilog"
        if len(job.children or ()) <= MAX_IDS_IN_ENV:
            env["JOBMILL_CHILD_IDS"] = ",".join(job.children or ())
        env["JOBMILL_CHILDREN_FILE"] = CHILDREN_FILE
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
    env = job_environment(settings, jobtype, job, token, os.environ)
    for name in ("JOBMILL_PARENTS_FILE", "JOBMILL_CHILDREN_FILE"):
        if name in env:
            env[name] = str(workdir / env[name])
    return LaunchSpec(
        job_id=job.id,
        argv=build_argv(jobtype, job.parameters, builtins, epilog=job.stage == "epilog"),
        env=env,
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

    def claim_group(self, executor: str, limit: int) -> list[tuple[Job, str]]:
        """Claim up to ``limit`` ready jobs of ``executor`` in one transaction, oldest first:
        they stay QUEUED, handed to the executor (reason ``backend``: a batch system's queue or
        the local shepherd's) until it says they run. Jobs another process claimed first are
        skipped. Returns each job with its token."""
        tokens: dict[str, str] = {}

        def values_for(job_id: str) -> dict[str, str]:
            tokens[job_id] = token = secrets.token_urlsafe(24)
            return {"node": self.settings.node, "token_hash": hash_secret(token)}

        claimed = self.store.claim_queued(
            executor=executor,
            action=Action.WAIT,
            reason=Reason.BACKEND.value,
            limit=limit,
            actor=ACTOR,
            values_for=values_for,
        )
        self.write_inputs(claimed)
        return [(job, tokens[job.id]) for job in claimed]

    def write_inputs(self, claimed: list[Job]) -> None:
        """Before claimed jobs start: the jobs each ran after (``after``) and, for an epilog,
        its sub-jobs, with what they ended with, as JSON files in its job directory (one query
        for the whole group; nothing for jobs outside a workflow)."""
        if not claimed:
            return
        graph = self.store.links.graph([job.id for job in claimed])
        for job in claimed:
            job.after = tuple(graph.after.get(job.id, ()))
            job.children = tuple(graph.children.get(job.id, ()))
            lists = []
            if job.after:
                lists.append((PARENTS_FILE, job.after))
            if job.stage == "epilog":
                lists.append((CHILDREN_FILE, job.children))
            for name, ids in lists:
                entries = self.store.links.results(ids)
                for entry in entries:
                    entry["job_dir"] = str(self.files.workdir(entry["id"]))
                workdir = self.files.workdir(job.id)
                try:
                    workdir.mkdir(parents=True, exist_ok=True)
                    (workdir / name).write_text(json.dumps(entries, indent=1) + "\n")
                except OSError as exc:  # the job starts; reading the file tells it
                    log.warning("job %s: cannot write %s: %s", job.id, name, exc)

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
