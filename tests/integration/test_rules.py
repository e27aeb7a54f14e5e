"""Rules on SQLite and PostgreSQL: file, job and schedule rules fire exactly once, across
replays, two jobmill instances on one database, and restarts; the rules API."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobmill.config import Settings
from jobmill.domain.jobs import Job, JobFilter
from jobmill.factory import Jobmill, build
from tests.conftest import EXAMPLES, LiveServer, app_client, wait_for, wait_phase

RULES = "/api/v1/rules"
FILE_RULE = """
rules:
  - name: raw-echo
    file: "raw/{visit}/{ccd}.fits"
    create: echo
    run_id: "visit-{visit}"
    parameters:
      message: "{visit}/{ccd} at {path}"
"""
JOB_RULE = """
rules:
  - name: after-sleep
    job: sleep
    create: echo
    parameters:
      message: "slept {parameters.seconds} s, wrote {results.sleep}"
"""
SCHEDULE_RULE = """
rules:
  - name: every-5
    schedule: "*/5 * * * *"
    create: echo
    parameters:
      message: "slot {slot}"
"""


def rules_settings(settings: Settings, tmp_path: Path, data_dir: Path, text: str) -> Settings:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir(exist_ok=True)
    (rules_dir / "test.rules.yaml").write_text(text)
    return settings.with_(
        jobtypes=(str(EXAMPLES), str(rules_dir)), data_root=data_dir, scan_interval=0.3
    )


@pytest.fixture
def file_settings(settings: Settings, tmp_path: Path, data_dir: Path) -> Settings:
    return rules_settings(settings, tmp_path, data_dir, FILE_RULE)


def start_rules(jm: Jobmill, interval: float = 0.1) -> Jobmill:
    """Start the watcher and the rules, not the engine: created jobs stay QUEUED and countable."""
    assert jm.data is not None and jm.rules is not None
    jm.rules.interval = interval
    jm.data.watcher.start()
    jm.rules.start()
    return jm


@pytest.fixture
def opened(file_settings: Settings) -> Iterator[list[Jobmill]]:
    """Jobmills built by the test, all closed at its end."""
    built: list[Jobmill] = []
    yield built
    for jm in built:
        jm.close()


def echo_jobs(jm: Jobmill) -> list[Job]:
    return jm.store.list(JobFilter(type="echo"), limit=1000)


def write(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # write-then-rename: complete when it appears


# -- file rules -----------------------------------------------------------------------------


def test_a_file_fires_once_with_parameters_from_its_captures(
    file_settings: Settings, data_dir: Path, opened: list[Jobmill]
) -> None:
    jm = start_rules(build(file_settings))
    opened.append(jm)
    target = data_dir / "raw" / "411371" / "R22.fits"
    write(target)
    jobs = wait_for(lambda: echo_jobs(jm))
    assert len(jobs) == 1
    job = jobs[0]
    assert job.parameters == {"message": f"411371/R22 at {target}"}
    assert job.run_id == "visit-411371"
    created = jm.store.events(job.id)[0]
    assert created.actor == "rule:raw-echo"
    assert created.data["rule"] == {
        "name": "raw-echo",
        "kind": "file",
        "key": "raw/411371/R22.fits",
        "path": str(target),
    }
    # Written again, replaced, touched: the same file never fires the rule again.
    write(target, "y")
    with open(target, "a") as handle:
        handle.write("more")
    write(data_dir / "raw" / "411371" / "R23.fits")
    wait_for(lambda: len(echo_jobs(jm)) == 2)
    time.sleep(1.0)
    assert len(echo_jobs(jm)) == 2
    assert {f.key for f in jm.rules.firings("raw-echo")} == {
        "raw/411371/R22.fits",
        "raw/411371/R23.fits",
    }


def test_a_file_not_matching_the_pattern_does_not_fire(
    file_settings: Settings, data_dir: Path, opened: list[Jobmill]
) -> None:
    jm = start_rules(build(file_settings))
    opened.append(jm)
    write(data_dir / "raw" / "1" / "R1.txt")
    write(data_dir / "raw" / "1" / "deeper" / "R1.fits")
    write(data_dir / "raw" / "2" / "R2.fits")
    wait_for(lambda: echo_jobs(jm))
    time.sleep(0.8)
    assert [j.parameters["message"].split(" ")[0] for j in echo_jobs(jm)] == ["2/R2"]


def test_two_instances_on_one_database_fire_once(
    file_settings: Settings, data_dir: Path, opened: list[Jobmill]
) -> None:
    first = start_rules(build(file_settings))
    second = start_rules(build(file_settings.with_(home=file_settings.home.parent / "home2")))
    opened.extend([first, second])
    for i in range(20):
        write(data_dir / "raw" / str(i) / "C.fits")
    wait_for(lambda: len(echo_jobs(first)) >= 20)
    time.sleep(1.0)
    jobs = echo_jobs(first)
    assert len(jobs) == 20
    assert len({j.run_id for j in jobs}) == 20
    assert len(first.rules.firings("raw-echo", limit=100)) == 20  # type: ignore[union-attr]


def test_files_that_arrived_while_down_fire_at_start_up(
    file_settings: Settings, data_dir: Path, opened: list[Jobmill]
) -> None:
    before = start_rules(build(file_settings))
    write(data_dir / "raw" / "1" / "A.fits")
    wait_for(lambda: len(echo_jobs(before)) == 1)
    before.close()
    write(data_dir / "raw" / "2" / "B.fits")  # while jobmill is down
    old = data_dir / "raw" / "3" / "C.fits"
    write(old)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    after = start_rules(build(file_settings))
    opened.append(after)
    wait_for(lambda: len(echo_jobs(after)) == 3)
    time.sleep(1.0)
    messages = sorted(j.parameters["message"].split(" ")[0] for j in echo_jobs(after))
    assert messages == ["1/A", "2/B", "3/C"]


def test_a_scanned_root_fires_once(
    file_settings: Settings, data_dir: Path, opened: list[Jobmill]
) -> None:
    """The scan fallback (network filesystems) sees the same file at every scan."""
    settings = file_settings.with_(scan_roots=(str(data_dir),))
    jm = start_rules(build(settings))
    opened.append(jm)
    write(data_dir / "raw" / "5" / "S.fits")
    wait_for(lambda: echo_jobs(jm), timeout=20)
    time.sleep(1.5)  # several scans
    assert len(echo_jobs(jm)) == 1


# -- job rules ------------------------------------------------------------------------------


def test_a_finished_job_creates_the_downstream_job_from_its_results(
    settings: Settings, tmp_path: Path, data_dir: Path
) -> None:
    jm = build(rules_settings(settings, tmp_path, data_dir, JOB_RULE))
    assert jm.rules is not None
    jm.rules.interval = 0.1
    try:
        with app_client(jm) as client:
            sleep = client.post(
                "/api/v1/jobs", json={"type": "sleep", "parameters": {"seconds": 0}}
            )
            assert sleep.status_code == 201, sleep.text
            upstream = sleep.json()["id"]
            assert wait_phase(client, upstream)["phase"] == "COMPLETED"
            failed = client.post(
                "/api/v1/jobs", json={"type": "sleep", "parameters": {"seconds": 0, "code": 3}}
            ).json()["id"]
            assert wait_phase(client, failed)["phase"] == "ERROR"
            jobs = wait_for(lambda: echo_jobs(jm))
            time.sleep(0.8)
            assert len(echo_jobs(jm)) == 1  # not for the failed one
            result = jm.jobs.results(_admin(), upstream)[0].path
            assert jobs[0].parameters == {"message": f"slept 0 s, wrote {result}"}
            created = jm.store.events(jobs[0].id)[0]
            assert created.actor == "rule:after-sleep"
            assert created.data["rule"]["key"] == upstream
            assert created.data["rule"]["upstream"] == upstream
            firings = client.get(f"{RULES}/after-sleep/firings").json()
            assert [(f["key"], f["job_id"]) for f in firings] == [(upstream, jobs[0].id)]
    finally:
        jm.close()
    # A restart reads the events again from its cursor (and the look-back): nothing twice.
    again = build(rules_settings(settings, tmp_path, data_dir, JOB_RULE))
    try:
        assert again.rules is not None
        again.rules.tick()
        again.rules.tick()
        assert len(echo_jobs(again)) == 1
    finally:
        again.close()


def _admin():  # type: ignore[no-untyped-def]
    from jobmill.service.jobs import User

    return User("tester", admin=True)


def test_a_job_rule_fires_for_jobs_that_ended_while_it_was_down(
    settings: Settings, tmp_path: Path, data_dir: Path
) -> None:
    """The cursor is in the database: ends recorded while no rules ran still fire."""
    rule_settings = rules_settings(settings, tmp_path, data_dir, JOB_RULE)
    first = build(rule_settings)
    assert first.rules is not None
    first.rules.tick()  # creates the cursor
    first.close()
    worker = build(settings.with_(data_root=data_dir))  # another jobmill without the rule
    try:
        with app_client(worker) as client:
            job = client.post("/api/v1/jobs", json={"type": "sleep", "parameters": {"seconds": 0}})
            wait_phase(client, job.json()["id"])
    finally:
        worker.close()
    later = build(rule_settings)
    try:
        assert later.rules is not None
        assert later.rules.tick() == 1
        assert later.rules.tick() == 0
    finally:
        later.close()


# -- schedules ------------------------------------------------------------------------------


def test_a_schedule_fires_once_per_slot_and_only_the_latest_missed_one(
    settings: Settings, tmp_path: Path, data_dir: Path
) -> None:
    schedule_settings = rules_settings(settings, tmp_path, data_dir, SCHEDULE_RULE)
    start = datetime(2026, 11, 22, 12, 2, 10, tzinfo=UTC)
    one, two = build(schedule_settings), build(schedule_settings)
    try:
        for jm in (one, two):
            assert jm.rules is not None
            jm.rules.started_at = start
            jm.rules.clock = lambda: start
        assert one.rules is not None and two.rules is not None
        assert one.rules.tick(start + timedelta(minutes=1)) == 0  # 12:00 was before the start
        assert one.rules.tick(start + timedelta(minutes=3)) == 1  # 12:05
        assert two.rules.tick(start + timedelta(minutes=3)) == 0  # the other instance: no
        assert one.rules.tick(start + timedelta(minutes=4)) == 0
        # A long stop: 13:45 fires, not the 20 slots in between.
        assert two.rules.tick(start + timedelta(minutes=105)) == 1
        assert one.rules.tick(start + timedelta(minutes=105)) == 0
        messages = sorted(j.parameters["message"] for j in echo_jobs(one))
        assert messages == ["slot 2026-11-22T12:05:00Z", "slot 2026-11-22T13:45:00Z"]
    finally:
        one.close()
        two.close()
    restarted = build(schedule_settings)
    try:
        assert restarted.rules is not None
        assert restarted.rules.tick(start + timedelta(minutes=106)) == 0
        assert restarted.rules.tick(start + timedelta(minutes=118)) == 1  # 14:00, after restart
    finally:
        restarted.close()


# -- the API --------------------------------------------------------------------------------


@pytest.fixture
def api(file_settings: Settings) -> Iterator[tuple[Jobmill, TestClient]]:
    jm = build(file_settings)
    try:
        with app_client(jm) as client:
            yield jm, client
    finally:
        jm.close()


SCHEDULE_BODY = {
    "name": "hourly",
    "schedule": "0 * * * *",
    "create": "echo",
    "parameters": {"message": "hour {slot}"},
}


def test_rules_api_create_list_switch_delete(api: tuple[Jobmill, TestClient]) -> None:
    _jm, client = api
    created = client.post(RULES, json=SCHEDULE_BODY)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["kind"] == "schedule" and body["source"] == "api" and body["enabled"]
    assert body["created_by"] == "tester" and body["next_slot"].endswith(":00:00.000Z")
    names = {r["name"]: r for r in client.get(RULES).json()}
    assert set(names) == {
        "raw-echo",
        "hourly",
        "echo-incoming",
        "echo-after-sleep",
        "daily-echo",
        "arp-run-start",
        "arp-run-end",
    }
    assert not names["daily-echo"]["enabled"]  # the examples ship disabled
    assert names["raw-echo"]["source"] == "file" and names["raw-echo"]["origin"].endswith(":3")
    assert client.post(RULES, json=SCHEDULE_BODY).status_code == 409
    assert client.post(f"{RULES}/hourly/disable").json()["enabled"] is False
    assert client.get(f"{RULES}/hourly").json()["enabled"] is False
    assert client.post(f"{RULES}/hourly/enable").json()["enabled"] is True
    # A rules-file rule: switchable, not deletable, its name not reusable.
    assert client.post(f"{RULES}/raw-echo/disable").json()["enabled"] is False
    assert client.get(f"{RULES}/raw-echo").json()["enabled"] is False
    refused = client.delete(f"{RULES}/raw-echo")
    assert refused.status_code == 409 and refused.json()["error"]["field"] == "name"
    clash = client.post(RULES, json={**SCHEDULE_BODY, "name": "raw-echo"})
    assert clash.status_code == 409
    assert client.delete(f"{RULES}/hourly").status_code == 204
    assert client.get(f"{RULES}/hourly").status_code == 404
    assert client.get(f"{RULES}/hourly/firings").status_code == 404
    assert client.get(f"{RULES}/raw-echo/firings").json() == []


def test_an_api_rule_hidden_by_a_rules_file_rule_can_be_deleted(
    api: tuple[Jobmill, TestClient],
) -> None:
    """An API rule stored before the rules file declared a rule of the same name: the file's
    rule wins, switching it is refused until the hidden API rule is deleted, which works."""
    jm, client = api
    assert jm.rules is not None
    jm.rules.store.add("raw-echo", {**SCHEDULE_BODY, "name": "raw-echo"}, enabled=True, actor="x")
    assert client.get(f"{RULES}/raw-echo").json()["source"] == "file"
    refused = client.post(f"{RULES}/raw-echo/disable")
    assert refused.status_code == 409 and "delete it first" in refused.json()["error"]["message"]
    assert client.get(f"{RULES}/raw-echo").json()["enabled"] is True  # nothing changed
    assert client.delete(f"{RULES}/raw-echo").status_code == 204  # the hidden API rule
    assert client.get(f"{RULES}/raw-echo").json()["source"] == "file"
    assert client.post(f"{RULES}/raw-echo/disable").json()["enabled"] is False
    assert client.delete(f"{RULES}/raw-echo").status_code == 409  # the file's own rule


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schedule": "61 * * * *"}, "schedule"),
        ({"create": "nope"}, "create"),
        ({"parameters": {"message": "{nope}"}}, "parameters.message"),
        ({"parameters": {}}, "parameters.message"),
        ({"name": "bad name!"}, "name"),
        ({"colour": "red"}, "colour"),
        ({"file": "raw/{x}.fits"}, "file"),
        ({"stable_seconds": -1, "schedule": None, "file": "a/{x}"}, "stable_seconds"),
    ],
)
def test_a_bad_rule_is_a_422_naming_the_field(
    api: tuple[Jobmill, TestClient], change: dict[str, object], field: str
) -> None:
    _jm, client = api
    body = {k: v for k, v in {**SCHEDULE_BODY, **change}.items() if v is not None}
    answer = client.post(RULES, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field, answer.text
    assert client.get(f"{RULES}/{body.get('name')}").status_code == 404


def test_a_rule_body_that_is_not_an_object_is_a_422(api: tuple[Jobmill, TestClient]) -> None:
    _jm, client = api
    answer = client.post(RULES, json=[1, 2])
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "body"


def test_only_administrators_change_rules(api: tuple[Jobmill, TestClient]) -> None:
    jm, client = api
    jm.store.tokens.add("bob", "bob-secret", admin=False)
    bob = {"Authorization": "Bearer bob-secret"}
    assert client.get(RULES, headers=bob).status_code == 200
    assert client.post(RULES, json=SCHEDULE_BODY, headers=bob).status_code == 403
    assert client.post(f"{RULES}/raw-echo/disable", headers=bob).status_code == 403
    assert client.delete(f"{RULES}/raw-echo", headers=bob).status_code == 403
    assert client.get(f"{RULES}/raw-echo", headers=bob).json()["enabled"] is True


def test_an_api_file_rule_fires_and_a_disabled_rule_does_not(
    api: tuple[Jobmill, TestClient], data_dir: Path
) -> None:
    jm, client = api
    assert jm.rules is not None
    jm.rules.interval = 0.1
    jm.rules._wake.set()
    body = {
        "name": "api-files",
        "file": "in/{name}.dat",
        "create": "echo",
        "parameters": {"message": "{name}"},
    }
    assert client.post(RULES, json=body).status_code == 201
    client.post(f"{RULES}/raw-echo/disable")
    write(data_dir / "raw" / "1" / "X.fits")
    write(data_dir / "in" / "first.dat")
    wait_for(lambda: client.get(f"{RULES}/api-files/firings").json())
    firing = client.get(f"{RULES}/api-files/firings").json()[0]
    assert firing["key"] == "in/first.dat" and firing["error"] is None
    job = client.get(f"/api/v1/jobs/{firing['job_id']}").json()
    assert job["parameters"] == {"message": "first"}
    time.sleep(0.8)
    assert client.get(f"{RULES}/raw-echo/firings").json() == []
    # Enabled again, it looks at what is there: the file that came while it was off fires.
    client.post(f"{RULES}/raw-echo/enable")
    wait_for(lambda: client.get(f"{RULES}/raw-echo/firings").json())


# -- the command line -----------------------------------------------------------------------


def test_cli_rules_list_and_show(live: LiveServer) -> None:
    from typer.testing import CliRunner

    from jobmill.cli.main import app

    runner = CliRunner()
    listed = runner.invoke(app, ["--url", live.url, "rules", "list"])
    assert listed.exit_code == 0, listed.output
    assert "daily-echo" in listed.output and "0 6 * * *" in listed.output
    shown = runner.invoke(app, ["--url", live.url, "rules", "show", "echo-after-sleep"])
    assert shown.exit_code == 0, shown.output
    assert '"job": "sleep"' in shown.output and "enabled: no" in shown.output
    as_json = runner.invoke(app, ["--url", live.url, "rules", "show", "daily-echo", "--json"])
    assert json.loads(as_json.output)["firings"] == []
    missing = runner.invoke(app, ["--url", live.url, "rules", "show", "nope"])
    assert missing.exit_code == 1 and "no rule 'nope'" in missing.output


def test_concurrent_firings_of_one_key_create_one_job(jobmill: Jobmill) -> None:
    """The database decides: eight writers firing the same (rule, key) at once, one job."""
    import threading

    from jobmill.service.jobs import JobRequest, User
    from jobmill.storage.rules import RuleStore

    store = RuleStore(jobmill.store)
    user = User("tester")
    results: list[Job | None] = []
    barrier = threading.Barrier(8)

    def fire() -> None:
        new = jobmill.jobs.validate(user, JobRequest("echo", {"message": "m"}))
        barrier.wait()
        results.append(store.fire("race", "the-key", kind="file", new=new))

    threads = [threading.Thread(target=fire) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert len([job for job in results if job is not None]) == 1
    assert len(echo_jobs(jobmill)) == 1
    assert [f.key for f in store.firings("race")] == ["the-key"]


MARKER_RULE = """
rules:
  - name: marked
    file: "drop/{name}.dat"
    marker: true
    create: echo
    parameters:
      message: "{name}"
"""


def test_a_marker_rule_waits_for_the_marker(
    settings: Settings, tmp_path: Path, data_dir: Path
) -> None:
    jm = start_rules(build(rules_settings(settings, tmp_path, data_dir, MARKER_RULE)))
    try:
        write(data_dir / "drop" / "a.dat")
        time.sleep(1.5)
        assert echo_jobs(jm) == []  # complete only once drop/a.dat.done exists
        write(data_dir / "drop" / "a.dat.done")
        jobs = wait_for(lambda: echo_jobs(jm))
        assert [j.parameters for j in jobs] == [{"message": "a"}]
    finally:
        jm.close()


TYPED_RULE = """
rules:
  - name: typed
    file: "n/{seconds}.x"
    create: sleep
    parameters:
      seconds: "{seconds}"
"""


def test_a_value_the_job_type_refuses_is_a_firing_with_its_error(
    settings: Settings, tmp_path: Path, data_dir: Path
) -> None:
    jm = start_rules(build(rules_settings(settings, tmp_path, data_dir, TYPED_RULE)))
    try:
        assert jm.rules is not None
        write(data_dir / "n" / "soon.x")
        write(data_dir / "n" / "5.x")
        firings = wait_for(
            lambda: len(jm.rules.firings("typed")) == 2 and jm.rules.firings("typed")
        )
        by_key = {f.key: f for f in firings}
        assert by_key["n/soon.x"].job_id is None
        assert "parameters.seconds" in (by_key["n/soon.x"].error or "")
        assert by_key["n/5.x"].error is None
        assert jm.store.require(by_key["n/5.x"].job_id or "").parameters["seconds"] == 5
        write(data_dir / "n" / "soon.x", "again")  # not tried again
        time.sleep(1.0)
        assert len(jm.rules.firings("typed")) == 2
    finally:
        jm.close()
