"""The executor contract: the same scenarios, through the jobmill API, on every executor that can
run here (DESIGN rule 3).

Success with a result file and logs, a failure's exit code, abort, an execution duration
exceeded, held and released (where the backend has holds), a job the backend lost, and
re-attaching after a restart. Each executor is one ``Backend`` entry in ``BACKENDS``: to add
one, write its entry (how to tell it is available, its settings, the YAML that sends a job
type to it, and a few backend-side helpers) and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from jobmill.config import Settings
from jobmill.factory import Jobmill, build
from tests.conftest import EXAMPLES, app_client, require_service, wait_for, wait_phase
from tests.integration.test_slurm import slurm_available

SCRIPTS = EXAMPLES / "scripts"
POLL = 0.5


@dataclass(frozen=True)
class Backend:
    """One executor the contract runs on."""

    name: str
    available: Callable[[], bool]
    what: str  # named in the skip (or CI failure) message when it is not available
    settings: Callable[[Settings], Settings]  # settings that enable it
    jobtype_yaml: str  # appended to every job type: sends it to this executor
    never_a_job: str  # a native id the backend never gave out
    stopped: Callable[[str], bool]  # the native job no longer runs
    cleanup: Callable[[str], None]  # stop a native job a scenario left behind
    held_yaml: str | None = None  # appended to a job type whose jobs start held; None: no holds
    release: Callable[[str], None] | None = None  # release a held native job


# -- local ----------------------------------------------------------------------------------


def _local_pid(native: str) -> int:
    return int(native.split("@")[0])


def _local_stopped(native: str) -> bool:
    try:
        with open(f"/proc/{_local_pid(native)}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _local_cleanup(native: str) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(_local_pid(native), signal.SIGKILL)


# -- slurm ----------------------------------------------------------------------------------


def _slurm_state(native: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", native, "-o", "%T"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return out.stdout.strip()


def _slurm(*argv: str) -> None:
    subprocess.run(list(argv), capture_output=True, timeout=20, check=False)


BACKENDS = [
    Backend(
        name="local",
        available=lambda: True,
        what="the local executor",
        settings=lambda s: s,
        jobtype_yaml="executor: local\n",
        never_a_job="999999999@1",
        stopped=_local_stopped,
        cleanup=_local_cleanup,
    ),
    Backend(
        name="slurm",
        available=slurm_available,
        what="Slurm (sinfo)",
        settings=lambda s: s.with_(executors=("local", "slurm"), slurm_lost_after=2.0),
        jobtype_yaml="executor: slurm\n",
        never_a_job="66999999",
        stopped=lambda native: (
            _slurm_state(native)
            not in ("PENDING", "RUNNING", "COMPLETING", "SUSPENDED", "CONFIGURING", "")
        ),
        cleanup=lambda native: _slurm("scancel", native),
        held_yaml="resources:\n  extra: ['--hold']\n",
        release=lambda native: _slurm("scontrol", "release", native),
    ),
]


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS, ids=lambda backend: backend.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.param
    require_service(chosen.available(), chosen.what)
    return chosen


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobmill.db'}"


def write_jobtypes(directory: Path, backend: Backend) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    py = "python3"
    types: dict[str, dict[str, object]] = {
        "c-echo": {
            "command": [py, f"{SCRIPTS}/echo.py", "{message}"],
            "parameters": {"message": {"type": "string", "required": True}},
            "results": [{"name": "echo", "pattern": "echo.txt", "content_type": "text/plain"}],
        },
        "c-fail": {
            "command": [py, f"{SCRIPTS}/fail.py", "{code}"],
            "parameters": {"code": {"type": "integer", "default": 3}},
        },
        "c-sleep": {
            "command": [py, f"{SCRIPTS}/sleep.py", "{seconds}", "{code}"],
            "parameters": {
                "seconds": {"type": "number", "default": 30},
                "code": {"type": "integer", "default": 0},
            },
        },
    }
    if backend.held_yaml is not None:
        types["c-held"] = {"command": [py, f"{SCRIPTS}/sleep.py", "0", "0"]}
    for name, body in types.items():
        text = yaml.safe_dump({"name": name, **body}, sort_keys=False) + backend.jobtype_yaml
        if name == "c-held" and backend.held_yaml is not None:
            text += backend.held_yaml
        (directory / f"{name}.yaml").write_text(text)
    return directory


@pytest.fixture
def contract_settings(settings: Settings, tmp_path: Path, backend: Backend) -> Settings:
    types = write_jobtypes(tmp_path / "types", backend)
    return backend.settings(settings.with_(jobtypes=(str(types),), poll_interval=POLL))


@contextmanager
def running(settings: Settings) -> Iterator[tuple[Jobmill, TestClient]]:
    jm = build(settings)
    try:
        with app_client(jm) as client:
            yield jm, client
    finally:
        jm.close()


@pytest.fixture
def api(contract_settings: Settings) -> Iterator[TestClient]:
    with running(contract_settings) as (_jm, client):
        yield client


def submit(client: TestClient, type_: str, **body: object) -> str:
    parameters = body.pop("parameters", {})
    response = client.post("/api/v1/jobs", json={"type": type_, "parameters": parameters, **body})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def job(client: TestClient, job_id: str) -> dict:  # type: ignore[type-arg]
    return client.get(f"/api/v1/jobs/{job_id}").json()  # type: ignore[no-any-return]


def executing(client: TestClient, job_id: str) -> str:
    """Wait until the job runs; its native id."""
    wait_phase(client, job_id, "EXECUTING", timeout=30)
    return str(wait_for(lambda: job(client, job_id)["native_id"], timeout=10))


# -- the scenarios --------------------------------------------------------------------------


def test_success_with_result_file_and_logs(api: TestClient) -> None:
    message = "hello; $(rm -rf /) 'quoted' `id`"
    job_id = submit(api, "c-echo", parameters={"message": message})
    done = wait_phase(api, job_id, timeout=30)
    assert (done["phase"], done["exit_code"]) == ("COMPLETED", 0), done
    results = api.get(f"/api/v1/jobs/{job_id}/results").json()
    assert "echo" in str(results)
    assert api.get(f"/api/v1/jobs/{job_id}/logs/stdout").text == message + "\n"


def test_failure_keeps_the_exit_code_and_stderr(api: TestClient) -> None:
    job_id = submit(api, "c-fail", parameters={"code": 7})
    done = wait_phase(api, job_id, timeout=30)
    assert (done["phase"], done["exit_code"]) == ("ERROR", 7), done
    assert "exit code 7" in done["error"]
    stderr = api.get(f"/api/v1/jobs/{job_id}/logs/stderr").text
    assert "fails on purpose with exit code 7" in stderr


def test_abort_stops_the_native_job(api: TestClient, backend: Backend) -> None:
    job_id = submit(api, "c-sleep", parameters={"seconds": 60})
    native = executing(api, job_id)
    wait_for(
        lambda: "sleeping 60" in api.get(f"/api/v1/jobs/{job_id}/logs/stdout").text, timeout=15
    )  # logs are readable while the job runs
    try:
        answer = api.post(f"/api/v1/jobs/{job_id}/abort")
        assert answer.status_code == 200 and answer.json()["phase"] == "ABORTED"
        wait_for(lambda: backend.stopped(native), timeout=20)
        time.sleep(2 * POLL)
        assert job(api, job_id)["phase"] == "ABORTED"
    finally:
        backend.cleanup(native)


def test_execution_duration_exceeded_is_an_error(api: TestClient, backend: Backend) -> None:
    job_id = submit(api, "c-sleep", parameters={"seconds": 60}, execution_duration=2)
    done = wait_phase(api, job_id, timeout=40)
    try:
        assert done["phase"] == "ERROR", done
        assert done["error"] == "execution duration exceeded (2 s)"
        wait_for(lambda: backend.stopped(done["native_id"]), timeout=20)
    finally:
        backend.cleanup(done["native_id"])


@pytest.mark.parametrize(
    "backend",
    [b for b in BACKENDS if b.held_yaml is not None and b.release is not None],
    ids=lambda backend: backend.name,
    indirect=True,
)  # executors without holds (local) have no case here, rather than a skipped one
def test_held_then_released(api: TestClient, backend: Backend) -> None:
    assert backend.release is not None
    job_id = submit(api, "c-held")
    wait_phase(api, job_id, "HELD", timeout=30)
    native = str(job(api, job_id)["native_id"])
    time.sleep(2 * POLL)
    assert job(api, job_id)["phase"] == "HELD"  # held stays held
    backend.release(native)
    done = wait_phase(api, job_id, timeout=30)
    assert done["phase"] == "COMPLETED", done


def test_a_job_the_backend_lost_is_an_error(contract_settings: Settings, backend: Backend) -> None:
    with running(contract_settings) as (jm, client):
        job_id = submit(client, "c-sleep", parameters={"seconds": 30})
        real = executing(client, job_id)
    try:
        # Between two jobmill processes the native job vanished (purged, or never existed).
        jm.store.record(job_id, "test", actor="test", values={"native_id": backend.never_a_job})
        with running(contract_settings) as (_jm, client):
            done = wait_phase(client, job_id, timeout=30)
    finally:
        backend.cleanup(real)
    assert done["phase"] == "ERROR", done
    assert done["error"].startswith("lost"), done["error"]


def test_restart_reattaches_and_the_job_finishes(contract_settings: Settings) -> None:
    with running(contract_settings) as (_jm, client):
        job_id = submit(client, "c-sleep", parameters={"seconds": 3, "code": 4})
        native = executing(client, job_id)
    with running(contract_settings) as (_jm, client):
        done = wait_phase(client, job_id, timeout=30)
        events = client.get(f"/api/v1/jobs/{job_id}/events").json()
    assert (done["phase"], done["exit_code"], done["native_id"]) == ("ERROR", 4, native), done
    assert [e["data"]["native_id"] for e in events if "native_id" in e["data"]] == [native]
