"""End-to-end local dispatch: ``/bin/true`` jobs from submission to COMPLETED.

A temporary job type runs ``/bin/true``. N jobs are submitted QUEUED in one batch request and
the clock runs until the last of them has ended (taken from the jobs' own ``ended`` times, so
the polling interval does not blur the figure). Side by side, in the same run, bare
``subprocess`` loops start ``/bin/true`` the same number of times:

* sequentially (spawn, wait, next);
* with as many workers as ``JOBMILL_MAX_LOCAL_JOBS``;
* with the same workers, each job with the files jobmill's shepherd makes for it (a working
  directory, stdout/stderr logs; the pid and exit status files only when jobmill goes away):
  the reference of the target, jobmill >= 50 % of it.

The jobmill server's CPU is reported with its shepherd's (the process that starts the jobs) and
the jobs' own.

A peer scheduler runs the same work in the same run: HyperQueue 0.27 (``_hyperqueue.py``: the
PyPI wheel, which embeds its server, in a separate venv cached under ``~/.cache/jobmill-bench``
or ``$JOBMILL_BENCH_CACHE``, run in private network namespaces) with one worker of as many
cores as ``JOBMILL_MAX_LOCAL_JOBS``: after a warm-up job, one job of N ``/bin/true`` tasks, each
with its own working directory and stdout/stderr files, timed from submission to the creation
of the last task's log files (HyperQueue's client exposes no end times and polls once a
second; see ``_hyperqueue.py``). Target: jobmill >= 2x HyperQueue's rate. Where HyperQueue
cannot be installed or isolated, its row says why and the target is not judged.

The bare loops and HyperQueue run before and after jobmill and the mean is the reference (the
machine is noisy). Run: ``.venv/bin/python bench/bench_dispatch.py [--quick]``.
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
    cpu_seconds,
    parse_args,
    print_table,
    running_server,
    verdict,
    write_jobtype,
)
from _hyperqueue import HyperQueue

TARGET_RATIO = 0.5
TARGET_VS_HQ = 2.0


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


def with_files(n: int, workers: int, root: Path) -> float:
    """Like ``bare`` but each run with the per-job files jobmill's shepherd makes: a working
    directory, stdout and stderr logs (the pid and exit status files are written only when
    jobmill goes away), the reference of the target."""

    def one(i: int) -> None:
        workdir = root / f"job-{i}"
        workdir.mkdir(parents=True)
        with open(workdir / "stdout.log", "ab") as out, open(workdir / "stderr.log", "ab") as err:
            proc = subprocess.Popen(  # fixed argv
                ["/bin/true"],
                cwd=workdir,
                env={"PATH": os.environ.get("PATH", "")},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        proc.wait()

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - start
    shutil.rmtree(root, ignore_errors=True)
    return elapsed


def shepherd_pids(server_pid: int) -> list[int]:
    """The server's local shepherd processes (started with its first local job)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat[stat.rfind(")") + 2 :].split()[1])
        if parent == server_pid and b"jobmill.executors.shepherd" in cmdline:
            found.append(int(entry))
    return found


def own_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def jobs_cpu_of(pids: list[int]) -> float:
    """CPU seconds of the processes the shepherds reaped (the jobs)."""
    return sum(children_cpu_seconds(pid) for pid in pids)


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
    hq = HyperQueue().setup()  # creates its venv on the first run, before any clock starts
    with tempfile.TemporaryDirectory(prefix="jobmill-bench-dispatch-") as tmp:
        root = Path(tmp)
        types = root / "types"
        write_jobtype(types, "true", ["/bin/true"])
        bare(20, 1)  # warm the page cache
        seq_before = bare(n, 1)
        par_before = bare(n, workers)
        files_before = with_files(n, workers, root / "files")
        hq_before = hq.run(n, workers, root / "hyperqueue")
        env = {"JOBMILL_MAX_LOCAL_JOBS": str(workers)}
        with running_server([types], env=env, keep=args.keep) as server:
            asyncio.run(run_jobmill(server.port, 20, 60))  # warm-up
            shepherds = shepherd_pids(server.pid)
            cpu0, shepherd0, kids0 = server.cpu(), own_cpu(shepherds), jobs_cpu_of(shepherds)
            total, busy, completed, failed = asyncio.run(run_jobmill(server.port, n, 600))
            server_cpu = server.cpu() - cpu0
            shepherd_cpu = own_cpu(shepherds) - shepherd0
            jobs_cpu = jobs_cpu_of(shepherds) - kids0
        seq_after = bare(n, 1)
        par_after = bare(n, workers)
        files_after = with_files(n, workers, root / "files")
        hq_after = hq.run(n, workers, root / "hyperqueue")
    if completed != n or failed:
        print(f"error: {completed} of {n} jobs completed, {failed} did not", file=sys.stderr)
        return 1
    seq = (seq_before + seq_after) / 2
    par = (par_before + par_after) / 2
    files = (files_before + files_after) / 2
    par_rate = n / par
    files_rate = n / files
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
            f"bare, same per-job files, {workers} workers (target's reference)",
            files_rate,
            n / files_before,
            n / files_after,
            files_rate / par_rate,
            "",
        ],
        [
            f"jobmill submit -> COMPLETED, {workers} slots",
            n / total,
            "",
            "",
            (n / total) / par_rate,
            verdict((n / total) / files_rate / TARGET_RATIO),
        ],
        ["jobmill first start -> last end", n / busy, "", "", (n / busy) / par_rate, ""],
    ]
    hq_label = f"HyperQueue 0.27 submit -> all finished, {workers} slots"
    hq_runs = [r for r in (hq_before, hq_after) if r is not None]
    hq_rate = n / (sum(r.seconds for r in hq_runs) / len(hq_runs)) if hq_runs else None
    if hq_rate is None:
        rows.insert(3, [hq_label, "-", "", "", "", f"not measured: {hq.reason}"])
    else:
        rows.insert(
            3,
            [
                hq_label,
                hq_rate,
                hq_before.rate if hq_before else "failed",
                hq_after.rate if hq_after else "failed",
                hq_rate / par_rate,
                "",
            ],
        )
    print_table(["case", "jobs/s", "before", "after", "vs reference", ""], rows)
    print(
        f"target: jobmill >= {TARGET_RATIO:.0%} of the bare loop with the same per-job files; "
        f"measured {(n / total) / files_rate:.0%} ({(n / total) / par_rate:.0%} of the bare "
        "spawn loop without files)"
    )
    if hq_rate is None:
        print(f"target: jobmill >= {TARGET_VS_HQ:g}x HyperQueue's rate: not measured ({hq.reason})")
    else:
        vs_hq = (n / total) / hq_rate
        print(
            f"target: jobmill >= {TARGET_VS_HQ:g}x HyperQueue's rate; "
            f"measured {vs_hq:.2f}x: {verdict(vs_hq / TARGET_VS_HQ)}"
        )
    print(
        f"jobmill server CPU: {server_cpu / n * 1e3:.2f} ms/job (all threads); its shepherd: "
        f"{shepherd_cpu / n * 1e3:.2f} ms/job; job processes' CPU: {jobs_cpu / n * 1e3:.2f} ms/job"
    )
    if hq_runs:
        hq_cpu = sum(r.cpu for r in hq_runs) / len(hq_runs)
        hq_tasks_cpu = sum(r.tasks_cpu for r in hq_runs) / len(hq_runs)
        hq_wait = sum(r.seconds_wait for r in hq_runs) / len(hq_runs)
        print(
            f"HyperQueue CPU: {hq_cpu / n * 1e3:.2f} ms/task (server, worker and client, one "
            f"process); task processes' CPU: {hq_tasks_cpu / n * 1e3:.2f} ms/task; "
            f"{n / hq_wait:.0f} tasks/s to the return of wait_for_jobs (1 s polls)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
