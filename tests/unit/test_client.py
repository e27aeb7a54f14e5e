"""The Python client: request shapes and error handling against a fake transport, then the real
thing against a live server."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from jobmill.client import Client, JobmillClientError, default_url, report

Handler = Callable[[httpx.Request], httpx.Response]


def fake(handler: Handler, **kwargs: Any) -> Client:
    return Client("http://jm.test", transport=httpx.MockTransport(handler), **kwargs)


def job(job_id: str = "j1", phase: str = "QUEUED", **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "type": "echo", "phase": phase, "report": {}, **extra}


# -- configuration -----------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "JOBMILL_URL",
        "JOBMILL_HOST",
        "JOBMILL_PORT",
        "JOBMILL_API_TOKEN",
        "JOBMILL_REPORT_URL",
        "JOBMILL_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_default_url(clean_env: pytest.MonkeyPatch) -> None:
    assert default_url() == "http://127.0.0.1:8080"
    clean_env.setenv("JOBMILL_PORT", "9000")
    clean_env.setenv("JOBMILL_HOST", "0.0.0.0")
    assert default_url() == "http://127.0.0.1:9000"
    clean_env.setenv("JOBMILL_HOST", "::1")
    assert default_url() == "http://[::1]:9000"
    clean_env.setenv("JOBMILL_URL", "https://jm.example.org/")
    assert default_url() == "https://jm.example.org"
    assert Client().url == "https://jm.example.org"


def test_token_from_env_is_sent_as_bearer(clean_env: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"status": "ok"})

    clean_env.setenv("JOBMILL_API_TOKEN", "s3cret")
    fake(handler).health()
    fake(handler, token="other").health()
    clean_env.delenv("JOBMILL_API_TOKEN")
    fake(handler).health()
    assert seen == ["Bearer s3cret", "Bearer other", None]


# -- requests ----------------------------------------------------------------------------------


def test_submit_sends_only_given_fields() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("POST", "/api/v1/jobs")
        bodies.append(json.loads(request.content))
        return httpx.Response(201, json=job())

    jm = fake(handler)
    assert jm.submit("echo", {"message": "hi"})["id"] == "j1"
    jm.submit("sleep", run_id="r7", execution_duration=0, executor="local", phase="PENDING")
    assert bodies == [
        {"type": "echo", "parameters": {"message": "hi"}},
        {
            "type": "sleep",
            "parameters": {},
            "run_id": "r7",
            "executor": "local",
            "execution_duration": 0,
            "phase": "PENDING",
        },
    ]


def test_submit_many_posts_one_batch() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/jobs/batch"
        body = json.loads(request.content)
        assert body == {
            "jobs": [
                {"type": "echo", "parameters": {"message": "a"}},
                {"type": "echo", "parameters": {"message": "b"}, "run_id": "x"},
            ]
        }
        return httpx.Response(201, json={"count": 2, "ids": ["a", "b"]})

    ids = fake(handler).submit_many(
        [
            {"type": "echo", "parameters": {"message": "a"}},
            {"type": "echo", "parameters": {"message": "b"}, "run_id": "x"},
        ]
    )
    assert ids == ["a", "b"]


def test_list_repeats_phase_and_iter_jobs_follows_cursors() -> None:
    queries: list[list[tuple[str, str]]] = []
    pages = {None: (["a", "b"], "10"), "10": (["c", "d"], "5"), "5": (["e"], None)}

    def handler(request: httpx.Request) -> httpx.Response:
        queries.append(list(request.url.params.multi_items()))
        ids, cursor = pages[request.url.params.get("cursor")]
        return httpx.Response(200, json={"jobs": [job(i) for i in ids], "next_cursor": cursor})

    jm = fake(handler)
    page = jm.list(phase=["QUEUED", "EXECUTING"], type="echo", limit=2)
    assert [j["id"] for j in page.jobs] == ["a", "b"] and page.next_cursor == "10"
    assert queries[0] == [
        ("phase", "QUEUED"),
        ("phase", "EXECUTING"),
        ("type", "echo"),
        ("limit", "2"),
    ]
    queries.clear()
    assert [j["id"] for j in jm.iter_jobs(phase="COMPLETED", limit=2)] == list("abcde")
    assert [dict(q).get("cursor") for q in queries] == [None, "10", "5"]
    assert all(("phase", "COMPLETED") in q for q in queries)


def test_hold_release_details_and_render_requests() -> None:
    seen: list[tuple[str, str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.path, body))
        if request.url.path.endswith("/details"):
            return httpx.Response(200, json={"id": "j1", "details": "JobId=7 JobState=PENDING"})
        if request.url.path.endswith("/render"):
            return httpx.Response(200, json={"executor": "slurm", "script": "#!/bin/sh\n"})
        return httpx.Response(200, json=job(phase="HELD"))

    jm = fake(handler)
    assert jm.hold("j1")["phase"] == "HELD"
    jm.release("j1")
    assert jm.details("j1")["details"] == "JobId=7 JobState=PENDING"
    assert jm.render("echo", {"message": "hi"}, executor="slurm")["executor"] == "slurm"
    assert seen == [
        ("POST", "/api/v1/jobs/j1/hold", None),
        ("POST", "/api/v1/jobs/j1/release", None),
        ("GET", "/api/v1/jobs/j1/details", None),
        ("POST", "/api/v1/jobs/render",
         {"type": "echo", "parameters": {"message": "hi"}, "executor": "slurm"}),
    ]  # fmt: skip


def test_hold_refusal_keeps_status_and_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        message = "job j1 is EXECUTING: only a job that has not started can be held"
        return httpx.Response(
            409, json={"error": {"code": "conflict", "message": message, "phase": "EXECUTING"}}
        )

    with pytest.raises(JobmillClientError) as caught:
        fake(handler).hold("j1")
    assert (caught.value.status, caught.value.code) == (409, "conflict")
    assert str(caught.value).startswith("job j1 is EXECUTING")


def test_log_returns_bytes_next_offset_and_existence() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/jobs/j1/logs/stderr"
        if request.url.params.get("tail") == "4":
            return httpx.Response(
                200,
                content=b"end\n",
                headers={"X-Log-Offset": "96", "X-Log-Size": "100", "X-Log-Exists": "true"},
            )
        if request.url.params["offset"] == "0":
            return httpx.Response(
                200,
                content=b"",
                headers={"X-Log-Offset": "0", "X-Log-Size": "0", "X-Log-Exists": "false"},
            )
        return httpx.Response(
            200,
            content=b"abc",
            headers={"X-Log-Offset": "7", "X-Log-Size": "10", "X-Log-Exists": "true"},
        )

    jm = fake(handler)
    assert tuple(jm.log("j1", "stderr")) == (b"", 0, False)
    assert tuple(jm.log("j1", "stderr", offset=7)) == (b"abc", 10, True)
    assert tuple(jm.log("j1", "stderr", tail=4)) == (b"end\n", 100, True)


def test_wait_polls_until_terminal_and_reports_each_poll() -> None:
    phases = iter(["QUEUED", "EXECUTING", "EXECUTING", "COMPLETED"])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=job(phase=next(phases)))

    seen: list[str] = []
    final = fake(handler).wait("j1", poll=0, on_update=lambda j: seen.append(j["phase"]))
    assert final["phase"] == "COMPLETED"
    assert seen == ["QUEUED", "EXECUTING", "EXECUTING", "COMPLETED"]


def test_wait_times_out() -> None:
    jm = fake(lambda request: httpx.Response(200, json=job(phase="EXECUTING")))
    with pytest.raises(JobmillClientError) as info:
        jm.wait("j1", timeout=0.05, poll=0.01)
    assert info.value.code == "timeout" and "EXECUTING" in str(info.value)


# -- errors ------------------------------------------------------------------------------------


def test_error_json_becomes_client_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            422,
            json={
                "error": {
                    "code": "invalid",
                    "message": "missing required parameter 'message'",
                    "field": "parameters.message",
                }
            },
        )

    with pytest.raises(JobmillClientError) as info:
        fake(handler).submit("echo")
    err = info.value
    assert (err.status, err.code, err.field) == (422, "invalid", "parameters.message")
    assert str(err) == "parameters.message: missing required parameter 'message'"


def test_message_that_names_its_field_is_not_prefixed_twice() -> None:
    err = JobmillClientError(422, "invalid", "parameters.n: expected an integer", "parameters.n")
    assert str(err) == "parameters.n: expected an integer"


def test_non_json_errors_are_still_client_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(502, text="Bad Gateway from the proxy")
        return httpx.Response(404, json={"detail": "Not Found"})

    jm = fake(handler)
    with pytest.raises(JobmillClientError) as info:
        jm.health()
    assert (info.value.status, info.value.code) == (502, "http_502")
    assert "Bad Gateway" in str(info.value)
    with pytest.raises(JobmillClientError) as info:
        jm.jobtypes()
    assert (info.value.status, str(info.value)) == (404, "Not Found")


def test_unreachable_server_names_the_url() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with pytest.raises(JobmillClientError) as info:
        fake(handler).get("j1")
    assert info.value.status == 0 and info.value.code == "unreachable"
    assert str(info.value).startswith("cannot reach jobmill at http://jm.test")


def test_unreachable_real_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(JobmillClientError) as info, Client(f"http://127.0.0.1:{port}") as jm:
        jm.list()
    assert str(info.value).startswith(f"cannot reach jobmill at http://127.0.0.1:{port}")


# -- report ------------------------------------------------------------------------------------


def test_report_outside_a_job_refuses(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(JobmillClientError) as info:
        report(counters={"files": 1})
    assert info.value.code == "not_in_job" and "JOBMILL_REPORT_URL" in str(info.value)


def test_report_posts_to_the_job_url_with_the_job_token(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("JOBMILL_REPORT_URL", "http://cb.test/api/v1/jobs/j1/report")
    clean_env.setenv("JOBMILL_TOKEN", "job-secret")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "j1", "report": {"counters": {"files": 2}}})

    merged = fake(handler, token="user-token").report(counters={"files": 2}, stage="calib", self=1)
    assert merged == {"counters": {"files": 2}}
    (request,) = seen
    assert str(request.url) == "http://cb.test/api/v1/jobs/j1/report"
    assert request.headers["authorization"] == "Bearer job-secret"
    assert json.loads(request.content) == {"stage": "calib", "self": 1, "counters": {"files": 2}}


# -- against a live server ---------------------------------------------------------------------


def test_live_round_trip(live: Any) -> None:
    with Client(live.url) as jm:
        assert jm.health()["status"] == "ok"
        assert {"echo", "sleep", "fail", "counters"} <= {t["name"] for t in jm.jobtypes()}
        assert [p["name"] for p in jm.jobtype("echo")["parameters"]] == ["message"]

        created = jm.submit("echo", {"message": "hello client"}, run_id="run-1")
        done = jm.wait(created["id"], timeout=30, poll=0.1)
        assert done["phase"] == "COMPLETED" and done["exit_code"] == 0
        data, offset, exists = jm.log(done["id"], "stdout")
        assert (data, offset, exists) == (b"hello client\n", len(b"hello client\n"), True)
        assert jm.log(done["id"], "stdout", offset=offset).data == b""
        assert jm.log(done["id"], "stdout", tail=7).data == b"client\n"
        names = [e["name"] for e in jm.events(done["id"])]
        assert names[0] == "created" and "complete" in names
        assert [e["n"] for e in jm.events(done["id"], after=1)][0] == 2

        page = jm.list(run_id="run-1")
        assert [j["id"] for j in page.jobs] == [done["id"]]
        assert jm.list(phase="EXECUTING", run_id="run-1").jobs == []


def test_live_batch_pending_run_abort_delete(live: Any) -> None:
    with Client(live.url) as jm:
        ids = jm.submit_many(
            [{"type": "echo", "parameters": {"message": str(i)}, "run_id": "b"} for i in range(5)]
        )
        assert len(ids) == 5
        seen = [j["id"] for j in jm.iter_jobs(run_id="b", limit=2)]
        assert sorted(seen) == sorted(ids) and len(seen) == 5

        held = jm.submit("sleep", {"seconds": 30}, phase="PENDING")
        assert held["phase"] == "PENDING"
        assert jm.run(held["id"])["phase"] == "QUEUED"
        assert jm.abort(held["id"])["phase"] == "ABORTED"
        with pytest.raises(JobmillClientError) as info:
            jm.abort(held["id"])
        assert info.value.status == 409 and "already ended" in str(info.value)
        jm.delete(held["id"])
        with pytest.raises(JobmillClientError) as info:
            jm.get(held["id"])
        assert (info.value.status, info.value.code) == (404, "not_found")


def test_live_refusals_name_the_field(live: Any) -> None:
    with Client(live.url) as jm:
        with pytest.raises(JobmillClientError) as info:
            jm.submit("echo", {})
        assert info.value.status == 422
        assert str(info.value) == "parameters.message: missing required parameter 'message'"
        with pytest.raises(JobmillClientError) as info:
            jm.submit("sleep", {"seconds": "soon"})
        assert info.value.field == "parameters.seconds"
        with pytest.raises(JobmillClientError) as info:
            jm.list(phase="SLEEPING")
        assert info.value.field == "phase"
        with pytest.raises(JobmillClientError) as info:
            jm.jobtype("nope")
        assert info.value.status == 404
