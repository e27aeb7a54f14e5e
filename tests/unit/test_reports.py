"""The progress-report merge rule: top-level merge, counters by name, ARP's list form."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from jobmill.domain.errors import ValidationError
from jobmill.service.reports import MAX_KEYS, merge, normalise


def post(old: dict[str, Any], payload: Any) -> dict[str, Any]:
    return merge(old, normalise(payload))


# -- merging -----------------------------------------------------------------------------------


def test_first_report() -> None:
    assert post({}, {"status": "running", "counters": {"frames": 1}}) == {
        "status": "running",
        "counters": {"frames": 1},
    }


def test_top_level_keys_replace_only_themselves() -> None:
    old = {"status": "running", "percent": 10, "detail": {"a": 1}}
    assert post(old, {"percent": 50, "detail": {"b": 2}}) == {
        "status": "running",
        "percent": 50,
        "detail": {"b": 2},  # only counters merge below the top level
    }


def test_counters_merge_by_name() -> None:
    old = {"counters": {"frames": 10, "errors": 0}, "status": "x"}
    assert post(old, {"counters": {"frames": 20, "events": 5}}) == {
        "counters": {"frames": 20, "errors": 0, "events": 5},
        "status": "x",
    }


def test_a_post_without_counters_keeps_them() -> None:
    old = {"counters": {"frames": 10}}
    assert post(old, {"status": "done"}) == {"counters": {"frames": 10}, "status": "done"}


def test_empty_posts_change_nothing() -> None:
    old = {"counters": {"frames": 10}, "status": "x"}
    assert post(old, {}) == old
    assert post(old, {"counters": {}}) == old
    assert post(old, []) == old


def test_counter_values_may_be_any_json() -> None:
    value = {"nested": [1, 2, {"x": None}]}
    assert post({}, {"counters": {"c": value, "n": None, "f": 1.5, "s": "t"}})["counters"] == {
        "c": value,
        "n": None,
        "f": 1.5,
        "s": "t",
    }


def test_merge_does_not_change_the_old_report() -> None:
    old = {"counters": {"frames": 10}, "status": "x"}
    snapshot = copy.deepcopy(old)
    post(old, {"counters": {"frames": 11, "more": 1}, "status": "y"})
    assert old == snapshot


def test_successive_posts_accumulate() -> None:
    report: dict[str, Any] = {}
    for i in range(5):
        report = post(report, {"counters": {f"c{i}": i}, "last": i})
    assert report == {"counters": {f"c{i}": i for i in range(5)}, "last": 4}


# -- ARP's list form ---------------------------------------------------------------------------


def test_list_form_at_top_level_is_counters() -> None:
    payload = [{"key": "Frames", "value": 10}, {"key": "Status", "value": "ok"}]
    assert normalise(payload) == {"counters": {"Frames": 10, "Status": "ok"}}
    old = {"counters": {"Frames": 1, "Other": 2}, "status": "s"}
    assert post(old, payload) == {
        "counters": {"Frames": 10, "Other": 2, "Status": "ok"},
        "status": "s",
    }


def test_list_form_inside_counters() -> None:
    payload = {"status": "running", "counters": [{"key": "a", "value": 1}, {"key": 2, "value": 3}]}
    assert normalise(payload) == {"status": "running", "counters": {"a": 1, "2": 3}}
    assert post({"counters": {"b": 0}}, payload) == {
        "status": "running",
        "counters": {"b": 0, "a": 1, "2": 3},
    }


def test_list_form_later_key_wins() -> None:
    assert normalise([{"key": "a", "value": 1}, {"key": "a", "value": 2}]) == {"counters": {"a": 2}}


def test_list_items_may_carry_extra_fields() -> None:
    assert normalise([{"key": "a", "value": 1, "unit": "s"}]) == {"counters": {"a": 1}}


# -- invalid shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ("text", "body"),
        (42, "body"),
        (None, "body"),
        (True, "body"),
        ([1], "body[0]"),
        ([{"key": "a", "value": 1}, {"key": "b"}], "body[1]"),
        ([{"value": 1}], "body[0]"),
        ([["a", 1]], "body[0]"),
        ({"counters": "many"}, "counters"),
        ({"counters": 3}, "counters"),
        ({"counters": None}, "counters"),
        ({"counters": [{"key": "a", "value": 1}, "b"]}, "counters[1]"),
        ({"counters": [{"key": "a"}]}, "counters[0]"),
    ],
)
def test_invalid_shapes_name_the_field(payload: Any, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        normalise(payload)
    assert info.value.field == field
    assert info.value.status == 422
    assert info.value.to_dict()["field"] == field


def test_too_many_keys() -> None:
    with pytest.raises(ValidationError) as info:
        normalise({f"k{i}": i for i in range(MAX_KEYS + 1)})
    assert info.value.field == "body"
    with pytest.raises(ValidationError) as info:
        normalise({"counters": {f"k{i}": i for i in range(MAX_KEYS + 1)}})
    assert info.value.field == "counters"
    with pytest.raises(ValidationError) as info:
        normalise({"counters": [{"key": i, "value": i} for i in range(MAX_KEYS + 1)]})
    assert info.value.field == "counters"
    with pytest.raises(ValidationError) as info:
        normalise([{"key": i, "value": i} for i in range(MAX_KEYS + 1)])
    assert info.value.field == "body"
    assert normalise({"counters": {f"k{i}": i for i in range(MAX_KEYS)}})


def test_normalise_does_not_change_the_payload() -> None:
    payload = {"counters": [{"key": "a", "value": 1}], "x": 1}
    snapshot = copy.deepcopy(payload)
    normalise(payload)
    assert payload == snapshot
