"""The transition table, checked over every (phase, action) pair, and its documented diagram."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from jobmill.domain import lifecycle
from jobmill.domain.lifecycle import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    Action,
    Phase,
    Reason,
    Transition,
    allowed,
    mermaid_diagram,
    target,
    transition,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"

P = Phase
RUNNING_OR_WAITING = {P.PENDING, P.QUEUED, P.EXECUTING, P.HELD, P.SUSPENDED, P.UNKNOWN}

# The documented table, written out independently of the module: any change to
# lifecycle.TRANSITIONS must be made here too, deliberately.
EXPECTED: dict[Action, tuple[set[Phase], Phase]] = {
    Action.RUN: ({P.PENDING}, P.QUEUED),
    Action.WAIT: ({P.QUEUED}, P.QUEUED),
    Action.START: ({P.QUEUED, P.HELD, P.SUSPENDED, P.UNKNOWN}, P.EXECUTING),
    Action.COMPLETE: ({P.QUEUED, P.EXECUTING, P.HELD, P.SUSPENDED, P.UNKNOWN}, P.COMPLETED),
    Action.FAIL: (RUNNING_OR_WAITING, P.ERROR),
    Action.ABORT: (RUNNING_OR_WAITING, P.ABORTED),
    Action.HOLD: ({P.QUEUED, P.EXECUTING}, P.HELD),
    Action.RELEASE: ({P.HELD}, P.QUEUED),
    Action.SUSPEND: ({P.EXECUTING}, P.SUSPENDED),
    Action.RESUME: ({P.SUSPENDED}, P.EXECUTING),
    Action.LOSE_CONTACT: ({P.QUEUED, P.EXECUTING, P.HELD, P.SUSPENDED}, P.UNKNOWN),
    Action.REQUEUE: ({P.EXECUTING}, P.QUEUED),
    Action.ARCHIVE: ({P.COMPLETED, P.ERROR, P.ABORTED}, P.ARCHIVED),
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
    assert ACTIVE == {P.QUEUED, P.EXECUTING, P.HELD, P.SUSPENDED, P.UNKNOWN}
    assert not TERMINAL & ACTIVE
    assert P.PENDING not in TERMINAL | ACTIVE


@pytest.mark.parametrize("phase", sorted(TERMINAL))
def test_terminal_phases_only_lead_to_archived(phase: Phase) -> None:
    targets = {target(phase, action) for action in Action} - {None}
    if phase is P.ARCHIVED:
        assert targets == set()
    else:
        assert targets == {P.ARCHIVED}
        assert [a for a in Action if allowed(phase, a)] == [Action.ARCHIVE]


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


def test_nothing_leads_back_to_pending() -> None:
    assert all(row.target is not P.PENDING for row in TRANSITIONS.values())


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
    expected |= {"[*] --> PENDING"} | {f"{p} --> [*]" for p in TERMINAL - {P.ARCHIVED}}
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
