"""Jobs waiting for data: memory, processes and release latency of the one data watcher.

A real ``jobmill serve`` (SQLite, WAL) gets 10,000 jobs waiting for data (``POST /jobs/batch``,
1,000 per request), each for its own file ``<data>/d/<i>.dat`` on the local filesystem
(inotify). One job of another type holds the only execution slot (``JOBMILL_MAX_LOCAL_JOBS=1``)
so released jobs stay QUEUED: the figures are those of the watcher, not of process spawning.

Rows:

* memory (server RSS) and processes (server + descendants) before and after the 10,000 jobs,
  against the OCPS prototype's one 23 MB polling process per waiting job;
* release latency, from the moment a writer closed the file to the job leaving
  "waiting for data" (the ``wait`` event's time in the database; same clock), for files
  written one every 10 ms (paced) and then for the rest written back to back (burst);
* (full run only) the same on a scanned root (``JOBMILL_SCAN_ROOTS``, as for NFS/Lustre/GPFS,
  scan interval 2 s) for 1,000 jobs.

Targets: RSS <= 150 MB with 10,000 waiting jobs; constant process count; latency
p50 <= 50 ms and p99 <= 500 ms (the prototype polled every 5 s: 2.5 s on average).

Run: ``.venv/bin/python bench/bench_datawait.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    Connection,
    Server,
    banner,
    parse_args,
    percentile,
    print_table,
    running_server,
    verdict,
    write_jobtype,
)

RSS_TARGET_MB = 150.0
P50_TARGET_MS = 50.0
P99_TARGET_MS = 500.0
SEED_RSS_MB = 23.0  # one OCPS monitor.py per waiting job (ps RSS ~22.9 MB)
SEED_POLL = 5.0
BATCH = 1000


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def descendants(pid: int) -> int:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    stat = handle.read()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    count, frontier = 0, [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, parent in parents.items() if parent == current]
        count += len(children)
        frontier.extend(children)
    return count


async def create_waiting(server: Server, n: int) -> list[str]:
    conn = await Connection("127.0.0.1", server.port).open()
    ids: list[str] = []
    try:
        for start in range(0, n, BATCH):
            jobs = [
                {"type": "noop", "wait_for": {"paths": [f"d/{i}.dat"]}}
                for i in range(start, min(n, start + BATCH))
            ]
            created = await conn.request("POST", "/api/v1/jobs/batch", {"jobs": jobs}, expect=201)
            ids.extend(created["ids"])
    finally:
        await conn.close()
    return ids


async def start_blocker(server: Server) -> str:
    conn = await Connection("127.0.0.1", server.port).open()
    try:
        job = await conn.request("POST", "/api/v1/jobs", {"type": "block"}, expect=201)
        for _ in range(200):
            if (await conn.request("GET", f"/api/v1/jobs/{job['id']}"))["phase"] == "EXECUTING":
                return str(job["id"])
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise RuntimeError("the blocking job did not start")


def release_times(db: Path, ids: set[str]) -> dict[str, float]:
    """job id -> epoch seconds of its release (``wait`` event), read-only from the database."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT job_id, at FROM events WHERE name = 'wait'").fetchall()
    finally:
        conn.close()
    out = {}
    for job_id, at in rows:
        if job_id in ids:
            when = dt.datetime.fromisoformat(str(at))
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            out[job_id] = when.timestamp()
    return out


def write_files(data: Path, indexes: range, pause: float) -> list[float]:
    """Write ``d/<i>.dat`` (1 KiB each); the time each one was closed."""
    closed = []
    payload = b"x" * 1024
    for i in indexes:
        with open(data / "d" / f"{i}.dat", "wb") as handle:
            handle.write(payload)
        closed.append(time.time())
        if pause:
            time.sleep(pause)
    return closed


def latencies(server: Server, ids: list[str], closed: list[float], timeout: float) -> list[float]:
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    db = server.home / "jobmill.db"
    while True:
        times = release_times(db, wanted)
        if len(times) == len(wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    missing = len(wanted) - len(times)
    if missing:
        raise RuntimeError(f"{missing} of {len(wanted)} jobs were not released in {timeout} s")
    return [times[job_id] - t for job_id, t in zip(ids, closed, strict=True)]


def run_local(types: Path, data: Path, n: int, paced: int, keep: bool) -> list[list[object]]:
    env = {"JOBMILL_MAX_LOCAL_JOBS": "1", "JOBMILL_DATA_ROOT": str(data)}
    (data / "d").mkdir(parents=True)
    with running_server([types], env=env, keep=keep) as server:
        asyncio.run(start_blocker(server))
        time.sleep(0.5)
        rss0, procs0, threads0 = rss_mb(server.pid), descendants(server.pid), threads(server.pid)
        cpu0 = server.cpu()
        t0 = time.perf_counter()
        ids = asyncio.run(create_waiting(server, n))
        create_s = time.perf_counter() - t0
        time.sleep(2.0)  # the watcher indexes them
        rss1, procs1, threads1 = rss_mb(server.pid), descendants(server.pid), threads(server.pid)
        cpu_wait0 = server.cpu()
        time.sleep(5.0)
        idle_cpu = (server.cpu() - cpu_wait0) / 5.0

        closed = write_files(data, range(paced), 0.01)
        paced_lat = latencies(server, ids[:paced], closed, 60)
        burst_start = time.time()
        closed_burst = write_files(data, range(paced, n), 0.0)
        burst_lat = latencies(server, ids[paced:], closed_burst, 300)
        burst_end = max(t + lat for t, lat in zip(closed_burst, burst_lat, strict=True))
        rss2, procs2 = rss_mb(server.pid), descendants(server.pid)
        cpu = server.cpu() - cpu0
    print(
        f"created {n:,} waiting jobs in {create_s:.1f} s ({n / create_s:,.0f} jobs/s); "
        f"server CPU for everything: {cpu:.1f} s; idle CPU with {n:,} waiting: "
        f"{idle_cpu * 100:.1f} % of a core"
    )
    print(
        f"server threads: {threads0} before, {threads1} with {n:,} waiting; processes below the "
        f"server: {procs0} before, {procs1} waiting, {procs2} after (the blocking job's)"
    )
    per_job_kb = (rss1 - rss0) * 1024 / n
    burst_n = n - paced
    burst_rate = burst_n / (burst_end - burst_start)
    return [
        ["RSS before the jobs (MB)", rss0, "", ""],
        [f"RSS with {n:,} jobs waiting (MB)", rss1, RSS_TARGET_MB, verdict(RSS_TARGET_MB / rss1)],
        ["  added per waiting job (KB)", per_job_kb, "", ""],
        [f"RSS after releasing all {n:,} (MB)", rss2, "", ""],
        [f"OCPS prototype, {n:,} waiting (MB)", n * SEED_RSS_MB, "", ""],
        [
            f"processes below the server: before / {n:,} waiting / after",
            f"{procs0} / {procs1} / {procs2}",
            "constant",
            "ok" if procs0 == procs1 == procs2 else "MISSED",
        ],
        [f"OCPS prototype processes, {n:,} waiting", n, "", ""],
        *latency_rows(f"paced ({paced:,} files, 1 per 10 ms)", paced_lat),
        *latency_rows(f"burst ({burst_n:,} files back to back)", burst_lat),
        ["  burst: files written and released per second", burst_rate, "", ""],
        [
            "OCPS prototype latency p50 / max (ms)",
            f"{SEED_POLL * 500:.0f} / {SEED_POLL * 1000:.0f}",
            "",
            "",
        ],
    ]


def latency_rows(label: str, values: list[float]) -> list[list[object]]:
    p50 = percentile(values, 50) * 1000
    p99 = percentile(values, 99) * 1000
    return [
        [f"latency {label}: p50 (ms)", p50, P50_TARGET_MS, verdict(P50_TARGET_MS / p50)],
        [f"latency {label}: p99 (ms)", p99, P99_TARGET_MS, verdict(P99_TARGET_MS / p99)],
        [f"latency {label}: max (ms)", max(values) * 1000, "", ""],
    ]


def run_scanned(types: Path, data: Path, n: int, paced: int, keep: bool) -> list[list[object]]:
    env = {
        "JOBMILL_MAX_LOCAL_JOBS": "1",
        "JOBMILL_DATA_ROOT": str(data),
        "JOBMILL_SCAN_ROOTS": str(data),
        "JOBMILL_SCAN_INTERVAL": "2",
    }
    (data / "d").mkdir(parents=True)
    with running_server([types], env=env, keep=keep) as server:
        asyncio.run(start_blocker(server))
        ids = asyncio.run(create_waiting(server, n))
        time.sleep(3.0)
        closed = write_files(data, range(paced), 0.05)
        lat = latencies(server, ids[:paced], closed, 60)
    return [
        [
            f"scanned root (2 s interval), {paced} files: p50 (ms)",
            percentile(lat, 50) * 1000,
            "",
            "",
        ],
        ["  p99 (ms)", percentile(lat, 99) * 1000, "", ""],
        ["  max (ms)", max(lat) * 1000, "", ""],
    ]


def main() -> int:
    args = parse_args(__doc__ or "")
    n = 1000 if args.quick else 10_000
    paced = 200 if args.quick else 1000
    banner(f"bench_datawait: {n:,} jobs waiting for data, {paced:,} paced files")
    with tempfile.TemporaryDirectory(prefix="jobmill-bench-datawait-") as tmp:
        root = Path(tmp)
        types = root / "types"
        write_jobtype(types, "noop", ["/bin/true"])
        write_jobtype(types, "block", ["sleep", "3600"])
        rows = run_local(types, root / "local", n, paced, args.keep)
        if not args.quick:
            rows += run_scanned(types, root / "scanned", 1000, 100, args.keep)
    print_table(["case", "measured", "target", ""], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
