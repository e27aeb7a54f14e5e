"""brownthrower's filter grammar of ``jobmill ls`` (``cli/filters.py``)."""

from __future__ import annotations

from typing import Any

import pytest

from jobmill.cli.filters import STATUSES, FilterError, Query, parse
from jobmill.domain.lifecycle import Phase

ALL = set(Phase)


def job(**fields: Any) -> dict[str, Any]:
    base = {
        "id": "3f2a0000-0000-4000-8000-000000000000",
        "seq": 5,
        "type": "add2",
        "phase": "QUEUED",
        "reason": "capacity",
        "tags": [],
        "owner": "ann",
        "run_id": None,
    }
    return base | fields


def test_the_seed_example() -> None:
    query = parse(["status!=DONE", "name=add2", "id>10", "tag=calib"])
    assert query.server() == {
        "phase": sorted(p.value for p in ALL - {Phase.COMPLETED}),
        "type": "add2",
        "tag": "calib",
        "seq_min": 11,
    }
    assert query.checks == []


def test_no_terms_filter_nothing() -> None:
    assert parse([]).server() == {}
    assert not parse([]).empty


@pytest.mark.parametrize(
    ("status", "phases"),
    [
        ("STASHED", {Phase.PENDING}),
        ("queued", {Phase.QUEUED}),
        ("RUNNING", {Phase.EXECUTING, Phase.SUSPENDED, Phase.UNKNOWN}),
        ("DONE", {Phase.COMPLETED}),
        ("FAILED", {Phase.ERROR, Phase.ABORTED}),
        ("HELD", {Phase.HELD}),
        ("error", {Phase.ERROR}),
    ],
)
def test_statuses_map_to_phases(status: str, phases: set[Phase]) -> None:
    query = parse([f"status={status}"])
    assert set(query.server()["phase"]) == {p.value for p in phases}
    assert query.checks == []
    negated = parse([f"status!={status}"])
    assert set(negated.server()["phase"]) == {p.value for p in ALL - phases}


def test_stand_by_is_a_queued_job_waiting_for_its_children() -> None:
    query = parse(["status=STAND-BY"])
    assert query.server() == {"phase": ["QUEUED"]}
    assert query.matches(job(reason="waiting for children"))
    assert not query.matches(job(reason="capacity"))
    negated = parse(["status!=STAND-BY"])
    assert "phase" not in negated.server()  # the reason decides: checked by the client
    assert not negated.matches(job(reason="waiting for children"))
    assert negated.matches(job(reason="capacity")) and negated.matches(job(phase="ERROR"))


def test_runnable_is_ready_to_run() -> None:
    query = parse(["status=RUNNABLE"])
    assert query.matches(job(reason="capacity"))
    assert not query.matches(job(reason="waiting for upstream jobs"))


def test_terms_combine_with_and() -> None:
    assert parse(["status=DONE", "status=FAILED"]).empty
    assert parse(["id>5", "id<3"]).empty
    both = parse(["status!=DONE", "status!=FAILED"])
    assert set(both.server()["phase"]) == {
        p.value for p in ALL - {Phase.COMPLETED, Phase.ERROR, Phase.ABORTED}
    }


@pytest.mark.parametrize(
    ("term", "bounds"),
    [
        ("id>10", (11, None)),
        ("id>=10", (10, None)),
        ("id<10", (None, 9)),
        ("id<=10", (None, 10)),
        ("id=10", (10, 10)),
        ("seq==7", (7, 7)),
    ],
)
def test_id_numbers_are_sequence_numbers(term: str, bounds: tuple[int | None, int | None]) -> None:
    query = parse([term])
    assert (query.seq_min, query.seq_max) == bounds


def test_id_not_equal_and_prefix() -> None:
    query = parse(["id!=5"])
    assert query.server() == {}
    assert not query.matches(job(seq=5)) and query.matches(job(seq=6))
    assert parse(["id=3F2A"]).server() == {"id_prefix": "3f2a"}
    assert parse(["id=3f", "id=3f2a"]).id_prefix == "3f2a"
    assert parse(["id=3f", "id=4a"]).empty


def test_names_tags_owners_not_equal_and_repeated() -> None:
    query = parse(["name!=add2", "tag=a", "tag=b", "tag!=c", "owner=ann", "type=sum4"])
    assert query.server() == {"tag": "a", "owner": "ann", "type": "sum4"}
    assert query.matches(job(type="sum4", tags=["a", "b"]))
    assert not query.matches(job(type="add2", tags=["a", "b"]))
    assert not query.matches(job(type="sum4", tags=["a"]))
    assert not query.matches(job(type="sum4", tags=["a", "b", "c"]))


@pytest.mark.parametrize(
    ("term", "says"),
    [
        ("status", "is not FIELD=VALUE"),
        ("colour=red", "unknown field 'colour'"),
        ("status=", "no value after '='"),
        ("status=BUSY", "unknown status 'BUSY'"),
        ("status>DONE", "status takes only = and !="),
        ("name<add2", "name takes only = and !="),
        ("id>abc", "id takes a sequence number"),
        ("id=xyz", "id takes a sequence number"),
        ("id=99999999999", "is not a sequence number"),
        ("tag~calib", "is not FIELD=VALUE"),
    ],
)
def test_bad_terms_are_named(term: str, says: str) -> None:
    with pytest.raises(FilterError) as info:
        parse(["name=ok", term])
    assert f"'{term}'" in str(info.value) and says in str(info.value)


def test_every_status_name_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "workflows.md").read_text(encoding="utf-8")
    for name in STATUSES:
        assert f"`{name}`" in doc, name
    assert isinstance(parse(["status=DONE"]), Query)
