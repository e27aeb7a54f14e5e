"""ExperimentStore: ARP definitions, runs, and applications of definitions to runs.

Exactly once: ``apply`` writes a job, its ``created`` event and its application row in one
transaction, and ``experiment_applications`` is unique on (experiment, run, definition,
attempt). Autorun only ever writes attempt 1: a replayed run end, or two jobmill processes
ending the same run at once, find the row (or lose the insert to the unique constraint and roll
the whole transaction back): never a second job. Re-applying by hand writes the next attempt;
the run view shows the latest, the earlier ones stay (the history).

Each experiment gets a numeric id (``experiments``) when its first definition or run is
recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, delete, exists, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from jobmill.domain.arp import Application, Definition, Run
from jobmill.domain.errors import Conflict
from jobmill.domain.jobs import Job, NewJob, utcnow
from jobmill.domain.lifecycle import LIVE
from jobmill.storage.db import aware as _aware
from jobmill.storage.jobs import JobStore
from jobmill.storage.tables import (
    events,
    experiment_applications,
    experiment_definitions,
    experiment_runs,
    experiments,
    jobs,
)
from jobmill.storage.writes import created_event_row, insert_jobs, job_from_row, job_row

definitions_t = experiment_definitions
runs_t = experiment_runs
applications_t = experiment_applications
MAX_LIST = 10_000
LIVE_PHASES = sorted(p.value for p in LIVE)


def _definition(row: Row[Any]) -> Definition:
    m = row._mapping
    return Definition(
        id=m["id"],
        experiment=m["experiment"],
        name=m["name"],
        executable=m["executable"],
        parameters=m["parameters"],
        executor=m["executor"],
        created_by=m["created_by"],
        created_at=_aware(m["created_at"]) or utcnow(),
        autorun=bool(m["autorun"]),
        autorun_by=m["autorun_by"],
        autorun_at=_aware(m["autorun_at"]),
    )


def _run(row: Row[Any]) -> Run:
    m = row._mapping
    return Run(
        experiment=m["experiment"],
        run=m["run"],
        parameters=dict(m["parameters"] or {}),
        started_at=_aware(m["started_at"]),
        ended_at=_aware(m["ended_at"]),
    )


def _application(row: Row[Any], prefix: str = "") -> Application:
    m = row._mapping
    return Application(
        id=m[f"{prefix}id"],
        experiment=m[f"{prefix}experiment"],
        run=m[f"{prefix}run"],
        definition=m[f"{prefix}definition"],
        job_id=m[f"{prefix}job_id"],
        trigger=m[f"{prefix}trigger"],
        created_by=m[f"{prefix}created_by"],
        created_at=_aware(m[f"{prefix}created_at"]) or utcnow(),
        removed_at=_aware(m[f"{prefix}removed_at"]),
        removed_by=m[f"{prefix}removed_by"],
        attempt=m[f"{prefix}attempt"],
    )


def _known(conn: Connection, experiment: str) -> None:
    """Give the experiment its numeric id if it has none yet (in the caller's transaction)."""
    values = {"name": experiment, "created_at": utcnow()}
    if conn.dialect.name == "postgresql":
        conn.execute(postgresql.insert(experiments).values(values).on_conflict_do_nothing())
    elif conn.dialect.name == "sqlite":
        conn.execute(sqlite.insert(experiments).values(values).on_conflict_do_nothing())
    elif conn.execute(select(experiments.c.id).where(experiments.c.name == experiment)).first():
        return
    else:
        conn.execute(insert(experiments).values(values))


@dataclass
class Applied:
    """The outcome of ``ExperimentStore.apply``: the application, and its job when this call
    created it (``job`` is None when the definition was already applied to the run)."""

    application: Application
    job: Job | None

    @property
    def created(self) -> bool:
        return self.job is not None


class _AlreadyApplied(Exception):
    pass


class ExperimentStore:
    """Experiments' definitions, runs and applications, beside the jobs they create."""

    def __init__(self, jobs_store: JobStore) -> None:
        self.engine: Engine = jobs_store.engine
        self.read_engine: Engine = jobs_store.read_engine

    # -- definitions --------------------------------------------------------------------------

    def definitions(self, experiment: str) -> list[Definition]:
        query = (
            select(definitions_t)
            .where(definitions_t.c.experiment == experiment)
            .order_by(definitions_t.c.id)
        )
        with self.read_engine.connect() as conn:
            return [_definition(row) for row in conn.execute(query)]

    def definition(self, experiment: str, name: str) -> Definition | None:
        query = select(definitions_t).where(
            definitions_t.c.experiment == experiment, definitions_t.c.name == name
        )
        with self.read_engine.connect() as conn:
            row = conn.execute(query).first()
        return _definition(row) if row else None

    def autorun_definitions(self, experiment: str | None = None) -> list[Definition]:
        query = select(definitions_t).where(definitions_t.c.autorun.is_(True))
        if experiment is not None:
            query = query.where(definitions_t.c.experiment == experiment)
        with self.read_engine.connect() as conn:
            return [_definition(row) for row in conn.execute(query.order_by(definitions_t.c.id))]

    def add_definition(
        self,
        *,
        experiment: str,
        name: str,
        executable: str,
        parameters: str,
        executor: str,
        actor: str,
        autorun: bool,
    ) -> Definition:
        """Insert a definition; a duplicate name in the experiment is a ``Conflict``."""
        now = utcnow()
        values = {
            "experiment": experiment,
            "name": name,
            "executable": executable,
            "parameters": parameters,
            "executor": executor,
            "autorun": autorun,
            "autorun_by": actor if autorun else None,
            "autorun_at": now if autorun else None,
            "created_by": actor,
            "created_at": now,
        }
        try:
            with self.engine.begin() as conn:
                _known(conn, experiment)
                new_id = conn.execute(
                    insert(definitions_t).values(values).returning(definitions_t.c.id)
                ).scalar_one()
        except IntegrityError:
            raise Conflict(
                f"experiment {experiment} already has a definition named '{name}'", field="name"
            ) from None
        return Definition(id=new_id, **values)  # type: ignore[arg-type]

    def set_autorun(self, experiment: str, name: str, *, on: bool, actor: str) -> Definition | None:
        """Switch autorun, checked: only a definition whose autorun is the other way changes.
        Returns the changed definition, or None when nothing changed."""
        values: dict[str, Any] = {"autorun": on, "autorun_by": None, "autorun_at": None}
        if on:
            values.update(autorun_by=actor, autorun_at=utcnow())
        statement = (
            update(definitions_t)
            .where(
                definitions_t.c.experiment == experiment,
                definitions_t.c.name == name,
                definitions_t.c.autorun.is_(not on),
            )
            .values(values)
            .returning(definitions_t)
        )
        with self.engine.begin() as conn:
            row = conn.execute(statement).first()
        return _definition(row) if row else None

    def delete_definition(self, experiment: str, name: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(definitions_t).where(
                    definitions_t.c.experiment == experiment, definitions_t.c.name == name
                )
            )
        return bool(result.rowcount)

    def active_jobs(self, experiment: str, definition: str) -> int:
        """How many jobs of the definition have not ended yet."""
        query = (
            select(func.count())
            .select_from(applications_t.join(jobs, jobs.c.id == applications_t.c.job_id))
            .where(
                applications_t.c.experiment == experiment,
                applications_t.c.definition == definition,
                jobs.c.phase.in_(LIVE_PHASES),
            )
        )
        with self.read_engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    # -- runs ---------------------------------------------------------------------------------

    def mark_run(
        self, experiment: str, run: int, *, edge: str, parameters: Mapping[str, Any]
    ) -> Run:
        """Record a run's start or end (``edge``); the first time of each is kept, and run
        parameters posted with either are merged in. Safe to replay."""
        column = {"start": "started_at", "end": "ended_at"}[edge]
        now = utcnow()
        key = and_(runs_t.c.experiment == experiment, runs_t.c.run == run)
        for _attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    query = select(runs_t).where(key)
                    if conn.dialect.name == "postgresql":
                        query = query.with_for_update()
                    row = conn.execute(query).first()
                    if row is None:
                        _known(conn, experiment)
                        values = {
                            "experiment": experiment,
                            "run": run,
                            "parameters": dict(parameters),
                            "started_at": None,
                            "ended_at": None,
                        }
                        values[column] = now
                        conn.execute(insert(runs_t).values(values))
                        return _run_from(values)
                    current = _run(row)
                    merged = {**current.parameters, **parameters}
                    changes: dict[str, Any] = {}
                    if merged != current.parameters:
                        changes["parameters"] = merged
                    if getattr(current, column) is None:
                        changes[column] = now
                    if changes:
                        conn.execute(update(runs_t).where(key).values(changes))
                        for name, value in changes.items():
                            setattr(current, name, value)
                    return current
            except IntegrityError:
                continue  # another writer inserted the run first: update it instead
        raise Conflict(f"run {experiment}/{run} keeps changing; try again", field="run")

    def run(self, experiment: str, run: int) -> Run | None:
        query = select(runs_t).where(runs_t.c.experiment == experiment, runs_t.c.run == run)
        with self.read_engine.connect() as conn:
            row = conn.execute(query).first()
        return _run(row) if row else None

    def runs(self, experiment: str, *, limit: int = 1000, before: int | None = None) -> list[Run]:
        """Runs, the highest number first."""
        query = select(runs_t).where(runs_t.c.experiment == experiment)
        if before is not None:
            query = query.where(runs_t.c.run < before)
        query = query.order_by(runs_t.c.run.desc()).limit(max(1, min(limit, MAX_LIST)))
        with self.read_engine.connect() as conn:
            return [_run(row) for row in conn.execute(query)]

    def unapplied_ended_runs(
        self,
        experiment: str,
        definition: str,
        *,
        first: int | None = None,
        last: int | None = None,
        limit: int = MAX_LIST,
    ) -> list[Run]:
        """Ended runs to which ``definition`` was never applied, lowest number first."""
        applied = exists().where(
            applications_t.c.experiment == runs_t.c.experiment,
            applications_t.c.run == runs_t.c.run,
            applications_t.c.definition == definition,
        )
        query = select(runs_t).where(
            runs_t.c.experiment == experiment, runs_t.c.ended_at.is_not(None), ~applied
        )
        if first is not None:
            query = query.where(runs_t.c.run >= first)
        if last is not None:
            query = query.where(runs_t.c.run <= last)
        query = query.order_by(runs_t.c.run).limit(limit)
        with self.read_engine.connect() as conn:
            return [_run(row) for row in conn.execute(query)]

    # -- applications -------------------------------------------------------------------------

    def experiment_name(self, experiment_id: int) -> str | None:
        """The experiment with this numeric id."""
        query = select(experiments.c.name).where(experiments.c.id == experiment_id)
        with self.read_engine.connect() as conn:
            name = conn.execute(query).scalar()
        return str(name) if name is not None else None

    def experiment_ids(self) -> list[tuple[int, str]]:
        """Every experiment's (id, name), by id."""
        query = select(experiments.c.id, experiments.c.name).order_by(experiments.c.id)
        with self.read_engine.connect() as conn:
            return [(int(row.id), str(row.name)) for row in conn.execute(query)]

    def experiment_id(self, experiment: str) -> int | None:
        query = select(experiments.c.id).where(experiments.c.name == experiment)
        with self.read_engine.connect() as conn:
            found = conn.execute(query).scalar()
        return int(found) if found is not None else None

    def application(self, experiment: str, run: int, definition: str) -> Application | None:
        """The latest attempt of the definition on the run."""
        query = (
            select(applications_t)
            .where(
                applications_t.c.experiment == experiment,
                applications_t.c.run == run,
                applications_t.c.definition == definition,
            )
            .order_by(applications_t.c.attempt.desc())
            .limit(1)
        )
        with self.read_engine.connect() as conn:
            row = conn.execute(query).first()
        return _application(row) if row else None

    def application_of_job(self, experiment: str, job_id: str) -> Application | None:
        query = select(applications_t).where(
            applications_t.c.experiment == experiment, applications_t.c.job_id == job_id
        )
        with self.read_engine.connect() as conn:
            row = conn.execute(query).first()
        return _application(row) if row else None

    def apply(
        self,
        new: NewJob,
        *,
        experiment: str,
        run: int,
        definition: str,
        trigger: str,
        actor: str,
        again: bool = False,
    ) -> Applied:
        """Create the job of a definition applied to a run, with its application row, in one
        transaction. Without ``again`` (autorun, backfill) only a first attempt is made: when
        the definition was already applied to the run, nothing is created and the existing
        application is returned. With ``again`` (by hand) the next attempt is made, unless
        the latest one's job has not ended (then it is returned, and nothing is created)."""
        now = utcnow()
        new_row = job_row(new, now)
        arp = {"experiment": experiment, "run": run, "definition": definition, "trigger": trigger}
        key = and_(
            applications_t.c.experiment == experiment,
            applications_t.c.run == run,
            applications_t.c.definition == definition,
        )
        latest_query = (
            select(applications_t.c.attempt, jobs.c.phase)
            .select_from(applications_t.outerjoin(jobs, jobs.c.id == applications_t.c.job_id))
            .where(key)
            .order_by(applications_t.c.attempt.desc())
            .limit(1)
        )
        try:
            with self.engine.begin() as conn:
                latest = conn.execute(latest_query).first()
                if latest is not None and (not again or latest.phase in LIVE_PHASES):
                    raise _AlreadyApplied
                attempt = 1 if latest is None else int(latest.attempt) + 1
                app_values = {
                    "experiment": experiment,
                    "run": run,
                    "definition": definition,
                    "job_id": new.id,
                    "trigger": trigger,
                    "created_by": actor,
                    "created_at": now,
                    "removed_at": None,
                    "removed_by": None,
                    "attempt": attempt,
                }
                event_row = created_event_row(new, now, actor, {"arp": arp | {"attempt": attempt}})
                _known(conn, experiment)
                job = insert_jobs(conn, [new_row], [event_row])[0]
                app_id = conn.execute(
                    insert(applications_t).values(app_values).returning(applications_t.c.id)
                ).scalar_one()
        except (_AlreadyApplied, IntegrityError) as exc:
            current = self.application(experiment, run, definition)
            if current is None:
                if isinstance(exc, IntegrityError):
                    raise
                raise Conflict("the application changed meanwhile; try again") from None
            return Applied(current, None)
        return Applied(Application(id=app_id, **app_values), job)  # type: ignore[arg-type]

    def remove_application(self, application_id: int, *, actor: str) -> bool:
        """Take an application off the run view (its job stays in jobmill); checked."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(applications_t)
                .where(applications_t.c.id == application_id)
                .where(applications_t.c.removed_at.is_(None))
                .values(removed_at=utcnow(), removed_by=actor)
            )
        return bool(result.rowcount)

    def entries(
        self,
        experiment: str,
        *,
        owner: str | None = None,
        run: int | None = None,
        after: int = 0,
        limit: int = 1000,
        history: bool = False,
    ) -> list[tuple[Application, Job]]:
        """The run view: the latest attempt of each definition on each run, unless removed,
        with its job, in application order; with ``history``, every attempt not removed."""
        labelled = [c.label(f"app_{c.name}") for c in applications_t.c]
        query = (
            select(jobs, *labelled)
            .select_from(applications_t.join(jobs, jobs.c.id == applications_t.c.job_id))
            .where(
                applications_t.c.experiment == experiment,
                applications_t.c.removed_at.is_(None),
                applications_t.c.id > after,
            )
        )
        if not history:
            later = applications_t.alias("later")
            query = query.where(
                ~exists().where(
                    later.c.experiment == applications_t.c.experiment,
                    later.c.run == applications_t.c.run,
                    later.c.definition == applications_t.c.definition,
                    later.c.attempt > applications_t.c.attempt,
                )
            )
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        if run is not None:
            query = query.where(applications_t.c.run == run)
        query = query.order_by(applications_t.c.id).limit(max(1, min(limit, MAX_LIST)))
        with self.read_engine.connect() as conn:
            rows = conn.execute(query).all()
        return [(_application(row, prefix="app_"), job_from_row(row)) for row in rows]

    def slow_submissions(self, job_ids: Iterable[str]) -> set[str]:
        """Which of the jobs had a submission the backend was slow to accept."""
        ids = list(job_ids)
        slow: set[str] = set()
        with self.read_engine.connect() as conn:
            for start in range(0, len(ids), 500):
                query = select(events.c.job_id, events.c.data).where(
                    events.c.job_id.in_(ids[start : start + 500]), events.c.name == "submitted"
                )
                for row in conn.execute(query):
                    if isinstance(row.data, dict) and row.data.get("slow"):
                        slow.add(row.job_id)
        return slow


def _run_from(values: Mapping[str, Any]) -> Run:
    return Run(
        experiment=values["experiment"],
        run=values["run"],
        parameters=dict(values["parameters"]),
        started_at=values["started_at"],
        ended_at=values["ended_at"],
    )
