"""Autorun (ARP): run ends become jobs exactly once, and how soon a run's job is submitted.

Two ``jobmill serve`` processes share one SQLite database (each with its own home, as two
jobmill nodes would). An administrator defines ``count`` for experiment ``bench`` (executable
``/bin/true``) and switches autorun on. Then:

* burst: runs 1..N end as fast as the servers answer (4 client workers); every end is posted
  to *both* servers at the same time (a DAQ that sends twice, or two processes seeing the same
  event), and afterwards all N ends are replayed once more. Every run must get exactly one job.
* paced: M more runs end one every 1/RATE s, alternating between the servers: the latency when
  jobmill is not busy (ARP runs end minutes apart).

For each job: the run's end (its ``ended_at``) -> the job created -> its ``submitted`` event
(the local process started) -> the job ended; p50 and p99. Times are the servers' own, at
millisecond precision. Run: ``.venv/bin/python bench/bench_autorun.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

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

EXP = "bench"
API = f"/api/v1/arp/experiments/{EXP}"
WORKERS = 4
PACED_RATE = 10.0  # run ends per second in the paced case


def ts(text: str | None) -> float:
    if not text:
        return float("nan")
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def post_ends(
    servers: list[Server], runs: list[int], *, both: bool, workers: int
) -> tuple[list[float], int]:
    """End ``runs`` (each on both servers at once, or alternating); (POST latencies, jobs the
    answers say were created)."""
    queue = iter(runs)
    latencies: list[float] = []
    created = 0

    async def worker() -> None:
        nonlocal created
        conns = [await Connection("127.0.0.1", s.port).open() for s in servers]
        try:
            for run in queue:
                targets = conns if both else [conns[run % len(conns)]]
                start = time.perf_counter()
                answers = await asyncio.gather(
                    *(c.request("POST", f"{API}/runs/{run}/end", {}) for c in targets)
                )
                latencies.append(time.perf_counter() - start)
                created += sum(len(a["jobs"]) for a in answers)
        finally:
            for conn in conns:
                await conn.close()

    await asyncio.gather(*(worker() for _ in range(workers)))
    return latencies, created


async def paced_ends(
    servers: list[Server], runs: list[int], rate: float
) -> tuple[list[float], int]:
    conns = [await Connection("127.0.0.1", s.port).open() for s in servers]
    latencies: list[float] = []
    created = 0
    try:
        start = time.perf_counter()
        for i, run in enumerate(runs):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = time.perf_counter()
            answer = await conns[i % len(conns)].request("POST", f"{API}/runs/{run}/end", {})
            latencies.append(time.perf_counter() - t0)
            created += len(answer["jobs"])
    finally:
        for conn in conns:
            await conn.close()
    return latencies, created


async def wait_idle(server: Server, timeout: float) -> None:
    conn = await Connection("127.0.0.1", server.port).open()
    try:
        deadline = time.monotonic() + timeout
        while True:
            page = await conn.request("GET", "/api/v1/jobs?phase=QUEUED&phase=EXECUTING&limit=1")
            if not page["jobs"]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs still queued or running after {timeout} s")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def collect(server: Server) -> dict[str, Any]:
    """Runs, run view entries, every job's submitted time, and the total number of jobs."""
    conn = await Connection("127.0.0.1", server.port).open()
    try:
        runs = await conn.request("GET", f"{API}/runs?limit=10000")
        entries = await conn.request("GET", f"{API}/status?limit=10000")
        submitted: dict[str, float] = {}
        for entry in entries:
            events = await conn.request("GET", f"/api/v1/jobs/{entry['job_id']}/events")
            at = [e["at"] for e in events if e["name"] == "submitted"]
            submitted[entry["job_id"]] = ts(at[0]) if at else float("nan")
        total, cursor = 0, ""
        while True:
            page = await conn.request("GET", f"/api/v1/jobs?limit=1000{cursor}")
            total += len(page["jobs"])
            if not page["next_cursor"]:
                break
            cursor = f"&cursor={page['next_cursor']}"
    finally:
        await conn.close()
    return {"runs": runs, "entries": entries, "submitted": submitted, "total": total}


def figures(data: dict[str, Any], runs: list[int]) -> dict[str, Any]:
    ended_at = {r["run"]: ts(r["ended_at"]) for r in data["runs"]}
    wanted = set(runs)
    entries = [e for e in data["entries"] if e["run_num"] in wanted]
    per_run = Counter(e["run_num"] for e in entries)
    created, submitted, finished = [], [], []
    for e in entries:
        end = ended_at[e["run_num"]]
        created.append(ts(e["submit_time"]) - end)
        submitted.append(data["submitted"][e["job_id"]] - end)
        finished.append(ts(e["ended"]) - end)
    return {
        "jobs": len(entries),
        "duplicates": sum(n - 1 for n in per_run.values() if n > 1),
        "missing": len(wanted - set(per_run)),
        "done": sum(e["status"] == "DONE" for e in entries),
        "created": created,
        "submitted": submitted,
        "ended": finished,
    }


def ms(values: list[float], q: float) -> float:
    return percentile([v for v in values if v == v], q) * 1000.0


def main() -> int:
    args = parse_args(__doc__ or "")
    burst = 200 if args.quick else 1000
    paced = 30 if args.quick else 200
    banner(f"bench_autorun: {burst} run ends (burst, posted twice) + {paced} paced at "
           f"{PACED_RATE:.0f}/s, two servers sharing one SQLite database")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="jobmill-bench-autorun-") as tmp:
        root = Path(tmp)
        types = root / "types"
        write_jobtype(types, "true", ["/bin/true"])
        env = {"JOBMILL_DATABASE_URL": f"sqlite:///{root / 'shared.db'}"}
        with (
            running_server([types], env=env, keep=args.keep) as first,
            running_server([types], env=env, keep=args.keep) as second,
        ):
            servers = [first, second]

            async def setup() -> None:
                conn = await Connection("127.0.0.1", first.port).open()
                try:
                    await conn.request("POST", f"{API}/definitions",
                                       {"name": "count", "executable": "/bin/true",
                                        "parameters": "--fast"}, expect=201)  # fmt: skip
                    await conn.request("PATCH", f"{API}/definitions/count", {"autorun": True})
                finally:
                    await conn.close()

            asyncio.run(setup())
            cpu0 = first.cpu() + second.cpu()
            t0 = time.perf_counter()
            burst_runs = list(range(1, burst + 1))
            burst_lat, burst_created = asyncio.run(
                post_ends(servers, burst_runs, both=True, workers=WORKERS)
            )
            burst_seconds = time.perf_counter() - t0
            replay_lat, replay_created = asyncio.run(
                post_ends(servers, burst_runs, both=False, workers=WORKERS)
            )
            asyncio.run(wait_idle(first, 600))
            cpu_burst = first.cpu() + second.cpu() - cpu0
            paced_runs = list(range(burst + 1, burst + paced + 1))
            paced_lat, paced_created = asyncio.run(paced_ends(servers, paced_runs, PACED_RATE))
            asyncio.run(wait_idle(first, 600))
            data = asyncio.run(collect(first))
    b, p = figures(data, burst_runs), figures(data, paced_runs)
    rows = []
    for name, f, lat in (("burst", b, burst_lat), ("paced", p, paced_lat)):
        rows.append([
            name, len(burst_runs if name == "burst" else paced_runs), f["jobs"], f["duplicates"],
            f["missing"], f["done"], f"{ms(lat, 50):.1f} / {ms(lat, 99):.1f}",
            f"{ms(f['created'], 50):.0f} / {ms(f['created'], 99):.0f}",
            f"{ms(f['submitted'], 50):.0f} / {ms(f['submitted'], 99):.0f}",
            f"{ms(f['ended'], 50):.0f} / {ms(f['ended'], 99):.0f}",
        ])  # fmt: skip
    print_table(
        [
            "case",
            "runs",
            "jobs",
            "dups",
            "missing",
            "DONE",
            "POST end ms p50/p99",
            "end->created ms",
            "end->submitted ms",
            "end->ended ms",
        ],
        rows,
    )
    exact = (
        b["duplicates"] == b["missing"] == p["duplicates"] == p["missing"] == 0
        and burst_created == burst
        and replay_created == 0
        and paced_created == paced
        and data["total"] == burst + paced
    )
    print(
        f"burst: {burst} ends posted to both servers at once in {burst_seconds:.1f} s "
        f"({burst / burst_seconds:.0f} runs/s); the answers created {burst_created} jobs; "
        f"replaying all {burst} ends created {replay_created} "
        f"(replay POST p50 {ms(replay_lat, 50):.1f} ms)"
    )
    print(
        f"jobs in the database: {data['total']} for {burst + paced} runs; "
        f"exactly once: {'yes' if exact else 'NO'}; "
        f"server CPU (both) for the burst: {cpu_burst / burst * 1e3:.1f} ms per run"
    )
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
