"""The OCPS face: the prototype's wire formats and the acceptance checks of its feature row."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobmill.api.ocps import cluster_id, ocps_state
from jobmill.config import Settings
from jobmill.domain.jobs import Job, JobFilter, NewJob
from jobmill.domain.jobtype_files import load_jobtypes
from jobmill.domain.lifecycle import Phase, Reason
from jobmill.executors.base import LaunchSpec
from jobmill.executors.htcondor import EVENT_LOG, submit_commands
from jobmill.factory import Jobmill, build
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
SEED_SPECS = """\
type:
    # Alert Production pipeline: https://pipelines.lsst.io/v/daily/modules/lsst.ap.pipe/index.html
    ap:
        # The script to be executed by HTCondor
        script: "jobs/ap_job.sh"
        # Environment variables required by the job script
        env:
            - "AP_JOB_OUTPUT_DIR"
            - "AP_VISIT_ID"
            - "AP_CCD_NUM"
            - "AP_REPO"
            - "AP_TEMPLATE"
            - "AP_CALIB"
            - "AP_FILTER"
    # Additional job type definitions...
"""
"""The prototype's ``server/jobs/job_specs.yaml``, as its documentation shows it."""


@pytest.fixture
def seed_server(tmp_path: Path) -> Path:
    """The prototype's layout: ``server/jobs/job_specs.yaml`` and ``server/jobs/ap_job.sh``;
    the server runs in ``server/`` (where ``<job_id>.dat`` files appear)."""
    server = tmp_path / "server"
    (server / "jobs").mkdir(parents=True)
    (server / "jobs" / "job_specs.yaml").write_text(SEED_SPECS)
    script = server / "jobs" / "ap_job.sh"
    script.write_text((EXAMPLES / "scripts" / "ap_job.sh").read_text())
    script.chmod(0o755)
    return server


@pytest.fixture
def settings(
    settings: Settings, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Jobs run at once (``JOBMILL_OCPS_WAIT_FOR_DAT=off``), except in a test that asks for
    the prototype's own ``seed_server``: its defaults, run from its directory."""
    if "seed_server" not in request.fixturenames:
        return settings.with_(ocps_wait_for_dat=())
    server: Path = request.getfixturevalue("seed_server")
    monkeypatch.chdir(server)
    return settings.with_(
        jobtypes=(str(server / "jobs" / "job_specs.yaml"), str(EXAMPLES / "fail.yaml")),
        data_root=server,
        ocps_wait_for_dat=None,
    )


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
    assert set(data) - {"monitor_key"} == {"status", "msg", "job_id", "cluster_id"}
    assert data["status"] == "ok" and data["msg"] == "" and data["cluster_id"] is None
    assert HEX.match(data["job_id"])
    return str(data["job_id"])


def ended(client: TestClient, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        data = client.get(JOB, params={"id": job_id}).json()
        return data if data["job"].get("state") in ("completed", "error", "removed") else None

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
        "ERROR": "error",
        "ABORTED": "removed",
        "HELD": "held",
        "SUSPENDED": "suspended",
        "UNKNOWN": "unknown",
        "ARCHIVED": "error",  # no exit code recorded: not a success
    }
    now = datetime.now(UTC)
    for phase in Phase:
        job = Job(
            id=str(uuid.uuid4()), type="ap", owner="u", phase=phase, parameters={}, created_at=now
        )
        assert ocps_state(job) == expected[phase.value]
    job.phase, job.reason = Phase.QUEUED, Reason.DATA.value
    assert ocps_state(job) == "init"
    job.phase, job.reason, job.exit_code = Phase.ARCHIVED, None, 0
    assert ocps_state(job) == "completed"
    job.exit_code = 3
    assert ocps_state(job) == "error"
    assert cluster_id("12345@678") == 12345 and cluster_id("42") == 42
    assert cluster_id("17.0") == 17 and cluster_id(None) is None


def test_failure_and_abort_are_visible(client: TestClient, tmp_path: Path) -> None:
    failed = submitted(
        client.post(JOB, json={"type": "fail", "env": {"code": 4}, "log_dir": str(tmp_path)})
    )
    job = ended(client, failed)["job"]
    assert (job["state"], job["phase"], job["exitCode"]) == ("error", "error", 4)
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


# -- the prototype's own job_specs.yaml and four-job client, its defaults -----------------------


def test_seed_job_specs_and_client_unchanged_wait_for_dat_then_complete(
    seed_server: Path, live: LiveServer, tmp_path: Path
) -> None:
    """The seed's flow: ``script: jobs/ap_job.sh`` taken from the server's directory; the four
    jobs wait (``init``) for ``<job_id>.dat`` there, run when it appears, and end completed."""
    jm = live.jobmill
    assert jm.jobs.jobtypes["ap"].command == [str(seed_server / "jobs" / "ap_job.sh")]
    workdir = tmp_path / "client"
    workdir.mkdir()
    env = os.environ | {
        "API_PROTOCOL": "http",
        "API_DOMAIN": "127.0.0.1",
        "API_PORT": str(jm.settings.port),
        "API_BASEPATH": "/api/v1",
    }
    proc = subprocess.Popen(  # fixed argv
        [sys.executable, str(ROOT / "examples/ocps/client.py"), "--interval", "0.2"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        waiting = wait_for(
            lambda: (
                (jobs := jm.store.list(JobFilter(), limit=10))
                and len(jobs) == 4
                and all(j.reason == Reason.DATA.value for j in jobs)
                and jobs
            ),
            timeout=30,
        )
        time.sleep(0.5)  # the client polls: still waiting, nothing ran
        assert all(j.phase is Phase.QUEUED for j in jm.store.list(JobFilter(), limit=10))
        assert proc.poll() is None
        for job in waiting:  # as the seed's operator did: touch server/<job_id>.dat
            (seed_server / f"{uuid.UUID(job.id).hex}.dat").touch()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert " init" in out and out.count('"state": "completed"') == 4, out
    assert len(list((workdir / "output").glob("ap_*.txt"))) == 4


def test_job_specs_types_wait_by_default_others_do_not(
    seed_server: Path, client: TestClient, jobmill: Jobmill, tmp_path: Path
) -> None:
    answer = client.post(JOB, json=ap_body(tmp_path)).json()
    assert answer["status"] == "ok" and answer["monitor_key"]
    assert client.get(JOB, params={"id": answer["job_id"]}).json()["job"]["state"] == "init"
    failing = submitted(
        client.post(JOB, json={"type": "fail", "env": {"code": 3}, "log_dir": str(tmp_path)})
    )
    job = ended(client, failing)["job"]  # a jobmill-format type runs at once
    assert job["state"] == "error" and job["phase"] == "error" and job["exitCode"] == 3


def test_wait_for_dat_setting_overrides_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBMILL_OCPS_WAIT_FOR_DAT", raising=False)
    assert Settings.from_env(None).ocps_wait_for_dat is None  # job_specs.yaml types wait
    for value, expected in (("off", ()), ("all", ("*",)), ("ap,calib", ("ap", "calib"))):
        monkeypatch.setenv("JOBMILL_OCPS_WAIT_FOR_DAT", value)
        assert Settings.from_env(None).ocps_wait_for_dat == expected
    monkeypatch.setenv("JOBMILL_OCPS_WAIT_FOR_DAT", "specs")
    assert Settings.from_env(None).ocps_wait_for_dat is None
    monkeypatch.setenv("JOBMILL_OCPS_MONITOR_JOB_ID", "true")
    assert Settings.from_env(None).ocps_monitor_job_id is True


@pytest.mark.parametrize("allow", [False, True])
def test_monitor_complete_takes_the_job_id_only_when_allowed(
    seed_server: Path, jobmill: Jobmill, tmp_path: Path, allow: bool
) -> None:
    moved = dataclasses.replace(jobmill, settings=jobmill.settings.with_(ocps_monitor_job_id=allow))
    with app_client(moved) as api:
        answer = api.post(JOB, json=ap_body(tmp_path)).json()
        job_id = answer["job_id"]
        monitor = "/api/v1/monitor/complete"
        # the seed's monitor.py: GET <api_url>?id=<job_id>, no token
        released = api.get(monitor, params={"id": job_id}, headers={"Authorization": ""}).json()
        if not allow:
            assert released == {"status": "error", "msg": "Unknown key", "cluster_id": None}
            assert api.get(JOB, params={"id": job_id}).json()["job"]["state"] == "init"
            released = api.get(monitor, params={"id": answer["monitor_key"]}).json()
        assert released["status"] == "ok" and released["msg"] == ""
        assert ended(api, job_id)["job"]["state"] == "completed"
        again = api.get(monitor, params={"id": job_id}).json()
        assert again["status"] == ("ok" if allow else "error")
        # a job that was never issued a key cannot be released by its id
        plain = submitted(
            api.post(JOB, json={"type": "fail", "env": {"code": 0}, "log_dir": str(tmp_path)})
        )
        refused = api.get(monitor, params={"id": plain}).json()
        assert refused["status"] == "error"


# -- the successor service and the draft spec: PUT, GET and DELETE /job/{id}; cluster ids -------

DONE_PHASES = ("completed", "error", "aborted", "unknown")  # what dm_OCPS's CSC stops on
COMMAND_TYPES = ROOT / "examples" / "ocps" / "command"


@pytest.fixture
def commands(jobmill: Jobmill) -> Iterator[Jobmill]:
    """A jobmill that runs the successor's commands with the example ``uws-command`` type."""
    settings = jobmill.settings.with_(
        jobtypes=(*jobmill.settings.jobtypes, str(COMMAND_TYPES)),
        ocps_command_type="uws-command",
    )
    jm = build(settings)
    yield jm
    jm.close()


def git_repository(path: Path) -> str:
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git[:3], "init", "--quiet", "-b", "main"], check=True)
    (path / "README").write_text("the pipeline scripts\n")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "first"], check=True)
    return f"file://{path}"


def poll_like_the_csc(api: TestClient, job_id: str) -> dict[str, Any]:
    """dm_OCPS: GET {url}/job/{job_id} until a done phase, checking the id it echoes."""

    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = api.get(f"{JOB}/{job_id}").json()
        assert job["jobId"] == job_id
        return job if job["phase"] in DONE_PHASES else None

    result: dict[str, Any] = wait_for(done, timeout=30)
    return result


def test_put_job_as_the_production_csc_sends_it(commands: Jobmill, tmp_path: Path) -> None:
    url = git_repository(tmp_path / "uws_scripts")
    body = {
        "run_id": "17",
        "command": 'cd $JOB_SOURCE_DIR && cat README > "$JOB_OUTPUT_DIR/got.txt" && '
        'echo "$PIPELINE_URL $DATA_QUERY $JOB_ID" >> "$JOB_OUTPUT_DIR/got.txt"',
        "url": url,
        "commit_ref": "main",
        "environment": [
            {"name": "PIPELINE_URL", "value": "$AP_PIPE_DIR/pipelines/ApPipe.yaml"},
            {"name": "DATA_QUERY", "value": "exposure IN (1, 2)"},
        ],
    }
    with app_client(commands) as api:
        created = api.put(JOB, json=body)
        assert created.status_code == 200, created.text
        job = created.json()
        assert HEX.match(job["jobId"]) and job["runId"] == "17"
        assert job["phase"] in ("pending", "queued", "executing")
        assert job["parameters"]["environment"][1] == body["environment"][1]
        final = poll_like_the_csc(api, job["jobId"])
        assert final["phase"] == "completed", final
        assert final["endTime"] and final["errorSummary"] == {"message": ""}
        assert api.get(f"{JOB}/{job['jobId']}/phase").text == "completed"
        got = commands.jobs.files.workdir(str(uuid.UUID(job["jobId"]))) / "out" / "got.txt"
        assert got.read_text() == (
            "the pipeline scripts\n"
            f"$AP_PIPE_DIR/pipelines/ApPipe.yaml exposure IN (1, 2) {job['jobId']}\n"
        )
        failing = api.put(JOB, json={"command": "exit 4"}).json()
        final = poll_like_the_csc(api, failing["jobId"])
        assert final["phase"] == "error" and final["jobInfo"]["exitCode"] == 4


def test_delete_job_aborts_and_removes_it(commands: Jobmill, tmp_path: Path) -> None:
    with app_client(commands) as api:
        job = api.put(JOB, json={"command": "sleep 60"}).json()
        wait_for(lambda: api.get(f"{JOB}/{job['jobId']}").json()["phase"] == "executing")
        deleted = api.delete(f"{JOB}/{job['jobId']}")
        assert deleted.status_code == 200 and deleted.json()["phase"] == "aborted"
        gone = api.get(f"{JOB}/{job['jobId']}")
        assert gone.status_code == 404 and gone.json()["status"] == "error"
        assert api.get(JOB, params={"id": job["jobId"]}).json()["msg"] == "Job not found"
        assert api.delete(f"{JOB}/{job['jobId']}").status_code == 404
        # the prototype's jobs too (the draft spec's DELETE /job/{job_id})
        ap = submitted(api.post(JOB, json=ap_body(tmp_path)))
        assert api.delete(f"{JOB}/{ap}").status_code == 200
        assert api.get(JOB, params={"id": ap}).json()["msg"] == "Job not found"


def test_put_job_refusals(client: TestClient, commands: Jobmill, tmp_path: Path) -> None:
    refused = client.put(JOB, json={"command": "true"})  # no command type configured
    assert "JOBMILL_OCPS_COMMAND_TYPE" in error_of(refused)
    assert refused.json()["field"] == "command"
    commands.store.tokens.add("alice", "alice-secret", admin=False)
    with app_client(commands) as api:
        alice = {"Authorization": "Bearer alice-secret"}
        assert "administrator" in error_of(
            api.put(JOB, json={"command": "true"}, headers=alice), 403
        )
        for body, field in (
            ({"command": ""}, "command"),
            ({"command": "true", "replicas": 2}, "replicas"),
            ({"command": "true", "image": "x"}, "image"),
            ({"command": "true", "environment": {"A": "1"}}, "environment"),
            ({"command": "true", "run_id": 5}, "run_id"),
        ):
            assert api.put(JOB, json=body).json()["field"] == field
        assert commands.store.count() == 0
        # the draft spec's PUT: type and env as a list; answered as POST
        draft = {
            "type": "ap",
            "env": [{"name": k, "value": v} for k, v in ap_body(tmp_path)["env"].items()],
        }
        job_id = submitted(api.put(JOB, json=draft))
        assert ended(api, job_id)["job"]["phase"] == "completed"


def test_get_by_cluster_id_as_the_earliest_prototype_client(
    client: TestClient, tmp_path: Path
) -> None:
    job_id = submitted(client.post(JOB, json=ap_body(tmp_path)))
    job = ended(client, job_id)["job"]
    by_cluster = client.get(JOB, params={"id": str(job["clusterId"])}).json()
    assert by_cluster["status"] == "ok" and by_cluster["job"]["jobId"] == job_id
    missing = client.get(JOB, params={"id": "999999999"}).json()
    assert missing == {"status": "error", "msg": "Job not found", "job": {}}


def test_htcondor_event_log_is_the_prototypes_log_dir_file(tmp_path: Path) -> None:
    hex_id = uuid.uuid4().hex
    spec = LaunchSpec(
        job_id=str(uuid.UUID(hex_id)),
        argv=["/bin/true"],
        env={},
        workdir=tmp_path / "work",
        stdout=tmp_path / "logs" / f"{hex_id}.out",
        stderr=tmp_path / "logs" / f"{hex_id}.err",
    )
    commands = dict(submit_commands(spec))
    assert commands["log"] == str(tmp_path / "logs" / f"{hex_id}.log")
    plain = dataclasses.replace(spec, stdout=spec.workdir / "stdout.log")
    assert dict(submit_commands(plain))["log"] == str(spec.workdir / EVENT_LOG)
