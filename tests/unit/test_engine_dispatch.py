"""The engine's grouped dispatch with a scripted executor: claim many in one transaction,
submit per ``batch_key`` group with ``submit_many``, record every id in one transaction; and
what happens when the backend refuses one job, refuses a whole group, stops part way, or
cannot be reached."""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from datetime import timedelta

import pytest

from jobmill.domain.jobs import Job, NewJob, utcnow
from jobmill.domain.lifecycle import Phase, Reason
from jobmill.executors.base import (
    ExecutorUnavailable,
    LaunchSpec,
    NativeStatus,
    PartlySubmitted,
    submit_each,
)
from jobmill.factory import Jobmill
from jobmill.service import engine as engine_module
from jobmill.service.engine import Engine


class Scripted:
    """An executor whose ``submit_many`` follows a script; records every group it is given."""

    name = "scripted"

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.refuse: set[str] = set()  # messages whose job the backend refuses
        self.all_or_nothing = False  # one refused job fails the whole group (HTCondor)
        self.down = False
        self.cancelled: list[str] = []
        self.count = 0

    def batch_key(self, spec: LaunchSpec) -> Hashable:
        return spec.argv[-1].startswith("b")  # two kinds of jobs

    def submit(self, spec: LaunchSpec) -> str:
        if self.down:
            raise ExecutorUnavailable("backend down")
        if spec.argv[-1] in self.refuse:
            raise OSError(f"refused {spec.argv[-1]}")
        self.count += 1
        return f"n{self.count}"

    def submit_many(self, specs: Sequence[LaunchSpec]) -> list[str]:
        self.groups.append([spec.argv[-1] for spec in specs])
        if (
            self.all_or_nothing
            and len(specs) > 1
            and any(spec.argv[-1] in self.refuse for spec in specs)
        ):
            raise OSError("the group was refused")
        return submit_each(self, specs)

    def render(self, spec: LaunchSpec) -> str:
        return ""

    def poll(self, native_ids: Sequence[str]) -> dict[str, NativeStatus]:
        return {nid: NativeStatus(Phase.QUEUED, "pending") for nid in native_ids}

    def cancel(self, native_id: str) -> None:
        self.cancelled.append(native_id)

    def tick(self) -> float | None:
        return None

    def watch_fds(self) -> dict[int, str]:
        return {}

    def find(self, job_id: str) -> str | None:
        return None

    def details(self, native_id: str) -> str:
        return ""


@pytest.fixture
def scripted() -> Scripted:
    return Scripted()


@pytest.fixture
def engine(jobmill: Jobmill, scripted: Scripted) -> Engine:
    return Engine(
        jobmill.settings, jobmill.store, jobmill.engine.dispatcher, {"scripted": scripted}
    )


def queue(jm: Jobmill, *messages: str) -> list[Job]:
    new = [
        NewJob(
            type="echo",
            owner="tester",
            parameters={"message": message},
            executor="scripted",
            execution_duration=60,
            destruction_at=utcnow() + timedelta(days=1),
            reason=Reason.CAPACITY.value,
        )
        for message in messages
    ]
    return jm.store.create(new, actor="tester")


def state(jm: Jobmill, job: Job) -> tuple[str, str | None, str | None]:
    now = jm.store.require(job.id)
    return now.phase.value, now.reason, now.native_id


def test_groups_by_batch_key_and_records_every_id(
    jobmill: Jobmill, engine: Engine, scripted: Scripted
) -> None:
    jobs = queue(jobmill, "a1", "b1", "a2", "b2", "a3")
    engine._dispatch()
    assert scripted.groups == [["a1", "a2", "a3"], ["b1", "b2"]]
    for job in jobs:
        phase, reason, native = state(jobmill, job)
        assert (phase, reason) == ("QUEUED", "backend") and native
        assert engine.tracked[job.id].native_id == native
        names = [e.name for e in jobmill.store.events(job.id)]
        assert names == ["created", "wait", "submitted"]
    submitted = jobmill.store.events(jobs[0].id)[-1].data
    assert submitted["submitted_with"] == 3 and "slow" not in submitted


def test_more_than_one_group_of_work_does_not_wait_for_the_poll_interval(
    jobmill: Jobmill, engine: Engine, scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []

    class Poller:
        def register(self, fd: int, mask: int) -> None:
            pass

        def poll(self, timeout: float) -> list[tuple[int, int]]:
            waits.append(timeout)
            return []

    monkeypatch.setattr(engine_module, "SUBMIT_BATCH", 2)
    monkeypatch.setattr(engine_module.select, "poll", Poller)
    queue(jobmill, "a1", "a2", "a3")
    engine._queued_hint = True
    engine._next_reconcile = engine._next_sweep = engine._next_retry = time.monotonic() + 60
    engine._cycle()
    engine._cycle()
    assert scripted.groups == [["a1", "a2"], ["a3"]]
    assert waits[0] == 0  # more jobs were waiting: no sleep before the next group
    assert waits[1] > 1000  # all handed over: sleep until the next reconciliation


def test_a_refused_job_fails_alone(jobmill: Jobmill, engine: Engine, scripted: Scripted) -> None:
    jobs = queue(jobmill, "a1", "a2", "a3")
    scripted.refuse = {"a2"}
    engine._dispatch()
    assert state(jobmill, jobs[0])[0] == state(jobmill, jobs[2])[0] == "QUEUED"
    failed = jobmill.store.require(jobs[1].id)
    assert failed.phase is Phase.ERROR and failed.error == "cannot start the job: refused a2"
    assert scripted.groups == [["a1", "a2", "a3"], ["a3"]]  # the rest after the partial group


def test_a_group_refused_as_a_whole_is_tried_job_by_job(
    jobmill: Jobmill, engine: Engine, scripted: Scripted
) -> None:
    jobs = queue(jobmill, "a1", "a2", "a3")
    scripted.refuse, scripted.all_or_nothing = {"a2"}, True
    engine._dispatch()
    assert scripted.groups == [["a1", "a2", "a3"], ["a1"], ["a2"], ["a3"]]
    assert [state(jobmill, job)[0] for job in jobs] == ["QUEUED", "ERROR", "QUEUED"]
    assert state(jobmill, jobs[0])[2] and state(jobmill, jobs[2])[2]


def test_an_unreachable_backend_keeps_the_jobs_for_a_retry(
    jobmill: Jobmill, engine: Engine, scripted: Scripted
) -> None:
    jobs = queue(jobmill, "a1", "a2")
    scripted.down = True
    engine._dispatch()
    for job in jobs:
        assert state(jobmill, job) == ("QUEUED", Reason.BACKEND_UNAVAILABLE.value, None)
    scripted.down = False
    engine._retry_unavailable()
    engine._dispatch()
    assert all(state(jobmill, job)[2] for job in jobs)


def test_stopped_part_way_by_the_backend(jobmill: Jobmill, engine: Engine) -> None:
    class HalfDown(Scripted):
        def submit_many(self, specs: Sequence[LaunchSpec]) -> list[str]:
            raise PartlySubmitted(["x1"], ExecutorUnavailable("gone after one"))

    engine.executors["scripted"] = HalfDown()
    jobs = queue(jobmill, "a1", "a2", "a3")
    engine._dispatch()
    assert state(jobmill, jobs[0]) == ("QUEUED", "backend", "x1")
    for job in jobs[1:]:
        assert state(jobmill, job) == ("QUEUED", Reason.BACKEND_UNAVAILABLE.value, None)


def test_a_job_deleted_while_it_was_submitted_is_cancelled(
    jobmill: Jobmill, engine: Engine, scripted: Scripted
) -> None:
    (job,) = queue(jobmill, "a1")
    real = scripted.submit_many

    def delete_first(specs: Sequence[LaunchSpec]) -> list[str]:
        jobmill.store.delete(job.id)
        return real(specs)

    scripted.submit_many = delete_first  # type: ignore[method-assign]
    engine._dispatch()
    assert scripted.cancelled == ["n1"] and job.id not in engine.tracked
