"""Cycle detection and ordering of job dependencies (``domain.dag``), without a database."""

from __future__ import annotations

import pytest

from jobmill.domain.dag import find_cycle, topological_order


def test_no_cycle_in_a_diamond() -> None:
    graph = {"a": ["b", "c"], "b": ["d"], "c": ["d"]}
    assert find_cycle(graph, [("a", "d")]) is None
    assert find_cycle({}, [("x", "y"), ("y", "z")]) is None


def test_a_self_link_is_a_cycle() -> None:
    assert find_cycle({}, [("a", "a")]) == ["a", "a"]


def test_the_cycle_is_named_from_the_new_parent() -> None:
    graph = {"a": ["b"], "b": ["c"]}
    # c -> a would close a -> b -> c -> a
    assert find_cycle(graph, [("c", "a")]) == ["c", "a", "b", "c"]


def test_new_edges_count_together() -> None:
    assert find_cycle({}, [("a", "b"), ("b", "a")]) == ["b", "a", "b"]


def test_a_long_chain_does_not_exhaust_the_stack() -> None:
    graph = {str(i): [str(i + 1)] for i in range(20_000)}
    cycle = find_cycle(graph, [("20000", "0")])
    assert cycle is not None and len(cycle) == 20_002
    assert find_cycle(graph, [("0", "20000")]) is None


def test_topological_order_puts_parents_first() -> None:
    graph = {"root": ["x", "y"], "x": ["sink"], "y": ["sink"]}
    order = topological_order(graph)
    assert order[0] == "root" and order[-1] == "sink"
    with pytest.raises(ValueError, match="cycle"):
        topological_order({"a": ["b"], "b": ["a"]})
