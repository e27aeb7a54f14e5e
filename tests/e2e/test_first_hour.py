"""A newcomer's first hour with the CLI and ``jobmill serve``: flags in ``--help``, Ctrl-C during
``--wait``, finding a server on another port, what ``serve`` says when it starts."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from jobmill.cli.main import app
from jobmill.client import Client
from jobmill.paths import server_file
from tests.conftest import wait_for
from tests.e2e.test_cli import EXAMPLES, JOBMILL, clean_env, free_port, run

runner = CliRunner()


def test_flags_show_as_flags_and_a_value_after_one_is_explained() -> None:
    for command in (["submit", "--help"], ["types", "--help"], ["ls", "--help"]):
        shown = runner.invoke(app, command, terminal_width=120)
        assert shown.exit_code == 0, shown.output
        assert "<bool>" not in shown.stdout, command
    submit = runner.invoke(app, ["submit", "--help"], terminal_width=120).stdout
    assert "--wait" in submit and "--abort-on-interrupt" in submit
    assert "--run-id" in submit and "<str>" in submit  # options with values keep their type
    misread = runner.invoke(app, ["submit", "echo", "--wait", "true", "--url", "http://x:1"])
    assert misread.exit_code == 2
    assert "'true' is not key=value: flags such as --wait take no value" in misread.stderr


def _waiting(live: Any, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """``jobmill submit sleep --wait`` as a real process, once its job is EXECUTING."""
    proc = subprocess.Popen(
        [JOBMILL, "submit", "sleep", "seconds=60", "--wait", "--url", live.url, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    assert proc.stdout is not None
    job_id = proc.stdout.readline().split()[0]  # not a terminal: one line per phase
    with Client(live.url) as jm:
        wait_for(lambda: jm.get(job_id)["phase"] == "EXECUTING", 20)
    return proc, job_id


def test_ctrl_c_during_wait_says_the_job_goes_on_and_how_to_abort_it(live: Any) -> None:
    proc, job_id = _waiting(live)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert f"interrupted: job {job_id} is still EXECUTING on the server" in err
    assert f"jobmill abort {job_id}" in err and "Traceback" not in err
    with Client(live.url) as jm:
        assert jm.get(job_id)["phase"] == "EXECUTING"
        jm.abort(job_id)


def test_abort_on_interrupt_aborts_the_job(live: Any) -> None:
    proc, job_id = _waiting(live, "--abort-on-interrupt")
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert f"interrupted: job {job_id} aborted" in err
    with Client(live.url) as jm:
        wait_for(lambda: jm.get(job_id)["phase"] == "ABORTED", 20)


def test_serve_says_where_its_data_is_what_it_loaded_and_the_cli_finds_it(
    tmp_path: Path, token_file: Path
) -> None:
    """On another port than 8080 (``make run PORT=8081``), the CLI of the user who started the
    server finds it without JOBMILL_URL: ``serve`` notes its URL beside the local credential."""
    home = tmp_path / "home"
    port = free_port()
    noted = server_file(token_file)
    assert noted == token_file.with_name("token.url")
    proc = subprocess.Popen(
        [JOBMILL, "serve", "--port", str(port), "--home", str(home), "--jobtypes", str(EXAMPLES)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        assert noted.read_text().strip() == url
        assert noted.stat().st_mode & 0o777 == 0o600
        found = run("submit", "echo", "message=found", "--wait")  # no --url, no JOBMILL_URL
        assert found.returncode == 0, found.stderr
        assert "COMPLETED" in found.stdout
        # An explicit JOBMILL_URL still wins, and the refusal says how to point elsewhere.
        elsewhere = run("ls", JOBMILL_URL=f"http://127.0.0.1:{free_port()}")
        assert elsewhere.returncode == 1
        assert "JOBMILL_URL=http://HOST:PORT" in elsewhere.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
    assert not noted.exists()  # forgotten when the server stops
    assert f"data: {home.resolve()} (database sqlite:///{home.resolve()}/jobmill.db)" in err
    assert "job types (" in err and f"from {EXAMPLES}: " in err and "echo" in err
    assert "rules (" in err
    assert f"open {url} " in err


def test_a_note_others_can_read_or_not_a_url_is_ignored(
    tmp_path: Path, token_file: Path, monkeypatch: Any
) -> None:
    from jobmill.client import default_url

    monkeypatch.delenv("JOBMILL_URL", raising=False)
    monkeypatch.delenv("JOBMILL_HOST", raising=False)
    monkeypatch.delenv("JOBMILL_PORT", raising=False)
    noted = server_file(token_file)
    noted.parent.mkdir(parents=True, exist_ok=True)
    assert default_url() == "http://127.0.0.1:8080"
    noted.write_text("http://127.0.0.1:8555\n")
    noted.chmod(0o644)  # readable by others: not trusted
    assert default_url() == "http://127.0.0.1:8080"
    noted.chmod(0o600)
    assert default_url() == "http://127.0.0.1:8555"
    monkeypatch.setenv("JOBMILL_PORT", "8666")  # an explicit setting wins
    assert default_url() == "http://127.0.0.1:8666"
    monkeypatch.delenv("JOBMILL_PORT")
    noted.write_text("file:///etc/passwd\n")
    assert default_url() == "http://127.0.0.1:8080"


def test_the_ocps_demo_client_explains_a_server_elsewhere_and_leaves_nothing_tracked(
    tmp_path: Path,
) -> None:
    root = Path(__file__).resolve().parents[2]
    env = clean_env(API_PROTOCOL="http", API_DOMAIN="127.0.0.1", API_PORT=str(free_port()))
    proc = subprocess.run(  # fixed argv
        [sys.executable, str(root / "examples/ocps/client.py"), "--timeout", "5"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: cannot reach the OCPS service at http://127.0.0.1:" in proc.stderr
    assert "API_PORT" in proc.stderr and "Traceback" not in proc.stderr
    # Run from the checkout, what it makes there (outputs, relative log dirs) is ignored.
    if (root / ".git").exists() and shutil.which("git"):
        for made in ("output/ap_411371_56.txt", "logs/x.out"):
            ignored = subprocess.run(["git", "check-ignore", "-q", made], cwd=root, check=False)
            assert ignored.returncode == 0, made
