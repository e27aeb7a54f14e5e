"""The engine follows what a backend says through the transition table: the one action from the
recorded phase to the reported one (start, hold, suspend, resume, release, requeue), UNKNOWN
once the backend cannot say for two polls in a row, and back as soon as it can."""

from __future__ import annotations

from collections.abc import Sequence

from jobmill.domain.lifecycle import Phase
from jobmill.executors.base import NativeStatus
from jobmill.factory import Jobmill
from jobmill.service.engine import LOSE_CONTACT_AFTER, Engine
from tests.unit.test_engine_dispatch import Scripted, queue


class Answering(Scripted):
    """A scripted backend whose ``poll`` answers what the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = NativeStatus(Phase.QUEUED, "PEND")

    def poll(self, native_ids: Sequence[str]) -> dict[str, NativeStatus]:
        return {nid: self.answer for nid in native_ids}


def test_the_engine_records_what_the_backend_says_through_the_table(jobmill: Jobmill) -> None:
    backend = Answering()
    engine = Engine(
        jobmill.settings, jobmill.store, jobmill.engine.dispatcher, {"scripted": backend}
    )
    [job] = queue(jobmill, "a1")
    engine._dispatch()
    assert job.id in engine.tracked

    def poll(phase: Phase, state: str) -> tuple[str, str | None]:
        backend.answer = NativeStatus(phase, state)
        engine._apply("scripted", backend.poll([engine.tracked[job.id].native_id]))
        now = jobmill.store.require(job.id)
        return now.phase.value, now.reason

    assert poll(Phase.EXECUTING, "RUN") == ("EXECUTING", None)
    assert LOSE_CONTACT_AFTER == 2
    assert poll(Phase.UNKNOWN, "UNKWN") == ("EXECUTING", None)  # once: not yet
    assert poll(Phase.UNKNOWN, "UNKWN") == ("UNKNOWN", None)
    assert poll(Phase.UNKNOWN, "UNKWN") == ("UNKNOWN", None)  # no second event
    assert poll(Phase.EXECUTING, "RUN") == ("EXECUTING", None)
    assert poll(Phase.SUSPENDED, "USUSP") == ("SUSPENDED", None)
    assert poll(Phase.EXECUTING, "RUN") == ("EXECUTING", None)
    assert poll(Phase.UNKNOWN, "UNKWN") == ("EXECUTING", None)  # the count started again
    assert poll(Phase.UNKNOWN, "UNKWN") == ("UNKNOWN", None)
    assert poll(Phase.QUEUED, "PEND") == ("QUEUED", "backend")  # requeued by the backend
    assert poll(Phase.HELD, "PSUSP") == ("HELD", None)
    assert poll(Phase.QUEUED, "PEND") == ("QUEUED", "backend")
    assert poll(Phase.UNKNOWN, "missing") == ("QUEUED", "backend")  # between two queues once
    assert poll(Phase.COMPLETED, "DONE") == ("COMPLETED", None)
    names = [e.name for e in jobmill.store.events(job.id)]
    assert names == [
        "created", "wait", "submitted", "start", "lose_contact", "start", "suspend", "resume",
        "lose_contact", "requeue", "hold", "release", "complete",
    ]  # fmt: skip
    lost = next(e for e in jobmill.store.events(job.id) if e.name == "lose_contact")
    assert (lost.from_phase, lost.to_phase, lost.data["state"]) == (
        Phase.EXECUTING,
        Phase.UNKNOWN,
        "UNKWN",
    )


class PerJob(Scripted):
    """A scripted backend whose ``poll`` answers each native id as the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, NativeStatus] = {}

    def poll(self, native_ids: Sequence[str]) -> dict[str, NativeStatus]:
        return {nid: self.answers[nid] for nid in native_ids if nid in self.answers}


def test_a_slot_freed_and_taken_again_is_recorded_end_first_in_one_transaction(
    jobmill: Jobmill,
) -> None:
    """One job ended and a job handed over took its slot (a local shepherd's news in one read):
    the end is recorded before the start, so the database never shows more jobs EXECUTING
    than there are slots; a job that started and ended at once gets its start, then its end."""
    backend = PerJob()
    executors = {"scripted": backend}
    engine = Engine(jobmill.settings, jobmill.store, jobmill.engine.dispatcher, executors)
    running, waiting, quick = queue(jobmill, "a1", "a2", "a3")
    engine._dispatch()
    ids = {job.id: engine.tracked[job.id].native_id for job in (running, waiting, quick)}
    backend.answers = {ids[running.id]: NativeStatus(Phase.EXECUTING, "running")}
    engine._apply("scripted", backend.poll(list(backend.answers)))
    assert jobmill.store.require(running.id).phase is Phase.EXECUTING
    backend.answers = {
        ids[waiting.id]: NativeStatus(Phase.EXECUTING, "running", native_id="11@1"),
        ids[running.id]: NativeStatus(Phase.COMPLETED, "exited", exit_code=0),
        ids[quick.id]: NativeStatus(Phase.COMPLETED, "exited", exit_code=0, native_id="12@1"),
    }
    engine._apply("scripted", backend.poll(list(backend.answers)))
    seq = {
        (job.id, event.name): event.seq
        for job in (running, waiting, quick)
        for event in jobmill.store.events(job.id)
    }
    assert seq[(running.id, "complete")] < seq[(waiting.id, "start")]
    assert seq[(quick.id, "start")] < seq[(quick.id, "complete")]
    now = {job.id: jobmill.store.require(job.id) for job in (running, waiting, quick)}
    assert [now[j.id].phase for j in (running, waiting, quick)] == [
        Phase.COMPLETED, Phase.EXECUTING, Phase.COMPLETED,
    ]  # fmt: skip
    assert now[waiting.id].native_id == "11@1" and now[quick.id].native_id == "12@1"
