"""Job dependencies through the native API with the local executor: a job created or linked
``after`` others waits QUEUED (``waiting for upstream jobs``) until they have all completed,
follows its policy when one fails, and a link that would close a cycle is refused."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import wait_for, wait_phase

UPSTREAM = "waiting for upstream jobs"


def submit(client: TestClient, type_: str = "sleep", **body: Any) -> dict[str, Any]:
    parameters = body.pop("parameters", {"seconds": 0})
    response = client.post("/api/v1/jobs", json={"type": type_, "parameters": parameters, **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


def get(client: TestClient, job_id: str) -> dict[str, Any]:
    return dict(client.get(f"/api/v1/jobs/{job_id}").json())


def events(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    return list(client.get(f"/api/v1/jobs/{job_id}/events").json())


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_job_runs_after_all_its_parents_completed(client: TestClient) -> None:
    first = submit(client, parameters={"seconds": 0.5})
    second = submit(client, parameters={"seconds": 0.2})
    child = submit(client, after=[first["id"], second["id"]])
    assert (child["phase"], child["reason"]) == ("QUEUED", UPSTREAM)
    assert child["after"] == sorted([first["id"], second["id"]])
    done = wait_phase(client, child["id"])
    assert done["phase"] == "COMPLETED"
    for parent in (first, second):
        ended = get(client, parent["id"])
        assert ended["phase"] == "COMPLETED"
        assert when(done["started"]) >= when(ended["ended"])
        assert ended["dependents"] == [child["id"]]
    released = [e for e in events(client, child["id"]) if e["name"] == "wait"]
    assert released[0]["data"]["why"] == "upstream jobs completed"
    assert released[0]["data"]["reason"] == "capacity"


def test_after_a_completed_job_runs_at_once(client: TestClient) -> None:
    parent = submit(client)
    wait_phase(client, parent["id"])
    child = submit(client, after=[parent["id"]])
    assert child["reason"] == "capacity"
    assert wait_phase(client, child["id"])["phase"] == "COMPLETED"


def test_a_failed_parent_fails_its_dependents_down_the_chain(client: TestClient) -> None:
    parent = submit(client, parameters={"seconds": 0.3, "code": 3})
    child = submit(client, after=[parent["id"]])
    grandchild = submit(client, after=[child["id"]])
    assert wait_phase(client, parent["id"])["phase"] == "ERROR"
    failed = wait_phase(client, child["id"])
    assert failed["phase"] == "ERROR"
    assert failed["error"] == f"upstream job {parent['id']} ended in ERROR"
    assert failed["started"] is None  # it never ran
    assert wait_phase(client, grandchild["id"])["error"] == (
        f"upstream job {child['id']} ended in ERROR"
    )


def test_policy_wait_keeps_the_child_until_it_is_unlinked(client: TestClient) -> None:
    parent = submit(client, parameters={"seconds": 0, "code": 1})
    child = submit(client, after=[parent["id"]], on_parent_failure="wait")
    assert wait_phase(client, parent["id"])["phase"] == "ERROR"
    wait_for(lambda: any(e["name"] == "upstream_failed" for e in events(client, child["id"])))
    assert (get(client, child["id"])["phase"], get(client, child["id"])["reason"]) == (
        "QUEUED",
        UPSTREAM,
    )
    response = client.delete(f"/api/v1/jobs/{child['id']}/links/{parent['id']}")
    assert response.status_code == 200, response.text
    assert response.json()["after"] == []
    assert wait_phase(client, child["id"])["phase"] == "COMPLETED"
    names = [e["name"] for e in events(client, child["id"])]
    assert names[:4] == ["created", "upstream_failed", "unlinked", "wait"]


def test_link_and_unlink_a_pending_job(client: TestClient) -> None:
    parent = submit(client, parameters={"seconds": 30})
    child = submit(client, phase="PENDING")
    response = client.post(f"/api/v1/jobs/{child['id']}/links", json={"after": [parent["id"]]})
    assert response.status_code == 200, response.text
    assert response.json()["after"] == [parent["id"]]
    ran = client.post(f"/api/v1/jobs/{child['id']}/run").json()
    assert (ran["phase"], ran["reason"]) == ("QUEUED", UPSTREAM)
    client.post(f"/api/v1/jobs/{parent['id']}/abort")
    assert wait_phase(client, child["id"])["error"] == (
        f"upstream job {parent['id']} ended in ABORTED"
    )
    names = [e["name"] for e in events(client, child["id"])]
    assert names == ["created", "linked", "run", "fail"]


def test_a_cycle_is_refused_naming_it(client: TestClient) -> None:
    a = submit(client, phase="PENDING")
    b = submit(client, phase="PENDING", after=[a["id"]])
    c = submit(client, phase="PENDING", after=[b["id"]])
    response = client.post(f"/api/v1/jobs/{a['id']}/links", json={"after": [c["id"]]})
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["error"]["field"] == "after"
    assert " -> ".join([c["id"], a["id"], b["id"], c["id"]]) in body["error"]["message"]
    self_link = client.post(f"/api/v1/jobs/{a['id']}/links", json={"after": [a["id"]]})
    assert self_link.status_code == 409
    assert get(client, a["id"])["after"] == []  # nothing half-written


def test_unknown_and_malformed_ids_name_the_field(client: TestClient) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    response = client.post(
        "/api/v1/jobs", json={"type": "sleep", "parameters": {"seconds": 0}, "after": [missing]}
    )
    assert response.status_code == 422  # a value of the body: no job id in the path
    assert response.json()["error"]["field"] == "after"
    response = client.post(
        "/api/v1/jobs", json={"type": "sleep", "parameters": {"seconds": 0}, "after": ["nope"]}
    )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "after[0]"
    job = submit(client, phase="PENDING")
    response = client.post(f"/api/v1/jobs/{job['id']}/links", json={"after": [missing]})
    assert (response.status_code, response.json()["error"]["field"]) == (404, "after")
    response = client.delete(f"/api/v1/jobs/{job['id']}/links/{missing}")
    assert (response.status_code, response.json()["error"]["field"]) == (404, "parent_id")
    listed = client.get("/api/v1/jobs", params={"limit": 1000}).json()["jobs"]
    assert len(listed) == 1  # the refused creations stored nothing


def test_a_job_that_runs_cannot_be_linked(client: TestClient) -> None:
    parent = submit(client, phase="PENDING")
    running = submit(client, parameters={"seconds": 30})
    wait_phase(client, running["id"], "EXECUTING")
    response = client.post(f"/api/v1/jobs/{running['id']}/links", json={"after": [parent["id"]]})
    assert response.status_code == 409
    assert response.json()["error"]["field"] == "id"
    client.post(f"/api/v1/jobs/{running['id']}/abort")


def test_after_a_failed_job_is_refused_unless_the_policy_waits(client: TestClient) -> None:
    parent = submit(client, parameters={"seconds": 0, "code": 2})
    wait_phase(client, parent["id"])
    response = client.post(
        "/api/v1/jobs",
        json={"type": "sleep", "parameters": {"seconds": 0}, "after": [parent["id"]]},
    )
    assert response.status_code == 409
    assert response.json()["error"]["field"] == "after"
    waiting = submit(client, after=[parent["id"]], on_parent_failure="wait")
    assert waiting["reason"] == UPSTREAM


def test_batch_creation_with_dependencies(client: TestClient) -> None:
    root = submit(client, parameters={"seconds": 0.2})
    body = {
        "jobs": [
            {"type": "sleep", "parameters": {"seconds": 0}, "after": [root["id"]]} for _ in range(5)
        ]
    }
    response = client.post("/api/v1/jobs/batch", json=body)
    assert response.status_code == 201, response.text
    ids = response.json()["ids"]
    fan_in = submit(client, after=ids)
    assert fan_in["reason"] == UPSTREAM
    assert wait_phase(client, fan_in["id"])["phase"] == "COMPLETED"
    assert sorted(get(client, root["id"])["dependents"]) == sorted(ids)
    graph = client.get("/api/v1/graph", params={"job": root["id"]}).json()
    assert {job["id"] for job in graph["jobs"]} == {root["id"], fan_in["id"], *ids}
    assert len(graph["after"]) == 10


def test_deleting_the_last_parent_releases_the_child(client: TestClient) -> None:
    parent = submit(client, phase="PENDING")
    child = submit(client, after=[parent["id"]])
    assert child["reason"] == UPSTREAM
    assert client.delete(f"/api/v1/jobs/{parent['id']}").status_code == 204
    # Deleting a PENDING job aborts it first: a "fail" child ends with it.
    assert wait_phase(client, child["id"])["phase"] == "ERROR"
    waiting_parent = submit(client, phase="PENDING")
    waiting = submit(client, after=[waiting_parent["id"]], on_parent_failure="wait")
    assert client.delete(f"/api/v1/jobs/{waiting_parent['id']}").status_code == 204
    assert wait_phase(client, waiting["id"])["phase"] == "COMPLETED"
