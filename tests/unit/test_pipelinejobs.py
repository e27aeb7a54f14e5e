"""The PipelineJobs table (domain.pipelinejobs): exactly the reference's, every (state, event)
pair, the derived state, the Agave status map, and the diagram in docs/pipelinejobs.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobmill.domain.errors import Conflict, Forbidden
from jobmill.domain.lifecycle import Action, Phase
from jobmill.domain.lifecycle import allowed as phase_allowed
from jobmill.domain.pipelinejobs import (
    AGAVE_STATUSES,
    PHASE_STATES,
    TRANSITIONS,
    PipelineEvent,
    State,
    agave_event,
    authorise,
    derive,
    events_table,
    mermaid_diagram,
    next_state,
    parse_event,
    step,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "pipelinejobs.md"

S = State
E = PipelineEvent
ALL = set(State)

# The reference's table (seed-systems.md e.1), written out independently of the module:
# event -> (sources, target; None = the same state).
REFERENCE: dict[str, tuple[set[State], State | None]] = {
    "create": ({S.CREATED}, S.CREATED),
    "run": ({S.CREATED, S.RUNNING}, S.RUNNING),
    "update": ({S.CREATED, S.RUNNING, S.VALIDATING, S.INDEXING}, None),
    "resource": ({S.CREATED, S.RUNNING}, None),
    "fail": ({S.RUNNING, S.VALIDATING, S.INDEXING, S.CREATED}, S.FAILED),
    "finish": ({S.RUNNING, S.FINISHED}, S.FINISHED),
    "index": ({S.INDEXING, S.FINISHED}, S.INDEXING),
    "indexed": ({S.FINISHED, S.INDEXING}, S.FINISHED),
    "validate": ({S.FINISHED, S.VALIDATED}, S.VALIDATING),
    "validated": ({S.VALIDATED, S.VALIDATING}, S.VALIDATED),
    "reject": ({S.VALIDATING}, S.REJECTED),
    "finalize": ({S.VALIDATED}, S.FINALIZED),
    "retire": (
        {S.REJECTED, S.FINALIZED, S.FAILED, S.FINISHED, S.VALIDATING, S.VALIDATED},
        S.RETIRED,
    ),
    "reset": (ALL, S.RESET),
    "ready": ({S.RESET}, S.CREATED),
}


def test_states_and_events_are_the_references() -> None:
    assert [s.value for s in State] == [
        "CREATED", "RUNNING", "FAILED", "FINISHED", "INDEXING", "VALIDATING", "VALIDATED",
        "REJECTED", "FINALIZED", "RETIRED", "RESET",
    ]  # fmt: skip
    assert [e.value for e in PipelineEvent] == [
        "create", "run", "update", "resource", "fail", "finish", "index", "indexed",
        "validate", "validated", "finalize", "reject", "retire", "reset", "ready",
    ]  # fmt: skip
    assert {e.value for e in TRANSITIONS} == set(REFERENCE)


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", list(PipelineEvent))
def test_every_state_event_pair(state: State, event: PipelineEvent) -> None:
    """11 x 15 pairs: the reference's allowed pairs lead where it says, the others are None."""
    sources, target = REFERENCE[event.value]
    expected = (target or state) if state in sources else None
    assert next_state(state, event) == expected


def test_case_insensitive_event_names() -> None:
    assert parse_event("FINISH") is E.FINISH
    assert parse_event(" Run ") is E.RUN
    assert parse_event("updated") is None  # the reference's broken Agave mapping
    assert parse_event(3) is None


def test_derived_state_follows_the_phase_without_curation() -> None:
    assert derive(Phase.QUEUED, None) is S.CREATED
    assert derive(Phase.EXECUTING, None) is S.RUNNING
    assert derive(Phase.COMPLETED, None) is S.FINISHED
    assert derive(Phase.ABORTED, None) is S.FAILED
    assert derive(Phase.ARCHIVED, None) is S.RETIRED
    assert derive(Phase.COMPLETED, S.VALIDATED) is S.VALIDATED
    assert set(PHASE_STATES) == set(Phase)


def test_external_run_queues_and_starts_a_pending_job() -> None:
    change = step(E.RUN, Phase.PENDING, None, external=True)
    assert change.actions == (Action.RUN, Action.START)
    assert change.target is S.RUNNING and change.curation is None
    change = step(E.RUN, Phase.QUEUED, None, external=True)
    assert change.actions == (Action.START,)
    assert step(E.FINISH, Phase.EXECUTING, None, external=True).actions == (Action.COMPLETE,)
    assert step(E.FAIL, Phase.PENDING, None, external=True).actions == (Action.FAIL,)
    assert all(phase_allowed(Phase.EXECUTING, a) for a in (Action.COMPLETE, Action.FAIL))


def test_curation_events_keep_the_phase() -> None:
    change = step(E.VALIDATE, Phase.COMPLETED, None, external=False)
    assert change.actions == () and change.curation is S.VALIDATING
    change = step(E.INDEXED, Phase.COMPLETED, S.INDEXING, external=False)
    assert change.curation is None and change.target is S.FINISHED  # the phase says it again
    change = step(E.FAIL, Phase.COMPLETED, S.VALIDATING, external=True)
    assert change.actions == () and change.curation is S.FAILED
    # reset then ready on a job that ran: CREATED is kept as a curation status
    change = step(E.READY, Phase.COMPLETED, S.RESET, external=True)
    assert change.curation is S.CREATED and change.actions == ()
    change = step(E.RUN, Phase.COMPLETED, S.CREATED, external=True)
    assert change.curation is S.RUNNING and change.actions == ()


def test_refused_pairs_name_state_and_event() -> None:
    with pytest.raises(Conflict) as caught:
        step(E.FINALIZE, Phase.COMPLETED, None, external=True)
    assert caught.value.to_dict()["state"] == "FINISHED"
    assert caught.value.to_dict()["event"] == "finalize"


def test_a_job_jobmill_runs_cannot_be_claimed_run_or_finished() -> None:
    with pytest.raises(Conflict, match="phases emit run, finish and fail"):
        step(E.RUN, Phase.QUEUED, None, external=False)
    with pytest.raises(Conflict):
        step(E.FINISH, Phase.EXECUTING, None, external=False)
    assert step(E.RUN, Phase.EXECUTING, None, external=False).actions == ()  # RUNNING again
    assert step(E.RESOURCE, Phase.QUEUED, None, external=False).curation is None


def test_reserved_and_admin_events() -> None:
    with pytest.raises(Forbidden, match="reserved"):
        authorise(E.CREATE, admin=True)
    for event in (E.RESET, E.READY):
        with pytest.raises(Forbidden, match="administrator"):
            authorise(event, admin=False)
        authorise(event, admin=True)
    authorise(E.FINISH, admin=False)


@pytest.mark.parametrize(
    ("status", "event"),
    [
        ("RUNNING", "run"),
        ("FINISHED", "finish"),
        ("FAILED", "fail"),
        ("STOPPED", "fail"),
        ("ARCHIVING_FAILED", "fail"),
        ("DELETED", "fail"),
        ("KILLED", "update"),
        ("HEARTBEAT", "update"),
        ("PENDING", "resource"),
        ("QUEUED", "resource"),
        ("STAGING_INPUTS", "resource"),
        ("ARCHIVING_FINISHED", "resource"),
        ("UPDATED", "update"),
        ("${JOB_STATUS}", "update"),
        ("running", "run"),
    ],
)
def test_agave_statuses(status: str, event: str) -> None:
    assert agave_event(status).value == event


def test_agave_map_uses_only_real_events() -> None:
    assert all(isinstance(e, PipelineEvent) for e in AGAVE_STATUSES.values())


# -- docs/pipelinejobs.md -------------------------------------------------------------------


def test_the_diagram_and_table_in_the_docs_match_the_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"^```mermaid[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S)
    assert blocks == [mermaid_diagram()], "regenerate the diagram (docs/pipelinejobs.md)"
    assert events_table() in text, "regenerate the events table (docs/pipelinejobs.md)"


def test_the_diagram_has_every_transition() -> None:
    lines = set(mermaid_diagram().splitlines())
    for name, (sources, target) in REFERENCE.items():
        for source in sources:
            assert f"    {source} --> {target or source}: {name}" in lines


# -- the job type's indexer ----------------------------------------------------------------

INDEXER = """
name: index-it
command: ["true", "{job}", "{filters}", "{level}"]
parameters:
  job: {type: string, required: true}
  filters: {type: string, default: "[]"}
  level: {type: string, default: "1"}
"""


def _load(tmp_path: Path, text: str) -> dict[str, object]:
    from jobmill.domain.jobtype_files import load_jobtypes

    (tmp_path / "types.yaml").write_text(text)
    return dict(load_jobtypes([tmp_path / "types.yaml"]))


def test_a_job_type_declares_its_indexer(tmp_path: Path) -> None:
    from jobmill.domain.jobtypes import JobType

    types = _load(
        tmp_path,
        'name: reduce\ncommand: ["true"]\nindexer: {type: index-it, filters: ["a.*"]}\n---'
        + INDEXER,
    )
    reduce = types["reduce"]
    assert isinstance(reduce, JobType) and reduce.indexer is not None
    assert (reduce.indexer.type, reduce.indexer.filters, reduce.indexer.level) == (
        "index-it", ["a.*"], "1"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('name: r\ncommand: ["true"]\nindexer: {type: nope}\n', "indexer.type: no job type 'nope'"),
        (
            'name: r\ncommand: ["true"]\nindexer: {type: plain}\n---\n'
            'name: plain\ncommand: ["true"]\n',
            "lacks the parameters ['job', 'filters', 'level']",
        ),
        (
            'name: r\ncommand: ["true"]\nindexer: {type: index-it, filters: ["("]}\n---' + INDEXER,
            "filters[0]",
        ),
        (
            'name: r\ncommand: ["true"]\nindexer: {type: index-it, colour: red}\n---' + INDEXER,
            "colour",
        ),
    ],
)
def test_a_broken_indexer_is_refused_at_load(tmp_path: Path, text: str, problem: str) -> None:
    from jobmill.domain.errors import JobTypeFileError

    with pytest.raises(JobTypeFileError) as caught:
        _load(tmp_path, text)
    assert problem in str(caught.value)
    assert "types.yaml" in str(caught.value)
