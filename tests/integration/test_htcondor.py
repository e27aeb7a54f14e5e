"""Jobs run for real in an HTCondor pool, through jobmill's API and its ``htcondor`` executor.

HTCondor refuses jobs owned by root, so these tests run only as an ordinary user:
``scripts/condor-tests.sh`` (``make test-condor``, and ``.ci/run`` after ``make test``) runs them as
``jobmill``. In the main pytest run, as root, they skip. As a user, they skip when the schedd cannot
be reached, except in CI (``CI=true``), where that fails them.

Jobs run where the pool puts them: in the CI pool, inside a chroot that sees only the host's
``/tmp``. So jobmill's home is under ``/tmp`` (pytest's ``tmp_path``), the job types' scripts are
copied there, and commands are ``python3`` (stdlib only), ``/bin/sh`` and ``curl``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from jobmill.config import Settings
from jobmill.domain.jobtypes import Resources
from jobmill.executors.base import ExecutorUnavailable, LaunchSpec
from jobmill.factory import Jobmill, build
from tests.conftest import EXAMPLES, IN_CI, LiveServer, free_port, wait_for, wait_phase

if os.geteuid() == 0:
    pytest.skip(
        "HTCondor refuses root-owned jobs: run by scripts/condor-tests.sh as the jobmill user",
        allow_module_level=True,
    )

POLL = 0.5
JOB_TIMEOUT = 90.0  # a job's way through negotiation, start and end in a small test pool

CURL = (
    "curl -fsS -H 'Content-Type: application/json'"
    ' -d "{{\\"counters\\": {{\\"files\\": $1}}}}" "$BATCH_UPDATE_URL"'
)  # braces doubled: the command is a str.format template
TYPES: dict[str, dict[str, Any]] = {
    "echo": {
        "command": ["python3", "{jobtype_dir}/echo.py", "{message}"],
        "parameters": {"message": {"type": "string", "required": True}},
        "results": [{"name": "echo", "pattern": "echo.txt", "content_type": "text/plain"}],
    },
    "fail": {
        "command": ["python3", "{jobtype_dir}/fail.py", "{code}"],
        "parameters": {"code": {"type": "integer", "default": 3}},
    },
    "sleep": {
        "command": ["python3", "{jobtype_dir}/sleep.py", "{seconds}", "{code}"],
        "parameters": {
            "seconds": {"type": "number", "default": 30},
            "code": {"type": "integer", "default": 0},
        },
    },
    "held": {
        "command": ["python3", "{jobtype_dir}/sleep.py", "{seconds}", "0"],
        "parameters": {"seconds": {"type": "number", "default": 2}},
        "resources": {"extra": ["hold = true"]},
    },
    "gated": {  # idle until a test opens its gate (Schedd.edit): a job to hold and release
        "command": ["python3", "{jobtype_dir}/sleep.py", "0", "0"],
        "resources": {
            "extra": ["+JobmillGate = false", "requirements = (MY.JobmillGate =?= true)"]
        },
    },
    "refused": {
        "command": ["python3", "{jobtype_dir}/sleep.py", "1", "0"],
        "resources": {"extra": ["universe = nonsense"]},
    },
    "counters": {
        "command": ["python3", "{jobtype_dir}/counters.py", "{interval}"],
        "parameters": {"interval": {"type": "number", "default": 0}},
    },
    "curl": {  # a constant shell script; the (integer) parameter arrives as $1
        "command": ["/bin/sh", "-c", CURL, "curl-report", "{files}"],
        "parameters": {"files": {"type": "integer", "required": True}},
    },
}


def _bindings() -> Any:
    try:
        import htcondor2
    except ImportError:
        return None
    return htcondor2


htcondor: Any = _bindings()


def _fail_or_skip(why: str) -> None:
    if IN_CI:
        pytest.fail(f"{why} (CI=true: the HTCondor tests must run)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def schedd() -> Any:
    """The pool's schedd; skips (fails in CI) when the bindings or the schedd are missing."""
    if htcondor is None:
        _fail_or_skip("the HTCondor bindings (htcondor2) are not installed")
    try:
        found = htcondor.Schedd()
        found.query(constraint="false", projection=["ClusterId"])
    except Exception as exc:  # noqa: BLE001 - any failure means: no pool here
        _fail_or_skip(f"the HTCondor schedd is not reachable: {exc}")
    return found


@pytest.fixture
def types_dir(tmp_path: Path) -> Path:
    types = tmp_path / "types"
    types.mkdir()
    for script in ("echo.py", "fail.py", "sleep.py", "counters.py"):
        shutil.copy(EXAMPLES / "scripts" / script, types / script)
    for name, body in TYPES.items():
        text = yaml.safe_dump({"name": name, "executor": "htcondor", **body}, sort_keys=False)
        (types / f"{name}.yaml").write_text(text)
    return types


@pytest.fixture
def settings(tmp_path: Path, db_url: str, types_dir: Path, schedd: Any) -> Settings:
    """Overrides conftest's: jobmill with the htcondor executor, its home under /tmp."""
    assert str(tmp_path).startswith("/tmp/"), "jobs in the CI pool see only /tmp"
    return Settings(
        home=tmp_path / "home",
        database_url=db_url,
        jobtypes=(str(types_dir),),
        port=free_port(),
        poll_interval=POLL,
        kill_grace=1.0,
        max_local_jobs=4,
        local_user="tester",
        executors=("local", "htcondor"),
        condor_schedd=os.environ.get("JOBMILL_CONDOR_SCHEDD") or None,
        condor_collector=os.environ.get("JOBMILL_CONDOR_COLLECTOR") or None,
        allowed_hosts=("testserver",),  # the Host TestClient sends
    )


@pytest.fixture(autouse=True)
def _no_leftovers(schedd: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Remove the jobs a test left in the pool (only this session's: their Iwd is ours)."""
    yield
    base = str(tmp_path_factory.getbasetemp()) + "/"
    mine = f'JobmillJobId =!= undefined && substr(Iwd, 0, {len(base)}) == "{base}"'
    if schedd.query(constraint=mine, projection=["ClusterId"]):
        schedd.act(htcondor.JobAction.Remove, mine, reason="test cleanup")


def submit(client: TestClient, type_: str, **parameters: object) -> dict[str, Any]:
    response = client.post("/api/v1/jobs", json={"type": type_, "parameters": parameters})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def native_id(client: TestClient, job_id: str) -> str:
    found = wait_for(
        lambda: client.get(f"/api/v1/jobs/{job_id}").json()["native_id"], timeout=JOB_TIMEOUT
    )
    return str(found)


def in_queue(schedd: Any, native: str) -> list[Any]:
    cluster, proc = native.split(".")
    return list(
        schedd.query(
            constraint=f"ClusterId == {cluster} && ProcId == {proc}", projection=["JobStatus"]
        )
    )


def events(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/api/v1/jobs/{job_id}/events").json()  # type: ignore[no-any-return]


# -- through jobmill ----------------------------------------------------------------------------


def test_echo_completes_with_result_log_and_exact_argv(
    client: TestClient, jobmill: Jobmill
) -> None:
    message = "hello; $(rm -rf /) 'quoted' \"double\" $$(Owner) $HOME $$$x 100% \\back\ttab"
    job = submit(client, "echo", message=message)
    done = wait_phase(client, job["id"], timeout=JOB_TIMEOUT)
    assert done["phase"] == "COMPLETED", client.get(f"/api/v1/jobs/{job['id']}/logs/stderr").text
    assert done["exit_code"] == 0
    assert done["executor"] == "htcondor"
    assert done["native_id"].count(".") == 1
    workdir = jobmill.jobs.files.workdir(job["id"])
    assert (workdir / "echo.txt").read_text() == message + "\n"
    assert client.get(f"/api/v1/jobs/{job['id']}/logs/stdout").text == message + "\n"
    names = [e["name"] for e in events(client, job["id"])]
    assert "submitted" in names and names[-1] == "complete", names
    assert (workdir / ".jobmill-condor.log").exists()  # the job event log
    details = jobmill.engine.executors["htcondor"].details(done["native_id"])
    assert f'JobmillJobId = "{job["id"]}"' in details


def test_ocps_job_has_its_event_log_in_log_dir_as_the_prototype(
    client: TestClient, jobmill: Jobmill
) -> None:
    """The OCPS prototype's submit description: ``log = <log_dir>/<job_id>.log``."""
    logs = jobmill.settings.home / "logs" / "tester" / "ocps"  # under the caller's log root
    body = {"type": "echo", "env": {"message": "hi"}, "log_dir": "ocps"}
    answer = client.post("/api/v1/job", json=body).json()
    assert answer["status"] == "ok", answer
    hex_id = answer["job_id"]
    done = wait_phase(client, hex_id, timeout=JOB_TIMEOUT)
    assert done["phase"] == "COMPLETED" and done["executor"] == "htcondor"
    assert (logs / f"{hex_id}.out").read_text() == "hi\n"
    event_log = (logs / f"{hex_id}.log").read_text()
    assert event_log.startswith("000 (") and "Job terminated" in event_log


def test_failure_keeps_exit_code_and_stderr(client: TestClient) -> None:
    job = submit(client, "fail", code=7)
    done = wait_phase(client, job["id"], timeout=JOB_TIMEOUT)
    assert done["phase"] == "ERROR"
    assert done["exit_code"] == 7
    assert "exit code 7" in done["error"]
    stderr = client.get(f"/api/v1/jobs/{job['id']}/logs/stderr").text
    assert "fails on purpose with exit code 7" in stderr


def test_abort_removes_the_job_from_the_schedd(client: TestClient, schedd: Any) -> None:
    job = submit(client, "sleep", seconds=120)
    wait_phase(client, job["id"], "EXECUTING", timeout=JOB_TIMEOUT)
    native = native_id(client, job["id"])
    response = client.post(f"/api/v1/jobs/{job['id']}/abort")
    assert response.status_code == 200
    assert response.json()["phase"] == "ABORTED"
    wait_for(lambda: not in_queue(schedd, native), timeout=30)
    history = schedd.history(
        constraint=f'JobmillJobId == "{job["id"]}"', projection=["JobStatus"], match=1
    )
    assert [ad["JobStatus"] for ad in history] == [3]  # removed
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["phase"] == "ABORTED"


def test_held_job_is_held_with_its_reason_until_released(client: TestClient, schedd: Any) -> None:
    job = submit(client, "held", seconds=3)
    held = wait_phase(client, job["id"], "HELD", timeout=JOB_TIMEOUT)
    assert held["phase"] == "HELD"
    hold = [e for e in events(client, job["id"]) if e["name"] == "hold"]
    assert hold and "hold" in hold[0]["data"]["why"].lower(), hold  # the schedd's HoldReason
    time.sleep(2 * POLL)
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["phase"] == "HELD"  # held stays held
    schedd.act(htcondor.JobAction.Release, [held["native_id"]])
    wait_phase(client, job["id"], "EXECUTING", timeout=JOB_TIMEOUT)
    done = wait_phase(client, job["id"], timeout=JOB_TIMEOUT)
    assert done["phase"] == "COMPLETED", done


def test_hold_and_release_through_jobmill_with_the_users_reason(
    client: TestClient, schedd: Any
) -> None:
    job = submit(client, "gated")
    native = native_id(client, job["id"])
    held = client.post(f"/api/v1/jobs/{job['id']}/hold")
    assert held.status_code == 200, held.text
    assert held.json()["phase"] == "HELD"  # recorded at once
    (ad,) = schedd.query(
        constraint=f'JobmillJobId == "{job["id"]}"', projection=["JobStatus", "HoldReason"]
    )
    assert ad["JobStatus"] == 5
    assert ad["HoldReason"].startswith("held through jobmill by tester")  # + " (by user X)"
    time.sleep(3 * POLL)  # the engine's polls agree: still HELD, one hold event
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["phase"] == "HELD"
    assert [e["name"] for e in events(client, job["id"])].count("hold") == 1
    details = client.get(f"/api/v1/jobs/{job['id']}/details").json()["details"]
    assert 'HoldReason = "held through jobmill by tester' in details

    released = client.post(f"/api/v1/jobs/{job['id']}/release")
    assert released.status_code == 200, released.text
    assert (released.json()["phase"], released.json()["reason"]) == ("QUEUED", "backend")
    assert [a["JobStatus"] for a in in_queue(schedd, native)] == [1]
    schedd.edit([native], "JobmillGate", "true")
    done = wait_phase(client, job["id"], timeout=JOB_TIMEOUT)
    assert done["phase"] == "COMPLETED", done


def test_a_running_job_is_not_held_and_keeps_running(
    client: TestClient, jobmill: Jobmill, schedd: Any
) -> None:
    job = submit(client, "sleep", seconds=120)
    wait_phase(client, job["id"], "EXECUTING", timeout=JOB_TIMEOUT)
    native = native_id(client, job["id"])
    refused = client.post(f"/api/v1/jobs/{job['id']}/hold")
    assert refused.status_code == 409 and refused.json()["error"]["phase"] == "EXECUTING"
    with pytest.raises(OSError, match="not idle"):  # the schedd refuses too: JobStatus == 1
        jobmill.jobs.backends["htcondor"].hold(native, "a race")  # type: ignore[attr-defined]
    assert [a["JobStatus"] for a in in_queue(schedd, native)] == [2]
    client.post(f"/api/v1/jobs/{job['id']}/abort")


def test_dry_run_renders_the_submit_description_and_submits_nothing(
    client: TestClient, jobmill: Jobmill
) -> None:
    answer = client.post(
        "/api/v1/jobs/render", json={"type": "echo", "parameters": {"message": "dry $(run)"}}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["executor"] == "htcondor"
    assert "universe = vanilla" in body["script"] and "$(DOLLAR)(run)" in body["script"]
    assert f'+JobmillJobId = "{body["job_id"]}"' in body["script"]
    assert jobmill.store.count() == 0
    assert not jobmill.jobs.files.workdir(body["job_id"]).exists()


def test_released_job_that_ends_between_two_polls_completes(
    client: TestClient, schedd: Any
) -> None:
    """Released and ended between two polls: HELD (maybe QUEUED) then COMPLETED, never stuck."""
    job = submit(client, "held", seconds=0)
    held = wait_phase(client, job["id"], "HELD", timeout=JOB_TIMEOUT)
    schedd.act(htcondor.JobAction.Release, [held["native_id"]])
    done = wait_phase(client, job["id"], timeout=JOB_TIMEOUT)
    assert (done["phase"], done["exit_code"]) == ("COMPLETED", 0), done
    phases = [e["to_phase"] for e in events(client, job["id"]) if e["to_phase"]]
    assert "HELD" in phases and phases[-1] == "COMPLETED", phases


def test_removed_outside_jobmill_is_aborted_within_two_polls(
    client: TestClient, schedd: Any
) -> None:
    job = submit(client, "sleep", seconds=120)
    wait_phase(client, job["id"], "EXECUTING", timeout=JOB_TIMEOUT)
    native = native_id(client, job["id"])
    started = time.monotonic()
    schedd.act(htcondor.JobAction.Remove, [native], reason="an operator's condor_rm")

    def ended() -> dict[str, Any] | None:
        data: dict[str, Any] = client.get(f"/api/v1/jobs/{job['id']}").json()
        return data if data["phase"] != "EXECUTING" else None

    done = wait_for(ended, timeout=10, interval=0.02)
    took = time.monotonic() - started
    assert done["phase"] == "ABORTED", done
    assert done["error"].startswith("removed from HTCondor"), done["error"]
    assert took <= 2 * POLL + 0.3, f"noticed after {took:.2f} s"


def test_vanished_job_is_lost(settings: Settings, jobmill: Jobmill, schedd: Any) -> None:
    with _app(jobmill) as client:
        job = submit(client, "sleep", seconds=120)
        native = native_id(client, job["id"])
    jobmill.close()
    schedd.act(htcondor.JobAction.Remove, [native])
    # A cluster id the schedd never gave out: in neither queue nor history.
    jobmill.store.record(job["id"], "test", actor="test", values={"native_id": "999999999.0"})
    again = build(settings)
    try:
        with _app(again) as client:
            # Two polls, each reading the whole history for an id it never gave out (seconds
            # on a pool with a long history and a busy host).
            done = wait_phase(client, job["id"], timeout=30)
    finally:
        again.close()
    assert done["phase"] == "ERROR"
    assert done["error"].startswith("lost:"), done["error"]


def test_restart_reattaches_by_native_id_and_by_jobmill_id(
    settings: Settings, jobmill: Jobmill, schedd: Any
) -> None:
    with _app(jobmill) as client:
        first = submit(client, "sleep", seconds=4)
        second = submit(client, "sleep", seconds=4, code=5)
        natives = [native_id(client, job["id"]) for job in (first, second)]
    jobmill.close()
    # As if jobmill had stopped between Schedd.submit and recording the cluster id.
    jobmill.store.record(second["id"], "test", actor="test", values={"native_id": None})
    again = build(settings)
    try:
        with _app(again) as client:
            done = [wait_phase(client, job["id"], timeout=JOB_TIMEOUT) for job in (first, second)]
    finally:
        again.close()
    assert [d["phase"] for d in done] == ["COMPLETED", "ERROR"]
    assert done[1]["exit_code"] == 5
    assert [d["native_id"] for d in done] == natives
    submitted = schedd.history(
        constraint=f'JobmillJobId == "{second["id"]}"', projection=["ClusterId"], match=5
    )
    assert len(submitted) == 1, "the job ran twice"


def test_jobs_report_progress_from_inside_the_pool(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url, headers=live.headers) as http:
        python = http.post("/api/v1/jobs", json={"type": "counters", "parameters": {}}).json()
        curl = http.post("/api/v1/jobs", json={"type": "curl", "parameters": {"files": 42}}).json()

        def ended(job_id: str) -> dict[str, Any] | None:
            data: dict[str, Any] = http.get(f"/api/v1/jobs/{job_id}").json()
            return data if data["phase"] in ("COMPLETED", "ERROR", "ABORTED") else None

        first = wait_for(lambda: ended(python["id"]), timeout=JOB_TIMEOUT)
        second = wait_for(lambda: ended(curl["id"]), timeout=JOB_TIMEOUT)
        stderr = http.get(f"/api/v1/jobs/{python['id']}/logs/stderr").text
        assert first["phase"] == "COMPLETED", stderr
        assert first["report"]["counters"]["Example Counter"] == [10, "red"]
        reports = [
            e
            for e in http.get(f"/api/v1/jobs/{python['id']}/events").json()
            if e["name"] == "report"
        ]
        assert len(reports) == 10
        assert second["phase"] == "COMPLETED", http.get(f"/api/v1/jobs/{curl['id']}/logs/stderr")
        assert second["report"]["counters"] == {"files": 42}


def test_execution_duration_stops_the_htcondor_job(client: TestClient, schedd: Any) -> None:
    response = client.post(
        "/api/v1/jobs",
        json={"type": "sleep", "parameters": {"seconds": 120}, "execution_duration": 2},
    )
    job = response.json()
    native = native_id(client, job["id"])
    done = wait_phase(client, job["id"], timeout=JOB_TIMEOUT)
    assert done["phase"] == "ERROR"
    assert done["error"] == "execution duration exceeded (2 s)"
    wait_for(lambda: not in_queue(schedd, native), timeout=30)


def test_what_htcondor_cannot_carry_fails_the_job_at_once(client: TestClient) -> None:
    for message in ("$(DOLLAR)", "two\nlines"):
        job = submit(client, "echo", message=message)
        done = wait_phase(client, job["id"], timeout=15)
        assert done["phase"] == "ERROR"
        assert done["error"].startswith("cannot start the job: HTCondor cannot pass"), done
        assert done["native_id"] is None
    job = submit(client, "refused")  # the schedd's submit language refuses it: no retry
    done = wait_phase(client, job["id"], timeout=15)
    assert done["phase"] == "ERROR"
    assert done["error"].startswith("cannot start the job: HTCondor refused the job"), done
    assert "'nonsense' universe" in done["error"]


def test_unreachable_schedd_keeps_jobs_queued(settings: Settings) -> None:
    jm = build(settings.with_(condor_collector="127.0.0.1:1"))
    try:
        with _app(jm) as client:
            job = submit(client, "sleep", seconds=1)

            def parked() -> dict[str, Any] | None:
                data: dict[str, Any] = client.get(f"/api/v1/jobs/{job['id']}").json()
                return data if data["reason"] == "backend unavailable" else None

            waiting = wait_for(parked, timeout=10)
            assert waiting["phase"] == "QUEUED"
            assert waiting["native_id"] is None
    finally:
        jm.close()


def _app(jm: Jobmill) -> Any:
    from tests.conftest import app_client

    return app_client(jm)


# -- the executor on its own --------------------------------------------------------------------


class CountingSchedd:
    """Passes every call to the real schedd and counts them by method."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.real, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return counted


def _spec(tmp_path: Path, n: int, argv: list[str], job_id: str) -> LaunchSpec:
    workdir = tmp_path / f"w{n}"
    return LaunchSpec(
        job_id=job_id,
        argv=argv,
        env={"PATH": "/usr/bin:/bin", "ODD": 'it\'s "odd" $$(Owner) $(HOME)'},
        workdir=workdir,
        stdout=workdir / "stdout.log",
        stderr=workdir / "stderr.log",
        resources=Resources(cpus=1, memory_mb=64),
    )


def test_executor_submit_many_and_one_query_per_poll(tmp_path: Path, schedd: Any) -> None:
    from jobmill.executors.htcondor import HTCondorExecutor

    counting = CountingSchedd(schedd)
    executor = HTCondorExecutor(connect=lambda: counting)
    show = "import os, sys; print(sys.argv[1:], os.environ['ODD'])"
    ids_ = ("11111111-0000-4000-8000-000000000000", "11111111-0000-4000-8000-000000000001")
    specs = [
        _spec(tmp_path, 0, ["python3", "-c", show, "a b", "$$(Owner)"], ids_[0]),
        _spec(tmp_path, 1, ["/bin/sh", "-c", "exit 4"], ids_[1]),
    ]
    ids = executor.submit_many(specs)
    assert counting.calls == {"submit": 1}
    assert [i.split(".")[0] for i in ids] == [ids[0].split(".")[0]] * 2, "one cluster"
    counting.calls.clear()
    statuses = executor.poll([*ids, "999999999.0"])
    assert counting.calls == {"query": 1, "history": 1}  # history only for the missing id
    assert statuses["999999999.0"].native_state == "missing"

    def ended() -> dict[str, Any] | None:
        got = executor.poll(ids)
        return got if all(s.phase.value in ("COMPLETED", "ERROR") for s in got.values()) else None

    final = wait_for(ended, timeout=JOB_TIMEOUT, interval=POLL)
    assert final[ids[0]].phase.value == "COMPLETED"
    assert (final[ids[1]].phase.value, final[ids[1]].exit_code) == ("ERROR", 4)
    out = (tmp_path / "w0" / "stdout.log").read_text()
    assert out == "['a b', '$$(Owner)'] it's \"odd\" $$(Owner) $(HOME)\n"
    assert executor.find(specs[1].job_id) == ids[1]
    lost = executor.poll(["999999999.0"])["999999999.0"]
    assert (lost.phase.value, lost.native_state) == ("ERROR", "lost")


def test_executor_errors_mean_unavailable(tmp_path: Path) -> None:
    from jobmill.executors.htcondor import HTCondorExecutor

    executor = HTCondorExecutor(collector="127.0.0.1:1")
    with pytest.raises(ExecutorUnavailable):
        executor.poll(["1.0"])
    with pytest.raises(ExecutorUnavailable):
        executor.submit(_spec(tmp_path, 0, ["/bin/true"], "22222222-0000-4000-8000-0"))
    with pytest.raises(ExecutorUnavailable):
        executor.cancel("1.0")
