"""Limits: data-wait patterns and the watcher's work, job output, free disk space, and logs
read in full (docs/security.md)."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobmill.config import Settings
from jobmill.executors.base import LaunchSpec
from jobmill.executors.local import LocalExecutor
from jobmill.factory import Jobmill, build
from jobmill.service.failures import FailureLog
from jobmill.service.space import disk_full, format_size
from tests.conftest import EXAMPLES, app_client, wait_for, wait_phase
from tests.security.conftest import error
from tests.security.spew import spew_jobtypes

JOBS = "/api/v1/jobs"
MiB = 1 << 20


@pytest.fixture
def security_settings(settings: Settings, tmp_path: Path, data_dir: Path) -> Settings:
    return settings.with_(
        data_root=data_dir,
        data_roots=(str(data_dir),),
        jobtypes=(str(EXAMPLES), spew_jobtypes(tmp_path / "types")),
    )


def waiting(paths: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "echo", "parameters": {"message": "m"}, "wait_for": {"paths": paths}, **extra}


def spew(size: int, seconds: float = 0, code: int = 0) -> dict[str, Any]:
    return {"type": "spew", "parameters": {"size": size, "seconds": seconds, "code": code}}


# -- data-wait patterns -------------------------------------------------------------------------


def test_two_hundred_wildcard_patterns_are_refused(api: TestClient, jm: Jobmill) -> None:
    attack = waiting([f"d{i}/**/**/x{i}/**/*.dat" for i in range(200)])
    refused = error(api.post(JOBS, json=attack))
    assert refused["field"] == "wait_for.paths" and "JOBMILL_MAX_WAIT_PATHS" in refused["message"]
    for too_deep in (
        waiting([f"d{i}/**/x.dat" for i in range(5)]),
        waiting(["a/**/x.dat", "b/**/y.dat", "c*/z.dat", "d/e?/f.dat", "[gh]/i.dat"]),
    ):
        refused = error(api.post(JOBS, json=too_deep))
        assert refused["field"] == "wait_for.paths"
        assert "JOBMILL_MAX_WAIT_WILDCARD_DIRS" in refused["message"]
    names = waiting([f"d{i}/*.dat" for i in range(32)])  # wildcards in file names: cheap
    assert api.post(f"{JOBS}/render", json=names).status_code == 200
    three = error(api.post(JOBS, json=waiting(["ok.dat", "a/**/b/**/c/**/x.dat"])))
    assert three["field"] == "wait_for.paths[1]" and "'**'" in three["message"]
    assert error(api.post(f"{JOBS}/render", json=attack))["field"] == "wait_for.paths"
    batch = {"jobs": [waiting(["a.dat"]), attack]}
    assert error(api.post(f"{JOBS}/batch", json=batch))["field"] == "jobs[1].wait_for.paths"
    assert jm.store.count() == 0
    collapsed = api.post(JOBS, json=waiting(["a/**/**/**/x.dat"]))  # one '**', really
    assert collapsed.status_code == 201, collapsed.text
    condition = api.get(f"{JOBS}/{collapsed.json()['id']}/wait_for").json()
    assert condition["paths"][0].endswith("/a/**/x.dat")


def make_tree(root: Path, fanout: int = 10) -> int:
    """``fanout``**3 directories ``a<i>/b<j>/c<k>`` under ``root``; returns how many."""
    for i in range(fanout):
        for j in range(fanout):
            for k in range(fanout):
                (root / f"a{i}" / f"b{j}" / f"c{k}").mkdir(parents=True)
    return fanout**3


def worst_allowed(settings: Settings) -> list[str]:
    """The costliest wait one job may ask for: every path a pattern, the most with wildcards in
    directories (two '**' each, names matching every file, directories none), the rest
    wildcard names in directories of their own."""
    recursive = [
        "**/zz*/**/*",
        "a*/**/zz*/**/*.dat",
        "*/**/q*/**/*",
        "**/b[0-9]/**/zz/*",
    ][: settings.max_wait_wildcard_dirs]
    names = [f"a{i % 10}/b{i // 10}/c{i % 7}/n{i}_*" for i in range(settings.max_wait_paths)]
    return recursive + names[: settings.max_wait_paths - len(recursive)]


def test_the_worst_allowed_wait_is_cheap_and_does_not_delay_others(
    api: TestClient, jm: Jobmill, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = make_tree(data_dir)
    for leaf in data_dir.glob("a*/b*/c*"):
        for n in range(20):
            (leaf / f"f{n}.dat").write_bytes(b"")
    assert jm.data is not None
    watcher = jm.data.watcher
    assert watcher.wait_loaded()
    paths = worst_allowed(jm.settings)
    assert len(paths) == 32 and sum("**" in p for p in paths) == 4
    before = watcher.cpu_seconds
    started = time.monotonic()
    heavy = api.post(JOBS, json=waiting(paths))
    assert heavy.status_code == 201, heavy.text
    light = api.post(JOBS, json=waiting(["ready.dat"])).json()["id"]
    wait_for(lambda: watcher.knows(heavy.json()["id"]) and watcher.knows(light))
    (data_dir / "ready.dat").write_text("x")

    def released() -> bool:
        job = api.get(f"{JOBS}/{light}").json()
        return bool(job["reason"] != "waiting for data")

    wait_for(released, timeout=10)
    latency = time.monotonic() - started
    spent = watcher.cpu_seconds - before
    with capsys.disabled():
        print(
            f"\nworst allowed wait (32 patterns, 4 with two '**', {dirs} directories, "
            f"{dirs * 20} files): "
            f"watcher CPU {spent * 1000:.0f} ms, another job released {latency * 1000:.0f} ms "
            f"after submission; {watcher.stats()}"
        )
    assert spent < 2.0
    assert latency < 5.0


def test_per_user_caps_on_waiting_jobs(security_settings: Settings) -> None:
    jm = build(security_settings.with_(max_user_waits=3))
    try:
        with app_client(jm, start_engine=False) as api:
            for name in ("a", "b"):
                assert api.post(JOBS, json=waiting([f"{name}.dat"])).status_code == 201
            pending = waiting(["c.dat"], phase="PENDING")  # counts: it waits once run
            assert api.post(JOBS, json=pending).status_code == 201
            over = error(api.post(JOBS, json=waiting(["d.dat"])), 429)
            assert over["field"] == "wait_for" and "JOBMILL_MAX_USER_WAITS" in over["message"]
            assert jm.store.count() == 3
    finally:
        jm.close()
    jm = build(security_settings.with_(max_user_wildcards=4, max_user_wildcard_dirs=2))
    try:
        with app_client(jm, start_engine=False) as api:
            for body in (waiting(["x/**/f.dat", "n/*.dat"]), waiting(["y*/f.dat", "exact.dat"])):
                assert api.post(JOBS, json=body).status_code == 201
            over = error(api.post(JOBS, json=waiting(["z/**/f.dat"])), 429)
            assert over["field"] == "wait_for"
            assert "JOBMILL_MAX_USER_WILDCARD_DIRS" in over["message"]
            batch = {"jobs": [waiting(["m/*.dat"]), waiting(["o/*.dat"])]}
            over = error(api.post(f"{JOBS}/batch", json=batch), 429)
            assert "JOBMILL_MAX_USER_WILDCARDS" in over["message"]
            assert api.post(JOBS, json=waiting(["m/*.dat", "only.dat"])).status_code == 201
            assert jm.store.count() == 6  # the same database as the first jobmill
    finally:
        jm.close()


# -- job output ---------------------------------------------------------------------------------


def test_output_over_the_cap_ends_the_job_in_error(security_settings: Settings) -> None:
    jm = build(security_settings.with_(max_job_output=64 << 10))
    message = "output over 64 KiB (JOBMILL_MAX_JOB_OUTPUT)"
    try:
        with app_client(jm) as api:
            running = api.post(JOBS, json=spew(MiB, seconds=60)).json()["id"]
            quick = api.post(JOBS, json=spew(MiB)).json()["id"]
            small = api.post(JOBS, json=spew(1000)).json()["id"]
            started = time.monotonic()
            job = wait_phase(api, running, timeout=20)
            assert job["phase"] == "ERROR" and job["error"] == message
            assert time.monotonic() - started < 15  # stopped, not left to sleep its minute
            job = wait_phase(api, quick)
            assert job["phase"] == "ERROR" and job["error"] == message
            assert wait_phase(api, small)["phase"] == "COMPLETED"
    finally:
        jm.close()


def test_output_cap_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_job_output == 1 << 30
    assert format_size(1 << 30) == "1 GiB" and format_size(64 << 10) == "64 KiB"
    monkeypatch.setenv("JOBMILL_MAX_JOB_OUTPUT", "512M")
    monkeypatch.setenv("JOBMILL_MIN_FREE", "off")
    settings = Settings.from_env()
    assert settings.max_job_output == 512 << 20 and settings.min_free == 0


# -- logs in full -------------------------------------------------------------------------------


def test_uws_stdout_over_8_mib_comes_complete(api: TestClient) -> None:
    size = 9 * MiB + 7
    job_id = api.post(JOBS, json=spew(size)).json()["id"]
    assert wait_phase(api, job_id, timeout=30)["phase"] == "COMPLETED"
    answer = api.get(f"/uws/spew/{job_id}/stdout")
    assert answer.status_code == 200
    assert len(answer.content) == size and answer.headers["X-Log-Size"] == str(size)
    assert set(answer.content) == {ord("x")}
    assert api.get(f"/uws/spew/{job_id}/stderr").content == b""
    pages, offset = [], 0  # the native face pages explicitly
    while True:
        page = api.get(f"{JOBS}/{job_id}/logs/stdout", params={"offset": offset, "limit": 8 * MiB})
        assert page.headers["X-Log-Size"] == str(size)
        if not page.content:
            break
        pages.append(page.content)
        offset = int(page.headers["X-Log-Offset"]) + len(page.content)
    assert len(pages) == 2 and sum(len(p) for p in pages) == size
    assert error(api.get(f"{JOBS}/{job_id}/logs/stdout", params={"limit": 9 * MiB}))


# -- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (needs root and a mount the container allows)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (mount -t tmpfs) needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs refused: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_507_and_the_job_that_filled_it_ends_in_error(
    security_settings: Settings, tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ballast = tmpfs / "ballast"
    ballast.write_bytes(b"\0" * (2 * MiB))
    settings = security_settings.with_(
        home=tmpfs / "home",
        database_url=f"sqlite:///{tmpfs / 'jobmill.db'}",  # the database fills up too
        min_free=MiB,
    )
    jm = build(settings)
    try:
        with app_client(jm) as api:
            health = api.get("/healthz")
            assert health.status_code == 200 and health.json()["disk"]["ok"] is True
            caplog.clear()
            filler = api.post(JOBS, json=spew(100 * MiB)).json()["id"]
            wait_for((jm.settings.home / "jobs" / filler).exists)
            time.sleep(3)  # the disk is full: the engine may fail to write, quietly
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            # Each background component says so once, however long the disk stays full.
            per_component = Counter(r.name for r in errors)
            assert all(n == 1 for n in per_component.values()), [r.getMessage() for r in errors]
            count = jm.store.count()
            refused = error(api.post(JOBS, json=spew(0)), 507)
            assert refused["code"] == "insufficient_storage"
            assert "JOBMILL_MIN_FREE" in refused["message"]
            ocps_body = {"type": "fail", "env": {"code": 0}, "log_dir": "x"}
            ocps = api.post("/api/v1/job", json=ocps_body)
            assert ocps.status_code == 507 and ocps.json()["status"] == "error"
            uws = api.post("/uws/spew", data={"size": "0"}, follow_redirects=False)
            assert uws.status_code == 507
            assert error(api.post(f"{JOBS}/batch", json={"jobs": [spew(0)]}), 507)
            assert jm.store.count() == count
            health = api.get("/healthz")
            assert health.status_code == 503, health.text
            body = health.json()
            assert body["status"] == "degraded" and body["disk"]["free"] < MiB
            assert "JOBMILL_MIN_FREE" in body["message"]
            ballast.unlink()  # room again: whatever could not be written now can
            job = wait_phase(api, filler, timeout=30)
            assert job["phase"] == "ERROR" and "the disk was full" in job["error"], job
            assert "lost" not in job["error"]
    finally:
        jm.close()


def test_a_disk_that_fills_while_storing_is_507(
    api: TestClient, jm: Jobmill, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    def full(*_args: Any, **_kwargs: Any) -> Any:
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(jm.store, "_create_in", full)  # the insert, grouped or alone
    refused = error(api.post(JOBS, json=spew(0)), 507)
    assert refused["code"] == "insufficient_storage"


def test_disk_full_is_recognised() -> None:
    from sqlalchemy.exc import OperationalError

    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    wrapped = OperationalError("COMMIT", {}, sqlite3.OperationalError("database or disk is full"))
    assert disk_full(wrapped)

    class PgDiskFull(Exception):
        pgcode = "53100"

    assert disk_full(RuntimeError("x")) is False
    try:
        raise RuntimeError("commit failed") from PgDiskFull("could not extend file")
    except RuntimeError as exc:
        assert disk_full(exc)
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))


def test_a_failing_loop_logs_once_then_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("jobmill.test.loop")
    failures = FailureLog(logger, "test loop")
    with caplog.at_level(logging.WARNING, logger="jobmill.test.loop"):
        full = OSError(errno.ENOSPC, "No space left on device")
        pauses = [failures.failed(full) for _ in range(50)]
        failures.succeeded()
    assert pauses[0] == 0.5 and pauses[1] == 1.0 and max(pauses) == 10.0
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "the disk is full" in messages[0] and "works again after 50 failures" in messages[1]


def test_the_engine_backs_off_when_its_cycle_fails(
    jobmill: Jobmill, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = jobmill.engine
    calls = []

    def broken() -> None:
        calls.append(time.monotonic())
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine, "_cycle", broken)
    monkeypatch.setattr(engine, "recover", lambda: None)
    with caplog.at_level(logging.ERROR, logger="jobmill.service.engine"):
        engine.start()
        time.sleep(2.5)
        engine.stop()
    assert 2 <= len(calls) <= 4  # 0.5 s, 1 s, 2 s... between attempts, not 2 a second
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def test_a_reaped_job_keeps_its_exit_status_until_recorded(tmp_path: Path) -> None:
    executor = LocalExecutor(grace=1.0)
    spec = LaunchSpec(
        job_id="j",
        argv=["/bin/sh", "-c", "exit 3"],
        env={"PATH": os.environ["PATH"]},
        workdir=tmp_path / "w",
        stdout=tmp_path / "w" / "out",
        stderr=tmp_path / "w" / "err",
        umask=0o077,
    )
    native_id = executor.submit(spec)
    first = wait_for(lambda: executor.poll([native_id])[native_id].exit_code is not None)
    first = executor.poll([native_id])[native_id]
    again = executor.poll([native_id])[native_id]  # asked again: not yet recorded
    assert first.exit_code == again.exit_code == 3 and again.native_state != "lost"
    executor.close()
