"""What OPUS and TAP/DALI clients ask of the UWS face beyond the job documents: the provenance
URLs (``/<id>/provjson``, ``provxml``, ``provsvg``, ``/provsap``), ``AFTER`` as an ISO 8601 UTC
year, date or time, and a ``RUNID`` changed while the job is PENDING."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from lxml import etree

import jobmill.service.provenance as provenance_module
from tests.conftest import wait_for

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
SVG = "{http://www.w3.org/2000/svg}svg"


def create(client: TestClient, job_type: str = "echo", **data: str) -> str:
    data.setdefault("MESSAGE", "hello")
    response = client.post(f"/uws/{job_type}", data=data, follow_redirects=False)
    assert response.status_code == 303, response.text
    return str(response.headers["location"])


def finished(client: TestClient, url: str) -> None:
    wait_for(lambda: client.get(f"{url}/phase").text == "COMPLETED", 20)


def job_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def ids(client: TestClient, **params: str) -> list[str]:
    response = client.get("/uws/echo", params=params)
    assert response.status_code == 200, response.text
    return [ref.get("id") for ref in etree.fromstring(response.content)]


# -- provenance ---------------------------------------------------------------------------------


def test_opus_provenance_urls_serve_the_documents(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = create(client, MESSAGE="prov me")
    early = client.get(f"{url}/provjson")
    assert early.status_code == 403 and "finished" in early.text  # PENDING: not yet
    assert client.post(f"{url}/phase", data={"PHASE": "RUN"}).status_code == 200
    finished(client, url)
    jid = job_id(url)

    document = client.get(f"{url}/provjson")
    assert document.status_code == 200 and document.headers["content-type"] == "application/json"
    activities = json.loads(document.text)["activity"]
    assert [key.endswith(f"jobs/{jid}") for key in activities] == [True]
    xml = client.get(f"{url}/provxml")
    assert xml.status_code == 200 and xml.headers["content-type"] == "application/xml"
    assert etree.fromstring(xml.content).tag == "{http://www.w3.org/ns/prov#}document"
    provn = client.get(f"{url}/provn", params={"DEPTH": "ALL"})
    assert provn.status_code == 200 and provn.text.startswith("document")
    # The SVG without Graphviz: drawn by jobmill itself, never 503.
    monkeypatch.setattr(provenance_module, "DOT", "jobmill-test-no-such-dot")
    svg = client.get(f"{url}/provsvg")
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    assert etree.fromstring(svg.content).tag == SVG
    assert f"/api/v1/jobs/{jid}" in svg.text

    # Every provenance result the job lists resolves.
    results = etree.fromstring(client.get(f"{url}/results").content)
    links = {r.get("id"): r.get("{http://www.w3.org/1999/xlink}href") for r in results}
    for name in ("provjson", "provxml", "provsvg"):
        assert client.get(links[name]).status_code == 200, name

    bad = client.get(f"{url}/provjson", params={"DEPTH": "deep"})
    assert bad.status_code == 400 and "DEPTH" in bad.text
    assert client.get(f"{url}/provjson", params={"DEPTH": "11"}).status_code == 400
    other = url.replace(jid, "00000000-0000-0000-0000-000000000000")
    assert client.get(f"{other}/provjson").status_code == 404
    assert client.get(f"{url}/provjson", headers={"Authorization": ""}).status_code == 401


def test_provsap_follows_a_job_or_a_result_back(client: TestClient) -> None:
    url = create(client, MESSAGE="sap", PHASE="RUN")
    finished(client, url)
    jid = job_id(url)
    result = f"http://testserver/api/v1/jobs/{jid}/results/echo"

    default = client.get("/provsap", params={"ID": jid, "DEPTH": "ALL"})
    assert default.status_code == 200, default.text
    assert default.headers["content-type"] == "image/svg+xml"  # OPUS's default: PROV-SVG
    for ident in (jid, url, result, jid.replace("-", "")):
        answer = client.get("/provsap", params={"ID": ident, "RESPONSEFORMAT": "PROV-JSON"})
        assert answer.status_code == 200, (ident, answer.text)
        assert list(json.loads(answer.text)["activity"])[0].endswith(f"jobs/{jid}")
    ignored = {"MODEL": "IVOA", "AGENTS": "1", "DESCRIPTIONS": "2", "DIRECTION": "back"}
    xml = client.get("/provsap", params={"ID": jid, "RESPONSEFORMAT": "PROV-XML", **ignored})
    assert xml.status_code == 200 and xml.headers["content-type"] == "application/xml"

    for params, field in [
        ({}, "ID"),
        ({"ID": [jid, jid]}, "ID"),
        ({"ID": jid, "DIRECTION": "FORWARD"}, "DIRECTION"),
        ({"ID": jid, "RESPONSEFORMAT": "PROV-PNG"}, "RESPONSEFORMAT"),
        ({"ID": jid, "DEPTH": "0"}, "DEPTH"),
    ]:
        answer = client.get("/provsap", params=params)
        assert answer.status_code == 400, (params, answer.text)
        assert field in answer.text and answer.headers["content-type"].startswith("text/plain")
    # ID is a query value: naming no job (or another user's) is a bad value, 400.
    for unknown in ("no-such-thing", "00000000-0000-0000-0000-000000000000"):
        answer = client.get("/provsap", params={"ID": unknown})
        assert answer.status_code == 400 and "ID" in answer.text, answer.text
    anonymous = client.get("/provsap", params={"ID": jid}, headers={"Authorization": ""})
    assert anonymous.status_code == 401


# -- AFTER ---------------------------------------------------------------------------------------


def test_after_takes_a_utc_year_date_or_time_and_refuses_other_offsets(
    client: TestClient,
) -> None:
    first = job_id(create(client))
    time.sleep(0.01)
    second = job_id(create(client))
    year = str(datetime.now(UTC).year)
    today = datetime.now(UTC).date().isoformat()
    assert ids(client, AFTER=year) == [second, first]
    assert ids(client, AFTER="2015") == [second, first]
    assert ids(client, AFTER="2015-10-26") == [second, first]
    assert ids(client, AFTER=today) == [second, first]
    assert ids(client, AFTER=str(datetime.now(UTC).year + 1)) == []
    soon = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert ids(client, AFTER=soon + "Z") == []
    assert ids(client, AFTER=soon + "+00:00") == []
    for value in (
        "2015-10-26T10:00:00+01:00",
        "2015-10-26T10:00:00-05:00",
        "2015-13",
        "2015-02-30",
    ):
        answer = client.get("/uws/echo", params={"AFTER": value})
        assert answer.status_code == 400, (value, answer.text)
        assert "AFTER" in answer.text
    offset = client.get("/uws/echo", params={"AFTER": "2015-10-26T10:00:00+01:00"})
    assert "not in UTC" in offset.text and "+01:00" in offset.text


# -- RUNID ----------------------------------------------------------------------------------------


def test_runid_changes_while_pending_and_only_then(client: TestClient) -> None:
    url = create(client, RUNID="first")

    def run_id() -> str | None:
        return etree.fromstring(client.get(url).content).findtext(UWS + "runId")

    assert run_id() == "first"
    changed = client.post(url, data={"RUNID": "second"}, follow_redirects=False)
    assert changed.status_code == 303 and changed.headers["location"] == url
    assert run_id() == "second"
    # As DALI clients send it, with parameters, to .../parameters (names in any case).
    both = client.post(f"{url}/parameters", data={"runid": "third", "MESSAGE": "changed"})
    assert both.status_code == 200, both.text
    assert run_id() == "third"
    assert client.get(f"{url}/parameters/message").text == "changed"
    too_long = client.post(url, data={"RUNID": "r" * 300})
    assert too_long.status_code == 400 and "RUNID" in too_long.text
    assert run_id() == "third"

    assert client.post(f"{url}/phase", data={"PHASE": "RUN"}).status_code == 200
    late = client.post(url, data={"RUNID": "fourth"})
    assert late.status_code == 403 and "PENDING" in late.text
    assert run_id() == "third"
