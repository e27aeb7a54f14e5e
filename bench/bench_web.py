"""The web pages' server time with 100,000 jobs in the database: the job list at ``/``.

The database is filled as ``bench_uws_list.py`` fills it (through the job store, in batches:
80 % of type ``sim``, half ``alice``'s, 90 % COMPLETED, 2 % ERROR, 1 % ABORTED, 7 % ARCHIVED);
a real ``jobmill serve`` then serves it and one client sends the requests one after the other
over a keep-alive connection (latencies of an idle server, HTML rendering included).

Rows, for SQLite and (when ``JOBMILL_BENCH_DATABASE_URL`` or ``JOBMILL_TEST_DATABASE_URL``
names a PostgreSQL server) PostgreSQL:

* ``GET /``: the newest 50 jobs, as the local administrator and as ``alice`` (owner filter);
* ``GET /?type=sim&phase=ERROR`` (2 % match) and ``GET /?cursor=N`` (a page in the middle of
  the history: keyset pagination costs the same at any depth);
* ``GET /ui/jobs/{id}``: a job page (job, events, results, log tails);
* the floor ``GET /healthz``.

Target: list p50 <= 50 ms.

Run: ``.venv/bin/python bench/bench_web.py [--quick]``; ``JOBMILL_BENCH_JOBS`` sets the number
of jobs (default 100,000; 20,000 with ``--quick``), ``JOBMILL_BENCH_REQUESTS`` the number of
timed requests per row (default 200).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from _common import (
    banner,
    parse_args,
    percentile,
    print_table,
    running_server,
    verdict,
    write_jobtype,
)
from bench_uws_list import (
    TOKEN,
    TYPE,
    Database,
    Timing,
    fill,
    http_timing,
    postgres_server_url,
    raw_get,
    scratch_postgres,
)
from jobmill.config import Settings
from jobmill.factory import open_store

LIST_TARGET_MS = 50.0


def measure(db: Database, root: Path, n_jobs: int, n_req: int, keep: bool) -> list[list[Any]]:
    settings = Settings(home=root / db.name / "home", database_url=db.url)
    store = open_store(settings)
    t0 = time.perf_counter()
    ids = fill(store, n_jobs)
    fill_s = time.perf_counter() - t0
    if db.url is not None and db.url.startswith("postgresql"):
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    print(f"{db.name}: filled {n_jobs:,} jobs in {fill_s:.1f} s ({n_jobs / fill_s:,.0f} jobs/s)")
    middle = store.get(ids[len(ids) // 2])
    assert middle is not None
    for engine in (store.engine, store.read_engine):
        engine.dispose()
    rng = random.Random(42)
    sample = [rng.choice(ids) for _ in range(n_req)]
    env = {"JOBMILL_DATABASE_URL": settings.db_url}
    timings: dict[str, Timing] = {}
    with running_server([root / "types"], env=env, keep=keep) as server:
        port = server.port

        def http(key: str, path: str | list[str], check: bytes, **kw: Any) -> None:
            paths = path if isinstance(path, list) else [path] * n_req
            raws = [raw_get(port, p, kw.get("token")) for p in paths]
            timings[key] = asyncio.run(http_timing(port, key, raws, 200, check))

        rows = b'id="job-rows"'
        http("list", "/", rows)
        http("list_alice", "/", rows, token=TOKEN)
        http("filtered", f"/?type={TYPE}&phase=ERROR", rows)
        http("deep", f"/?cursor={middle.seq}", rows)
        http("job", [f"/ui/jobs/{i}" for i in sample], b'id="job-status"')
        http("healthz", "/healthz", b"ok")

    def row(label: str, key: str, target: float | None = None) -> list[Any]:
        t = timings[key]
        return [
            f"{db.name}: {label}",
            t.p50,
            t.p95,
            _p99(t),
            target or "",
            verdict(target / t.p50) if target else "",
        ]

    return [
        row("GET / (newest 50, local admin)", "list", LIST_TARGET_MS),
        row("  the same as alice (owner filter)", "list_alice", LIST_TARGET_MS),
        row("  /?type=sim&phase=ERROR (2 % match)", "filtered", LIST_TARGET_MS),
        row("  /?cursor=<middle of the history>", "deep", LIST_TARGET_MS),
        row("GET /ui/jobs/{id} (job page)", "job"),
        row("floor GET /healthz", "healthz"),
    ]


def _p99(timing: Timing) -> float:
    return percentile(timing.values, 99)


def main() -> int:
    args = parse_args(__doc__ or "")
    n_jobs = int(os.environ.get("JOBMILL_BENCH_JOBS") or (20_000 if args.quick else 100_000))
    n_req = int(os.environ.get("JOBMILL_BENCH_REQUESTS") or (100 if args.quick else 200))
    banner(f"bench_web: {n_jobs:,} jobs, {n_req} sequential requests per row")
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="jobmill-bench-web-") as tmp:
        root = Path(tmp)
        write_jobtype(root / "types", TYPE, ["/bin/true"])
        write_jobtype(root / "types", "other", ["/bin/true"])
        rows += measure(Database("sqlite", None), root, n_jobs, n_req, args.keep)
        server_url = postgres_server_url()
        if server_url is not None:
            with scratch_postgres(server_url) as url:
                rows += measure(Database("postgresql", url), root, n_jobs, n_req, args.keep)
        else:
            print("(no PostgreSQL: set JOBMILL_BENCH_DATABASE_URL to measure it too)")
    print_table(["case", "p50 ms", "p95 ms", "p99 ms", "target", ""], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
