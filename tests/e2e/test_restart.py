"""A jobmill killed with SIGKILL while jobs run loses no job and runs none twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, local_headers, wait_for

JOBMILL = str(Path(sys.executable).with_name("jobmill"))

SCRIPT = """\
import sys, time
name, seconds, code, log = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with open(log, "a") as handle:
    handle.write(name + "\\n")
time.sleep(seconds)
sys.exit(code)
"""


@pytest.fixture
def types_dir(tmp_path: Path) -> Path:
    types = tmp_path / "types"
    types.mkdir()
    (types / "once.py").write_text(SCRIPT)
    (types / "once.yaml").write_text(
        "name: once\n"
        'command: ["python3", "{jobtype_dir}/once.py", "{name}", "{seconds}", "{code}", "{log}"]\n'
        "parameters:\n"
        "  name: {type: string, required: true}\n"
        "  seconds: {type: number, default: 0}\n"
        "  code: {type: integer, default: 0}\n"
        "  log: {type: path, required: true}\n"
    )
    return types


class Server:
    """``jobmill serve`` as a real process."""

    def __init__(self, home: Path, types: Path, port: int, db_url: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.args = [
            JOBMILL,
            "serve",
            "--home",
            str(home),
            "--port",
            str(port),
            "--jobtypes",
            str(types),
        ]
        self.env = dict(os.environ, JOBMILL_MAX_LOCAL_JOBS="2", JOBMILL_POLL_INTERVAL="0.2")
        self.env["JOBMILL_DATABASE_URL"] = db_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(  # test harness, fixed argv
            self.args, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(self.proc.stderr.read().decode() if self.proc.stderr else "")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=30, interval=0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def server(tmp_path: Path, types_dir: Path, db_url: str) -> Iterator[Server]:
    srv = Server(tmp_path / "home", types_dir, free_port(), db_url)
    yield srv
    srv.stop()


def test_sigkill_and_restart_loses_nothing_and_runs_nothing_twice(
    server: Server, tmp_path: Path
) -> None:
    runlog = tmp_path / "runs.log"
    server.start()
    http = httpx.Client(base_url=server.url, timeout=10, headers=local_headers())

    def submit(name: str, seconds: float, code: int = 0) -> str:
        response = http.post(
            "/api/v1/jobs",
            json={
                "type": "once",
                "parameters": {"name": name, "seconds": seconds, "code": code, "log": str(runlog)},
            },
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    finishes_while_down = submit("short", 1.0, code=5)
    still_running = submit("long", 6.0)
    queued = [submit(f"queued{i}", 0.2) for i in range(3)]

    def phase(job_id: str) -> str:
        return str(http.get(f"/api/v1/jobs/{job_id}").json()["phase"])

    wait_for(
        lambda: phase(finishes_while_down) == "EXECUTING" and phase(still_running) == "EXECUTING"
    )
    assert {phase(j) for j in queued} == {"QUEUED"}  # both slots are taken
    server.kill()
    time.sleep(2.0)  # "short" ends while jobmill is down

    server.start()
    every = [finishes_while_down, still_running, *queued]
    wait_for(lambda: all(phase(j) in ("COMPLETED", "ERROR") for j in every), timeout=40)

    short = http.get(f"/api/v1/jobs/{finishes_while_down}").json()
    assert short["phase"] == "ERROR" and short["exit_code"] == 5, short
    assert phase(still_running) == "COMPLETED"
    assert all(phase(j) == "COMPLETED" for j in queued)
    runs = runlog.read_text().split()
    assert sorted(runs) == sorted(["short", "long", "queued0", "queued1", "queued2"]), runs
    for job_id in every:
        starts = [
            e for e in http.get(f"/api/v1/jobs/{job_id}/events").json() if e["name"] == "start"
        ]
        assert len(starts) == 1, (job_id, starts)
    http.close()
