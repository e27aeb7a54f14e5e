"""How the CLI shows a queued job's reason: ``capacity`` is what every job ready to run is
stored with, so an idle server must not read as a full one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobmill.cli.render import STARTING_GRACE, phase, reason_shown

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def job(phase_: str, reason: str | None, age: float | None) -> dict[str, object]:
    created = None if age is None else (NOW - timedelta(seconds=age)).isoformat()
    return {"phase": phase_, "reason": reason, "created": created}


def test_a_job_ready_to_run_is_starting_until_a_slot_is_known_to_be_short() -> None:
    assert reason_shown(job("QUEUED", "capacity", 0.2), NOW) == "starting"
    assert phase(job("QUEUED", "capacity", 1), NOW).plain == "QUEUED (starting)"
    late = job("QUEUED", "capacity", STARTING_GRACE + 1)
    assert phase(late, NOW).plain == "QUEUED (waiting for a free slot)"
    assert reason_shown(job("QUEUED", "capacity", None), NOW) == "waiting for a free slot"
    zulu = {"phase": "QUEUED", "reason": "capacity", "created": "2026-05-01T11:59:59.500Z"}
    assert reason_shown(zulu, NOW) == "starting"


def test_other_reasons_and_phases_show_as_stored() -> None:
    assert reason_shown(job("QUEUED", "waiting for data", 0), NOW) == "waiting for data"
    assert reason_shown(job("QUEUED", "backend", 60), NOW) == "backend"
    assert phase(job("EXECUTING", None, 0), NOW).plain == "EXECUTING"
    assert phase(job("HELD", None, 0), NOW).plain == "HELD"
