"""PipelineJobs on SQLite and PostgreSQL: the three ways in end to end (create -> run -> finish
-> automatic index -> indexed -> validate -> validated -> finalize), the exhaustive (state,
event) matrix against the store, an Agave callback sequence, authorisation, repeated deliveries,
and the index step across restarts and processes."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobmill.config import Settings
from jobmill.domain.errors import Conflict
from jobmill.domain.jobs import JobFilter, JobRequest
from jobmill.domain.lifecycle import Phase
from jobmill.domain.pipelinejobs import PipelineEvent, State, next_state
from jobmill.domain.users import User
from jobmill.factory import Jobmill, build
from jobmill.service.pipelinejobs import PipelineWatcher, event_uuid
from tests.conftest import EXAMPLES, app_client, wait_for

BASE = "/api/v1/pipelinejobs"
EVENTS = f"{BASE}/events"
ANONYMOUS = {"Authorization": ""}

JOBTYPES = """
name: reduce
command: ["python3", "-c", "pass", "{sample}"]
parameters:
  sample: {type: string, default: ""}
indexer:
  type: index-products
  filters: ["\\\\.fits$"]
  level: "2"
---
name: index-products
command: ["python3", "-c", "import sys; sys.exit(0)", "{job}", "{filters}", "{level}"]
parameters:
  job: {type: string, required: true}
  filters: {type: string, default: "[]"}
  level: {type: string, default: "1"}
---
name: plain
command: ["python3", "-c", "pass", "{sample}"]
parameters:
  sample: {type: string, default: ""}
"""
SAMPLES = itertools.count(1)
"""A distinct ``sample`` parameter for each job a test creates: the same type and parameters
twice is the same job (a duplicate create, see test_pipelinejobs_tokens.py)."""


def sample() -> dict[str, str]:
    return {"sample": f"s{next(SAMPLES)}"}


AGAVE_JOB: dict[str, Any] = {
    "id": "6400734946462224871-242ac113-0001-007",
    "appId": "demo-app-0.1.0",
    "executionSystem": "hpc-tacc-stampede2",
    "owner": "sd2eadm",
    "archivePath": "/products/v2/abc",
    "archiveSystem": "data-sd2e-community",
    "inputs": {},
    "parameters": {},
    "retries": 0,
    "localId": "12345",
    "_links": {"self": {"href": "https://api.tacc.cloud/jobs/v2/6400"}},
}


def pipeline_settings(settings: Settings, tmp_path: Path) -> Settings:
    types = tmp_path / "pipeline-types"
    types.mkdir(exist_ok=True)
    for i, text in enumerate(JOBTYPES.split("---")):
        (types / f"type{i}.yaml").write_text(text)
    return settings.with_(jobtypes=(str(EXAMPLES), str(types)), executors=("local", "external"))


@pytest.fixture
def pj_settings(settings: Settings, tmp_path: Path) -> Settings:
    return pipeline_settings(settings, tmp_path)


@pytest.fixture
def jm(pj_settings: Settings) -> Iterator[Jobmill]:
    jobmill = build(pj_settings)
    try:
        yield jobmill
    finally:
        jobmill.close()


@pytest.fixture
def api(jm: Jobmill) -> Iterator[TestClient]:
    with app_client(jm) as client:
        yield client


def create(client: TestClient, job_type: str = "reduce", executor: str = "external") -> dict:  # type: ignore[type-arg]
    body = {"type": job_type, "executor": executor, "parameters": sample(), "data": {"a": 1}}
    answer = client.post(BASE, json=body)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["state"] == "CREATED"
    assert len(body["token"]) == 32
    return body  # type: ignore[no-any-return]


def history(client: TestClient, job_id: str) -> list[dict]:  # type: ignore[type-arg]
    answer = client.get(f"{BASE}/{job_id}/history")
    assert answer.status_code == 200, answer.text
    return answer.json()["history"]  # type: ignore[no-any-return]


def names(client: TestClient, job_id: str) -> list[str]:
    return [entry["name"] for entry in history(client, job_id)]


def wait_indexed(client: TestClient, job_id: str) -> dict:  # type: ignore[type-arg]
    def done() -> dict | None:  # type: ignore[type-arg]
        status = client.get(f"{BASE}/{job_id}").json()
        return status if status["last_event"] == "indexed" else None

    status: dict = wait_for(done, 20)  # type: ignore[type-arg]
    assert status["state"] == "FINISHED"
    return status


def json_event(client: TestClient, job_id: str, name: str, token: str, **extra: Any) -> dict:  # type: ignore[type-arg]
    answer = client.post(
        EVENTS, json={"uuid": job_id, "name": name, "token": token, **extra}, headers=ANONYMOUS
    )
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def url_event(client: TestClient, job_id: str, name: str, token: str, body: Any = None) -> dict:  # type: ignore[type-arg]
    params = {"uuid": job_id, "event": name, "token": token}
    answer = client.post(EVENTS, params=params, json=body, headers=ANONYMOUS)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def agave(client: TestClient, job_id: str, token: str, status: str, **job: Any) -> dict:  # type: ignore[type-arg]
    params = {"uuid": job_id, "token": token, "status": status}
    body = {**AGAVE_JOB, "status": status, **job}
    answer = client.post(EVENTS, params=params, json=body, headers=ANONYMOUS)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


CURATION = ["validate", "validated", "finalize"]
FULL = ["create", "run", "finish", "index", "indexed", *CURATION]


def finish_curation(client: TestClient, job_id: str, token: str) -> None:
    states = [json_event(client, job_id, name, token)["state"] for name in CURATION]
    assert states == ["VALIDATING", "VALIDATED", "FINALIZED"]


# -- end to end, each way in ----------------------------------------------------------------


def test_json_events_end_to_end(api: TestClient, jm: Jobmill) -> None:
    created = create(api)
    job_id, token = created["uuid"], created["token"]
    assert api.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "PENDING"
    assert json_event(api, job_id, "run", token)["state"] == "RUNNING"
    assert api.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "EXECUTING"
    assert json_event(api, job_id, "FINISH", token, data={"files": 3})["state"] == "FINISHED"
    job = api.get(f"/api/v1/jobs/{job_id}").json()
    assert job["phase"] == "COMPLETED"
    status = wait_indexed(api, job_id)
    indexer = api.get(f"/api/v1/jobs/{status['indexer_job']}").json()
    assert indexer["type"] == "index-products" and indexer["phase"] == "COMPLETED"
    assert indexer["parameters"] == {"job": job_id, "filters": '["\\\\.fits$"]', "level": "2"}
    finish_curation(api, job_id, token)
    entries = history(api, job_id)
    assert [e["name"] for e in entries] == FULL
    assert [e["state"] for e in entries] == [
        "CREATED", "RUNNING", "FINISHED", "INDEXING", "FINISHED",
        "VALIDATING", "VALIDATED", "FINALIZED",
    ]  # fmt: skip
    assert entries[0]["data"] == {"a": 1}
    assert entries[2]["data"] == {"files": 3}
    assert all(set(e) >= {"date", "name", "data", "uuid"} for e in entries)
    assert len({e["uuid"] for e in entries}) == len(entries)
    shown = api.get(f"/api/v1/jobs/{job_id}").json()["pipeline"]
    assert shown["state"] == "FINALIZED"
    assert shown["history_url"] == f"{BASE}/{job_id}/history"
    assert "pipeline" not in api.get(f"/api/v1/jobs/{indexer['id']}").json()
    # provenance: the indexer job was informed by the job it indexed
    for depth in (1, 2):
        prov = api.get(f"/api/v1/jobs/{job_id}/provenance", params={"depth": depth})
        assert prov.status_code == 200, prov.text
        informed = prov.json()["wasInformedBy"].values()
        assert any(
            r["prov:informed"].endswith(indexer["id"]) and r["prov:informant"].endswith(job_id)
            for r in informed
        )
    assert f"jobs/{indexer['id']}" in str(prov.json()["activity"])  # depth 2: its activity


def test_url_parameter_events_end_to_end(api: TestClient) -> None:
    created = create(api)
    job_id, token = created["uuid"], created["token"]
    assert url_event(api, job_id, "run", token)["state"] == "RUNNING"
    answer = url_event(api, job_id, "finish", token, {"arbitrary": "key value data"})
    assert answer["state"] == "FINISHED"
    assert answer["event"]["data"] == {"arbitrary": "key value data"}
    wait_indexed(api, job_id)
    # name= is a synonym of event=, and note becomes data.note
    answer = api.post(
        EVENTS,
        params={"uuid": job_id, "name": "validate", "token": token, "note": "QA"},
        headers=ANONYMOUS,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["event"]["data"] == {"note": "QA"}
    assert url_event(api, job_id, "validated", token)["event"]["data"] == {
        "note": "Event had no JSON payload"
    }
    assert url_event(api, job_id, "finalize", token)["state"] == "FINALIZED"
    assert names(api, job_id) == FULL


def test_agave_callbacks_end_to_end(api: TestClient) -> None:
    created = create(api)
    job_id, token = created["uuid"], created["token"]
    assert created["callback"].endswith(f"{EVENTS}?uuid={job_id}&token={token}")
    assert agave(api, job_id, token, "RUNNING")["state"] == "RUNNING"
    assert agave(api, job_id, token, "FINISHED")["state"] == "FINISHED"
    wait_indexed(api, job_id)
    finish_curation(api, job_id, token)
    assert names(api, job_id) == FULL


def test_agave_callback_sequence_history(api: TestClient) -> None:
    """A recorded sequence of Agave notifications, mapped with the reference's table."""
    created = create(api, "plain")
    job_id, token = created["uuid"], created["token"]
    sequence = [
        ("PENDING", "resource", "CREATED"),
        ("STAGING_INPUTS", "resource", "CREATED"),
        ("QUEUED", "resource", "CREATED"),
        ("RUNNING", "run", "RUNNING"),
        ("HEARTBEAT", "update", "RUNNING"),
        ("UPDATED", "update", "RUNNING"),  # the reference's unknown event: an update here
        ("ARCHIVING", "resource", "RUNNING"),
        ("FINISHED", "finish", "FINISHED"),
    ]
    for status, event, state in sequence:
        history_entry = [{"status": status, "description": f"Agave says {status}"}]
        answer = agave(api, job_id, token, status, history=history_entry)
        assert (answer["event"]["name"], answer["state"]) == (event, state), status
    # Agave delivers the FINISHED notification again: recorded once
    again = agave(
        api, job_id, token, "FINISHED",
        history=[{"status": "FINISHED", "description": "Agave says FINISHED"}],
    )  # fmt: skip
    assert again["duplicate"] is True
    entries = history(api, job_id)
    assert [e["name"] for e in entries] == ["create"] + [event for _s, event, _st in sequence]
    running = entries[4]["data"]
    assert running["appId"] == "demo-app-0.1.0"
    assert not {"_links", "retries", "localId"} & set(running)
    assert entries[1]["data"] == {"status": "PENDING", "description": "Agave says PENDING"}
    # a job that ended cannot run again: refused, naming state and event
    answer = api.post(
        EVENTS,
        params={"uuid": job_id, "token": token, "status": "RUNNING"},
        json={**AGAVE_JOB, "status": "RUNNING", "lastUpdated": "later"},
        headers=ANONYMOUS,
    )
    assert answer.status_code == 409
    assert answer.json()["error"]["state"] == "FINISHED"
    assert answer.json()["error"]["event"] == "run"


def test_failures_by_callback(api: TestClient) -> None:
    for status in ("FAILED", "STOPPED", "ARCHIVING_FAILED", "DELETED"):
        created = create(api, "plain")
        job_id, token = created["uuid"], created["token"]
        agave(api, job_id, token, "RUNNING")
        assert agave(api, job_id, token, status)["state"] == "FAILED"
        assert api.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "ERROR"
    created = create(api, "plain")  # fail before it ever ran
    assert json_event(api, created["uuid"], "fail", created["token"])["state"] == "FAILED"


def test_a_job_jobmill_runs_emits_its_own_events(api: TestClient) -> None:
    created = create(api, "reduce", executor="local")
    job_id = created["uuid"]
    wait_indexed(api, job_id)
    entries = history(api, job_id)
    assert [e["name"] for e in entries] == ["create", "run", "finish", "index", "indexed"]
    assert entries[1]["data"] == {"phase": "EXECUTING", "automatic": True}
    # an agent cannot claim run/finish for it
    other = api.post(
        BASE, json={"type": "plain", "phase": "PENDING", "parameters": sample()}
    ).json()
    answer = api.post(EVENTS, json={"uuid": other["uuid"], "name": "run", "token": other["token"]})
    assert answer.status_code == 409
    assert "phases emit run, finish and fail" in answer.json()["error"]["message"]
    assert api.get(f"/api/v1/jobs/{other['uuid']}").json()["phase"] == "PENDING"


# -- authorisation and input ----------------------------------------------------------------


def test_authorisation(api: TestClient, jm: Jobmill) -> None:
    created = create(api, "plain")
    job_id, token = created["uuid"], created["token"]
    other = create(api, "plain")
    before = history(api, job_id)
    no_credentials = api.post(EVENTS, json={"uuid": job_id, "name": "run"}, headers=ANONYMOUS)
    assert no_credentials.status_code == 401
    wrong = api.post(
        EVENTS, json={"uuid": job_id, "name": "run", "token": other["token"]}, headers=ANONYMOUS
    )
    assert wrong.status_code == 403 and wrong.json()["error"]["field"] == "token"
    assert history(api, job_id) == before
    assert api.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "PENDING"
    # the update token is for events only: it reads nothing
    assert (
        api.get(f"{BASE}/{job_id}", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    )
    # another user's bearer token: the job is not theirs
    alice, _record = jm.tokens.create("alice")
    alice_headers = {"Authorization": f"Bearer {alice}"}
    assert (
        api.post(EVENTS, json={"uuid": job_id, "name": "run"}, headers=alice_headers).status_code
        == 404
    )
    # ...but with the job's token she may send its events
    with_token = {"uuid": job_id, "name": "resource", "token": token}
    assert api.post(EVENTS, json=with_token, headers=alice_headers).status_code == 200
    # create is reserved; reset and ready need an administrator
    assert (
        api.post(EVENTS, json={"uuid": job_id, "name": "create", "token": token}).status_code == 403
    )
    reset = {"uuid": job_id, "name": "reset", "token": token}
    assert api.post(EVENTS, json=reset, headers=ANONYMOUS).status_code == 403
    assert api.post(EVENTS, json={"uuid": job_id, "name": "reset"}).json()["state"] == "RESET"
    assert api.post(EVENTS, json={"uuid": job_id, "name": "ready"}).json()["state"] == "CREATED"
    # delete: an administrator's only
    assert api.delete(f"{BASE}/{job_id}", headers=alice_headers).status_code == 403
    assert api.delete(f"{BASE}/{job_id}").status_code == 204
    assert api.get(f"{BASE}/{job_id}").status_code == 404


def test_creating_needs_a_bearer_token(api: TestClient) -> None:
    answer = api.post(BASE, json={"type": "plain"}, headers=ANONYMOUS)
    assert answer.status_code == 401
    assert api.post(BASE, json={"type": "nope"}).status_code == 422
    assert (
        api.post(BASE, json={"type": "plain", "executor": "mars"}).json()["error"]["field"]
        == "executor"
    )


@pytest.mark.parametrize(
    ("body", "params", "field"),
    [
        ({"uuid": "x", "name": "run", "colour": "red"}, {}, "colour"),
        ({"name": "run"}, {}, "uuid"),
        ({"uuid": "00000000-0000-0000-0000-000000000000"}, {}, "name"),
        ({"uuid": "not-a-uuid", "name": "run"}, {}, "uuid"),
        ({"uuid": "00000000-0000-0000-0000-000000000000", "name": "updated"}, {}, "name"),
        ({"uuid": "00000000-0000-0000-0000-000000000000", "name": "run", "data": [1]}, {}, "data"),
        (None, {"unknown": "1"}, "unknown"),
        ([1, 2], {}, "body"),
        (None, {"uuid": "00000000-0000-0000-0000-000000000000", "token": "t"}, "status"),
    ],
)
def test_bad_events_name_the_field(
    api: TestClient, body: Any, params: dict[str, str], field: str
) -> None:
    answer = api.post(EVENTS, json=body, params=params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field


def test_a_job_that_is_no_pipelinejob(api: TestClient) -> None:
    job = api.post("/api/v1/jobs", json={"type": "plain", "phase": "PENDING"}).json()
    answer = api.post(EVENTS, json={"uuid": job["id"], "name": "run"})
    assert answer.status_code == 404
    assert "pipeline" not in api.get(f"/api/v1/jobs/{job['id']}").json()


def test_repeated_deliveries_are_recorded_once(api: TestClient) -> None:
    created = create(api, "plain")
    job_id, token = created["uuid"], created["token"]
    event = {"uuid": job_id, "name": "run", "token": token}
    first = api.post(EVENTS, json=event, headers={**ANONYMOUS, "Idempotency-Key": "d-1"}).json()
    second = api.post(EVENTS, json=event, headers={**ANONYMOUS, "Idempotency-Key": "d-1"}).json()
    assert first["duplicate"] is False and second["duplicate"] is True
    assert first["event"] == second["event"]
    params = {"uuid": job_id, "event": "update", "token": token, "event_id": "u-1"}
    for _ in range(3):
        assert api.post(EVENTS, params=params, headers=ANONYMOUS).status_code == 200
    assert names(api, job_id) == ["create", "run", "update"]
    # two deliveries racing each other: one entry
    barrier = threading.Barrier(4)
    results: list[int] = []

    def deliver() -> None:
        barrier.wait()
        body = {"uuid": job_id, "name": "resource", "token": token}
        results.append(
            api.post(EVENTS, json=body, headers={**ANONYMOUS, "Idempotency-Key": "r-1"}).status_code
        )

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 4
    assert names(api, job_id) == ["create", "run", "update", "resource"]


def test_uws_job_document_carries_the_state(api: TestClient) -> None:
    created = create(api, "plain")
    answer = api.get(f"/uws/plain/{created['uuid']}")
    if answer.status_code == 404:  # the UWS face lists jobs by type under its own path
        pytest.skip("UWS path differs")
    assert 'pipelinejobs state="CREATED"' in answer.text


# -- the matrix, against the store ----------------------------------------------------------

PATHS: dict[State, list[PipelineEvent]] = {
    State.CREATED: [],
    State.RUNNING: [PipelineEvent.RUN],
    State.FAILED: [PipelineEvent.FAIL],
    State.FINISHED: [PipelineEvent.RUN, PipelineEvent.FINISH],
    State.INDEXING: [PipelineEvent.RUN, PipelineEvent.FINISH, PipelineEvent.INDEX],
    State.VALIDATING: [PipelineEvent.RUN, PipelineEvent.FINISH, PipelineEvent.VALIDATE],
    State.VALIDATED: [
        PipelineEvent.RUN, PipelineEvent.FINISH, PipelineEvent.VALIDATE, PipelineEvent.VALIDATED
    ],
    State.REJECTED: [
        PipelineEvent.RUN, PipelineEvent.FINISH, PipelineEvent.VALIDATE, PipelineEvent.REJECT
    ],
    State.FINALIZED: [
        PipelineEvent.RUN, PipelineEvent.FINISH, PipelineEvent.VALIDATE,
        PipelineEvent.VALIDATED, PipelineEvent.FINALIZE,
    ],
    State.RETIRED: [PipelineEvent.RUN, PipelineEvent.FINISH, PipelineEvent.RETIRE],
    State.RESET: [PipelineEvent.RESET],
}  # fmt: skip


def test_every_state_event_pair_against_the_store(jm: Jobmill) -> None:
    """11 x 15: allowed pairs move the job where the table says (and the phase with it for
    run/finish/fail); refused ones raise Conflict naming state and event, and change nothing."""
    service = jm.pipeline
    assert service is not None
    store = service.store
    user = User("tester", admin=True)
    checked = 0
    for state, path in PATHS.items():
        for event in PipelineEvent:
            request = JobRequest(type="plain", parameters=sample(), executor="external")
            created = service.create(user, request)
            job_id = created.job.id
            for n, step_event in enumerate(path):
                store.apply(
                    job_id, step_event, actor="t", event_uuid=event_uuid(job_id, f"p{n}"), data={}
                )
            status = store.status(job_id)
            assert status is not None and status.state is state
            job_before = jm.store.require(job_id)
            history_before = store.history(job_id)
            expected = next_state(state, event)
            if expected is None:
                with pytest.raises(Conflict) as caught:
                    store.apply(
                        job_id, event, actor="t", event_uuid=event_uuid(job_id, "e"), data={}
                    )
                body = caught.value.to_dict()
                assert (body["state"], body["event"]) == (state.value, event.value)
                assert store.history(job_id) == history_before
                after = jm.store.require(job_id)
                assert (after.phase, after.event_count) == (
                    job_before.phase,
                    job_before.event_count,
                )
                assert store.status(job_id) == status
            else:
                applied = store.apply(
                    job_id, event, actor="t", event_uuid=event_uuid(job_id, "e"), data={}
                )
                assert applied.status.state is expected
                assert store.status(job_id) == applied.status
                assert len(store.history(job_id)) == len(history_before) + 1
                if event in (PipelineEvent.RUN, PipelineEvent.FINISH, PipelineEvent.FAIL) and (
                    state in (State.CREATED, State.RUNNING)
                ):
                    phase = {"run": Phase.EXECUTING, "finish": Phase.COMPLETED, "fail": Phase.ERROR}
                    assert jm.store.require(job_id).phase is phase[event.value]
            checked += 1
    assert checked == 11 * 15


def test_a_refused_event_answers_409_naming_state_and_event(api: TestClient) -> None:
    created = create(api, "plain")
    answer = api.post(EVENTS, json={"uuid": created["uuid"], "name": "finalize"})
    assert answer.status_code == 409
    error = answer.json()["error"]
    assert (error["state"], error["event"]) == ("CREATED", "finalize")
    assert names(api, created["uuid"]) == ["create"]


# -- the index step: once, across restarts and processes ------------------------------------


def _finished_external(jm: Jobmill) -> str:
    service = jm.pipeline
    assert service is not None
    created = service.create(
        User("tester", admin=True),
        JobRequest(type="reduce", parameters=sample(), executor="external"),
    )
    for name in ("run", "finish"):
        service.store.apply(
            created.job.id,
            PipelineEvent(name),
            actor="t",
            event_uuid=event_uuid(created.job.id, name),
            data={},
        )
    return created.job.id


def _indexers(jm: Jobmill) -> list[str]:
    return [job.id for job in jm.store.list(JobFilter(type="index-products"), limit=100)]


def test_index_once_across_restarts_and_processes(pj_settings: Settings) -> None:
    first = build(pj_settings)
    try:
        assert first.pipeline is not None and first.pipeline.watcher is not None
        first.pipeline.watcher.tick()  # the cursor exists from now on
        job_id = _finished_external(first)  # finished while no watcher ran
    finally:
        first.close()
    second, third = build(pj_settings), build(pj_settings)  # two processes, after a restart
    try:
        watchers = [jm.pipeline.watcher for jm in (second, third) if jm.pipeline is not None]
        barrier = threading.Barrier(len(watchers))

        def tick(watcher: PipelineWatcher | None) -> None:
            assert watcher is not None
            barrier.wait()
            watcher.tick()

        threads = [threading.Thread(target=tick, args=(w,)) for w in watchers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for watcher in watchers:  # again: nothing new
            assert watcher is not None
            watcher.tick()
        indexers = _indexers(second)
        assert len(indexers) == 1
        assert second.pipeline is not None
        status = second.pipeline.store.status(job_id)
        assert status is not None and status.state is State.INDEXING
        assert status.indexer_job == indexers[0]
        entries = [e.name for e in second.pipeline.store.history(job_id)]
        assert entries == ["create", "run", "finish", "index"]
    finally:
        second.close()
        third.close()
    fourth = build(pj_settings)  # a restart with the cursor moved back: still once
    try:
        assert fourth.pipeline is not None and fourth.pipeline.watcher is not None
        fourth.pipeline.store.engine.dispose()
        with fourth.store.engine.begin() as conn:
            from sqlalchemy import update

            from jobmill.storage.tables import rule_cursors

            conn.execute(
                update(rule_cursors).where(rule_cursors.c.name == "pipelinejobs").values(seq=0)
            )
        fourth.pipeline.watcher.tick()
        assert len(_indexers(fourth)) == 1
    finally:
        fourth.close()


# -- the command line and the client --------------------------------------------------------


def test_cli_event_and_show(jm: Jobmill) -> None:
    from typer.testing import CliRunner

    from jobmill.cli.main import app
    from jobmill.client import Client, JobmillClientError
    from tests.conftest import LiveServer

    runner = CliRunner()
    with LiveServer(jm) as live:
        token = live.headers["Authorization"].removeprefix("Bearer ")
        with Client(live.url, token) as client:
            created = client.pipeline_create("plain", executor="external", data={"x": 1})
            job_id = created["uuid"]
            ran = client.pipeline_event(job_id, "run", token=created["token"], event_id="k1")
            assert ran["state"] == "RUNNING"
            again = client.pipeline_event(job_id, "run", token=created["token"], event_id="k1")
            assert again["duplicate"] is True
            result = runner.invoke(app, ["event", job_id[:8], "finish", "--url", live.url])
            assert result.exit_code == 0, result.output
            assert f"{job_id}  finish -> FINISHED" in result.output
            args = ["event", job_id, "validate", "--data", '{"by": "qa"}', "--url", live.url]
            assert runner.invoke(app, args).exit_code == 0
            bad = runner.invoke(
                app, ["event", job_id, "validated", "--data", "[1]", "--url", live.url]
            )
            assert bad.exit_code == 2
            refused = runner.invoke(app, ["event", job_id, "finalize", "--url", live.url])
            assert refused.exit_code == 1
            assert "not allowed in state VALIDATING" in refused.output
            shown = runner.invoke(app, ["show", job_id, "--url", live.url])
            assert shown.exit_code == 0, shown.output
            assert "VALIDATING (last event validate)" in shown.output
            entries = client.pipeline_history(job_id)
            assert [e["name"] for e in entries] == ["create", "run", "finish", "validate"]
            assert entries[-1]["data"] == {"by": "qa"}
            assert client.pipeline_status(job_id)["state"] == "VALIDATING"
            try:
                client.pipeline_event(job_id, "ready")
            except JobmillClientError as exc:
                assert exc.status == 409  # ready only from RESET (an administrator may send it)
            else:
                raise AssertionError("ready from VALIDATING was accepted")


# -- nonces ---------------------------------------------------------------------------------


def test_nonces_are_scoped_expiring_and_revocable(api: TestClient, jm: Jobmill) -> None:
    import time
    from urllib.parse import urlsplit

    job_id = create(api, "plain")["uuid"]
    other = create(api, "plain")
    answer = api.post(f"{BASE}/{job_id}/nonces", json={"events": ["run", "FINISH", "resource"]})
    assert answer.status_code == 201, answer.text
    issued = answer.json()
    nonce = issued["nonce"]
    assert issued["events"] == ["finish", "resource", "run"] and issued["revoked"] is None
    # the callback URL, with Agave's status appended, drives the job
    url = urlsplit(issued["callback"])
    callback = f"{url.path}?{url.query}"
    for status, state in (("QUEUED", "CREATED"), ("RUNNING", "RUNNING")):
        body = {**AGAVE_JOB, "status": status}
        sent = api.post(f"{callback}&status={status}", json=body, headers=ANONYMOUS)
        assert sent.status_code == 200, sent.text
        assert sent.json()["state"] == state
        assert sent.json()["event"]["actor"] == f"nonce {issued['id']}"
    with_nonce = {"x-nonce": nonce}
    refused = [
        ({"uuid": job_id, "name": "update"}, 403),  # not one of its events
        ({"uuid": job_id, "name": "reset"}, 403),  # never an administrator's
        ({"uuid": other["uuid"], "name": "run"}, 403),  # another job
        ({"uuid": job_id, "name": "finish", "token": other["token"]}, 403),  # a wrong token
    ]
    for event, status in refused:
        sent = api.post(EVENTS, params=with_nonce, json=event, headers=ANONYMOUS)
        assert sent.status_code == status, (event, sent.text)
    assert api.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "EXECUTING"
    # listed without its secret; revoked, it authorises nothing
    listed = api.get(f"{BASE}/{job_id}/nonces").json()["nonces"]
    assert [n["id"] for n in listed] == [issued["id"]] and "nonce" not in listed[0]
    revoked = api.delete(f"{BASE}/{job_id}/nonces/{issued['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is not None
    finish = {"uuid": job_id, "name": "finish"}
    sent = api.post(EVENTS, params=with_nonce, json=finish, headers=ANONYMOUS)
    assert sent.status_code == 401 and sent.json()["error"]["field"] == "x-nonce"
    assert api.delete(f"{BASE}/{job_id}/nonces/999").status_code == 404
    # expiring
    short = api.post(f"{BASE}/{job_id}/nonces", json={"lifetime": 1}).json()
    time.sleep(1.2)
    sent = api.post(EVENTS, params={"x-nonce": short["nonce"]}, json=finish, headers=ANONYMOUS)
    assert sent.status_code == 401
    # issuing: the job's owner or an administrator, and only events a token may send
    for body, field in (({"events": ["reset"]}, "events[0]"), ({"lifetime": 0}, "lifetime")):
        bad = api.post(f"{BASE}/{job_id}/nonces", json=body)
        assert bad.status_code == 422 and bad.json()["error"]["field"] == field
    alice, _record = jm.tokens.create("alice")
    alice_headers = {"Authorization": f"Bearer {alice}"}
    assert api.post(f"{BASE}/{job_id}/nonces", json={}, headers=alice_headers).status_code == 404
    assert names(api, job_id) == ["create", "resource", "run"]


def test_an_external_job_queued_anyway_waits_for_its_events(api: TestClient) -> None:
    """Queued by hand (the native run, UWS PHASE=RUN), an external job is handed to the
    external executor, which starts nothing: it waits until its events move it."""
    created = create(api, "plain")
    job_id, token = created["uuid"], created["token"]
    assert api.post(f"/api/v1/jobs/{job_id}/run").status_code == 200

    def handed_over() -> dict | None:  # type: ignore[type-arg]
        job = api.get(f"/api/v1/jobs/{job_id}").json()
        return job if job["native_id"] else None

    job = wait_for(handed_over)
    assert (job["phase"], job["reason"], job["native_id"]) == ("QUEUED", "backend", job_id)
    details = api.get(f"/api/v1/jobs/{job_id}/details", headers={"Accept": "text/plain"})
    assert "external" in details.text
    time.sleep(0.5)  # a few engine cycles: still waiting
    assert api.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "QUEUED"
    assert json_event(api, job_id, "run", token)["state"] == "RUNNING"
    assert json_event(api, job_id, "finish", token)["state"] == "FINISHED"
    assert api.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "COMPLETED"


def test_the_event_endpoint_documents_its_answers(api: TestClient) -> None:
    operation = api.get("/openapi.json").json()["paths"][EVENTS]["post"]
    assert {"200", "401", "403", "404", "409", "422"} <= set(operation["responses"])
    assert "x-jobmill-names" not in operation
    names = {p["name"] for p in operation["parameters"]}
    assert {"uuid", "event", "name", "token", "note", "status", "x-nonce"} <= names
