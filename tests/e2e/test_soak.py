"""The SIGKILL soak, small enough for CI (``tests/soak.py``; the full one is
``bench/bench_soak.py``): 300 short jobs, submitted at 20 jobs/s through two ``jobmill api``
processes, run by two ``jobmill engine`` processes on PostgreSQL while one of the four is killed
with SIGKILL every 1-2 s (8 kills, none after 90 s) and restarted a second later. No job is
lost, none runs twice, every job ends COMPLETED, and every killed lease holder is replaced.

PostgreSQL only: several hosts sharing one database is what the API/engine split is for, and
``tests/e2e/test_multiprocess.py`` already kills an engine on SQLite. Without PostgreSQL the test
skips with a reason, except in CI, where it fails (the ``db_url`` fixture).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_multiprocess import LEASE
from tests.soak import Soak, SoakConfig, history

CONFIG = SoakConfig(
    jobs=300,
    submitters=3,
    rate=20.0,
    kill_every=(1.0, 2.0),
    max_kills=8,
    min_kills=8,
    kill_window=90.0,
    restart_delay=1.0,
    final_timeout=60.0,
    max_local_jobs=8,
)


@pytest.mark.postgres
@pytest.mark.timeout(300)
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_sigkill_soak_loses_nothing_and_runs_nothing_twice(tmp_path: Path, db_url: str) -> None:
    soak = Soak(tmp_path, db_url, CONFIG, say=print)
    try:
        result = soak.run()
    finally:
        soak.close()
    for name, value in result.rows():
        print(f"{name:34} {value}")
    problems = result.problems()
    for name in (result.lost + result.ran_twice)[:3]:  # the histories of the first few
        for job_id, _, _ in result.jobs.get(name, []):
            problems.append(f"{name} {job_id}:\n  " + "\n  ".join(history(db_url, job_id)))
    assert not problems, f"seed {result.seed}\n" + "\n".join(problems)
    assert result.completed == len(result.names) == CONFIG.jobs
    # The four processes were each killed twice (shuffled rounds of four), the lease holder at
    # least once a round, and every killed holder was replaced. A standby that was standing by
    # took over within a lease period (at once: it sees the holder's pid no longer runs); when
    # it was itself restarting, the take-over waits for its start-up.
    assert len(result.kills) == CONFIG.max_kills, result.kills
    assert result.kills_of("api") == 4, result.kills
    assert result.kills_of("engine holder") >= 2, result.kills
    assert len(result.takeovers) == result.kills_of("engine holder"), result.kills
    assert all(t < LEASE + 2 for t in result.takeovers_when(True)), result.kills
