"""Sub-jobs: a running job creates children with its own token, stands by (QUEUED, ``waiting
for children``) when its main step ends, then runs its epilog with their results, or ends in
ERROR naming a failed child; aborting it aborts them. brownthrower's ``sum4`` ends with 42."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobmill.config import Settings
from jobmill.factory import Jobmill, build
from jobmill.service.credentials import ensure_local_token
from tests.conftest import EXAMPLES, LiveServer, wait_for

SPAWN = """
name: spawn
description: create sub-jobs, then sleep
command: ["python3", "{jobtype_dir}/spawn.py", "{child}", "{count}", "{seconds}", "{linger}"]
epilog: ["python3", "{jobtype_dir}/spawn_epilog.py"]
parameters:
  child: {type: string, default: sleep}
  count: {type: integer, default: 2}
  seconds: {type: number, default: 0}
  linger: {type: number, default: 0}
"""

SPAWN_PY = """
import sys, time
sys.path.insert(0, {scripts!r})
from jobmill_job import sub_job
child, count = sys.argv[1], int(sys.argv[2])
seconds, linger = float(sys.argv[3]), float(sys.argv[4])
for i in range(count):
    if child == "fail":
        sub_job("fail", {{"code": 4}})
    else:
        sub_job("sleep", {{"seconds": seconds}})
time.sleep(linger)
"""

EPILOG_PY = """
import json, os, sys
sys.path.insert(0, {scripts!r})
from jobmill_job import listed, report
children = listed("JOBMILL_CHILDREN_FILE")
report({{"epilog": os.environ["JOBMILL_STEP"], "children": [c["phase"] for c in children],
         "ids": os.environ["JOBMILL_CHILD_IDS"].split(",")}})
"""


@pytest.fixture
def server(tmp_path: Path, settings: Settings) -> Iterator[LiveServer]:
    extra = tmp_path / "jobtypes"
    extra.mkdir()
    scripts = str(EXAMPLES / "scripts")
    (extra / "spawn.yaml").write_text(SPAWN)
    (extra / "spawn.py").write_text(textwrap.dedent(SPAWN_PY.format(scripts=scripts)))
    (extra / "spawn_epilog.py").write_text(textwrap.dedent(EPILOG_PY.format(scripts=scripts)))
    jm: Jobmill = build(replace(settings, jobtypes=(str(EXAMPLES), str(extra))))
    try:
        assert jm.settings.token_file is not None
        ensure_local_token(jm.store.tokens, jm.settings.local_user, jm.settings.token_file)
        with LiveServer(jm) as live:
            yield live
    finally:
        jm.close()


def submit(live: LiveServer, type_: str, **parameters: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{live.url}/api/v1/jobs",
        json={"type": type_, "parameters": parameters},
        headers=live.headers,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def get(live: LiveServer, job_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{live.url}/api/v1/jobs/{job_id}", headers=live.headers).json())


def ended(live: LiveServer, job_id: str, timeout: float = 30) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = get(live, job_id)
        return job if job["phase"] in ("COMPLETED", "ERROR", "ABORTED") else None

    return dict(wait_for(done, timeout))


def names(live: LiveServer, job_id: str) -> list[str]:
    events = httpx.get(f"{live.url}/api/v1/jobs/{job_id}/events", headers=live.headers).json()
    return [event["name"] for event in events]


def test_sum4_ends_completed_with_42(server: LiveServer) -> None:
    job = submit(server, "sum4")
    done = ended(server, job["id"])
    assert done["phase"] == "COMPLETED", done
    assert done["report"]["output"] == 42
    children = done["children"]
    assert len(children) == 3
    subjobs = [get(server, child) for child in children]
    assert [s["report"]["output"] for s in subjobs] == [15, 27, 42]
    assert all(s["parent"] == job["id"] and s["phase"] == "COMPLETED" for s in subjobs)
    assert subjobs[2]["after"] == sorted(children[:2])
    history = names(server, job["id"])
    after_main = history[history.index("stand_by") :]
    # the epilog started once released (and handed to the local executor)
    assert after_main[:4] == ["stand_by", "wait", "wait", "start"]
    assert after_main[-2:] == ["report", "complete"]
    # Visible in provenance (the last sub-job was informed by the two it ran after and by
    # its parent) and in the UWS job document's jobInfo.
    prov = httpx.get(
        f"{server.url}/api/v1/jobs/{children[2]}/provenance", headers=server.headers
    ).json()
    informants = {r["prov:informant"] for r in prov["wasInformedBy"].values()}
    assert informants == {f"jobmill:jobs/{i}" for i in (children[0], children[1], job["id"])}
    uws = httpx.get(f"{server.url}/uws/sum4/{job['id']}", headers=server.headers).text
    for child in children:
        assert f"<jm:child>{child}</jm:child>" in uws


def test_a_failed_child_fails_its_parent_naming_it(server: LiveServer) -> None:
    job = submit(server, "spawn", child="fail", count=2)
    done = ended(server, job["id"])
    assert done["phase"] == "ERROR"
    assert done["error"] == f"sub-job {done['children'][0]} ended in ERROR"
    assert "epilog" not in done["report"]  # the epilog never ran
    assert all(get(server, child)["phase"] == "ERROR" for child in done["children"])


def test_the_epilog_sees_its_children(server: LiveServer) -> None:
    job = submit(server, "spawn", child="sleep", count=2, seconds=0.5)
    standing = wait_for(
        lambda: (j := get(server, job["id"]))["reason"] == "waiting for children" and j
    )
    assert standing["phase"] == "QUEUED"
    done = ended(server, job["id"])
    assert done["phase"] == "COMPLETED"
    assert done["report"] == {
        "epilog": "epilog",
        "children": ["COMPLETED", "COMPLETED"],
        "ids": done["children"],
    }


def test_aborting_a_parent_aborts_its_children(server: LiveServer) -> None:
    job = submit(server, "spawn", child="sleep", count=2, seconds=60, linger=60)
    children = wait_for(lambda: len(c := get(server, job["id"])["children"]) == 2 and c)
    wait_for(lambda: all(get(server, c)["phase"] == "EXECUTING" for c in children))
    response = httpx.post(f"{server.url}/api/v1/jobs/{job['id']}/abort", headers=server.headers)
    assert response.status_code == 200
    for child in children:
        aborted = ended(server, child)
        assert aborted["phase"] == "ABORTED"
        assert aborted["error"] == "aborted: its parent job ended"


def test_a_job_token_creates_sub_jobs_and_nothing_else(server: LiveServer) -> None:
    job = submit(server, "sleep", seconds=60)
    wait_for(lambda: get(server, job["id"])["phase"] == "EXECUTING")
    # The job's token is in its process environment; read it as the job would.
    jm = server.jobmill
    pid = get_pid(jm, job["id"])

    def token_of() -> bytes | None:  # (empty while the process execs, e.g. through a shim)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return next((v.split(b"=", 1)[1] for v in environ if v.startswith(b"JOBMILL_TOKEN=")), None)

    token = wait_for(token_of)
    headers = {"Authorization": f"Bearer {token.decode()}"}
    listed = httpx.get(f"{server.url}/api/v1/jobs", headers=headers)
    assert listed.status_code == 401
    created = httpx.post(
        f"{server.url}/api/v1/jobs",
        json={"type": "sleep", "parameters": {"seconds": 0}},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["parent"] == job["id"]
    assert created.json()["owner"] == get(server, job["id"])["owner"]
    httpx.post(f"{server.url}/api/v1/jobs/{job['id']}/abort", headers=server.headers)
    ended(server, job["id"])
    refused = httpx.post(
        f"{server.url}/api/v1/jobs",
        json={"type": "sleep", "parameters": {"seconds": 0}},
        headers=headers,
    )
    assert refused.status_code == 401  # the job ended: its token no longer works


def get_pid(jm: Jobmill, job_id: str) -> int:
    job = jm.store.get(job_id)
    assert job is not None and job.native_id is not None
    return int(job.native_id.split("@")[0])
