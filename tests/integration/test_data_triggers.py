"""Jobs waiting for data: conditions, the one watcher, exactly-once release, OCPS ``.dat``."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobmill.config import Settings
from jobmill.domain.conditions import DataCondition, matches, parts, resolve
from jobmill.domain.errors import ValidationError
from jobmill.factory import Jobmill, build
from tests.conftest import app_client, wait_for, wait_phase

WAITING = "waiting for data"
JOBS = "/api/v1/jobs"
OCPS = "/api/v1/job"


@pytest.fixture
def data_settings(settings: Settings, data_dir: Path) -> Settings:
    return settings.with_(data_root=data_dir, scan_interval=0.3, ocps_wait_for_dat=("ap",))


@pytest.fixture
def jm(data_settings: Settings) -> Iterator[Jobmill]:
    built = build(data_settings)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def api(jm: Jobmill) -> Iterator[TestClient]:
    with app_client(jm) as test_client:
        assert jm.data is not None and jm.data.watcher.wait_loaded()
        yield test_client


# -- helpers ---------------------------------------------------------------------------------


def submit(api: TestClient, wait: dict[str, Any], message: str = "hi", **extra: Any) -> str:
    body = {"type": "echo", "parameters": {"message": message}, "wait_for": wait, **extra}
    response = api.post(JOBS, json=body)
    assert response.status_code == 201, response.text
    job = response.json()
    return str(job["id"])


def watched(jm: Jobmill, *job_ids: str) -> None:
    assert jm.data is not None
    watcher = jm.data.watcher
    wait_for(lambda: all(watcher.knows(j) for j in job_ids), timeout=10)


def reason(jm: Jobmill, job_id: str) -> str | None:
    job = jm.store.get(job_id)
    assert job is not None
    return job.reason if job.phase.value == "QUEUED" else job.phase.value


def is_waiting(jm: Jobmill, job_id: str) -> bool:
    return reason(jm, job_id) == WAITING


def released_within(jm: Jobmill, job_id: str, seconds: float) -> float:
    """Seconds until the job left 'waiting for data'; fails after ``seconds``."""
    start = time.monotonic()
    wait_for(lambda: not is_waiting(jm, job_id), timeout=seconds, interval=0.002)
    return time.monotonic() - start


def events(jm: Jobmill, job_id: str, name: str) -> list[Any]:
    """The job's events named ``name``, but the engine's hand-over to the executor (a ``wait``
    with reason ``backend``, just before each start)."""
    return [e for e in jm.store.events(job_id) if e.name == name and not handover(e)]


def handover(event: Any) -> bool:
    return bool(event.name == "wait" and event.data.get("reason") == "backend")


def write(path: Path, text: str = "data") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def settle_watcher(seconds: float = 0.4) -> None:
    time.sleep(seconds)


# -- patterns (no database) -------------------------------------------------------------------


def test_pattern_matching() -> None:
    assert matches(parts("/d/*.fits"), parts("/d/a.fits"))
    assert not matches(parts("/d/*.fits"), parts("/d/sub/a.fits"))
    assert matches(parts("/d/**/a.fits"), parts("/d/a.fits"))
    assert matches(parts("/d/**/a.fits"), parts("/d/x/y/a.fits"))
    assert matches(parts("/d/run[0-9]/?.dat"), parts("/d/run7/x.dat"))
    assert not matches(parts("/d/run[0-9]/?.dat"), parts("/d/runx/x.dat"))


def test_resolve_paths_and_placeholders() -> None:
    job_id = str(uuid.uuid4())
    condition = DataCondition(paths=("{job_hex}.dat", "/abs/../x/{job_id}", "rel/*.fits"))
    resolved = resolve(condition, job_id, "/root/data", field="wait_for")
    assert resolved.paths == (
        f"/root/data/{uuid.UUID(job_id).hex}.dat",
        f"/x/{job_id}",
        "/root/data/rel/*.fits",
    )
    bad = [
        (DataCondition(paths=()), "wait_for.paths"),
        (DataCondition(paths=("a", "")), "wait_for.paths[1]"),
        (DataCondition(paths=("a\x00b",)), "wait_for.paths[0]"),
        (DataCondition(paths=("/d/a**b/x",)), "wait_for.paths[0]"),
        (DataCondition(paths=("/d/**",)), "wait_for.paths[0]"),
        (DataCondition(paths=("/",)), "wait_for.paths[0]"),
        (DataCondition(paths=("a",), mode="most"), "wait_for.mode"),
        (DataCondition(paths=("a",), timeout=0), "wait_for.timeout"),
    ]
    for condition, field in bad:
        with pytest.raises(ValidationError) as caught:
            resolve(condition, job_id, "/root", field="wait_for")
        assert caught.value.field == field, condition


# -- release ------------------------------------------------------------------------------------


def test_release_on_file_creation_is_fast_and_runs_once(
    api: TestClient, jm: Jobmill, data_dir: Path
) -> None:
    job_id = submit(api, {"paths": ["in/a.dat"]})
    job = api.get(f"{JOBS}/{job_id}").json()
    assert job["phase"] == "QUEUED" and job["reason"] == WAITING
    (data_dir / "in").mkdir()
    watched(jm, job_id)
    settle_watcher()
    assert is_waiting(jm, job_id)
    # Watched by inotify, not scanned (the latency is measured in bench/bench_datawait.py).
    assert jm.data is not None
    assert jm.data.watcher.stats()["watched_dirs"] >= 1
    assert jm.data.watcher.stats()["scanned_dirs"] == 0
    write(data_dir / "in" / "a.dat")
    released_within(jm, job_id, 15)
    assert wait_phase(api, job_id)["phase"] == "COMPLETED"
    names = [e.name for e in jm.store.events(job_id) if not handover(e)]
    assert names[:3] == ["created", "wait", "start"], names
    (released,) = events(jm, job_id, "wait")
    assert released.data["released_by"] == str(data_dir / "in" / "a.dat")
    assert released.from_phase is not None and released.from_phase.value == "QUEUED"
    condition = api.get(f"{JOBS}/{job_id}/wait_for").json()
    assert condition["paths"] == [str(data_dir / "in" / "a.dat")] and condition["mode"] == "all"
    assert condition["waiting"] is False and condition["released_by"].endswith("a.dat")


def test_all_and_any(api: TestClient, jm: Jobmill, data_dir: Path) -> None:
    every = submit(api, {"paths": ["a.dat", "b.dat"], "mode": "all"})
    either = submit(api, {"paths": ["a.dat", "b.dat"], "mode": "any"})
    watched(jm, every, either)
    write(data_dir / "a.dat")
    released_within(jm, either, 15)
    settle_watcher(0.5)
    assert is_waiting(jm, every)
    write(data_dir / "b.dat")
    released_within(jm, every, 15)
    for job_id in (every, either):
        assert wait_phase(api, job_id)["phase"] == "COMPLETED"


def test_glob_patterns_and_directories_that_appear_later(
    api: TestClient, jm: Jobmill, data_dir: Path
) -> None:
    name_glob = submit(api, {"paths": ["raw/visit_*.fits"]})
    dir_glob = submit(api, {"paths": ["runs/run[0-9]*/calexp.fits"]})
    deep = submit(api, {"paths": [str(data_dir / "tree" / "**" / "done.txt")]})
    watched(jm, name_glob, dir_glob, deep)
    (data_dir / "raw").mkdir()
    (data_dir / "runs" / "runX").mkdir(parents=True)
    (data_dir / "tree" / "a" / "b").mkdir(parents=True)
    settle_watcher(0.5)
    write(data_dir / "raw" / "visit_1.txt")  # wrong suffix
    write(data_dir / "runs" / "runX" / "calexp.fits")  # wrong directory
    write(data_dir / "tree" / "a" / "b" / "other.txt")
    settle_watcher(1.5)
    assert all(is_waiting(jm, j) for j in (name_glob, dir_glob, deep))
    write(data_dir / "raw" / "visit_42.fits")
    (data_dir / "runs" / "run7").mkdir()
    settle_watcher(0.3)  # the new directory gets its own watch
    write(data_dir / "runs" / "run7" / "calexp.fits")
    write(data_dir / "tree" / "a" / "b" / "done.txt")
    for job_id in (name_glob, dir_glob, deep):
        released_within(jm, job_id, 15)
    (wait,) = events(jm, dir_glob, "wait")
    assert wait.data["released_by"] == str(data_dir / "runs" / "run7" / "calexp.fits")


def test_timeout_ends_the_job_in_error(api: TestClient, jm: Jobmill) -> None:
    job_id = submit(api, {"paths": ["never.dat"], "timeout": 0.5})
    job = wait_phase(api, job_id, "ERROR", timeout=10)
    assert job["error"] == "timed out waiting for data after 0.5 s"
    assert [e.name for e in jm.store.events(job_id)] == ["created", "fail"]


def test_marker_file(api: TestClient, jm: Jobmill, data_dir: Path) -> None:
    job_id = submit(api, {"paths": ["frame.fits"], "marker": True})
    watched(jm, job_id)
    write(data_dir / "frame.fits")
    settle_watcher(1.5)  # closed, and older than the settle time: still needs its marker
    assert is_waiting(jm, job_id)
    write(data_dir / "frame.fits.done", "")
    released_within(jm, job_id, 15)
    # A marker that comes first waits for its file.
    early = submit(api, {"paths": ["late.fits"], "marker": True})
    watched(jm, early)
    write(data_dir / "late.fits.done", "")
    settle_watcher(0.5)
    assert is_waiting(jm, early)
    write(data_dir / "late.fits")
    released_within(jm, early, 15)


def test_open_file_counts_only_once_closed(api: TestClient, jm: Jobmill, data_dir: Path) -> None:
    job_id = submit(api, {"paths": ["big.dat"]})
    watched(jm, job_id)
    handle = open(data_dir / "big.dat", "w")  # noqa: SIM115 - kept open on purpose
    try:
        for _ in range(4):
            handle.write("x" * 1000)
            handle.flush()
            time.sleep(0.4)
        assert is_waiting(jm, job_id)
    finally:
        handle.close()
    released_within(jm, job_id, 15)  # at close, with no stability period configured


def test_stable_seconds(api: TestClient, jm: Jobmill, data_dir: Path) -> None:
    job_id = submit(api, {"paths": ["grow.dat"], "stable_seconds": 1.0})
    watched(jm, job_id)
    path = data_dir / "grow.dat"
    for i in range(4):  # closed after each write, but still changing
        with open(path, "a") as handle:
            handle.write(f"chunk {i}\n")
        last_write = time.monotonic()
        time.sleep(0.4)
        assert is_waiting(jm, job_id)
    released_within(jm, job_id, 15)
    assert time.monotonic() - last_write >= 0.95


def test_exactly_once_when_files_come_twice(api: TestClient, jm: Jobmill, data_dir: Path) -> None:
    job_id = submit(api, {"paths": ["twice/*.dat"], "mode": "any"})
    (data_dir / "twice").mkdir()
    watched(jm, job_id)
    settle_watcher()
    for name in ("a.dat", "a.dat", "b.dat"):
        write(data_dir / "twice" / name)
    (data_dir / "twice" / "a.dat").touch()
    released_within(jm, job_id, 15)
    assert wait_phase(api, job_id)["phase"] == "COMPLETED"
    settle_watcher(0.5)
    assert len(events(jm, job_id, "wait")) == 1
    assert len(events(jm, job_id, "start")) == 1


def test_two_watchers_in_two_processes_launch_one_job(
    data_settings: Settings, data_dir: Path, tmp_path: Path
) -> None:
    first = build(data_settings)
    second = build(data_settings.with_(home=tmp_path / "home2"))
    try:
        first.start()
        second.start()
        assert first.data is not None and second.data is not None
        with app_client(first, start_engine=False) as api:
            ids = [submit(api, {"paths": [f"shared{i}.dat"]}) for i in range(5)]
            watched(first, *ids)
            watched(second, *ids)  # learnt from the database
            for i in range(5):
                write(data_dir / f"shared{i}.dat")
            for job_id in ids:
                assert wait_phase(api, job_id)["phase"] == "COMPLETED"
        for job_id in ids:
            assert len(events(first, job_id, "wait")) == 1
            assert len(events(first, job_id, "start")) == 1
        assert first.data.watcher.releases + second.data.watcher.releases == 5
    finally:
        second.close()
        first.close()


def test_pending_job_waits_once_run(api: TestClient, jm: Jobmill, data_dir: Path) -> None:
    job_id = submit(api, {"paths": ["later.dat"]}, phase="PENDING")
    assert api.get(f"{JOBS}/{job_id}").json()["reason"] is None
    write(data_dir / "later.dat")
    settle_watcher(0.5)
    assert api.get(f"{JOBS}/{job_id}").json()["phase"] == "PENDING"
    ran = api.post(f"{JOBS}/{job_id}/run").json()
    assert ran["phase"] == "QUEUED" and ran["reason"] == WAITING
    # The file is already there (and older than the settle time): it counts at once.
    released_within(jm, job_id, 15)
    assert wait_phase(api, job_id)["phase"] == "COMPLETED"


def test_timeout_of_a_pending_job_counts_from_run(api: TestClient, jm: Jobmill) -> None:
    job_id = submit(api, {"paths": ["never.dat"], "timeout": 0.5}, phase="PENDING")
    settle_watcher(1.0)
    assert api.get(f"{JOBS}/{job_id}").json()["phase"] == "PENDING"
    ran = time.monotonic()
    assert api.post(f"{JOBS}/{job_id}/run").json()["reason"] == WAITING
    job = wait_phase(api, job_id, "ERROR", timeout=10)
    assert time.monotonic() - ran >= 0.45
    assert job["error"] == "timed out waiting for data after 0.5 s"


def test_aborted_waiting_job_is_not_released(api: TestClient, jm: Jobmill, data_dir: Path) -> None:
    job_id = submit(api, {"paths": ["gone.dat"]})
    watched(jm, job_id)
    assert api.post(f"{JOBS}/{job_id}/abort").json()["phase"] == "ABORTED"
    assert jm.data is not None
    wait_for(lambda: not jm.data.watcher.knows(job_id), timeout=10)  # dropped at a refresh
    write(data_dir / "gone.dat")
    settle_watcher(0.5)
    assert [e.name for e in jm.store.events(job_id)] == ["created", "abort"]


def test_scanned_root(data_settings: Settings, data_dir: Path) -> None:
    nfs = data_dir / "nfs"
    nfs.mkdir()
    jm = build(data_settings.with_(scan_roots=(str(nfs),)))
    try:
        with app_client(jm) as api:
            job_id = submit(api, {"paths": ["nfs/frame.dat"]})
            watched(jm, job_id)
            assert jm.data is not None
            wait_for(lambda: jm.data.watcher.stats()["scanned_dirs"] == 1)
            assert jm.data.watcher.stats()["watched_dirs"] == 0
            write(nfs / "frame.dat")
            # one scan interval (0.3 s) plus two looks 1 s apart
            seconds = released_within(jm, job_id, 15)
            assert seconds >= 0.9, seconds  # not before the second look
            assert wait_phase(api, job_id)["phase"] == "COMPLETED"
    finally:
        jm.close()


# -- validation and batches ---------------------------------------------------------------------


def test_bad_conditions_are_rejected_and_nothing_is_stored(api: TestClient, jm: Jobmill) -> None:
    cases = [
        ({"paths": []}, "wait_for.paths"),
        ({"paths": ["a"], "mode": "some"}, "wait_for.mode"),
        ({"paths": ["a"], "timeout": -1}, "wait_for.timeout"),
        ({"paths": ["a"], "extra": 1}, "wait_for.extra"),
        ({"paths": ["/d/x**/a"]}, "wait_for.paths[0]"),
    ]
    for wait, field in cases:
        body = {"type": "echo", "parameters": {"message": "m"}, "wait_for": wait}
        response = api.post(JOBS, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"].startswith(field), (wait, response.json())
    batch = {
        "jobs": [
            {"type": "echo", "parameters": {"message": "a"}, "wait_for": {"paths": ["ok.dat"]}},
            {"type": "echo", "parameters": {"message": "b"}},
            {"type": "echo", "parameters": {"message": "c"}, "wait_for": {"paths": ["/x/**"]}},
        ]
    }
    response = api.post(f"{JOBS}/batch", json=batch)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "jobs[2].wait_for.paths[0]"
    assert jm.store.count() == 0
    assert jm.data is not None and jm.data.conditions.waiting_ids() == set()


def test_batch_creation_mixes_waiting_and_ready_jobs(
    api: TestClient, jm: Jobmill, data_dir: Path
) -> None:
    batch = {
        "jobs": [
            {"type": "echo", "parameters": {"message": f"w{i}"}, "wait_for": {"paths": [f"b{i}"]}}
            for i in range(20)
        ]
        + [{"type": "echo", "parameters": {"message": "now"}}]
    }
    response = api.post(f"{JOBS}/batch", json=batch)
    assert response.status_code == 201, response.text
    ids = response.json()["ids"]
    assert wait_phase(api, ids[-1])["phase"] == "COMPLETED"
    assert all(is_waiting(jm, j) for j in ids[:-1])
    watched(jm, *ids[:-1])
    for i in range(20):
        write(data_dir / f"b{i}")
    for job_id in ids[:-1]:
        assert wait_phase(api, job_id)["phase"] == "COMPLETED"


def _threads_and_children() -> tuple[int, int]:
    threads = len(os.listdir("/proc/self/task"))
    me = str(os.getpid())
    children = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    stat = handle.read()
            except OSError:
                continue
            if stat[stat.rfind(")") + 2 :].split()[1] == me:
                children += 1
    return threads, children


def test_no_process_or_thread_per_waiting_job(api: TestClient, jm: Jobmill) -> None:
    first = submit(api, {"paths": ["solo.dat"]})
    watched(jm, first)
    before = _threads_and_children()
    batch = {
        "jobs": [
            {"type": "echo", "parameters": {"message": "m"}, "wait_for": {"paths": [f"n/{i}"]}}
            for i in range(500)
        ]
    }
    ids = api.post(f"{JOBS}/batch", json=batch).json()["ids"]
    watched(jm, *ids)
    settle_watcher()
    after = _threads_and_children()
    assert after[1] == before[1], (before, after)  # no process per waiting job
    assert after[0] <= before[0] + 1, (before, after)  # the HTTP thread pool may grow by one
    assert jm.data is not None and jm.data.watcher.stats()["waiting"] == 501


# -- OCPS: <job_id>.dat and monitor/complete ----------------------------------------------------


def ap_body(tmp_path: Path, visit: int) -> dict[str, Any]:
    env = {
        "AP_JOB_OUTPUT_DIR": str(tmp_path / "output"),
        "AP_VISIT_ID": visit,
        "AP_CCD_NUM": 56,
        "AP_REPO": "/repo",
        "AP_TEMPLATE": "/repo/templates",
        "AP_CALIB": "/calib",
        "AP_FILTER": "g",
    }
    return {"type": "ap", "env": env, "log_dir": str(tmp_path / "logs")}


def ocps_state(api: TestClient, job_hex: str) -> dict[str, Any]:
    data = api.get(OCPS, params={"id": job_hex}).json()
    assert data["status"] == "ok", data
    job: dict[str, Any] = data["job"]
    return job


def test_ocps_four_jobs_wait_for_their_dat_files(
    api: TestClient, jm: Jobmill, data_dir: Path, tmp_path: Path
) -> None:
    answers = [api.post(OCPS, json=ap_body(tmp_path, 411371 + i)).json() for i in range(4)]
    for answer in answers:
        assert answer["status"] == "ok" and answer["cluster_id"] is None
        assert set(answer) == {"status", "msg", "job_id", "cluster_id", "monitor_key"}
        assert len(answer["monitor_key"]) >= 40 and answer["monitor_key"] != answer["job_id"]
    hexes = [a["job_id"] for a in answers]
    for job_hex in hexes:
        job = ocps_state(api, job_hex)
        assert job["state"] == "init" and job["clusterId"] is None
    watched(jm, *(str(uuid.UUID(h)) for h in hexes))
    for job_hex in hexes[:3]:
        write(data_dir / f"{job_hex}.dat", "")
    for job_hex in hexes[:3]:
        job = wait_for(lambda h=job_hex: (j := ocps_state(api, h))["state"] == "completed" and j)
        assert isinstance(job["clusterId"], int) and job["phase"] == "completed"
    fourth = ocps_state(api, hexes[3])
    assert fourth["state"] == "init" and fourth["clusterId"] is None
    assert len(list((tmp_path / "output").glob("ap_*.txt"))) == 3

    # monitor/complete releases the fourth, once; the job id is not a key.
    assert api.get("/api/v1/monitor/complete", params={"id": hexes[3]}).json() == {
        "status": "error",
        "msg": "Unknown key",
        "cluster_id": None,
    }
    key = answers[3]["monitor_key"]
    first = api.get("/api/v1/monitor/complete", params={"id": key}).json()
    assert first["status"] == "ok" and first["msg"] == ""
    second = api.get("/api/v1/monitor/complete", params={"id": key}).json()
    assert second["status"] == "ok" and second["msg"] == "already released"
    job = wait_for(lambda: (j := ocps_state(api, hexes[3]))["state"] == "completed" and j)
    assert job["clusterId"] == first["cluster_id"] or first["cluster_id"] is None
    # A .dat appearing afterwards changes nothing.
    write(data_dir / f"{hexes[3]}.dat", "")
    settle_watcher(0.5)
    for job_hex in hexes:
        job_id = str(uuid.UUID(job_hex))
        assert len(events(jm, job_id, "wait")) == 1
        assert len(events(jm, job_id, "start")) == 1
    released_by = events(jm, str(uuid.UUID(hexes[3])), "wait")[0].data["released_by"]
    assert released_by == "monitor/complete"
    assert len(list((tmp_path / "output").glob("ap_*.txt"))) == 4


def test_monitor_complete_after_the_data_and_concurrently(
    api: TestClient, jm: Jobmill, data_dir: Path, tmp_path: Path
) -> None:
    answer = api.post(OCPS, json=ap_body(tmp_path, 1)).json()
    job_id = str(uuid.UUID(answer["job_id"]))
    watched(jm, job_id)
    write(data_dir / f"{answer['job_id']}.dat", "")
    released_within(jm, job_id, 15)
    late = api.get("/api/v1/monitor/complete", params={"id": answer["monitor_key"]}).json()
    assert late["status"] == "ok" and late["msg"] == "already released"

    other = api.post(OCPS, json=ap_body(tmp_path, 2)).json()
    results: list[dict[str, Any]] = []

    def call() -> None:
        params = {"id": other["monitor_key"]}
        results.append(api.get("/api/v1/monitor/complete", params=params).json())

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r["msg"] for r in results) == [
        "",
        "already released",
        "already released",
        "already released",
    ]
    other_id = str(uuid.UUID(other["job_id"]))
    assert wait_phase(api, other_id)["phase"] == "COMPLETED"
    assert len(events(jm, other_id, "start")) == 1
    assert api.get("/api/v1/monitor/complete").json()["status"] == "error"


def test_ocps_types_not_listed_run_at_once(api: TestClient, tmp_path: Path) -> None:
    answer = api.post(OCPS, json={"type": "fail", "env": {"code": 0}, "log_dir": str(tmp_path)})
    data = answer.json()
    assert "monitor_key" not in data
    job = wait_for(lambda: (j := ocps_state(api, data["job_id"]))["state"] == "completed" and j)
    assert job["phase"] == "completed"
