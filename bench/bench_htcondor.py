"""The HTCondor executor against a real schedd: polling cost and submission rate.

Rows:

* polling 2,000 jobmill jobs (held, so they stay in the queue): schedd calls per poll (target 1)
  and the time of each, against one ``Schedd.query`` per job;
* polling the same 2,000 once they left the queue: one queue query plus ONE history lookup;
* submission: jobs/s through jobmill (API -> engine: the queued jobs claimed in one database
  transaction, submitted with ``submit_many`` -- one schedd transaction per ``batch_key`` group
  -- and their ids recorded in one transaction; SQLite) against a bare bindings loop that submits
  the same description and makes each job's directory, interleaved in the same run (target:
  jobmill >= 80 % of the bare loop); and ``submit_many`` alone, the executor's ceiling.

HTCondor refuses jobs owned by root: run it as an ordinary user with the bindings installed, e.g.
``sudo bash scripts/condor-tests.sh --bench [--quick]`` (builds the venv, runs this as
``jobmill``). As root it prints that and exits 0 (so ``make bench`` passes over it).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import TOKEN_FILE, banner, fmt, parse_args, percentile, print_table, verdict
from jobmill.config import Settings
from jobmill.domain.jobtypes import Resources
from jobmill.executors.base import LaunchSpec
from jobmill.executors.htcondor import HTCondorExecutor, submit_description

POLL_JOBS = 2000
RATIO_TARGET = 0.80


class CountingSchedd:
    """Passes every call to the real schedd; counts and times them by method."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: dict[str, list[float]] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.real, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.calls.setdefault(name, []).append(time.perf_counter() - start)

        return timed

    def reset(self) -> None:
        self.calls.clear()


def spec(base: Path, n: int, *, hold: bool = True) -> LaunchSpec:
    workdir = base / f"w{n}"
    return LaunchSpec(
        job_id=f"00000000-0000-4000-8000-{n:012d}",
        argv=["/bin/true", f"job {n}"],
        env={"PATH": "/usr/bin:/bin", "JOBMILL_JOB_ID": f"bench-{n}"},
        workdir=workdir,
        stdout=workdir / "stdout.log",
        stderr=workdir / "stderr.log",
        resources=Resources(extra=["hold = true"] if hold else []),
    )


def remove_all(schedd: Any, htcondor: Any, base: Path) -> None:
    """Remove every job of this run (their Iwd is under ``base``) and wait until they are gone."""
    prefix = str(base) + "/"
    mine = f'substr(Iwd, 0, {len(prefix)}) == "{prefix}"'
    schedd.act(htcondor.JobAction.Remove, mine)
    deadline = time.monotonic() + 120
    while schedd.query(constraint=mine, projection=["ClusterId"], limit=1):
        if time.monotonic() > deadline:
            raise RuntimeError("the schedd did not drop the benchmark's jobs in 120 s")
        time.sleep(0.5)


def bench_polling(schedd: Any, htcondor: Any, base: Path, jobs: int, polls: int) -> list[list[Any]]:
    counting = CountingSchedd(schedd)
    executor = HTCondorExecutor(connect=lambda: counting)
    specs = [spec(base / "poll", n) for n in range(jobs)]
    ids = executor.submit_many(specs)
    rows: list[list[Any]] = []

    def measure(name: str, target: int) -> None:
        counting.reset()
        walls = []
        for _ in range(polls):
            start = time.perf_counter()
            statuses = executor.poll(ids)
            walls.append(time.perf_counter() - start)
            assert len(statuses) == len(ids)
        per_poll = sum(len(v) for v in counting.calls.values()) / polls
        detail = ", ".join(
            f"{call} {percentile(took, 50) * 1000:.1f} ms" for call, took in counting.calls.items()
        )
        wall = percentile(walls, 50) * 1000
        rows.append([name, jobs, polls, per_poll, target, wall, detail, verdict(target / per_poll)])

    measure("poll, all in the queue (held)", 1)
    single = []
    for nid in ids[:50]:
        cluster, proc = nid.split(".")
        start = time.perf_counter()
        constraint = f"ClusterId == {cluster} && ProcId == {proc}"
        schedd.query(constraint=constraint, projection=["JobStatus"])
        single.append(time.perf_counter() - start)
    per_job = percentile(single, 50)
    rows.append(
        [
            "  for comparison: one query per job",
            jobs,
            1,
            float(jobs),
            "",
            per_job * jobs * 1000,
            f"query {per_job * 1000:.2f} ms x {jobs}",
            "",
        ]
    )
    remove_all(schedd, htcondor, base / "poll")
    executor.poll(ids)  # the first miss only waits (LOST_AFTER); measure the steady state
    measure("poll, all gone (queue + history)", 2)
    return rows


TYPE = """\
name: bench
executor: htcondor
command: ["/bin/true", "{n}"]
parameters: {n: {type: integer, required: true}}
resources: {extra: ["hold = true"]}
"""


def submitted(jm: Any) -> int:
    from sqlalchemy import text as sql

    with jm.db.connect() as conn:
        count = conn.execute(sql("SELECT count(*) FROM jobs WHERE native_id IS NOT NULL"))
        return int(count.scalar_one())


def through_engine(jm: Any, client: Any, first: int, jobs: int) -> float:
    """Seconds from one POST /jobs/batch of ``jobs`` jobs until all have a cluster id."""
    body = {"jobs": [{"type": "bench", "parameters": {"n": first + n}} for n in range(jobs)]}
    before = submitted(jm)
    start = time.perf_counter()
    response = client.post("/api/v1/jobs/batch", json=body)
    assert response.status_code == 201, response.text
    deadline = time.monotonic() + 600
    while submitted(jm) < before + jobs:
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobmill did not submit {jobs} jobs in 600 s")
        time.sleep(0.05)
    return time.perf_counter() - start


def bench_submission(
    schedd: Any, htcondor: Any, base: Path, rounds: int, per_round: int
) -> list[list[Any]]:
    """Bare loop, jobmill's engine and ``submit_many`` alone, interleaved round by round so a
    machine whose load drifts treats them alike."""
    from fastapi.testclient import TestClient

    from jobmill.api.app import create_app
    from jobmill.factory import build

    types = base / "types"
    types.mkdir()
    (types / "bench.yaml").write_text(TYPE)

    def settings(home: str) -> Settings:
        return Settings(
            home=base / home,
            jobtypes=(str(types),),
            executors=("local", "htcondor"),
            poll_interval=1.0,
            local_user="bench",
            condor_schedd=os.environ.get("JOBMILL_CONDOR_SCHEDD") or None,
            condor_collector=os.environ.get("JOBMILL_CONDOR_COLLECTOR") or None,
        )

    took = {"bare": 0.0, "engine": 0.0, "many": 0.0}
    engine_jm = build(settings("engine"))
    try:
        secret = engine_jm.tokens.ensure_local(engine_jm.settings.local_user, TOKEN_FILE)
        auth = {"Authorization": f"Bearer {secret}"}
        with TestClient(create_app(engine_jm), headers=auth) as client:
            for r in range(rounds):
                # 1. bare: the description jobmill renders, its own directory, one
                #    Schedd.submit per job (rendering is not timed, the directory is)
                bare = [spec(base / "bare", r * per_round + n) for n in range(per_round)]
                texts = [(one.workdir, submit_description(one)) for one in bare]
                start = time.perf_counter()
                for workdir, text in texts:
                    workdir.mkdir(parents=True)
                    schedd.submit(htcondor.Submit(text))
                took["bare"] += time.perf_counter() - start
                # 2. jobmill: API -> engine -> claim, submit_many, record
                took["engine"] += through_engine(engine_jm, client, r * per_round, per_round)
                # 3. submit_many alone
                executor = HTCondorExecutor(connect=lambda: schedd)
                specs = [spec(base / "many", r * per_round + n) for n in range(per_round)]
                start = time.perf_counter()
                executor.submit_many(specs)
                took["many"] += time.perf_counter() - start
                remove_all(schedd, htcondor, base)
    finally:
        engine_jm.close()
    jobs = rounds * per_round
    bare_rate = jobs / took["bare"]

    def row(name: str, key: str, target: float | None = None) -> list[Any]:
        rate = jobs / took[key]
        ratio = rate / bare_rate
        versus = f"{ratio:.0%} of bare" + (f" (target {target:.0%})" if target else "")
        return [name, jobs, took[key], rate, versus, verdict(ratio / target) if target else ""]

    return [
        ["bare loop: mkdir + Schedd.submit per job", jobs, took["bare"], bare_rate, "", ""],
        row("jobmill: API -> engine (claim, submit_many, record)", "engine", RATIO_TARGET),
        row("submit_many alone (one transaction)", "many"),
    ]


def main() -> int:
    args = parse_args(__doc__ or "")
    if os.geteuid() == 0:
        print("bench_htcondor: skipped as root (HTCondor refuses jobs owned by root); run it as:")
        print("  sudo bash scripts/condor-tests.sh --bench")
        return 0
    try:
        import htcondor2 as htcondor
    except ImportError:
        print("bench_htcondor: skipped: no HTCondor bindings (pip install 'jobmill[htcondor]')")
        return 0
    poll_jobs = 200 if args.quick else POLL_JOBS
    rounds, per_round = (1, 50) if args.quick else (3, 100)
    polls = 5 if args.quick else 10
    banner(f"bench_htcondor: {htcondor.version().split()[1]} bindings, schedd via CONDOR_CONFIG")
    schedd = htcondor.Schedd()
    base = Path(tempfile.mkdtemp(prefix="jobmill-bench-condor-", dir="/tmp"))
    try:
        poll_rows = bench_polling(schedd, htcondor, base, poll_jobs, polls)
        submit_rows = bench_submission(schedd, htcondor, base, rounds, per_round)
    finally:
        try:
            remove_all(schedd, htcondor, base)
        finally:
            if not args.keep:
                shutil.rmtree(base, ignore_errors=True)
    print()
    print_table(
        ["polling", "jobs", "polls", "calls/poll", "target", "ms/poll p50", "each call p50", ""],
        poll_rows,
    )
    print("target: 1 schedd call per poll interval for all jobs (history only for jobs gone)")
    print()
    print_table(["submission", "jobs", "s", "jobs/s", "", ""], submit_rows)
    print(
        f"jobs held on submit (the pool runs none); {rounds} interleaved rounds of "
        f"{fmt(per_round)} per row; jobmill on SQLite, in-process"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
