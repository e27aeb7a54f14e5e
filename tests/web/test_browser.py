"""The web pages in a real headless Chromium against a real server: what a person does.

Live updates are checked without reloading: each test marks the page's ``window`` and checks
the mark is still there after the change appeared (a reload would have wiped it).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, wait_for
from tests.web.conftest import Recorder, shot, sign_in

EXP = "xpptut15"
ARP = f"/api/v1/arp/experiments/{EXP}"
COUNTING = """#!{python}
import json, os, sys, time, urllib.request
url = os.environ["BATCH_UPDATE_URL"]
for i in range(1, 9):
    print("event batch", i, flush=True)
    body = json.dumps({{"counters": {{"Count": [i, "green" if i > 4 else "red"]}}}}).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={{"Content-Type": "application/json"}})
    urllib.request.urlopen(request, timeout=10).read()
    time.sleep(0.8)
"""


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """The browser tests run on SQLite only: the pages call the same services on either
    database (the route tests in test_pages.py run on both)."""
    yield f"sqlite:///{tmp_path / 'jobmill.db'}"


@pytest.fixture
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, headers=live.headers, timeout=20) as client:
        yield client


def mark(page: Any) -> None:
    page.evaluate("window.__notReloaded = true")


def not_reloaded(page: Any) -> bool:
    return bool(page.evaluate("window.__notReloaded === true"))


def phase_of(api: httpx.Client, job_id: str) -> str:
    phase: str = api.get(f"/api/v1/jobs/{job_id}").json()["phase"]
    return phase


def test_sign_in_with_the_keyboard_and_out(
    browser_page: tuple[Any, Recorder], live: LiveServer
) -> None:
    page, _ = browser_page
    page.goto("/")
    assert "/ui/signin" in page.url  # nobody signed in yet
    shot(page, "page-signin")
    assert page.evaluate("document.activeElement.id") == "token"  # ready to type
    page.get_by_label("Token").fill("not-a-token")
    page.get_by_label("Token").press("Enter")
    assert "invalid, expired or revoked token" in page.locator("#token-error").inner_text()
    sign_in(page, live)
    assert "signed in as tester" in page.locator(".who").inner_text()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    cookies = page.context.cookies()
    session = next(c for c in cookies if c["name"] == "jobmill_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # nothing a script can read
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/ui/signin$"))
    page.goto("/")
    assert "/ui/signin" in page.url


def test_one_time_link_signs_in(browser_page: tuple[Any, Recorder], live: LiveServer) -> None:
    from jobmill.web import signin_link

    page, _ = browser_page
    token = live.headers["Authorization"].removeprefix("Bearer ")
    link = signin_link(live.server.config.app, live.url, token)
    page.goto(link)
    page.wait_for_url(f"{live.url}/")
    assert "signed in as tester" in page.locator(".who").inner_text()
    page.context.clear_cookies()
    page.goto(link)
    assert "already used" in page.locator("#token-error").inner_text()


def test_submit_from_the_form_field_error_then_completed_live(
    browser_page: tuple[Any, Recorder], live: LiveServer, api: httpx.Client
) -> None:
    page, _ = browser_page
    sign_in(page, live)
    page.goto("/ui/jobtypes")
    shot(page, "page-jobtypes")
    page.get_by_role("link", name="sleep").click()
    seconds = page.get_by_label("seconds")
    # The browser refuses what the server would (max="86400"): nothing is posted.
    seconds.fill("100000")
    page.get_by_role("button", name="Submit").click()
    assert "/ui/jobtypes/sleep" in page.url
    assert page.evaluate("document.getElementById('param-seconds').validity.rangeOverflow")
    assert api.get("/api/v1/jobs").json()["jobs"] == []
    # Past the browser's checks, the server's 422 is shown next to the field.
    page.evaluate("document.querySelector('form.jobform').noValidate = true")
    seconds.fill("-1")
    page.get_by_role("button", name="Submit").click()
    error = page.locator("#param-seconds-error")
    assert "seconds" in error.inner_text()
    shot(page, "page-jobtype-form-error")
    assert page.get_by_label("seconds").get_attribute("aria-invalid") == "true"
    assert api.get("/api/v1/jobs").json()["jobs"] == []
    page.get_by_label("seconds").fill("1.5")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f-]{36}$"))
    mark(page)
    page.locator("#job-status .phase", has_text="COMPLETED").wait_for(timeout=20_000)
    assert not_reloaded(page)
    page.locator("#job-results a", has_text="sleep").wait_for()
    page.locator("#job-timeline", has_text="complete").wait_for()


def test_job_list_shows_new_jobs_and_phases_live(
    browser_page: tuple[Any, Recorder], live: LiveServer, api: httpx.Client
) -> None:
    page, _ = browser_page
    api.post("/api/v1/jobs", json={"type": "echo", "parameters": {"message": "hello"}})
    api.post("/api/v1/jobs", json={"type": "fail", "parameters": {"code": 2}, "run_id": "r12"})
    sign_in(page, live)
    assert page.locator("#job-rows tr").count() == 2
    mark(page)
    page.wait_for_function("document.getElementById('live-state').textContent === 'live'")
    job_id = api.post("/api/v1/jobs", json={"type": "sleep", "parameters": {"seconds": 1}}).json()[
        "id"
    ]
    row = page.locator(f"#job-{job_id}")
    row.wait_for()
    row.locator(".phase", has_text="COMPLETED").wait_for(timeout=20_000)
    assert not_reloaded(page)
    assert page.locator("#job-rows tr").first.get_attribute("id") == f"job-{job_id}"
    assert page.locator("#job-rows tr").count() == 3
    page.locator("#job-rows .phase", has_text="ERROR").wait_for()
    shot(page, "page-jobs")


def test_follow_a_log_and_counters(
    browser_page: tuple[Any, Recorder], live: LiveServer, api: httpx.Client
) -> None:
    page, _ = browser_page
    sign_in(page, live)
    job_id = api.post(
        "/api/v1/jobs", json={"type": "counters", "parameters": {"interval": 1.0}}
    ).json()["id"]
    page.goto(f"/ui/jobs/{job_id}")
    mark(page)
    log = page.locator("#log-stdout")
    assert "Step: 10" not in log.inner_text()  # ten seconds of writing ahead
    log.filter(has_text="Step: 10").wait_for(timeout=30_000)
    assert not_reloaded(page)
    assert page.get_by_label("Follow (scroll to new lines)").is_checked()
    row = page.locator("#job-counters tr", has_text="Example Counter")
    counter = row.locator("td", has_text=re.compile(r"^10$"))
    counter.wait_for()
    assert "red" in (counter.get_attribute("class") or "")
    page.locator("#job-status .phase", has_text="COMPLETED").wait_for()
    shot(page, "page-job")


def test_abort_a_job_with_confirmation(
    browser_page: tuple[Any, Recorder], live: LiveServer, api: httpx.Client
) -> None:
    page, _ = browser_page
    sign_in(page, live)
    job_id = api.post("/api/v1/jobs", json={"type": "sleep", "parameters": {"seconds": 60}}).json()[
        "id"
    ]
    page.goto(f"/ui/jobs/{job_id}")
    page.locator("#job-status .phase", has_text="EXECUTING").wait_for()
    page.get_by_role("link", name="Abort…").click()
    shot(page, "page-confirm-abort")
    assert phase_of(api, job_id) == "EXECUTING"  # not before it is confirmed
    page.get_by_role("button", name="Yes, abort").click()
    page.wait_for_url(f"{live.url}/ui/jobs/{job_id}")
    page.locator("#job-status .phase", has_text="ABORTED").wait_for()
    assert phase_of(api, job_id) == "ABORTED"


def test_run_grid_apply_and_counters_move(
    browser_page: tuple[Any, Recorder], live: LiveServer, api: httpx.Client, tmp_path: Path
) -> None:
    script = tmp_path / "count.py"
    script.write_text(COUNTING.format(python=sys.executable))
    script.chmod(0o755)
    made = api.post(f"{ARP}/definitions", json={"name": "count", "executable": str(script)})
    assert made.status_code == 201, made.text
    other = api.post(f"{ARP}/definitions", json={"name": "other", "executable": str(script)})
    assert other.status_code == 201, other.text
    assert api.post(f"{ARP}/runs/11/start").status_code == 200
    assert api.post(f"{ARP}/runs/12/start").status_code == 200
    page, _ = browser_page
    sign_in(page, live)
    page.goto(f"/ui/experiments/{EXP}")
    cell = page.locator("table.grid tbody tr", has_text="12").locator("td").first
    cell.get_by_role("button", name="apply").click()
    page.wait_for_url(f"{live.url}/ui/experiments/{EXP}")
    mark(page)
    cell = page.locator("table.grid tbody tr", has_text="12").locator("td").first
    seen = set()

    def counted() -> bool:
        text = cell.inner_text()
        found = re.search(r"Count\s+(\d+)", text)
        if found:
            seen.add(int(found.group(1)))
        return 8 in seen

    wait_for(counted, timeout=25, interval=0.1)
    assert len(seen) >= 2, seen  # the counter moved while the page was open
    assert not_reloaded(page)
    cell.locator(".status", has_text="DONE").wait_for(timeout=20_000)
    assert "green" in (cell.locator(".counter").get_attribute("class") or "")
    page.locator("#grid-summary", has_text="DONE 1").wait_for()
    shot(page, "page-run-grid", hide={str(tmp_path): "/opt/arp"})
    # Autorun per definition.
    header = page.get_by_role("columnheader", name=re.compile(r"^count"))
    header.get_by_role("button", name="autorun: off").click()
    page.get_by_role("columnheader", name=re.compile(r"^count")).get_by_role(
        "button", name="autorun: on"
    ).wait_for()
    assert api.get(f"{ARP}/definitions/other").json()["autorun"] is False
    assert api.get(f"{ARP}/definitions/count").json()["autorun"] is True


def test_toggle_a_rule(
    browser_page: tuple[Any, Recorder], live: LiveServer, api: httpx.Client
) -> None:
    page, _ = browser_page
    sign_in(page, live)
    page.goto("/ui/rules")
    row = page.locator("tr", has_text="echo-incoming")
    row.get_by_role("button", name="off · switch on").click()
    page.locator("tr", has_text="echo-incoming").get_by_role(
        "button", name="on · switch off"
    ).wait_for()
    assert api.get("/api/v1/rules/echo-incoming").json()["enabled"] is True
    shot(page, "page-rules")


def test_no_page_requests_anything_outside_the_server(
    browser_page: tuple[Any, Recorder], live: LiveServer, api: httpx.Client, tmp_path: Path
) -> None:
    page, recorder = browser_page
    sign_in(page, live)
    pattern = str(tmp_path / "incoming" / "*.fits")
    waiting = api.post(
        "/api/v1/jobs",
        json={"type": "sleep", "parameters": {"seconds": 1}, "wait_for": {"paths": [pattern]}},
    )
    assert waiting.status_code == 201, waiting.text
    job_id = api.post("/api/v1/jobs", json={"type": "echo", "parameters": {"message": "x"}}).json()[
        "id"
    ]
    pages = [
        "/",
        f"/ui/jobs/{job_id}",
        "/ui/jobtypes",
        "/ui/jobtypes/sleep",
        "/ui/experiments",
        f"/ui/experiments/{EXP}",
        "/ui/rules",
        "/ui/waits",
        "/docs",
    ]
    for url in pages:
        page.goto(url, wait_until="networkidle" if url == "/docs" else "load")
        if url == "/ui/waits":
            page.locator("td", has_text=pattern).wait_for()
            shot(page, "page-waits", hide={str(tmp_path): "/data"})
    page.goto("/docs")
    page.locator(".swagger-ui .info .title", has_text="jobmill").wait_for()
    # data: and blob: URLs of this server's pages are made in the page (Redoc's logo).
    local = (live.url, "data:", f"blob:{live.url}")
    outside = [u for u in recorder.urls if not u.startswith(local)]
    assert outside == []
    assert len(recorder.urls) > len(pages)
