"""Workflows from the command line, as a brownthrower user runs them: a fan-out/fan-in
pipeline with ``submit --after``, ``link``/``unlink`` (a cycle refused), ``graph`` as text,
DOT and SVG, and the ``sum4`` example ending with 42."""

from __future__ import annotations

import json
from typing import Any

from lxml import etree
from typer.testing import CliRunner

from jobmill.cli.main import app
from jobmill.client import Client
from tests.conftest import LiveServer

runner = CliRunner()


def cli(live: LiveServer, *args: str) -> Any:
    return runner.invoke(app, ["--url", live.url, *args])


def ok(live: LiveServer, *args: str) -> str:
    result = cli(live, *args)
    assert result.exit_code == 0, (args, result.output)
    return str(result.stdout).strip()


def test_a_fan_out_fan_in_pipeline(live: LiveServer) -> None:
    root = ok(live, "submit", "sleep", "seconds=0.3")
    middle = [ok(live, "submit", "sleep", "seconds=0", "--after", root[:8]) for _ in range(4)]
    after = [arg for job in middle for arg in ("--after", job)]
    sink = ok(live, "submit", "sleep", "seconds=0", *after)
    with Client(live.url) as jm:
        assert jm.get(sink)["reason"] == "waiting for upstream jobs"
        done = jm.wait(sink, timeout=30)
        assert done["phase"] == "COMPLETED"
        assert sorted(done["after"]) == sorted(middle)

    text = ok(live, "graph", root[:8])
    lines = text.splitlines()
    assert len(lines) == 6 and lines[0].startswith(root[:8]) and lines[-1].startswith(sink[:8])
    assert all(f"after {root[:8]}" in line for line in lines[1:5])

    dot = ok(live, "graph", root, "--format", "dot")
    assert dot.startswith("digraph jobs {") and dot.count(" -> ") == 8
    assert f'"{root}" -> "{middle[0]}"' in dot

    svg = etree.fromstring(ok(live, "graph", root, "--format", "svg").encode())
    ns = {"s": "http://www.w3.org/2000/svg"}
    assert len(svg.findall(".//s:rect", ns)) == 6 and len(svg.findall(".//s:line", ns)) == 8

    graph = json.loads(ok(live, "graph", "--json"))
    assert {job["id"] for job in graph["jobs"]} == {root, sink, *middle}


def test_link_unlink_and_a_refused_cycle(live: LiveServer) -> None:
    first = ok(live, "submit", "sleep", "seconds=30")
    second = ok(live, "create", "sleep", "seconds=0")
    assert ok(live, "link", second[:8], first[:8]) == f"{second} runs after: {first}"
    with Client(live.url) as jm:
        jm.run(second)
        assert jm.get(second)["reason"] == "waiting for upstream jobs"
    third = ok(live, "create", "sleep", "seconds=0")
    ok(live, "link", third, second)
    refused = cli(live, "link", second, third)
    assert refused.exit_code == 1
    assert f"cycle: {third} -> {second} -> {third}" in refused.output
    assert ok(live, "unlink", second, first) == f"{second} runs after: nothing"
    with Client(live.url) as jm:
        assert jm.wait(second, timeout=30)["phase"] == "COMPLETED"
        jm.abort(first)
    bad = cli(live, "graph", "--format", "png")
    assert bad.exit_code == 2 and "--format" in bad.output


def test_sum4_from_the_command_line(live: LiveServer) -> None:
    result = cli(live, "submit", "sum4", "--wait", "--json")
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout[result.stdout.index("{") :])
    assert job["phase"] == "COMPLETED" and job["report"]["output"] == 42
    assert len(job["children"]) == 3
