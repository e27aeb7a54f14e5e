"""The SIGKILL soak: 10,000 short jobs through two ``jobmill api`` and two ``jobmill engine``
processes on PostgreSQL while a random one of the four is killed with SIGKILL every 2-4 s and
restarted a second later (systemd's ``Restart=always``, ``RestartSec=1``).

Each job appends its name to one shared log file and exits. Four submitters post the jobs one
by one, through both API processes in turn; a submission whose answer was lost is looked up by
its ``run_id`` before it is sent again (``POST /api/v1/jobs`` has no idempotency key). Kills go
round the four processes in shuffled rounds (each round kills each process once, the lease
holder at least once), at most ``--max-kills`` of them and none after ``--kill-window`` seconds.

At the end: every job final and COMPLETED, none lost, none run twice (its name twice in the
log), no name created twice, every event history possible; kills per process kind, the engine
take-over times (from the SIGKILL of the lease holder to a new holder in ``engine_leases``),
the total time and jobs/s. Exits 1 if anything was lost, doubled or stuck.

The logic is ``tests/soak.py`` (``tests/e2e/test_soak.py`` runs a small soak in CI). ``--db`` is
a PostgreSQL server the soak may create a database on; it creates a fresh one and drops it.

Run: ``.venv/bin/python bench/bench_soak.py [--quick] [--db URL] [--jobs N]``.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import sys
import tempfile
import threading
import uuid
import warnings
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from _common import banner, print_table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the soak is tests/soak.py
warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient` is deprecated")

from tests.soak import Soak, SoakConfig, history  # noqa: E402

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5433/jobmill_test"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--db", default=DEFAULT_DB, help=f"PostgreSQL server (default {DEFAULT_DB})"
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs (default 10,000)")
    parser.add_argument("--quick", action="store_true", help="1,000 jobs (a smoke test)")
    parser.add_argument("--submitters", type=int, default=4, help="concurrent submitters")
    parser.add_argument(
        "--rate", type=float, default=25.0, help="jobs/s submitted at most (0: no limit)"
    )
    parser.add_argument("--max-kills", type=int, default=150, help="at most this many kills")
    parser.add_argument(
        "--kill-window", type=float, default=900.0, help="no kill after this many seconds"
    )
    parser.add_argument("--seed", type=int, help="the kills' random seed")
    parser.add_argument("--keep", action="store_true", help="keep the database and the files")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every kill")
    args = parser.parse_args()
    if args.quick:
        args.jobs = 1_000
    return args


def interrupted(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM too stops the processes and drops the database


def main() -> int:
    args = parse()
    signal.signal(signal.SIGTERM, interrupted)
    admin_url = make_url(args.db)
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        name = f"jm_soak_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except SQLAlchemyError as exc:
        print(f"bench_soak: skipped: no PostgreSQL at {admin_url!r} ({type(exc).__name__})")
        return 0
    db_url = admin_url.set(database=name).render_as_string(hide_password=False)
    workdir = Path(tempfile.mkdtemp(prefix="jobmill-soak-"))
    config = SoakConfig(
        jobs=args.jobs,
        submitters=args.submitters,
        rate=args.rate or None,
        kill_every=(2.0, 4.0),
        max_kills=args.max_kills,
        kill_window=args.kill_window,
        restart_delay=1.0,
        final_timeout=600.0,
        max_local_jobs=8,
        seed=args.seed,
    )
    banner(
        f"SIGKILL soak: {args.jobs:,} jobs, 2 API + 2 engine processes on PostgreSQL",
        database="PostgreSQL, a fresh database on --db",
    )
    limit = f"at most {args.rate:g} jobs/s" if args.rate else "no rate limit"
    print(
        f"kills every {config.kill_every[0]:g}-{config.kill_every[1]:g} s, at most "
        f"{config.max_kills} in {config.kill_window:g} s, restart after {config.restart_delay:g} s;"
        f" {config.submitters} submitters, {limit}; JOBMILL_MAX_LOCAL_JOBS={config.max_local_jobs}"
    )
    soak = Soak(
        workdir,
        db_url,
        config,
        say=functools.partial(print, flush=True) if args.verbose else lambda _line: None,
    )
    histories: list[str] = []
    loads: list[float] = []
    sampling = threading.Event()

    def sample_load() -> None:  # the 1-minute load average every 5 s of the run
        while not sampling.wait(5.0):
            loads.append(os.getloadavg()[0])

    threading.Thread(target=sample_load, daemon=True).start()
    try:
        result = soak.run()
        for job_name in (result.lost + result.ran_twice)[:5]:  # before the database goes
            for job_id, _, _ in result.jobs.get(job_name, []):
                histories.append(f"{job_name} {job_id}:")
                histories += [f"  {line}" for line in history(db_url, job_id)]
    finally:
        soak.close()
        if args.keep:
            print(f"(kept {workdir} and database {name})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    sampling.set()
    if loads:
        mean_load = sum(loads) / len(loads)
        print(f"seed {result.seed}; 1-min load average during the run: mean {mean_load:.1f}, "
              f"max {max(loads):.1f} (cpus={os.cpu_count()})")  # fmt: skip
    print_table(["figure", "value"], result.rows())
    problems = result.problems()
    if problems:
        print("FAILED:")
        for problem in problems:
            print(f"  {problem}")
        for line in histories:
            print(f"  {line}")
        return 1
    print("ok: nothing lost, nothing run twice, every job COMPLETED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
