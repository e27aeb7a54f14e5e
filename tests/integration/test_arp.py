"""The ARP face (SLAC's Automatic Run Processor): the acceptance checks of its feature row.

Numbers in comments refer to the checks b.5.1-b.5.12 of the ARP feature row. The definitions'
executable is a small Python script (stdlib only, like the seed's ``submit.py``) written into
``tmp_path``: it prints its argv and environment as one JSON line, posts counters to
``BATCH_UPDATE_URL`` ten times, and can wait for a gate file before it ends.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from jobmill.domain.arp import definition_jobtype, status_names
from jobmill.domain.jobs import Job, utcnow
from jobmill.domain.jobtypes import build_argv
from jobmill.domain.lifecycle import Phase, Reason
from jobmill.factory import Jobmill, build
from jobmill.service.jobs import JobRequest, User
from tests.conftest import LiveServer, app_client, wait_for

EXP = "xppi0915"
API = f"/api/v1/arp/experiments/{EXP}"
ENV_KEYS = ["BATCH_UPDATE_URL", "ARP_UPDATE_COUNTERS", "JID_UPDATE_COUNTERS", "EXPERIMENT",
            "RUN_NUM", "ARP_JOB_ID", "JOBMILL_JOB_ID", "JOBMILL_TOKEN"]  # fmt: skip

SCRIPT = """#!{python}
import json, os, random, string, sys, time, urllib.request

POST, WAIT, CODE, GATES = {post!r}, {wait!r}, {code!r}, {gates!r}
print(json.dumps({{"argv": sys.argv, "env": {{k: os.environ.get(k) for k in {keys!r}}}}}),
      flush=True)
url = os.environ.get("BATCH_UPDATE_URL")


def post(body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={{"Content-Type": "application/json"}})
    urllib.request.urlopen(request, timeout=10).read()


if POST:
    for i in range(10):
        char = random.choice(string.ascii_uppercase)
        print("Step: %d, %s" % (i + 1, char), flush=True)
        post({{"counters": {{"Example Counter": [i + 1, "red"], "Random Char": char}}}})
    post({{"counters": {{"Other": 5}}}})
    post({{"status": "custom"}})
    post([{{"key": "Last Event", "value": 920}}])
if WAIT:
    gate = os.path.join(GATES, "go-" + sys.argv[2])
    deadline = time.time() + 60
    while not os.path.exists(gate) and time.time() < deadline:
        time.sleep(0.05)
sys.exit(CODE)
"""


def write_script(
    directory: Path, name: str = "submit.py", *, post: bool = False, wait: bool = False,
    code: int = 0,
) -> str:  # fmt: skip
    """An executable script (absolute path) in ``directory``."""
    gates = directory / "gates"
    gates.mkdir(exist_ok=True)
    path = directory / name
    script = SCRIPT.format(
        python=sys.executable, post=post, wait=wait, code=code, gates=str(gates), keys=ENV_KEYS
    )
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def open_gate(executable: str, run: int) -> None:
    (Path(executable).parent / "gates" / f"go-{run}").touch()


def define(
    http: Any, name: str, executable: str, parameters: str = "", *, headers: Any = None,
    **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    body = {"name": name, "executable": executable, "parameters": parameters, **extra}
    response = http.post(f"{API}/definitions", json=body, headers=headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def apply(http: Any, run: int, name: str, headers: Any = None) -> dict[str, Any]:
    response = http.post(f"{API}/runs/{run}/apply", json={"definition": name}, headers=headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def entry(http: Any, job_id: str, headers: Any = None) -> dict[str, Any]:
    response = http.get(f"{API}/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def wait_status(http: Any, job_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
    wanted = set(statuses or ("DONE", "EXIT"))

    def reached() -> dict[str, Any] | None:
        current = entry(http, job_id)
        return current if current["status"] in wanted else None

    result: dict[str, Any] = wait_for(reached, timeout)
    return result


def wait_running(http: Any, job_id: str) -> dict[str, Any]:
    """RUN, with the backend id known (a local job runs a moment before its pid is stored)."""

    def started() -> dict[str, Any] | None:
        current = entry(http, job_id)
        return current if current["status"] == "RUN" and current["lsf_id"] else None

    result: dict[str, Any] = wait_for(started, 30)
    return result


def first_line(http: Any, job_id: str) -> dict[str, Any]:
    def printed() -> dict[str, Any] | None:
        response = http.get(f"{API}/jobs/{job_id}/log")
        if response.status_code != 200 or b"\n" not in response.content:
            return None
        line: dict[str, Any] = json.loads(response.text.splitlines()[0])
        return line

    result: dict[str, Any] = wait_for(printed, 30)
    return result


def error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    return body


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens(jobmill: Jobmill) -> dict[str, dict[str, str]]:
    secrets = {"alice": "alice-token", "bob": "bob-token", "root": "root-token"}
    jobmill.store.tokens.add("alice", secrets["alice"], admin=False)
    jobmill.store.tokens.add("bob", secrets["bob"], admin=False)
    jobmill.store.tokens.add("root", secrets["root"], admin=True)
    return {name: auth(secret) for name, secret in secrets.items()}


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30, headers=live.headers) as client:
        yield client


# -- b.5.1: definitions ------------------------------------------------------------------------


def test_definition_listed_with_an_id_and_bad_ones_refused(
    client: TestClient, tokens: dict[str, dict[str, str]]
) -> None:
    body = {"hash": "example", "executable": "/abs/submit.sh", "parameters": "param1 param2",
            "autorun": False}  # fmt: skip
    created = client.post(f"{API}/definitions", json=body)
    assert created.status_code == 201, created.text
    definition = created.json()
    assert isinstance(definition["id"], int)
    assert definition["name"] == definition["hash"] == "example"
    assert definition["parameters"] == "param1 param2" and definition["autorun"] is False
    assert definition["job_type"] == f"arp:{EXP}:example"
    assert created.headers["Location"].endswith("/definitions/example")
    assert client.get(f"{API}/definitions").json() == [definition]
    assert client.get(f"{API}/definitions/example").json() == definition

    duplicate = client.post(f"{API}/definitions", json=body)
    assert error(duplicate, 409)["field"] == "name"
    relative = client.post(
        f"{API}/definitions", json=body | {"hash": "rel", "executable": "bin/submit.sh"}
    )
    assert error(relative, 422)["field"] == "executable"
    assert "absolute" in error(relative, 422)["message"]
    nameless = client.post(f"{API}/definitions", json={"executable": "/bin/true"})
    assert error(nameless, 422)["field"] == "name"
    bad_name = client.post(f"{API}/definitions", json={"name": "a b", "executable": "/bin/true"})
    assert error(bad_name, 422)["field"] == "name"
    unknown = client.post(f"{API}/definitions", json=body | {"hash": "x", "colour": "red"})
    assert error(unknown, 422)["field"] == "colour"
    executor = client.post(f"{API}/definitions", json=body | {"hash": "y", "executor": "lsf"})
    assert error(executor, 422)["field"] == "executor"
    bad_experiment = client.post("/api/v1/arp/experiments/a:b/definitions", json=body)
    assert error(bad_experiment, 422)["field"] == "experiment"
    # Running any executable is an administrator's decision, as declaring a job type is.
    by_user = client.post(f"{API}/definitions", json=body | {"hash": "mine"},
                          headers=tokens["alice"])  # fmt: skip
    assert error(by_user, 403)["field"] == "executable"
    assert [d["name"] for d in client.get(f"{API}/definitions").json()] == ["example"]

    # Definitions are implicit job types: not listed with the declared ones, not submittable.
    assert not any(t["name"].startswith("arp:") for t in client.get("/api/v1/jobtypes").json())
    native = client.post(
        "/api/v1/jobs",
        json={"type": f"arp:{EXP}:example", "parameters": {"experiment": EXP, "run": 1}},
    )
    assert error(native, 422)["field"] == "type"

    assert client.delete(f"{API}/definitions/example", headers=tokens["alice"]).status_code == 403
    assert client.delete(f"{API}/definitions/example").status_code == 204
    assert client.get(f"{API}/definitions").json() == []
    assert error(client.delete(f"{API}/definitions/example"), 404)["field"] == "name"


def test_definition_jobtype_keeps_parameters_literal() -> None:
    from jobmill.domain.arp import Definition

    definition = Definition(1, EXP, "odd", "/opt/{x}/run.sh", "a {b} --c='d e'  $HOME",
                            "local", "root", utcnow())  # fmt: skip
    jobtype = definition_jobtype(definition)
    assert jobtype.name == f"arp:{EXP}:odd"
    argv = build_argv(jobtype, {"experiment": EXP, "run": 7}, {})
    assert argv[4:] == ["/opt/{x}/run.sh", EXP, "7", "a", "{b}", "--c='d", "e'", "$HOME"]


# -- b.5.2, b.5.5, b.5.11: apply, argv and environment, counters, status ----------------------


def test_apply_runs_the_executable_and_reports_counters(http: httpx.Client, tmp_path: Path) -> None:
    executable = write_script(tmp_path, post=True, wait=True)
    define(http, "example", executable, "param1 param2")
    applied = apply(http, 134261, "example")
    job_id = applied["job_id"]
    assert applied["status"] == "Request Sent" and applied["workflow_status"] == "START"
    assert applied["run_num"] == 134261 and applied["hash"] == "example"
    assert applied["counters"] == {}

    printed = first_line(http, job_id)
    assert printed["argv"] == [executable, EXP, "134261", "param1", "param2"]
    env = printed["env"]
    assert env["EXPERIMENT"] == EXP and env["RUN_NUM"] == "134261"
    assert env["ARP_JOB_ID"] == env["JOBMILL_JOB_ID"] == job_id
    url = env["BATCH_UPDATE_URL"]
    assert url.startswith(f"{http.base_url}".rstrip("/") + f"/api/v1/jobs/{job_id}/report?token=")
    assert env["ARP_UPDATE_COUNTERS"] == env["JID_UPDATE_COUNTERS"] == url
    assert env["JOBMILL_TOKEN"] in url

    running = wait_running(http, job_id)
    assert running["workflow_status"] == "RUNNING" and running["lsf_id"]

    def counted() -> dict[str, Any] | None:
        current = entry(http, job_id)
        return current if "Last Event" in current["counters"] else None

    current = wait_for(counted, 30)
    counters = current["counters"]
    assert counters["Example Counter"] == [10, "red"]  # the last value and its colour
    assert len(counters["Random Char"]) == 1
    assert counters["Other"] == 5  # a partial post kept the others (per-name merge)
    assert counters["Last Event"] == 920  # the list form
    assert current["reported_status"] == "custom"  # the job's own "status", beside ours
    assert current["status"] == "RUN"

    open_gate(executable, 134261)
    done = wait_status(http, job_id)
    assert done["status"] == "DONE" and done["workflow_status"] == "DONE"
    assert done["exit_code"] == 0
    log = http.get(f"{API}/jobs/{job_id}/log").text
    assert "Step: 10," in log

    status = http.get(f"{API}/status").json()  # b.5.11: every job's merged JSON
    assert [s["job_id"] for s in status] == [job_id]
    job = http.get(f"/api/v1/jobs/{job_id}").json()
    assert status[0]["lsf_id"] == status[0]["tool_id"] == job["native_id"]
    assert isinstance(status[0]["job_database_id"], int)
    assert status[0]["counters"] == counters
    assert job["run_id"] == f"{EXP}/134261" and job["type"] == f"arp:{EXP}:example"
    events = http.get(f"/api/v1/jobs/{job_id}/events").json()
    assert events[0]["data"]["arp"] == {"experiment": EXP, "run": 134261, "attempt": 1,
                                        "definition": "example", "trigger": "manual"}  # fmt: skip
    assert sum(e["name"] == "report" for e in events) == 13


def test_a_failing_executable_ends_exit(client: TestClient, tmp_path: Path) -> None:
    define(client, "broken", write_script(tmp_path, code=3))
    define(client, "missing", str(tmp_path / "not-there.sh"))
    failed = apply(client, 1, "broken")
    missing = apply(client, 1, "missing")
    for job_id in (failed["job_id"], missing["job_id"]):
        done = wait_status(client, job_id)
        assert done["status"] == "EXIT" and done["workflow_status"] == "FAILED"
    assert entry(client, failed["job_id"])["exit_code"] == 3
    assert "not-there.sh" in client.get(f"{API}/jobs/{missing['job_id']}/log",
                                        params={"stream": "stderr"}).text  # fmt: skip


# -- b.5.3: several definitions per run --------------------------------------------------------


def test_two_definitions_on_one_run_are_two_jobs(client: TestClient, tmp_path: Path) -> None:
    executable = write_script(tmp_path)
    define(client, "smd", executable, "--smd")
    define(client, "cube", executable, "--cube")
    first = apply(client, 42, "smd")
    second = apply(client, 42, "cube")
    assert first["job_id"] != second["job_id"]
    assert (
        error(client.post(f"{API}/runs/42/apply", json={"definition": "nope"}), 404)["field"]
        == "name"
    )
    for job_id in (first["job_id"], second["job_id"]):
        assert wait_status(client, job_id)["status"] == "DONE"
    args = {json.loads(client.get(f"{API}/jobs/{j}/log").text)["argv"][3]
            for j in (first["job_id"], second["job_id"])}  # fmt: skip
    assert args == {"--smd", "--cube"}
    view = client.get(f"{API}/runs/42").json()
    assert sorted(j["hash"] for j in view["jobs"]) == ["cube", "smd"]
    assert view["started_at"] is None and view["ended_at"] is None  # nobody posted the run


# -- runs ---------------------------------------------------------------------------------------


def test_runs_start_end_parameters_and_listing(client: TestClient) -> None:
    started = client.post(f"{API}/runs/7/start", json={"parameters": {"detector": "epix"}})
    assert started.status_code == 200, started.text
    assert started.json()["started_at"] and started.json()["ended_at"] is None
    ended = client.post(f"{API}/runs/7/end", json={"parameters": {"events": 1200}})
    run = ended.json()["run"]
    assert run["parameters"] == {"detector": "epix", "events": 1200}
    assert run["ended_at"] and ended.json()["jobs"] == []
    replay = client.post(f"{API}/runs/7/end").json()["run"]
    assert replay["ended_at"] == run["ended_at"]  # the first end counts
    client.post(f"{API}/runs/9/end")
    client.post(f"{API}/runs/8/start")
    assert [r["run"] for r in client.get(f"{API}/runs").json()] == [9, 8, 7]
    assert [r["run"] for r in client.get(f"{API}/runs", params={"before": 9}).json()] == [8, 7]
    assert client.get(f"{API}/runs/7").json()["jobs"] == []
    assert error(client.get(f"{API}/runs/6"), 404)["field"] == "run"
    assert error(client.post(f"{API}/runs/-1/end"), 422)["field"] == "run"
    bad = client.post(f"{API}/runs/10/start", json={"parameters": [1, 2]})
    assert error(bad, 422)["field"] == "parameters"


# -- b.5.4: autorun, exactly once --------------------------------------------------------------


def test_autorun_creates_one_job_per_run_for_whoever_enabled_it(
    client: TestClient, jobmill: Jobmill, tmp_path: Path, tokens: dict[str, dict[str, str]]
) -> None:
    define(client, "auto", write_script(tmp_path), "x")
    assert client.post(f"{API}/runs/134/end", headers=tokens["bob"]).json()["jobs"] == []
    switched = client.patch(f"{API}/definitions/auto", json={"autorun": True},
                            headers=tokens["alice"])  # fmt: skip
    assert switched.status_code == 200, switched.text
    assert switched.json()["autorun_by"] == "alice" and switched.json()["autorun_at"]
    taken = client.patch(f"{API}/definitions/auto", json={"autorun": True},
                         headers=tokens["bob"])  # fmt: skip
    assert error(taken, 409)["field"] == "autorun"
    off = client.patch(f"{API}/definitions/auto", json={"autorun": False},
                       headers=tokens["bob"])  # fmt: skip
    assert error(off, 403)["field"] == "autorun"

    ended = client.post(f"{API}/runs/135/end", headers=tokens["bob"])  # the DAQ's token
    jobs = ended.json()["jobs"]
    assert len(jobs) == 1 and jobs[0]["user"] == "alice" and jobs[0]["trigger"] == "autorun"
    assert client.post(f"{API}/runs/135/end").json()["jobs"] == []  # a replay: nothing new
    # The run that ended before autorun was switched on is left alone, even when replayed.
    assert client.post(f"{API}/runs/134/end").json()["jobs"] == []
    assert client.get(f"{API}/runs/134").json()["jobs"] == []
    assert wait_status(client, jobs[0]["job_id"])["status"] == "DONE"
    assert [j["user"] for j in client.get(f"{API}/status", headers=tokens["alice"]).json()] == [
        "alice"
    ]
    assert client.get(f"{API}/status", headers=tokens["bob"]).json() == []

    # Concurrent ends of one run, through two jobmill processes sharing the database.
    other = build(jobmill.settings.with_(home=tmp_path / "home2"))
    try:
        barrier = threading.Barrier(8)
        results: list[int] = []

        def end(jm: Jobmill) -> None:
            barrier.wait()
            outcome = jm.experiments.end_run(User("daq"), EXP, 136)  # type: ignore[union-attr]
            results.append(len(outcome.created))

        threads = [threading.Thread(target=end, args=(jm,)) for jm in [jobmill, other] * 4]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        other.close()
    assert sorted(results) == [0] * 7 + [1]
    view = client.get(f"{API}/runs/136").json()["jobs"]
    assert len(view) == 1 and view[0]["user"] == "alice"
    assert len(client.get("/api/v1/jobs", params={"run_id": f"{EXP}/136"}).json()["jobs"]) == 1

    assert client.patch(f"{API}/definitions/auto", json={"autorun": False},
                        headers=tokens["alice"]).json()["autorun"] is False  # fmt: skip
    assert client.post(f"{API}/runs/137/end").json()["jobs"] == []


def test_the_unique_application_is_what_keeps_it_once(jobmill: Jobmill) -> None:
    """Without the service's look-before: concurrent inserts, one job, no orphan rows."""
    experiments = jobmill.experiments
    assert experiments is not None
    definition = experiments.define(User("root", admin=True), EXP, name="once",
                                    executable="/bin/true")  # fmt: skip
    jobtype = experiments.jobtypes.build(definition)
    request = JobRequest(type=jobtype.name, parameters={"experiment": EXP, "run": 1})
    barrier = threading.Barrier(6)
    created: list[bool] = []

    def insert() -> None:
        new = jobmill.jobs.validate_for(jobtype, User("alice"), request)
        barrier.wait()
        applied = experiments.store.apply(new, experiment=EXP, run=1, definition="once",
                                          trigger="autorun", actor="test")  # fmt: skip
        created.append(applied.created)

    threads = [threading.Thread(target=insert) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(created) == [False] * 5 + [True]
    assert jobmill.store.count() == 1
    assert experiments.store.application(EXP, 1, "once") is not None


def test_backfill_processes_earlier_runs_once(
    client: TestClient, tmp_path: Path, tokens: dict[str, dict[str, str]]
) -> None:
    define(client, "late", write_script(tmp_path))
    for run in (1, 2, 3, 4):
        client.post(f"{API}/runs/{run}/end")
    client.post(f"{API}/runs/5/start")  # not ended: never backfilled
    switched = client.patch(f"{API}/definitions/late", json={"autorun": True, "backfill": True},
                            headers=tokens["alice"])  # fmt: skip
    assert switched.status_code == 200, switched.text
    backfilled = switched.json()["backfill"]["jobs"]
    assert sorted(j["run_num"] for j in backfilled) == [1, 2, 3, 4]
    assert {j["trigger"] for j in backfilled} == {"backfill"}
    assert {j["user"] for j in backfilled} == {"alice"}
    again = client.post(f"{API}/definitions/late/backfill", headers=tokens["alice"])
    assert again.json() == {"jobs": [], "errors": []}

    define(client, "range", write_script(tmp_path, "range.py"))
    ranged = client.post(f"{API}/definitions/range/backfill", json={"first": 2, "last": 3})
    assert sorted(j["run_num"] for j in ranged.json()["jobs"]) == [2, 3]
    bad = client.post(f"{API}/definitions/range/backfill", json={"first": -2})
    assert error(bad, 422)["field"] == "first"
    for job in backfilled:
        assert wait_status(client, job["job_id"])["status"] == "DONE"


def test_runs_ended_while_jobmill_was_down_get_their_autorun_job(
    client: TestClient, jobmill: Jobmill, tmp_path: Path
) -> None:
    define(client, "auto", write_script(tmp_path), autorun=True)
    # The end was recorded, then jobmill stopped before it made the job.
    jobmill.experiments.store.mark_run(EXP, 77, edge="end", parameters={})  # type: ignore[union-attr]
    assert jobmill.experiments.autorun_missed() == 1  # type: ignore[union-attr]
    assert jobmill.experiments.autorun_missed() == 0  # type: ignore[union-attr]
    assert len(client.get(f"{API}/runs/77").json()["jobs"]) == 1


# -- b.5.6: kill and delete ---------------------------------------------------------------------


def test_kill_cancels_the_process_and_reports_success(client: TestClient, tmp_path: Path) -> None:
    define(client, "long", write_script(tmp_path, wait=True))
    job_id = apply(client, 5, "long")["job_id"]
    running = wait_running(client, job_id)
    pid = int(running["lsf_id"].split("@")[0])
    killed = client.post(f"{API}/jobs/{job_id}/kill")
    assert killed.status_code == 200, killed.text
    assert killed.json()["success"] is True
    assert killed.json()["job"]["status"] == "EXIT"
    assert killed.json()["job"]["workflow_status"] == "EXITED"
    wait_for(lambda: not _alive(pid), timeout=15)
    again = client.post(f"{API}/jobs/{job_id}/kill")
    assert again.status_code == 409 and again.json()["success"] is False
    assert error(client.post(f"{API}/jobs/{uuid.uuid4()}/kill"), 404)["field"] == "id"


def test_delete_refuses_a_running_job_unless_killed_too(client: TestClient, tmp_path: Path) -> None:
    executable = write_script(tmp_path, wait=True)
    define(client, "long", executable)
    job_id = apply(client, 6, "long")["job_id"]
    wait_running(client, job_id)
    refused = client.delete(f"{API}/jobs/{job_id}")
    assert error(refused, 409)["field"] == "kill"
    assert entry(client, job_id)["status"] == "RUN"
    deleted = client.delete(f"{API}/jobs/{job_id}", params={"kill": "true"})
    assert deleted.status_code == 200 and deleted.json()["killed"] is True
    assert client.get(f"{API}/status").json() == []
    assert error(client.get(f"{API}/jobs/{job_id}"), 404)["field"] == "id"
    # The job itself stays in jobmill, with its history.
    assert client.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "ABORTED"

    # Removed from the run view, the definition can be applied to the run again.
    second = apply(client, 6, "long")["job_id"]
    assert second != job_id
    open_gate(executable, 6)
    assert wait_status(client, second)["status"] == "DONE"
    ended = client.delete(f"{API}/jobs/{second}")
    assert ended.status_code == 200 and ended.json()["killed"] is False
    assert client.get(f"{API}/status", params={"run": 6}).json() == []

    # A job deleted through the native API leaves its run free for a new one too.
    third = apply(client, 6, "long")["job_id"]
    assert (
        error(client.post(f"{API}/runs/6/apply", json={"definition": "long"}), 409)["job_id"]
        == third
    )
    wait_status(client, third)
    assert client.delete(f"/api/v1/jobs/{third}").status_code == 204
    assert apply(client, 6, "long")["job_id"] not in (job_id, second, third)


def test_a_definition_with_live_jobs_cannot_be_deleted(client: TestClient, tmp_path: Path) -> None:
    executable = write_script(tmp_path, wait=True)
    define(client, "long", executable)
    job_id = apply(client, 8, "long")["job_id"]
    assert error(client.delete(f"{API}/definitions/long"), 409)["field"] == "name"
    open_gate(executable, 8)
    wait_status(client, job_id)
    assert client.delete(f"{API}/definitions/long").status_code == 204
    assert entry(client, job_id)["status"] == "DONE"  # ended jobs stay in the run view


# -- b.5.7, b.5.8: log and details --------------------------------------------------------------


def test_log_tells_no_log_from_an_empty_log_and_details_need_a_backend(
    jobmill: Jobmill, tmp_path: Path
) -> None:
    with app_client(jobmill, start_engine=False) as client:  # jobs stay queued
        define(client, "quiet", "/bin/true")
        job_id = apply(client, 3, "quiet")["job_id"]
        no_log = client.get(f"{API}/jobs/{job_id}/log")
        assert error(no_log, 404)["code"] == "no_log"
        assert error(client.get(f"{API}/jobs/{uuid.uuid4()}/log"), 404)["code"] == "not_found"
        assert (
            error(client.get(f"{API}/jobs/{job_id}/log", params={"stream": "x"}), 422)["field"]
            == "stream"
        )
        assert error(client.get(f"{API}/jobs/{job_id}/details"), 409)["field"] == "id"
        assert entry(client, job_id)["status"] == "Request Sent"
    with app_client(jobmill) as client:
        done = wait_status(client, job_id)
        assert done["status"] == "DONE"
        empty = client.get(f"{API}/jobs/{job_id}/log")
        assert empty.status_code == 200 and empty.content == b""
        details = client.get(f"{API}/jobs/{job_id}/details")
        assert details.status_code == 200
        assert "(ended)" in details.json()["details"]


def test_details_describe_the_running_process(client: TestClient, tmp_path: Path) -> None:
    executable = write_script(tmp_path, wait=True)
    define(client, "long", executable, "p1")
    job_id = apply(client, 11, "long")["job_id"]
    running = wait_running(client, job_id)
    details = client.get(f"{API}/jobs/{job_id}/details").json()
    assert details["native_id"] == running["lsf_id"]
    pid = running["lsf_id"].split("@")[0]
    assert f"process group {pid} (running)" in details["details"]
    wait_for(lambda: executable in client.get(f"{API}/jobs/{job_id}/details").json()["details"])
    open_gate(executable, 11)
    wait_status(client, job_id)


# -- b.5.12: the update URL is a capability ------------------------------------------------------


def test_another_jobs_token_is_refused(http: httpx.Client, tmp_path: Path) -> None:
    executable = write_script(tmp_path, wait=True)
    define(http, "long", executable)
    first = apply(http, 1, "long")["job_id"]
    second = apply(http, 2, "long")["job_id"]
    urls = [first_line(http, j)["env"]["BATCH_UPDATE_URL"] for j in (first, second)]
    token_of_second = urls[1].split("token=")[1]
    stolen = http.post(f"/api/v1/jobs/{first}/report", params={"token": token_of_second},
                       json={"counters": {"x": 1}})  # fmt: skip
    assert error(stolen, 403)["field"] == "token"
    random_id = http.post(f"/api/v1/jobs/{uuid.uuid4()}/report", params={"token": token_of_second},
                          json={"counters": {"x": 1}})  # fmt: skip
    assert random_id.status_code == 403
    no_token = {"Authorization": ""}
    untokened = http.post(f"/api/v1/jobs/{first}/report", json={"x": 1}, headers=no_token)
    assert untokened.status_code == 401
    assert http.post(urls[0], json={"counters": {"x": 1}}).status_code == 200
    assert entry(http, first)["counters"] == {"x": 1}
    assert entry(http, second)["counters"] == {}
    for run in (1, 2):
        open_gate(executable, run)
    for job_id in (first, second):
        wait_status(http, job_id)


# -- ownership -----------------------------------------------------------------------------------


def test_users_act_on_their_own_jobs_only(
    client: TestClient, tmp_path: Path, tokens: dict[str, dict[str, str]]
) -> None:
    executable = write_script(tmp_path, wait=True)
    define(client, "long", executable)
    alice_job = apply(client, 20, "long", headers=tokens["alice"])["job_id"]
    assert entry(client, alice_job, tokens["alice"])["user"] == "alice"
    for method, path in [("post", "kill"), ("get", "log"), ("get", "details")]:
        response = getattr(client, method)(f"{API}/jobs/{alice_job}/{path}", headers=tokens["bob"])
        assert error(response, 404)["field"] == "id", path
    assert client.delete(f"{API}/jobs/{alice_job}", headers=tokens["bob"]).status_code == 404
    assert [e["job_id"] for e in client.get(f"{API}/status", headers=tokens["root"]).json()] == [
        alice_job
    ]
    assert client.get(f"{API}/status", headers=tokens["bob"]).json() == []
    killed = client.post(f"{API}/jobs/{alice_job}/kill", headers=tokens["alice"])
    assert killed.json()["success"] is True


# -- status names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "reason", "slow", "status", "workflow"),
    [
        (Phase.QUEUED, Reason.CAPACITY.value, False, "Request Sent", "START"),
        (Phase.QUEUED, Reason.BACKEND_UNAVAILABLE.value, False, "Persisted", "START"),
        (Phase.QUEUED, Reason.BACKEND.value, True, "LSF_Slow", "SUBMITTED"),
        (Phase.QUEUED, Reason.BACKEND.value, False, "PEND", "SUBMITTED"),
        (Phase.EXECUTING, None, True, "RUN", "RUNNING"),
        (Phase.COMPLETED, None, False, "DONE", "DONE"),
        (Phase.ERROR, None, False, "EXIT", "FAILED"),
        (Phase.ABORTED, None, False, "EXIT", "EXITED"),
        (Phase.PENDING, None, False, "Request Sent", "START"),
        (Phase.HELD, None, False, "PSUSP", "SUBMITTED"),
        (Phase.SUSPENDED, None, False, "USUSP", "RUNNING"),
        (Phase.UNKNOWN, None, False, "UNKWN", "RUNNING"),
    ],
)
def test_status_names_come_from_phase_and_reason(
    phase: Phase, reason: str | None, slow: bool, status: str, workflow: str
) -> None:
    job = Job(id=str(uuid.uuid4()), type="t", owner="o", phase=phase, parameters={},
              created_at=utcnow(), reason=reason)  # fmt: skip
    names = status_names(job, slow=slow)
    assert (names.status, names.workflow) == (status, workflow)


def test_an_archived_job_keeps_its_outcome() -> None:
    job = Job(id="x", type="t", owner="o", phase=Phase.ARCHIVED, parameters={},
              created_at=utcnow(), exit_code=0)  # fmt: skip
    assert status_names(job).status == "DONE"
    job.exit_code, job.error = 1, "exit code 1"
    assert status_names(job).workflow == "FAILED"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
