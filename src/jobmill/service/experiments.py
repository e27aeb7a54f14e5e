"""Experiments and autorun (SLAC's ARP): definitions, runs, applying definitions to runs.

A definition is an implicit job type (``domain.arp.definition_jobtype``), never one of the YAML
job types in ``JobService.jobtypes``: its jobs are created here, through
``JobService.validate_for`` and ``ExperimentStore.apply`` (job, event and application row in one
transaction, unique per experiment, run, definition and attempt). The dispatcher finds the job
type of such a job through ``JobTypes``, which resolves ``arp:<experiment>:<name>`` from the
database when it is asked: every jobmill process sharing the database sees a definition the
moment it is created, and none keeps a stale copy after it is deleted.

Autorun: when a run ends, every definition of the experiment whose autorun was switched on
before the end gets exactly one job for the run, owned by whoever switched autorun on. Runs
that ended earlier are left alone unless a backfill is asked for. Applying a definition again
by hand makes the next attempt (a re-run); the run view shows the latest.

An experiment is named by its name or by its numeric id (``experiment_name``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobmill.domain import arp
from jobmill.domain.arp import Application, Definition, Run
from jobmill.domain.errors import Conflict, Forbidden, JobmillError, NotFound, ValidationError
from jobmill.domain.jobs import Job
from jobmill.domain.jobtypes import JobType
from jobmill.domain.lifecycle import TERMINAL, Phase
from jobmill.domain.values import INT32_MAX, check_int, check_text, check_value
from jobmill.executors.base import Executor
from jobmill.service import handover
from jobmill.service.files import MAX_LOG_READ, LogChunk, open_inside
from jobmill.service.jobs import JobRequest, JobService, User
from jobmill.storage.experiments import Applied, ExperimentStore

log = logging.getLogger(__name__)
MAX_BACKFILL = 10_000
MAX_RUN_PARAMETERS = 1000


class NoLog(JobmillError):
    """The job has written no log (yet): not the same as an empty log, nor an error."""

    status = 404
    code = "no_log"


class LogUnreadable(JobmillError):
    """The log exists but cannot be read."""

    status = 503
    code = "log_unreadable"


@dataclass
class Entry:
    """One job of the run view: its application, the job, and whether its backend was slow."""

    application: Application
    job: Job
    slow: bool = False


@dataclass
class RunEnded:
    """What ending a run (or a backfill) did: the jobs it created, what it could not do, and
    the run that ended."""

    run: Run | None = None
    created: list[Entry] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)


class JobTypes(Mapping[str, JobType]):
    """The declared job types, plus ARP definitions resolved from the database on demand.

    Iterating lists the declared ones only; ``arp:<experiment>:<name>`` names are looked up
    when asked for (the dispatcher asks once per job it starts).
    """

    def __init__(self, declared: Mapping[str, JobType], store: ExperimentStore) -> None:
        self.declared = declared
        self.store = store
        self._built: dict[tuple[Any, ...], JobType] = {}

    def __getitem__(self, name: str) -> JobType:
        jobtype = self.declared.get(name)
        if jobtype is not None:
            return jobtype
        parts = arp.split_jobtype_name(name)
        definition = self.store.definition(*parts) if parts else None
        if definition is None:
            raise KeyError(name)
        return self.build(definition)

    def build(self, definition: Definition) -> JobType:
        key = (definition.id, definition.experiment, definition.name, definition.executable,
               definition.parameters, definition.executor)  # fmt: skip
        jobtype = self._built.get(key)
        if jobtype is None:
            if len(self._built) > 1000:
                self._built.clear()
            jobtype = self._built[key] = arp.definition_jobtype(definition)
        return jobtype

    def __iter__(self) -> Iterator[str]:
        return iter(self.declared)

    def __len__(self) -> int:
        return len(self.declared)


class ExperimentService:
    """The ARP rules: definitions, runs, autorun, and the actions on their jobs."""

    def __init__(
        self,
        store: ExperimentStore,
        jobs: JobService,
        jobtypes: JobTypes,
        executors: Mapping[str, Executor],
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.jobtypes = jobtypes
        self.executors = executors

    # -- definitions --------------------------------------------------------------------------

    def experiment_name(self, experiment: str) -> str:
        """An experiment given by its name or by its numeric id (digits only)."""
        if experiment.isascii() and experiment.isdigit():
            found = self.store.experiment_name(int(experiment)) if len(experiment) < 10 else None
            if found is None:
                raise NotFound(f"no experiment has the id {experiment}", field="experiment")
            return found
        return arp.check_experiment(experiment)

    def experiments(self) -> list[tuple[int, str]]:
        """Every experiment's numeric id and name."""
        return self.store.experiment_ids()

    def definitions(self, experiment: str) -> list[Definition]:
        return self.store.definitions(self.experiment_name(experiment))

    def definition(self, experiment: str, name: str) -> Definition:
        check_text(name, "name", max_length=arp.MAX_EXECUTABLE)  # a NUL cannot be looked up
        definition = self.store.definition(self.experiment_name(experiment), name)
        if definition is None:
            raise NotFound(f"experiment {experiment} has no definition '{name}'", field="name")
        return definition

    def define(
        self,
        user: User,
        experiment: str,
        *,
        name: str,
        executable: str,
        parameters: str = "",
        executor: str | None = None,
        autorun: bool = False,
    ) -> Definition:
        """A new definition. Its executable runs with jobmill's rights, so, like a job type,
        only an administrator may define one."""
        check_text(executable, "executable", max_length=arp.MAX_EXECUTABLE)
        check_text(parameters, "parameters", max_length=arp.MAX_PARAMETERS)
        experiment = self.experiment_name(experiment)
        arp.check_name(name)
        arp.check_executable(executable)
        arp.check_parameters(parameters)
        executor = executor or "local"
        if executor not in self.jobs.executors:
            raise ValidationError(
                f"executor '{executor}' is not available "
                f"(available: {', '.join(self.jobs.executors)})",
                field="executor",
            )
        if not user.admin:
            raise Forbidden(
                "only an administrator can define what runs (as for job types)",
                field="executable",
            )
        return self.store.add_definition(
            experiment=experiment,
            name=name,
            executable=executable,
            parameters=parameters,
            executor=executor,
            actor=user.name,
            autorun=autorun,
        )

    def set_autorun(self, user: User, experiment: str, name: str, on: bool) -> Definition:
        """Switch autorun on (the jobs it creates are the caller's) or off (by whoever switched
        it on, or an administrator). Switching it the way it already is changes nothing."""
        current = self.definition(experiment, name)
        if current.autorun == on:
            if on and current.autorun_by != user.name:
                raise Conflict(
                    f"autorun is already on, for {current.autorun_by}; "
                    "they (or an administrator) must switch it off first",
                    field="autorun",
                )
            return current
        if not on and not (user.admin or current.autorun_by == user.name):
            raise Forbidden(
                f"autorun was switched on by {current.autorun_by}; only they or an "
                "administrator can switch it off",
                field="autorun",
            )
        changed = self.store.set_autorun(experiment, name, on=on, actor=user.name)
        if changed is None:  # switched by someone else meanwhile
            raise Conflict("autorun changed meanwhile; look again", field="autorun")
        return changed

    def delete_definition(self, user: User, experiment: str, name: str) -> None:
        """Remove a definition; refused while any of its jobs is still running or queued (they
        would lose their job type). Ended jobs stay, with their run view entries."""
        self.definition(experiment, name)
        if not user.admin:
            raise Forbidden("only an administrator can delete a definition", field="name")
        active = self.store.active_jobs(experiment, name)
        if active:
            raise Conflict(
                f"definition '{name}' has {active} job(s) that have not ended; "
                "kill them or wait for them first",
                field="name",
            )
        if not self.store.delete_definition(experiment, name):
            raise NotFound(f"experiment {experiment} has no definition '{name}'", field="name")

    # -- runs ---------------------------------------------------------------------------------

    def start_run(
        self, user: User, experiment: str, run: int, parameters: Mapping[str, Any] | None = None
    ) -> Run:
        return self.store.mark_run(
            *self._run_key(experiment, run), edge="start", parameters=_run_params(parameters)
        )

    def end_run(
        self, user: User, experiment: str, run: int, parameters: Mapping[str, Any] | None = None
    ) -> RunEnded:
        """Record the end (the first one counts; replays are harmless) and run autorun."""
        ended = self.store.mark_run(
            *self._run_key(experiment, run), edge="end", parameters=_run_params(parameters)
        )
        outcome = RunEnded(ended)
        for definition in self.store.autorun_definitions(ended.experiment):
            if not _autoruns(definition, ended):
                continue
            self._autorun(user, definition, ended, outcome, trigger="autorun")
        if outcome.created:
            self.jobs.on_queued()
        return outcome

    def runs(self, experiment: str, *, limit: int = 1000, before: int | None = None) -> list[Run]:
        if before is not None:
            check_int(before, "before", low=0, high=INT32_MAX)
        return self.store.runs(self.experiment_name(experiment), limit=limit, before=before)

    def run(
        self, user: User, experiment: str, run: int, *, history: bool = False
    ) -> tuple[Run, list[Entry]]:
        """A run and its jobs (the run view); a run nobody posted but with jobs is listed too."""
        experiment, run = self._run_key(experiment, run)
        entries = self.entries(user, experiment, run=run, history=history)
        found = self.store.run(experiment, run)
        if found is None:
            if not entries:
                raise NotFound(f"experiment {experiment} has no run {run}", field="run")
            found = Run(experiment, run)
        return found, entries

    # -- applying -----------------------------------------------------------------------------

    def apply(self, user: User, experiment: str, run: int, name: str) -> Entry:
        """Apply a definition to a run by hand: one job, the caller's. Applying it again makes
        the next attempt, which the run view shows from then on (the earlier jobs stay: the
        history); refused while the latest attempt's job has not ended."""
        experiment, run = self._run_key(experiment, run)
        definition = self.definition(experiment, name)
        applied = self._apply(user, definition, run, trigger="manual", actor=user.name)
        if applied.job is None:
            raise Conflict(
                f"'{name}' is applied to run {run} and its job {applied.application.job_id} "
                "has not ended; kill it or wait for it first",
                field="definition",
                job_id=applied.application.job_id,
            )
        self.jobs.on_queued()
        return Entry(applied.application, applied.job)

    def backfill(
        self,
        user: User,
        experiment: str,
        name: str,
        *,
        first: int | None = None,
        last: int | None = None,
    ) -> RunEnded:
        """Apply a definition to every ended run (in ``first``..``last``) it was never applied
        to: the explicit way to process runs that ended before autorun was switched on."""
        definition = self.definition(experiment, name)
        if first is not None:
            arp.check_run(first, "first")
        if last is not None:
            arp.check_run(last, "last")
        runs = self.store.unapplied_ended_runs(
            experiment, name, first=first, last=last, limit=MAX_BACKFILL + 1
        )
        if len(runs) > MAX_BACKFILL:
            raise ValidationError(
                f"more than {MAX_BACKFILL} runs to backfill; give a narrower first..last",
                field="last",
            )
        outcome = RunEnded()
        for run in runs:
            self._autorun(user, definition, run, outcome, trigger="backfill", owner=user.name)
        if outcome.created:
            self.jobs.on_queued()
        return outcome

    def autorun_missed(self) -> int:
        """After a restart: give every autorun definition its job for runs that ended while
        it was on but got none (jobmill stopped between recording the end and the job)."""
        created = 0
        for definition in self.store.autorun_definitions():
            runs = self.store.unapplied_ended_runs(
                definition.experiment, definition.name, limit=MAX_BACKFILL
            )
            outcome = RunEnded()
            actor = User("jobmill")
            for run in runs:
                if _autoruns(definition, run):
                    self._autorun(actor, definition, run, outcome, trigger="autorun")
            created += len(outcome.created)
        if created:
            log.info("autorun: created %d job(s) for runs that ended while jobmill was down",
                     created)  # fmt: skip
            self.jobs.on_queued()
        return created

    def _autorun(
        self,
        actor: User,
        definition: Definition,
        run: Run,
        outcome: RunEnded,
        *,
        trigger: str,
        owner: str | None = None,
    ) -> None:
        if self.store.application(definition.experiment, run.run, definition.name) is not None:
            return  # already applied: a replay, or a backfill over a processed run
        owner = owner or definition.autorun_by or actor.name
        try:
            applied = self._apply(
                User(owner), definition, run.run, trigger=trigger, actor=actor.name
            )
        except JobmillError as exc:
            log.warning("%s %s on %s/%s: %s", trigger, definition.name,
                        definition.experiment, run.run, exc.message)  # fmt: skip
            outcome.errors.append({"definition": definition.name, "run": str(run.run),
                                   "error": exc.message})  # fmt: skip
            return
        if applied.job is not None:
            outcome.created.append(Entry(applied.application, applied.job))

    def _apply(
        self, owner: User, definition: Definition, run: int, *, trigger: str, actor: str
    ) -> Applied:
        jobtype = self.jobtypes.build(definition)
        request = JobRequest(
            type=jobtype.name,
            parameters={"experiment": definition.experiment, "run": run},
            run_id=arp.run_id(definition.experiment, run),
            executor=definition.executor,
        )
        with self.jobs.room():  # 507, not 500, on a full disk
            new = self.jobs.validate_for(jobtype, owner, request)
            return self.store.apply(
                new,
                experiment=definition.experiment,
                run=run,
                definition=definition.name,
                trigger=trigger,
                actor=actor,
                again=trigger == "manual",
            )

    # -- the run view and the actions on its jobs ---------------------------------------------

    def entries(
        self,
        user: User,
        experiment: str,
        *,
        run: int | None = None,
        after: int = 0,
        limit: int = 1000,
        history: bool = False,
    ) -> list[Entry]:
        """The experiment's jobs (an administrator sees all, a user their own), with whether
        their backend was slow to take them (for ``LSF_Slow``). ``history``: every attempt,
        not only the latest of each definition on each run."""
        experiment = self.experiment_name(experiment)
        if not 1 <= limit <= 10_000:
            raise ValidationError("must be between 1 and 10000", field="limit")
        check_int(after, "after", low=0, high=INT32_MAX)
        pairs = self.store.entries(
            experiment,
            owner=None if user.sees_all else user.name,
            run=run,
            after=after,
            limit=limit,
            history=history,
        )
        waiting = [job.id for _, job in pairs if job.phase is Phase.QUEUED and job.native_id]
        slow = self.store.slow_submissions(waiting) if waiting else set()
        return [Entry(app, job, job.id in slow) for app, job in pairs]

    def entry(self, user: User, experiment: str, job_id: str) -> Entry:
        job = self.jobs.get(user, job_id)
        application = self.store.application_of_job(self.experiment_name(experiment), job.id)
        if application is None or application.removed_at is not None:
            raise NotFound(f"experiment {experiment} has no job {job_id}", field="id")
        slow = bool(job.phase is Phase.QUEUED and self.store.slow_submissions([job.id]))
        return Entry(application, job, slow)

    def kill(self, user: User, experiment: str, job_id: str) -> Entry:
        """Kill the job (``JobService.abort``: the backend cancels it by its native id)."""
        entry = self.entry(user, experiment, job_id)
        job = self.jobs.abort(user, entry.job.id)
        return Entry(entry.application, job)

    def remove(self, user: User, experiment: str, job_id: str, *, kill: bool = False) -> bool:
        """Take a job off the run view. The job itself stays in jobmill (its history and
        files, until its destruction time). A job that has not ended is refused unless
        ``kill``, which kills it first: no orphans running unseen. Returns whether it killed."""
        entry = self.entry(user, experiment, job_id)
        killed = False
        if entry.job.phase not in TERMINAL:
            if not kill:
                raise Conflict(
                    f"job {entry.job.id} is {entry.job.phase.value}; kill it first, or ask "
                    "for kill=true",
                    field="kill",
                    phase=entry.job.phase.value,
                )
            try:
                self.jobs.abort(user, entry.job.id)
                killed = True
            except Conflict:
                pass  # it ended meanwhile
        if not self.store.remove_application(entry.application.id, actor=user.name):
            raise NotFound(f"experiment {experiment} has no job {job_id}", field="id")
        return killed

    def log(
        self,
        user: User,
        experiment: str,
        job_id: str,
        stream: str = "stdout",
        *,
        offset: int = 0,
        tail: int | None = None,
        limit: int = 1 << 20,
    ) -> LogChunk:
        entry = self.entry(user, experiment, job_id)
        # a job handed over to the batch job it submitted (service.handover) runs on a batch
        # executor: a local job's events need no look
        handed = entry.job.executor != "local"
        events = self.jobs.store.events(entry.job.id) if handed else []
        try:
            if handover.handed_over(events):
                # the executable submitted a batch job: its log is that job's (ARP's model)
                self.jobs.files.log_path(entry.job, stream)  # checks the stream's name
                where = handover.batch_output(events, stream)
                if where is None:
                    raise NoLog(
                        f"{entry.job.executor} job {entry.job.native_id} did not say where "
                        f"it writes its {stream}",
                        field="stream",
                    )
                chunk = read_chunk(Path(where), offset=offset, tail=tail, limit=limit)
            else:
                chunk = self.jobs.files.read_log(
                    entry.job, stream, offset=offset, tail=tail, limit=limit
                )
        except OSError as exc:
            raise LogUnreadable(
                f"the {stream} log cannot be read: {exc.strerror or exc}", field="stream"
            ) from None
        if not chunk.exists:
            raise NoLog(f"job {entry.job.id} has no {stream} log (yet)", field="stream")
        return chunk

    def details(self, user: User, experiment: str, job_id: str) -> tuple[Entry, str]:
        """The backend's own description of the job (``JobService.backend_details``)."""
        entry = self.entry(user, experiment, job_id)
        return entry, self.jobs.backend_details(entry.job)

    # -- helpers ------------------------------------------------------------------------------

    def _run_key(self, experiment: str, run: int) -> tuple[str, int]:
        return self.experiment_name(experiment), arp.check_run(run)


def read_chunk(path: Path, *, offset: int, tail: int | None, limit: int) -> LogChunk:
    """``JobFiles.read_log`` for a file outside jobmill's layout (a batch job's own log)."""
    if offset < 0:
        raise ValidationError("offset must not be negative", field="offset")
    if tail is not None and tail < 0:
        raise ValidationError("tail must not be negative", field="tail")
    limit = max(0, min(limit, MAX_LOG_READ))
    handle = open_inside(path, f"the log {path}")
    if handle is None:
        return LogChunk(b"", 0, 0, False)
    with handle:
        size = handle.seek(0, 2)
        start = max(0, size - min(tail, limit)) if tail is not None else min(offset, size)
        handle.seek(start)
        return LogChunk(handle.read(limit), start, size, True)


def _autoruns(definition: Definition, run: Run) -> bool:
    """Autorun applies to runs that ended after it was switched on."""
    return (
        definition.autorun
        and definition.autorun_at is not None
        and run.ended_at is not None
        and run.ended_at >= definition.autorun_at
    )


def _run_params(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise ValidationError("run parameters must be a JSON object", field="parameters")
    if len(parameters) > MAX_RUN_PARAMETERS:
        raise ValidationError(f"at most {MAX_RUN_PARAMETERS} run parameters", field="parameters")
    check_value(parameters, "parameters")
    return {str(k): v for k, v in parameters.items()}
