"""``jobmill serve`` and signals: SIGHUP reloads job types and rules, SIGTERM stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port, local_headers, wait_for

JOBMILL = str(Path(sys.executable).parent / "jobmill")

ECHO = """
name: {name}
command: ["echo", "{{message}}"]
parameters:
  message: {{type: string, default: hi}}
"""


def _names(url: str) -> set[str]:
    answer = httpx.get(f"{url}/api/v1/jobtypes", headers=local_headers(), timeout=5)
    assert answer.status_code == 200, answer.text
    return {t["name"] for t in answer.json()}


def test_sighup_reloads_job_types_and_sigterm_stops(tmp_path: Path) -> None:
    types = tmp_path / "types"
    types.mkdir()
    (types / "first.yaml").write_text(ECHO.format(name="first"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBMILL_DATABASE")}
    # fmt: off
    proc = subprocess.Popen(  # fixed argv
        [JOBMILL, "serve", "--port", str(port), "--home", str(tmp_path / "home"),
         "--jobtypes", str(types)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # fmt: on
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30, interval=0.1)
        assert _names(url) == {"first"}
        (types / "second.yaml").write_text(ECHO.format(name="second"))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _names(url) == {"first", "second"}, timeout=10)
        # A broken file: the reload is refused and the running types stay.
        (types / "broken.yaml").write_text("name: broken\ncommand: 42\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None
        assert _names(url) == {"first", "second"}
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully (the lifespan stops the engine, watcher and rules),
        # then ends with the signal it was sent, as the convention is.
        assert proc.wait(20) in (0, -signal.SIGTERM)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert "Application shutdown complete" in stderr
        assert "reload refused" in stderr and "Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
