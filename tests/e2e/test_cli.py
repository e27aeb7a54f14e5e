"""The ``jobmill`` command line against a live server: in-process with CliRunner, and as the real
installed console script in subprocesses (exit codes, stderr, no tracebacks)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from jobmill.cli.main import app, counter_value, scalar
from jobmill.client import Client
from jobmill.config import Settings
from jobmill.factory import open_store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "jobtypes"
JOBMILL = shutil.which("jobmill", path=str(Path(sys.executable).parent)) or "jobmill"
runner = CliRunner()

# Job types that report from inside the job: one through the CLI, one through the client.
REPORTERS = f"""\
name: cli-reporter
description: Reports counters with 'jobmill report'.
command: [{json.dumps(sys.executable)}, "-m", "jobmill.cli.main", "report",
          "--counter", "files={{n}}", "--counter", "stage=calibrating:green",
          "--set", "note={{note}}"]
parameters:
  n: {{type: integer, required: true}}
  note: {{type: string, default: "half way"}}
---
name: py-reporter
description: Reports counters with jobmill.client.report.
command: [{json.dumps(sys.executable)}, "-c",
          "from jobmill.client import report; report(counters=dict(files=3), stage='done')"]
"""


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The shared test settings plus the reporter job types."""
    extra = tmp_path / "jobtypes"
    extra.mkdir()
    (extra / "reporters.yaml").write_text(REPORTERS, encoding="utf-8")
    return settings.with_(jobtypes=(*settings.jobtypes, str(extra)))


def cli(live: Any, *args: str) -> Any:
    """Run a client command in-process against the live server."""
    return runner.invoke(app, [*args, "--url", live.url])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without jobmill settings, but with the test's own local credential file
    (``JOBMILL_TOKEN_FILE``, set by the ``token_file`` fixture)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JOBMILL_", "API_")) or k == "JOBMILL_TOKEN_FILE"
    }
    return env | extra


def run(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``jobmill`` script."""
    return subprocess.run(
        [JOBMILL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(**env),
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- pure helpers ------------------------------------------------------------------------------


def test_values_look_like_numbers_or_stay_strings() -> None:
    assert [scalar(v) for v in ("3", "-2", "2.5", "1e3", "x", "3a", "")] == [
        3,
        -2,
        2.5,
        1000.0,
        "x",
        "3a",
        "",
    ]
    assert counter_value("12") == 12
    assert counter_value("12:red") == [12, "red"]
    assert counter_value("0.5:#00ff00") == [0.5, "#00ff00"]
    assert counter_value("12:30") == "12:30"
    assert counter_value("done") == "done"


# -- in-process against a live server ----------------------------------------------------------


def test_submit_wait_completed_then_inspect(live: Any) -> None:
    result = cli(live, "submit", "echo", "message=hello cli", "--run-id", "r-42", "--wait")
    assert result.exit_code == 0, result.output
    assert "COMPLETED" in result.stdout and "exit code 0" in result.stdout
    job_id = result.stdout.split()[0]

    listed = cli(live, "ls", "--run-id", "r-42", "--phase", "completed", "--json")
    assert listed.exit_code == 0
    assert [j["id"] for j in json.loads(listed.stdout)] == [job_id]
    table = cli(live, "ls", "--type", "echo")
    assert job_id in table.stdout and "r-42" in table.stdout
    assert "no jobs" in cli(live, "ls", "--phase", "ERROR", "--type", "echo").stderr

    shown = cli(live, "show", job_id)
    assert shown.exit_code == 0
    for expected in ("COMPLETED", "hello cli", "created", "QUEUED -> EXECUTING"):
        assert expected in shown.stdout
    details = json.loads(cli(live, "show", job_id, "--json").stdout)
    assert details["id"] == job_id and details["events"][0]["name"] == "created"

    assert cli(live, "logs", job_id).stdout == "hello cli\n"
    empty = cli(live, "logs", job_id, "--stderr")
    assert empty.exit_code == 0 and empty.stdout == ""


def test_submit_prints_id_or_json(live: Any) -> None:
    plain = cli(live, "submit", "sleep", "seconds=0")
    assert plain.exit_code == 0
    job_id = plain.stdout.strip()
    assert len(job_id) == 36
    as_json = cli(live, "submit", "sleep", "seconds=0", "--wait", "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["phase"] == "COMPLETED"


def test_failing_job_exits_one_and_shows_stderr(live: Any) -> None:
    result = cli(live, "submit", "fail", "code=5", "--wait")
    assert result.exit_code == 1
    assert "ERROR" in result.stdout and "exit code 5" in result.stdout
    job_id = result.stdout.split()[0]
    logs = cli(live, "logs", job_id, "--stderr")
    assert "fails on purpose with exit code 5" in logs.stdout


def test_refusals_are_one_line_with_the_field(live: Any) -> None:
    missing = cli(live, "submit", "echo")
    assert missing.exit_code == 1
    assert missing.stderr == "error: parameters.message: missing required parameter 'message'\n"
    bad = cli(live, "submit", "sleep", "seconds=soon")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: parameters.seconds: ")
    usage = cli(live, "submit", "echo", "message")
    assert usage.exit_code == 2 and usage.stderr == "error: parameter 'message' is not key=value\n"
    twice = cli(live, "submit", "echo", "message=a", "message=b")
    assert twice.exit_code == 2 and "given twice" in twice.stderr
    unknown = cli(live, "show", "00000000-0000-0000-0000-000000000000")
    assert unknown.exit_code == 1 and unknown.stderr.startswith("error: ")
    assert "Traceback" not in unknown.output


def test_abort_and_rm(live: Any) -> None:
    job_id = cli(live, "submit", "sleep", "seconds=60").stdout.strip()
    with Client(live.url) as jm:
        deadline = time.monotonic() + 20
        while jm.get(job_id)["phase"] != "EXECUTING" and time.monotonic() < deadline:
            time.sleep(0.05)
    aborted = cli(live, "abort", job_id)
    assert aborted.exit_code == 0 and aborted.stdout.strip() == f"{job_id} ABORTED"
    again = cli(live, "abort", job_id)
    assert again.exit_code == 1 and "already ended" in again.stderr
    removed = cli(live, "rm", job_id)
    assert removed.exit_code == 0
    gone = cli(live, "show", job_id)
    assert gone.exit_code == 1 and "no job" in gone.stderr


def test_logs_follow_until_the_job_ends_and_tail(live: Any) -> None:
    job_id = cli(live, "submit", "sleep", "seconds=1").stdout.strip()
    followed = cli(live, "logs", job_id, "-f")
    assert followed.exit_code == 0 and followed.stdout == "sleeping 1.0 s\n"
    with Client(live.url) as jm:
        assert jm.get(job_id)["phase"] == "COMPLETED"  # -f returned only after the end

    echo = cli(live, "submit", "echo", "message=one\ntwo\nthree", "--wait").stdout.split()[0]
    assert cli(live, "logs", echo, "--tail", "2").stdout == "two\nthree\n"
    assert cli(live, "logs", echo, "--tail", "0").stdout == ""


def test_types(live: Any) -> None:
    listed = cli(live, "types")
    assert listed.exit_code == 0
    for name in ("echo", "sleep", "fail", "counters", "cli-reporter"):
        assert name in listed.stdout
    sleep = cli(live, "types", "sleep")
    assert "seconds" in sleep.stdout and "0 .. 86400" in sleep.stdout
    echo = json.loads(cli(live, "types", "echo", "--json").stdout)
    assert [p["name"] for p in echo["parameters"]] == ["message"]
    assert cli(live, "types", "nope").exit_code == 1


def test_global_url_option_and_env(live: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["--url", live.url, "types", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)
    monkeypatch.setenv("JOBMILL_URL", live.url)
    assert runner.invoke(app, ["ls"]).exit_code == 0


def test_unreachable_server(live: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["ls", "--url", url])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot reach jobmill at {url}")


def test_hold_release_and_details(live: Any) -> None:
    slots = live.jobmill.settings.max_local_jobs
    front = [cli(live, "submit", "sleep", "seconds=60").stdout.strip() for _ in range(slots)]
    with Client(live.url) as jm:
        deadline = time.monotonic() + 20
        while any(jm.get(j)["native_id"] is None for j in front) and time.monotonic() < deadline:
            time.sleep(0.05)
        job_id = cli(live, "submit", "echo", "message=waits").stdout.strip()
        assert jm.get(job_id)["phase"] == "QUEUED"  # every slot is taken

        held = cli(live, "hold", job_id)
        assert held.exit_code == 0 and held.stdout == f"{job_id} HELD\n"
        again = cli(live, "hold", job_id)
        assert again.exit_code == 1
        assert again.stderr == f"error: job {job_id} is HELD: only a QUEUED job can be held\n"
        running = cli(live, "hold", front[0])
        assert running.exit_code == 1 and "does not suspend" in running.stderr

        shown = cli(live, "details", front[0])
        assert shown.exit_code == 0 and "(running)" in shown.stdout and "sleep.py" in shown.stdout
        as_json = json.loads(cli(live, "details", front[0], "--json").stdout)
        assert as_json["native_id"] == jm.get(front[0])["native_id"]
        never = cli(live, "details", job_id)
        assert never.exit_code == 1 and "has not reached its backend yet (HELD)" in never.stderr

        released = cli(live, "release", job_id)
        assert released.exit_code == 0 and released.stdout == f"{job_id} QUEUED\n"
        assert cli(live, "release", job_id).exit_code == 1
        for job in front:
            jm.abort(job)
        assert jm.wait(job_id, timeout=20)["phase"] == "COMPLETED"
    assert "Traceback" not in held.output + again.output + never.output


def test_submit_dry_run_prints_the_script_and_creates_nothing(live: Any) -> None:
    dry = cli(live, "submit", "echo", "message=hi; rm -rf /", "--run-id", "dry", "--dry-run")
    assert dry.exit_code == 0, dry.output
    lines = dry.stdout.splitlines()
    assert lines[0] == "# dry run: executor local; nothing was submitted"
    assert lines[1].startswith("# local process group, working directory ")
    assert "'hi; rm -rf /'" in dry.stdout
    as_json = json.loads(cli(live, "submit", "sleep", "--dry-run", "--json").stdout)
    assert as_json["executor"] == "local" and "sleep.py" in as_json["script"]
    with Client(live.url) as jm:
        assert jm.list(run_id="dry").jobs == [] and jm.list(type="sleep").jobs == []

    refused = cli(live, "submit", "echo", "--dry-run")
    assert refused.exit_code == 1
    assert refused.stderr == "error: parameters.message: missing required parameter 'message'\n"
    both = cli(live, "submit", "echo", "message=x", "--dry-run", "--wait")
    assert both.exit_code == 2 and "cannot be combined" in both.stderr


def test_counters_job_progress(live: Any) -> None:
    result = cli(live, "submit", "counters", "interval=0", "--wait")
    assert result.exit_code == 0, result.output
    assert "Example Counter" in result.stdout and "10" in result.stdout


# -- report from inside a job ------------------------------------------------------------------


def test_cli_report_inside_a_job(live: Any) -> None:
    result = cli(live, "submit", "cli-reporter", "n=7", "--wait")
    assert result.exit_code == 0, result.output
    job_id = result.stdout.split()[0]
    with Client(live.url) as jm:
        report = jm.get(job_id)["report"]
    assert report == {
        "counters": {"files": 7, "stage": ["calibrating", "green"]},
        "note": "half way",
    }
    assert "calibrating" in result.stdout


def test_client_report_inside_a_job(live: Any) -> None:
    result = cli(live, "submit", "py-reporter", "--wait", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["report"] == {"counters": {"files": 3}, "stage": "done"}


def test_report_outside_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBMILL_REPORT_URL", raising=False)
    monkeypatch.delenv("JOBMILL_TOKEN", raising=False)
    result = runner.invoke(app, ["report", "--counter", "files=1"])
    assert result.exit_code == 1 and "only inside a job" in result.stderr
    assert runner.invoke(app, ["report"]).exit_code == 2
    assert runner.invoke(app, ["report", "--counter", "files"]).exit_code == 2


def test_report_with_a_wrong_token_is_refused(live: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = cli(live, "submit", "echo", "message=x", "--wait").stdout.split()[0]
    monkeypatch.setenv("JOBMILL_REPORT_URL", f"{live.url}/api/v1/jobs/{job_id}/report")
    monkeypatch.setenv("JOBMILL_TOKEN", "not-the-token")
    result = runner.invoke(app, ["report", "--counter", "files=1"])
    assert result.exit_code == 1
    assert result.stderr == "error: token: this token is not valid for this job\n"


# -- token and db (directly on the database) ---------------------------------------------------


def test_token_create_and_db_upgrade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBMILL_DATABASE_URL", raising=False)
    home = tmp_path / "home"
    upgraded = runner.invoke(app, ["db", "upgrade", "--home", str(home)])
    assert upgraded.exit_code == 0 and "up to date" in upgraded.stdout
    created = runner.invoke(
        app,
        ["token", "create", "--user", "alice", "--admin", "--home", str(home), "--note", "tests"],
    )
    assert created.exit_code == 0
    secret = created.stdout.strip()
    assert len(secret) >= 40 and "shown" in created.stderr
    store = open_store(Settings(home=home), upgrade=False)
    try:
        record = store.tokens.find(secret)
        assert record is not None and (record.user, record.admin) == ("alice", True)
    finally:
        store.engine.dispose()
        store.read_engine.dispose()


def test_token_list_revoke_and_expiry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBMILL_DATABASE_URL", raising=False)
    home = str(tmp_path / "home")
    created = runner.invoke(
        app, ["token", "create", "--user", "bob", "--expires", "90d", "--home", home]
    )
    assert created.exit_code == 0 and "valid until" in created.stderr
    secret = created.stdout.strip()
    runner.invoke(app, ["token", "create", "--user", "carol", "--home", home])
    listed = runner.invoke(app, ["token", "list", "--json", "--home", home])
    assert listed.exit_code == 0
    rows = json.loads(listed.stdout)
    assert [(r["user"], r["state"]) for r in rows] == [("bob", "active"), ("carol", "active")]
    assert rows[0]["expires_at"] is not None and rows[1]["expires_at"] is None
    assert secret not in listed.stdout and "hash" not in listed.stdout
    table = runner.invoke(app, ["token", "list", "--home", home])
    assert "bob" in table.stdout and "EXPIRES" in table.stdout
    revoked = runner.invoke(app, ["token", "revoke", str(rows[0]["id"]), "--home", home])
    assert revoked.exit_code == 0 and "revoked token" in revoked.stderr
    active = json.loads(runner.invoke(app, ["token", "list", "--json", "--home", home]).stdout)
    assert [r["user"] for r in active] == ["carol"]
    every = runner.invoke(
        app, ["token", "list", "--all", "--json", "--user", "bob", "--home", home]
    )
    assert [r["state"] for r in json.loads(every.stdout)] == ["revoked"]
    missing = runner.invoke(app, ["token", "revoke", "999", "--home", home])
    assert missing.exit_code == 1 and "no token 999" in missing.stderr
    bad = runner.invoke(
        app, ["token", "create", "--user", "x", "--expires", "soon", "--home", home]
    )
    assert bad.exit_code == 2 and "--expires" in bad.stderr


# -- the real console script -------------------------------------------------------------------


def test_script_submit_wait_and_refusal(live: Any) -> None:
    ok = run("submit", "echo", "message=hi", "--wait", "--url", live.url)
    assert ok.returncode == 0, ok.stderr
    assert "COMPLETED" in ok.stdout
    missing = run("submit", "echo", "--url", live.url)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "error: parameters.message: missing required parameter 'message'"
    ]
    env_url = run("ls", "--json", JOBMILL_URL=live.url)
    assert env_url.returncode == 0 and len(json.loads(env_url.stdout)) == 1


def test_serve_public_address_with_a_token(tmp_path: Path, token_file: Path) -> None:
    home = str(tmp_path / "home")
    secret = run("token", "create", "--user", "ops", "--home", home).stdout.strip()
    port = free_port()
    proc = subprocess.Popen(
        [
            JOBMILL,
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--home",
            home,
            "--jobtypes",
            str(EXAMPLES),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        # Another account on this host has no local credential: anonymous, refused.
        nobody = str(tmp_path / "elsewhere" / "token")
        anonymous = run("ls", "--url", url, JOBMILL_TOKEN_FILE=nobody)
        assert anonymous.returncode == 1 and "bearer token is required" in anonymous.stderr
        authorised = run("ls", "--json", "--url", url, "--token", secret)
        assert authorised.returncode == 0 and json.loads(authorised.stdout) == []
        # The user who started the server: `serve` wrote their credential (0600), and the
        # CLI reads it for a server on this machine.
        assert token_file.stat().st_mode & 0o777 == 0o600
        mine = run("ls", "--json", "--url", url)
        assert mine.returncode == 0, mine.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_stops_on_a_broken_job_type_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "name: broken\ncommand: [echo]\nparameters:\n  x:\n    type: nonsense\n", encoding="utf-8"
    )
    result = run(
        "serve",
        "--port",
        str(free_port()),
        "--home",
        str(tmp_path / "home"),
        "--jobtypes",
        str(broken),
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: job types: {broken}:5: ")
    assert "Traceback" not in result.stderr


def test_results_get_and_rule_switches(live: Any, tmp_path: Path) -> None:
    done = run("submit", "echo", "message=from the cli", "--wait", "--url", live.url)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.split()[0]
    listed = run("results", job_id, "--json", "--url", live.url)
    assert listed.returncode == 0, listed.stderr
    names = [r["id"] for r in json.loads(listed.stdout)]
    assert "echo" in names
    table = run("results", job_id, "--url", live.url)
    assert table.stdout.startswith("echo\t")
    out = tmp_path / "out"
    got = run("get", job_id, "echo", "-o", str(out), "--url", live.url)
    assert got.returncode == 0, got.stderr
    assert Path(got.stdout.strip()).parent == out
    assert Path(got.stdout.strip()).read_text().strip() == "from the cli"
    everything = run("get", job_id, "-o", str(tmp_path / "all"), "--url", live.url)
    assert everything.returncode == 0 and len(everything.stdout.splitlines()) == len(names)
    missing = run("get", job_id, "nope", "-o", str(out), "--url", live.url)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")
    assert "Traceback" not in missing.stderr
    on = run("rules", "enable", "echo-incoming", "--url", live.url)
    assert on.returncode == 0 and on.stdout.strip() == "rule echo-incoming: enabled", on.stderr
    shown = json.loads(run("rules", "show", "echo-incoming", "--json", "--url", live.url).stdout)
    assert shown["rule"]["enabled"] is True
    off = run("rules", "disable", "echo-incoming", "--url", live.url)
    assert off.returncode == 0 and off.stdout.strip() == "rule echo-incoming: disabled"
    unknown = run("rules", "enable", "no-such-rule", "--url", live.url)
    assert unknown.returncode == 1 and "no-such-rule" in unknown.stderr
