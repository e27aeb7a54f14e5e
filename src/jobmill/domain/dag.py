"""Job dependencies as a directed acyclic graph: cycle detection, pure (no database).

An edge ``parent -> child`` says the child runs once the parent has completed. Storage reads
the part of the graph a change can reach and asks ``find_cycle`` before it adds edges."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

POLICIES = ("fail", "wait")
"""What a job does when a job it depends on ends in ERROR or ABORTED: ``fail`` (it ends in
ERROR naming that job) or ``wait`` (it stays until an operator resets or unlinks)."""


def find_cycle(
    children: Mapping[str, Iterable[str]], new_edges: Iterable[tuple[str, str]]
) -> list[str] | None:
    """The cycle adding ``new_edges`` (``(parent, child)`` pairs) to the graph ``children``
    (each job's children) would close, as a path ``[a, b, ..., a]`` from parent to child, or
    None when the graph stays acyclic. A self-link is a cycle of one edge."""
    graph: dict[str, list[str]] = {node: list(kids) for node, kids in children.items()}
    for parent, child in new_edges:
        if parent == child:
            return [parent, parent]
        # The new edge closes a cycle when the parent is reachable from the child.
        path = _path(graph, child, parent)
        if path is not None:
            return [parent, *path]
        graph.setdefault(parent, []).append(child)
    return None


def _path(graph: Mapping[str, list[str]], start: str, goal: str) -> list[str] | None:
    """A path ``[start, ..., goal]`` along ``graph``'s edges, or None (iterative: a chain of
    thousands of jobs must not exhaust the stack)."""
    came_from: dict[str, str | None] = {start: None}
    stack = [start]
    while stack:
        node = stack.pop()
        if node == goal:
            path = [node]
            while (previous := came_from[path[-1]]) is not None:
                path.append(previous)
            return path[::-1]
        for nxt in graph.get(node, ()):
            if nxt not in came_from:
                came_from[nxt] = node
                stack.append(nxt)
    return None


def topological_order(children: Mapping[str, Iterable[str]]) -> list[str]:
    """The nodes of an acyclic graph, each after all its parents (Kahn's algorithm; ties in
    the order the nodes were first seen)."""
    nodes: dict[str, None] = {}
    indegree: dict[str, int] = {}
    for parent, kids in children.items():
        nodes.setdefault(parent)
        indegree.setdefault(parent, 0)
        for kid in kids:
            nodes.setdefault(kid)
            indegree[kid] = indegree.get(kid, 0) + 1
    ready = [node for node in nodes if indegree[node] == 0]
    order: list[str] = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for kid in children.get(node, ()):
            indegree[kid] -= 1
            if indegree[kid] == 0:
                ready.append(kid)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle")
    return order
