"""The manager's verbs over the native API: tags, short-id lookups, edit, reset, clone, and
the checked updates behind them (docs/workflows.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import wait_phase

JOBS = "/api/v1/jobs"


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    body.setdefault("type", "echo")
    body.setdefault("parameters", {"message": "hi"})
    body.setdefault("phase", "PENDING")
    response = client.post(JOBS, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


# -- tags ------------------------------------------------------------------------------------


def test_tags_at_creation_listed_filtered_added_and_removed(client: TestClient) -> None:
    job = create(client, tags=["calib", "night-1", "calib"])
    other = create(client, tags=["science"])
    assert job["tags"] == ["calib", "night-1"]
    got = client.get(f"{JOBS}/{job['id']}")
    assert got.json()["tags"] == ["calib", "night-1"]
    assert got.headers["ETag"] == f'"{got.json()["version"]}"'
    listed = client.get(JOBS, params={"tag": "calib"}).json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert listed[0]["tags"] == ["calib", "night-1"]

    added = client.put(f"{JOBS}/{other['id']}/tags/calib")
    assert added.status_code == 200 and added.json()["tags"] == ["calib", "science"]
    again = client.put(f"{JOBS}/{other['id']}/tags/calib")  # a no-op, no second event
    assert again.json()["version"] == added.json()["version"]
    listed = client.get(JOBS, params={"tag": "calib"}).json()["jobs"]
    assert {j["id"] for j in listed} == {job["id"], other["id"]}

    removed = client.delete(f"{JOBS}/{job['id']}/tags/calib")
    assert removed.status_code == 200 and removed.json()["tags"] == ["night-1"]
    missing = client.delete(f"{JOBS}/{job['id']}/tags/calib")
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "tag"
    assert client.get(f"{JOBS}/{job['id']}/tags").json() == ["night-1"]

    names = [e["name"] for e in client.get(f"{JOBS}/{job['id']}/events").json()]
    assert names == ["created", "untagged"]
    created = client.get(f"{JOBS}/{job['id']}/events").json()[0]
    assert created["data"]["tags"] == ["calib", "night-1"]


def test_bad_tags_are_refused_naming_the_field_and_nothing_is_stored(client: TestClient) -> None:
    for bad in ["", "has space", "x" * 65, "bell\x07", "a=b", "!x"]:
        response = client.post(JOBS, json={"type": "echo", "parameters": {"message": "m"},
                                           "tags": ["ok", bad]})  # fmt: skip
        assert response.status_code == 422, bad
        assert response.json()["error"]["field"] == "tags[1]", bad
    assert client.get(JOBS).json()["jobs"] == []
    job = create(client)
    response = client.put(f"{JOBS}/{job['id']}/tags/a=b")
    assert response.status_code == 422 and response.json()["error"]["field"] == "tag"
    response = client.get(JOBS, params={"tag": "a b"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "tag"
    assert client.get(f"{JOBS}/{job['id']}").json()["tags"] == []


def test_tags_go_with_their_job(client: TestClient) -> None:
    job = create(client, tags=["calib"])
    assert client.delete(f"{JOBS}/{job['id']}").status_code == 204
    assert client.get(JOBS, params={"tag": "calib"}).json()["jobs"] == []


# -- short ids and sequence numbers ------------------------------------------------------------


def test_id_prefix_and_sequence_filters(client: TestClient) -> None:
    jobs = [create(client) for _ in range(3)]
    for job in jobs:
        for length in (1, 8, 13, 36):
            found = client.get(JOBS, params={"id_prefix": job["id"][:length].upper()}).json()
            assert job["id"] in [j["id"] for j in found["jobs"]]
            assert all(j["id"].startswith(job["id"][:length]) for j in found["jobs"])
    bad = client.get(JOBS, params={"id_prefix": "xyz"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "id_prefix"
    seqs = sorted(j["seq"] for j in jobs)
    middle = client.get(JOBS, params={"seq_min": seqs[1], "seq_max": seqs[1]}).json()["jobs"]
    assert [j["seq"] for j in middle] == [seqs[1]]
    above = client.get(JOBS, params={"seq_min": seqs[1]}).json()["jobs"]
    assert sorted(j["seq"] for j in above) == seqs[1:]


# -- edit ------------------------------------------------------------------------------------


def test_edit_a_pending_job_validated_and_checked(client: TestClient) -> None:
    job = create(client, parameters={"message": "one"})
    edited = client.patch(f"{JOBS}/{job['id']}", json={"parameters": {"message": "two"}})
    assert edited.status_code == 200, edited.text
    assert edited.json()["parameters"]["message"] == "two"
    assert edited.json()["version"] == job["version"] + 1

    # a stale version: 409 naming it, nothing written
    stale = client.patch(
        f"{JOBS}/{job['id']}",
        json={"parameters": {"message": "three"}},
        headers={"If-Match": f'"{job["version"]}"'},
    )
    assert stale.status_code == 409 and stale.json()["error"]["field"] == "version"
    assert stale.json()["error"]["version"] == edited.json()["version"]
    current = client.get(f"{JOBS}/{job['id']}").json()
    assert current["parameters"]["message"] == "two"

    # the current version wins
    fresh = client.patch(
        f"{JOBS}/{job['id']}",
        json={"parameters": {"message": "three"}},
        headers={"If-Match": f'"{current["version"]}"'},
    )
    assert fresh.status_code == 200 and fresh.json()["parameters"]["message"] == "three"

    # validated by the job type; nothing half-written
    bad = client.patch(f"{JOBS}/{job['id']}", json={"parameters": {"message": None}})
    assert bad.status_code == 422 and bad.json()["error"]["field"].startswith("parameters")
    bad = client.patch(
        f"{JOBS}/{job['id']}", json={"parameters": {"message": "x"}}, headers={"If-Match": "x"}
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "If-Match"
    assert client.get(f"{JOBS}/{job['id']}").json()["parameters"]["message"] == "three"
    names = [e["name"] for e in client.get(f"{JOBS}/{job['id']}/events").json()]
    assert names == ["created", "edited", "edited"]


def test_edit_is_refused_once_the_job_runs(client: TestClient) -> None:
    job = create(client, phase="QUEUED")
    wait_phase(client, job["id"])
    refused = client.patch(f"{JOBS}/{job['id']}", json={"parameters": {"message": "late"}})
    assert refused.status_code == 409
    assert "only a PENDING job" in refused.json()["error"]["message"]


# -- reset and clone -----------------------------------------------------------------------------


def test_reset_a_failed_job_keeps_its_history_and_runs_again(client: TestClient) -> None:
    job = create(client, type="fail", parameters={"code": 3}, phase="QUEUED", tags=["retry"])
    ended = wait_phase(client, job["id"])
    assert ended["phase"] == "ERROR" and ended["exit_code"] == 3
    reset = client.post(f"{JOBS}/{job['id']}/reset")
    assert reset.status_code == 200, reset.text
    body = reset.json()
    assert body["phase"] == "PENDING" and body["tags"] == ["retry"]
    assert body["exit_code"] is None and body["error"] is None
    assert body["started"] is None and body["ended"] is None and body["native_id"] is None
    events = client.get(f"{JOBS}/{job['id']}/events").json()
    assert [e["name"] for e in events][-2:] == ["fail", "reset"]
    assert events[-1]["from_phase"] == "ERROR" and events[-1]["to_phase"] == "PENDING"
    assert events[-1]["data"]["exit_code"] == 3

    again = client.post(f"{JOBS}/{job['id']}/reset")
    assert again.status_code == 409  # PENDING now
    edited = client.patch(f"{JOBS}/{job['id']}", json={"parameters": {"code": 0}})
    assert edited.status_code == 200
    assert client.post(f"{JOBS}/{job['id']}/run").status_code == 200
    assert wait_phase(client, job["id"])["phase"] == "COMPLETED"
    completed = client.post(f"{JOBS}/{job['id']}/reset")
    assert (
        completed.status_code == 409 and "ERROR or ABORTED" in completed.json()["error"]["message"]
    )


def test_clone_makes_a_pending_copy_or_runs_it(client: TestClient) -> None:
    job = create(client, parameters={"message": "copy me"}, tags=["a", "b"], run_id="r-1")
    copy = client.post(f"{JOBS}/{job['id']}/clone")
    assert copy.status_code == 201, copy.text
    body = copy.json()
    assert body["id"] != job["id"] and copy.headers["Location"].endswith(body["id"])
    assert body["phase"] == "PENDING" and body["type"] == "echo"
    assert body["parameters"] == job["parameters"] and body["tags"] == ["a", "b"]
    assert body["run_id"] == "r-1"
    queued = client.post(f"{JOBS}/{job['id']}/clone", json={"phase": "QUEUED"})
    assert queued.status_code == 201
    assert wait_phase(client, queued.json()["id"])["phase"] == "COMPLETED"
    assert client.post(f"{JOBS}/{'0' * 32}/clone").status_code == 404


def test_a_job_that_waited_for_data_is_not_reset(client: TestClient, data_dir: Path) -> None:
    job = create(
        client,
        phase="QUEUED",
        wait_for={"paths": [str(data_dir / "never.dat")], "timeout": 0.3},
    )
    assert wait_phase(client, job["id"])["phase"] == "ERROR"
    refused = client.post(f"{JOBS}/{job['id']}/reset")
    assert refused.status_code == 409 and "waited for data" in refused.json()["error"]["message"]
    assert client.get(f"{JOBS}/{job['id']}").json()["phase"] == "ERROR"
