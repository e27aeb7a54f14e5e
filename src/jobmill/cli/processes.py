"""``jobmill api`` and ``jobmill engine``: the two halves of ``serve`` as separate processes on
one database (see docs/deployment.md).

An ``api`` process answers HTTP and writes to the database but never runs a job: run as many
as the load needs. An ``engine`` process runs the engine, the data watcher and the rules; of
several, the one holding its executors' leases works and the others stand by to take over
(``service.lease``). Jobs created through any API process are found by the engine's claim
query every poll interval.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated, Any

import typer

from jobmill.cli.common import HomeOpt, fail, load_settings
from jobmill.cli.server import GRACEFUL_SHUTDOWN, _log_start, _reload_soon

log = logging.getLogger("jobmill.serve")

HostOpt = Annotated[
    str | None, typer.Option(envvar="JOBMILL_HOST", help="Address to bind (default 127.0.0.1).")
]
PortOpt = Annotated[int | None, typer.Option(envvar="JOBMILL_PORT", help="Port (default 8080).")]
JobtypesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--jobtypes", help="Job type file or directory; repeatable (env: JOBMILL_JOBTYPES)."
    ),
]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="TOML config file (env: JOBMILL_CONFIG); environment variables override it.",
    ),
]


def _build(settings: Any) -> Any:
    from sqlalchemy.exc import SQLAlchemyError

    from jobmill.domain.errors import JobTypeFileError
    from jobmill.factory import build

    try:
        return build(settings)
    except JobTypeFileError as exc:
        fail(f"job types: {exc}", 2)
    except SQLAlchemyError as exc:
        fail(f"database: {exc}", 2)


def _db(settings: Any) -> str:
    from sqlalchemy.engine import make_url

    return str(make_url(settings.db_url))  # the password hidden


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def api(
    host: HostOpt = None,
    port: PortOpt = None,
    home: HomeOpt = None,
    jobtypes: JobtypesOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run an API process: HTTP only, no engine (jobs run in a 'jobmill engine' process)."""
    import uvicorn

    from jobmill.api.app import create_app

    settings = load_settings(
        config=config, host=host, port=port, home=home, jobtypes=jobtypes or None
    )
    jm = _build(settings)
    if settings.token_file is not None:
        try:
            jm.tokens.ensure_local(settings.local_user, settings.token_file)
        except OSError as exc:
            jm.close()
            fail(f"local credential {settings.token_file}: {exc.strerror or exc}", 2)
    _logging()
    _log_start(jm, settings)
    log.info("API process: jobs are run by a 'jobmill engine' process on the same database")
    signal.signal(signal.SIGHUP, lambda _sig, _frame: _reload_soon(jm))
    try:
        uvicorn.run(
            create_app(jm, start_engine=False),
            host=settings.host,
            port=settings.port,
            log_level="info",
            access_log=settings.access_log,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        )
    finally:
        jm.close()


def engine(
    home: HomeOpt = None,
    jobtypes: JobtypesOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run an engine process: dispatch and watch jobs, the data watcher and the rules, no HTTP.
    Of several on one database, one works and the others stand by (JOBMILL_ENGINE_LEASE)."""
    settings = load_settings(config=config, home=home, jobtypes=jobtypes or None)
    jm = _build(settings)
    _logging()
    log.info("engine process: database %s, job types %s", _db(settings), ", ".join(jm.jobtypes))
    stop = threading.Event()

    def stop_soon(signum: int, _frame: Any) -> None:
        log.info("engine process: %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, stop_soon)
    signal.signal(signal.SIGINT, stop_soon)
    signal.signal(signal.SIGHUP, lambda _sig, _frame: _reload_soon(jm))
    try:
        jm.start()
        while not stop.wait(1.0):
            pass
    finally:
        jm.close()  # gives the lease back: a standby engine takes over at once
