"""The one place that builds jobmill's pieces from the settings: database, job types, executors,
services. Nothing else reads global configuration."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from jobmill.config import Settings
from jobmill.domain.confine import Roots
from jobmill.domain.jobtype_files import load_jobtypes
from jobmill.domain.jobtypes import JobType
from jobmill.domain.rule_files import load_rules
from jobmill.executors.registry import build_executors
from jobmill.service.datawatch import DataWatcher, WatchSettings
from jobmill.service.dispatcher import Dispatcher
from jobmill.service.engine import Engine as JobEngine
from jobmill.service.experiments import ExperimentService, JobTypes
from jobmill.service.files import JobFiles
from jobmill.service.jobs import JobService
from jobmill.service.lease import Lease, lease_names
from jobmill.service.pipelinejobs import PipelineService, PipelineWatcher
from jobmill.service.rules import RuleEngine
from jobmill.service.signals import Signal
from jobmill.service.space import DiskSpace
from jobmill.service.tokens import TokenService
from jobmill.service.triggers import DataTriggers, WaitLimits
from jobmill.service.wakeups import QueuedWakeups
from jobmill.service.worker import Worker
from jobmill.storage import migrate
from jobmill.storage.conditions import ConditionStore
from jobmill.storage.db import make_engine
from jobmill.storage.experiments import ExperimentStore
from jobmill.storage.jobs import JobStore
from jobmill.storage.leases import LeaseStore
from jobmill.storage.pipelinejobs import PipelineStore
from jobmill.storage.rules import RuleStore
from jobmill.storage.wakeups import Wakeups

log = logging.getLogger(__name__)


@dataclass
class Jobmill:
    """Everything a running jobmill is made of."""

    settings: Settings
    db: Engine
    store: JobStore
    jobtypes: dict[str, JobType]
    jobs: JobService
    engine: JobEngine
    tokens: TokenService
    data: DataTriggers | None = None
    experiments: ExperimentService | None = None
    rules: RuleEngine | None = None
    pipeline: PipelineService | None = None
    wakeups: QueuedWakeups | None = None  # jobs queued elsewhere wake the engine (PostgreSQL)

    def workers(self) -> list[Worker]:
        """The background components, in the order they start (they stop in reverse)."""
        found: list[Worker] = [self.engine]
        if self.data is not None:
            found.append(self.data.watcher)
        if self.rules is not None:
            found.append(self.rules)
        if self.pipeline is not None and self.pipeline.watcher is not None:
            found.append(self.pipeline.watcher)
        if self.wakeups is not None:
            found.append(self.wakeups)
        return found

    def start(self) -> None:
        self.engine.start()
        if self.experiments is not None:
            self.experiments.autorun_missed()
        for worker in self.workers()[1:]:
            worker.start()

    def stop(self) -> None:
        """Stop every background component, newest first (each stop is idempotent)."""
        for worker in reversed(self.workers()):
            worker.stop()

    def reload(self) -> None:
        """Read the job types and rules files again (``serve`` does on SIGHUP). A broken file
        raises ``JobTypeFileError`` and changes nothing; otherwise new and changed job types
        serve new jobs at once (jobs already created keep theirs) and file rules follow."""
        jobtypes = load_jobtypes(self.settings.jobtypes)
        rule_specs = load_rules(self.settings.jobtypes, jobtypes)
        self.jobtypes.clear()
        self.jobtypes.update(jobtypes)  # shared with the dispatcher and the ARP definitions
        self.jobs.replace_jobtypes(jobtypes)
        if self.rules is not None:
            self.rules.replace_file_rules(rule_specs)
        log.info("jobmill: reloaded %d job types, %d file rules", len(jobtypes), len(rule_specs))

    def close(self) -> None:
        """Stop everything and release the database."""
        self.stop()
        self.store.group.close()
        self.store.read_engine.dispose()
        self.db.dispose()


def open_store(settings: Settings, *, upgrade: bool = True) -> JobStore:
    """The job store for ``settings``, creating ``home`` and migrating the schema if asked."""
    private_home(settings.home)
    writer = make_engine(settings.db_url, writer=True)
    reader = (
        make_engine(settings.db_url, writer=False) if writer.dialect.name == "sqlite" else writer
    )
    if upgrade:
        migrate.upgrade(writer)
    return JobStore(writer, reader)


def private_home(home: Path) -> None:
    """Create ``home`` readable by its owner only (0700): it holds the database, every job's
    parameters, reports and history, uploads and outputs. On a shared host another account
    must not read them. An existing home that others can enter is reported, not changed: a
    site may share it on purpose (with a group), but it should know."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        mode = home.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        log.warning(
            "jobmill: %s is open to other accounts (mode %s): they can read the database and "
            "every job's data; 'chmod 700 %s' unless that is meant",
            home,
            oct(mode & 0o777),
            home,
        )


def build(settings: Settings) -> Jobmill:
    """Build (but do not start) a jobmill. Raises ``JobTypeFileError`` for a broken job type."""
    jobtypes = load_jobtypes(settings.jobtypes)
    rule_specs = load_rules(settings.jobtypes, jobtypes)
    store = open_store(settings)
    files = JobFiles(settings.home)
    executors = build_executors(settings)
    experiment_store = ExperimentStore(store)
    # The dispatcher also finds ARP definitions (arp:<experiment>:<name>), from the database.
    dispatch_types = JobTypes(jobtypes, experiment_store)
    dispatcher = Dispatcher(settings, store, files, dispatch_types)
    # The engine announces ended jobs; the rules, built later on the job service, listen.
    jobs_ended = Signal("jobs ended")
    space = DiskSpace(settings.home.resolve(), settings.min_free)
    # One engine per executor among the processes sharing the database (service.lease).
    lease = Lease(LeaseStore(store.engine), lease_names(list(executors)), settings.engine_lease)
    engine = JobEngine(
        settings, store, dispatcher, executors, on_ended=jobs_ended.emit, space=space, lease=lease
    )
    data = build_data_triggers(settings, store, engine)
    wakeups = QueuedWakeups(Wakeups(store.engine), engine.notify_queued)
    service = JobService(
        store,
        jobtypes,
        files,
        executors=list(executors),
        max_batch=settings.max_batch_jobs,
        on_queued=wakeups.queued,
        on_cancel=engine.request_cancel,
        data=data,
        backends=executors,
        launch_spec=dispatcher.spec_for,
        log_roots=Roots(settings.log_roots, settings.home.resolve(), "JOBMILL_LOG_ROOTS"),
        space=space,
    )
    experiments = ExperimentService(experiment_store, service, dispatch_types, executors)
    rules = RuleEngine(
        RuleStore(store),
        service,
        rule_specs,
        watcher=data.watcher,
        data_root=data.data_root,
        default_owner=settings.local_user,
        jobs_ended=jobs_ended,
    )
    pipeline = PipelineService(PipelineStore(store), service)
    jobs_ended.connect(PipelineWatcher(pipeline).wake)  # indexes finished PipelineJobs
    log.info("jobmill: %d job types, database %s", len(jobtypes), store.engine.url)
    return Jobmill(
        settings,
        store.engine,
        store,
        jobtypes,
        service,
        engine,
        token_service(settings, store),
        data,
        experiments=experiments,
        rules=rules,
        pipeline=pipeline,
        wakeups=wakeups,
    )


def token_service(settings: Settings, store: JobStore) -> TokenService:
    """Tokens of ``store``: the server's own user and ``JOBMILL_ADMINS`` are administrators."""
    return TokenService(store.tokens, admins=(settings.local_user, *settings.admins))


def open_tokens(settings: Settings) -> tuple[TokenService, JobStore]:
    """The token service of ``settings``' database, for the CLI's ``token`` commands (close the
    store's engines when done)."""
    store = open_store(settings)
    return token_service(settings, store), store


def build_data_triggers(settings: Settings, store: JobStore, engine: JobEngine) -> DataTriggers:
    """The one data watcher (not started) and the service that feeds it."""
    conditions = ConditionStore(store)
    watch = WatchSettings(
        scan_roots=tuple(str(Path(r).expanduser().absolute()) for r in settings.scan_roots),
        scan_interval=settings.scan_interval,
        stable_seconds=settings.stable_seconds,
        refresh_interval=max(1.0, settings.scan_interval),
    )

    def released() -> None:
        if not engine.closed:  # after the engine stopped, its wake-up pipe is gone
            engine.notify_queued()

    watcher = DataWatcher(conditions, watch, on_released=lambda job_ids: released())
    root = (settings.data_root or Path.cwd()).expanduser().absolute()
    roots = Roots(settings.data_roots or (str(root),), root, "JOBMILL_DATA_ROOTS")
    limits = WaitLimits(
        max_paths=settings.max_wait_paths,
        max_wildcard_dirs=settings.max_wait_wildcard_dirs,
        max_user_waits=settings.max_user_waits,
        max_user_wildcards=settings.max_user_wildcards,
        max_user_wildcard_dirs=settings.max_user_wildcard_dirs,
    )
    return DataTriggers(
        store, conditions, watcher, root, on_released=released, roots=roots, limits=limits
    )
