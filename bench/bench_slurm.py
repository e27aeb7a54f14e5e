"""The Slurm executor on the real Slurm: submission throughput and the cost of status polling.

Rows:

* a bare ``sbatch --parsable`` loop (one process per job, sequential, the same script jobmill
  renders), before and after jobmill's run: the reference rate;
* jobmill: N jobs created with ``POST /api/v1/jobs/batch`` for a Slurm job type, timed until
  every one has its Slurm job id (claimed in groups, rendered, submitted, recorded), twice:
  with one ``sbatch`` per job (``JOBMILL_SLURM_ARRAY_MIN=0``) and with job arrays (the
  default, ``JOBMILL_SLURM_ARRAY_MIN`` = 8: one ``sbatch --array`` per group of up to 200)
  (target: >= 80% of the bare rate, more with arrays);
* polling, with N jobmill jobs held in Slurm: the scheduler commands jobmill runs per poll
  interval, counted by wrappers around ``squeue`` and ``sacct`` (target: 1 per interval, the
  same for any N), the time one ``squeue`` takes, and ``SlurmExecutor.poll`` for 20, 200 and
  all N ids in this process.

Every job is submitted held (``--hold``): nothing runs, and every job is cancelled at the end.
Finished jobs stay in slurmctld for ``MinJobAge`` (an hour on the test machine) and count
towards ``MaxJobCount``: the benchmark refuses to start when too few slots are left.

Run (as a user that may submit to Slurm): ``.venv/bin/python bench/bench_slurm.py [--quick]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    JOBMILL,
    Server,
    _stop,
    _wait_healthy,
    auth_headers,
    banner,
    children_cpu_seconds,
    cpu_seconds,
    free_port,
    parse_args,
    percentile,
    print_table,
    verdict,
)
from jobmill.domain.jobtypes import Resources
from jobmill.executors._commands import run
from jobmill.executors.base import LaunchSpec
from jobmill.executors.slurm import SQUEUE_FORMAT, SlurmExecutor

TARGET_RATIO = 0.8
ARRAY_MIN = 8  # JOBMILL_SLURM_ARRAY_MIN of the run with job arrays (the default)
POLL_INTERVAL = 1.0
POLL_WINDOW = 10.0  # seconds of polling measured
WRAPPED = ("squeue", "sacct")  # counted; sbatch, scancel, scontrol are plain symlinks


def slurm_jobs_in_controller() -> tuple[int, int]:
    """(jobs slurmctld holds now, MaxJobCount)."""
    listed = run(["squeue", "-h", "-t", "all", "-o", "%i"], timeout=60).split()
    limit = 10000
    for line in run(["scontrol", "show", "config"], timeout=30).splitlines():
        if line.startswith("MaxJobCount"):
            limit = int(line.split("=", 1)[1])
    return len(listed), limit


def make_bin(directory: Path, log: Path) -> None:
    """Counting wrappers for the polling commands (a builtin write, then exec: ~1 ms)."""
    directory.mkdir(parents=True)
    for name in ("sbatch", "squeue", "sacct", "scancel", "scontrol"):
        real = shutil.which(name)
        if real is None:
            raise SystemExit(f"{name} is not on PATH: is Slurm installed?")
        target = directory / name
        if name in WRAPPED:
            target.write_text(f"#!/bin/sh\nprintf '%s\\n' {name} >> '{log}'\nexec {real} \"$@\"\n")
            target.chmod(0o755)
        else:
            target.symlink_to(real)


def own_cpu() -> float:
    """CPU seconds of this process and its reaped children (the sbatch processes)."""
    me, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def bare_loop(n: int, script: str) -> tuple[float, float, list[str]]:
    """Seconds and CPU seconds for n sequential ``sbatch --parsable`` calls; the job ids."""
    ids = []
    cpu = own_cpu()
    start = time.perf_counter()
    for _ in range(n):
        out = run(["sbatch", "--parsable"], timeout=60, stdin=script)
        ids.append(out.strip().split(";")[0])
    return time.perf_counter() - start, own_cpu() - cpu, ids


def sample_script(workdir: Path) -> str:
    spec = LaunchSpec(
        job_id="00000000-0000-4000-8000-000000000000",
        argv=["/bin/true"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "JOBMILL_TOKEN": "x" * 32},
        workdir=workdir,
        stdout=workdir / "stdout.log",
        stderr=workdir / "stderr.log",
        resources=Resources(extra=["--hold"]),
    )
    return SlurmExecutor().render(spec)


def start_server(base: Path, types: Path, bin_dir: Path, name: str, array_min: int) -> Server:
    home = base / name
    log = base / f"serve-{name}.log"
    port = free_port()
    env = dict(os.environ)
    env.pop("JOBMILL_DATABASE_URL", None)
    env.update(
        JOBMILL_EXECUTORS="local,slurm",
        JOBMILL_SLURM_BIN=str(bin_dir),
        JOBMILL_POLL_INTERVAL=str(POLL_INTERVAL),
        JOBMILL_SLURM_ARRAY_MIN=str(array_min),
    )
    argv = [str(JOBMILL), "serve", "--home", str(home), "--port", str(port)]
    argv += ["--jobtypes", str(types)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=base, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(proc, port, home, log, env)
    _wait_healthy(server, 30)
    return server


def native_ids(home: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{home / 'jobmill.db'}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT native_id FROM jobs WHERE native_id IS NOT NULL").fetchall()
    return [row[0] for row in rows]


def server_cpu(server: Server) -> float:
    return cpu_seconds(server.pid) + children_cpu_seconds(server.pid)


def submit_through_jobmill(server: Server, n: int) -> tuple[float, float]:
    """Seconds and server CPU seconds (sbatch children included) from the first POST until
    every job has its Slurm id."""
    import httpx

    cpu = server_cpu(server)
    start = time.perf_counter()
    with httpx.Client(base_url=server.url, timeout=120, headers=auth_headers()) as http:
        for first in range(0, n, 1000):
            body = {"jobs": [{"type": "held"} for _ in range(min(1000, n - first))]}
            answer = http.post("/api/v1/jobs/batch", json=body)
            if answer.status_code != 201:
                raise RuntimeError(f"batch: {answer.status_code} {answer.text[:300]}")
    deadline = time.monotonic() + max(120.0, n * 0.2)
    while len(native_ids(server.home)) < n:
        if time.monotonic() > deadline or server.proc.poll() is not None:
            raise RuntimeError(f"jobs not submitted in time:\n{server.tail_log()}")
        time.sleep(0.05)
    return time.perf_counter() - start, server_cpu(server) - cpu


def count_calls(log: Path) -> dict[str, int]:
    try:
        lines = log.read_text().split()
    except FileNotFoundError:
        return dict.fromkeys(WRAPPED, 0)
    return {name: lines.count(name) for name in WRAPPED}


def cancel(ids: list[str]) -> None:
    for first in range(0, len(ids), 500):
        with contextlib.suppress(Exception):
            run(["scancel", *ids[first : first + 500]], timeout=120)


def main() -> int:
    args = parse_args(__doc__ or "")
    n = 200 if args.quick else 2000
    n_bare = 50 if args.quick else 250
    banner(f"bench_slurm: {n} jobmill jobs, bare loops of {n_bare}, poll every {POLL_INTERVAL} s")
    if shutil.which("sbatch") is None:
        print("Slurm is not installed here: nothing to measure")
        return 1
    held, limit = slurm_jobs_in_controller()
    if held + 2 * n + 2 * n_bare > 0.9 * limit:
        print(f"slurmctld holds {held} jobs (MaxJobCount {limit}): not enough room; retry later")
        return 1
    base = Path(tempfile.mkdtemp(prefix="jobmill-bench-slurm-"))
    calls_log = base / "calls.log"
    bin_dir = base / "bin"
    make_bin(bin_dir, calls_log)
    types = base / "types"
    types.mkdir()
    (types / "held.yaml").write_text(
        json.dumps(
            {
                "name": "held",
                "command": ["/bin/true"],
                "executor": "slurm",
                "resources": {"extra": ["--hold"]},
            }
        )
    )
    script = sample_script(base / "bare")
    (base / "bare").mkdir()
    bare_ids: list[str] = []
    server: Server | None = None
    try:
        bare_ids += bare_loop(5, script)[2]  # warm up (cached binaries, munge)
        bare_before, cpu_before, ids = bare_loop(n_bare, script)
        bare_ids += ids
        server = start_server(base, types, bin_dir, "single", 0)
        single_seconds, single_cpu = submit_through_jobmill(server, n)
        _stop(server)
        bare_ids += native_ids(server.home)
        server = start_server(base, types, bin_dir, "arrays", ARRAY_MIN)
        jm_seconds, jm_cpu = submit_through_jobmill(server, n)
        bare_after, cpu_after, ids = bare_loop(n_bare, script)
        bare_ids += ids

        # Polling: jobmill tracks n held jobs; count its squeue/sacct calls over a window.
        time.sleep(POLL_INTERVAL * 1.5)
        before = count_calls(calls_log)
        cpu0 = server.cpu()
        time.sleep(POLL_WINDOW)
        cpu = server.cpu() - cpu0
        after = count_calls(calls_log)
        intervals = POLL_WINDOW / POLL_INTERVAL
        per_interval = {k: (after[k] - before[k]) / intervals for k in WRAPPED}
        jm_ids = native_ids(server.home)
        in_squeue = len(run(["squeue", "--me", "-h", "-t", "all", "-o", "%i"], timeout=60).split())

        squeue_argv = ["squeue", "--me", "-h", "-t", "all", "-O", SQUEUE_FORMAT]
        squeue_times = []
        for _ in range(10):
            started = time.perf_counter()
            run(squeue_argv, timeout=60)
            squeue_times.append(time.perf_counter() - started)
        executor = SlurmExecutor()
        poll_rows = []
        for size in sorted({20, min(200, n), n}):
            times = []
            for _ in range(5):
                started = time.perf_counter()
                statuses = executor.poll(jm_ids[:size])
                times.append(time.perf_counter() - started)
            phases = {s.phase.value for s in statuses.values()}
            poll_rows.append([f"SlurmExecutor.poll({size} ids)", "", "", 1000 * min(times),
                              1000 * percentile(times, 50), ",".join(sorted(phases))])  # fmt: skip
    finally:
        if server is not None:
            _stop(server)
            with contextlib.suppress(Exception):
                bare_ids += native_ids(server.home)
        cancel(bare_ids)

    bare_rate = n_bare * 2 / (bare_before + bare_after)
    jm_rate = n / jm_seconds
    ratio = jm_rate / bare_rate
    single_ratio = n / single_seconds / bare_rate
    print()
    print_table(
        ["submission", "jobs", "seconds", "jobs/s", "vs bare", "", "CPU ms/job"],
        [
            ["bare sbatch loop, before", n_bare, bare_before, n_bare / bare_before, "", "",
             cpu_before / n_bare * 1000],
            ["jobmill, one sbatch per job (ARRAY_MIN=0)", n, single_seconds, n / single_seconds,
             single_ratio, verdict(single_ratio / TARGET_RATIO), single_cpu / n * 1000],
            [f"jobmill, job arrays (ARRAY_MIN={ARRAY_MIN})", n, jm_seconds, jm_rate, ratio,
             verdict(ratio / TARGET_RATIO), jm_cpu / n * 1000],
            ["bare sbatch loop, after", n_bare, bare_after, n_bare / bare_after, "", "",
             cpu_after / n_bare * 1000],
        ],
    )  # fmt: skip
    print()
    squeue_ms = [t * 1000 for t in squeue_times]
    rows = [
        ["jobmill: squeue per poll interval", per_interval["squeue"], "", "", "",
         verdict(1.1 / max(per_interval["squeue"], 1e-9)) if per_interval["squeue"] else "-"],
        ["jobmill: sacct per poll interval", per_interval["sacct"], "", "", "", ""],
        [f"squeue --me -t all ({in_squeue} jobs listed)", "", "", min(squeue_ms),
         percentile(squeue_ms, 50), f"max {max(squeue_ms):.1f} ms"],
        *poll_rows,
    ]  # fmt: skip
    print_table(["polling, " + f"{len(jm_ids)} jobmill jobs held", "calls", "", "min ms",
                 "median ms", ""], rows)  # fmt: skip
    print(
        f"target: 1 squeue per interval whatever the number of jobs; measured "
        f"{per_interval['squeue']:.2f} squeue + {per_interval['sacct']:.2f} sacct per "
        f"{POLL_INTERVAL:g} s over {POLL_WINDOW:g} s"
    )
    print(f"jobmill server CPU while polling: {cpu / POLL_WINDOW * 100:.1f}% of one core")
    print(
        f"target: jobmill >= {TARGET_RATIO:.0%} of the bare sbatch rate; measured "
        f"{single_ratio:.0%} one sbatch per job, {ratio:.0%} with job arrays"
    )
    print(f"cancelled {len(set(bare_ids))} held Slurm jobs")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"(kept {base})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
