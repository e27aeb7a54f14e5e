"""Run start and end notifications (ARP): the ``jobmill runs start|end`` command a DAQ or an
eLog calls, and the file-based hook of ``examples/jobtypes/arp.rules.yaml`` (a run directory's
files appearing) through the rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from jobmill.cli.main import app
from jobmill.config import Settings
from tests.conftest import LiveServer, wait_for

EXP = "xppi0915"
API = f"/api/v1/arp/experiments/{EXP}"
runner = CliRunner()


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """Data arrives under ``tmp_path/data``; jobs may read the test's local credential (the
    ``arp-run`` job posts the run's start or end with it)."""
    (tmp_path / "data").mkdir()
    return settings.with_(
        data_root=tmp_path / "data", pass_env=(*settings.pass_env, "JOBMILL_TOKEN_FILE")
    )


@pytest.fixture
def http(live: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=live.url, headers=live.headers, timeout=30)


def autorun_definition(http: httpx.Client, tmp_path: Path) -> None:
    script = tmp_path / "process.sh"
    script.write_text("#!/bin/sh\necho processing $1 run $2\n")
    script.chmod(0o755)
    body = {"name": "smd", "executable": str(script), "autorun": True}
    assert http.post(f"{API}/definitions", json=body).status_code == 201


def cli(live: LiveServer, *args: str) -> Any:
    result = runner.invoke(app, ["--url", live.url, *args])
    assert result.exit_code == 0, result.output
    return result


def test_runs_start_and_end_commands(live: LiveServer, http: httpx.Client, tmp_path: Path) -> None:
    autorun_definition(http, tmp_path)
    started = cli(live, "runs", "start", EXP, "7", "detector=epix", "events=1200")
    assert started.output.startswith(f"run {EXP}/7 started 20")
    run = http.get(f"{API}/runs/7").json()
    assert run["parameters"] == {"detector": "epix", "events": 1200} and run["ended_at"] is None

    ended = cli(live, "runs", "end", EXP, "7")
    lines = ended.output.splitlines()
    assert lines[0].startswith(f"run {EXP}/7 ended 20") and lines[0].endswith(": 1 job(s)")
    job_id = lines[1].split()[0]
    assert lines[1].split()[1] == "smd"
    assert http.get(f"{API}/jobs/{job_id}").json()["trigger"] == "autorun"
    # a DAQ that retries: the first end counts, no second job
    again = json.loads(cli(live, "runs", "end", EXP, "7", "--json").output)
    assert again["jobs"] == [] and again["run"]["ended_at"] == run_ended(http, 7)

    # by the experiment's numeric id, as the eLog knows it
    experiment_id = {e["name"]: e["id"] for e in http.get("/api/v1/arp/experiments").json()}[EXP]
    by_id = cli(live, "runs", "end", str(experiment_id), "8")
    assert by_id.output.startswith(f"run {EXP}/8 ended") and "1 job(s)" in by_id.output


def run_ended(http: httpx.Client, run: int) -> str:
    ended: str = http.get(f"{API}/runs/{run}").json()["ended_at"]
    return ended


def test_runs_commands_refuse_bad_input(live: LiveServer) -> None:
    bad = runner.invoke(app, ["--url", live.url, "runs", "end", EXP, "-1"])
    assert bad.exit_code == 2
    bad = runner.invoke(app, ["--url", live.url, "runs", "start", EXP, "1", "detector"])
    assert bad.exit_code == 2 and "not key=value" in bad.output
    refused = runner.invoke(app, ["--url", live.url, "runs", "end", "bad name!", "1"])
    assert refused.exit_code == 1 and "experiment" in refused.output
    unknown = runner.invoke(app, ["--url", live.url, "runs", "end", "424242", "1"])
    assert unknown.exit_code == 1 and "no experiment has the id 424242" in unknown.output


def test_a_run_directory_appearing_starts_and_ends_the_run_through_the_rules(
    live: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    """The shipped example rules (disabled until switched on) and the ``arp-run`` job type."""
    autorun_definition(http, tmp_path)
    for rule in ("arp-run-start", "arp-run-end"):
        assert http.post(f"/api/v1/rules/{rule}/enable").status_code == 200
    run_dir = tmp_path / "data" / "xtc" / EXP / "r0012"
    run_dir.mkdir(parents=True)
    (run_dir / f"{EXP}-r0012-s00-c00.xtc2").write_bytes(b"\0" * 1024)
    (run_dir / f"{EXP}-r0012-s00-c01.xtc2").write_bytes(b"\0" * 1024)  # no second start

    def started() -> dict[str, Any] | None:
        response = http.get(f"{API}/runs/12")
        return response.json() if response.status_code == 200 else None

    run = wait_for(started, timeout=30)
    assert run["started_at"] and run["ended_at"] is None
    assert http.get(f"{API}/status").json() == []  # nothing ran yet: the run goes on

    (run_dir / "run.end").write_text("")

    def processed() -> list[dict[str, Any]] | None:
        entries: list[dict[str, Any]] = http.get(f"{API}/status").json()
        return entries if entries else None

    entries = wait_for(processed, timeout=30)
    assert [(e["run_num"], e["hash"], e["trigger"]) for e in entries] == [(12, "smd", "autorun")]
    assert http.get(f"{API}/runs/12").json()["ended_at"]
    firings = http.get("/api/v1/rules/arp-run-start/firings").json()
    assert len(firings) == 1 and firings[0]["error"] is None
