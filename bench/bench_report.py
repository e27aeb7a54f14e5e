"""Progress-report endpoint throughput (``POST /api/v1/jobs/{id}/report?token=...``).

A temporary job type prints its ``BATCH_UPDATE_URL`` to stdout and sleeps. The benchmark reads
the URL through ``GET /api/v1/jobs/{id}/logs/stdout`` (the token exists only in the job's
environment), then 8 keep-alive clients post ``{"counters": {"n": i}}`` to it as fast as the
server answers (target: 3,000 posts/s). At the end the job is aborted and its report checked.

Run: ``.venv/bin/python bench/bench_report.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from _common import (
    Connection,
    Load,
    banner,
    closed_loop,
    parse_args,
    print_table,
    running_server,
    verdict,
    write_jobtype,
)

CLIENTS = 8
TARGET = 3000.0
SCRIPT = 'echo "$BATCH_UPDATE_URL"; exec sleep 600'


async def start_reporter(port: int, timeout: float = 30.0) -> tuple[str, str]:
    """Create the job and wait for its URL: (job id, path and query to post to)."""
    conn = await Connection("127.0.0.1", port).open()
    try:
        job = await conn.request("POST", "/api/v1/jobs", {"type": "reporter"}, expect=201)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = await conn.send(
                conn.encode("GET", f"/api/v1/jobs/{job['id']}/logs/stdout")
            )
            line = body.decode().strip()
            if status == 200 and line.startswith("http"):
                url = urlsplit(line.splitlines()[0])
                return job["id"], f"{url.path}?{url.query}"
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the reporter job printed no URL in {timeout} s")
    finally:
        await conn.close()


async def finish(port: int, job_id: str) -> dict[str, object]:
    conn = await Connection("127.0.0.1", port).open()
    try:
        job = await conn.request("POST", f"/api/v1/jobs/{job_id}/abort")
        return dict(job)
    finally:
        await conn.close()


def post(path: str) -> Callable[[Connection, int], bytes]:
    def make(conn: Connection, i: int) -> bytes:
        return conn.encode("POST", path, json.dumps({"counters": {"n": i}}).encode())

    return make


def main() -> int:
    args = parse_args(__doc__ or "")
    total = 1500 if args.quick else 8000
    banner(f"bench_report: report posts from {CLIENTS} clients to one running job, SQLite")
    with tempfile.TemporaryDirectory(prefix="jobmill-bench-types-") as tmp:
        types = Path(tmp)
        write_jobtype(types, "reporter", ["/bin/sh", "-c", SCRIPT], execution_duration=900)
        with running_server([types], keep=args.keep) as server:
            job_id, path = asyncio.run(start_reporter(server.port))
            try:
                asyncio.run(closed_loop(server, CLIENTS, 200, post(path), expect=200))
                load: Load = asyncio.run(
                    closed_loop(server, CLIENTS, total, post(path), expect=200)
                )
                single = asyncio.run(closed_loop(server, 1, total // 4, post(path), expect=200))
            finally:
                job = asyncio.run(finish(server.port, job_id))
    report = job.get("report") or {}
    counters = report.get("counters", {}) if isinstance(report, dict) else {}
    if job.get("phase") != "ABORTED" or "n" not in counters:
        print(f"error: unexpected final job state: {job}", file=sys.stderr)
        return 1
    rows = []
    for name, run in ((f"{CLIENTS} clients", load), ("1 client", single)):
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
            "posts",
            "s",
            "posts/s",
            "p50 ms",
            "p99 ms",
            "srv cpu us/post",
            "target",
            "ratio",
            "",
        ],
        rows,
    )
    print("each post: token check, read-merge-write of the job's report and one event row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
