"""End-to-end local dispatch: ``/bin/true`` jobs from submission to COMPLETED.

A temporary job type runs ``/bin/true``. N jobs are submitted QUEUED in one batch request and
the clock runs until the last of them has ended (taken from the jobs' own ``ended`` times, so
the polling interval does not blur the figure). Side by side, in the same run, bare
``subprocess`` loops start ``/bin/true`` the same number of times:

* sequentially (spawn, wait, next);
* with as many workers as ``JOBMILL_MAX_LOCAL_JOBS`` (the fair reference: target >= 50 %);
* with the same workers, each spawn wrapped the way the local executor does it (``/bin/sh -c``
  wrapper writing pid and exit files, a working directory, stdout/stderr log files), which
  separates the cost of the executor's process recipe from the rest of jobmill.

The bare loops run before and after jobmill and the mean is the reference (the machine is
noisy). Run: ``.venv/bin/python bench/bench_dispatch.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import (
    Connection,
    banner,
    children_cpu_seconds,
    parse_args,
    print_table,
    running_server,
    verdict,
    write_jobtype,
)

TARGET_RATIO = 0.5
WRAPPER = 'echo $$ > .jobmill-pid; "$@"; c=$?; echo $c > .jobmill-exit; exit $c'


def spawn_true() -> None:
    subprocess.run(["/bin/true"], check=True)  # fixed argv


def bare(n: int, workers: int) -> float:
    """Seconds to run ``/bin/true`` n times with ``workers`` concurrent spawn-and-wait loops."""
    start = time.perf_counter()
    if workers == 1:
        for _ in range(n):
            spawn_true()
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda _: spawn_true(), range(n)))
    return time.perf_counter() - start


def wrapped(n: int, workers: int, root: Path) -> float:
    """Like ``bare`` but each run as the local executor starts a job."""

    def one(i: int) -> None:
        workdir = root / f"job-{i}"
        workdir.mkdir(parents=True)
        with open(workdir / "stdout.log", "ab") as out, open(workdir / "stderr.log", "ab") as err:
            subprocess.run(  # constant wrapper, fixed argv
                ["/bin/sh", "-c", WRAPPER, "jobmill-job", "/bin/true"],
                cwd=workdir,
                env={"PATH": os.environ.get("PATH", "")},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                check=True,
            )

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - start
    shutil.rmtree(root, ignore_errors=True)
    return elapsed


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def run_jobmill(port: int, n: int, timeout: float) -> tuple[float, float, int, int]:
    """(seconds from submission to the last end, seconds from the first start to the last end,
    completed, failed)."""
    conn = await Connection("127.0.0.1", port).open()
    try:
        body = {"jobs": [{"type": "true"} for _ in range(n)]}
        start = time.time()
        created = await conn.request("POST", "/api/v1/jobs/batch", body, expect=201)
        ids = set(created["ids"])
        deadline = time.monotonic() + timeout
        while True:
            page = await conn.request(
                "GET", "/api/v1/jobs?phase=QUEUED&phase=EXECUTING&phase=PENDING&limit=1"
            )
            if not page["jobs"]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs still running after {timeout} s")
            await asyncio.sleep(0.1)
        started, ended, completed, failed = [], [], 0, 0
        cursor = ""
        while True:
            page = await conn.request("GET", f"/api/v1/jobs?limit=500{cursor}")
            for job in page["jobs"]:
                if job["id"] not in ids:
                    continue
                completed += job["phase"] == "COMPLETED"
                failed += job["phase"] != "COMPLETED"
                started.append(parse_time(job["started"]))
                ended.append(parse_time(job["ended"]))
            if not page["next_cursor"]:
                break
            cursor = f"&cursor={page['next_cursor']}"
    finally:
        await conn.close()
    return max(ended) - start, max(ended) - min(started), completed, failed


def main() -> int:
    args = parse_args(__doc__ or "")
    n = 150 if args.quick else 500
    workers = int(os.environ.get("JOBMILL_MAX_LOCAL_JOBS") or os.cpu_count() or 1)
    banner(f"bench_dispatch: {n} /bin/true jobs, JOBMILL_MAX_LOCAL_JOBS={workers}")
    with tempfile.TemporaryDirectory(prefix="jobmill-bench-dispatch-") as tmp:
        root = Path(tmp)
        types = root / "types"
        write_jobtype(types, "true", ["/bin/true"])
        bare(20, 1)  # warm the page cache
        seq_before = bare(n, 1)
        par_before = bare(n, workers)
        wrap_before = wrapped(n, workers, root / "wrapped")
        env = {"JOBMILL_MAX_LOCAL_JOBS": str(workers)}
        with running_server([types], env=env, keep=args.keep) as server:
            asyncio.run(run_jobmill(server.port, 20, 60))  # warm-up
            cpu0, kids0 = server.cpu(), children_cpu_seconds(server.pid)
            total, busy, completed, failed = asyncio.run(run_jobmill(server.port, n, 600))
            server_cpu = server.cpu() - cpu0
            jobs_cpu = children_cpu_seconds(server.pid) - kids0
        seq_after = bare(n, 1)
        par_after = bare(n, workers)
        wrap_after = wrapped(n, workers, root / "wrapped")
    if completed != n or failed:
        print(f"error: {completed} of {n} jobs completed, {failed} did not", file=sys.stderr)
        return 1
    seq = (seq_before + seq_after) / 2
    par = (par_before + par_after) / 2
    wrap = (wrap_before + wrap_after) / 2
    par_rate = n / par
    rows = [
        ["bare spawn+wait, sequential", n / seq, n / seq_before, n / seq_after, "", ""],
        [
            f"bare spawn+wait, {workers} workers (reference)",
            par_rate,
            n / par_before,
            n / par_after,
            1.0,
            "",
        ],
        [
            f"bare, executor's sh wrapper + files, {workers} workers",
            n / wrap,
            n / wrap_before,
            n / wrap_after,
            (n / wrap) / par_rate,
            "",
        ],
        [
            f"jobmill submit -> COMPLETED, {workers} slots",
            n / total,
            "",
            "",
            (n / total) / par_rate,
            verdict((n / total) / par_rate / TARGET_RATIO),
        ],
        ["jobmill first start -> last end", n / busy, "", "", (n / busy) / par_rate, ""],
    ]
    print_table(["case", "jobs/s", "before", "after", "vs reference", ""], rows)
    print(
        f"target: jobmill >= {TARGET_RATIO:.0%} of the reference rate; "
        f"measured {(n / total) / par_rate:.0%}"
    )
    print(
        f"jobmill server CPU: {server_cpu / n * 1e3:.2f} ms/job (all threads); "
        f"job processes' CPU: {jobs_cpu / n * 1e3:.2f} ms/job"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
