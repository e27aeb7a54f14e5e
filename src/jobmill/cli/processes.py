"""``jobmill api`` and ``jobmill engine``: the two halves of ``serve`` as separate processes on
one database (see docs/deployment.md).

An ``api`` process answers HTTP and writes to the database but never runs a job: run as many
as the load needs. An ``engine`` process runs the engine, the data watcher and the rules; of
several, the one holding its executors' leases works and the others stand by to take over
(``service.lease``). Jobs created through any API process are found by the engine's claim
query every poll interval.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
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
            create_app(jm, start_engine=False, warm_up=True),
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


# -- jobmill serve --workers N -----------------------------------------------------------------

RESTART_FIRST = 1.0  # seconds before a dead worker is started again; doubled while it keeps dying
RESTART_MAX = 30.0
STABLE = 30.0  # a worker that ran this long before dying is restarted after RESTART_FIRST again
STOP_WAIT = GRACEFUL_SHUTDOWN + 10.0  # seconds stopping workers get before SIGKILL
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def listen(host: str, port: int, count: int) -> list[Any]:
    """One listening socket per API worker, all bound by the serve process to the same address
    with ``SO_REUSEPORT``: the kernel spreads new connections evenly over them. (With one
    shared socket, the worker that happens to be awake accepts nearly every connection of a
    burst and the others idle.) Linux lets only the same user join such a group of sockets.
    A dead worker's socket stays open in the manager: connections wait in its backlog for the
    worker that replaces it."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[Any] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the others join the port the first got
            sock.listen(2048)
    except OSError as exc:
        for sock in socks:
            sock.close()
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 2)
    return socks


def serve_workers(settings: Any, workers: int) -> int:
    """``jobmill serve --workers N`` (N > 1): this process binds the socket, forks the worker
    manager and then runs the engine, the data watcher and the rules, like ``jobmill engine``.
    The manager, forked before any thread exists and never starting one, forks the N API
    workers (each builds its own jobmill and serves HTTP on its socket of the port) and starts a
    dead one again. SIGTERM/SIGINT stop the workers, then the engine. Returns the exit code."""
    from jobmill.cli.server import _browser_url, _forget_url, _note_url, local_credential

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    socks = listen(settings.host, settings.port, workers)
    if threading.active_count() > 1:  # nothing so far starts a thread; a fork must not see one
        log.warning("forking the worker manager with %d threads running", threading.active_count())
    # The manager waits on this pipe: a byte to start the workers (the database is migrated),
    # end of file to stop them (this process stops or dies, even by SIGKILL).
    go_read, go_write = os.pipe()
    manager = os.fork()
    if manager == 0:  # the worker manager
        os.close(go_write)
        code = 1
        try:
            code = WorkerManager(settings, workers, socks, go_read).run()
        except BaseException:
            log.exception("worker manager failed")
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(go_read)
    for sock in socks:
        sock.close()  # the manager and its workers hold them
    try:
        jm = _build(settings)
    except BaseException:
        os.close(go_write)
        _reap(manager, STOP_WAIT)
        raise

    def cleanup() -> None:
        jm.close()
        os.close(go_write)
        _reap(manager, STOP_WAIT)

    local_token = local_credential(jm, settings, cleanup)
    _log_start(jm, settings)
    log.info(
        "%d API worker processes (manager pid %d); this process runs the engine", workers, manager
    )
    noted = _note_url(settings)
    stop = threading.Event()

    def stop_soon(signum: int, _frame: Any) -> None:
        log.info("%s: stopping the workers, then the engine", signal.Signals(signum).name)
        stop.set()

    def reload(_signum: int, _frame: Any) -> None:
        _reload_soon(jm)
        with contextlib.suppress(OSError):
            os.kill(manager, signal.SIGHUP)  # the manager passes it on to the workers

    signal.signal(signal.SIGTERM, stop_soon)
    signal.signal(signal.SIGINT, stop_soon)
    signal.signal(signal.SIGHUP, reload)
    code = 0
    try:
        if local_token is not None:
            from jobmill.web import signin_link
            from jobmill.web.session import Sessions

            # In the database: whichever worker the browser reaches redeems it, once.
            link = signin_link(Sessions(jm.tokens), _browser_url(settings), local_token)
            typer.echo(f"jobmill: open {link} to sign in to the web pages (the link works once)")
        os.write(go_write, b"g")
        jm.start()
        while not stop.wait(0.5):
            done, status = os.waitpid(manager, os.WNOHANG)
            if done:
                manager = 0
                log.error("the worker manager ended (%s): stopping", _how(status))
                code = 1
                break
    finally:
        os.close(go_write)  # the manager stops the workers and ends
        if manager:
            _reap(manager, STOP_WAIT + 5.0)
        jm.close()
        log.info("stopped")
        if noted is not None:
            _forget_url(*noted)
    return code


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _reap(pid: int, timeout: float) -> None:
    """Wait for a child to end; SIGKILL it after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.05)
    log.warning("process %d did not stop in %.0f s: killing it", pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


class WorkerManager:
    """The forked process that keeps N API workers running. It runs no thread, so forking a
    worker from it is safe whenever one must be started again."""

    def __init__(self, settings: Any, count: int, socks: list[Any], go: int) -> None:
        self.settings = settings
        self.count = count
        self.socks = socks  # worker ``slot`` serves on socks[slot - 1]
        self.go = go
        self.pids: dict[int, int] = {}  # pid -> slot
        self.started: dict[int, float] = {}  # slot -> when its worker started
        self.failures: dict[int, int] = {}  # slot -> deaths in a row
        self.due: dict[int, float] = {}  # slot -> when to start it again
        self.stopping = False
        self.hangup = False
        self.lifeline = -1

    def run(self) -> int:
        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the serve process alone, which stops us
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._hangup)
        if not self._read_go(None):
            return 0  # the serve process failed to start, or stopped first
        # Each worker holds the read end: when this process ends, however, they stop.
        lifeline, self.lifeline = os.pipe()
        for slot in range(1, self.count + 1):
            self._spawn(slot, lifeline)
        while not self.stopping:
            self._read_go(0.2)
            self._reap()
            if self.hangup:
                self.hangup = False
                self._signal_all(signal.SIGHUP)
            now = time.monotonic()
            for slot, when in list(self.due.items()):
                if when <= now and not self.stopping:
                    del self.due[slot]
                    self._spawn(slot, lifeline)
        self._stop_all()
        return 0

    def _read_go(self, timeout: float | None) -> bool:
        """Whether to go on: False (and stopping) once the serve process closed the pipe."""
        import select

        try:
            ready, _, _ = select.select([self.go], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            return not self.stopping
        if ready and os.read(self.go, 1) == b"":
            self.stopping = True
        return not self.stopping

    def _stop(self, _signum: int, _frame: Any) -> None:
        self.stopping = True

    def _hangup(self, _signum: int, _frame: Any) -> None:
        self.hangup = True

    def _spawn(self, slot: int, lifeline: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(self.go)
                os.close(self.lifeline)
                for other, sock in enumerate(self.socks, start=1):
                    if other != slot:
                        sock.close()  # the other workers' sockets
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_DFL)
                code = run_worker(self.settings, slot, self.socks[slot - 1], lifeline)
            except typer.Exit as exc:  # fail(): its error line is written
                code = exc.exit_code
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d failed", slot)
            finally:
                logging.shutdown()
                os._exit(code)
        self.pids[pid] = slot
        self.started[slot] = time.monotonic()
        log.info("worker %d started (pid %d)", slot, pid)

    def _reap(self) -> None:
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.pids.pop(pid, None)
            if slot is None:
                continue
            if self.stopping:
                continue
            lived = time.monotonic() - self.started.get(slot, 0.0)
            failures = 1 if lived >= STABLE else self.failures.get(slot, 0) + 1
            self.failures[slot] = failures
            delay = min(RESTART_MAX, RESTART_FIRST * 2 ** (failures - 1))
            self.due[slot] = time.monotonic() + delay
            log.warning(
                "worker %d (pid %d) ended (%s) after %.1f s: starting it again in %.0f s",
                slot,
                pid,
                _how(status),
                lived,
                delay,
            )

    def _signal_all(self, signum: int) -> None:
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _stop_all(self) -> None:
        log.info("stopping %d workers", len(self.pids))
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        while self.pids and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        if self.pids:
            log.warning("workers %s did not stop: killing them", sorted(self.pids))
            self._signal_all(signal.SIGKILL)
            while self.pids:
                self._reap()
                time.sleep(0.05)
        log.info("workers stopped")


def run_worker(settings: Any, slot: int, sock: Any, lifeline: int) -> int:
    """One API worker (a forked child of the worker manager): its own jobmill (database
    engines included), HTTP on its socket of the port, no engine. It stops on SIGTERM/SIGINT, and
    when the manager ends (the lifeline pipe closes)."""
    import uvicorn

    from jobmill.api.app import create_app

    logging.getLogger("alembic").setLevel(logging.WARNING)  # the serve process migrated
    jm = _build(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(jm, start_engine=False, warm_up=True),
            log_level="info",
            log_config=None,  # the serve process's logging: each line names its process
            access_log=settings.access_log,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        )
    )

    def watch_manager() -> None:
        while True:
            try:
                if os.read(lifeline, 1) == b"":
                    break
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
        if not server.should_exit:
            log.warning("worker %d: the worker manager is gone, stopping", slot)
            server.should_exit = True

    threading.Thread(target=watch_manager, name="jobmill-lifeline", daemon=True).start()
    # uvicorn raises the signal that stopped it again once it is done: a handler of ours
    # (rather than the default, which ends the process at once) lets the jobmill close.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
    signal.signal(signal.SIGINT, lambda _sig, _frame: None)
    signal.signal(signal.SIGHUP, lambda _sig, _frame: _reload_soon(jm))
    try:
        server.run(sockets=[sock])
    finally:
        jm.close()
    return 0
