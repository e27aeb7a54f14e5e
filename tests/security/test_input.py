"""Input hygiene on every face: values that cannot be stored or shown again (lone surrogates,
NUL, integers past 64 bits, NaN) are refused with a 4xx naming the field, nothing is stored,
and every view of the jobs still answers afterwards (docs/security.md, "Input hygiene")."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobmill.domain.errors import ValidationError
from jobmill.domain.values import INT_MAX, MAX_DEPTH, MAX_STRING, check_value
from jobmill.factory import Jobmill
from jobmill.storage.tokens import hash_secret

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BIG = 2**63  # one past the largest signed 64-bit integer
SURROGATE = "x\ud800y"
EXP = "exp1"
ARP = f"/api/v1/arp/experiments/{EXP}"


def raw_json(value: Any) -> bytes:
    """``value`` as JSON text; lone surrogates are written as ``\\udXXX`` escapes (what a
    client sends: the text is ASCII, the decoded value is not valid Unicode)."""
    return json.dumps(value).encode("ascii")


def post_json(client: TestClient, url: str, value: Any, **kwargs: Any) -> Any:
    return client.post(
        url, content=raw_json(value), headers={"Content-Type": "application/json"}, **kwargs
    )


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    return body.get("error", body)  # type: ignore[no-any-return]


@pytest.fixture
def job(client: TestClient) -> Iterator[dict[str, Any]]:
    """A job that exists before the bad requests (PENDING: it never runs)."""
    answer = client.post(
        "/api/v1/jobs", json={"type": "echo", "parameters": {"message": "hi"}, "phase": "PENDING"}
    )
    assert answer.status_code == 201, answer.text
    yield answer.json()


def assert_views_answer(client: TestClient, jobmill: Jobmill, job: dict[str, Any]) -> None:
    """Nothing was stored, and every view of the jobs answers."""
    assert jobmill.store.count() == 1
    listed = client.get("/api/v1/jobs")
    assert listed.status_code == 200 and [j["id"] for j in listed.json()["jobs"]] == [job["id"]]
    assert client.get(f"/api/v1/jobs/{job['id']}").status_code == 200
    assert client.get(f"/api/v1/jobs/{job['id']}/events").status_code == 200
    ocps = client.get("/api/v1/job", params={"id": uuid.UUID(job["id"]).hex})
    assert ocps.status_code == 200 and ocps.json()["status"] == "ok"
    assert client.get("/uws/echo").status_code == 200


# -- the rule itself ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "field", "fragment"),
    [
        ({"a": SURROGATE}, "p.a", "lone surrogate U+D800"),
        ({"a\udfff": 1}, "p.a\\udfff", "the key is not valid Unicode"),
        ({"a": [1, {"b": BIG}]}, "p.a[1].b", "out of range"),
        ({"a": -(2**63) - 1}, "p.a", "out of range"),
        ({"a": float("nan")}, "p.a", "not a finite number"),
        ({"a": float("-inf")}, "p.a", "not a finite number"),
        ({"a": "x\x00"}, "p.a", "NUL"),
        ({"a": "x" * (MAX_STRING + 1)}, "p.a", "longer than"),
        ({"k" * 2000: 1}, "p." + "k" * 64 + "...", "key longer than"),
        ("\udc80", "p", "lone surrogate U+DC80"),
    ],
)
def test_the_rule_names_the_field(value: Any, field: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_value(value, "p")
    assert caught.value.field == field
    assert fragment in caught.value.message
    json.dumps(caught.value.to_dict()).encode("utf-8")  # the answer itself can be sent


def test_the_rule_bounds_nesting_and_accepts_the_limits() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(ValidationError, match="nested deeper"):
        check_value(deep)
    fine = {"a": [INT_MAX, -(2**63), 1.5, True, None, "é ✓ 𝄞", "x" * MAX_STRING]}
    assert check_value(fine) is fine


# -- native: create, batch, render --------------------------------------------------------------


GOOD = {"type": "echo", "parameters": {"message": "hello"}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GOOD, "parameters": {"message": SURROGATE}}, "parameters.message"),
        ({**GOOD, "parameters": {"message": "a", "x\ud800": "b"}}, "parameters.x\\ud800"),
        ({**GOOD, "parameters": {"message": "a\x00b"}}, "parameters.message"),
        ({"type": "fail", "parameters": {"code": "9" * 25}}, "parameters.code"),
        ({**GOOD, "run_id": SURROGATE}, "run_id"),
        ({**GOOD, "log_dir": "/tmp/" + SURROGATE}, "log_dir"),
        ({**GOOD, "type": SURROGATE}, "type"),
        ({**GOOD, "execution_duration": BIG}, "execution_duration"),
    ],
)
def test_native_create_batch_and_render_refuse_alike(
    client: TestClient, jobmill: Jobmill, job: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    created = post_json(client, "/api/v1/jobs", body)
    assert 400 <= created.status_code < 500, created.text
    assert error_of(created)["field"] == field
    rendered = post_json(client, "/api/v1/jobs/render", body)
    assert rendered.status_code == created.status_code, rendered.text
    assert error_of(rendered)["field"] == field
    batch = post_json(client, "/api/v1/jobs/batch", {"jobs": [GOOD, body]})
    assert batch.status_code == created.status_code, batch.text
    assert error_of(batch)["field"] == f"jobs[1].{field}"
    assert_views_answer(client, jobmill, job)


def test_nan_in_parameters_is_refused(
    client: TestClient, jobmill: Jobmill, job: dict[str, Any]
) -> None:
    body = b'{"type": "echo", "parameters": {"message": "x", "other": NaN}}'
    answer = client.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and error_of(answer)["field"] == "parameters.other"
    assert_views_answer(client, jobmill, job)


def test_deeply_nested_body_is_a_4xx(
    client: TestClient, jobmill: Jobmill, job: dict[str, Any]
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for url in ("/api/v1/jobs", f"/api/v1/jobs/{job['id']}/report", "/api/v1/job"):
        answer = client.post(url, content=deep, headers={"Content-Type": "application/json"})
        assert 400 <= answer.status_code < 500, (url, answer.status_code)
    assert_views_answer(client, jobmill, job)


# -- OCPS ---------------------------------------------------------------------------------------


OCPS_ENV = {
    "AP_JOB_OUTPUT_DIR": "out",
    "AP_VISIT_ID": "1",
    "AP_CCD_NUM": "2",
    "AP_REPO": "repo",
    "AP_TEMPLATE": "t",
    "AP_CALIB": "c",
    "AP_FILTER": "r",
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"env": {**OCPS_ENV, "AP_VISIT_ID": SURROGATE}}, "env.AP_VISIT_ID"),
        ({"env": {**OCPS_ENV, "EXTRA\ud800": "1"}}, "env.EXTRA\\ud800"),
        ({"env": {**OCPS_ENV, "AP_REPO": "a\x00"}}, "env.AP_REPO"),
        ({"type": "a" + SURROGATE}, "type"),
    ],
)
def test_ocps_submit_refuses(
    client: TestClient,
    jobmill: Jobmill,
    job: dict[str, Any],
    tmp_path: Any,
    change: dict[str, Any],
    field: str,
) -> None:
    body = {"type": "ap", "env": OCPS_ENV, "log_dir": str(tmp_path / "logs")} | change
    answer = post_json(client, "/api/v1/job", body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["status"] == "error" and answer.json()["field"] == field
    if field.startswith("env."):  # a form carries env as JSON text, with the escape in it
        form = {**body, "env": json.dumps(body["env"])}
        answer = client.post("/api/v1/job", data=form)
        assert answer.status_code == 400 and answer.json()["field"] == field, answer.text
    assert_views_answer(client, jobmill, job)


# -- progress reports ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"counters": {"files": SURROGATE}}, "counters.files"),
        ({"counters": {"f\udc00": 1}}, "counters.f\\udc00"),
        ({"status": SURROGATE}, "status"),
        ([{"key": "done", "value": BIG}], "body[0].value"),
        ({"counters": {"n": -BIG - 1}}, "counters.n"),
        (SURROGATE, "body"),
    ],
)
def test_progress_report_refuses(
    client: TestClient, jobmill: Jobmill, job: dict[str, Any], payload: Any, field: str
) -> None:
    secret = "report-secret"
    jobmill.store.record(
        job["id"], "token", actor="test", values={"token_hash": hash_secret(secret)}
    )
    url = f"/api/v1/jobs/{job['id']}/report"
    good = post_json(client, url, {"counters": {"files": 1}}, params={"token": secret})
    assert good.status_code == 200, good.text
    answer = post_json(client, url, payload, params={"token": secret})
    assert answer.status_code == 422, answer.text
    assert error_of(answer)["field"] == field
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["report"] == {"counters": {"files": 1}}
    assert_views_answer(client, jobmill, job)


# -- ARP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("edge", ["start", "end"])
@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"dataset": SURROGATE}, "parameters.dataset"),
        ({"k\ud900": "v"}, "parameters.k\\ud900"),
        ({"n": BIG}, "parameters.n"),
        ({"n": {"deep": [1, 2, {"x": "\x00"}]}}, "parameters.n.deep[2].x"),
    ],
)
def test_arp_run_parameters_refused(
    client: TestClient,
    jobmill: Jobmill,
    job: dict[str, Any],
    edge: str,
    parameters: dict[str, Any],
    field: str,
) -> None:
    answer = post_json(client, f"{ARP}/runs/7/{edge}", {"parameters": parameters})
    assert answer.status_code == 422, answer.text
    assert error_of(answer)["field"] == field
    assert client.get(f"{ARP}/runs/7").status_code == 404  # no run was recorded
    assert client.get(f"{ARP}/runs").json() == []
    assert client.get(f"{ARP}/status").status_code == 200
    assert_views_answer(client, jobmill, job)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "d1", "executable": "/bin/" + SURROGATE}, "executable"),
        ({"name": "d1", "executable": "/bin/true", "parameters": SURROGATE}, "parameters"),
        ({"name": "d" + SURROGATE, "executable": "/bin/true"}, "name"),
        ({"hash": "d" + SURROGATE, "executable": "/bin/true"}, "hash"),
    ],
)
def test_arp_definitions_refused(
    client: TestClient, jobmill: Jobmill, job: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    answer = post_json(client, f"{ARP}/definitions", body)
    assert answer.status_code == 422, answer.text
    assert error_of(answer)["field"] == field
    assert client.get(f"{ARP}/definitions").json() == []
    assert_views_answer(client, jobmill, job)


def test_arp_service_refuses_bad_text_in_definitions(client: TestClient, jobmill: Jobmill) -> None:
    """Below the face: the service checks what it stores, whatever called it."""
    from jobmill.service.jobs import User

    with pytest.raises(ValidationError) as caught:
        jobmill.experiments.define(
            User("tester", admin=True), EXP, name="d1", executable="/bin/true",
            parameters="--x " + SURROGATE,
        )  # fmt: skip
    assert caught.value.field == "parameters"


# -- rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"parameters": {"message": SURROGATE}}, "parameters.message"),
        ({"parameters": {"message": "x"}, "run_id": "r" + SURROGATE}, "run_id"),
        ({"name": "r" + SURROGATE}, "name"),
        ({"description\udfff": "x"}, "description\\udfff"),
        ({"parameters": {"message": "x", "n": BIG}}, "parameters.n"),
    ],
)
def test_rules_post_refused(
    client: TestClient, jobmill: Jobmill, job: dict[str, Any], change: dict[str, Any], field: str
) -> None:
    body = {"name": "r1", "schedule": "0 6 * * *", "create": "echo", "enabled": False}
    body |= {"parameters": {"message": "hi"}} | change
    answer = post_json(client, "/api/v1/rules", body)
    assert answer.status_code == 422, answer.text
    assert error_of(answer)["field"] == field
    names = [rule["name"] for rule in client.get("/api/v1/rules").json()]
    assert "r1" not in names and not any(name.startswith("r\\") for name in names)
    assert_views_answer(client, jobmill, job)


# -- UWS: form posts decode bad bytes to U+FFFD; numbers and NUL are checked ------------------


def test_uws_form_bytes_cannot_smuggle_a_surrogate(client: TestClient, jobmill: Jobmill) -> None:
    # %ED%A0%80 is U+D800 encoded as if it were a character: invalid UTF-8.
    answer = client.post(
        "/uws/echo",
        content=b"message=x%ED%A0%80y&PHASE=RUN",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    job_id = answer.headers["location"].rsplit("/", 1)[1]
    assert jobmill.store.require(job_id).parameters["message"] == "x\ufffd\ufffd\ufffdy"
    assert client.get(f"/uws/echo/{job_id}").status_code == 200
    assert client.get("/api/v1/jobs").status_code == 200


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"message": "a", "EXECUTIONDURATION": str(BIG)}, "EXECUTIONDURATION"),
        ({"message": "a", "EXECUTIONDURATION": "-" + str(BIG)}, "EXECUTIONDURATION"),
        ({"message": "a", "DESTRUCTION": "99999-01-01T00:00:00Z"}, "DESTRUCTION"),
        ({"message": "a", "DESTRUCTION": "9999-12-31T23:59:59-23:59"}, "DESTRUCTION"),
        ({"message": "a", "PHASE": "RUNX"}, "PHASE"),
        ({"message": "a\x00b"}, "message"),
        ({"message": "a", "RUNID": "r\x00"}, "RUNID"),
    ],
)
def test_uws_create_refuses(
    client: TestClient, jobmill: Jobmill, job: dict[str, Any], form: dict[str, str], field: str
) -> None:
    answer = client.post("/uws/echo", data=form, follow_redirects=False)
    assert answer.status_code == 400, answer.text
    assert field in answer.text or field == "RUNID"
    assert_views_answer(client, jobmill, job)


@pytest.mark.parametrize(
    "query",
    [{"LAST": str(BIG)}, {"AFTER": "99999-01-01T00:00:00Z"}, {"PHASE": "x" * 10}],
)
def test_uws_list_queries_refused(client: TestClient, query: dict[str, str]) -> None:
    assert client.get("/uws/echo", params=query).status_code == 400


@pytest.mark.parametrize("wait", [str(BIG), "1e400", "nan", "-2"])
def test_uws_wait_refused_or_capped(client: TestClient, job: dict[str, Any], wait: str) -> None:
    # PHASE=QUEUED: the PENDING job answers at once when the WAIT is accepted.
    answer = client.get(f"/uws/echo/{job['id']}", params={"WAIT": wait, "PHASE": "QUEUED"})
    # A huge finite WAIT is capped at the server's maximum; nothing else is a number of seconds.
    assert answer.status_code == (400 if wait != str(BIG) else 200), answer.text


def test_uws_pending_job_refuses_bad_values(
    client: TestClient, jobmill: Jobmill, job: dict[str, Any]
) -> None:
    base = f"/uws/echo/{job['id']}"
    cesu = client.put(f"{base}/parameters/message", content=b"x\xed\xa0\x80y")
    assert cesu.status_code == 400
    assert client.post(base, data={"EXECUTIONDURATION": str(BIG)}).status_code == 400
    assert (
        client.post(f"{base}/executionduration", data={"EXECUTIONDURATION": str(BIG)}).status_code
        == 400
    )
    assert jobmill.store.require(job["id"]).parameters == {"message": "hi"}
    assert_views_answer(client, jobmill, job)


def test_uws_service_refuses_bad_parameter_values(
    client: TestClient, jobmill: Jobmill, job: dict[str, Any]
) -> None:
    from jobmill.service.jobs import User

    with pytest.raises(ValidationError) as caught:
        jobmill.jobs.update_parameters(User("tester", admin=True), job["id"], {"other": SURROGATE})
    assert caught.value.field == "parameters.other"
    with pytest.raises(ValidationError) as caught:
        jobmill.jobs.set_execution_duration(User("tester", admin=True), job["id"], BIG)
    assert caught.value.field == "execution_duration"


# -- integer query parameters -------------------------------------------------------------------


def numeric_queries(job_id: str) -> list[tuple[str, str]]:
    return [
        (f"/api/v1/jobs/{job_id}/events", "after"),
        (f"/api/v1/jobs/{job_id}/logs/stdout", "offset"),
        (f"/api/v1/jobs/{job_id}/logs/stdout", "tail"),
        (f"/api/v1/jobs/{job_id}/logs/stdout", "limit"),
        ("/api/v1/jobs", "limit"),
        ("/api/v1/jobs", "cursor"),
        (f"/api/v1/jobs/{job_id}/provenance", "depth"),
        (f"{ARP}/runs", "before"),
        (f"{ARP}/runs", "limit"),
        (f"{ARP}/status", "after"),
        (f"{ARP}/status", "run"),
        (f"{ARP}/status", "limit"),
        (f"{ARP}/jobs/{job_id}/log", "offset"),
        (f"{ARP}/jobs/{job_id}/log", "tail"),
        ("/api/v1/rules/echo-incoming/firings", "before"),
        ("/api/v1/rules/echo-incoming/firings", "limit"),
    ]


@pytest.mark.parametrize("value", [str(BIG), str(-BIG - 1), "9" * 400])
def test_integer_queries_past_64_bits_are_422(
    client: TestClient, job: dict[str, Any], value: str
) -> None:
    for url, name in numeric_queries(job["id"]):
        answer = client.get(url, params={name: value})
        assert answer.status_code == 422, (url, name, answer.status_code, answer.text)
        assert error_of(answer)["field"] == name, (url, name, answer.text)


def cursor_queries(job_id: str) -> list[tuple[str, str]]:
    """Where a page continues after a sequence number or id: an ``INTEGER`` column."""
    return [
        (f"/api/v1/jobs/{job_id}/events", "after"),
        ("/api/v1/jobs", "cursor"),
        (f"{ARP}/runs", "before"),
        (f"{ARP}/status", "after"),
        ("/api/v1/rules/echo-incoming/firings", "before"),
    ]


def test_cursors_past_the_database_integer_are_422(client: TestClient, job: dict[str, Any]) -> None:
    """2**31 fits 64 bits but not the INTEGER columns the pages continue on (PostgreSQL)."""
    for url, name in cursor_queries(job["id"]):
        answer = client.get(url, params={name: str(2**31)})
        assert answer.status_code == 422, (url, name, answer.status_code, answer.text)
        assert error_of(answer)["field"] == name, (url, name, answer.text)
        assert client.get(url, params={name: str(2**31 - 1)}).status_code == 200, (url, name)


@pytest.mark.parametrize("name", ["type", "owner", "run_id"])
def test_text_filters_refuse_nul(client: TestClient, job: dict[str, Any], name: str) -> None:
    answer = client.get("/api/v1/jobs", params={name: "x\x00y"})
    assert answer.status_code == 422 and error_of(answer)["field"] == name, answer.text


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_definition_names_refuse_nul(client: TestClient, method: str) -> None:
    body = {"autorun": True} if method == "PATCH" else None
    answer = client.request(method, f"{ARP}/definitions/d%00", json=body)
    assert answer.status_code == 422 and error_of(answer)["field"] == "name", answer.text


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
def test_times_an_offset_moves_out_of_the_calendar_are_422(client: TestClient, value: str) -> None:
    answer = client.get("/api/v1/jobs", params={"created_after": value})
    assert answer.status_code == 422 and error_of(answer)["field"] == "created_after"
    assert client.get("/uws/echo", params={"AFTER": value}).status_code == 400


@pytest.mark.parametrize("path", ["/runs/{n}", "/runs/{n}/start", "/runs/{n}/end"])
def test_run_numbers_past_the_column_are_422(client: TestClient, path: str) -> None:
    url = ARP + path.format(n=BIG)
    answer = client.get(url) if path == "/runs/{n}" else client.post(url, json={})
    assert answer.status_code == 422 and error_of(answer)["field"] == "run", answer.text


def test_execution_duration_past_the_column_is_the_same_422(
    client: TestClient, jobmill: Jobmill
) -> None:
    """``POST /jobs``, ``/jobs/batch`` and ``/jobs/render`` answer the same for the same job."""
    for value in (BIG, 2**31):
        body = {**GOOD, "execution_duration": value}
        answers = [
            client.post("/api/v1/jobs", json=body),
            client.post("/api/v1/jobs/render", json=body),
            client.post("/api/v1/jobs/batch", json={"jobs": [body]}),
        ]
        assert [a.status_code for a in answers] == [422, 422, 422], [a.text for a in answers]
        fields = [error_of(a)["field"] for a in answers]
        assert fields == ["execution_duration", "execution_duration", "jobs[0].execution_duration"]
    assert jobmill.store.count() == 0


def test_unmatched_urls_answer_each_faces_error_shape(client: TestClient) -> None:
    """A URL no route takes (a newline cannot be in a path parameter) is a 404 in the face's
    own shape: JSON ``error``, or plain text under ``/uws``."""
    native = client.get("/api/v1/jobs/x/results/a%0Ab/c%0A")
    assert native.status_code in (404, 405)
    assert native.json()["error"]["code"] in ("not_found", "method_not_allowed")
    assert client.get("/api/v1/nothing-here").json()["error"]["code"] == "not_found"
    uws = client.get("/uws/echo/x/results/%0A")
    assert uws.status_code == 404 and uws.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_are_refused_where_json_is_kept(
    client: TestClient, jobmill: Jobmill, job: dict[str, Any], literal: bytes
) -> None:
    """Python's JSON reader takes ``NaN``; no JSON answer can show it: run parameters and
    reports that kept one made every view of them a 500."""
    headers = {"Content-Type": "application/json"}
    run = client.post(
        f"{ARP}/runs/5/start", content=b'{"parameters": {"x": ' + literal + b"}}", headers=headers
    )
    assert run.status_code == 422 and error_of(run)["field"] == "parameters.x", run.text
    assert client.get(f"{ARP}/runs").status_code == 200
    jobmill.store.record(job["id"], "token", actor="test", values={"token_hash": hash_secret("t")})
    report = client.post(
        f"/api/v1/jobs/{job['id']}/report",
        params={"token": "t"},
        content=b'{"counters": {"x": ' + literal + b"}}",
        headers=headers,
    )
    assert report.status_code == 422 and error_of(report)["field"] == "counters.x", report.text
    assert_views_answer(client, jobmill, job)
