"""No lost updates: several client processes edit and tag the same jobs at the same moment.

Each round, every process sends an edit of every job with ``If-Match`` set to the version the
round started from (after a barrier, so they race); exactly one edit of each job wins and every
other gets a 409 naming ``version``. Then every process adds its own tag to every job at once:
every tag is kept. The job's parameters are the winner's, its version counts every change, and
its events hold one ``edited`` per round and every ``tagged``. A last round races the real
``jobmill edit --version`` commands in subprocesses. Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections import Counter
from multiprocessing.synchronize import Barrier
from typing import Any

from jobmill.client import Client, JobmillClientError
from tests.conftest import LiveServer

WORKERS = 4
ROUNDS = 5
JOBS = 3


def worker(
    index: int,
    url: str,
    token: str,
    job_ids: list[str],
    start: Barrier,
    tagging: Barrier,
    versions: Any,
    results: Any,
) -> None:
    """One client process: per round, race an edit of each job, then tag each job."""
    with Client(url, token=token) as jm:
        for round_ in range(ROUNDS):
            start.wait(60)
            outcome: dict[str, Any] = {"worker": index, "round": round_, "edits": {}}
            for n, job_id in enumerate(job_ids):
                value = f"w{index}-r{round_}"
                try:
                    jm.edit(job_id, {"message": value}, version=versions[n])
                    outcome["edits"][job_id] = "won"
                except JobmillClientError as exc:
                    outcome["edits"][job_id] = f"{exc.status} {exc.field}"
            tagging.wait(60)
            for job_id in job_ids:
                jm.add_tag(job_id, f"w{index}-r{round_}")
            results.put(outcome)


def test_concurrent_edits_have_one_winner_and_lose_nothing(live: LiveServer) -> None:
    token = live.headers["Authorization"].removeprefix("Bearer ")
    ctx = multiprocessing.get_context("spawn")
    with Client(live.url, token=token) as jm:
        job_ids = [
            jm.submit("echo", {"message": "start"}, phase="PENDING")["id"] for _ in range(JOBS)
        ]
        versions = ctx.Array("i", [jm.get(j)["version"] for j in job_ids])
        start, tagging = ctx.Barrier(WORKERS + 1), ctx.Barrier(WORKERS)
        results = ctx.Queue()
        processes = [
            ctx.Process(
                target=worker,
                args=(i, live.url, token, job_ids, start, tagging, versions, results),
            )
            for i in range(WORKERS)
        ]
        for process in processes:
            process.start()
        try:
            for round_ in range(ROUNDS):
                for n, job_id in enumerate(job_ids):
                    versions[n] = jm.get(job_id)["version"]
                before = list(versions)
                start.wait(60)
                outcomes = [results.get(timeout=60) for _ in range(WORKERS)]
                for n, job_id in enumerate(job_ids):
                    edits = Counter(o["edits"][job_id] for o in outcomes)
                    assert edits == {"won": 1, "409 version": WORKERS - 1}, (round_, edits)
                    winner = next(o["worker"] for o in outcomes if o["edits"][job_id] == "won")
                    job = jm.get(job_id)
                    assert job["parameters"]["message"] == f"w{winner}-r{round_}"
                    tags = {f"w{i}-r{round_}" for i in range(WORKERS)}
                    assert tags <= set(job["tags"]), (round_, job["tags"])
                    # one edit and WORKERS tags since the round began: nothing lost, no extra
                    assert job["version"] == before[n] + 1 + WORKERS
        finally:
            for process in processes:
                process.join(60)
                if process.is_alive():
                    process.terminate()
        assert all(process.exitcode == 0 for process in processes)

        for job_id in job_ids:
            job = jm.get(job_id)
            assert len(job["tags"]) == WORKERS * ROUNDS
            names = Counter(e["name"] for e in jm.events(job_id))
            assert names == {"created": 1, "edited": ROUNDS, "tagged": WORKERS * ROUNDS}

        # The real command, racing itself: one `jobmill edit --version` wins.
        job_id = job_ids[0]
        seen = jm.get(job_id)["version"]
        env = {**os.environ, "JOBMILL_API_TOKEN": token, "JOBMILL_URL": live.url}
        commands = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jobmill.cli.main",
                    "edit",
                    job_id[:8],
                    f"message=cli-{i}",
                    "--version",
                    str(seen),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for i in range(WORKERS)
        ]
        finished = [
            (c.wait(60), c.stdout.read(), c.stderr.read())
            for c in commands
            if c.stdout and c.stderr
        ]
        codes = Counter(code for code, _out, _err in finished)
        assert codes == {0: 1, 1: WORKERS - 1}, finished
        for code, _out, err in finished:
            if code:
                assert "changed since it was read" in err and err.startswith("error: version:")
        winner = next(i for i, (code, _o, _e) in enumerate(finished) if code == 0)
        assert jm.get(job_id)["parameters"]["message"] == f"cli-{winner}"
        assert jm.get(job_id)["version"] == seen + 1
