"""Job dependencies end to end: a fan-out/fan-in DAG and a deep chain of ``/bin/true`` jobs
with the local executor, against the same number of independent jobs in the same run.

* **fan**: one root, N jobs after it, one job after all N (N = 5,000; ``--quick``: 500). Every
  job is created first (the root PENDING), then the root is run; the clock runs from that run
  to the end of the last job.
* **chain**: M jobs, each after the one before (M = 1,000; ``--quick``: 100), created the same
  way; only one job of it can run at a time, so its time per job is the whole round trip of a
  release: the parent's exit seen, its end and the child's release committed together, the
  child claimed and started, and ``/bin/true`` run.
* **independent**: as many jobs as the fan, created QUEUED in one batch (no dependency); the
  clock runs from the batch to the end of the last job.

Scheduling overhead per job is the DAG's wall time per job minus the independent jobs'. The
release latency of a job is the time from the end of its last parent (``ended``) to its own
start (``started``), as the jobs record them; its release itself is committed in the very
transaction that records that end (docs/workflows.md), which the ``wait`` events confirm.
Run: ``.venv/bin/python bench/bench_dag.py [--quick]``.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from _common import (
    auth_headers,
    banner,
    parse_args,
    percentile,
    print_table,
    running_server,
    verdict,
    write_jobtype,
)

TARGET_P50 = 0.050  # seconds from the last parent's end to the child's start
LIVE = ("PENDING", "QUEUED", "EXECUTING")


def when(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Bench:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=300, headers=auth_headers())

    def create(self, jobs: list[dict[str, Any]]) -> list[str]:
        ids: list[str] = []
        for start in range(0, len(jobs), 5000):
            response = self.http.post(
                "/api/v1/jobs/batch", json={"jobs": jobs[start : start + 5000]}
            )
            response.raise_for_status()
            ids.extend(response.json()["ids"])
        return ids

    def one(self, **body: Any) -> str:
        response = self.http.post("/api/v1/jobs", json={"type": "true", **body})
        response.raise_for_status()
        return str(response.json()["id"])

    def run(self, job_id: str) -> float:
        started = time.time()
        self.http.post(f"/api/v1/jobs/{job_id}/run").raise_for_status()
        return started

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            params = [("phase", p) for p in LIVE] + [("limit", "1")]
            if not self.http.get("/api/v1/jobs", params=params).json()["jobs"]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs still live after {timeout} s")
            time.sleep(0.2)

    def jobs(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = set(ids)
        found: dict[str, dict[str, Any]] = {}
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = self.http.get("/api/v1/jobs", params=params).json()
            found.update({j["id"]: j for j in page["jobs"] if j["id"] in wanted})
            cursor = page["next_cursor"]
            if not cursor:
                return found

    def released_with_end(self, child: str, parent_ended: float) -> bool:
        events = self.http.get(f"/api/v1/jobs/{child}/events").json()
        waits = [e for e in events if e["name"] == "wait" and "released_by" in e["data"]]
        return len(waits) == 1 and abs(when(waits[0]["at"]) - parent_ended) < 1e-3


def latency(jobs: dict[str, dict[str, Any]], job_id: str) -> float:
    """Seconds from the end of the job's last parent to its start."""
    job = jobs[job_id]
    return when(job["started"]) - max(when(jobs[p]["ended"]) for p in job["after"])


def span(jobs: Iterable[dict[str, Any]]) -> float:
    """Seconds from the first start to the last end."""
    listed = list(jobs)
    return max(when(j["ended"]) for j in listed) - min(when(j["started"]) for j in listed)


def check(jobs: dict[str, dict[str, Any]], n: int, what: str) -> None:
    done = sum(j["phase"] == "COMPLETED" for j in jobs.values())
    if done != n:
        raise SystemExit(f"error: {what}: {done} of {n} jobs completed")


def main() -> int:
    args = parse_args(__doc__ or "")
    fan = 500 if args.quick else 5000
    depth = 100 if args.quick else 1000
    workers = os.environ.get("JOBMILL_MAX_LOCAL_JOBS") or str(os.cpu_count() or 1)
    banner(
        f"bench_dag: fan-out 1 -> {fan} -> fan-in, a {depth}-deep chain, {fan + 2} independent "
        f"jobs; /bin/true, JOBMILL_MAX_LOCAL_JOBS={workers}"
    )
    with tempfile.TemporaryDirectory(prefix="jobmill-bench-dag-") as tmp:
        types = Path(tmp) / "types"
        write_jobtype(types, "true", ["/bin/true"])
        env = {"JOBMILL_MAX_LOCAL_JOBS": workers}
        with running_server([types], env=env, keep=args.keep) as server:
            bench = Bench(server.url)
            bench.create([{"type": "true"} for _ in range(50)])  # warm-up
            bench.wait_idle(120)

            independent = bench.create([{"type": "true"} for _ in range(fan + 2)])
            bench.wait_idle(1800)
            ind = bench.jobs(independent)
            check(ind, fan + 2, "independent")
            ind_wall = span(ind.values())

            root = bench.one(phase="PENDING")
            middle = bench.create([{"type": "true", "after": [root]} for _ in range(fan)])
            sink = bench.one(after=middle)
            bench.run(root)
            bench.wait_idle(1800)
            dag = bench.jobs([root, sink, *middle])
            check(dag, fan + 2, "fan")
            fan_wall = span(dag.values())
            # The fan-out's jobs are all released with the root's end, then queue for the
            # slots: only the first of them to start measures a release, and the fan-in.
            first_out = min(middle, key=lambda m: when(dag[m]["started"]))
            fan_lat = [latency(dag, first_out), latency(dag, sink)]
            same_commit = bench.released_with_end(sink, max(when(dag[m]["ended"]) for m in middle))

            first = bench.one(phase="PENDING")
            chain = [first]
            for _ in range(depth - 1):
                chain.append(bench.one(after=[chain[-1]]))
            bench.run(first)
            bench.wait_idle(1800)
            links = bench.jobs(chain)
            check(links, depth, "chain")
            chain_wall = span(links.values())
            chain_lat = [latency(links, job_id) for job_id in chain[1:]]
    n = fan + 2
    per_ind = ind_wall / n
    per_fan = fan_wall / n
    per_chain = chain_wall / depth
    rows = [
        [f"{n} independent jobs", n / ind_wall, per_ind * 1e3, "", "", ""],
        [
            f"fan-out 1 -> {fan} -> fan-in ({n} jobs)",
            n / fan_wall,
            per_fan * 1e3,
            (per_fan - per_ind) * 1e3,
            f"{fan_lat[0] * 1e3:.1f} (first out)",
            f"{fan_lat[1] * 1e3:.1f} (fan-in)",
        ],
        [
            f"chain of {depth}",
            depth / chain_wall,
            per_chain * 1e3,
            (per_chain - per_ind) * 1e3,
            percentile(chain_lat, 50) * 1e3,
            percentile(chain_lat, 99) * 1e3,
        ],
    ]
    print_table(
        ["case", "jobs/s", "ms/job", "overhead ms/job", "release p50 ms", "release p99 ms"], rows
    )
    print(
        "(wall time from the first start to the last end; overhead: minus the independent "
        "jobs' ms/job; release: the last parent's end -> the child's start)"
    )
    p50 = percentile(fan_lat + chain_lat, 50)
    print(
        f"release latency over {len(fan_lat + chain_lat)} releases with a free slot: p50 "
        f"{p50 * 1e3:.1f} ms, p99 {percentile(fan_lat + chain_lat, 99) * 1e3:.1f} ms; target "
        f"p50 <= {TARGET_P50 * 1e3:.0f} ms: {verdict(TARGET_P50 / max(p50, 1e-9))}"
    )
    print(f"the fan-in job's release committed with its last parent's end: {same_commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
