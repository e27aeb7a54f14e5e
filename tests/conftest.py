"""Shared fixtures: a fresh jobmill per test, on SQLite and (when available) PostgreSQL.

``db_url`` is parametrised over both databases. PostgreSQL comes from
``JOBMILL_TEST_DATABASE_URL`` (``.ci/run`` starts a throwaway server and sets it); each test gets
its own database. Without it the PostgreSQL variants skip with a reason, except in CI
(``CI=true``), where a missing service is a failure.

Each test's database starts as a copy of one migrated to head once per session (a SQLite file
copied, a PostgreSQL ``CREATE DATABASE ... TEMPLATE``), so opening it finds nothing to migrate.
Tests that need an empty database (migrations) are marked ``empty_db``.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from jobmill.api.app import create_app
from jobmill.config import Settings
from jobmill.domain.lifecycle import ENDED
from jobmill.factory import Jobmill, build, open_store
from jobmill.paths import default_token_file, read_token_file
from jobmill.service.credentials import ensure_local_token
from jobmill.storage import migrate
from jobmill.storage.db import make_engine
from jobmill.storage.jobs import JobStore
from tests.replay import impossible_steps

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "jobtypes"
PG_ENV = "JOBMILL_TEST_DATABASE_URL"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SKIPPED_FILE = os.environ.get("JOBMILL_SKIPPED_TESTS")
"""``.ci/run`` runs the tests on the bare machine first and lists the skipped ones here, to run
them again once the services are up."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "empty_db: db_url gives an empty database, not a copy of a migrated one"
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if SKIPPED_FILE and report.skipped and report.when in ("setup", "call"):
        with open(SKIPPED_FILE, "a", encoding="utf-8") as listed:
            listed.write(report.nodeid + "\n")


def require_service(available: bool, what: str) -> None:
    """Skip on a laptop without the service; fail in CI, where it must be there."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is not available in CI")
    pytest.skip(f"{what} is not available (set it up to run this test)")


@pytest.fixture(autouse=True)
def token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own local credential file (``JOBMILL_TOKEN_FILE``): tests never read or write
    the real ``~/.config/jobmill/token``, and servers started by a test write theirs here."""
    path = tmp_path / "config" / "jobmill" / "token"
    monkeypatch.setenv("JOBMILL_TOKEN_FILE", str(path))
    monkeypatch.delenv("JOBMILL_API_TOKEN", raising=False)
    return path


@pytest.fixture(scope="session")
def pg_admin_url() -> str | None:
    return os.environ.get(PG_ENV) or None


def _migrate_to_head(url: str) -> None:
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()  # PostgreSQL copies no template another session is connected to


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to head, made once per session (per xdist worker), that
    ``db_url`` copies for each test."""
    path = tmp_path_factory.mktemp("template") / "jobmill.db"
    _migrate_to_head(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str | None) -> Iterator[str]:
    """The name of a PostgreSQL database migrated to head, made once per session (a name of its
    own per session, so xdist workers do not share one) and dropped at its end; ``db_url``
    creates each test's database from it."""
    assert pg_admin_url is not None
    name = f"jm_template_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        _migrate_to_head(
            make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
        )
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_admin_url: str | None
) -> Iterator[str]:
    """A fresh database URL of each kind, already migrated to head (a copy of the session's
    template); empty for a test marked ``empty_db``."""
    empty = request.node.get_closest_marker("empty_db") is not None
    if request.param == "sqlite":
        path = tmp_path / "jobmill.db"
        if not empty:
            shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    require_service(pg_admin_url is not None, f"PostgreSQL ({PG_ENV})")
    assert pg_admin_url is not None
    name = f"jm_{uuid.uuid4().hex[:12]}"
    template = "" if empty else f' TEMPLATE "{request.getfixturevalue("pg_template")}"'
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"{template}'))
    try:
        yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Iterator[Settings]:
    """Settings for a test jobmill: its own home, the example job types, fast polling.

    After the test (and every jobmill built on them), the history of every job in its database
    is replayed against the transition table (``tests/replay.py``, one query): an impossible
    sequence of events fails the test."""
    yield Settings(
        home=tmp_path / "home",
        database_url=db_url,
        jobtypes=(str(EXAMPLES),),
        port=free_port(),
        poll_interval=0.2,
        kill_grace=1.0,
        max_local_jobs=4,
        local_user="tester",
        allowed_hosts=("testserver",),  # the Host TestClient sends
        # log_dir and data waits may lead anywhere under the test's own directory
        log_roots=("logs/{user}", str(tmp_path)),
        data_roots=(str(tmp_path),),
    )
    if db_url.startswith("sqlite:///") and not Path(db_url.removeprefix("sqlite:///")).exists():
        return  # an empty database no jobmill was built on
    problems = impossible_steps(db_url)
    if problems:
        pytest.fail("impossible job histories:\n" + "\n".join(problems[:20]), pytrace=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty directory for data a test makes arrive."""
    directory = tmp_path / "data"
    directory.mkdir()
    return directory


@pytest.fixture
def store(tmp_path: Path, db_url: str) -> Iterator[JobStore]:
    """A job store alone (no jobmill around it) on each database."""
    job_store = open_store(Settings(home=tmp_path / "home", database_url=db_url))
    try:
        yield job_store
    finally:
        job_store.read_engine.dispose()
        job_store.engine.dispose()


@pytest.fixture
def jobmill(settings: Settings) -> Iterator[Jobmill]:
    """A built jobmill whose engine is not started (see ``client``/``live`` for that), with the
    local credential of its user (``settings.local_user``, an administrator) in ``token_file``,
    as ``jobmill serve`` makes it."""
    jm = build(settings)
    try:
        if settings.token_file is not None:
            ensure_local_token(jm.store.tokens, settings.local_user, settings.token_file)
        yield jm
    finally:
        jm.close()


@pytest.fixture
def admin_token(jobmill: Jobmill) -> str:
    """The local credential of the test jobmill's own user (an administrator)."""
    assert jobmill.settings.token_file is not None
    return ensure_local_token(
        jobmill.store.tokens, jobmill.settings.local_user, jobmill.settings.token_file
    )


@pytest.fixture
def client(jobmill: Jobmill, admin_token: str) -> Iterator[TestClient]:
    """An in-process HTTP client, authenticated as the jobmill's own user (an administrator:
    send ``Authorization: ""`` to be anonymous); the engine runs, but jobs cannot call back."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    with TestClient(create_app(jobmill), headers=headers) as test_client:
        yield test_client


def local_headers() -> dict[str, str]:
    """The ``Authorization`` header of the local credential a ``jobmill serve`` started by the
    test wrote (``JOBMILL_TOKEN_FILE``)."""
    token = read_token_file(default_token_file())
    assert token is not None, "no local credential: has the server started?"
    return {"Authorization": f"Bearer {token}"}


def app_client(jm: Jobmill, *, start_engine: bool = True) -> TestClient:
    """A test client of ``jm``'s app, authenticated as its own user (an administrator), as the
    ``client`` fixture is; use it as a context manager."""
    assert jm.settings.token_file is not None
    token = ensure_local_token(jm.store.tokens, jm.settings.local_user, jm.settings.token_file)
    app = create_app(jm, start_engine=start_engine)
    return TestClient(app, headers={"Authorization": f"Bearer {token}"})


class LiveServer:
    """A real uvicorn server on a free loopback port, so jobs can post reports to it."""

    def __init__(self, jobmill: Jobmill) -> None:
        import uvicorn

        self.jobmill = jobmill
        self.url = f"http://127.0.0.1:{jobmill.settings.port}"
        assert jobmill.settings.token_file is not None
        token = ensure_local_token(
            jobmill.store.tokens, jobmill.settings.local_user, jobmill.settings.token_file
        )
        self.headers = {"Authorization": f"Bearer {token}"}  # the server's own user (admin)
        config = uvicorn.Config(
            create_app(jobmill), host="127.0.0.1", port=jobmill.settings.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture
def live(jobmill: Jobmill) -> Iterator[LiveServer]:
    with LiveServer(jobmill) as server:
        yield server


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def wait_phase(client: TestClient, job_id: str, *phases: str, timeout: float = 15.0) -> dict:  # type: ignore[type-arg]
    """Wait until the job reaches one of ``phases`` (terminal phases by default)."""
    wanted = set(phases or ENDED)

    def done() -> dict | None:  # type: ignore[type-arg]
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        return job if job["phase"] in wanted else None

    return wait_for(done, timeout)  # type: ignore[no-any-return]
