"""The manager's verbs from the command line, as a brownthrower user runs them: create, edit,
run, reset, clone, tags, remove, short ids and the filter grammar of ``jobmill ls``."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from typer.testing import CliRunner

from jobmill.cli.main import app
from jobmill.client import Client
from tests.conftest import LiveServer

runner = CliRunner()


def cli(live: LiveServer, *args: str) -> Any:
    return runner.invoke(app, ["--url", live.url, *args])


def ok(live: LiveServer, *args: str) -> str:
    result = cli(live, *args)
    assert result.exit_code == 0, (args, result.output)
    return str(result.stdout).strip()


def listed(live: LiveServer, *terms: str) -> list[str]:
    return [job["id"] for job in json.loads(ok(live, "ls", "--json", *terms))]


def test_a_failed_job_is_edited_reset_and_run_again(live: LiveServer) -> None:
    job_id = ok(live, "create", "fail", "code=3", "--tag", "calib")
    short = job_id[:8]
    assert listed(live, "status=STASHED", "tag=calib", "name=fail") == [job_id]

    refused = cli(live, "edit", short, "code=abc")
    assert refused.exit_code != 0 and "parameters.code" in refused.output
    assert "edited (version 2)" in ok(live, "edit", short, "code=4")
    assert ok(live, "run", short) == f"{job_id} QUEUED"
    with Client(live.url) as jm:
        assert jm.wait(job_id, timeout=30)["exit_code"] == 4

    assert listed(live, "status=FAILED", "name=fail") == [job_id]
    assert job_id not in listed(live, "status!=FAILED")
    late = cli(live, "edit", short, "code=0")
    assert late.exit_code == 1 and "only a PENDING job" in late.output

    assert ok(live, "reset", short) == f"{job_id} PENDING"
    ok(live, "edit", short, "code=0")
    ok(live, "run", short)
    with Client(live.url) as jm:
        assert jm.wait(job_id, timeout=30)["phase"] == "COMPLETED"
        names = [e["name"] for e in jm.events(job_id)]
    assert names.count("fail") == 1 and names.count("reset") == 1 and names[-1] == "complete"
    assert listed(live, "status=DONE", "tag=calib") == [job_id]

    shown = ok(live, "show", short)
    assert "calib" in shown and job_id in shown


def test_clone_tags_remove_and_tasks(live: LiveServer) -> None:
    original = ok(live, "submit", "echo", "message=hi", "--tag", "calib", "--tag", "night-1")
    copy = ok(live, "clone", original[:10])
    assert copy != original
    assert ok(live, "tags", copy).splitlines() == ["calib", "night-1"]
    assert ok(live, "tags", copy, "add", "x", "y").splitlines() == ["calib", "night-1", "x", "y"]
    assert ok(live, "tags", copy, "remove", "calib").splitlines() == ["night-1", "x", "y"]
    assert cli(live, "tags", copy, "remove", "calib").exit_code == 1
    bad = cli(live, "tags", copy, "add", "no good")
    assert bad.exit_code == 1 and "tag" in bad.output
    assert cli(live, "tags", copy, "paint", "x").exit_code == 2
    assert set(listed(live, "tag=night-1")) == {original, copy}
    assert listed(live, "tag=night-1", "tag!=calib") == [copy]
    assert listed(live, "tag=night-1", "status=STASHED") == [copy]

    assert ok(live, "remove", copy[:12]) == f"{copy} deleted"
    assert listed(live, "tag=night-1") == [original]
    assert "echo" in ok(live, "tasks")
    assert "message" in ok(live, "tasks", "echo")


def test_sequence_numbers_short_ids_and_bad_terms(live: LiveServer) -> None:
    with Client(live.url) as jm:
        ids = jm.submit_many([{"type": "echo", "parameters": {"message": "m"},
                               "phase": "PENDING"} for _ in range(17)])  # fmt: skip
        jobs = {job["id"]: job for job in jm.list(limit=100).jobs}
    seqs = sorted(jobs[i]["seq"] for i in ids)
    assert len(listed(live, f"id>{seqs[9]}")) == 7
    assert listed(live, f"id={seqs[0]}") == [next(i for i in ids if jobs[i]["seq"] == seqs[0])]
    assert len(listed(live, f"id>={seqs[3]}", f"id<{seqs[6]}", f"id!={seqs[4]}")) == 2
    assert listed(live, f"id={ids[5][:9]}") == [ids[5]]

    # 17 ids, 16 hex digits: two of them start alike
    first, _count = Counter(i[0] for i in ids).most_common(1)[0]
    ambiguous = cli(live, "show", first)
    assert ambiguous.exit_code == 1 and "is ambiguous" in ambiguous.output
    assert sum(i in ambiguous.output for i in ids if i.startswith(first)) >= 2
    missing = cli(live, "abort", "ffffffff-ff")
    assert missing.exit_code == 1 and "no job whose id starts with" in missing.output

    bad = cli(live, "ls", "status=DONE", "colour=red")
    assert bad.exit_code == 2 and "'colour=red'" in bad.output and "unknown field" in bad.output
    assert cli(live, "ls", "status=DONE", "status=FAILED").exit_code == 0
