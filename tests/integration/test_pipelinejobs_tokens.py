"""PipelineJobs on SQLite and PostgreSQL: duplicate creates (the same job created twice is
reported, racing creates end with one job, a re-run is allowed after FAILED, REJECTED or
RETIRED) and the update token's rotation and revocation (API and CLI)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from jobmill.config import Settings
from jobmill.domain.errors import Conflict, Forbidden
from jobmill.domain.jobs import JobRequest
from jobmill.domain.users import User
from jobmill.factory import Jobmill, build
from jobmill.service.pipelinejobs import fingerprint
from jobmill.storage.tables import jobs, pipeline_events, pipeline_jobs
from tests.conftest import app_client
from tests.integration.test_pipelinejobs import pipeline_settings

BASE = "/api/v1/pipelinejobs"
EVENTS = f"{BASE}/events"
ANONYMOUS = {"Authorization": ""}


@pytest.fixture
def jm(settings: Settings, tmp_path: Path) -> Iterator[Jobmill]:
    jobmill = build(pipeline_settings(settings, tmp_path))
    try:
        yield jobmill
    finally:
        jobmill.close()


@pytest.fixture
def api(jm: Jobmill) -> Iterator[TestClient]:
    with app_client(jm) as client:
        yield client


def job_body(sample: str, **fields: Any) -> dict[str, Any]:
    return {"type": "plain", "executor": "external", "parameters": {"sample": sample}, **fields}


def rows(jm: Jobmill) -> tuple[int, int, int]:
    """How many jobs, PipelineJobs and history rows the database holds."""
    with jm.store.engine.connect() as conn:
        counts = [
            int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in (jobs, pipeline_jobs, pipeline_events)
        ]
    return counts[0], counts[1], counts[2]


def send(api: TestClient, job_id: str, name: str, **fields: Any) -> Any:
    return api.post(EVENTS, json={"uuid": job_id, "name": name, **fields})


# -- duplicate creates (e.4.1) ---------------------------------------------------------------


def test_a_second_create_of_the_same_job_is_a_duplicate(
    api: TestClient, jm: Jobmill, tmp_path: Path
) -> None:
    first = api.post(BASE, json=job_body("a", data={"note": "first"}))
    assert first.status_code == 201, first.text
    created = first.json()
    job_id, key = created["uuid"], created["fingerprint"]
    assert uuid.UUID(key).version == 5 and created["rerun_of"] is None
    assert uuid.UUID(job_id).version == 4  # the job's id stays random
    shown = api.get(f"{BASE}/{job_id}").json()
    assert (shown["fingerprint"], shown["superseded_by"]) == (key, None)
    assert api.get(f"/api/v1/jobs/{job_id}").json()["pipeline"]["fingerprint"] == key
    before = rows(jm)
    # the same type and parameters: the create event's data and the executor do not count,
    # a parameter left to its default is the same as the default given
    log_dir = tmp_path / "never-made"
    for body in (
        job_body("a"),
        job_body("a", data={"note": "second"}, log_dir=str(log_dir)),
        {"type": "plain", "parameters": {"sample": "a"}, "phase": "PENDING"},
    ):
        again = api.post(BASE, json=body)
        assert again.status_code == 409, again.text
        error = again.json()["error"]
        assert (error["code"], error["field"]) == ("conflict", "fingerprint")
        assert (error["uuid"], error["state"], error["fingerprint"]) == (job_id, "CREATED", key)
        assert job_id in error["message"]
    assert rows(jm) == before  # no job, no PipelineJobs row, no history, no token
    assert not log_dir.exists()
    assert send(api, job_id, "run", token=created["token"]).json()["state"] == "RUNNING"
    defaulted = api.post(BASE, json={"type": "plain", "executor": "external"}).json()
    explicit = api.post(BASE, json=job_body(""))
    assert explicit.status_code == 409 and explicit.json()["error"]["uuid"] == defaulted["uuid"]
    # other parameters: another job
    other = api.post(BASE, json=job_body("b"))
    assert other.status_code == 201 and other.json()["fingerprint"] != key
    # another owner's identical job is theirs: a fingerprint is per owner
    alice, _record = jm.tokens.create("alice")
    theirs = api.post(BASE, json=job_body("a"), headers={"Authorization": f"Bearer {alice}"})
    assert theirs.status_code == 201 and theirs.json()["fingerprint"] != key


def test_the_fingerprint_is_canonical(jm: Jobmill) -> None:
    assert jm.pipeline is not None
    validate = jm.pipeline.jobs.validate
    user = User("tester")
    one = validate(user, JobRequest(type="plain", parameters={"sample": "x"}))
    two = validate(user, JobRequest(type="plain", parameters={"sample": "x"}, run_id="r"))
    assert one.id != two.id and fingerprint(one) == fingerprint(two)
    assert fingerprint(one) != fingerprint(one, pipeline_uuid=str(uuid.uuid4()))
    three = validate(user, JobRequest(type="plain", parameters={"sample": "y"}))
    assert fingerprint(one) != fingerprint(three)
    four = validate(User("other"), JobRequest(type="plain", parameters={"sample": "x"}))
    assert fingerprint(one) != fingerprint(four)


@pytest.mark.parametrize(
    ("path", "state"),
    [
        (["run", "fail"], "FAILED"),
        (["fail"], "FAILED"),
        (["run", "finish", "validate", "reject"], "REJECTED"),
        (["run", "finish", "retire"], "RETIRED"),
    ],
)
def test_a_rerun_after_an_outcome_not_to_be_used(
    api: TestClient, jm: Jobmill, path: list[str], state: str
) -> None:
    job_id = api.post(BASE, json=job_body("r")).json()["uuid"]
    key = api.get(f"{BASE}/{job_id}").json()["fingerprint"]
    for name in path:
        answer = send(api, job_id, name)
        assert answer.status_code == 200, answer.text
        if name != path[-1]:  # not yet: under way, or its products are good
            refused = api.post(BASE, json=job_body("r"))
            assert refused.status_code == 409 and refused.json()["error"]["uuid"] == job_id
    assert answer.json()["state"] == state
    rerun = api.post(BASE, json=job_body("r"))
    assert rerun.status_code == 201, rerun.text
    new = rerun.json()
    assert (new["rerun_of"], new["fingerprint"]) == (job_id, key)
    old = api.get(f"{BASE}/{job_id}").json()
    assert (old["state"], old["fingerprint"], old["superseded_by"]) == (state, None, new["uuid"])
    # the old job keeps its history and its token; the re-run now holds the fingerprint
    assert send(api, job_id, "reset").json()["state"] == "RESET"
    again = api.post(BASE, json=job_body("r"))
    assert again.status_code == 409 and again.json()["error"]["uuid"] == new["uuid"]


def test_a_reset_job_is_no_rerun(api: TestClient) -> None:
    job_id = api.post(BASE, json=job_body("z")).json()["uuid"]
    for name in ("run", "fail", "reset"):
        assert send(api, job_id, name).status_code == 200
    refused = api.post(BASE, json=job_body("z"))
    assert refused.status_code == 409 and refused.json()["error"]["state"] == "RESET"
    assert send(api, job_id, "ready").json()["state"] == "CREATED"  # the administrator's way


def race(api: TestClient, body: dict[str, Any], racers: int = 6) -> list[Any]:
    """``racers`` threads post the same create at the same moment; their answers."""
    barrier = threading.Barrier(racers)
    answers: list[Any] = []

    def one() -> None:
        barrier.wait()
        answers.append(api.post(BASE, json=body))

    threads = [threading.Thread(target=one) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def one_winner(answers: list[Any]) -> dict[str, Any]:
    """Exactly one create won; every other one is a duplicate naming the winner."""
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [201] + [409] * (len(answers) - 1), [a.text for a in answers]
    winner: dict[str, Any] = next(a.json() for a in answers if a.status_code == 201)
    named = {a.json()["error"]["uuid"] for a in answers if a.status_code == 409}
    assert named == {winner["uuid"]}
    return winner


def test_racing_creates_make_one_job(api: TestClient, jm: Jobmill) -> None:
    before = rows(jm)
    first = one_winner(race(api, job_body("race", data={"by": "racer"})))
    assert rows(jm) == (before[0] + 1, before[1] + 1, before[2] + 1)
    # racing re-runs of a failed job: one re-run
    assert send(api, first["uuid"], "fail").json()["state"] == "FAILED"
    before = rows(jm)
    rerun = one_winner(race(api, job_body("race")))
    assert rerun["rerun_of"] == first["uuid"]
    assert rows(jm) == (before[0] + 1, before[1] + 1, before[2] + 1)
    assert api.get(f"{BASE}/{first['uuid']}").json()["superseded_by"] == rerun["uuid"]


def test_the_unique_index_settles_a_race(jm: Jobmill, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both creates find no holder (they read before either commits): the unique index lets
    one insert win; the other one rolls back whole and is reported as a duplicate."""
    service = jm.pipeline
    assert service is not None
    store = service.store
    monkeypatch.setattr(store, "_claim", lambda *_args: None)
    user = User("tester", admin=True)
    made = []
    for _ in range(2):
        new = service.jobs.validate(user, JobRequest(type="plain", parameters={"sample": "u"}))
        made.append(new)
    key = fingerprint(made[0])
    args: dict[str, Any] = {"token_hash": "0" * 64, "actor": "tester", "data": {}}
    first, _entry, _rerun = store.create(made[0], event_uuid=str(uuid.uuid4()), **args,
                                         fingerprint=key)  # fmt: skip
    before = rows(jm)
    with pytest.raises(Conflict) as caught:
        store.create(made[1], event_uuid=str(uuid.uuid4()), **args, fingerprint=key)
    assert caught.value.to_dict()["uuid"] == first.id
    assert rows(jm) == before
    assert jm.store.get(made[1].id) is None


# -- the update token: rotation and revocation (e.4.10, e.3) -----------------------------------


def test_rotating_the_update_token(api: TestClient, jm: Jobmill) -> None:
    created = api.post(BASE, json=job_body("t")).json()
    job_id, old = created["uuid"], created["token"]
    rotated = api.post(f"{BASE}/{job_id}/token")
    assert rotated.status_code == 200, rotated.text
    answer = rotated.json()
    new = answer["token"]
    assert len(new) == 32 and new != old and answer["update_token"] == "active"
    assert answer["callback"].endswith(f"{EVENTS}?uuid={job_id}&token={new}")
    before = api.get(f"{BASE}/{job_id}/history").json()["history"]
    # the old token, and the old callback URL, are refused at once
    refused = api.post(
        EVENTS, json={"uuid": job_id, "name": "run", "token": old}, headers=ANONYMOUS
    )
    assert refused.status_code == 403 and refused.json()["error"]["field"] == "token"
    callback = created["callback"] + "&status=RUNNING"
    assert api.post(callback, json={"status": "RUNNING"}, headers=ANONYMOUS).status_code == 403
    assert api.get(f"{BASE}/{job_id}/history").json()["history"] == before
    assert api.get(f"{BASE}/{job_id}").json()["state"] == "CREATED"
    # the new callback URL drives the job
    callback = answer["callback"] + "&status=RUNNING"
    ran = api.post(callback, json={"status": "RUNNING"}, headers=ANONYMOUS)
    assert ran.status_code == 200 and ran.json()["state"] == "RUNNING"
    event = {"uuid": job_id, "name": "finish", "token": new}
    assert api.post(EVENTS, json=event, headers=ANONYMOUS).json()["state"] == "FINISHED"


def test_revoking_the_update_token(api: TestClient, jm: Jobmill) -> None:
    created = api.post(BASE, json=job_body("v")).json()
    job_id, token = created["uuid"], created["token"]
    nonce = api.post(f"{BASE}/{job_id}/nonces", json={"events": ["update"]}).json()["nonce"]
    revoked = api.delete(f"{BASE}/{job_id}/token")
    assert revoked.status_code == 200
    assert revoked.json() == {
        "uuid": job_id,
        "token": None,
        "callback": None,
        "update_token": "revoked",
    }
    assert api.get(f"{BASE}/{job_id}").json()["update_token"] == "revoked"
    with_token = {"uuid": job_id, "name": "run", "token": token}
    assert api.post(EVENTS, json=with_token, headers=ANONYMOUS).status_code == 403
    assert api.get(f"{BASE}/{job_id}").json()["state"] == "CREATED"
    # the owner's (or an administrator's) bearer token still sends events; a nonce too, until
    # it is revoked on its own
    assert send(api, job_id, "run").json()["state"] == "RUNNING"
    params = {"x-nonce": nonce}
    update = {"uuid": job_id, "name": "update"}
    assert api.post(EVENTS, params=params, json=update, headers=ANONYMOUS).status_code == 200
    assert api.delete(f"{BASE}/{job_id}/token").status_code == 200  # again: harmless
    # a rotation issues a new token that works
    new = api.post(f"{BASE}/{job_id}/token").json()["token"]
    event = {"uuid": job_id, "name": "finish", "token": new}
    assert api.post(EVENTS, json=event, headers=ANONYMOUS).json()["state"] == "FINISHED"
    assert api.get(f"{BASE}/{job_id}").json()["update_token"] == "active"


def test_only_the_owner_or_an_administrator_manages_the_token(api: TestClient, jm: Jobmill) -> None:
    alice, _a = jm.tokens.create("alice")
    bob, _b = jm.tokens.create("bob")
    as_alice = {"Authorization": f"Bearer {alice}"}
    as_bob = {"Authorization": f"Bearer {bob}"}
    created = api.post(BASE, json=job_body("o"), headers=as_alice).json()
    job_id, token = created["uuid"], created["token"]
    store = jm.pipeline.store if jm.pipeline is not None else None
    assert store is not None
    kept = store.token_hash(job_id)
    # bob cannot see alice's job: 404, as everywhere; nothing changes
    for method in ("POST", "DELETE"):
        refused = api.request(method, f"{BASE}/{job_id}/token", headers=as_bob)
        assert refused.status_code == 404, refused.text
    # no bearer token (the job's update token is no bearer token): 401
    assert api.post(f"{BASE}/{job_id}/token", headers=ANONYMOUS).status_code == 401
    bearer = {"Authorization": f"Bearer {token}"}
    assert api.post(f"{BASE}/{job_id}/token", headers=bearer).status_code == 401
    # a caller who sees the job but does not manage it (an anonymous reader), or a running
    # job's own token: 403
    assert jm.pipeline is not None
    for user in (User("anonymous", reader=True), User("alice", job=str(uuid.uuid4()))):
        with pytest.raises(Forbidden):
            jm.pipeline.rotate_token(user, job_id)
        with pytest.raises(Forbidden):
            jm.pipeline.revoke_token(user, job_id)
    assert store.token_hash(job_id) == kept
    event = {"uuid": job_id, "name": "update", "token": token}
    assert api.post(EVENTS, json=event, headers=ANONYMOUS).status_code == 200
    # unknown jobs, and jobs that are no PipelineJob: 404
    assert api.post(f"{BASE}/{uuid.uuid4()}/token").status_code == 404
    assert api.delete(f"{BASE}/{uuid.uuid4()}/token").status_code == 404
    native = api.post("/api/v1/jobs", json={"type": "plain", "phase": "PENDING"}).json()
    assert api.post(f"{BASE}/{native['id']}/token").status_code == 404
    # its owner and an administrator may
    assert api.post(f"{BASE}/{job_id}/token", headers=as_alice).status_code == 200
    assert api.post(f"{BASE}/{job_id}/token").status_code == 200  # the administrator
    assert store.token_hash(job_id) != kept


def test_cli_job_token(jm: Jobmill) -> None:
    from typer.testing import CliRunner

    from jobmill.cli.main import app
    from jobmill.client import Client, JobmillClientError
    from tests.conftest import LiveServer

    runner = CliRunner()
    with LiveServer(jm) as live:
        token = live.headers["Authorization"].removeprefix("Bearer ")
        with Client(live.url, token) as client:
            created = client.pipeline_create(
                "plain", executor="external", parameters={"sample": "cli"}
            )
            job_id = created["uuid"]
            result = runner.invoke(app, ["job-token", job_id[:8], "--url", live.url])
            assert result.exit_code == 0, result.output
            lines = result.output.splitlines()
            assert lines[0].startswith(f"{job_id}  token ")
            new = lines[0].split()[-1]
            assert lines[1] == f"callback {live.url}{EVENTS}?uuid={job_id}&token={new}"
            with Client(live.url, "") as agent:  # no bearer token: the job's token only
                try:
                    agent.pipeline_event(job_id, "run", token=created["token"])
                except JobmillClientError as exc:
                    assert exc.status == 403
                else:
                    raise AssertionError("the old token was accepted after the rotation")
                assert agent.pipeline_event(job_id, "run", token=new)["state"] == "RUNNING"
            result = runner.invoke(app, ["job-token", job_id, "--revoke", "--url", live.url])
            assert result.exit_code == 0, result.output
            assert f"{job_id}  update token revoked" in result.output
            shown = runner.invoke(app, ["job-token", job_id, "--json", "--url", live.url])
            assert shown.exit_code == 0 and '"update_token": "active"' in shown.output
            missing = runner.invoke(app, ["job-token", str(uuid.uuid4()), "--url", live.url])
            assert missing.exit_code == 1
