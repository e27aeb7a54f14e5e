"""UWS blocking: 1,000 clients each waiting (``WAIT=60``) on its own running job.

A real ``jobmill serve`` runs 1,000 jobs of a type that sleeps (``JOBMILL_MAX_LOCAL_JOBS=1000``,
so they are all EXECUTING). One client connection per job then sends
``GET /uws/sleeper/{id}?WAIT=60`` and blocks. The jobs are then aborted one every 10 ms:

* half through this server (``POST /uws/sleeper/{id}/phase`` with ``PHASE=ABORT``, the local
  path: the request wakes the change feed at once);
* half by another process on the same database (this script, through ``JobStore.transition``,
  as a second jobmill would): the server only learns it from the database's event log, which
  its change feed reads every 50 ms while anyone waits.

For each client the delay runs from its job's phase change (the time of the ``abort`` event in
the database, same clock) to the moment its answer was complete. Rows: p50, p99 and max of the
delay and how many answered within 100 ms (target: all), per path; the server's RSS, threads
and open file descriptors with the 1,000 jobs running and no one waiting (idle) next to the
same with the 1,000 clients waiting, and the server's CPU before and while they wait (the engine
watching the 1,000 running jobs costs some by itself); as a floor, a plain
``GET`` of a job (no ``WAIT``) timed while the 1,000 wait.

SQLite by default; also PostgreSQL when ``JOBMILL_BENCH_DATABASE_URL`` or
``JOBMILL_TEST_DATABASE_URL`` names a PostgreSQL server (a scratch database is created there and
dropped afterwards).

Run: ``.venv/bin/python bench/bench_uws_wait.py [--quick]``; ``JOBMILL_BENCH_WAITERS`` sets the
number of clients (default 1,000; 200 with ``--quick``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from _common import (
    Connection,
    Server,
    banner,
    parse_args,
    percentile,
    print_table,
    running_server,
    write_jobtype,
)
from bench_uws_list import postgres_server_url, scratch_postgres
from jobmill.config import Settings
from jobmill.domain.lifecycle import Action
from jobmill.factory import open_store
from jobmill.storage.jobs import JobStore

TARGET_MS = 100.0
PACE = 0.01
BATCH = 500
TYPE = "sleeper"


def raise_fd_limit(needed: int) -> None:
    """Client sockets, server sockets and job pidfds all count against ``RLIMIT_NOFILE``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < needed:
            print(f"(warning: open files limited to {new}; {needed} wanted)")


def proc_figures(pid: int) -> tuple[float, int, int]:
    """RSS (MB), threads and open file descriptors of a process."""
    rss = float("nan")
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def count_executing(store: JobStore) -> int:
    with store.read_engine.connect() as conn:
        query = text("SELECT count(*) FROM jobs WHERE type = :t AND phase = 'EXECUTING'")
        return int(conn.execute(query, {"t": TYPE}).scalar_one())


def abort_times(store: JobStore) -> dict[str, float]:
    """job id -> epoch seconds of its ``abort`` event."""
    with store.read_engine.connect() as conn:
        rows = conn.execute(
            text("SELECT job_id, at FROM events WHERE name = 'abort' AND to_phase = 'ABORTED'")
        ).all()
    out = {}
    for job_id, at in rows:
        when = at if isinstance(at, dt.datetime) else dt.datetime.fromisoformat(str(at))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        out[str(job_id)] = when.timestamp()
    return out


async def start_jobs(server: Server, store: JobStore, n: int) -> list[str]:
    conn = await Connection("127.0.0.1", server.port).open()
    ids: list[str] = []
    try:
        for start in range(0, n, BATCH):
            jobs = [{"type": TYPE} for _ in range(start, min(n, start + BATCH))]
            created = await conn.request("POST", "/api/v1/jobs/batch", {"jobs": jobs}, expect=201)
            ids.extend(created["ids"])
    finally:
        await conn.close()
    deadline = time.monotonic() + 120 + n / 10
    while count_executing(store) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count_executing(store)} of {n} jobs started")
        await asyncio.sleep(0.2)
    await plain_gets(server, ids[:50])  # warm the request path, as a server in use would be
    return ids


async def wait_on(
    server: Server, job_id: str, conns: list[Connection], answers: dict[str, float]
) -> None:
    """Open a connection and block on the job at once (the server closes idle connections)."""
    conn = await Connection("127.0.0.1", server.port).open()
    conns.append(conn)
    status, body = await conn.send(conn.encode("GET", f"/uws/{TYPE}/{job_id}?WAIT=60"))
    answers[job_id] = time.time()
    if status != 200 or b"ABORTED" not in body:
        raise RuntimeError(f"WAIT on {job_id}: {status} {body[:300]!r}")


async def plain_gets(server: Server, ids: list[str]) -> list[float]:
    """Latency (ms) of ``GET`` without ``WAIT``, one after the other."""
    conn = await Connection("127.0.0.1", server.port).open()
    values = []
    try:
        for job_id in ids:
            start = time.perf_counter()
            status, _ = await conn.send(conn.encode("GET", f"/uws/{TYPE}/{job_id}"))
            values.append((time.perf_counter() - start) * 1000)
            if status != 200:
                raise RuntimeError(f"GET {job_id}: {status}")
    finally:
        await conn.close()
    return values


async def abort_through_server(server: Server, ids: list[str]) -> None:
    conn = await Connection("127.0.0.1", server.port).open()
    raw_body = b"PHASE=ABORT"
    try:
        for job_id in ids:
            head = (
                f"POST /uws/{TYPE}/{job_id}/phase HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(raw_body)}\r\n\r\n"
            )
            status, body = await conn.send(head.encode() + raw_body)
            if status != 303:
                raise RuntimeError(f"abort {job_id}: {status} {body[:200]!r}")
            await asyncio.sleep(PACE)
    finally:
        await conn.close()


async def abort_elsewhere(store: JobStore, ids: list[str]) -> None:
    for job_id in ids:
        await asyncio.to_thread(
            store.transition, job_id, Action.ABORT, actor="bench", values={"error": "bench"}
        )
        await asyncio.sleep(PACE)


async def run_waiters(server: Server, store: JobStore, ids: list[str]) -> dict[str, Any]:
    figures: dict[str, Any] = {"idle": proc_figures(server.pid)}
    cpu0 = server.cpu()
    await asyncio.sleep(3.0)
    figures["idle_cpu"] = (server.cpu() - cpu0) / 3.0
    conns: list[Connection] = []
    answers: dict[str, float] = {}
    tasks = [asyncio.create_task(wait_on(server, job_id, conns, answers)) for job_id in ids]
    deadline = time.monotonic() + 60
    while len(conns) < len(ids) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if len(conns) < len(ids):
        raise RuntimeError(f"only {len(conns)} of {len(ids)} clients connected")
    await asyncio.sleep(3.0)  # every request read and parked
    if answers:
        raise RuntimeError(f"{len(answers)} WAIT requests answered before any change")
    figures["waiting"] = proc_figures(server.pid)
    cpu0 = server.cpu()
    await asyncio.sleep(3.0)
    figures["waiting_cpu"] = (server.cpu() - cpu0) / 3.0
    figures["floor"] = await plain_gets(server, ids[:100])
    half = len(ids) // 2
    await abort_through_server(server, ids[:half])
    await abort_elsewhere(store, ids[half:])
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), 90)
    finally:
        for conn in conns:
            await conn.close()
    figures["answers"] = answers
    figures["after"] = proc_figures(server.pid)
    return figures


def delay_rows(label: str, ids: list[str], answers: dict[str, float], changed: dict[str, float]):
    delays = [(answers[i] - changed[i]) * 1000 for i in ids]
    within = sum(1 for d in delays if d <= TARGET_MS)
    return [
        [f"{label}: delay p50 (ms)", percentile(delays, 50), "", ""],
        [f"{label}: delay p99 (ms)", percentile(delays, 99), "", ""],
        [
            f"{label}: delay max (ms)",
            max(delays),
            TARGET_MS,
            "ok" if within == len(ids) else "MISSED",
        ],
        [f"{label}: answered within 100 ms", f"{within} of {len(ids)}", "all", ""],
    ]


def measure(name: str, url: str | None, root: Path, n: int, keep: bool) -> list[list[Any]]:
    settings = Settings(home=root / name / "home", database_url=url)
    store = open_store(settings)
    env = {"JOBMILL_DATABASE_URL": settings.db_url, "JOBMILL_MAX_LOCAL_JOBS": str(n)}
    with running_server([root / "types"], env=env, keep=keep) as server:
        t0 = time.perf_counter()
        ids = asyncio.run(start_jobs(server, store, n))
        print(f"{name}: {n:,} jobs EXECUTING after {time.perf_counter() - t0:.1f} s")
        figures = asyncio.run(run_waiters(server, store, ids))
    changed = abort_times(store)
    store.engine.dispose()
    store.read_engine.dispose()
    half = n // 2
    idle, waiting, after = figures["idle"], figures["waiting"], figures["after"]
    floor, idle_cpu = figures["floor"], figures["idle_cpu"] * 100
    answers = figures["answers"]
    return [
        *delay_rows(f"{name}: aborted through this server", ids[:half], answers, changed),
        *delay_rows(f"{name}: aborted by another process", ids[half:], answers, changed),
        [f"{name}: floor: GET without WAIT while {n:,} wait, p50 (ms)", percentile(floor, 50)],
        [f"{name}:   p99 (ms)", percentile(floor, 99)],
        [
            f"{name}: server RSS (MB): idle / {n:,} waiting / after",
            _triple(idle, waiting, after, 0),
        ],
        [f"{name}: server threads: idle / waiting / after", _triple(idle, waiting, after, 1)],
        [f"{name}: server open fds: idle / waiting / after", _triple(idle, waiting, after, 2)],
        [f"{name}: server CPU, jobs running, no one waiting (% of a core)", idle_cpu],
        [f"{name}: server CPU while {n:,} wait (% of a core)", figures["waiting_cpu"] * 100],
    ]


def _triple(a: tuple[Any, ...], b: tuple[Any, ...], c: tuple[Any, ...], k: int) -> str:
    return " / ".join(f"{x[k]:.0f}" for x in (a, b, c))


def main() -> int:
    args = parse_args(__doc__ or "")
    n = int(os.environ.get("JOBMILL_BENCH_WAITERS") or (200 if args.quick else 1000))
    raise_fd_limit(4 * n + 1024)
    banner(f"bench_uws_wait: {n:,} clients blocked on WAIT=60, one running job each")
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="jobmill-bench-uwswait-") as tmp:
        root = Path(tmp)
        write_jobtype(root / "types", TYPE, ["sleep", "3600"])
        rows += measure("sqlite", None, root, n, args.keep)
        server_url = postgres_server_url()
        if server_url is not None:
            with scratch_postgres(server_url) as url:
                rows += measure("postgresql", url, root, n, args.keep)
        else:
            print("(no PostgreSQL: set JOBMILL_BENCH_DATABASE_URL to measure it too)")
    headers = ["case", "measured", "target", ""]
    print_table(headers, [r + [""] * (len(headers) - len(r)) for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
