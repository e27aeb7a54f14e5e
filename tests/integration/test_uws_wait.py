"""UWS blocking (``WAIT``): returns on a phase change, also one made by another jobmill process
sharing the database; returns at once when it must; never blocks past the configured maximum;
holds no thread while it waits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from lxml import etree

from jobmill.config import Settings
from jobmill.factory import Jobmill, build
from jobmill.service.jobs import User
from tests.conftest import LiveServer, app_client, wait_for

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
ADMIN = User("tester", admin=True)


def create(client: TestClient, job_type: str = "echo", **data: Any) -> str:
    data.setdefault("MESSAGE", "hello")
    response = client.post(f"/uws/{job_type}", data=data, follow_redirects=False)
    assert response.status_code == 303, response.text
    return str(response.headers["location"])


def job_id(url: str) -> str:
    return url.rsplit("/", 1)[1]


def timed(client: TestClient, url: str, **params: Any) -> tuple[str, float]:
    """GET the job with ``params``; its phase and how long the answer took."""
    started = time.monotonic()
    response = client.get(url, params=params)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    return str(etree.fromstring(response.content).find(UWS + "phase").text), elapsed


def later(delay: float, action: Callable[[], object]) -> threading.Thread:
    """Run ``action`` in a thread after ``delay`` seconds."""

    def run() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def quiet(jobmill: Jobmill) -> Iterator[TestClient]:
    """A client whose engine does not run: PENDING and QUEUED jobs stay where they are."""
    with app_client(jobmill, start_engine=False) as client:
        yield client


def test_wait_returns_as_soon_as_the_phase_changes(quiet: TestClient, jobmill: Jobmill) -> None:
    url = create(quiet)
    thread = later(0.5, lambda: jobmill.jobs.run(ADMIN, job_id(url)))
    phase, elapsed = timed(quiet, url, WAIT=20)
    thread.join()
    assert phase == "QUEUED"
    assert 0.4 < elapsed < 2.0


def test_wait_with_a_phase_guard(quiet: TestClient) -> None:
    url = create(quiet)
    phase, elapsed = timed(quiet, url, WAIT=20, PHASE="QUEUED")  # not in that phase: at once
    assert phase == "PENDING" and elapsed < 1.0
    phase, elapsed = timed(quiet, url, wait=1, phase="pending")  # in it: blocks
    assert phase == "PENDING" and 0.9 < elapsed < 2.5


def test_wait_returns_after_the_timeout(quiet: TestClient) -> None:
    url = create(quiet)
    phase, elapsed = timed(quiet, url, WAIT=1)
    assert phase == "PENDING" and 0.9 < elapsed < 2.5
    phase, elapsed = timed(quiet, url, WAIT="0.3")
    assert phase == "PENDING" and 0.25 < elapsed < 1.5
    phase, elapsed = timed(quiet, url, WAIT=0)
    assert elapsed < 1.0


def test_wait_returns_at_once_in_other_phases(quiet: TestClient) -> None:
    url = create(quiet)
    quiet.post(f"{url}/phase", data={"PHASE": "ABORT"})
    phase, elapsed = timed(quiet, url, WAIT=20)
    assert phase == "ABORTED" and elapsed < 1.0


def test_wait_is_capped_by_the_configured_maximum(jobmill: Jobmill, settings: Settings) -> None:
    jobmill.settings = settings.with_(max_wait=1.0)
    with app_client(jobmill, start_engine=False) as client:
        url = create(client)
        for wait in (30, -1):
            phase, elapsed = timed(client, url, WAIT=wait)
            assert phase == "PENDING" and 0.9 < elapsed < 2.5, wait


def test_wait_on_a_deleted_job_is_404(quiet: TestClient, jobmill: Jobmill) -> None:
    """A row that vanishes without a phase event (the service would abort it first)."""
    url = create(quiet)
    thread = later(0.5, lambda: jobmill.store.delete(job_id(url)))
    started = time.monotonic()
    response = quiet.get(url, params={"WAIT": 20})
    thread.join()
    assert response.status_code == 404
    assert time.monotonic() - started < 3.0


def test_wait_sees_a_change_made_by_another_jobmill_process(settings: Settings) -> None:
    """Two jobmills on one database: a WAIT on A returns when B aborts the job."""
    a, b = build(settings), build(settings)
    try:
        with (
            app_client(a, start_engine=False) as client_a,
            app_client(b, start_engine=False) as client_b,
        ):
            url = create(client_a)
            path = url.removeprefix("http://testserver")
            aborted: list[float] = []

            def abort() -> None:
                client_b.post(f"{path}/phase", data={"PHASE": "ABORT"})
                aborted.append(time.monotonic())

            thread = later(0.5, abort)
            phase, elapsed = timed(client_a, url, WAIT=20)
            woken = time.monotonic()
            thread.join()
            assert phase == "ABORTED"
            assert 0.4 < elapsed < 15.0  # woken, not timed out
            # From B's answer to A's: the feed reads every 30 ms and reconciles every second.
            # (The abort itself is not timed: a loaded machine can make any request slow.)
            assert woken - aborted[0] < 1.5
    finally:
        a.close()
        b.close()


def test_wait_follows_a_job_run_by_another_jobmill_process(settings: Settings) -> None:
    """A (no engine) follows, WAIT after WAIT, a job that B's engine runs to completion."""
    a, b = build(settings), build(settings)
    try:
        with (
            app_client(a, start_engine=False) as client_a,
            app_client(b) as client_b,
        ):
            url = create(client_a, "sleep", SECONDS="0.5")
            client_b.post(f"{url.removeprefix('http://testserver')}/phase", data={"PHASE": "RUN"})
            seen = []
            started = time.monotonic()
            while not seen or seen[-1] not in ("COMPLETED", "ERROR", "ABORTED"):
                phase, _elapsed = timed(client_a, url, WAIT=20)
                seen.append(phase)
                assert time.monotonic() - started < 15
            assert seen[-1] == "COMPLETED"
            assert time.monotonic() - started < 5
    finally:
        a.close()
        b.close()


def test_waiting_requests_hold_no_thread(live: LiveServer) -> None:
    """More waiters than the worker threads (40): all wait, all return on the change."""
    count = 60
    feed = live.server.config.app.state.feed

    async def scenario() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(base_url=live.url, timeout=30, headers=live.headers) as client:
            response = await client.post("/uws/echo", data={"MESSAGE": "x"})
            assert response.status_code == 303
            url = response.headers["location"]
            waits = [
                asyncio.create_task(client.get(url, params={"WAIT": 25})) for _ in range(count)
            ]
            await asyncio.to_thread(wait_for, lambda: feed.waiting() == count, 10)
            # The server still answers other requests meanwhile.
            assert (await client.get("/uws/echo")).status_code == 200
            await client.post(f"{url}/phase", data={"PHASE": "ABORT"})
            done = await asyncio.wait_for(asyncio.gather(*waits), 5)
            return [
                (r.status_code, etree.fromstring(r.content).find(UWS + "phase").text) for r in done
            ]

    results = asyncio.run(scenario())
    assert results == [(200, "ABORTED")] * count
    assert feed.waiting() == 0
