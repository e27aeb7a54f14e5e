"""Rules: files and finished jobs become jobs exactly once, and how soon.

Two ``jobmill serve`` processes share one SQLite database and one data root (two jobmill
nodes), with two rules from a rules file:

* ``on-file``: ``in/{batch}/{name}.dat`` creates a ``down`` job;
* ``on-up``: a completed ``up`` job (``/bin/true``) creates a ``down`` job.

``down`` jobs run ``/bin/true`` too. Cases, every one checked for exactly one job per key:

* paced files: N files written one every 10 ms (write then rename);
* burst: M files back to back;
* restart: both servers stop, K files arrive, one server starts: all K fire at start-up;
* chain: J ``up`` jobs in one batch; their ends fire ``on-up``.

Latency: the file's rename (or the upstream job's ``ended_at``) to the ``down`` job's
``created_at``; the server's clock and this host's are the same. Run:
``.venv/bin/python bench/bench_rules.py [--quick]``.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from _common import (
    Server,
    auth_headers,
    banner,
    parse_args,
    percentile,
    print_table,
    running_server,
)

RULES = """
rules:
  - name: on-file
    file: "in/{batch}/{name}.dat"
    create: down
    parameters: {tag: "file {batch}/{name}"}
  - name: on-up
    job: up
    create: down
    parameters: {tag: "up {job.id}"}
"""


def jobtypes(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "up.yaml").write_text('name: up\ncommand: ["/bin/true"]\n')
    (directory / "down.yaml").write_text(
        'name: down\ncommand: ["/bin/true", "{tag}"]\n'
        "parameters: {tag: {type: string, required: true}}\n"
    )
    (directory / "bench.rules.yaml").write_text(RULES)
    return directory


def write_files(root: Path, batch: str, count: int, pause: float) -> dict[str, float]:
    """Write ``count`` files (write, then rename into place); their arrival times."""
    times: dict[str, float] = {}
    target = root / "in" / batch
    target.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        tmp = target / f".{i}.tmp"
        tmp.write_bytes(b"x" * 64)
        os.replace(tmp, target / f"{i}.dat")
        times[f"file {batch}/{i}"] = time.time()
        if pause:
            time.sleep(pause)
    return times


def created(db_url: str) -> dict[str, list[float]]:
    """Every ``down`` job's tag and creation time (a list: more than one is a duplicate)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT parameters, created_at FROM jobs WHERE type='down'"))
            found: dict[str, list[float]] = {}
            for parameters, created_at in rows:
                tag = (parameters if isinstance(parameters, dict) else _json(parameters))["tag"]
                when = _ts(created_at)
                found.setdefault(tag, []).append(when)
            return found
    finally:
        engine.dispose()


def ended(db_url: str) -> dict[str, float]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, ended_at FROM jobs WHERE type='up' AND ended_at IS NOT NULL")
            )
            return {f"up {job_id}": _ts(at) for job_id, at in rows}
    finally:
        engine.dispose()


def _json(value: str) -> dict[str, str]:
    import json

    result: dict[str, str] = json.loads(value)
    return result


def _ts(value: object) -> float:
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return moment.timestamp()
    text_value = str(value).replace("Z", "+00:00")
    moment = dt.datetime.fromisoformat(text_value)
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


def wait_all(db_url: str, keys: set[str], timeout: float) -> dict[str, list[float]]:
    deadline = time.monotonic() + timeout
    while True:
        found = created(db_url)
        if keys <= set(found) or time.monotonic() > deadline:
            time.sleep(1.5)  # anything late (a duplicate) shows up too
            return created(db_url)
        time.sleep(0.1)


def row(case: str, arrivals: dict[str, float], found: dict[str, list[float]]) -> list[object]:
    fired = [k for k in arrivals if k in found]
    duplicates = sum(len(found[k]) - 1 for k in fired)
    delays = [(found[k][0] - arrivals[k]) * 1000 for k in fired]
    return [
        case,
        len(arrivals),
        len(fired),
        duplicates,
        len(arrivals) - len(fired),
        percentile(delays, 50),
        percentile(delays, 99),
        max(delays) if delays else float("nan"),
    ]


@contextmanager
def servers(count: int, types: Path, env: dict[str, str], keep: bool) -> Iterator[list[Server]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(running_server([types], env=env, keep=keep)) for _ in range(count)
        ]


def main() -> None:
    args = parse_args(__doc__ or "")
    paced, burst, restart, chain = (50, 200, 50, 50) if args.quick else (200, 1000, 200, 200)
    banner("rules: files and finished jobs become jobs, exactly once")
    base = Path(tempfile.mkdtemp(prefix="jobmill-bench-rules-"))
    data = base / "data"
    data.mkdir()
    db_url = f"sqlite:///{base / 'shared.db'}"
    env = {
        "JOBMILL_DATABASE_URL": db_url,
        "JOBMILL_DATA_ROOT": str(data),
        "JOBMILL_MAX_LOCAL_JOBS": "2",
    }
    types = jobtypes(base / "jobtypes")
    rows = []
    with servers(2, types, env, args.keep) as both:
        time.sleep(1.0)
        arrivals = write_files(data, "paced", paced, 0.01)
        rows.append(row("paced files, 2 servers", arrivals, wait_all(db_url, set(arrivals), 60)))
        arrivals = write_files(data, "burst", burst, 0.0)
        rows.append(row("burst, 2 servers", arrivals, wait_all(db_url, set(arrivals), 120)))
        with httpx.Client(base_url=both[0].url, timeout=60, headers=auth_headers()) as client:
            answer = client.post("/api/v1/jobs/batch", json={"jobs": [{"type": "up"}] * chain})
            answer.raise_for_status()
        deadline = time.monotonic() + 120
        while len(ended(db_url)) < chain and time.monotonic() < deadline:
            time.sleep(0.2)
        ends = ended(db_url)
        rows.append(row("chain: up ended -> down", ends, wait_all(db_url, set(ends), 60)))
    arrivals = write_files(data, "down", restart, 0.0)  # while no jobmill runs
    start = time.time()
    with servers(1, types, env, args.keep):
        found = wait_all(db_url, set(arrivals), 60)
    restarted = row("written while down (from start-up)", dict.fromkeys(arrivals, start), found)
    rows.append(restarted)
    print_table(
        ["case", "keys", "fired", "duplicates", "missing", "p50 ms", "p99 ms", "max ms"], rows
    )
    total = sum(len(v) for v in created(db_url).values())
    print(f"down jobs in the database: {total} for {paced + burst + restart + chain} keys")


if __name__ == "__main__":
    main()
