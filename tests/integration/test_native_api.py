"""The native REST API: validation answers 4xx naming the field, and leaves nothing behind."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from jobmill.factory import Jobmill


def error_of(response) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return response.json()["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"type": "echo"}, "parameters.message", "missing required parameter"),
        ({"type": "echo", "parameters": {"message": "x", "nope": 1}}, "parameters.nope", "unknown"),
        ({"type": "sleep", "parameters": {"seconds": "soon"}}, "parameters.seconds", "number"),
        ({"type": "sleep", "parameters": {"seconds": -1}}, "parameters.seconds", "minimum"),
        ({"type": "sleep", "parameters": {"code": 1.5}}, "parameters.code", "integer"),
        ({"type": "sleep", "parameters": {"code": True}}, "parameters.code", "integer"),
        ({"type": "sleep", "parameters": {"code": 256}}, "parameters.code", "maximum"),
        ({"type": "nosuch"}, "type", "unknown job type"),
        ({"type": "echo", "parameters": ["x"]}, "parameters", ""),
        (
            {"type": "echo", "parameters": {"message": "x"}, "execution_duration": -5},
            "execution_duration",
            "",
        ),
        ({"type": "echo", "parameters": {"message": "x"}, "executor": "slurm"}, "executor", ""),
        ({"type": "echo", "parameters": {"message": "x"}, "colour": "red"}, "colour", ""),
        ({"parameters": {}}, "type", ""),
    ],
)
def test_bad_job_is_422_naming_the_field_and_leaves_no_row(
    client: TestClient,
    jobmill: Jobmill,
    body: dict,
    field: str,
    fragment: str,  # type: ignore[type-arg]
) -> None:
    response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["field"] == field
    assert fragment in error["message"]
    assert jobmill.store.count() == 0


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/api/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422


def test_oversized_body_is_413(client: TestClient, jobmill: Jobmill) -> None:
    message = "x" * (jobmill.settings.max_request_bytes + 10)
    response = client.post(
        "/api/v1/jobs", json={"type": "echo", "parameters": {"message": message}}
    )
    assert response.status_code == 413
    assert jobmill.store.count() == 0


def test_batch_is_all_or_nothing(client: TestClient, jobmill: Jobmill) -> None:
    jobs = [
        {"type": "echo", "parameters": {"message": str(i)}, "phase": "PENDING"} for i in range(5)
    ]
    jobs[3] = {"type": "echo", "parameters": {}}
    response = client.post("/api/v1/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 422
    assert error_of(response)["field"] == "jobs[3].parameters.message"
    assert jobmill.store.count() == 0
    jobs[3] = {"type": "echo", "parameters": {"message": "3"}, "phase": "PENDING"}
    ok = client.post("/api/v1/jobs/batch", json={"jobs": jobs})
    assert ok.status_code == 201 and ok.json()["count"] == 5
    assert jobmill.store.count() == 5


def test_list_filters_and_cursor_pagination(client: TestClient) -> None:
    ids = []
    for i in range(7):
        body = {
            "type": "echo",
            "parameters": {"message": str(i)},
            "phase": "PENDING",
            "run_id": "even" if i % 2 == 0 else "odd",
        }
        ids.append(client.post("/api/v1/jobs", json=body).json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/jobs", params=params).json()
        seen.extend(j["id"] for j in page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    odd = client.get("/api/v1/jobs", params={"run_id": "odd"}).json()["jobs"]
    assert {j["id"] for j in odd} == {ids[1], ids[3], ids[5]}
    pending = client.get("/api/v1/jobs", params={"phase": ["pending"], "type": "echo"}).json()
    assert len(pending["jobs"]) == 7
    created = client.get(f"/api/v1/jobs/{ids[2]}").json()["created"]
    after = client.get("/api/v1/jobs", params={"created_after": created}).json()["jobs"]
    assert ids[0] not in {j["id"] for j in after}
    for params, field in [
        ({"phase": "RUNNING"}, "phase"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"cursor": "abc"}, "cursor"),
        ({"limit": 0}, "limit"),
    ]:
        response = client.get("/api/v1/jobs", params=params)
        assert response.status_code == 422, params
        assert error_of(response)["field"] == field


def test_pending_job_runs_on_request(client: TestClient) -> None:
    job = client.post(
        "/api/v1/jobs",
        json={"type": "echo", "parameters": {"message": "later"}, "phase": "PENDING"},
    ).json()
    assert job["phase"] == "PENDING"
    assert client.post(f"/api/v1/jobs/{job['id']}/run").json()["phase"] == "QUEUED"
    again = client.post(f"/api/v1/jobs/{job['id']}/run")
    assert again.status_code == 409


def test_unknown_things_are_404(client: TestClient) -> None:
    for path in [
        "/api/v1/jobs/0b1c",
        "/api/v1/jobs/00000000-0000-0000-0000-000000000000",
        "/api/v1/jobtypes/nosuch",
    ]:
        response = client.get(path)
        assert response.status_code == 404, path
    assert client.delete("/api/v1/jobs/nosuch").status_code == 404
    assert client.post("/api/v1/jobs/nosuch/abort").status_code == 404
    for action in ("hold", "release"):
        assert client.post(f"/api/v1/jobs/nosuch/{action}").status_code == 404
    assert client.get("/api/v1/jobs/nosuch/details").status_code == 404


def test_logs_bounds_and_streams(client: TestClient) -> None:
    job = client.post(
        "/api/v1/jobs", json={"type": "echo", "parameters": {"message": "x"}, "phase": "PENDING"}
    ).json()
    missing = client.get(f"/api/v1/jobs/{job['id']}/logs/stdout")
    assert missing.status_code == 200 and missing.headers["X-Log-Exists"] == "false"
    assert client.get(f"/api/v1/jobs/{job['id']}/logs/other").status_code == 422
    assert (
        client.get(f"/api/v1/jobs/{job['id']}/logs/stdout", params={"offset": -1}).status_code
        == 422
    )


def test_delete_removes_the_job_and_its_files_and_keeps_its_history(
    client: TestClient, jobmill: Jobmill
) -> None:
    job = client.post("/api/v1/jobs", json={"type": "echo", "parameters": {"message": "x"}}).json()
    from tests.conftest import wait_phase

    wait_phase(client, job["id"])
    workdir = jobmill.jobs.files.workdir(job["id"])
    assert workdir.exists()
    assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert client.get(f"/api/v1/jobs/{job['id']}").status_code == 404
    assert not workdir.exists()
    assert job["id"] not in {j["id"] for j in client.get("/api/v1/jobs").json()["jobs"]}
    history = jobmill.store.events(job["id"])
    assert [e.name for e in history][0] == "created" and history[-1].name == "deleted"
    assert history[-1].data["phase"] == "COMPLETED" and history[-1].actor == "tester"


def test_jobtypes_health_and_openapi(client: TestClient) -> None:
    names = [t["name"] for t in client.get("/api/v1/jobtypes").json()]
    assert {"echo", "sleep", "fail", "counters"} <= set(names)
    sleep = client.get("/api/v1/jobtypes/sleep").json()
    seconds = next(p for p in sleep["parameters"] if p["name"] == "seconds")
    assert seconds["type"] == "number" and seconds["default"] == 30 and seconds["unit"] == "s"
    assert client.get("/healthz").json()["status"] == "ok"
    spec = client.get("/openapi.json").json()
    assert "/api/v1/jobs" in spec["paths"]
    for path in ("render", "{job_id}/hold", "{job_id}/release", "{job_id}/details"):
        assert f"/api/v1/jobs/{path}" in spec["paths"], path
    assert client.get("/docs").status_code == 200
