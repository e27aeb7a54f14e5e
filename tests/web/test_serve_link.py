"""``jobmill serve`` prints a one-time sign-in link: opening it signs a browser in (once), and
an open live page does not hold the server's shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from jobmill.web.session import COOKIE
from tests.conftest import EXAMPLES, free_port, local_headers, wait_for

JOBMILL = str(Path(sys.executable).parent / "jobmill")
LINK = re.compile(r"open (http://\S+/ui/signin\?once=\S+) to sign in")


def test_printed_link_signs_in_once_and_live_pages_end_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBMILL_DATABASE")}
    # fmt: off
    proc = subprocess.Popen(  # fixed argv
        [JOBMILL, "serve", "--port", str(port), "--home", str(tmp_path / "home"),
         "--jobtypes", str(EXAMPLES)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    # fmt: on
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True).start()
    try:
        found = wait_for(lambda: next((LINK.search(x) for x in lines if LINK.search(x)), None), 30)
        link = found.group(1)
        assert link.startswith(f"http://127.0.0.1:{port}/ui/signin?once=")
        token = local_headers()["Authorization"].removeprefix("Bearer ")
        assert token not in link

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30, interval=0.1)
        with httpx.Client(timeout=10) as browser:
            first = browser.get(link)
            assert first.status_code == 303 and first.headers["location"] == "/"
            assert COOKIE in browser.cookies
            home = browser.get(f"http://127.0.0.1:{port}/")
            assert home.status_code == 200 and 'id="job-rows"' in home.text
            browser.cookies.clear()
            assert browser.get(link).status_code == 401  # used up
        # A live page stays open while the server is asked to stop.
        url = f"http://127.0.0.1:{port}/ui/live/jobs"
        with (
            httpx.Client(timeout=30, headers=local_headers()) as client,
            client.stream("GET", url) as stream,
        ):
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) in (0, -signal.SIGTERM)  # as uvicorn ends
            assert time.monotonic() - started < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
