"""The OCPS face: the prototype's wire formats and the acceptance checks of its feature row."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobmill.api.ocps import cluster_id, ocps_state
from jobmill.config import Settings
from jobmill.domain.jobs import Job, NewJob
from jobmill.domain.jobtype_files import load_jobtypes
from jobmill.domain.lifecycle import Phase, Reason
from jobmill.factory import Jobmill
from tests.conftest import EXAMPLES, ROOT, LiveServer, app_client, wait_for

AP_VARS = [
    "AP_JOB_OUTPUT_DIR",
    "AP_VISIT_ID",
    "AP_CCD_NUM",
    "AP_REPO",
    "AP_TEMPLATE",
    "AP_CALIB",
    "AP_FILTER",
]
HEX = re.compile(r"^[0-9a-f]{32}$")
CORS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "POST, PUT, DELETE, OPTIONS, GET",
}
JOB = "/api/v1/job"


def ap_body(tmp_path: Path, **env: Any) -> dict[str, Any]:
    values = {
        "AP_JOB_OUTPUT_DIR": str(tmp_path / "output"),
        "AP_VISIT_ID": 411371,
        "AP_CCD_NUM": 56,
        "AP_REPO": "/repo",
        "AP_TEMPLATE": "/repo/templates",
        "AP_CALIB": "/calib",
        "AP_FILTER": "g",
    }
    values.update(env)
    return {
        "type": "ap",
        "env": {k: v for k, v in values.items() if v is not None},
        "log_dir": str(tmp_path / "logs"),
    }


def submitted(response: Any) -> str:
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == {"status", "msg", "job_id", "cluster_id"}
    assert data["status"] == "ok" and data["msg"] == "" and data["cluster_id"] is None
    assert HEX.match(data["job_id"])
    return str(data["job_id"])


def ended(client: TestClient, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        data = client.get(JOB, params={"id": job_id}).json()
        return data if data["job"].get("state") in ("completed", "removed") else None

    result: dict[str, Any] = wait_for(done, timeout=20)
    return result


def no_jobs(client: TestClient) -> bool:
    return client.get("/api/v1/jobs").json()["jobs"] == []


def error_of(response: Any, status: int = 400) -> str:
    assert response.status_code == status, response.text
    data = response.json()
    assert data["status"] == "error" and data["msg"] == data["message"]
    return str(data["msg"])


# -- a.5.1, a.5.11: submit, run, completed ----------------------------------------------------


def test_json_submission_runs_and_completes(client: TestClient, tmp_path: Path) -> None:
    job_id = submitted(client.post(JOB, json=ap_body(tmp_path, AP_EXTRA="undeclared")))
    native = client.get(f"/api/v1/jobs/{job_id}").json()
    assert native["id"] == str(uuid.UUID(job_id)) and native["type"] == "ap"
    data = ended(client, job_id)
    assert data["status"] == "ok" and data["msg"] == ""
    job = data["job"]
    assert job["state"] == "completed" and job["phase"] == "completed" and job["exitCode"] == 0
    assert job["jobId"] == job_id and job["type"] == "ap"
    assert isinstance(job["clusterId"], int) and job["clusterId"] > 0
    legacy = datetime.strptime(job["timeCompleted"], "%A, %B %d, %Y %I:%M:%S").replace(tzinfo=UTC)
    iso = datetime.fromisoformat(job["timeCompletedISO"].replace("Z", "+00:00"))
    assert job["timeCompletedISO"].endswith("Z")
    assert abs(iso - datetime.now(UTC)) < timedelta(minutes=5)
    assert legacy.strftime("%M:%S") == iso.strftime("%M:%S")
    out = (tmp_path / "logs" / f"{job_id}.out").read_text()
    assert "AP_VISIT_ID=411371" in out and "undeclared" not in out
    assert (tmp_path / "logs" / f"{job_id}.err").exists()
    result = tmp_path / "output" / "ap_411371_56.txt"
    assert "filter=g" in result.read_text()


def test_javascript_and_form_encoded_submissions(client: TestClient, tmp_path: Path) -> None:
    body = ap_body(tmp_path, AP_VISIT_ID="7")
    js = client.post(
        JOB, content=json.dumps(body), headers={"Content-Type": "application/javascript"}
    )
    form = client.post(
        JOB, data={"type": "ap", "env": json.dumps(body["env"]), "log_dir": body["log_dir"]}
    )
    draft = [{"name": k, "value": v} for k, v in body["env"].items()]
    listed = client.post(
        JOB, data={"type": "ap", "env": json.dumps(draft), "log_dir": body["log_dir"]}
    )
    for response in (js, form, listed):
        assert ended(client, submitted(response))["job"]["phase"] == "completed"


# -- a.5.2 - a.5.4: rejected at submit time, no row left ----------------------------------------


def test_missing_env_vars_are_named(client: TestClient, tmp_path: Path) -> None:
    response = client.post(JOB, json=ap_body(tmp_path, AP_FILTER=None, AP_CCD_NUM=None))
    message = error_of(response)
    assert message == "missing required env var(s): AP_CCD_NUM, AP_FILTER"
    assert response.json()["field"] == "env.AP_CCD_NUM"
    assert no_jobs(client)


def test_unknown_type_is_a_clean_4xx(client: TestClient, tmp_path: Path) -> None:
    body = ap_body(tmp_path) | {"type": "nope"}
    assert error_of(client.post(JOB, json=body)).startswith("Invalid job type")
    assert error_of(client.post(JOB, json=body | {"type": 5})).startswith("Invalid job type")
    assert no_jobs(client)


@pytest.mark.parametrize("arg", ["type", "env", "log_dir"])
def test_missing_argument_is_named(client: TestClient, tmp_path: Path, arg: str) -> None:
    body = {k: v for k, v in ap_body(tmp_path).items() if k != arg}
    assert arg in error_of(client.post(JOB, json=body))
    form = {k: json.dumps(v) if k == "env" else v for k, v in body.items()}
    assert arg in error_of(client.post(JOB, data=form))
    assert no_jobs(client)


def test_bad_values_are_4xx(client: TestClient, tmp_path: Path) -> None:
    body = ap_body(tmp_path)
    assert "env" in error_of(client.post(JOB, data=body | {"env": "{not json"}))
    assert "env" in error_of(client.post(JOB, json=body | {"env": ["x"]}))
    bad_value = ap_body(tmp_path, AP_VISIT_ID={"a": 1})
    assert error_of(client.post(JOB, json=bad_value)).startswith("env.AP_VISIT_ID")
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert "log_dir" in error_of(client.post(JOB, json=body | {"log_dir": str(blocked / "x")}))
    assert error_of(client.post(JOB, content=b"[1]", headers={"Content-Type": "application/json"}))
    assert no_jobs(client)


# -- a.5.5: GET of waiting, unknown, malformed, missing ids --------------------------------------


def test_get_waiting_unknown_and_malformed(
    client: TestClient, jobmill: Jobmill, tmp_path: Path
) -> None:
    waiting = NewJob(
        type="ap",
        owner="tester",
        parameters={},
        executor="local",
        execution_duration=0,
        destruction_at=datetime.now(UTC) + timedelta(days=1),
        phase=Phase.QUEUED,
        reason=Reason.DATA.value,
    )
    job = jobmill.store.create([waiting], actor="tester")[0]
    data = client.get(JOB, params={"id": uuid.UUID(job.id).hex}).json()
    assert data["status"] == "ok"
    assert data["job"]["state"] == "init" and data["job"]["clusterId"] is None
    for bad in (uuid.uuid4().hex, "not-an-id", ""):
        response = client.get(JOB, params={"id": bad})
        assert response.status_code == 200
        assert response.json() == {"status": "error", "msg": "Job not found", "job": {}}
    assert "id" in error_of(client.get(JOB))


def test_state_vocabulary() -> None:
    expected = {
        "PENDING": "idle",
        "QUEUED": "idle",
        "EXECUTING": "running",
        "COMPLETED": "completed",
        "ERROR": "completed",
        "ABORTED": "removed",
        "HELD": "held",
        "SUSPENDED": "suspended",
        "UNKNOWN": "unknown",
        "ARCHIVED": "completed",
    }
    now = datetime.now(UTC)
    for phase in Phase:
        job = Job(
            id=str(uuid.uuid4()), type="ap", owner="u", phase=phase, parameters={}, created_at=now
        )
        assert ocps_state(job) == expected[phase.value]
    job.phase, job.reason = Phase.QUEUED, Reason.DATA.value
    assert ocps_state(job) == "init"
    assert cluster_id("12345@678") == 12345 and cluster_id("42") == 42
    assert cluster_id("17.0") == 17 and cluster_id(None) is None


def test_failure_and_abort_are_visible(client: TestClient, tmp_path: Path) -> None:
    failed = submitted(
        client.post(JOB, json={"type": "fail", "env": {"code": 4}, "log_dir": str(tmp_path)})
    )
    job = ended(client, failed)["job"]
    assert (job["state"], job["phase"], job["exitCode"]) == ("completed", "error", 4)
    slow = submitted(
        client.post(JOB, json={"type": "sleep", "env": {"SECONDS": 30}, "log_dir": str(tmp_path)})
    )
    assert client.post(f"/api/v1/jobs/{slow}/abort").status_code == 200
    job = ended(client, slow)["job"]
    assert job["state"] == "removed" and job["phase"] == "aborted" and "timeCompleted" in job


# -- a.5.10: per-job environments ---------------------------------------------------------------


def test_concurrent_jobs_see_only_their_own_environment(client: TestClient, tmp_path: Path) -> None:
    before = dict(os.environ)
    visits = ["1111", "2222"]
    with ThreadPoolExecutor(2) as pool:
        responses = list(
            pool.map(lambda v: client.post(JOB, json=ap_body(tmp_path, AP_VISIT_ID=v)), visits)
        )
    ids = [submitted(r) for r in responses]
    for job_id, mine, other in zip(ids, visits, reversed(visits), strict=True):
        assert ended(client, job_id)["job"]["phase"] == "completed"
        out = (tmp_path / "logs" / f"{job_id}.out").read_text()
        assert f"AP_VISIT_ID={mine}" in out and other not in out
    assert dict(os.environ) == before and "AP_VISIT_ID" not in os.environ


# -- a.5.12, a.5.13: job_specs.yaml, schema, configuration --------------------------------------


def test_job_specs_yaml_and_schema(client: TestClient) -> None:
    ap = load_jobtypes([EXAMPLES / "job_specs.yaml"])["ap"]
    assert list(ap.parameters) == AP_VARS
    assert all(p.required and p.deliver == "env" for p in ap.parameters.values())
    schema = client.get("/api/v1/schema/ap").json()
    assert schema["name"] == "ap" and [e["name"] for e in schema["env"]] == AP_VARS
    assert {"units", "default", "min", "max"} <= set(schema["env"][0])
    assert "ap" in [s["name"] for s in client.get("/api/v1/schema/all").json()]
    assert error_of(client.get("/api/v1/schema/nope"), 404).startswith("Invalid job type")


def test_api_basepath_is_honoured(jobmill: Jobmill, tmp_path: Path) -> None:
    moved = dataclasses.replace(jobmill, settings=jobmill.settings.with_(ocps_basepath="/ocps/v2"))
    with app_client(moved) as client:
        submitted(client.post("/ocps/v2/job", json=ap_body(tmp_path)))
        assert client.post(JOB, json=ap_body(tmp_path)).status_code in (404, 405)


def test_api_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "JOBMILL_PORT",
        "JOBMILL_PUBLIC_URL",
        "JOBMILL_HOST",
        "API_PORT",
        "API_BASEPATH",
        "API_DOMAIN",
        "API_PROTOCOL",
    ):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings.from_env()
    assert (defaults.port, defaults.ocps_basepath) == (8080, "/api/v1")
    assert defaults.callback_url.startswith("http://")
    monkeypatch.setenv("API_PORT", "9123")
    monkeypatch.setenv("API_BASEPATH", "ocps/v3/")
    monkeypatch.setenv("API_DOMAIN", "example.org")
    monkeypatch.setenv("API_PROTOCOL", "https")
    custom = Settings.from_env()
    assert (custom.port, custom.ocps_basepath) == (9123, "/ocps/v3")
    assert custom.callback_url == "https://example.org:9123"


# -- CORS and authentication ---------------------------------------------------------------------


def test_cors_headers_and_preflight(jobmill: Jobmill, client: TestClient, tmp_path: Path) -> None:
    """No CORS by default; ``JOBMILL_OCPS_CORS_ORIGINS=*`` restores the prototype's headers on
    every answer, errors included (tests/security/test_browser.py has the rest)."""
    origin = {"Origin": "https://portal.example.org"}
    for response in (client.options(JOB), client.get("/api/v1/schema/ap", headers=origin)):
        assert response.status_code in (200, 204)
        assert "access-control-allow-origin" not in response.headers
    opened = dataclasses.replace(jobmill, settings=jobmill.settings.with_(ocps_cors_origins=("*",)))
    with app_client(opened, start_engine=False) as wildcard:
        for path in (JOB, "/api/v1/schema/ap"):
            preflight = wildcard.options(path)
            assert preflight.status_code == 204
            assert CORS.items() <= preflight.headers.items()
        answers = [
            wildcard.post(JOB, json=ap_body(tmp_path)),
            wildcard.post(JOB, json={}),
            wildcard.get(JOB, params={"id": "x"}),
            wildcard.get("/api/v1/schema/ap"),
            wildcard.get(JOB, params={"id": "x"}, headers={"Authorization": "Bearer not-a-token"}),
        ]
        for response in answers:
            assert CORS.items() <= response.headers.items()


def test_bad_token_gets_the_ocps_envelope(client: TestClient, tmp_path: Path) -> None:
    headers = {"Authorization": "Bearer not-a-token"}
    for response in (
        client.post(JOB, json=ap_body(tmp_path), headers=headers),
        client.get(JOB, params={"id": "x"}, headers=headers),
    ):
        assert "token" in error_of(response, 401)
    assert no_jobs(client)


# -- the demo client, unchanged, against a real server -------------------------------------------


def test_demo_client_runs_four_jobs(live: LiveServer, tmp_path: Path) -> None:
    workdir = tmp_path / "client"
    workdir.mkdir()
    env = os.environ | {
        "API_PROTOCOL": "http",
        "API_DOMAIN": "127.0.0.1",
        "API_PORT": str(live.jobmill.settings.port),
        "API_BASEPATH": "/api/v1",
    }
    proc = subprocess.run(  # fixed argv
        [
            sys.executable,
            str(ROOT / "examples/ocps/client.py"),
            "--interval",
            "0.2",
            "--timeout",
            "60",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("POST /api/v1/job :") == 4
    assert proc.stdout.count('"state": "completed"') == 4
    assert len(list((workdir / "output").glob("ap_*.txt"))) == 4
    logs = live.jobmill.settings.home / "logs" / "tester" / "logs"  # under the caller's root
    assert len(list(logs.glob("*.out"))) == 4
    assert live.jobmill.store.count() == 4
