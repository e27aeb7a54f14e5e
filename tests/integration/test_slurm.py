"""Jobs run for real on Slurm, through the jobmill API: results, logs, failures, abort, time
limits, hold and release, cancellation outside jobmill, lost jobs, restart, an unreachable
backend, and progress reports from a Slurm job.

Needs a working Slurm (``sinfo``) whose jobs run on this host (docs/slurm.md). Without one the
tests skip, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from jobmill.config import Settings
from jobmill.executors.slurm import SlurmExecutor
from jobmill.factory import Jobmill, build
from jobmill.service import engine as engine_module
from tests.conftest import EXAMPLES, LiveServer, app_client, require_service, wait_for, wait_phase

SCRIPTS = EXAMPLES / "scripts"
POLL = 0.5
NEVER_A_SLURM_JOB = "66999999"


@functools.cache
def slurm_available() -> bool:
    """Whether Slurm answers (asked once per test run: a down slurmctld makes sinfo wait)."""
    if shutil.which("sinfo") is None:
        return False
    try:
        result = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@pytest.fixture(scope="module")
def slurm() -> None:
    require_service(slurm_available(), "Slurm (sinfo)")


def slurm_types(directory: Path) -> Path:
    """Job types like the examples, run by Slurm."""
    directory.mkdir(parents=True, exist_ok=True)
    py = "python3"
    types = {
        "s-echo": {
            "command": [py, f"{SCRIPTS}/echo.py", "{message}"],
            "parameters": {"message": {"type": "string", "required": True}},
            "results": [{"name": "echo", "pattern": "echo.txt", "content_type": "text/plain"}],
        },
        "s-fail": {
            "command": [py, f"{SCRIPTS}/fail.py", "{code}"],
            "parameters": {"code": {"type": "integer", "default": 3}},
        },
        "s-sleep": {
            "command": [py, f"{SCRIPTS}/sleep.py", "{seconds}", "{code}"],
            "parameters": {
                "seconds": {"type": "number", "default": 30},
                "code": {"type": "integer", "default": 0},
            },
        },
        "s-later": {  # pends in Slurm for two minutes: a job to hold
            "command": [py, f"{SCRIPTS}/sleep.py", "0", "0"],
            "resources": {"extra": ["--begin=now+120"]},
        },
        "s-counters": {
            "command": [py, f"{SCRIPTS}/counters.py", "{interval}"],
            "parameters": {"interval": {"type": "number", "default": 0}},
        },
    }
    for name, body in types.items():
        body = {"name": name, "executor": "slurm", **body}
        (directory / f"{name}.yaml").write_text(json.dumps(body, indent=2))
    return directory


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: the Slurm paths do not depend on the database (the store tests do)."""
    return f"sqlite:///{tmp_path / 'jobmill.db'}"


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, slurm: None) -> Settings:
    return settings.with_(
        executors=("local", "slurm"),
        jobtypes=(str(slurm_types(tmp_path / "types")),),
        poll_interval=POLL,
        slurm_lost_after=2.0,
        slurm_command_timeout=20.0,
    )


@pytest.fixture
def jobmill_settings_array(settings: Settings) -> Settings:
    """Groups of three or more alike jobs go in as job arrays."""
    return settings.with_(slurm_array_min=3)


@contextmanager
def running(settings: Settings) -> Iterator[tuple[Jobmill, TestClient]]:
    jm = build(settings)
    try:
        with app_client(jm) as client:
            yield jm, client
    finally:
        jm.close()


def submit(client: TestClient, type_: str, **body: object) -> dict:  # type: ignore[type-arg]
    parameters = body.pop("parameters", {})
    response = client.post("/api/v1/jobs", json={"type": type_, "parameters": parameters, **body})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def native_id(client: TestClient, job_id: str) -> str:
    def get() -> str | None:
        return client.get(f"/api/v1/jobs/{job_id}").json()["native_id"]  # type: ignore[no-any-return]

    return wait_for(get, timeout=20)  # type: ignore[no-any-return]


def slurm_state(job: str) -> str:
    """The state Slurm itself shows for a job (squeue keeps finished jobs for MinJobAge)."""
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return out.stdout.strip()


def scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, capture_output=True, timeout=20)


def scancel(job: str) -> None:
    subprocess.run(["scancel", job], check=True, capture_output=True, timeout=20)


def test_success_with_result_file_and_logs(
    client: TestClient, jobmill: Jobmill, tmp_path: Path
) -> None:
    message = "hello; $(rm -rf /) 'quoted' \"dq\" `bt` \\ %j #not-a-comment"
    log_dir = tmp_path / "logs dir %j #1"
    job = submit(client, "s-echo", parameters={"message": message}, log_dir=str(log_dir))
    done = wait_phase(client, job["id"], timeout=30)
    assert done["phase"] == "COMPLETED", done
    assert done["exit_code"] == 0 and done["ended"]
    workdir = jobmill.jobs.files.workdir(job["id"])
    assert (workdir / "echo.txt").read_text() == message + "\n"
    log = client.get(f"/api/v1/jobs/{job['id']}/logs/stdout")
    assert log.text == message + "\n"
    assert log.headers["X-Log-Exists"] == "true"
    assert list(log_dir.iterdir())  # the logs went where the client asked
    names = [e["name"] for e in client.get(f"/api/v1/jobs/{job['id']}/events").json()]
    assert names[:3] == ["created", "wait", "submitted"] and names[-1] == "complete"
    executor = jobmill.engine.executors["slurm"]
    assert f"JobName=jobmill-{job['id']}" in executor.details(done["native_id"])
    assert executor.find(job["id"]) == done["native_id"]


def test_failure_keeps_exit_code_and_stderr(client: TestClient) -> None:
    job = submit(client, "s-fail", parameters={"code": 7})
    done = wait_phase(client, job["id"], timeout=30)
    assert done["phase"] == "ERROR", done
    assert done["exit_code"] == 7
    assert done["error"] == "exit code 7"
    stderr = client.get(f"/api/v1/jobs/{job['id']}/logs/stderr").text
    assert "fails on purpose with exit code 7" in stderr


def test_suspend_resume_then_abort_cancels_the_slurm_job(client: TestClient) -> None:
    job = submit(client, "s-sleep", parameters={"seconds": 60})
    wait_phase(client, job["id"], "EXECUTING", timeout=30)
    slurm_id = native_id(client, job["id"])
    if os.geteuid() == 0:  # suspending is for Slurm operators
        scontrol("suspend", slurm_id)
        wait_phase(client, job["id"], "SUSPENDED", timeout=10)
        scontrol("resume", slurm_id)
        wait_phase(client, job["id"], "EXECUTING", timeout=10)
    response = client.post(f"/api/v1/jobs/{job['id']}/abort")
    assert response.status_code == 200
    assert response.json()["phase"] == "ABORTED"
    wait_for(lambda: slurm_state(slurm_id) == "CANCELLED", timeout=15)
    time.sleep(2 * POLL)  # the Slurm answer must not change the outcome
    after = client.get(f"/api/v1/jobs/{job['id']}").json()
    assert after["phase"] == "ABORTED" and after["error"].startswith("aborted by")


def test_execution_duration_is_enforced(client: TestClient) -> None:
    job = submit(client, "s-sleep", parameters={"seconds": 60}, execution_duration=2)
    done = wait_phase(client, job["id"], timeout=40)
    assert done["phase"] == "ERROR", done
    assert done["error"] == "execution duration exceeded (2 s)"
    wait_for(lambda: slurm_state(done["native_id"]) == "CANCELLED", timeout=15)


def test_hold_a_pending_job_then_release_it(client: TestClient, jobmill: Jobmill) -> None:
    job = submit(client, "s-later")
    slurm_id = native_id(client, job["id"])
    queued = client.get(f"/api/v1/jobs/{job['id']}").json()
    assert (queued["phase"], queued["reason"]) == ("QUEUED", "backend")
    scontrol("hold", slurm_id)
    wait_phase(client, job["id"], "HELD", timeout=10)
    held = [e for e in client.get(f"/api/v1/jobs/{job['id']}/events").json() if e["name"] == "hold"]
    assert held and "JobHeld" in held[0]["data"]["why"]
    executor = jobmill.engine.executors["slurm"]
    assert isinstance(executor, SlurmExecutor)
    executor.release(slurm_id)
    scontrol("update", f"JobId={slurm_id}", "StartTime=now")
    done = wait_phase(client, job["id"], timeout=30)
    assert done["phase"] == "COMPLETED", done


def test_cancelled_outside_jobmill_is_aborted_within_two_polls(client: TestClient) -> None:
    job = submit(client, "s-sleep", parameters={"seconds": 60})
    wait_phase(client, job["id"], "EXECUTING", timeout=30)
    slurm_id = native_id(client, job["id"])
    scancel(slurm_id)
    cancelled = time.monotonic()
    done = wait_phase(client, job["id"], timeout=10)
    took = time.monotonic() - cancelled
    assert done["phase"] == "ABORTED", done
    assert done["error"] == "cancelled outside jobmill"
    assert took <= 2 * POLL + 0.5, took  # two polls, plus squeue's own time on a busy host


def test_a_job_slurm_never_knew_is_lost_not_completed(settings: Settings, tmp_path: Path) -> None:
    fake = tmp_path / "fake-slurm"
    fake.mkdir()
    for command in ("squeue", "sacct", "scancel", "scontrol"):
        real = shutil.which(command)
        assert real is not None
        (fake / command).symlink_to(real)
    sbatch = fake / "sbatch"  # accepts the script and answers with an id Slurm never gave
    sbatch.write_text(f"#!/bin/sh\ncat > /dev/null\necho {NEVER_A_SLURM_JOB}\n")
    sbatch.chmod(0o755)
    with running(settings.with_(slurm_bin=str(fake))) as (_jm, client):
        job = submit(client, "s-sleep", parameters={"seconds": 1})
        done = wait_phase(client, job["id"], timeout=20)
    assert done["phase"] == "ERROR", done
    assert done["native_id"] == NEVER_A_SLURM_JOB
    assert done["error"].startswith("lost: Slurm job 66999999 is in neither squeue nor sacct")


def test_restart_reattaches_to_running_slurm_jobs(settings: Settings) -> None:
    with running(settings) as (jm, client):
        kept = submit(client, "s-sleep", parameters={"seconds": 4})
        erased = submit(client, "s-sleep", parameters={"seconds": 4, "code": 5})
        for job in (kept, erased):
            wait_phase(client, job["id"], "EXECUTING", timeout=30)
        slurm_ids = {job["id"]: native_id(client, job["id"]) for job in (kept, erased)}
    # The first jobmill is gone. Pretend it died before recording one native id: the next
    # one must find that job by its Slurm job name rather than submit it again.
    jm.store.record(erased["id"], "test", actor="test", values={"native_id": None})
    with running(settings) as (_jm2, client):
        first = wait_phase(client, kept["id"], timeout=30)
        second = wait_phase(client, erased["id"], timeout=30)
        events = client.get(f"/api/v1/jobs/{erased['id']}/events").json()
    assert first["phase"] == "COMPLETED" and first["native_id"] == slurm_ids[kept["id"]]
    assert second["phase"] == "ERROR" and second["exit_code"] == 5
    assert second["native_id"] == slurm_ids[erased["id"]]
    submitted = [e["data"]["native_id"] for e in events if e["name"] == "submitted"]
    assert submitted == [slurm_ids[erased["id"]]] * 2  # found again, never submitted twice


def test_unreachable_backend_keeps_the_job_then_submits_it(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "RETRY_UNAVAILABLE", 0.5)
    missing = tmp_path / "no-slurm-here"
    with running(settings.with_(slurm_bin=str(missing))) as (jm, client):
        job = submit(client, "s-echo", parameters={"message": "later"})

        def refused() -> dict | None:  # type: ignore[type-arg]
            data = client.get(f"/api/v1/jobs/{job['id']}").json()
            return data if data["reason"] == "backend unavailable" else None

        queued = wait_for(refused, timeout=10)
        assert queued["phase"] == "QUEUED" and queued["native_id"] is None
        events = client.get(f"/api/v1/jobs/{job['id']}/events").json()
        assert "no-slurm-here/sbatch" in json.dumps(events)
        executor = jm.engine.executors["slurm"]
        assert isinstance(executor, SlurmExecutor)
        executor.bin_dir = ""  # the backend is back
        done = wait_phase(client, job["id"], timeout=30)
    assert done["phase"] == "COMPLETED", done


def test_progress_reports_from_a_slurm_job(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url, timeout=10, headers=live.headers) as http:
        created = http.post("/api/v1/jobs", json={"type": "s-counters", "parameters": {}})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]

        def ended() -> dict | None:  # type: ignore[type-arg]
            data = http.get(f"/api/v1/jobs/{job_id}").json()
            return data if data["phase"] in ("COMPLETED", "ERROR", "ABORTED") else None

        done = wait_for(ended, timeout=40)
        assert done["phase"] == "COMPLETED", http.get(f"/api/v1/jobs/{job_id}/logs/stderr").text
        assert done["report"]["counters"]["Example Counter"] == [10, "red"]
        events = http.get(f"/api/v1/jobs/{job_id}/events").json()
        assert len([e for e in events if e["name"] == "report"]) == 10


# -- job arrays: a burst of alike jobs goes in with one sbatch --------------------------------


def submit_batch(client: TestClient, *jobs: dict) -> list[str]:  # type: ignore[type-arg]
    response = client.post("/api/v1/jobs/batch", json={"jobs": list(jobs)})
    assert response.status_code == 201, response.text
    return response.json()["ids"]  # type: ignore[no-any-return]


def array_of(native: str) -> str:
    array, _, task = native.partition("_")
    assert array.isdigit() and task.isdigit(), native
    return array


def test_a_burst_of_alike_jobs_goes_in_as_one_job_array(jobmill_settings_array: Settings) -> None:
    messages = ["plain", 'it\'s $HOME; `id` $(rm -rf /) "dq" \\ %a #x', "three"]
    with running(jobmill_settings_array) as (jm, client):
        ids = submit_batch(
            client,
            *({"type": "s-echo", "parameters": {"message": m}} for m in messages),
            {"type": "s-fail", "parameters": {"code": 4}},
        )
        done = [wait_phase(client, job_id, timeout=60) for job_id in ids]
        natives = [job["native_id"] for job in done]
        assert len({array_of(n) for n in natives}) == 1  # one sbatch --array
        assert sorted(n.partition("_")[2] for n in natives) == ["0", "1", "2", "3"]
        for job, message in zip(done, messages, strict=False):
            assert job["phase"] == "COMPLETED", job
            workdir = jm.jobs.files.workdir(job["id"])
            assert (workdir / "echo.txt").read_text() == message + "\n"
            log = client.get(f"/api/v1/jobs/{job['id']}/logs/stdout").text
            assert log == message + "\n"
        failed = done[-1]
        assert (failed["phase"], failed["exit_code"], failed["error"]) == (
            "ERROR",
            4,
            "exit code 4",
        )
        stderr = client.get(f"/api/v1/jobs/{failed['id']}/logs/stderr").text
        assert "fails on purpose with exit code 4" in stderr
        events = client.get(f"/api/v1/jobs/{ids[0]}/events").json()
        submitted = [e["data"] for e in events if e["name"] == "submitted"]
        assert submitted[0]["submitted_with"] == 4
        root = jm.jobs.files.root / ".slurm-arrays"
        wait_for(lambda: not any(root.iterdir()), timeout=10)  # removed once all ended


def test_one_task_of_an_array_is_aborted_held_and_released_alone(
    jobmill_settings_array: Settings,
) -> None:
    with running(jobmill_settings_array) as (jm, client):
        ids = submit_batch(client, *({"type": "s-later"} for _ in range(3)))
        natives = [native_id(client, job_id) for job_id in ids]
        assert len({array_of(n) for n in natives}) == 1
        aborted = client.post(f"/api/v1/jobs/{ids[0]}/abort")
        assert aborted.status_code == 200 and aborted.json()["phase"] == "ABORTED"
        scontrol("hold", natives[1])
        wait_phase(client, ids[1], "HELD", timeout=10)
        wait_for(lambda: slurm_state(natives[0]) in ("", "CANCELLED"), timeout=15)
        time.sleep(3 * POLL)
        assert client.get(f"/api/v1/jobs/{ids[0]}").json()["phase"] == "ABORTED"
        third = client.get(f"/api/v1/jobs/{ids[2]}").json()
        assert (third["phase"], third["reason"]) == ("QUEUED", "backend")
        assert slurm_state(natives[2]) == "PENDING"
        executor = jm.engine.executors["slurm"]
        assert isinstance(executor, SlurmExecutor)
        executor.release(natives[1])
        scontrol("update", f"JobId={natives[1]}", "StartTime=now")
        assert wait_phase(client, ids[1], timeout=40)["phase"] == "COMPLETED"
        assert client.post(f"/api/v1/jobs/{ids[2]}/abort").status_code == 200
        wait_for(lambda: slurm_state(natives[2]) in ("", "CANCELLED"), timeout=15)


def test_restart_finds_an_array_task_that_was_never_recorded(
    jobmill_settings_array: Settings,
) -> None:
    with running(jobmill_settings_array) as (jm, client):
        ids = submit_batch(
            client, *({"type": "s-sleep", "parameters": {"seconds": 3}} for _ in range(3))
        )
        natives = [native_id(client, job_id) for job_id in ids]
    # As if jobmill had died between sbatch and recording the ids.
    jm.store.record(ids[1], "test", actor="test", values={"native_id": None})
    with running(jobmill_settings_array) as (_jm2, client):
        done = [wait_phase(client, job_id, timeout=40) for job_id in ids]
        events = client.get(f"/api/v1/jobs/{ids[1]}/events").json()
    assert [job["phase"] for job in done] == ["COMPLETED"] * 3
    assert [job["native_id"] for job in done] == natives
    submitted = [e["data"]["native_id"] for e in events if e["name"] == "submitted"]
    assert submitted == [natives[1]] * 2  # found again, never submitted twice
