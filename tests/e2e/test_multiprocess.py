"""Several jobmill processes on one database: ``jobmill api`` processes that never run jobs, and
``jobmill engine`` processes of which the lease holder works and the others stand by.

* Jobs created through two API processes are all run, once, by one engine process.
* The engine holding the lease is killed with SIGKILL while jobs run: a standby engine takes
  the lease over within seconds, re-attaches to the running jobs and finishes the queue; no job
  is lost and none runs twice. A frozen holder (SIGSTOP) loses it after its expiry.
* On PostgreSQL a job queued through an API process wakes the engine at once (NOTIFY).

Both run on SQLite (several writers, one writer lock) and on PostgreSQL (``db_url``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import free_port, local_headers, wait_for

JOBMILL = str(Path(sys.executable).with_name("jobmill"))
LEASE = 3.0  # JOBMILL_ENGINE_LEASE of the engines: the longest a dead holder blocks the lease

SCRIPT = """\
import sys, time
name, seconds, log = sys.argv[1], float(sys.argv[2]), sys.argv[3]
with open(log, "a") as handle:
    handle.write(name + "\\n")
time.sleep(seconds)
"""


@pytest.fixture
def types_dir(tmp_path: Path) -> Path:
    types = tmp_path / "types"
    types.mkdir()
    (types / "once.py").write_text(SCRIPT)
    (types / "once.yaml").write_text(
        "name: once\n"
        'command: ["python3", "{jobtype_dir}/once.py", "{name}", "{seconds}", "{log}"]\n'
        "parameters:\n"
        "  name: {type: string, required: true}\n"
        "  seconds: {type: number, default: 0}\n"
        "  log: {type: path, required: true}\n"
    )
    return types


class Process:
    """One ``jobmill api`` or ``jobmill engine`` process; its log goes to a file."""

    def __init__(self, command: str, home: Path, types: Path, db_url: str, log: Path) -> None:
        self.command = command
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [JOBMILL, command, "--home", str(home), "--jobtypes", str(types)]
        if command == "api":
            self.args += ["--port", str(self.port)]
        self.env = dict(
            os.environ,
            JOBMILL_DATABASE_URL=db_url,
            JOBMILL_MAX_LOCAL_JOBS="2",
            JOBMILL_POLL_INTERVAL="0.2",
            JOBMILL_ENGINE_LEASE=str(LEASE),
        )
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Process:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # test harness, fixed argv
                self.args, env=self.env, stdout=out, stderr=out
            )
        if self.command == "api":
            wait_for(self._healthy, timeout=30, interval=0.1)
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(self.log.read_text())
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Site:
    """The processes of one test, sharing a home and a database."""

    def __init__(self, tmp_path: Path, types: Path, db_url: str) -> None:
        self.tmp_path, self.types, self.db_url = tmp_path, types, db_url
        self.home = tmp_path / "home"
        self.runlog = tmp_path / "runs.log"
        self.processes: list[Process] = []
        self.db = create_engine(db_url)

    def start(self, command: str, **env: str) -> Process:
        log = self.tmp_path / f"{command}{len(self.processes)}.log"
        process = Process(command, self.home, self.types, self.db_url, log)
        process.env.update(env)
        self.processes.append(process)
        return process.start()

    def lease_holder_pid(self) -> int | None:
        """The pid of the process holding the local executor's engine lease, if any."""
        with self.db.connect() as conn:
            row = conn.execute(
                text("SELECT holder, expires_at FROM engine_leases WHERE name = 'engine:local'")
            ).first()
        if row is None or not row.holder or row.expires_at < time.time():
            return None
        return int(row.holder.split(" ")[1])

    def submit(self, api: Process, name: str, seconds: float) -> str:
        response = httpx.post(
            f"{api.url}/api/v1/jobs",
            json={
                "type": "once",
                "parameters": {"name": name, "seconds": seconds, "log": str(self.runlog)},
            },
            headers=local_headers(),
            timeout=10,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def job(self, api: Process, job_id: str) -> dict:  # type: ignore[type-arg]
        response = httpx.get(f"{api.url}/api/v1/jobs/{job_id}", headers=local_headers())
        return dict(response.json())

    def starts(self, api: Process, job_id: str) -> int:
        events = httpx.get(f"{api.url}/api/v1/jobs/{job_id}/events", headers=local_headers()).json()
        return sum(1 for event in events if event["name"] == "start")

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.db.dispose()


@pytest.fixture
def site(tmp_path: Path, types_dir: Path, db_url: str) -> Iterator[Site]:
    found = Site(tmp_path, types_dir, db_url)
    try:
        yield found
    finally:
        found.close()


def test_jobs_from_two_api_processes_run_once_on_one_engine(site: Site) -> None:
    first = site.start("api")
    second = site.start("api")
    # Jobs created before any engine runs wait QUEUED: the API processes never run them.
    early = [site.submit(first, f"early{i}", 0) for i in range(3)]
    time.sleep(1.0)
    assert {site.job(second, j)["phase"] for j in early} == {"QUEUED"}
    assert not site.runlog.exists()

    # A UWS WAIT on one API process returns when the engine process changes the job: the
    # change feed crosses processes.
    waited: list[tuple[float, str]] = []

    def wait_on_second() -> None:
        started = time.monotonic()
        response = httpx.get(
            f"{second.url}/uws/once/{early[0]}?WAIT=60&PHASE=QUEUED",
            headers=local_headers(),
            timeout=90,
        )
        waited.append((time.monotonic() - started, response.text))

    waiter = threading.Thread(target=wait_on_second)
    waiter.start()
    time.sleep(0.5)
    engine = site.start("engine")
    wait_for(lambda: site.lease_holder_pid() == engine.pid, timeout=30)
    waiter.join(70)
    assert waited and waited[0][0] < 30, waited
    assert "<uws:phase>QUEUED</uws:phase>" not in waited[0][1], waited
    ids = list(early)
    for i in range(12):
        api = first if i % 2 else second
        ids.append(site.submit(api, f"job{i}", 0.1))

    def ended() -> bool:
        return all(site.job(first, j)["phase"] in ("COMPLETED", "ERROR") for j in ids)

    wait_for(ended, timeout=60, interval=0.2)
    assert {site.job(second, j)["phase"] for j in ids} == {"COMPLETED"}
    names = site.runlog.read_text().split()
    assert sorted(names) == sorted([f"early{i}" for i in range(3)] + [f"job{i}" for i in range(12)])
    assert all(site.starts(first, j) == 1 for j in ids)


def test_a_standby_engine_takes_over_from_a_killed_one(site: Site) -> None:
    api = site.start("api")
    holder = site.start("engine")
    wait_for(lambda: site.lease_holder_pid() == holder.pid, timeout=30)
    standby = site.start("engine")
    wait_for(lambda: "standing by" in standby.log.read_text(), timeout=30)
    assert site.lease_holder_pid() == holder.pid

    # Two slots: two jobs run under the holder while the others wait QUEUED.
    ids = [site.submit(api, f"run{i}", 3.0 if i < 2 else 0.2) for i in range(8)]
    wait_for(lambda: sum(site.job(api, j)["phase"] == "EXECUTING" for j in ids) == 2)
    holder.kill()
    killed_at = time.monotonic()
    wait_for(lambda: site.lease_holder_pid() == standby.pid, timeout=LEASE + 10, interval=0.1)
    took_over = time.monotonic() - killed_at
    assert took_over < LEASE + 2, took_over

    def ended() -> bool:
        return all(site.job(api, j)["phase"] in ("COMPLETED", "ERROR") for j in ids)

    wait_for(ended, timeout=60, interval=0.2)
    assert {site.job(api, j)["phase"] for j in ids} == {"COMPLETED"}
    names = site.runlog.read_text().split()
    assert sorted(names) == sorted(f"run{i}" for i in range(8)), names
    assert all(site.starts(api, j) == 1 for j in ids)


def test_a_frozen_holder_loses_the_lease_and_stands_down(site: Site) -> None:
    """A holder that stops answering (SIGSTOP) keeps its pid, so the standby waits for the
    lease to expire; once resumed, the old holder finds its lease gone and touches nothing."""
    api = site.start("api")
    holder = site.start("engine")
    wait_for(lambda: site.lease_holder_pid() == holder.pid, timeout=30)
    standby = site.start("engine")
    wait_for(lambda: "standing by" in standby.log.read_text(), timeout=30)

    ids = [site.submit(api, f"run{i}", 2.0 if i < 2 else 0.2) for i in range(6)]
    wait_for(lambda: sum(site.job(api, j)["phase"] == "EXECUTING" for j in ids) == 2)
    assert holder.proc is not None
    holder.proc.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        wait_for(lambda: site.lease_holder_pid() == standby.pid, timeout=LEASE + 10, interval=0.1)
        took_over = time.monotonic() - frozen_at
        assert LEASE - 1.5 < took_over < LEASE + 3, took_over  # after the expiry, not before
    finally:
        holder.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: "lease lost" in holder.log.read_text(), timeout=15)

    def ended() -> bool:
        return all(site.job(api, j)["phase"] in ("COMPLETED", "ERROR") for j in ids)

    wait_for(ended, timeout=60, interval=0.2)
    assert {site.job(api, j)["phase"] for j in ids} == {"COMPLETED"}
    names = site.runlog.read_text().split()
    assert sorted(names) == sorted(f"run{i}" for i in range(6)), names
    assert all(site.starts(api, j) == 1 for j in ids)
    assert site.lease_holder_pid() == standby.pid
    assert holder.proc.poll() is None  # still running, standing by


def test_on_postgresql_a_job_queued_elsewhere_wakes_the_engine_at_once(
    site: Site, db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has no NOTIFY: the engine's claim every poll interval finds the job")
    api = site.start("api")
    # Without the wake-up the job would wait for the engine's next claim, 30 s away.
    engine = site.start("engine", JOBMILL_POLL_INTERVAL="30")
    wait_for(lambda: site.lease_holder_pid() == engine.pid, timeout=30)
    time.sleep(1.0)  # the engine's first pass is over: it sleeps until woken
    started = time.monotonic()
    job_id = site.submit(api, "woken", 0)
    wait_for(lambda: site.job(api, job_id)["phase"] == "COMPLETED", timeout=25, interval=0.05)
    assert time.monotonic() - started < 5
