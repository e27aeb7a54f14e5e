"""Jobs run for real as local processes: results, logs, failures, abort, timeouts, limits."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from jobmill.config import Settings
from jobmill.factory import Jobmill, build
from tests.conftest import EXAMPLES, LiveServer, app_client, wait_for, wait_phase


def submit(client: TestClient, type_: str, **parameters: object) -> dict:  # type: ignore[type-arg]
    response = client.post("/api/v1/jobs", json={"type": type_, "parameters": parameters})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_echo_completes_with_result_and_log(client: TestClient, jobmill: Jobmill) -> None:
    job = submit(client, "echo", message="hello; $(rm -rf /) 'quoted'")
    done = wait_phase(client, job["id"])
    assert done["phase"] == "COMPLETED", done
    assert done["exit_code"] == 0
    assert done["started"] and done["ended"]
    workdir = jobmill.jobs.files.workdir(job["id"])
    assert (workdir / "echo.txt").read_text() == "hello; $(rm -rf /) 'quoted'\n"
    log = client.get(f"/api/v1/jobs/{job['id']}/logs/stdout")
    assert log.text == "hello; $(rm -rf /) 'quoted'\n"
    assert log.headers["X-Log-Exists"] == "true"
    names = [e["name"] for e in client.get(f"/api/v1/jobs/{job['id']}/events").json()]
    assert names == ["created", "wait", "start", "complete"]


def test_failure_keeps_exit_code_and_stderr(client: TestClient) -> None:
    job = submit(client, "fail", code=7)
    done = wait_phase(client, job["id"])
    assert done["phase"] == "ERROR"
    assert done["exit_code"] == 7
    assert "exit code 7" in done["error"]
    stderr = client.get(f"/api/v1/jobs/{job['id']}/logs/stderr").text
    assert "fails on purpose with exit code 7" in stderr
    tail = client.get(f"/api/v1/jobs/{job['id']}/logs/stderr", params={"tail": 5})
    assert tail.text == stderr[-5:]


def test_abort_running_job_ends_aborted_and_kills_it(client: TestClient, jobmill: Jobmill) -> None:
    job = submit(client, "sleep", seconds=60)
    running = wait_phase(client, job["id"], "EXECUTING")
    wait_for(lambda: client.get(f"/api/v1/jobs/{job['id']}").json()["native_id"])
    native = client.get(f"/api/v1/jobs/{job['id']}").json()["native_id"]
    pid = int(native.split("@")[0])
    response = client.post(f"/api/v1/jobs/{job['id']}/abort")
    assert response.status_code == 200
    assert response.json()["phase"] == "ABORTED"
    assert running["phase"] == "EXECUTING"
    wait_for(lambda: not _alive(pid), timeout=10)
    again = client.post(f"/api/v1/jobs/{job['id']}/abort")
    assert again.status_code == 409
    assert "already ended" in again.json()["error"]["message"]


def test_execution_duration_is_enforced(client: TestClient) -> None:
    response = client.post(
        "/api/v1/jobs",
        json={"type": "sleep", "parameters": {"seconds": 60}, "execution_duration": 1},
    )
    job = response.json()
    done = wait_phase(client, job["id"], timeout=20)
    assert done["phase"] == "ERROR"
    assert done["error"] == "execution duration exceeded (1 s)"


def test_concurrency_limit(client: TestClient, jobmill: Jobmill) -> None:
    limit = jobmill.settings.max_local_jobs
    jobs = [submit(client, "sleep", seconds=0.6) for _ in range(limit + 3)]
    peak = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listing = client.get("/api/v1/jobs", params={"phase": "EXECUTING"}).json()["jobs"]
        peak = max(peak, len(listing))
        assert len(listing) <= limit
        phases = {client.get(f"/api/v1/jobs/{j['id']}").json()["phase"] for j in jobs}
        if phases == {"COMPLETED"}:
            break
        time.sleep(0.05)
    assert phases == {"COMPLETED"}
    assert peak >= 2


@pytest.fixture
def env_settings(settings: Settings, tmp_path: Path) -> Settings:
    types = tmp_path / "types"
    types.mkdir()
    (types / "printenv.yaml").write_text(
        'name: printenv\ncommand: ["/usr/bin/env"]\n'
        "parameters:\n  visit:\n    type: integer\n    deliver: env\n    env: AP_VISIT_ID\n"
    )
    return settings.with_(jobtypes=(str(EXAMPLES), str(types)))


def test_process_environment_is_only_its_own(env_settings: Settings) -> None:
    os.environ["JOBMILL_TEST_SERVER_SECRET"] = "do-not-leak"
    before = dict(os.environ)
    jm = build(env_settings)
    try:

        with app_client(jm) as client:
            a = submit(client, "printenv", visit=1)
            b = submit(client, "printenv", visit=2)
            outputs = {}
            for job in (a, b):
                assert wait_phase(client, job["id"])["phase"] == "COMPLETED"
                text = client.get(f"/api/v1/jobs/{job['id']}/logs/stdout").text
                outputs[job["id"]] = dict(line.split("=", 1) for line in text.splitlines())
    finally:
        jm.close()
        del os.environ["JOBMILL_TEST_SERVER_SECRET"]
    env_a, env_b = outputs[a["id"]], outputs[b["id"]]
    assert env_a["AP_VISIT_ID"] == "1" and env_b["AP_VISIT_ID"] == "2"
    assert env_a["JOBMILL_JOB_ID"] == a["id"]
    assert env_a["BATCH_UPDATE_URL"].startswith(env_a["JOBMILL_REPORT_URL"] + "?token=")
    assert env_a["JOBMILL_TOKEN"] != env_b["JOBMILL_TOKEN"]
    assert len(env_a["JOBMILL_TOKEN"]) >= 22  # at least 128 random bits
    assert "JOBMILL_TEST_SERVER_SECRET" not in env_a
    allowed = set(env_settings.pass_env) | {
        "AP_VISIT_ID",
        "JOBMILL_JOB_ID",
        "JOBMILL_URL",
        "JOBMILL_REPORT_URL",
        "JOBMILL_TOKEN",
        "BATCH_UPDATE_URL",
        "PWD",
        "SHLVL",
        "_",
    }
    assert set(env_a) <= allowed, set(env_a) - allowed
    before.pop("JOBMILL_TEST_SERVER_SECRET", None)
    assert dict(os.environ) == before


def test_counters_example_reports_through_batch_update_url(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url, headers=live.headers) as http:
        job = http.post("/api/v1/jobs", json={"type": "counters", "parameters": {"interval": 0}})
        job_id = job.json()["id"]

        def ended() -> dict | None:  # type: ignore[type-arg]
            data = http.get(f"/api/v1/jobs/{job_id}").json()
            return data if data["phase"] in ("COMPLETED", "ERROR") else None

        done = wait_for(ended, timeout=30)
        assert done["phase"] == "COMPLETED", http.get(f"/api/v1/jobs/{job_id}/logs/stderr").text
        counters = done["report"]["counters"]
        assert counters["Example Counter"] == [10, "red"]
        assert len(counters["Random Char"]) == 1
        reports = [
            e for e in http.get(f"/api/v1/jobs/{job_id}/events").json() if e["name"] == "report"
        ]
        assert len(reports) == 10


def test_report_needs_the_jobs_own_token(live: LiveServer, tmp_path: Path) -> None:
    jm = live.jobmill
    with httpx.Client(base_url=live.url, headers=live.headers) as http:
        first = http.post("/api/v1/jobs", json={"type": "sleep", "parameters": {"seconds": 30}})
        second = http.post("/api/v1/jobs", json={"type": "sleep", "parameters": {"seconds": 30}})
        ids = [first.json()["id"], second.json()["id"]]
        for job_id in ids:
            wait_for(lambda job_id=job_id: jm.store.require(job_id).native_id)
        # The token exists only in the job's environment: read it from the process.
        tokens = [_token_of(jm, job_id) for job_id in ids]
        url = f"/api/v1/jobs/{ids[0]}/report"
        ok = http.post(url, params={"token": tokens[0]}, json={"counters": {"files": 1}})
        assert ok.status_code == 200
        no_token = {"Authorization": ""}
        assert http.post(url, json={"counters": {"files": 99}}, headers=no_token).status_code == 401
        wrong = http.post(url, params={"token": tokens[1]}, json={"counters": {"files": 99}})
        assert wrong.status_code == 403
        bearer = http.post(url, headers={"Authorization": f"Bearer {tokens[0]}"}, json={"x": 2})
        assert bearer.status_code == 200
        partial = http.post(url, params={"token": tokens[0]}, json=[{"key": "other", "value": 5}])
        assert partial.status_code == 200
        report = http.get(f"/api/v1/jobs/{ids[0]}").json()["report"]
        assert report == {"counters": {"files": 1, "other": 5}, "x": 2}
        bad = http.post(url, params={"token": tokens[0]}, json={"counters": 5})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "counters"
        for job_id in ids:
            http.post(f"/api/v1/jobs/{job_id}/abort")


def _token_of(jm: Jobmill, job_id: str) -> str:
    native = jm.store.require(job_id).native_id
    assert native
    pid = int(native.split("@")[0])

    def token() -> str | None:  # (empty for a moment while the job execs, e.g. through a shim)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for entry in environ:
            if entry.startswith(b"JOBMILL_TOKEN="):
                return entry.split(b"=", 1)[1].decode()
        return None

    return str(wait_for(token, timeout=5))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def stubborn_settings(settings: Settings, tmp_path: Path) -> Settings:
    types = tmp_path / "stubborn"
    types.mkdir()
    (types / "stubborn.py").write_text(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring SIGTERM', flush=True)\n"
        "time.sleep(120)\n"
    )
    (types / "stubborn.yaml").write_text(
        'name: stubborn\ncommand: ["python3", "{jobtype_dir}/stubborn.py"]\n'
    )
    return settings.with_(jobtypes=(str(types),), kill_grace=1.0)


def test_abort_escalates_to_sigkill_after_the_grace_period(stubborn_settings: Settings) -> None:

    jm = build(stubborn_settings)
    try:
        with app_client(jm) as client:
            job = submit(client, "stubborn")
            wait_for(lambda: "ignoring" in client.get(f"/api/v1/jobs/{job['id']}/logs/stdout").text)
            pid = int(client.get(f"/api/v1/jobs/{job['id']}").json()["native_id"].split("@")[0])
            started = time.monotonic()
            assert client.post(f"/api/v1/jobs/{job['id']}/abort").json()["phase"] == "ABORTED"
            time.sleep(0.5)
            assert _alive(pid) or _group_alive(pid), "SIGTERM should have been ignored"
            wait_for(lambda: not _group_alive(pid), timeout=10)
            assert time.monotonic() - started >= 0.9  # the grace period was honoured
            events = client.get(f"/api/v1/jobs/{job['id']}/events").json()
            assert events[-1]["name"] == "exited"  # the exit status is still recorded
            assert client.get(f"/api/v1/jobs/{job['id']}").json()["phase"] == "ABORTED"
    finally:
        jm.close()


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def test_destruction_time_archives_the_job_and_removes_its_files(
    client: TestClient, jobmill: Jobmill
) -> None:
    from datetime import UTC, datetime, timedelta

    done = wait_phase(client, submit(client, "echo", message="bye")["id"])
    running = submit(client, "sleep", seconds=60)
    wait_phase(client, running["id"], "EXECUTING")
    past = datetime.now(UTC) - timedelta(seconds=1)
    for job_id in (done["id"], running["id"]):
        jobmill.store.record(job_id, "destruction", actor="test", values={"destruction_at": past})
    workdir = jobmill.jobs.files.workdir(done["id"])
    assert workdir.exists()
    for job_id in (done["id"], running["id"]):
        wait_phase(client, job_id, "ARCHIVED", timeout=20)
    assert not workdir.exists()
    archived = client.get(f"/api/v1/jobs/{running['id']}").json()
    assert archived["error"] == "destruction time reached"
    names = [e["name"] for e in client.get(f"/api/v1/jobs/{running['id']}/events").json()]
    assert names[-2:] == ["abort", "archive"] or names[-3:-1] == ["abort", "archive"]
