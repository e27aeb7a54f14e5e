"""Job submission throughput over HTTP on SQLite (WAL), or on PostgreSQL with
``JOBMILL_BENCH_DATABASE_URL`` set (an admin URL: each server gets a fresh database).

Rows:

* ``POST /jobs`` as PENDING from 8 keep-alive clients: the jobs never run, so this is the cost
  of creating a job alone (target: 1,000 jobs/s);
* the same, QUEUED, with ``JOBMILL_MAX_LOCAL_JOBS=2`` and a ``/bin/true`` job type: the engine
  dispatches and finishes jobs while they are being submitted, which is what a busy server
  really pays;
* ``POST /jobs/batch`` with 1,000 PENDING jobs per request from 1 and from 8 clients
  (target: 10,000 jobs/s);
* with ``--workers N`` (N > 1), the two ``POST /jobs`` rows again against ``jobmill serve
  --workers N`` (``JOBMILL_WORKERS``) in the same run: N API worker processes on one socket,
  the engine in the serve process; server CPU is then that of the whole process tree, and the
  share of each worker is printed (target: 1,500 jobs/s with 2 processes on PostgreSQL).

Run: ``.venv/bin/python bench/bench_submit.py [--quick] [--workers N]``; for PostgreSQL, with
``JOBMILL_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5433/postgres``.
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
    database_kind,
    parse_args,
    print_table,
    running_server,
    tree,
    tree_cpu,
    verdict,
    worker_server,
    workers_arg,
    write_jobtype,
)

CLIENTS = 8
CROWD = 50  # the latency case: p99 <= 100 ms with 50 clients
CROWD_P99_MS = 100.0
SINGLE_TARGET = 1000.0
WORKERS_TARGET = 1500.0  # POST /jobs with several API processes (the issue: 2, on PostgreSQL)
BATCH_TARGET = 10000.0
BATCH_SIZE = 1000


def job(i: int, phase: str) -> dict[str, object]:
    return {"type": "noop", "parameters": {"message": f"job {i}"}, "phase": phase}


def single(phase: str) -> Callable[[Connection, int], bytes]:
    def make(conn: Connection, i: int) -> bytes:
        return conn.encode("POST", "/api/v1/jobs", json.dumps(job(i, phase)).encode())

    return make


def batch(size: int) -> Callable[[Connection, int], bytes]:
    def make(conn: Connection, i: int) -> bytes:
        body = {"jobs": [job(i * size + k, "PENDING") for k in range(size)]}
        return conn.encode("POST", "/api/v1/jobs/batch", json.dumps(body).encode())

    return make


def created(phase: str) -> Callable[[bytes], None]:
    def check(body: bytes) -> None:
        got = json.loads(body)["phase"]
        if got != phase:
            raise RuntimeError(f"created a {got} job, expected {phase}")

    return check


def created_many(size: int) -> Callable[[bytes], None]:
    def check(body: bytes) -> None:
        answer = json.loads(body)
        if answer["count"] != size or len(answer["ids"]) != size:
            raise RuntimeError(f"a batch created {answer['count']} jobs, expected {size}")

    return check


async def count_jobs(port: int, phase: str) -> int:
    """How many jobs are in ``phase`` (pages of 500: with limit=1000 the service asks the store
    for 1,001 rows, the store caps pages at 1,000, and no next_cursor is ever given)."""
    conn = await Connection("127.0.0.1", port).open()
    total, cursor = 0, ""
    try:
        while True:
            page = await conn.request("GET", f"/api/v1/jobs?phase={phase}&limit=500{cursor}")
            total += len(page["jobs"])
            if not page["next_cursor"]:
                return total
            cursor = f"&cursor={page['next_cursor']}"
    finally:
        await conn.close()


def row(name: str, load: Load, jobs_per_request: int, target: float) -> list[object]:
    jobs_per_s = load.rate * jobs_per_request
    cpu_per_job_us = load.server_cpu / (load.requests * jobs_per_request) * 1e6
    return [
        name,
        load.requests * jobs_per_request,
        load.seconds,
        jobs_per_s,
        load.p(50),
        load.p(99),
        cpu_per_job_us,
        target,
        jobs_per_s / target,
        verdict(jobs_per_s / target),
    ]


def main() -> int:
    workers = workers_arg()
    args = parse_args(__doc__ or "")
    n_single = 1000 if args.quick else 4000
    n_queued = 500 if args.quick else 2000
    n_batches = 5 if args.quick else 25
    warm = 100
    banner(f"bench_submit: job creation over HTTP, {CLIENTS} clients, {database_kind()}")
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="jobmill-bench-types-") as tmp:
        types = Path(tmp)
        write_jobtype(
            types,
            "noop",
            ["/bin/true", "{message}"],
            parameters={"message": {"type": "string", "required": True}},
        )

        def run_single(server: Server, phase: str, n: int, clients: int = CLIENTS) -> Load:
            make, check = single(phase), created(phase)
            asyncio.run(closed_loop(server, clients, warm, make, expect=201, check=check))
            return asyncio.run(closed_loop(server, clients, n, make, expect=201, check=check))

        def run_batch(server: Server, clients: int) -> Load:
            make, check = batch(BATCH_SIZE), created_many(BATCH_SIZE)
            return asyncio.run(
                closed_loop(server, clients, n_batches, make, expect=201, check=check)
            )

        with running_server([types], keep=args.keep) as server:
            load = run_single(server, "PENDING", n_single)
            rows.append(row("POST /jobs, PENDING", load, 1, SINGLE_TARGET))
            crowd = run_single(server, "PENDING", n_single, clients=CROWD)
            rows.append(row(f"POST /jobs, PENDING, {CROWD} clients", crowd, 1, SINGLE_TARGET))
            for clients in (1, CLIENTS):
                load = run_batch(server, clients)
                name = f"POST /jobs/batch x{BATCH_SIZE}, {clients} client{'s' * (clients > 1)}"
                rows.append(row(name, load, BATCH_SIZE, BATCH_TARGET))
        env = {"JOBMILL_MAX_LOCAL_JOBS": "2"}
        with running_server([types], env=env, keep=args.keep) as server:
            load = run_single(server, "QUEUED", n_queued)
            done = asyncio.run(count_jobs(server.port, "COMPLETED"))
            rows.append(row("POST /jobs, QUEUED, 2 running", load, 1, SINGLE_TARGET))
        shares: list[str] = []
        if workers > 1:
            for phase, n, extra in (("PENDING", n_single, {}), ("QUEUED", n_queued, env)):
                with worker_server([types], workers, env=extra, keep=args.keep) as server:
                    pids = tree(server.pid)
                    before = tree_cpu(pids)
                    load = run_single(server, phase, n)
                    spent = {p: c - before.get(p, 0.0) for p, c in tree_cpu(pids).items()}
                    name = f"POST /jobs, {phase}, {workers} workers"
                    rows.append(row(name, load, 1, WORKERS_TARGET))
                    parts = ", ".join(
                        f"{'serve' if p == server.pid else p} {c:.1f}"
                        for p, c in sorted(spent.items(), key=lambda item: -item[1])
                        if c > 0.05
                    )
                    shares.append(f"{name}: CPU s per process (warm-up included): {parts}")
    headers = ["case", "jobs", "s", "jobs/s", "p50 ms", "p99 ms", "srv cpu us/job", "target"]
    print_table([*headers, "ratio", ""], rows)
    print(f"database: {database_kind()}")
    print("latency = per request; srv cpu = server process CPU (all threads) per job created")
    print(f"{CROWD}-client row: the latency target is p99 <= {CROWD_P99_MS:.0f} ms")
    print(
        f"QUEUED row: {done} of {warm + n_queued} /bin/true jobs had completed when the "
        "submissions ended (the engine dispatched while the clients submitted)"
    )
    for line in shares:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
