"""``Idempotency-Key`` on ``POST /api/v1/jobs``: a retry answers the job the first request
created, once per (user, key), across processes and restarts; nothing half-written."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from jobmill import client as client_module
from jobmill.client import Client, JobmillClientError
from jobmill.factory import Jobmill, build
from jobmill.storage import idempotency
from jobmill.storage.tables import idempotency_keys
from tests.conftest import app_client

JOB = {"type": "sleep", "parameters": {"seconds": 0}, "phase": "PENDING"}


def keyed(key: str, **extra: str) -> dict[str, str]:
    return {"Idempotency-Key": key, **extra}


def key_rows(jm: Jobmill) -> int:
    with jm.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(idempotency_keys)).scalar_one())


def test_same_key_twice_is_one_job_with_the_same_answer(
    client: TestClient, jobmill: Jobmill
) -> None:
    first = client.post("/api/v1/jobs", json=JOB, headers=keyed("k-1"))
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = client.post("/api/v1/jobs", json=JOB, headers=keyed("k-1"))
    assert again.status_code == 201, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert jobmill.store.count() == 1
    # The same body with its keys in another order is the same request.
    reordered = {"phase": "PENDING", "parameters": {"seconds": 0}, "type": "sleep"}
    assert client.post("/api/v1/jobs", json=reordered, headers=keyed("k-1")).json() == first.json()
    # Without a key, or with another one, a new job.
    assert client.post("/api/v1/jobs", json=JOB).json()["id"] != first.json()["id"]
    assert client.post("/api/v1/jobs", json=JOB, headers=keyed("k-2")).status_code == 201
    assert jobmill.store.count() == 3
    assert key_rows(jobmill) == 2


def test_same_key_with_another_body_is_409_and_creates_nothing(
    client: TestClient, jobmill: Jobmill
) -> None:
    assert client.post("/api/v1/jobs", json=JOB, headers=keyed("k")).status_code == 201
    other = {**JOB, "parameters": {"seconds": 1}}
    response = client.post("/api/v1/jobs", json=other, headers=keyed("k"))
    assert response.status_code == 409, response.text
    assert response.json()["error"]["field"] == "Idempotency-Key"
    assert jobmill.store.count() == 1
    assert key_rows(jobmill) == 1


def test_a_bad_job_with_a_key_leaves_nothing_and_frees_no_key(
    client: TestClient, jobmill: Jobmill
) -> None:
    bad = {"type": "sleep", "parameters": {"seconds": "soon"}}
    response = client.post("/api/v1/jobs", json=bad, headers=keyed("k"))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "parameters.seconds"
    assert jobmill.store.count() == 0 and key_rows(jobmill) == 0
    assert client.post("/api/v1/jobs", json=JOB, headers=keyed("k")).status_code == 201


def test_keys_belong_to_their_user(client: TestClient, jobmill: Jobmill) -> None:
    jobmill.store.tokens.add("alice", "alice-secret-token", admin=False)
    jobmill.store.tokens.add("bob", "bob-secret-token", admin=False)
    ids = set()
    for token in ("alice-secret-token", "bob-secret-token"):
        headers = keyed("shared", Authorization=f"Bearer {token}")
        response = client.post("/api/v1/jobs", json=JOB, headers=headers)
        assert response.status_code == 201, response.text
        assert "Idempotent-Replayed" not in response.headers
        ids.add(response.json()["id"])
    assert len(ids) == 2
    assert jobmill.store.count() == 2


@pytest.mark.parametrize("key", ["", "x" * 201, "caf\u00e9", "tab\there"])
def test_a_bad_key_is_422_naming_the_header(client: TestClient, jobmill: Jobmill, key: str) -> None:
    encoded = key.encode("latin-1")
    response = client.post("/api/v1/jobs", json=JOB, headers=[(b"Idempotency-Key", encoded)])
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "Idempotency-Key"
    assert jobmill.store.count() == 0


def test_the_longest_key_is_accepted(client: TestClient) -> None:
    key = "~ " + "k" * 198
    assert client.post("/api/v1/jobs", json=JOB, headers=keyed(key)).status_code == 201
    again = client.post("/api/v1/jobs", json=JOB, headers=keyed(key))
    assert again.headers["Idempotent-Replayed"] == "true"


def test_a_key_with_wait_for_is_422(client: TestClient, jobmill: Jobmill) -> None:
    body = {**JOB, "wait_for": {"paths": ["x"]}}
    response = client.post("/api/v1/jobs", json=body, headers=keyed("k"))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "Idempotency-Key"
    assert jobmill.store.count() == 0


def test_an_expired_key_may_be_used_again(client: TestClient, jobmill: Jobmill) -> None:
    first = client.post("/api/v1/jobs", json=JOB, headers=keyed("old")).json()
    client.post("/api/v1/jobs", json=JOB, headers=keyed("older"))
    with jobmill.store.engine.begin() as conn:
        conn.execute(update(idempotency_keys).values(created_at=time.time() - 25 * 3600))
    other = {**JOB, "parameters": {"seconds": 2}}
    response = client.post("/api/v1/jobs", json=other, headers=keyed("old"))
    assert response.status_code == 201, response.text
    assert "Idempotent-Replayed" not in response.headers
    assert response.json()["id"] != first["id"]
    assert jobmill.store.count() == 3
    with jobmill.store.engine.begin() as conn:  # the purge takes the other expired key
        assert idempotency.purge(conn, time.time()) == 1
    assert key_rows(jobmill) == 1


def test_a_deleted_job_makes_its_key_a_409(client: TestClient, jobmill: Jobmill) -> None:
    job_id = client.post("/api/v1/jobs", json=JOB, headers=keyed("k")).json()["id"]
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code in (200, 204)
    response = client.post("/api/v1/jobs", json=JOB, headers=keyed("k"))
    assert response.status_code == 409
    assert response.json()["error"]["field"] == "Idempotency-Key"


def post_together(clients: list[TestClient], count: int, key: str) -> list[httpx.Response]:
    barrier = threading.Barrier(count)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        barrier.wait()
        response = clients[i % len(clients)].post("/api/v1/jobs", json=JOB, headers=keyed(key))
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def test_concurrent_requests_with_one_key_create_one_job(
    client: TestClient, jobmill: Jobmill
) -> None:
    answers = post_together([client], 12, "race")
    assert [r.status_code for r in answers] == [201] * 12, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) == 11
    assert jobmill.store.count() == 1


@pytest.fixture
def second(jobmill: Jobmill) -> Iterator[Jobmill]:
    """Another jobmill on the same database: another process of the same site."""
    jm = build(jobmill.settings)
    try:
        yield jm
    finally:
        jm.close()


def test_concurrent_processes_with_one_key_create_one_job(
    client: TestClient, jobmill: Jobmill, second: Jobmill
) -> None:
    with app_client(second, start_engine=False) as other:
        for round_ in range(3):
            answers = post_together([client, other], 8, f"race-{round_}")
            assert [r.status_code for r in answers] == [201] * 8, [r.text for r in answers]
            assert len({r.json()["id"] for r in answers}) == 1
    assert jobmill.store.count() == 3
    assert key_rows(jobmill) == 3


def test_a_key_outlives_a_restart(settings: Any) -> None:
    first_jm = build(settings)
    try:
        with app_client(first_jm, start_engine=False) as first_client:
            first = first_client.post("/api/v1/jobs", json=JOB, headers=keyed("k"))
            assert first.status_code == 201
    finally:
        first_jm.close()
    restarted = build(settings)
    try:
        with app_client(restarted, start_engine=False) as restarted_client:
            again = restarted_client.post("/api/v1/jobs", json=JOB, headers=keyed("k"))
        assert again.status_code == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == first.json()
        assert restarted.store.count() == 1
    finally:
        restarted.close()


class LostAnswers(httpx.BaseTransport):
    """Hands requests to the app; the first ``lose`` answers are lost after the job is made."""

    def __init__(self, app: TestClient, lose: int, status: int = 0) -> None:
        self.inner: httpx.BaseTransport = app._transport
        self.lose = lose
        self.status = status
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.keys.append(request.headers.get("Idempotency-Key"))
        response = self.inner.handle_request(request)
        if len(self.keys) <= self.lose:
            response.read()
            if not self.status:
                raise httpx.RemoteProtocolError("server disconnected without an answer")
            return httpx.Response(self.status, text="Bad Gateway")
        return response


@pytest.mark.parametrize(("lose", "status"), [(1, 0), (2, 0), (1, 502), (2, 503)])
def test_the_client_retries_with_the_same_key(
    client: TestClient,
    jobmill: Jobmill,
    admin_token: str,
    monkeypatch: pytest.MonkeyPatch,
    lose: int,
    status: int,
) -> None:
    monkeypatch.setattr(client_module, "SUBMIT_RETRY_DELAY", 0.0)
    transport = LostAnswers(client, lose, status)
    with Client("http://testserver", token=admin_token, transport=transport) as jm:
        job = jm.submit("sleep", {"seconds": 0}, phase="PENDING")
    assert len(transport.keys) == lose + 1
    assert len(set(transport.keys)) == 1 and transport.keys[0]
    assert jobmill.store.count() == 1
    assert client.get(f"/api/v1/jobs/{job['id']}").status_code == 200


def test_the_client_gives_up_after_its_attempts(
    client: TestClient, jobmill: Jobmill, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "SUBMIT_RETRY_DELAY", 0.0)
    transport = LostAnswers(client, 10)
    jm = Client("http://testserver", token=admin_token, transport=transport)
    with jm, pytest.raises(JobmillClientError) as info:
        jm.submit("sleep", {"seconds": 0}, phase="PENDING", idempotency_key="mine")
    assert info.value.code == "unreachable"
    assert transport.keys == ["mine"] * client_module.SUBMIT_ATTEMPTS
    assert jobmill.store.count() == 1


def test_the_client_does_not_retry_a_refusal(
    client: TestClient, jobmill: Jobmill, admin_token: str
) -> None:
    transport = LostAnswers(client, 0)
    jm = Client("http://testserver", token=admin_token, transport=transport)
    with jm, pytest.raises(JobmillClientError) as info:
        jm.submit("sleep", {"seconds": "soon"})
    assert info.value.status == 422
    assert len(transport.keys) == 1
    assert jobmill.store.count() == 0


# -- batches ----------------------------------------------------------------------------------

BATCH = {"jobs": [JOB, {**JOB, "parameters": {"seconds": 1}}, {**JOB, "tags": ["b"]}]}


def test_a_batch_sent_twice_with_one_key_is_one_batch_answered_in_order(
    client: TestClient, jobmill: Jobmill
) -> None:
    first = client.post("/api/v1/jobs/batch", json=BATCH, headers=keyed("b-1"))
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = client.post("/api/v1/jobs/batch", json=BATCH, headers=keyed("b-1"))
    assert again.status_code == 201, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json() and first.json()["count"] == 3
    assert jobmill.store.count() == 3 and key_rows(jobmill) == 1
    # A one-job batch is the same too; another batch under the key, or a single job, is a 409.
    one = {"jobs": [JOB]}
    made = client.post("/api/v1/jobs/batch", json=one, headers=keyed("b-2")).json()
    assert client.post("/api/v1/jobs/batch", json=one, headers=keyed("b-2")).json() == made
    for path, body in (("/jobs/batch", one), ("/jobs", JOB)):
        response = client.post(f"/api/v1{path}", json=body, headers=keyed("b-1"))
        assert response.status_code == 409, response.text
        assert response.json()["error"]["field"] == "Idempotency-Key"
    assert jobmill.store.count() == 4


def test_a_bad_batch_with_a_key_leaves_nothing(client: TestClient, jobmill: Jobmill) -> None:
    bad = {"jobs": [JOB, {"type": "sleep", "parameters": {"seconds": "soon"}}]}
    response = client.post("/api/v1/jobs/batch", json=bad, headers=keyed("k"))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "jobs[1].parameters.seconds"
    waiting = {"jobs": [JOB, {**JOB, "wait_for": {"paths": ["x"]}}]}
    response = client.post("/api/v1/jobs/batch", json=waiting, headers=keyed("k"))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "Idempotency-Key"
    assert jobmill.store.count() == 0 and key_rows(jobmill) == 0
    assert client.post("/api/v1/jobs/batch", json=BATCH, headers=keyed("k")).status_code == 201


def test_a_batch_with_a_deleted_job_makes_its_key_a_409(
    client: TestClient, jobmill: Jobmill
) -> None:
    ids = client.post("/api/v1/jobs/batch", json=BATCH, headers=keyed("k")).json()["ids"]
    assert client.delete(f"/api/v1/jobs/{ids[1]}").status_code in (200, 204)
    response = client.post("/api/v1/jobs/batch", json=BATCH, headers=keyed("k"))
    assert response.status_code == 409
    assert response.json()["error"]["field"] == "Idempotency-Key"


def test_concurrent_batches_with_one_key_create_one_batch(
    client: TestClient, jobmill: Jobmill
) -> None:
    barrier = threading.Barrier(6)
    answers: list[httpx.Response] = []

    def one() -> None:
        barrier.wait()
        answers.append(client.post("/api/v1/jobs/batch", json=BATCH, headers=keyed("race")))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r.status_code for r in answers] == [201] * 6, [r.text for r in answers]
    assert len({tuple(r.json()["ids"]) for r in answers}) == 1
    assert jobmill.store.count() == 3


@pytest.mark.parametrize(("lose", "status"), [(1, 0), (2, 503)])
def test_the_client_retries_a_batch_with_the_same_key(
    client: TestClient,
    jobmill: Jobmill,
    admin_token: str,
    monkeypatch: pytest.MonkeyPatch,
    lose: int,
    status: int,
) -> None:
    monkeypatch.setattr(client_module, "SUBMIT_RETRY_DELAY", 0.0)
    transport = LostAnswers(client, lose, status)
    jobs = [{"type": "sleep", "parameters": {"seconds": n}, "phase": "PENDING"} for n in range(4)]
    with Client("http://testserver", token=admin_token, transport=transport) as jm:
        ids = jm.submit_many(jobs)
    assert len(transport.keys) == lose + 1
    assert len(set(transport.keys)) == 1 and transport.keys[0]
    assert jobmill.store.count() == 4 and len(set(ids)) == 4
