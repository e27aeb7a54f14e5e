"""Users: bearer tokens, the loopback local user, and job ownership."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from jobmill.api.app import create_app
from jobmill.config import Settings
from jobmill.factory import Jobmill, build


@pytest.fixture
def tokens(jobmill: Jobmill) -> dict[str, str]:
    store = jobmill.store
    secrets = {"alice": "alice-secret-token", "bob": "bob-secret-token", "root": "root-token"}
    store.add_token("alice", secrets["alice"], admin=False)
    store.add_token("bob", secrets["bob"], admin=False)
    store.add_token("root", secrets["root"], admin=True)
    return secrets


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_job(client: TestClient, headers: dict[str, str]) -> str:
    response = client.post(
        "/api/v1/jobs",
        json={"type": "sleep", "parameters": {"seconds": 0}, "phase": "PENDING"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_users_see_and_change_only_their_own_jobs(
    client: TestClient, tokens: dict[str, str]
) -> None:
    alice_job = new_job(client, auth(tokens["alice"]))
    bob_job = new_job(client, auth(tokens["bob"]))
    assert (
        client.get(f"/api/v1/jobs/{alice_job}", headers=auth(tokens["alice"])).json()["owner"]
        == "alice"
    )
    assert client.get(f"/api/v1/jobs/{alice_job}", headers=auth(tokens["bob"])).status_code == 404
    assert (
        client.post(f"/api/v1/jobs/{alice_job}/abort", headers=auth(tokens["bob"])).status_code
        == 404
    )
    assert (
        client.delete(f"/api/v1/jobs/{alice_job}", headers=auth(tokens["bob"])).status_code == 404
    )
    listed = client.get("/api/v1/jobs", headers=auth(tokens["bob"])).json()["jobs"]
    assert [j["id"] for j in listed] == [bob_job]
    spying = client.get("/api/v1/jobs", params={"owner": "alice"}, headers=auth(tokens["bob"]))
    assert spying.json()["jobs"] == []
    everything = client.get("/api/v1/jobs", headers=auth(tokens["root"])).json()["jobs"]
    assert {j["id"] for j in everything} == {alice_job, bob_job}
    assert (
        client.post(f"/api/v1/jobs/{alice_job}/abort", headers=auth(tokens["root"])).json()["phase"]
        == "ABORTED"
    )


def test_invalid_bearer_token_is_401(client: TestClient, tokens: dict[str, str]) -> None:
    response = client.get("/api/v1/jobs", headers=auth("not-a-token"))
    assert response.status_code == 401
    assert response.json()["error"]["field"] == "Authorization"


def test_loopback_anonymous_is_the_local_admin(client: TestClient, tokens: dict[str, str]) -> None:
    job = new_job(client, {})
    assert client.get(f"/api/v1/jobs/{job}").json()["owner"] == "tester"
    # An Authorization header jobmill does not use (empty Basic credentials) stays anonymous.
    basic = client.get(f"/api/v1/jobs/{job}", headers={"Authorization": "Basic Og=="})
    assert basic.status_code == 200
    alice_job = new_job(client, auth(tokens["alice"]))
    assert client.get(f"/api/v1/jobs/{alice_job}").status_code == 200


@pytest.fixture
def public_client(settings: Settings) -> Iterator[tuple[TestClient, Jobmill]]:
    jm = build(settings.with_(host="0.0.0.0"))
    try:
        with TestClient(create_app(jm)) as client:
            yield client, jm
    finally:
        jm.close()


def test_non_loopback_requires_a_token(public_client: tuple[TestClient, Jobmill]) -> None:
    client, jm = public_client
    jm.store.add_token("carol", "carol-token", admin=False)
    assert client.get("/api/v1/jobs").status_code == 401
    assert client.get("/api/v1/jobs", headers={"Authorization": "Basic Og=="}).status_code == 401
    assert client.get("/api/v1/jobs", headers=auth("carol-token")).status_code == 200
    assert client.get("/healthz").status_code == 200
