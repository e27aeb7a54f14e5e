"""PipelineJobs event throughput (``POST /api/v1/pipelinejobs/events``).

A server with the ``external`` executor; PipelineJobs of a job type it never runs. Keep-alive
clients post JSON events ``{"uuid", "name", "token"?}`` as fast as the server answers
(target: 2,000 events/s):

* ``update`` events to one RUNNING job, from 1 and from 8 clients (bearer token);
* ``run`` events to 1,000 CREATED jobs, 8 clients: each also queues and starts its job (two
  lifecycle transitions, their events, the curation row and the history row, one transaction);
* ``update`` events across the same 1,000 jobs, 8 clients, authorised by each job's own update
  token instead of a bearer token.

Each accepted event is one transaction: read the job, check the table, write the history row
(and the phase change). The server's CPU per event comes from ``/proc``.

With ``--workers N`` the 8-client update cases run again against ``jobmill serve --workers N``
(N API worker processes; the server CPU is then the whole process tree's).

Run: ``.venv/bin/python bench/bench_events.py [--quick] [--workers N]``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from _common import (
    Connection,
    Load,
    Server,
    banner,
    closed_loop,
    parse_args,
    print_table,
    running_server,
    verdict,
    worker_server,
    workers_arg,
    write_jobtype,
)

CLIENTS = 8
TARGET = 2000.0
JOBS = 1000
EVENTS = "/api/v1/pipelinejobs/events"


async def create_jobs(port: int, count: int, first: int = 0) -> list[tuple[str, str]]:
    """``count`` external PipelineJobs: (id, update token) each."""
    conn = await Connection("127.0.0.1", port).open()
    try:
        made = []
        for i in range(first, first + count):
            # Distinct parameters: the same type and parameters would be a duplicate (409).
            body = {"type": "external-work", "executor": "external", "parameters": {"n": i}}
            answer = await conn.request("POST", "/api/v1/pipelinejobs", body, expect=201)
            made.append((answer["uuid"], answer["token"]))
        return made
    finally:
        await conn.close()


async def history_length(port: int, job_id: str) -> int:
    conn = await Connection("127.0.0.1", port).open()
    try:
        answer = await conn.request("GET", f"/api/v1/pipelinejobs/{job_id}/history?limit=1000")
        return len(answer["history"])
    finally:
        await conn.close()


def events(
    jobs: list[tuple[str, str]], name: str, *, with_token: bool = False
) -> Callable[[Connection, int], bytes]:
    def make(conn: Connection, i: int) -> bytes:
        job_id, token = jobs[i % len(jobs)]
        event = {"uuid": job_id, "name": name}
        if with_token:
            event["token"] = token
            conn.token = ""  # the job's own token only: no bearer header
        return conn.encode("POST", EVENTS, json.dumps(event).encode())

    return make


def measure(
    server: Server, jobs_count: int, total: int, *, label: str = "", brief: bool = False
) -> tuple[list[tuple[str, Load]], str]:
    """The cases against ``server`` (``brief``: the 8-client update cases only), and the id of
    the one job whose history the first cases wrote."""

    def run(clients: int, n: int, make: Callable[[Connection, int], bytes]) -> Load:
        return asyncio.run(closed_loop(server, clients, n, make, expect=200))

    one = asyncio.run(create_jobs(server.port, 1))
    many = asyncio.run(create_jobs(server.port, jobs_count, first=1))
    runs: list[tuple[str, Load]] = []
    run(1, 1, events(one, "run"))
    run(CLIENTS, 200, events(one, "update"))  # warm-up
    if not brief:
        runs.append(("one job, update, 1 client", run(1, total // 4, events(one, "update"))))
    load = run(CLIENTS, total, events(one, "update"))
    runs.append((f"one job, update, {CLIENTS} clients{label}", load))
    started = run(CLIENTS, jobs_count, events(many, "run"))
    if not brief:
        runs.append((f"{jobs_count} jobs, run (starts each)", started))
    spread = run(CLIENTS, total, events(many, "update", with_token=True))
    runs.append((f"{jobs_count} jobs, update, job tokens{label}", spread))
    return runs, one[0][0]


def main() -> int:
    workers = workers_arg()
    args = parse_args(__doc__ or "")
    one_job_total = 1000 if args.quick else 6000
    jobs_count = 200 if args.quick else JOBS
    banner(
        f"bench_events: PipelineJobs events, one job and {jobs_count} jobs, "
        f"{CLIENTS} clients, SQLite"
    )
    runs: list[tuple[str, Load]] = []
    with tempfile.TemporaryDirectory(prefix="jobmill-bench-types-") as tmp:
        types = Path(tmp)
        write_jobtype(
            types,
            "external-work",
            ["true", "{n}"],
            parameters={"n": {"type": "integer", "default": 0}},
        )
        env = {"JOBMILL_EXECUTORS": "external"}
        with running_server([types], env=env, keep=args.keep) as server:
            measured, first = measure(server, jobs_count, one_job_total)
            runs += measured
            recorded = asyncio.run(history_length(server.port, first))
        if workers > 1:
            # The 8-client update cases again, against N API worker processes.
            with worker_server([types], workers, env=env, keep=args.keep) as server:
                measured, _ = measure(
                    server, jobs_count, one_job_total, label=f", {workers} workers", brief=True
                )
                runs += measured
    expected = 2 + 200 + one_job_total // 4 + one_job_total
    if recorded != min(expected, 1000):
        print(f"error: the job's history has {recorded} entries, not {expected}", file=sys.stderr)
        return 1
    rows = []
    for name, run in runs:
        rows.append(
            [
                name,
                run.requests,
                run.seconds,
                run.rate,
                run.p(50),
                run.p(99),
                run.server_cpu / run.requests * 1e6,
                TARGET,
                run.rate / TARGET,
                verdict(run.rate / TARGET),
            ]
        )
    print_table(
        [
            "case",
            "events",
            "s",
            "events/s",
            "p50 ms",
            "p99 ms",
            "srv cpu us/event",
            "target",
            "ratio",
            "",
        ],
        rows,
    )
    print("each event: auth, read job + curation row, table check, curation update, history row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
