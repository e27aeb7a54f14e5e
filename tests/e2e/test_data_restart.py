"""Jobs waiting for data survive a SIGKILL: data that arrives while jobmill is down, or after it
is back, releases them once; no process is spent per waiting job."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, local_headers, wait_for
from tests.e2e.test_restart import SCRIPT, Server

WAITING = "waiting for data"


@pytest.fixture
def types_dir(tmp_path: Path) -> Path:
    types = tmp_path / "types"
    types.mkdir()
    (types / "once.py").write_text(SCRIPT)
    (types / "once.yaml").write_text(
        "name: once\n"
        'command: ["python3", "{jobtype_dir}/once.py", "{name}", "0", "0", "{log}"]\n'
        "parameters:\n"
        "  name: {type: string, required: true}\n"
        "  log: {type: path, required: true}\n"
    )
    return types


@pytest.fixture
def server(tmp_path: Path, types_dir: Path, data_dir: Path, db_url: str) -> Iterator[Server]:
    srv = Server(tmp_path / "home", types_dir, free_port(), db_url)
    srv.env["JOBMILL_DATA_ROOT"] = str(data_dir)
    srv.env["JOBMILL_OCPS_WAIT_FOR_DAT"] = "once"
    srv.env["JOBMILL_LOG_ROOTS"] = str(tmp_path)  # the OCPS job's log_dir
    yield srv
    srv.stop()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, but the local executor's shepherd while it has no job (one
    per executor by design: it starts and reaps the local jobs)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        parents[int(entry)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return [p for p in found if not (_shepherd(p) and p not in parents.values())]


def _shepherd(pid: int) -> bool:
    try:
        return b"jobmill.executors.shepherd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_waiting_jobs_survive_sigkill_and_run_once(
    server: Server, tmp_path: Path, data_dir: Path
) -> None:
    runlog = tmp_path / "runs.log"
    server.start()
    http = httpx.Client(base_url=server.url, timeout=10, headers=local_headers())

    def submit(name: str) -> str:
        body = {
            "type": "once",
            "parameters": {"name": name, "log": str(runlog)},
            "wait_for": {"paths": [f"{name}.dat"]},
        }
        response = http.post("/api/v1/jobs", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def job(job_id: str) -> dict[str, object]:
        answer: dict[str, object] = http.get(f"/api/v1/jobs/{job_id}").json()
        return answer

    def waiting(job_id: str) -> bool:
        current = job(job_id)
        return current["phase"] == "QUEUED" and current["reason"] == WAITING

    def completed(*job_ids: str) -> bool:
        return all(job(j)["phase"] == "COMPLETED" for j in job_ids)

    assert server.proc is not None
    one = submit("before")
    threads_one = threads(server.proc.pid)
    names = [f"job{i}" for i in range(10)]
    ids = dict(zip(names, (submit(n) for n in names), strict=True))
    ocps_body = {"type": "once", "env": {"name": "ocps", "log": str(runlog)}}
    ocps = http.post("/api/v1/job", json=ocps_body | {"log_dir": str(tmp_path)}).json()
    assert ocps["status"] == "ok" and "monitor_key" in ocps
    time.sleep(0.5)
    # One watcher thread for all: no process and no thread per waiting job.
    assert descendants(server.proc.pid) == []
    assert threads(server.proc.pid) <= threads_one + 1
    assert all(waiting(j) for j in [one, *ids.values()])

    (data_dir / "before.dat").write_text("x")
    (data_dir / "job0.dat").write_text("x")
    wait_for(lambda: completed(one, ids["job0"]), timeout=20)

    server.kill()
    for name in ("job1", "job2", "job3", "job4", "job5"):  # arrive while jobmill is down
        (data_dir / f"{name}.dat").write_text("x")
    (data_dir / f"{ocps['job_id']}.dat").write_text("")
    time.sleep(1.2)  # older than the settle time by the restart

    server.start()
    down = [ids[n] for n in ("job1", "job2", "job3", "job4", "job5")]
    ocps_id = str(ocps["job_id"])
    wait_for(lambda: completed(*down, ocps_id), timeout=30)
    later = [ids[n] for n in ("job6", "job7", "job8", "job9")]
    assert all(waiting(j) for j in later)
    assert descendants(server.proc.pid) == []

    for name in ("job6", "job7", "job8", "job9"):
        (data_dir / f"{name}.dat").write_text("x")
    (data_dir / "job6.dat").write_text("again")  # a file seen twice
    wait_for(lambda: completed(*later), timeout=30)

    runs = runlog.read_text().split()
    assert sorted(runs) == sorted(["before", "ocps", *names]), runs
    for job_id in [one, ocps_id, *ids.values()]:
        events = http.get(f"/api/v1/jobs/{job_id}/events").json()
        released = [e for e in events if e["name"] == "wait" and e["data"]["reason"] != "backend"]
        assert len(released) == 1, events  # (the other "wait" hands it to the executor)
        assert [e["name"] for e in events].count("start") == 1, events
    http.close()
