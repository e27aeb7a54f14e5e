"""The UWS 1.1 face: every resource, validated against the official XSD and parsed by pyvo."""

from __future__ import annotations

import io
import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from fastapi.testclient import TestClient
from lxml import etree
from pyvo.io.uws import parse_job, parse_job_list

from jobmill.config import Settings
from jobmill.domain.lifecycle import Action
from jobmill.factory import Jobmill, build
from tests.conftest import ROOT, app_client, require_service, wait_for

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
XLINK = "{http://www.w3.org/1999/xlink}"
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
XSD_DIR = ROOT / ".cache" / "uws-xsd"
XS = "{http://www.w3.org/2001/XMLSchema}"

DUMP_SCRIPT = """\
import json, os, sys
out = {"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}
if len(sys.argv) > 2:
    with open(sys.argv[2], encoding="utf-8") as handle:
        out["data"] = handle.read()
with open("dump.json", "w", encoding="utf-8") as handle:
    json.dump(out, handle)
"""
DUMP_TYPE = """\
name: {name}
description: Dump argv and environment to dump.json.
command: ["python3", "{{jobtype_dir}}/dump.py", "{{message}}", "{{data}}"]
reject_unknown_parameters: {strict}
parameters:
  message:
    type: string
    required: true
    deliver: both
  data:
    type: path
    description: A file, usually uploaded.
results:
  - name: dump
    pattern: dump.json
    content_type: application/json
"""


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The example job types plus ``dump`` (and ``strict``, which refuses unknown names)."""
    types = tmp_path / "uws-types"
    types.mkdir()
    (types / "dump.py").write_text(DUMP_SCRIPT)
    (types / "dump.yaml").write_text(DUMP_TYPE.format(name="dump", strict="false"))
    (types / "strict.yaml").write_text(DUMP_TYPE.format(name="strict", strict="true"))
    return settings.with_(jobtypes=(*settings.jobtypes, str(types)))


@pytest.fixture(scope="session")
def schema() -> xmlschema.XMLSchema:
    """The official UWS 1.1 schema, fetched once by scripts/get-uws-xsd.sh into .cache/."""
    script = ROOT / "scripts" / "get-uws-xsd.sh"
    detail = ""
    try:
        proc = subprocess.run(
            [str(script), str(XSD_DIR)], capture_output=True, text=True, timeout=300, check=False
        )
        detail = (proc.stderr.strip().splitlines() or [""])[-1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        detail = str(exc)
    present = (XSD_DIR / "UWS.xsd").is_file() and (XSD_DIR / "xlink.xsd").is_file()
    require_service(present, f"the UWS 1.1 XSD ({script.name}: {detail or 'failed'})")
    return xmlschema.XMLSchema(str(XSD_DIR / "UWS.xsd"))


def valid(schema: xmlschema.XMLSchema, body: bytes) -> Any:
    """Parse ``body`` and validate it against the XSD; returns the root element."""
    root = etree.fromstring(body)
    schema.validate(root)
    return root


def simple(schema: xmlschema.XMLSchema, type_name: str, text: str) -> None:
    """``text`` is a valid value of a schema type (``xs:...`` or a UWS type)."""
    if type_name.startswith("xs:"):
        xsd_type = schema.maps.types[XS + type_name[3:]]
    else:
        xsd_type = schema.types[type_name]
    assert xsd_type.is_valid(text), f"{text!r} is not a valid {type_name}"


def create(client: TestClient, job_type: str = "echo", **data: Any) -> str:
    """POST a job; returns its (absolute) URL."""
    if not any(key.lower() == "message" for key in data):
        data["MESSAGE"] = "hello"
    response = client.post(f"/uws/{job_type}", data=data, follow_redirects=False)
    assert response.status_code == 303, response.text
    return str(response.headers["location"])


def phase_of(client: TestClient, url: str) -> str:
    return str(client.get(f"{url}/phase").text)


def until(client: TestClient, url: str, *phases: str, timeout: float = 20) -> str:
    wanted = set(phases or ("COMPLETED", "ERROR", "ABORTED"))
    return str(wait_for(lambda: (p := phase_of(client, url)) in wanted and p, timeout))


def child(root: Any, name: str) -> Any:
    return root.find(UWS + name)


def job_id(url: str) -> str:
    return url.rsplit("/", 1)[1]


# -- documents --------------------------------------------------------------------------------


def test_create_is_303_to_a_pending_job_that_validates(
    client: TestClient, schema: xmlschema.XMLSchema
) -> None:
    url = create(client, RUNID="run-7")
    assert url.startswith("http://testserver/uws/echo/")
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    root = valid(schema, response.content)
    assert root.tag == UWS + "job" and root.get("version") == "1.1"
    assert [c.tag.removeprefix(UWS) for c in root][:10] == [
        "jobId", "runId", "ownerId", "phase", "quote", "creationTime", "startTime", "endTime",
        "executionDuration", "destruction",
    ]  # fmt: skip
    assert child(root, "phase").text == "PENDING"
    assert child(root, "runId").text == "run-7"
    assert child(root, "quote").get(XSI_NIL) == "true"
    assert child(root, "startTime").get(XSI_NIL) == "true"
    assert child(root, "creationTime").text.endswith("Z")
    assert child(root, "destruction").text.endswith("Z")
    assert child(root, "errorSummary") is None
    job = parse_job(io.BytesIO(response.content))
    assert job.phase == "PENDING" and job.runid == "run-7" and job.version == "1.1"
    assert job.jobid == job_id(url)


def test_every_resource_of_a_completed_job(client: TestClient, schema: xmlschema.XMLSchema) -> None:
    url = create(client, PHASE="RUN", MESSAGE="hi there", REQUEST="doQuery")
    assert until(client, url) == "COMPLETED"
    root = valid(schema, client.get(url).content)
    assert child(root, "startTime").text.endswith("Z")
    assert child(root, "endTime").text.endswith("Z")
    assert child(root, "errorSummary") is None

    texts = {
        "phase": ("ExecutionPhase", "COMPLETED"),
        "executionduration": ("xs:int", "60"),
        "destruction": ("xs:dateTime", None),
        "owner": ("xs:string", "tester"),
    }
    for name, (type_name, expected) in texts.items():
        response = client.get(f"{url}/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith("text/plain")
        simple(schema, type_name, response.text)
        if expected is not None:
            assert response.text == expected
    assert client.get(f"{url}/quote").text == ""  # unknown
    assert client.get(f"{url}/error").text == ""  # none
    assert client.get(f"{url}/stdout").text == "hi there\n"
    assert client.get(f"{url}/stderr").text == ""

    params = valid(schema, client.get(f"{url}/parameters").content)
    assert {p.get("id"): p.text for p in params} == {"message": "hi there", "REQUEST": "doQuery"}
    assert client.get(f"{url}/parameters/message").text == "hi there"
    assert client.get(f"{url}/parameters/request").text == "doQuery"

    results = valid(schema, client.get(f"{url}/results").content)
    result, *provenance = list(results)
    assert result.get("id") == "echo" and result.get("mime-type") == "text/plain"
    links = {r.get("id"): (r.get(XLINK + "href"), r.get("mime-type")) for r in provenance}
    assert set(links) == {"provjson", "provxml", "provsvg"}
    prov_json = client.get(links["provjson"][0])
    assert prov_json.status_code == 200 and job_id(url) in prov_json.text
    assert result.get("size") == "9"
    href = result.get(XLINK + "href")
    assert href == f"{url}/results/echo"
    download = client.get(href)
    assert download.status_code == 200 and download.text == "hi there\n"
    assert download.headers["content-type"].startswith("text/plain")


def test_job_list_shows_its_type_only_with_resolving_links(
    client: TestClient, schema: xmlschema.XMLSchema
) -> None:
    echo = create(client, RUNID="e")
    dump = create(client, "dump")
    root = valid(schema, client.get("/uws/echo").content)
    assert root.tag == UWS + "jobs" and root.get("version") == "1.1"
    refs = list(root)
    assert [r.get("id") for r in refs] == [job_id(echo)]
    ref = refs[0]
    assert [c.tag.removeprefix(UWS) for c in ref] == ["phase", "runId", "ownerId", "creationTime"]
    href = ref.get(XLINK + "href")
    assert href == echo and client.get(href).status_code == 200
    jobs = parse_job_list(io.BytesIO(client.get("/uws/echo").content))
    assert [j.jobid for j in jobs] == [job_id(echo)]
    # A job of another type is not in this list, and not found under it.
    assert client.get(f"/uws/echo/{job_id(dump)}").status_code == 404
    assert client.get(f"/uws/echo/{job_id(dump)}/phase").status_code == 404
    assert client.get(f"/uws/dump/{job_id(dump)}").status_code == 200
    # pyvo's TAP classes look for the list at {base}/async.
    assert client.get("/uws/echo/async").content == client.get("/uws/echo").content


def test_job_list_carries_any_run_id_like_the_job_document(
    client: TestClient, schema: xmlschema.XMLSchema
) -> None:
    """The list is written as text: markup, quotes, CR/LF/tab and control characters in a
    RUNID come out as in the job document (which lxml writes)."""
    odd = "a&b<c>\"d'\r\n\te\x01]]>"
    url = create(client, RUNID=odd)
    create(client)  # no RUNID: no runId element
    root = valid(schema, client.get("/uws/echo").content)
    listed = [child(ref, "runId") for ref in root]
    assert listed[1].text == "a&b<c>\"d'\r\n\te\ufffd]]>"
    assert listed[0] is None
    assert child(valid(schema, client.get(url).content), "runId").text == listed[1].text
    assert [j.runid for j in parse_job_list(io.BytesIO(client.get("/uws/echo").content))] == [
        None,
        listed[1].text,
    ]


def test_index_lists_every_job_type_with_its_parameters(
    client: TestClient, jobmill: Jobmill, schema: xmlschema.XMLSchema
) -> None:
    jm = "{urn:jobmill}"
    response = client.get("/uws")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    root = etree.fromstring(response.content)
    assert root.tag == jm + "jobLists"
    lists = {entry.get("name"): entry for entry in root}
    assert list(lists) == sorted(jobmill.jobtypes)
    for name, entry in lists.items():
        href = entry.get(XLINK + "href")
        assert href == f"http://testserver/uws/{name}"
        valid(schema, client.get(href).content)  # a UWS job list
    dump = lists["dump"]
    params = {p.get("name"): p for p in dump.findall(jm + "parameter")}
    assert params["message"].get("required") == "true"
    assert (
        params["data"].get("type") == "path" and params["data"].text == "A file, usually uploaded."
    )
    assert [r.get("name") for r in dump.findall(jm + "result")] == ["dump"]
    assert dump.findtext(jm + "description") == "Dump argv and environment to dump.json."
    assert client.get("/uws/", follow_redirects=True).content == response.content


def test_error_job_has_a_fatal_error_summary_and_error_text(
    client: TestClient, schema: xmlschema.XMLSchema
) -> None:
    url = create(client, "fail", PHASE="RUN", CODE="3")
    assert until(client, url) == "ERROR"
    body = client.get(url).content
    root = valid(schema, body)
    summary = child(root, "errorSummary")
    assert summary.get("type") == "fatal" and summary.get("hasDetail") == "true"
    assert summary.find(UWS + "message").text
    error = client.get(f"{url}/error")
    assert error.status_code == 200 and error.headers["content-type"].startswith("text/plain")
    simple(schema, "xs:string", error.text)
    assert "exit code: 3" in error.text
    assert client.get(f"{url}/stderr").text.strip() in error.text
    job = parse_job(io.BytesIO(body))
    assert job.phase == "ERROR" and job.errorsummary.message.content
    assert job.errorsummary.type_ == "fatal"


def test_an_archived_job_keeps_its_document_but_no_result_files(
    client: TestClient, jobmill: Jobmill, schema: xmlschema.XMLSchema
) -> None:
    """Past its destruction time a job is ARCHIVED: its files are gone, so its results list
    only the provenance documents (kept in the database); everything still validates."""
    response = client.post(
        "/uws/dump",
        data={"MESSAGE": "m", "PHASE": "RUN"},
        files={"DATA": ("t.vot", b"<VOTABLE/>", "text/xml")},
        follow_redirects=False,
    )
    url = response.headers["location"]
    assert until(client, url) == "COMPLETED"
    before = valid(schema, client.get(f"{url}/results").content)
    assert "dump" in [r.get("id") for r in before]
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    assert client.post(url, data={"DESTRUCTION": past}, follow_redirects=False).status_code == 303
    assert until(client, url, "ARCHIVED", timeout=30) == "ARCHIVED"
    assert not jobmill.jobs.files.workdir(job_id(url)).exists()
    job = valid(schema, client.get(url).content)
    assert child(job, "phase").text == "ARCHIVED"
    results = valid(schema, client.get(f"{url}/results").content)
    ids = [r.get("id") for r in results]
    assert "dump" not in ids
    assert [r.get("id") for r in child(job, "results")] == ids
    for result in results:  # the provenance documents still resolve
        href = result.get(XLINK + "href")
        # The SVG too, with or without Graphviz (service/provsvg.py draws it without).
        assert client.get(href).status_code == 200, href
    gone = client.get(f"{url}/results/dump")
    assert gone.status_code == 404 and gone.headers["content-type"].startswith("text/plain")
    params = {p.get("id"): p for p in valid(schema, client.get(f"{url}/parameters").content)}
    assert params["data"].get("byReference") is None  # the upload went with the files
    assert params["data"].text == "uploads/data"
    assert parse_job(io.BytesIO(client.get(url).content)).phase == "ARCHIVED"
    assert client.get(url, params={"WAIT": "5"}).status_code == 200  # at once: not active
    refused = client.post(url, data={"DESTRUCTION": past})
    assert refused.status_code == 403 and "archived" in refused.text


def test_abort_gives_a_transient_error_summary(
    client: TestClient, schema: xmlschema.XMLSchema
) -> None:
    url = create(client)
    response = client.post(f"{url}/phase", data={"PHASE": "ABORT"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == url
    root = valid(schema, client.get(url).content)
    assert child(root, "phase").text == "ABORTED"
    assert child(root, "errorSummary").get("type") == "transient"
    assert "aborted" in client.get(f"{url}/error").text
    assert parse_job(io.BytesIO(client.get(url).content)).phase == "ABORTED"


# -- changes ----------------------------------------------------------------------------------


def test_phase_run_queues_a_pending_job(client: TestClient) -> None:
    url = create(client)
    response = client.post(f"{url}/phase", data={"PHASE": "RUN"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == url
    assert until(client, url) == "COMPLETED"


def test_parameters_change_only_while_pending(
    client: TestClient, schema: xmlschema.XMLSchema
) -> None:
    url = create(client)
    for target, data in [
        (f"{url}/parameters", {"MESSAGE": "one"}),
        (url, {"message": "two", "QUERY": "select"}),
        (f"{url}/parameters/Message", {"VALUE": "three"}),
    ]:
        response = client.post(target, data=data, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == url
    assert client.get(f"{url}/parameters/message").text == "three"
    response = client.put(f"{url}/parameters/message", content=b"four", follow_redirects=False)
    assert response.status_code == 303
    params = valid(schema, client.get(f"{url}/parameters").content)
    assert {p.get("id"): p.text for p in params} == {"message": "four", "QUERY": "select"}
    client.post(f"{url}/phase", data={"PHASE": "RUN"})
    for response in (
        client.post(f"{url}/parameters", data={"MESSAGE": "late"}),
        client.post(url, data={"MESSAGE": "late"}),
        client.put(f"{url}/parameters/message", content=b"late"),
        client.post(f"{url}/executionduration", data={"EXECUTIONDURATION": "5"}),
    ):
        assert response.status_code == 403, response.text
        assert response.headers["content-type"].startswith("text/plain")
        assert "PENDING" in response.text or "cannot" in response.text
    assert client.get(f"{url}/parameters/message").text == "four"


def test_execution_duration_and_destruction(client: TestClient) -> None:
    url = create(client, EXECUTIONDURATION="30", DESTRUCTION="2031-01-02T03:04:05Z")
    assert client.get(f"{url}/executionduration").text == "30"
    assert client.get(f"{url}/destruction").text == "2031-01-02T03:04:05.000Z"
    r = client.post(f"{url}/executionduration", data={"EXECUTIONDURATION": "45"},
                    follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == url
    r = client.post(f"{url}/destruction", data={"DESTRUCTION": "2032-05-06T07:08:09.123Z"},
                    follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == url
    assert client.get(f"{url}/executionduration").text == "45"
    assert client.get(f"{url}/destruction").text == "2032-05-06T07:08:09.123Z"


def test_delete_and_action_delete_are_303_to_the_list(client: TestClient, jobmill: Jobmill) -> None:
    for how in ("DELETE", "ACTION"):
        url = create(client, PHASE="RUN")
        workdir = jobmill.jobs.files.workdir(job_id(url))
        until(client, url)
        assert workdir.is_dir()
        if how == "DELETE":
            response = client.delete(url, follow_redirects=False)
        else:
            response = client.post(url, data={"action": "delete"}, follow_redirects=False)
        assert response.status_code == 303, response.text
        assert response.headers["location"] == "http://testserver/uws/echo"
        assert client.get(url).status_code == 404
        assert not workdir.exists()
    assert jobmill.store.count() == 0


def test_control_names_and_phase_values_are_case_insensitive(client: TestClient) -> None:
    url = create(client, Phase="run", runId="x", executionDuration="20", Message="hey")
    assert until(client, url) == "COMPLETED"
    assert client.get(f"{url}/executionduration").text == "20"
    assert client.get(f"{url}/stdout").text == "hey\n"
    other = create(client, MeSsAgE="m")
    assert client.post(f"{other}/phase", data={"phase": "Abort"}).status_code == 200
    assert phase_of(client, other) == "ABORTED"
    listed = client.get("/uws/echo", params={"phase": "aborted", "last": "5"})
    assert [r.get("id") for r in etree.fromstring(listed.content)] == [job_id(other)]


def test_tap_parameters_are_kept_but_never_reach_the_process(
    client: TestClient, jobmill: Jobmill
) -> None:
    url = create(client, "dump", PHASE="RUN", MESSAGE="m", REQUEST="doQuery", LANG="ADQL",
                 QUERY="SELECT secret FROM t")  # fmt: skip
    assert until(client, url) == "COMPLETED"
    params = etree.fromstring(client.get(f"{url}/parameters").content)
    assert {p.get("id"): p.text for p in params} == {
        "message": "m", "REQUEST": "doQuery", "LANG": "ADQL", "QUERY": "SELECT secret FROM t"
    }  # fmt: skip
    dump = json.loads(client.get(f"{url}/results/dump").content)
    assert dump["argv"] == ["m"]
    assert dump["env"]["MESSAGE"] == "m"
    leaked = {
        k: v for k, v in dump["env"].items() if "doQuery" in v or "ADQL" in v or "secret" in v
    }
    assert leaked == {}
    assert "REQUEST" not in dump["env"] and "QUERY" not in dump["env"]
    assert dump["env"].get("LANG") != "ADQL"  # LANG itself is passed from the server


def test_a_strict_job_type_refuses_unknown_parameters(client: TestClient, jobmill: Jobmill) -> None:
    response = client.post("/uws/strict", data={"MESSAGE": "m", "LANG": "ADQL"})
    assert response.status_code == 400 and "LANG" in response.text
    assert jobmill.store.count() == 0
    assert (
        client.post("/uws/strict", data={"MESSAGE": "m"}, follow_redirects=False).status_code == 303
    )


def test_multipart_upload_is_saved_served_back_and_given_to_the_process(
    client: TestClient, jobmill: Jobmill, schema: xmlschema.XMLSchema
) -> None:
    response = client.post(
        "/uws/dump",
        data={"MESSAGE": "m", "PHASE": "RUN"},
        files={"DATA": ("table.vot", b"<VOTABLE/>\n", "text/xml")},
        follow_redirects=False,
    )
    assert response.status_code == 303
    url = response.headers["location"]
    assert until(client, url) == "COMPLETED"
    saved = jobmill.jobs.files.workdir(job_id(url)) / "uploads" / "data"
    assert saved.read_bytes() == b"<VOTABLE/>\n"
    params = valid(schema, client.get(f"{url}/parameters").content)
    data = {p.get("id"): p for p in params}["data"]
    assert data.get("byReference") == "true"
    assert data.text == f"{url}/parameters/data"
    assert client.get(data.text).content == b"<VOTABLE/>\n"
    dump = json.loads(client.get(f"{url}/results/dump").content)
    assert dump["argv"] == ["m", "uploads/data"] and dump["data"] == "<VOTABLE/>\n"
    job = parse_job(io.BytesIO(client.get(url).content))
    assert [p.byreference for p in job.parameters if p.id_ == "data"] == [True]
    # An upload to a PENDING job's parameters, TAP style (UPLOAD names the file's parameter).
    pending = create(client, "dump")
    response = client.post(
        f"{pending}/parameters",
        data={"UPLOAD": "t,param:tab"},
        files={"tab": ("t.vot", b"T", "text/xml")},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert client.get(f"{pending}/parameters/tab").content == b"T"
    assert client.get(f"{pending}/parameters/UPLOAD").text == "t,param:tab"


def test_uploads_have_their_own_limit(jobmill: Jobmill, settings: Settings) -> None:
    """Uploads may exceed the 1 MiB request limit, up to JOBMILL_MAX_UPLOAD; over it, 413 names
    the limit and nothing is left behind, whether the size is announced or streamed."""
    big = b"v" * (settings.max_request_bytes + 1000)
    jobmill.settings = settings.with_(max_upload_bytes=len(big) + 4096)
    with app_client(jobmill, start_engine=False) as client:
        response = client.post(
            "/uws/dump",
            data={"MESSAGE": "m"},
            files={"DATA": ("big.bin", big, "application/octet-stream")},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        url = response.headers["location"]
        assert client.get(f"{url}/parameters/data").content == big
        # The same file over the limit: refused, announced (Content-Length) or streamed.
        too_big = big + b"w" * 8192
        request = client.build_request(
            "POST", "/uws/dump", data={"MESSAGE": "m"}, files={"DATA": ("b", too_big)}
        )
        body = request.read()
        streamed = (body[i : i + 65536] for i in range(0, len(body), 65536))
        headers = {"content-type": request.headers["content-type"]}
        for response in [
            client.send(request),
            client.post("/uws/dump", content=streamed, headers=headers),
            client.post(f"{url}/parameters", content=body, headers=headers),
        ]:
            assert response.status_code == 413
            assert response.headers["content-type"].startswith("text/plain")
            assert str(len(big) + 4096) in response.text and "JOBMILL_MAX_UPLOAD" in response.text
        assert jobmill.store.count() == 1
        assert client.get(f"{url}/parameters/data").content == big
        assert not list((jobmill.jobs.files.workdir(job_id(url)) / "uploads").glob(".*"))
        # Bodies that are not uploads keep the request limit.
        form = client.post("/uws/dump", data={"MESSAGE": "m", "NOTE": big.decode()})
        assert form.status_code == 413 and "request limit" in form.text
        assert jobmill.store.count() == 1


@pytest.mark.parametrize(
    ("value", "size"), [("5000", 5000), ("512K", 512 << 10), ("100M", 100 << 20), ("2GiB", 2 << 30)]
)
def test_max_upload_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, size: int
) -> None:
    monkeypatch.setenv("JOBMILL_MAX_UPLOAD", value)
    assert Settings.from_env().max_upload_bytes == size


@pytest.mark.parametrize("value", ["lots", "-1", "0", "1.5M"])
def test_a_bad_max_upload_stops_with_its_name(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("JOBMILL_MAX_UPLOAD", value)
    with pytest.raises(SystemExit, match="JOBMILL_MAX_UPLOAD"):
        Settings.from_env()


def test_values_xml_cannot_carry_are_given_by_reference(
    client: TestClient, schema: xmlschema.XMLSchema
) -> None:
    url = create(client, MESSAGE="bell\x07", NOTE="tab\x01")
    params = valid(schema, client.get(f"{url}/parameters").content)
    by_id = {p.get("id"): p for p in params}
    assert by_id["message"].get("byReference") == "true"
    assert client.get(by_id["message"].text).text == "bell\x07"
    assert by_id["NOTE"].get("byReference") == "true"
    assert client.get(f"{url}/parameters/note").text == "tab\x01"
    valid(schema, client.get(url).content)


def test_public_url_makes_the_links(jobmill: Jobmill, settings: Settings) -> None:
    jobmill.settings = settings.with_(public_url="https://vo.example.org/jobmill/")
    with app_client(jobmill, start_engine=False) as client:
        response = client.post("/uws/echo", data={"MESSAGE": "x"}, follow_redirects=False)
        url = response.headers["location"]
        assert url.startswith("https://vo.example.org/jobmill/uws/echo/")
        root = etree.fromstring(client.get("/uws/echo").content)
        assert root[0].get(XLINK + "href") == url
        assert "//" not in url.removeprefix("https://")


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({}, "message"),
        ({"MESSAGE": "x", "PHASE": "BOGUS"}, "PHASE"),
        ({"MESSAGE": "x", "PHASE": "ABORT"}, "PHASE"),
        ({"MESSAGE": "x", "EXECUTIONDURATION": "AA"}, "EXECUTIONDURATION"),
        ({"MESSAGE": "x", "EXECUTIONDURATION": "-5"}, "negative"),
        ({"MESSAGE": "x", "DESTRUCTION": "soon"}, "DESTRUCTION"),
        ({"MESSAGE": "x", "ACTION": "DELETE"}, "ACTION"),
        ({"MESSAGE": "x", "bad name!": "1"}, "bad name"),
        ({"MESSAGE": "x", "RUNID": "r" * 300}, "RUNID"),
        ({"MESSAGE": "x", "NOTE": "nul\x00"}, "NUL"),
    ],
)
def test_bad_creation_is_400_and_leaves_nothing(
    client: TestClient, jobmill: Jobmill, data: dict[str, str], fragment: str
) -> None:
    response = client.post("/uws/echo", data=data)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert fragment in response.text
    assert jobmill.store.count() == 0


def test_other_bad_requests_are_400(client: TestClient, jobmill: Jobmill) -> None:
    assert client.post("/uws/sleep", data={"SECONDS": "soon"}).status_code == 400
    assert client.post("/uws/echo", json={"MESSAGE": "x"}).status_code == 400
    dup = client.post("/uws/echo", content=b"MESSAGE=a&message=b",
                      headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert dup.status_code == 400 and "more than once" in dup.text
    url = create(client)
    for method, path, data in [
        ("post", "/phase", {"PHASE": "SUSPEND"}),
        ("post", "/phase", {}),
        ("post", "/executionduration", {"EXECUTIONDURATION": "1.5"}),
        ("post", "/destruction", {"DESTRUCTION": "yesterday"}),
        ("post", "", {"ACTION": "EXPLODE"}),
        ("get", "?WAIT=abc", None),
        ("get", "?WAIT=-2", None),
        ("get", "?WAIT=1&PHASE=RUNNING", None),
    ]:
        response = client.request(method.upper(), f"{url}{path}", data=data)
        assert response.status_code == 400, (path, data, response.text)
    for query in ("LAST=0", "LAST=x", "AFTER=never", "PHASE=DONE", "LAST=1&LAST=2"):
        assert client.get(f"/uws/echo?{query}").status_code == 400, query
    assert jobmill.store.count() == 1


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "", {"data": {"MESSAGE": "x", "DESTRUCTION": "0001-01-01T00:00:00+01:00"}}),
        ("POST", "", {"data": {"MESSAGE": "x", "DESTRUCTION": "9999-12-31T23:59:59-01:00"}}),
        ("POST", "", {"data": {"MESSAGE": "x", "EXECUTIONDURATION": "1" * 40}}),
        ("POST", "", {"data": {"MESSAGE": "x"}, "files": {"../../etc": ("a", b"x")}}),
        ("POST", "", {"data": {"MESSAGE": "x"}, "files": {"PHASE": ("a", b"x")}}),
        ("POST", "", {"content": b"x", "headers": {"content-type": "multipart/form-data"}}),
        ("POST", "", {"content": b"\xff", "headers": {"content-type": "text/plain"}}),
        ("GET", "?AFTER=0001-01-01T00:00:00%2B01:00", {}),
        ("GET", "?LAST=" + "9" * 50, {}),
        ("GET", "?PHASE=%00", {}),
        ("GET", "/{id}?WAIT=1e999", {}),
        ("PUT", "/{id}/parameters/message", {"content": b"\xff"}),
        ("POST", "/{id}/executionduration", {"data": {"EXECUTIONDURATION": str(2**40)}}),
    ],
)
def test_odd_input_is_400_never_500(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    url = create(client)
    response = client.request(method, "/uws/echo" + path.format(id=job_id(url)), **kwargs)
    assert response.status_code == 400, response.text


def test_illegal_in_the_current_phase_is_403(client: TestClient) -> None:
    url = create(client, PHASE="RUN")
    until(client, url)
    for path, data in [
        ("/phase", {"PHASE": "RUN"}),
        ("/phase", {"PHASE": "ABORT"}),
        ("/parameters", {"MESSAGE": "y"}),
        ("/executionduration", {"EXECUTIONDURATION": "9"}),
        ("", {"RUNID": "later"}),
    ]:
        response = client.post(f"{url}{path}", data=data)
        assert response.status_code == 403, (path, response.text)
        assert response.headers["content-type"].startswith("text/plain") and response.text


def test_unknown_things_are_404(client: TestClient) -> None:
    url = create(client)
    for path in [
        "/uws/nosuch",
        "/uws/nosuch/async",
        f"/uws/nosuch/{job_id(url)}",
        "/uws/echo/00000000-0000-0000-0000-000000000000",
        "/uws/echo/not-a-job",
        "/uws/echo/not-a-job/phase",
        f"{url}/results/nothing",
        f"{url}/parameters/nothing",
        f"{url}/nothing",
    ]:
        response = client.get(path)
        assert response.status_code == 404, path
    assert client.delete("/uws/echo/00000000-0000-0000-0000-000000000000").status_code == 404
    assert client.post("/uws/nosuch", data={"X": "1"}).status_code == 404


def test_another_users_job_is_404(jobmill: Jobmill, settings: Settings) -> None:
    alice, bob = "a" * 40, "b" * 40
    jobmill.store.tokens.add("alice", alice, admin=False)
    jobmill.store.tokens.add("bob", bob, admin=False)
    jobmill.settings = settings.with_(host="0.0.0.0")
    with app_client(jobmill, start_engine=False) as client:
        assert client.get("/uws/echo", headers={"Authorization": ""}).status_code == 401
        url = create_as(client, alice)
        assert client.get(url, headers=bearer(alice)).status_code == 200
        assert client.get(url, headers=bearer(bob)).status_code == 404
        assert client.delete(url, headers=bearer(bob)).status_code == 404
        assert len(etree.fromstring(client.get("/uws/echo", headers=bearer(bob)).content)) == 0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_as(client: TestClient, token: str) -> str:
    response = client.post("/uws/echo", data={"MESSAGE": "x"}, headers=bearer(token),
                           follow_redirects=False)  # fmt: skip
    assert response.status_code == 303
    return str(response.headers["location"])


# -- the job list -----------------------------------------------------------------------------


def ids(client: TestClient, **params: Any) -> list[str]:
    response = client.get("/uws/echo", params=params)
    assert response.status_code == 200, response.text
    return [ref.get("id") for ref in etree.fromstring(response.content)]


def test_job_list_filters(
    client: TestClient, jobmill: Jobmill, schema: xmlschema.XMLSchema
) -> None:
    urls = []
    for _ in range(5):
        urls.append(create(client))
        time.sleep(0.003)  # distinct milliseconds
    a, b, c, d, e = (job_id(u) for u in urls)
    client.post(f"{urls[1]}/phase", data={"PHASE": "ABORT"})
    client.post(f"{urls[2]}/phase", data={"PHASE": "ABORT"})
    jobmill.store.transition(b, Action.ARCHIVE, actor="test")

    assert ids(client) == [e, d, c, a]  # newest first, ARCHIVED hidden
    assert ids(client, PHASE="ARCHIVED") == [b]
    assert ids(client, PHASE=["ARCHIVED", "ABORTED"]) == [c, b]
    assert ids(client, PHASE="pending") == [e, d, a]
    assert ids(client, LAST=2) == [e, d]
    assert ids(client, LAST=2, PHASE="PENDING") == [e, d]
    created = etree.fromstring(client.get(urls[2]).content).find(UWS + "creationTime").text
    assert ids(client, AFTER=created) == [e, d]  # strictly after, at millisecond precision
    assert ids(client, AFTER=created, PHASE="ABORTED") == []
    assert ids(client, AFTER=created, LAST=1) == [e]
    earlier = datetime.fromisoformat(created) - timedelta(milliseconds=1)
    assert ids(client, AFTER=earlier.isoformat()) == [e, d, c]
    assert ids(client, AFTER=(datetime.now(UTC) + timedelta(hours=1)).isoformat()) == []
    valid(schema, client.get("/uws/echo", params={"PHASE": "ARCHIVED"}).content)
    parse_job_list(io.BytesIO(client.get("/uws/echo").content))


def test_pyvo_parses_every_job_document(client: TestClient) -> None:
    urls = [
        create(client),
        create(client, PHASE="RUN"),
        create(client, "fail", PHASE="RUN"),
        create(client, "sleep", SECONDS="30", PHASE="RUN"),
    ]
    until(client, urls[1])
    until(client, urls[2])
    until(client, urls[3], "EXECUTING")
    client.post(f"{urls[3]}/phase", data={"PHASE": "ABORT"})
    for url in urls:
        job = parse_job(io.BytesIO(client.get(url).content))
        assert job.phase == phase_of(client, url)
        assert job.creationtime is not None and job.executionduration is not None
    for type_name in ("echo", "fail", "sleep"):
        parse_job_list(io.BytesIO(client.get(f"/uws/{type_name}").content))


def test_last_and_phase_pick_the_newest_of_many_jobs(settings: Settings) -> None:
    """LAST, PHASE and AFTER on 100,000 jobs select the newest matches (the timings are in
    bench/bench_uws_list.py)."""
    from jobmill.storage.tables import jobs

    jm = build(settings)
    try:
        base = datetime(2030, 1, 1, tzinfo=UTC)
        rows = [
            {"id": f"00000000-0000-4000-8000-{i:012d}", "type": "echo" if i % 4 else "sleep",
             "owner": "tester", "phase": "QUEUED" if i % 100 == 1 else "PENDING",
             "parameters": {"message": "x"}, "extra_parameters": {}, "report": {},
             "executor": "local", "created_at": base + timedelta(milliseconds=i),
             "updated_at": base, "execution_duration": 0, "event_count": 0}
            for i in range(100_000)
        ]  # fmt: skip
        with jm.store.engine.begin() as conn:
            conn.execute(jobs.insert(), rows)
        newest = [f"00000000-0000-4000-8000-{i:012d}" for i in range(99_999, 0, -1) if i % 4]
        queued = [f"00000000-0000-4000-8000-{i:012d}" for i in range(99_999, 0, -1) if i % 100 == 1]
        after = (base + timedelta(milliseconds=99_990)).isoformat()
        with app_client(jm, start_engine=False) as client:
            client.get("/uws/echo", params={"LAST": 1})
            for params, expected in [
                ({"LAST": 10}, newest[:10]),
                ({"LAST": 50}, newest[:50]),
                ({"LAST": 10, "PHASE": "QUEUED"}, queued[:10]),
                ({"LAST": 10, "AFTER": after}, newest[:7]),
                ({"LAST": 10, "PHASE": "EXECUTING"}, []),  # none: the worst case
            ]:
                response = client.get("/uws/echo", params=params)
                assert response.status_code == 200
                assert [r.get("id") for r in etree.fromstring(response.content)] == expected
    finally:
        jm.close()
