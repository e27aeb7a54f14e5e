"""UWS reads with 100,000 jobs in the database: the job list (``LAST=100``) and one job.

The database is filled directly through the job store (``JobStore.create`` in batches, then one
``UPDATE`` giving the jobs their end state), not through 100,000 HTTP posts; a real
``jobmill serve`` then serves it. Of the jobs, 80 % are of the listed type ``sim``, the rest of
another type; half belong to ``alice`` (who also has a bearer token), half to ``bob``; 90 % are
COMPLETED, 2 % ERROR, 1 % ABORTED and 7 % ARCHIVED. One client sends the requests one after the
other over a keep-alive connection, so the figures are latencies of an idle server.

Rows, for SQLite and (when ``JOBMILL_BENCH_DATABASE_URL`` or ``JOBMILL_TEST_DATABASE_URL`` names
a PostgreSQL server: a scratch database is created there and dropped afterwards) PostgreSQL:

* ``GET /uws/sim?LAST=100`` as the local (admin) user and as ``alice`` (bearer token: the list
  is then also filtered on the owner);
* ``GET /uws/sim/{id}``, the job document, for random jobs;
* lists filtered on one phase, ``PHASE=EXECUTING`` (no job matches: the worst case) and
  ``PHASE=ERROR`` (2 % match), served by the index ``jobs (type, phase, seq)``;
* native lists (``GET /api/v1/jobs``, whole jobs) unfiltered and on one filter alone: a phase
  (2 %, none and 90 % match), two phases, the owner, the owner and a phase, the type (20 %),
  a tag (on half of the jobs, on one in 1,000);
* the common tag (``tag=half``) as listed before migration 0013 (the tag's job ids from an index
  ``(tag, job_id)``, then those jobs, sorted), timed on the same database as a store call;
* floors, side by side: the same store call timed in this process (``JobStore.list_refs`` /
  ``JobStore.get``: the query plus building the result objects), ``GET /uws/<unknown type>``
  (404: the same route, authentication and error path, no query) and ``GET /healthz``.

Targets: list p50 <= 20 ms, job p50 <= 5 ms (OPUS: 26-31 ms for one job, 72 ms for a list of
2,000).

Run: ``.venv/bin/python bench/bench_uws_list.py [--quick]``; ``JOBMILL_BENCH_JOBS`` sets the
number of jobs (default 100,000; 20,000 with ``--quick``), ``JOBMILL_BENCH_REQUESTS`` the number
of timed requests per row (default 200).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Select, create_engine, select, text
from sqlalchemy.engine import make_url

from _common import (
    Connection,
    banner,
    parse_args,
    percentile,
    print_table,
    running_server,
    verdict,
    write_jobtype,
)
from _common import (
    token as local_token,
)
from jobmill.config import Settings
from jobmill.domain.jobs import NewJob, utcnow
from jobmill.domain.lifecycle import Phase
from jobmill.factory import open_store
from jobmill.storage.jobs import JobFilter, JobStore
from jobmill.storage.tables import job_tags, jobs
from jobmill.storage.writes import job_from_row

LIST_TARGET_MS = 20.0
JOB_TARGET_MS = 5.0
OPUS_JOB_MS = "26-31"
OPUS_LIST_MS = "72 (2,000 jobs)"
BATCH = 5000
TYPE = "sim"
TOKEN = "bench-uws-alice-token"  # noqa: S105 - a throwaway token of a scratch database
LISTED = tuple(p for p in Phase if p is not Phase.ARCHIVED)
# Native job lists: (key, query string, the store's filter), the unfiltered one first.
NATIVE = (
    ("n_all", "", JobFilter()),
    ("n_error", "phase=ERROR&", JobFilter(phases=[Phase.ERROR])),
    ("n_executing", "phase=EXECUTING&", JobFilter(phases=[Phase.EXECUTING])),
    ("n_completed", "phase=COMPLETED&", JobFilter(phases=[Phase.COMPLETED])),
    (
        "n_two",
        "phase=QUEUED&phase=EXECUTING&",
        JobFilter(phases=[Phase.QUEUED, Phase.EXECUTING]),
    ),
    ("n_owner", "owner=alice&", JobFilter(owner="alice")),
    ("n_owner_error", "owner=alice&phase=ERROR&", JobFilter(owner="alice", phases=[Phase.ERROR])),
    ("n_type", "type=other&", JobFilter(type="other")),
    ("n_tag_half", "tag=half&", JobFilter(tag="half")),
    ("n_tag_rare", "tag=rare&", JobFilter(tag="rare")),
)


def tag_list_before_0013(tag: str) -> Select[Any]:
    """A page of jobs with ``tag`` as listed before ``job_tags`` had the job's ``seq``."""
    ids = select(job_tags.c.job_id).where(job_tags.c.tag == tag)
    return select(jobs).where(jobs.c.id.in_(ids)).order_by(jobs.c.seq.desc()).limit(101)


def time_tag_list_before_0013(store: JobStore, tag: str, n: int) -> Timing:
    """The list by ``tag`` of the tree before 0013 on this database: its index is made for the
    time of the timing."""
    with store.engine.begin() as conn:
        conn.execute(text("CREATE INDEX bench_tag_job_id ON job_tags (tag, job_id)"))
        if conn.dialect.name == "postgresql":
            conn.execute(text("ANALYZE job_tags"))
    try:
        with store.read_engine.connect() as conn:
            query = tag_list_before_0013(tag)
            return direct_timing(
                "tag_before", lambda _: [job_from_row(row) for row in conn.execute(query)], n
            )
    finally:
        with store.engine.begin() as conn:
            conn.execute(text("DROP INDEX bench_tag_job_id"))


def phase_of(i: int) -> Phase:
    """90 % COMPLETED, 2 % ERROR, 1 % ABORTED, 7 % ARCHIVED, spread through the history."""
    k = i % 100
    if k < 2:
        return Phase.ERROR
    if k < 3:
        return Phase.ABORTED
    if k < 10:
        return Phase.ARCHIVED
    return Phase.COMPLETED


def fill(store: JobStore, n: int) -> list[str]:
    """``n`` ended jobs through the store, in batches; the ids of the ``sim`` jobs."""
    ids: list[str] = []
    later = utcnow() + timedelta(days=3650)
    for start in range(0, n, BATCH):
        batch = []
        for i in range(start, min(n, start + BATCH)):
            new = NewJob(
                type=TYPE if i % 5 else "other",
                owner="alice" if i % 2 else "bob",
                parameters={"target": f"field-{i % 977}", "exposure": 30 + i % 7},
                extra_parameters={"REQUEST": "doQuery"},
                executor="local",
                execution_duration=3600,
                destruction_at=later,
                phase=phase_of(i),
                run_id=f"night-{i // 1000}",
            )
            batch.append(new)
            if new.type == TYPE:
                ids.append(new.id)
        store.create(batch, actor="bench", with_seq=False)
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET started_at = created_at, ended_at = created_at, "
                "exit_code = CASE WHEN phase = 'ERROR' THEN 1 ELSE 0 END, "
                "error = CASE WHEN phase = 'ERROR' THEN 'exit code 1' END"
            )
        )
        # tags: "half" on every other job, "rare" on one in 1,000
        for tag, every in (("half", 2), ("rare", 1000)):
            conn.execute(
                text(
                    "INSERT INTO job_tags (job_id, tag, seq) SELECT id, :tag, seq FROM jobs "
                    "WHERE seq % :every = 0"
                ),
                {"tag": tag, "every": every},
            )
    store.tokens.add("alice", TOKEN, admin=False)
    return ids


# -- databases ------------------------------------------------------------------------------


@dataclass
class Database:
    name: str
    url: str | None  # None: the server's default SQLite file in its home


def postgres_server_url() -> str | None:
    url = os.environ.get("JOBMILL_BENCH_DATABASE_URL") or os.environ.get(
        "JOBMILL_TEST_DATABASE_URL"
    )
    return url if url and url.startswith("postgresql") else None


@contextlib.contextmanager
def scratch_postgres(server_url: str) -> Iterator[str]:
    """A new, empty database on the server of ``server_url``, dropped afterwards."""
    base = make_url(server_url)
    name = f"jobmill_bench_uws_{os.getpid()}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- timing ---------------------------------------------------------------------------------


@dataclass
class Timing:
    """Latencies of one row, in milliseconds."""

    label: str
    values: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.values, 50)

    @property
    def p95(self) -> float:
        return percentile(self.values, 95)


def raw_get(port: int, path: str, token: str | None = None) -> bytes:
    token = token or local_token()  # the server's own user (an admin) unless another is given
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n".encode()


async def http_timing(
    port: int, label: str, requests: list[bytes], expect: int, check: bytes
) -> Timing:
    """Requests one after the other on one keep-alive connection, after a few untimed ones."""
    conn = await Connection("127.0.0.1", port).open()
    values = []
    try:
        for i, raw in enumerate([*requests[:20], *requests]):
            start = time.perf_counter()
            status, body = await conn.send(raw)
            elapsed = (time.perf_counter() - start) * 1000
            if status != expect or check not in body:
                raise RuntimeError(f"{label}: {status} {body[:300]!r}")
            if i >= 20:
                values.append(elapsed)
    finally:
        await conn.close()
    return Timing(label, values)


def direct_timing(label: str, call: Callable[[int], Any], n: int) -> Timing:
    for i in range(20):
        call(i)
    values = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        values.append((time.perf_counter() - start) * 1000)
    return Timing(label, values)


def measure(db: Database, root: Path, n_jobs: int, n_req: int, keep: bool) -> list[list[Any]]:
    home = root / db.name / "home"
    settings = Settings(home=home, database_url=db.url)
    store = open_store(settings)
    t0 = time.perf_counter()
    ids = fill(store, n_jobs)
    fill_s = time.perf_counter() - t0
    if db.url is not None and db.url.startswith("postgresql"):
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    print(f"{db.name}: filled {n_jobs:,} jobs in {fill_s:.1f} s ({n_jobs / fill_s:,.0f} jobs/s)")
    rng = random.Random(42)
    sample = [rng.choice(ids) for _ in range(n_req)]
    types = root / "types"
    env = {"JOBMILL_DATABASE_URL": settings.db_url}  # the server's home is its own
    direct: dict[str, Timing] = {}
    reader = open_store(settings, upgrade=False)

    timings: dict[str, Timing] = {}

    def store_call(key: str, flt: JobFilter, n: int = n_req) -> None:
        direct[key] = direct_timing(key, lambda _: reader.list_refs(flt, limit=100), n)

    def native_call(key: str, flt: JobFilter, n: int) -> None:
        direct[key] = direct_timing(key, lambda _: reader.list(flt, limit=101), n)

    with running_server([types], env=env, keep=keep) as server:
        port = server.port

        def http(key: str, path: str | list[str], check: bytes, **kw: Any) -> None:
            paths = path if isinstance(path, list) else [path] * kw.get("n", n_req)
            raws = [raw_get(port, p, kw.get("token")) for p in paths]
            timings[key] = asyncio.run(http_timing(port, key, raws, kw.get("expect", 200), check))

        http("list", f"/uws/{TYPE}?LAST=100", b"<uws:jobref")
        http("list_alice", f"/uws/{TYPE}?LAST=100", b"alice", token=TOKEN)
        http("job", [f"/uws/{TYPE}/{i}" for i in sample], b"<uws:jobId>")
        http("404", "/uws/unknown", b"unknown", expect=404)
        http("healthz", "/healthz", b"ok")
        store_call("list", JobFilter(phases=LISTED, type=TYPE))
        store_call("list_alice", JobFilter(phases=LISTED, type=TYPE, owner="alice"))
        direct["job"] = direct_timing("job", lambda i: reader.get(sample[i % n_req]), n_req)
        # Filters on one phase (the index jobs (type, phase, seq) serves them).
        for phase in (Phase.EXECUTING, Phase.ERROR):
            key = phase.value
            path = f"/uws/{TYPE}?PHASE={phase.value}&LAST=100"
            http(key, path, b"<uws:jobs", n=max(20, n_req // 4))
            store_call(key, JobFilter(phases=[phase], type=TYPE), max(20, n_req // 4))
        # Native lists (whole jobs) on one filter alone: each as fast as the unfiltered list.
        for key, query, flt in NATIVE:
            n = max(20, n_req // 4)
            http(key, f"/api/v1/jobs?{query}limit=100", b'"jobs"', n=n)
            native_call(key, flt, n)
    n_tag = max(20, n_req // 4)
    tag_before = time_tag_list_before_0013(store, "half", n_tag)
    tag_now = direct_timing(
        "tag_now", lambda _: reader.list(JobFilter(tag="half"), limit=101), n_tag
    )
    for engine in (reader.engine, reader.read_engine, store.engine, store.read_engine):
        engine.dispose()

    def row(label: str, key: str, target: float | None = None, opus: str = "") -> list[Any]:
        http_t, store_t = timings[key], direct[key]
        ok = verdict(target / http_t.p50) if target else ""
        return [
            f"{db.name}: {label}",
            http_t.p50,
            http_t.p95,
            store_t.p50,
            http_t.p50 / store_t.p50,
            target or "",
            opus,
            ok,
        ]

    floor_404, floor_health = timings["404"], timings["healthz"]
    return [
        row("GET /uws/sim?LAST=100 (local admin)", "list", LIST_TARGET_MS, OPUS_LIST_MS),
        row("  the same as alice (token, owner filter)", "list_alice", LIST_TARGET_MS, ""),
        row("GET /uws/sim/{id} (job document)", "job", JOB_TARGET_MS, OPUS_JOB_MS),
        row("  ?PHASE=EXECUTING&LAST=100 (none match)", "EXECUTING"),
        row("  ?PHASE=ERROR&LAST=100 (2 % match)", "ERROR"),
        *(row(f"GET /api/v1/jobs?{query}limit=100", key) for key, query, _ in NATIVE),
        [f"{db.name}:   tag=half as before 0013 (store)", "", "", tag_before.p50, "", "", ""],
        [f"{db.name}:   tag=half now, same moment (store)", "", "", tag_now.p50, "", "", ""],
        [f"{db.name}: floor GET /uws/unknown (404)", floor_404.p50, floor_404.p95, "", "", "", ""],
        [f"{db.name}: floor GET /healthz", floor_health.p50, floor_health.p95, "", "", "", ""],
    ]


def main() -> int:
    args = parse_args(__doc__ or "")
    n_jobs = int(os.environ.get("JOBMILL_BENCH_JOBS") or (20_000 if args.quick else 100_000))
    n_req = int(os.environ.get("JOBMILL_BENCH_REQUESTS") or (100 if args.quick else 200))
    banner(f"bench_uws_list: {n_jobs:,} jobs, {n_req} sequential requests per row")
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="jobmill-bench-uws-") as tmp:
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
    headers = ["case", "p50 ms", "p95 ms", "store p50 ms", "x store", "target", "OPUS ms", ""]
    print_table(headers, [r + [""] * (len(headers) - len(r)) for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
