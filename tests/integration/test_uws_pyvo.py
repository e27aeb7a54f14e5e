"""pyvo, a real UWS/TAP client, drives jobmill's UWS face over HTTP from start to end."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import requests
from pyvo.dal import AsyncTAPJob, DALQueryError, TAPService

from tests.conftest import LiveServer, wait_for


def test_async_tap_job_full_lifecycle(live: LiveServer) -> None:
    session = requests.Session()
    session.headers.update(live.headers)
    base = f"{live.url}/uws/echo"
    # pyvo posts REQUEST, LANG, QUERY (kept, not given to the process) to {base}/async.
    job = AsyncTAPJob.create(base, "SELECT 1", session=session, MESSAGE="from pyvo")
    assert job.url.startswith(f"{base}/")
    assert job.phase == "PENDING"
    assert job.uws_version == "1.1"
    assert job.owner == "tester"
    assert job.quote is None
    assert job.query == "SELECT 1"
    params = {p.id_: p.content for p in job.job.parameters}
    assert params == {"message": "from pyvo", "REQUEST": "doQuery", "LANG": "ADQL",
                      "QUERY": "SELECT 1"}  # fmt: skip
    job.execution_duration = 30
    assert job.execution_duration.sec == pytest.approx(30)
    job.destruction = datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert job.destruction.isot.startswith("2031-02-03T04:05:06")
    job.query = "SELECT 2"
    assert job.query == "SELECT 2"

    job.run()
    job.wait(timeout=30)
    assert job.phase == "COMPLETED"
    job.raise_if_error()
    uris = job.result_uris
    assert uris[0] == f"{job.url}/results/echo"
    assert [uri.split("format=")[-1] for uri in uris[1:]] == ["json", "xml", "svg"]
    provenance = session.get(uris[1])
    assert provenance.status_code == 200 and job.job_id in provenance.text
    download = session.get(job.result_uris[0])
    assert download.status_code == 200 and download.text == "from pyvo\n"

    listed = TAPService(base, session=session).get_job_list(phases=["COMPLETED"], last=5)
    assert [ref.jobid for ref in listed] == [job.job_id]

    url = job.url
    job.delete()
    assert session.get(url).status_code == 404


def test_async_tap_job_abort(live: LiveServer) -> None:
    session = requests.Session()
    session.headers.update(live.headers)
    job = AsyncTAPJob.create(f"{live.url}/uws/sleep", "q", session=session, SECONDS="30")
    job.run()
    # pyvo's wait() always blocks for a change first (WAIT=-1), so poll the phase instead.
    wait_for(lambda: job.phase == "EXECUTING")
    job.abort()
    assert job.phase == "ABORTED"
    with pytest.raises(DALQueryError, match="aborted"):
        job.raise_if_error()
    job.delete()
