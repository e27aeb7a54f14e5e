"""Dependencies and sub-jobs survive a SIGKILL of the server: after the restart, jobs waiting
for upstream jobs or for their sub-jobs are released exactly once, and nothing runs twice."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import EXAMPLES, local_headers, wait_for
from tests.e2e.test_restart import Server, server, types_dir  # noqa: F401 (fixtures)

SPAWN = """\
import sys, time
sys.path.insert(0, {scripts!r})
from jobmill_job import sub_job
log, seconds = sys.argv[1], float(sys.argv[2])
for name in ("sub1", "sub2"):
    sub_job("once", {{"name": name, "seconds": seconds, "log": log}})
"""

EPILOG = """\
import sys
with open(sys.argv[1], "a") as handle:
    handle.write("epilog\\n")
"""


@pytest.fixture
def workflow_types(types_dir: Path) -> Path:  # noqa: F811 (the fixture above)
    scripts = str(EXAMPLES / "scripts")
    (types_dir / "spawn.py").write_text(SPAWN.format(scripts=scripts))
    (types_dir / "spawn_epilog.py").write_text(EPILOG)
    (types_dir / "spawn.yaml").write_text(
        "name: spawn\n"
        'command: ["python3", "{jobtype_dir}/spawn.py", "{log}", "{seconds}"]\n'
        'epilog: ["python3", "{jobtype_dir}/spawn_epilog.py", "{log}"]\n'
        "parameters:\n"
        "  log: {type: path, required: true}\n"
        "  seconds: {type: number, default: 0}\n"
    )
    return types_dir


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_waiting_jobs_are_released_once_after_a_sigkill(
    server: Server,  # noqa: F811 (the fixture above)
    workflow_types: Path,
    tmp_path: Path,
) -> None:
    runlog = tmp_path / "runs.log"
    server.start()
    http = httpx.Client(base_url=server.url, timeout=10, headers=local_headers())

    def submit(type_: str, after: list[str] | None = None, **parameters: Any) -> str:
        body = {"type": type_, "parameters": {"log": str(runlog), **parameters}}
        response = http.post("/api/v1/jobs", json=body | {"after": after or []})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def job(job_id: str) -> dict[str, Any]:
        return dict(http.get(f"/api/v1/jobs/{job_id}").json())

    first = submit("once", name="first", seconds=3)
    second = submit("once", after=[first], name="second")
    last = submit("once", after=[first, second], name="last")
    parent = submit("spawn", seconds=3)

    # Kill while the first job runs and the parent stands by for its running sub-jobs.
    wait_for(lambda: job(first)["phase"] == "EXECUTING", timeout=20)
    wait_for(lambda: job(parent)["reason"] == "waiting for children", timeout=20)
    children = job(parent)["children"]
    assert len(children) == 2
    # (two local slots: the first job's and one sub-job's)
    wait_for(lambda: any(job(c)["phase"] == "EXECUTING" for c in children), timeout=20)
    assert job(second)["reason"] == job(last)["reason"] == "waiting for upstream jobs"
    server.kill()

    server.start()
    http = httpx.Client(base_url=server.url, timeout=10, headers=local_headers())
    for job_id in (last, parent):
        wait_for(lambda j=job_id: job(j)["phase"] in ("COMPLETED", "ERROR"), timeout=60)
    assert job(last)["phase"] == "COMPLETED"
    assert when(job(last)["started"]) >= when(job(second)["ended"])
    assert when(job(second)["started"]) >= when(job(first)["ended"])
    assert job(parent)["phase"] == "COMPLETED", job(parent)
    runs = Counter(runlog.read_text().split())
    assert runs == {"first": 1, "second": 1, "last": 1, "sub1": 1, "sub2": 1, "epilog": 1}
    for job_id in (second, last, parent):
        events = http.get(f"/api/v1/jobs/{job_id}/events").json()
        names = [e["name"] for e in events]
        # released once (to the queue); each start is preceded by its hand-over to the shepherd
        released = [e for e in events if e["name"] == "wait" and e["data"]["reason"] != "backend"]
        assert len(released) == 1 and names.count("start") <= 2, names
