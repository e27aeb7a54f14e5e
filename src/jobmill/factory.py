"""The one place that builds jobmill's pieces from the settings: database, job types, executors,
services. Nothing else reads global configuration."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from jobmill.config import Settings
from jobmill.domain.jobtype_files import load_jobtypes
from jobmill.domain.jobtypes import JobType
from jobmill.executors.registry import build_executors
from jobmill.service.dispatcher import Dispatcher
from jobmill.service.engine import Engine as JobEngine
from jobmill.service.files import JobFiles
from jobmill.service.jobs import JobService
from jobmill.storage import migrate
from jobmill.storage.db import make_engine
from jobmill.storage.jobs import JobStore

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

    def start(self) -> None:
        self.engine.start()

    def close(self) -> None:
        self.engine.stop()
        self.store.read_engine.dispose()
        self.db.dispose()


def open_store(settings: Settings, *, upgrade: bool = True) -> JobStore:
    """The job store for ``settings``, creating ``home`` and migrating the schema if asked."""
    settings.home.mkdir(parents=True, exist_ok=True)
    writer = make_engine(settings.db_url, writer=True)
    reader = (
        make_engine(settings.db_url, writer=False) if writer.dialect.name == "sqlite" else writer
    )
    if upgrade:
        migrate.upgrade(writer)
    return JobStore(writer, reader)


def build(settings: Settings) -> Jobmill:
    """Build (but do not start) a jobmill. Raises ``JobTypeFileError`` for a broken job type."""
    jobtypes = load_jobtypes(settings.jobtypes)
    store = open_store(settings)
    files = JobFiles(settings.home)
    executors = build_executors(settings)
    dispatcher = Dispatcher(settings, store, files, jobtypes)
    engine = JobEngine(settings, store, dispatcher, executors)
    service = JobService(
        store,
        jobtypes,
        files,
        executors=list(executors),
        max_batch=settings.max_batch_jobs,
        on_queued=engine.notify_queued,
        on_cancel=engine.request_cancel,
    )
    log.info("jobmill: %d job types, database %s", len(jobtypes), store.engine.url)
    return Jobmill(settings, store.engine, store, jobtypes, service, engine)
