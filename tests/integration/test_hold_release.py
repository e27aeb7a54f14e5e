"""Hold, release, details and dry runs through the native API: on local jobs (held in the
database), on real Slurm jobs (held in Slurm), and the 4xx answers of each.

The Slurm tests need a working Slurm (``sinfo``); without one they skip, except in CI.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobmill.config import Settings
from jobmill.executors.base import ExecutorUnavailable
from jobmill.executors.htcondor import HTCondorExecutor
from jobmill.factory import Jobmill, build
from tests.conftest import EXAMPLES, app_client, require_service, wait_for, wait_phase
from tests.integration.test_slurm import slurm_available

SCRIPTS = EXAMPLES / "scripts"


def submit(client: TestClient, type_: str, **body: Any) -> dict[str, Any]:
    parameters = body.pop("parameters", {})
    response = client.post("/api/v1/jobs", json={"type": type_, "parameters": parameters, **body})
    assert response.status_code == 201, response.text
    return response.json()


def post(client: TestClient, job_id: str, action: str) -> Any:
    return client.post(f"/api/v1/jobs/{job_id}/{action}")


def events(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/api/v1/jobs/{job_id}/events").json()


def error_of(response: Any) -> dict[str, Any]:
    return response.json()["error"]


def files_under(root: Path) -> list[Path]:
    return sorted(root.rglob("*")) if root.exists() else []


# -- local jobs: held in the database -------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_(max_local_jobs=1)


def test_a_queued_local_job_is_held_in_the_database_until_released(
    client: TestClient, jobmill: Jobmill
) -> None:
    front = submit(client, "sleep", parameters={"seconds": 60})
    wait_phase(client, front["id"], "EXECUTING")
    held = submit(client, "echo", parameters={"message": "held"})
    answer = post(client, held["id"], "hold")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["phase"], answer.json()["reason"]) == ("HELD", None)
    hold = events(client, held["id"])[-1]
    assert (hold["name"], hold["from_phase"], hold["to_phase"]) == ("hold", "QUEUED", "HELD")
    assert hold["data"] == {"by": "tester", "where": "jobmill"}

    after = submit(client, "echo", parameters={"message": "after"})  # proves dispatch ran
    assert post(client, front["id"], "abort").status_code == 200
    assert wait_phase(client, after["id"])["phase"] == "COMPLETED"
    still = client.get(f"/api/v1/jobs/{held['id']}").json()
    assert (still["phase"], still["native_id"]) == ("HELD", None)

    released = post(client, held["id"], "release")
    assert released.status_code == 200, released.text
    assert (released.json()["phase"], released.json()["reason"]) == ("QUEUED", "capacity")
    assert wait_phase(client, held["id"])["phase"] == "COMPLETED"
    assert not jobmill.engine.tracked


def test_wrong_phases_are_409_naming_the_phase_and_unknown_jobs_404(client: TestClient) -> None:
    running = submit(client, "sleep", parameters={"seconds": 60})
    wait_phase(client, running["id"], "EXECUTING")
    refused = post(client, running["id"], "hold")
    assert refused.status_code == 409
    assert error_of(refused)["phase"] == "EXECUTING"
    assert "EXECUTING" in error_of(refused)["message"]
    assert "does not suspend" in error_of(refused)["message"]

    pending = submit(client, "echo", parameters={"message": "x"}, phase="PENDING")
    for action, phase in (("hold", "PENDING"), ("release", "PENDING")):
        answer = post(client, pending["id"], action)
        assert answer.status_code == 409, (action, answer.text)
        assert error_of(answer)["phase"] == phase and phase in error_of(answer)["message"]

    queued = submit(client, "echo", parameters={"message": "y"})
    assert post(client, queued["id"], "release").status_code == 409  # QUEUED, not HELD
    assert post(client, queued["id"], "hold").json()["phase"] == "HELD"
    again = post(client, queued["id"], "hold")
    assert again.status_code == 409 and error_of(again)["phase"] == "HELD"

    post(client, running["id"], "abort")
    ended = post(client, running["id"], "hold")
    assert ended.status_code == 409 and error_of(ended)["phase"] == "ABORTED"
    for action in ("hold", "release", "details"):
        method = client.get if action == "details" else client.post
        for job_id in ("nosuch", "00000000-0000-0000-0000-000000000000"):
            assert method(f"/api/v1/jobs/{job_id}/{action}").status_code == 404


def test_a_job_waiting_for_data_cannot_be_held(client: TestClient, tmp_path: Path) -> None:
    waiting = submit(
        client, "echo", parameters={"message": "x"},
        wait_for={"paths": [str(tmp_path / "never" / "there.dat")]},
    )  # fmt: skip
    assert waiting["reason"] == "waiting for data"
    refused = post(client, waiting["id"], "hold")
    assert refused.status_code == 409
    assert "waiting for data" in error_of(refused)["message"]


def test_held_jobs_are_only_the_owners(client: TestClient, jobmill: Jobmill) -> None:
    jobmill.store.tokens.add("alice", "alice-secret-token", admin=False)
    jobmill.store.tokens.add("bob", "bob-secret-token", admin=False)
    alice = {"Authorization": "Bearer alice-secret-token"}
    bob = {"Authorization": "Bearer bob-secret-token"}
    front = client.post(
        "/api/v1/jobs", json={"type": "sleep", "parameters": {"seconds": 60}}, headers=alice
    ).json()
    wait_phase(client, front["id"], "EXECUTING")  # the loopback user is an administrator
    job = client.post(
        "/api/v1/jobs", json={"type": "echo", "parameters": {"message": "a"}}, headers=alice
    ).json()
    assert client.post(f"/api/v1/jobs/{job['id']}/hold", headers=bob).status_code == 404
    assert client.post(f"/api/v1/jobs/{job['id']}/hold", headers=alice).status_code == 200
    assert client.post(f"/api/v1/jobs/{job['id']}/release", headers=bob).status_code == 404
    assert client.get(f"/api/v1/jobs/{front['id']}/details", headers=bob).status_code == 404
    post(client, front["id"], "abort")


def test_uws_phase_run_releases_a_held_job(client: TestClient) -> None:
    front = submit(client, "sleep", parameters={"seconds": 60})
    wait_phase(client, front["id"], "EXECUTING")
    job = submit(client, "echo", parameters={"message": "uws"})
    post(client, job["id"], "hold")
    assert client.get(f"/uws/echo/{job['id']}/phase").text == "HELD"
    answer = client.post(
        f"/uws/echo/{job['id']}/phase", data={"PHASE": "RUN"}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["phase"] == "QUEUED"
    post(client, front["id"], "abort")
    assert wait_phase(client, job["id"])["phase"] == "COMPLETED"


def test_a_held_job_stays_held_across_a_restart(settings: Settings) -> None:
    first = build(settings)
    try:
        job = first.jobs.create(_user(), _echo("restart"))
        first.jobs.hold(_user(), job.id)
    finally:
        first.close()
    second = build(settings)
    try:
        with app_client(second) as client:
            wait_for(lambda: not second.engine._queued_hint, timeout=10)  # recovery ran
            after = client.get(f"/api/v1/jobs/{job.id}").json()
            assert (after["phase"], after["native_id"]) == ("HELD", None)
            assert [e["name"] for e in events(client, job.id)] == ["created", "hold"]
            post(client, job.id, "release")
            assert wait_phase(client, job.id)["phase"] == "COMPLETED"
    finally:
        second.close()


def _user() -> Any:
    from jobmill.service.jobs import User

    return User("tester", admin=True)


def _echo(message: str) -> Any:
    from jobmill.service.jobs import JobRequest

    return JobRequest(type="echo", parameters={"message": message})


# -- a batch job, with a fake backend: what the backend answers decides --------------------------


class FakeBatch:
    """A backend that holds and releases as told (``answer``: None, or an exception)."""

    def __init__(self, store: Any, job_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.calls: list[tuple[str, str, str]] = []
        self.answer: Exception | None = None
        self.engine_first = False  # record HELD itself first, as a fast engine poll would

    def hold(self, native_id: str, reason: str) -> None:
        self._act("hold", native_id, reason)

    def release(self, native_id: str, reason: str) -> None:
        self._act("release", native_id, reason)

    def _act(self, what: str, native_id: str, reason: str) -> None:
        self.calls.append((what, native_id, reason))
        if self.answer is not None:
            raise self.answer
        if self.engine_first:
            from jobmill.domain.lifecycle import Action

            self.store.transition(self.job_id, Action.HOLD, actor="jobmill")

    def details(self, native_id: str) -> str:
        return f"job {native_id}: fine\n"


def in_backend(jobmill: Jobmill, monkeypatch: pytest.MonkeyPatch) -> tuple[str, FakeBatch]:
    """A QUEUED (backend) job with a native id, its executor replaced by a fake backend."""
    from jobmill.domain.lifecycle import Action, Reason
    from jobmill.service.jobs import JobRequest

    job = jobmill.jobs.create(_user(), JobRequest(type="echo", parameters={"message": "b"},
                                                  start=False))  # fmt: skip
    jobmill.store.transition(job.id, Action.RUN, actor="t", reason=Reason.CAPACITY.value)
    jobmill.store.transition(job.id, Action.WAIT, actor="t", reason=Reason.BACKEND.value)
    jobmill.store.record(job.id, "submitted", actor="t", values={"native_id": "77"})
    fake = FakeBatch(jobmill.store, job.id)
    monkeypatch.setitem(jobmill.jobs.backends, "local", fake)
    return job.id, fake


def test_a_batch_hold_is_recorded_once_the_backend_said_yes(
    jobmill: Jobmill, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, fake = in_backend(jobmill, monkeypatch)
    held = jobmill.jobs.hold(_user(), job_id)
    assert (held.phase.value, held.native_id) == ("HELD", "77")
    assert fake.calls == [("hold", "77", "held through jobmill by tester")]
    hold = jobmill.store.events(job_id)[-1]
    assert hold.data == {"by": "tester", "where": "local", "why": "held through jobmill by tester"}
    released = jobmill.jobs.release(_user(), job_id)
    assert (released.phase.value, released.reason) == ("QUEUED", "backend")
    assert fake.calls[-1] == ("release", "77", "released through jobmill by tester")


@pytest.mark.parametrize(
    ("answer", "status", "fragment"),
    [
        (ExecutorUnavailable("slurmctld is not responding"), 503, "not responding"),
        (OSError("the job is no longer pending"), 409, "refused to hold"),
    ],
)
def test_a_backend_that_is_down_or_refuses_changes_nothing(
    jobmill: Jobmill, monkeypatch: pytest.MonkeyPatch, answer: Exception, status: int,
    fragment: str,
) -> None:  # fmt: skip
    from jobmill.domain.errors import JobmillError

    job_id, fake = in_backend(jobmill, monkeypatch)
    fake.answer = answer
    with pytest.raises(JobmillError) as caught:
        jobmill.jobs.hold(_user(), job_id)
    assert caught.value.status == status and fragment in caught.value.message
    job = jobmill.store.require(job_id)
    assert (job.phase.value, job.reason) == ("QUEUED", "backend")
    assert [e.name for e in jobmill.store.events(job_id)][-1] == "submitted"


def test_when_the_engine_recorded_the_hold_first_the_user_gets_the_held_job(
    jobmill: Jobmill, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, fake = in_backend(jobmill, monkeypatch)
    fake.engine_first = True
    held = jobmill.jobs.hold(_user(), job_id)
    assert held.phase.value == "HELD"
    assert [e.name for e in jobmill.store.events(job_id)].count("hold") == 1


# -- details --------------------------------------------------------------------------------------


def test_details_of_a_local_job_as_json_and_text(client: TestClient) -> None:
    job = submit(client, "sleep", parameters={"seconds": 60})
    native = wait_for(lambda: client.get(f"/api/v1/jobs/{job['id']}").json()["native_id"])
    answer = client.get(f"/api/v1/jobs/{job['id']}/details")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["id"], body["executor"], body["phase"]) == (job["id"], "local", "EXECUTING")
    assert body["native_id"] == native
    assert "(running)" in body["details"] and "sleep.py" in body["details"]
    text = client.get(f"/api/v1/jobs/{job['id']}/details", headers={"Accept": "text/plain"})
    assert text.headers["content-type"].startswith("text/plain")
    # (the same process; its command line may still change as it execs through an interpreter's
    # launcher, e.g. a pyenv shim)
    assert text.text.splitlines()[0] == body["details"].splitlines()[0]
    assert "sleep.py" in text.text
    post(client, job["id"], "abort")


def test_details_of_a_job_never_submitted_is_409_and_a_down_backend_503(
    client: TestClient, jobmill: Jobmill, monkeypatch: pytest.MonkeyPatch
) -> None:
    pending = submit(client, "echo", parameters={"message": "x"}, phase="PENDING")
    never = client.get(f"/api/v1/jobs/{pending['id']}/details")
    assert never.status_code == 409
    assert "has not reached its backend" in error_of(never)["message"]
    assert error_of(never)["phase"] == "PENDING"

    done = wait_phase(client, submit(client, "echo", parameters={"message": "y"})["id"])

    def down(native_id: str) -> str:
        raise ExecutorUnavailable("the backend is down for maintenance")

    monkeypatch.setattr(jobmill.jobs.backends["local"], "details", down)
    answer = client.get(f"/api/v1/jobs/{done['id']}/details")
    assert answer.status_code == 503
    assert error_of(answer)["code"] == "backend_unavailable"
    assert "down for maintenance" in error_of(answer)["message"]


# -- dry runs -------------------------------------------------------------------------------------


def test_dry_run_shows_the_local_command_and_creates_nothing(
    client: TestClient, jobmill: Jobmill, tmp_path: Path
) -> None:
    before = files_under(jobmill.settings.home / "jobs")
    log_dir = tmp_path / "not" / "made"
    answer = client.post(
        "/api/v1/jobs/render",
        json={"type": "echo", "parameters": {"message": "hi; rm -rf /"}, "log_dir": str(log_dir)},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["executor"] == "local"
    assert "'hi; rm -rf /'" in body["script"]
    assert f"JOBMILL_JOB_ID={body['job_id']}" in body["script"]
    assert "JOBMILL_TOKEN='<made when the job starts>'" in body["script"]
    assert str(log_dir) in body["script"]
    assert jobmill.store.count() == 0
    assert files_under(jobmill.settings.home / "jobs") == before
    assert not log_dir.exists() and not log_dir.parent.exists()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"type": "echo"}, 422, "parameters.message"),
        ({"type": "sleep", "parameters": {"seconds": -1}}, 422, "parameters.seconds"),
        ({"type": "nosuch"}, 422, "type"),
        ({"type": "echo", "parameters": {"message": "x"}, "executor": "slurm"}, 422, "executor"),
        ({"type": "echo", "parameters": {"message": "x"}, "log_dir": "/proc/1/x"}, 422, "log_dir"),
        (
            {"type": "echo", "parameters": {"message": "x"}, "wait_for": {"paths": ["a\x00"]}},
            422,
            "wait_for",
        ),
    ],
)
def test_dry_run_refuses_exactly_what_submit_refuses(
    client: TestClient, jobmill: Jobmill, body: dict[str, Any], status: int, field: str
) -> None:
    dry = client.post("/api/v1/jobs/render", json=body)
    real = client.post("/api/v1/jobs", json=body)
    assert (dry.status_code, real.status_code) == (status, status), (dry.text, real.text)
    assert error_of(dry)["field"].startswith(field)
    assert error_of(dry)["field"] == error_of(real)["field"]
    assert jobmill.store.count() == 0


def test_dry_run_for_lsf_and_htcondor_needs_no_backend(
    client: TestClient, jobmill: Jobmill, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobmill.executors.lsf import LsfExecutor

    def unreachable() -> Any:
        raise AssertionError("a dry run must not contact the schedd")

    backends = {
        **jobmill.jobs.backends,
        "lsf": LsfExecutor(bin_dir="/nonexistent", queue="short"),
        "htcondor": HTCondorExecutor(connect=unreachable),
    }
    monkeypatch.setattr(jobmill.jobs, "backends", backends)
    monkeypatch.setattr(jobmill.jobs, "executors", tuple(backends))
    for executor, expected in (
        ("lsf", "#BSUB -q short"),
        ("htcondor", "universe = vanilla"),
    ):
        answer = client.post(
            "/api/v1/jobs/render",
            json={"type": "echo", "parameters": {"message": "m"}, "executor": executor},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["executor"] == executor
        assert expected in answer.json()["script"]
        assert "<made when the job starts>" in answer.json()["script"]
    newline = client.post(
        "/api/v1/jobs/render",
        json={"type": "echo", "parameters": {"message": "a\nb"}, "executor": "htcondor"},
    )
    assert newline.status_code == 422
    assert error_of(newline)["field"] == "parameters"
    assert "htcondor executor cannot write this job" in error_of(newline)["message"]
    assert jobmill.store.count() == 0


# -- Slurm: held in Slurm -------------------------------------------------------------------------


def slurm_types(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    later = {  # pends in Slurm for five minutes: a job to hold
        "name": "s-later",
        "executor": "slurm",
        "command": ["python3", f"{SCRIPTS}/sleep.py", "0", "0"],
        "resources": {"extra": ["--begin=now+300"], "memory_mb": 100},
    }
    (directory / "s-later.yaml").write_text(json.dumps(later))
    return directory


@pytest.fixture
def slurm_client(settings: Settings, tmp_path: Path) -> Iterator[tuple[Jobmill, TestClient]]:
    require_service(slurm_available(), "Slurm (sinfo)")
    types = slurm_types(tmp_path / "slurm-types")
    jm = build(
        settings.with_(
            executors=("local", "slurm"),
            jobtypes=(*settings.jobtypes, str(types)),
            poll_interval=0.5,
            slurm_command_timeout=20.0,
        )
    )
    try:
        with app_client(jm) as client:
            yield jm, client
    finally:
        jm.close()


def squeue(native_id: str, fmt: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", native_id, "-o", fmt],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    return out.stdout.strip()


def test_slurm_hold_release_details_and_dry_run(
    slurm_client: tuple[Jobmill, TestClient],
) -> None:
    jm, client = slurm_client
    job = submit(client, "s-later")
    native = wait_for(
        lambda: client.get(f"/api/v1/jobs/{job['id']}").json()["native_id"], timeout=20
    )
    held = post(client, job["id"], "hold")
    assert held.status_code == 200, held.text
    assert held.json()["phase"] == "HELD"  # recorded at once, not at the next poll
    assert squeue(native, "%T %r").startswith("PENDING JobHeld")
    hold = events(client, job["id"])[-1]
    assert hold["name"] == "hold" and hold["actor"] == "tester"
    assert hold["data"]["where"] == "slurm" and "by tester" in hold["data"]["why"]

    details = client.get(f"/api/v1/jobs/{job['id']}/details").json()
    assert f"JobId={native}" in details["details"] and "JobHeld" in details["details"]

    time.sleep(1.5)  # three polls: the engine agrees it is HELD, with no second hold event
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["phase"] == "HELD"
    assert [e["name"] for e in events(client, job["id"])].count("hold") == 1

    subprocess.run(["scontrol", "release", native], check=True, timeout=20)  # outside jobmill
    outside = wait_phase(client, job["id"], "QUEUED", timeout=10)  # the engine follows Slurm
    assert outside["reason"] == "backend"
    assert post(client, job["id"], "hold").json()["phase"] == "HELD"

    released = post(client, job["id"], "release")
    assert released.status_code == 200, released.text
    assert (released.json()["phase"], released.json()["reason"]) == ("QUEUED", "backend")
    assert "JobHeld" not in squeue(native, "%r")
    subprocess.run(["scontrol", "update", f"JobId={native}", "StartTime=now"], check=True)
    done = wait_phase(client, job["id"], timeout=60)
    assert done["phase"] == "COMPLETED", done

    dry = client.post("/api/v1/jobs/render", json={"type": "s-later"})
    assert dry.status_code == 200, dry.text
    script = dry.json()["script"]
    assert dry.json()["executor"] == "slurm"
    assert script.startswith("#!/bin/sh\n#SBATCH --job-name=jobmill-" + dry.json()["job_id"])
    assert "#SBATCH --begin=now+300" in script and "#SBATCH --mem=100M" in script
    assert "export JOBMILL_TOKEN='<made when the job starts>'" in script
    assert jm.store.count() == 1
    assert not jm.jobs.files.workdir(dry.json()["job_id"]).exists()
