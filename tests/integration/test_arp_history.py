"""ARP re-runs and experiment ids: re-applying a definition to a run keeps the history and shows
the latest attempt; autorun still makes exactly one job per run; an experiment is reachable by
its numeric id as well as by its name (ARP's ``batches_status/<experiment_id>``)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select, text

from jobmill.domain.jobs import utcnow
from jobmill.factory import Jobmill
from jobmill.service.jobs import JobRequest, User
from jobmill.storage import migrate
from jobmill.storage.db import make_engine
from jobmill.storage.tables import experiment_applications, experiments
from tests.conftest import wait_for

EXP = "xppi0915"
API = f"/api/v1/arp/experiments/{EXP}"


def script(tmp_path: Path, wait: bool = False) -> str:
    """Prints its arguments; with ``wait``, runs until ``<tmp_path>/go`` exists."""
    path = tmp_path / "process.sh"
    gate = f'while [ ! -e "{tmp_path}/go" ]; do sleep 0.05; done\n' if wait else ""
    path.write_text(f"#!/bin/sh\necho processing $1 run $2\n{gate}")
    path.chmod(0o755)
    return str(path)


def define(client: TestClient, name: str, executable: str, **extra: Any) -> None:
    body = {"name": name, "executable": executable, **extra}
    response = client.post(f"{API}/definitions", json=body)
    assert response.status_code == 201, response.text


def apply(client: TestClient, run: int, name: str) -> dict[str, Any]:
    response = client.post(f"{API}/runs/{run}/apply", json={"definition": name})
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def done(client: TestClient, job_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        entry: dict[str, Any] = client.get(f"{API}/jobs/{job_id}").json()
        return entry if entry["status"] in ("DONE", "EXIT") else None

    result: dict[str, Any] = wait_for(ended, timeout=20)
    return result


def test_reapplying_keeps_the_history_and_shows_the_latest(
    client: TestClient, tmp_path: Path
) -> None:
    define(client, "smd", script(tmp_path, wait=True))
    first = apply(client, 5, "smd")
    assert first["attempt"] == 1
    refused = client.post(f"{API}/runs/5/apply", json={"hash": "smd"})  # still running
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["field"] == "definition"
    assert refused.json()["error"]["job_id"] == first["job_id"]
    (tmp_path / "go").touch()
    assert done(client, first["job_id"])["status"] == "DONE"

    second = apply(client, 5, "smd")  # a re-run, as ARP allows
    assert second["attempt"] == 2 and second["job_id"] != first["job_id"]
    assert done(client, second["job_id"])["status"] == "DONE"

    view = client.get(f"{API}/runs/5").json()
    assert [(j["job_id"], j["attempt"]) for j in view["jobs"]] == [(second["job_id"], 2)]
    full = client.get(f"{API}/runs/5", params={"history": "true"}).json()
    assert [j["job_id"] for j in full["jobs"]] == [first["job_id"], second["job_id"]]
    status = client.get(f"{API}/status").json()
    assert [s["job_id"] for s in status] == [second["job_id"]]
    history = client.get(f"{API}/status", params={"history": "true"}).json()
    assert [s["attempt"] for s in history] == [1, 2]
    # the earlier job keeps its entry, its log and its history
    old = client.get(f"{API}/jobs/{first['job_id']}")
    assert old.status_code == 200 and old.json()["attempt"] == 1
    log = client.get(f"{API}/jobs/{first['job_id']}/log").text
    assert log == "processing xppi0915 run 5\n"

    # removing the latest from the run view leaves nothing shown; re-applying goes on counting
    assert client.delete(f"{API}/jobs/{second['job_id']}").status_code == 200
    assert client.get(f"{API}/status").json() == []
    assert apply(client, 5, "smd")["attempt"] == 3


def test_autorun_still_makes_one_job_per_run_beside_reruns(
    client: TestClient, jobmill: Jobmill, tmp_path: Path
) -> None:
    define(client, "auto", script(tmp_path), autorun=True)
    ended = client.post(f"{API}/runs/9/end").json()
    assert len(ended["jobs"]) == 1
    first = ended["jobs"][0]["job_id"]
    done(client, first)
    rerun = apply(client, 9, "auto")
    done(client, rerun["job_id"])
    assert client.post(f"{API}/runs/9/end").json()["jobs"] == []  # a replayed end
    backfill = client.post(f"{API}/definitions/auto/backfill").json()
    assert backfill["jobs"] == []
    assert jobmill.store.count() == 2


def test_concurrent_reapplies_make_one_attempt(jobmill: Jobmill, tmp_path: Path) -> None:
    experiments_svc = jobmill.experiments
    assert experiments_svc is not None
    root = User("root", admin=True)
    definition = experiments_svc.define(root, EXP, name="once", executable="/bin/true")
    jobtype = experiments_svc.jobtypes.build(definition)
    request = JobRequest(type=jobtype.name, parameters={"experiment": EXP, "run": 1})
    first = experiments_svc.store.apply(
        jobmill.jobs.validate_for(jobtype, root, request),
        experiment=EXP, run=1, definition="once", trigger="manual", actor="t", again=True,
    )  # fmt: skip
    assert first.job is not None
    jobmill.jobs.abort(root, first.job.id)  # ended: a re-run may be made
    barrier = threading.Barrier(6)
    created: list[int] = []

    def again() -> None:
        new = jobmill.jobs.validate_for(jobtype, root, request)
        barrier.wait()
        applied = experiments_svc.store.apply(new, experiment=EXP, run=1, definition="once",
                                              trigger="manual", actor="t", again=True)  # fmt: skip
        if applied.job is not None:
            created.append(applied.application.attempt)

    threads = [threading.Thread(target=again) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert created == [2]
    assert jobmill.store.count() == 2


def test_experiment_by_numeric_id(client: TestClient, tmp_path: Path) -> None:
    define(client, "smd", script(tmp_path))
    client.post("/api/v1/arp/experiments/cxi12345/runs/1/start")
    listed = client.get("/api/v1/arp/experiments").json()
    assert [e["name"] for e in listed] == [EXP, "cxi12345"]
    ids = {e["name"]: e["id"] for e in listed}
    assert ids[EXP] != ids["cxi12345"]
    job = apply(client, 3, "smd")
    done(client, job["job_id"])
    by_id = f"/api/v1/arp/experiments/{ids[EXP]}"
    by_name = client.get(f"{API}/status").json()
    assert client.get(f"{by_id}/status").json() == by_name
    assert client.get(f"{by_id}/jobs/{job['job_id']}").json()["job_id"] == job["job_id"]
    assert [d["name"] for d in client.get(f"{by_id}/definitions").json()] == ["smd"]
    ended = client.post(f"/api/v1/arp/experiments/{ids['cxi12345']}/runs/1/end")
    assert ended.status_code == 200 and ended.json()["run"]["experiment"] == "cxi12345"
    unknown = client.get("/api/v1/arp/experiments/999999/status")
    assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "experiment"


@pytest.fixture
def old_engine(db_url: str) -> Engine:
    engine = make_engine(db_url)
    migrate.upgrade(engine, "0010")
    return engine


@pytest.mark.empty_db  # old_engine migrates it to 0010 first
def test_migration_gives_old_applications_attempt_one_and_experiments_ids(
    old_engine: Engine,
) -> None:
    now = utcnow()
    with old_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO experiment_runs (experiment, run, parameters, started_at, ended_at)"
                " VALUES ('amo1', 1, '{}', NULL, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO experiment_applications (experiment, run, definition, job_id,"
                " trigger, created_by, created_at) VALUES ('xpp2', 1, 'd', NULL, 'manual',"
                " 'u', :now)"
            ),
            {"now": now},
        )
    migrate.upgrade(old_engine)
    with old_engine.begin() as conn:
        assert conn.execute(select(experiment_applications.c.attempt)).scalars().all() == [1]
        names = conn.execute(select(experiments.c.name).order_by(experiments.c.id)).scalars()
        assert sorted(names) == ["amo1", "xpp2"]
        conn.execute(
            insert(experiment_applications).values(
                experiment="xpp2", run=1, definition="d", trigger="manual", created_by="u",
                created_at=now, attempt=2,
            )
        )  # fmt: skip
    old_engine.dispose()
