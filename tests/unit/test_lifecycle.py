"""The transition table, checked over every (phase, action) pair, and its documented diagram."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from jobmill.domain import lifecycle
from jobmill.domain.lifecycle import (
    ACTIVE,
    ANY_REASON,
    CREATED,
    ENDED,
    LIVE,
    RUNNING,
    TERMINAL,
    TRANSITIONS,
    Action,
    Phase,
    Reason,
    Transition,
    action_between,
    actions_table,
    allowed,
    can_create,
    mermaid_diagram,
    reason_allowed,
    reason_of,
    reasons_set_by,
    target,
    transition,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"

P = Phase
R = Reason
RUNNING_OR_WAITING = {P.PENDING, P.QUEUED, P.EXECUTING, P.HELD, P.SUSPENDED, P.UNKNOWN}

# The documented table, written out independently of the module: any change to
# lifecycle.TRANSITIONS must be made here too, deliberately.
EXPECTED: dict[Action, tuple[set[Phase], Phase]] = {
    Action.RUN: ({P.PENDING}, P.QUEUED),
    Action.WAIT: ({P.QUEUED}, P.QUEUED),
    Action.START: ({P.QUEUED, P.HELD, P.UNKNOWN}, P.EXECUTING),
    Action.COMPLETE: ({P.QUEUED, P.EXECUTING, P.HELD, P.SUSPENDED, P.UNKNOWN}, P.COMPLETED),
    Action.FAIL: (RUNNING_OR_WAITING, P.ERROR),
    Action.ABORT: (RUNNING_OR_WAITING, P.ABORTED),
    Action.HOLD: ({P.QUEUED, P.EXECUTING, P.UNKNOWN}, P.HELD),
    Action.RELEASE: ({P.HELD}, P.QUEUED),
    Action.SUSPEND: ({P.EXECUTING, P.UNKNOWN}, P.SUSPENDED),
    Action.RESUME: ({P.SUSPENDED}, P.EXECUTING),
    Action.LOSE_CONTACT: ({P.QUEUED, P.EXECUTING, P.HELD, P.SUSPENDED}, P.UNKNOWN),
    Action.REQUEUE: ({P.EXECUTING, P.UNKNOWN}, P.QUEUED),
    Action.ARCHIVE: ({P.COMPLETED, P.ERROR, P.ABORTED}, P.ARCHIVED),
    Action.STAND_BY: ({P.QUEUED, P.EXECUTING, P.HELD, P.SUSPENDED, P.UNKNOWN}, P.QUEUED),
    Action.RESET: ({P.ERROR, P.ABORTED}, P.PENDING),
}

# The allowed reason changes, (before, after), written out the same way.
Changes = set[tuple[Reason | None, Reason | None]]
NONE_TO_NONE: Changes = {(None, None)}
ENDS: Changes = {(r, None) for r in [*Reason, None]}
EXPECTED_REASONS: dict[Action, Changes] = {
    Action.RUN: {(None, R.CAPACITY), (None, R.DATA), (None, R.UPSTREAM)},
    Action.WAIT: {
        (R.CAPACITY, R.BACKEND),
        (R.BACKEND, R.BACKEND_UNAVAILABLE),
        (R.BACKEND_UNAVAILABLE, R.CAPACITY),
        (R.BACKEND, R.CAPACITY),
        (R.DATA, R.CAPACITY),
        (R.UPSTREAM, R.CAPACITY),
        (R.CHILDREN, R.CAPACITY),
    },
    Action.START: {(R.CAPACITY, None), (R.BACKEND, None), (None, None)},
    Action.COMPLETE: {(R.BACKEND, None), (None, None)},
    Action.FAIL: ENDS,
    Action.ABORT: ENDS,
    Action.HOLD: {
        (R.CAPACITY, None),
        (R.BACKEND_UNAVAILABLE, None),
        (R.BACKEND, None),
        (None, None),
    },
    Action.RELEASE: {(None, R.CAPACITY), (None, R.BACKEND)},
    Action.SUSPEND: NONE_TO_NONE,
    Action.RESUME: NONE_TO_NONE,
    Action.LOSE_CONTACT: {(R.BACKEND, None), (None, None)},
    Action.REQUEUE: {(None, R.CAPACITY), (None, R.BACKEND)},
    Action.ARCHIVE: NONE_TO_NONE,
    Action.STAND_BY: {(R.BACKEND, R.CHILDREN), (None, R.CHILDREN)},
    Action.RESET: NONE_TO_NONE,
}

ALL_PAIRS = list(itertools.product(Phase, Action))


def test_the_phases_are_the_uws_phases() -> None:
    assert [p.value for p in Phase] == [
        "PENDING",
        "QUEUED",
        "EXECUTING",
        "COMPLETED",
        "ERROR",
        "ABORTED",
        "UNKNOWN",
        "HELD",
        "SUSPENDED",
        "ARCHIVED",
    ]


def test_every_action_has_exactly_one_row() -> None:
    assert set(TRANSITIONS) == set(Action) == set(EXPECTED)
    for action, row in TRANSITIONS.items():
        assert row.action is action
        assert transition(action) is row


@pytest.mark.parametrize(("phase", "action"), ALL_PAIRS, ids=[f"{p}-{a}" for p, a in ALL_PAIRS])
def test_every_phase_action_pair(phase: Phase, action: Action) -> None:
    sources, expected_target = EXPECTED[action]
    if phase in sources:
        assert allowed(phase, action)
        assert target(phase, action) is expected_target
    else:
        assert not allowed(phase, action)
        assert target(phase, action) is None


def test_table_rows_match_the_documented_table() -> None:
    for action, (sources, expected_target) in EXPECTED.items():
        assert TRANSITIONS[action].sources == frozenset(sources), action
        assert TRANSITIONS[action].target is expected_target, action


def test_terminal_and_active_sets() -> None:
    assert TERMINAL == {P.COMPLETED, P.ERROR, P.ABORTED, P.ARCHIVED}
    assert ENDED == TERMINAL - {P.ARCHIVED}
    assert ACTIVE == {P.QUEUED, P.EXECUTING, P.HELD, P.SUSPENDED, P.UNKNOWN}
    assert RUNNING == ACTIVE - {P.QUEUED}
    assert LIVE == set(Phase) - TERMINAL == ACTIVE | {P.PENDING}
    assert not TERMINAL & ACTIVE
    assert P.PENDING not in TERMINAL | ACTIVE


def test_phase_names_are_members_of_the_sets() -> None:
    """Faces and the client compare the names they read (``"COMPLETED"``) with these sets."""
    assert "COMPLETED" in TERMINAL and "EXECUTING" in ACTIVE and "ARCHIVED" not in ENDED


@pytest.mark.parametrize("phase", sorted(TERMINAL))
def test_terminal_phases_only_lead_to_archived(phase: Phase) -> None:
    """...or, for a failed or aborted job, back to PENDING by an operator's ``reset``."""
    targets = {target(phase, action) for action in Action} - {None}
    if phase is P.ARCHIVED:
        assert targets == set()
    elif phase is P.COMPLETED:
        assert targets == {P.ARCHIVED}
        assert [a for a in Action if allowed(phase, a)] == [Action.ARCHIVE]
    else:
        assert targets == {P.ARCHIVED, P.PENDING}
        assert [a for a in Action if allowed(phase, a)] == [Action.ARCHIVE, Action.RESET]


def test_only_terminal_phases_can_be_archived() -> None:
    for phase in Phase:
        assert allowed(phase, Action.ARCHIVE) == (phase in TERMINAL - {P.ARCHIVED})


def test_every_live_phase_can_be_aborted_and_failed() -> None:
    for phase in Phase:
        live = phase not in TERMINAL
        assert allowed(phase, Action.ABORT) == live
        assert allowed(phase, Action.FAIL) == live


def test_every_phase_is_reachable_from_pending() -> None:
    seen = {P.PENDING}
    frontier = [P.PENDING]
    while frontier:
        phase = frontier.pop()
        for action in Action:
            nxt = target(phase, action)
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(Phase)


def test_only_reset_leads_back_to_pending() -> None:
    back = [row.action for row in TRANSITIONS.values() if row.target is P.PENDING]
    assert back == [Action.RESET]
    assert TRANSITIONS[Action.RESET].sources == {P.ERROR, P.ABORTED}


def test_reason_rows_match_the_documented_reasons() -> None:
    for action, expected in EXPECTED_REASONS.items():
        assert TRANSITIONS[action].reasons == frozenset(expected), action


@pytest.mark.parametrize("action", list(Action))
def test_every_reason_change_fits_its_phases(action: Action) -> None:
    """A reason before is one a source phase can have (only QUEUED has one), a reason after is
    there exactly when the action leads to QUEUED, and every source has a change."""
    row = TRANSITIONS[action]
    queued_source = P.QUEUED in row.sources
    other_sources = row.sources - {P.QUEUED}
    for before, after in row.reasons:
        assert before is not None or other_sources, (action, before)
        assert before is None or queued_source, (action, before)
        assert (after is not None) == (row.target is P.QUEUED), (action, after)
    befores = {before for before, _after in row.reasons}
    if queued_source:
        assert befores - {None}
    if other_sources:
        assert None in befores


@pytest.mark.parametrize(
    ("action", "before", "after", "ok"),
    [
        (Action.WAIT, "waiting for data", "capacity", True),  # data arrived
        (Action.WAIT, "capacity", "waiting for data", False),  # never back to waiting
        (Action.WAIT, "waiting for data", "backend", False),  # released to capacity first
        (Action.START, "waiting for data", None, False),  # a waiting job never starts
        (Action.START, "backend unavailable", None, False),
        (Action.HOLD, "waiting for data", None, False),  # the service's 409, in the table
        (Action.RELEASE, None, None, False),  # a QUEUED job always has a reason
        (Action.FAIL, "waiting for data", None, True),  # a data time-out
        (Action.COMPLETE, "capacity", None, False),  # only a batch job ends while QUEUED
    ],
)
def test_reason_changes(action: Action, before: str | None, after: str | None, ok: bool) -> None:
    assert reason_allowed(action, before, after) is ok


def test_reason_helpers() -> None:
    assert reason_of(P.QUEUED, "capacity") == "capacity"
    assert reason_of(P.EXECUTING, "backend") is None
    assert reasons_set_by(Action.RELEASE) == {R.CAPACITY, R.BACKEND}
    assert reasons_set_by(Action.START) == {None}
    assert ANY_REASON == {*Reason, None}


def test_jobs_are_created_pending_or_queued_ready_or_waiting_for_data() -> None:
    assert CREATED == {
        (P.PENDING, None),
        (P.QUEUED, R.CAPACITY),
        (P.QUEUED, R.DATA),
        (P.QUEUED, R.UPSTREAM),
    }
    assert can_create(P.QUEUED, "waiting for data")
    assert not can_create(P.QUEUED, None) and not can_create(P.EXECUTING, None)


def test_action_between_phases_is_unique_and_from_the_table() -> None:
    for source, wanted in itertools.product(Phase, Phase):
        # stand_by is jobmill's own decision, never what a backend reports: left out
        actions = {
            a
            for a in Action
            if source is not wanted and target(source, a) is wanted and a is not Action.STAND_BY
        }
        assert len(actions) <= 1, (source, wanted, actions)
        assert action_between(source, wanted) == (actions.pop() if actions else None)
    assert action_between(P.SUSPENDED, P.EXECUTING) is Action.RESUME
    assert action_between(P.EXECUTING, P.UNKNOWN) is Action.LOSE_CONTACT
    assert action_between(P.UNKNOWN, P.QUEUED) is Action.REQUEUE
    assert action_between(P.QUEUED, P.QUEUED) is None


def test_reasons() -> None:
    assert {r.value for r in Reason} == {
        "capacity",
        "backend",
        "backend unavailable",
        "waiting for data",
        "waiting for upstream jobs",
        "waiting for children",
    }


# -- the diagram and docs/lifecycle.md --------------------------------------------------------


def _mermaid_blocks(text: str) -> list[str]:
    return re.findall(r"^```mermaid[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S)


def test_diagram_has_one_edge_per_allowed_pair() -> None:
    lines = mermaid_diagram().splitlines()
    assert lines[0] == "stateDiagram-v2"
    edges = {line.strip() for line in lines[1:]}
    expected = {f"{p} --> {target(p, a)}: {a}" for p, a in ALL_PAIRS if allowed(p, a)}
    expected |= {"[*] --> PENDING", "[*] --> QUEUED"} | {f"{p} --> [*]" for p in ENDED}
    assert edges == expected
    assert len(lines) - 1 == len(expected)  # no duplicate lines


def test_docs_lifecycle_contains_exactly_the_generated_diagram() -> None:
    assert DOC.is_file(), "docs/lifecycle.md is missing"
    blocks = _mermaid_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 1, "docs/lifecycle.md must hold exactly one mermaid block"
    assert blocks[0] == mermaid_diagram(), (
        "docs/lifecycle.md is out of date with lifecycle.TRANSITIONS; regenerate its diagram "
        "with lifecycle.mermaid_diagram()"
    )


def test_docs_lifecycle_contains_exactly_the_generated_actions_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert actions_table() in text, (
        "docs/lifecycle.md is out of date with lifecycle.TRANSITIONS; regenerate its table of "
        "actions with lifecycle.actions_table()"
    )
    for action, row in TRANSITIONS.items():
        line = next(x for x in actions_table().splitlines() if x.startswith(f"| `{action}` |"))
        assert all(f"`{p}`" in line.split("|")[2] for p in row.sources)


def test_docs_name_every_phase_reason_and_action() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in [*Phase, *Reason, *Action]:
        assert f"`{name.value}`" in text, f"docs/lifecycle.md does not mention `{name.value}`"


def test_a_changed_table_no_longer_matches_the_doc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The doc check above really depends on the table: change a row and it fails."""
    doc_block = _mermaid_blocks(DOC.read_text(encoding="utf-8"))[0]
    changed = Transition(Action.RESUME, frozenset({P.SUSPENDED, P.HELD}), P.EXECUTING)
    monkeypatch.setitem(lifecycle.TRANSITIONS, Action.RESUME, changed)
    assert "HELD --> EXECUTING: resume" in mermaid_diagram()
    assert mermaid_diagram() != doc_block
    assert actions_table() not in DOC.read_text(encoding="utf-8")
