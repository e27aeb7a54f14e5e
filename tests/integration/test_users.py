"""Users: bearer tokens, the local credential, anonymous callers, administrators, ownership."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from jobmill.config import Settings
from jobmill.factory import Jobmill, build
from tests.conftest import app_client


@pytest.fixture
def tokens(jobmill: Jobmill) -> dict[str, str]:
    store = jobmill.store
    secrets = {"alice": "alice-secret-token", "bob": "bob-secret-token", "root": "root-token"}
    store.tokens.add("alice", secrets["alice"], admin=False)
    store.tokens.add("bob", secrets["bob"], admin=False)
    store.tokens.add("root", secrets["root"], admin=True)
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


def test_no_credentials_is_anonymous_and_refused_on_loopback_too(
    client: TestClient, tokens: dict[str, str]
) -> None:
    job = new_job(client, auth(tokens["alice"]))
    for headers in ({"Authorization": ""}, {"Authorization": "Basic Og=="}):
        assert client.get(f"/api/v1/jobs/{job}", headers=headers).status_code == 401
        refused = client.post(
            "/api/v1/jobs", json={"type": "sleep", "phase": "PENDING"}, headers=headers
        )
        assert refused.status_code == 401
        assert refused.json()["error"]["field"] == "Authorization"
    assert client.get("/healthz", headers={"Authorization": ""}).status_code == 200


def test_the_servers_own_user_is_the_administrator(
    client: TestClient, tokens: dict[str, str]
) -> None:
    alice_job = new_job(client, auth(tokens["alice"]))
    mine = new_job(client, {})  # the client fixture's token: the local credential of "tester"
    assert client.get(f"/api/v1/jobs/{mine}").json()["owner"] == "tester"
    assert client.get(f"/api/v1/jobs/{alice_job}").status_code == 200
    assert client.get(f"/api/v1/jobs/{mine}", headers=auth(tokens["alice"])).status_code == 404


def test_anonymous_readers_only_read(settings: Settings) -> None:
    jm = build(settings.with_(anonymous="read"))
    try:
        with app_client(jm) as client:
            job = new_job(client, {})
            anonymous = {"Authorization": ""}
            seen = client.get(f"/api/v1/jobs/{job}", headers=anonymous)
            assert seen.status_code == 200 and seen.json()["owner"] == "tester"
            listed = client.get("/api/v1/jobs", headers=anonymous).json()["jobs"]
            assert [j["id"] for j in listed] == [job]
            for method, path in (
                ("POST", f"/api/v1/jobs/{job}/abort"),
                ("DELETE", f"/api/v1/jobs/{job}"),
                ("POST", "/api/v1/jobs"),
            ):
                refused = client.request(method, path, headers=anonymous, json={"type": "sleep"})
                assert refused.status_code == 401, (method, path)
            assert client.get(f"/api/v1/jobs/{job}").json()["phase"] == "PENDING"
    finally:
        jm.close()


def test_configured_admins(settings: Settings) -> None:
    jm = build(settings.with_(admins=("carol",)))
    try:
        jm.store.tokens.add("carol", "carol-token", admin=False)
        jm.store.tokens.add("dave", "dave-token", admin=False)
        with app_client(jm) as client:
            job = new_job(client, auth("dave-token"))
            assert client.get(f"/api/v1/jobs/{job}", headers=auth("carol-token")).status_code == 200
            assert client.get(f"/api/v1/jobs/{job}", headers=auth("dave-token")).status_code == 200
            mine = new_job(client, {})
            assert client.get(f"/api/v1/jobs/{mine}", headers=auth("dave-token")).status_code == 404
    finally:
        jm.close()


@pytest.fixture
def public_client(settings: Settings) -> Iterator[tuple[TestClient, Jobmill]]:
    jm = build(settings.with_(host="0.0.0.0"))
    try:
        with app_client(jm) as client:
            yield client, jm
    finally:
        jm.close()


def test_non_loopback_requires_a_token(public_client: tuple[TestClient, Jobmill]) -> None:
    client, jm = public_client
    jm.store.tokens.add("carol", "carol-token", admin=False)
    assert client.get("/api/v1/jobs", headers={"Authorization": ""}).status_code == 401
    assert client.get("/api/v1/jobs", headers={"Authorization": "Basic Og=="}).status_code == 401
    assert client.get("/api/v1/jobs", headers=auth("carol-token")).status_code == 200
    assert client.get("/healthz").status_code == 200
