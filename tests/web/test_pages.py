"""The web pages through an in-process client: sign-in, CSRF, rendering without JavaScript,
generated forms and their errors, 404s and who may see what (docs/web.md)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobmill.factory import Jobmill
from jobmill.web import signin_link
from jobmill.web.session import COOKIE, PRE_COOKIE
from tests.conftest import app_client, wait_phase

ANON = {"Authorization": ""}


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def sign_in(client: TestClient, token: str) -> str:
    """Sign in through the form; returns the session's CSRF token (from the next page)."""
    form = client.get("/ui/signin", headers=ANON)
    answer = client.post(
        "/ui/signin",
        data={"token": token, "csrf": csrf_of(form.text), "next": "/"},
        headers=ANON,
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/"
    home = client.get("/", headers=ANON)
    assert home.status_code == 200
    return csrf_of(home.text)


def make_job(client: TestClient, jobtype: str = "sleep", **parameters: object) -> str:
    answer = client.post("/api/v1/jobs", json={"type": jobtype, "parameters": parameters})
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["id"]
    return job_id


@pytest.fixture
def web(jobmill: Jobmill) -> Iterator[TestClient]:
    """A client without an engine (jobs stay QUEUED), authenticated as the admin."""
    with app_client(jobmill, start_engine=False) as test_client:
        yield test_client


def test_anonymous_is_sent_to_sign_in(web: TestClient) -> None:
    answer = web.get("/ui/jobtypes?x=1", headers=ANON, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/signin?next=%2Fui%2Fjobtypes%3Fx%3D1"
    posted = web.post("/ui/jobs/x/abort", headers=ANON, follow_redirects=False)
    assert posted.status_code == 303 and posted.headers["location"].startswith("/ui/signin")


def test_sign_in_sets_a_strict_http_only_session_and_never_the_token(
    web: TestClient, admin_token: str
) -> None:
    form = web.get("/ui/signin", headers=ANON)
    assert form.status_code == 200
    assert 'type="password"' in form.text and admin_token not in form.text
    answer = web.post(
        "/ui/signin",
        data={"token": admin_token, "csrf": csrf_of(form.text), "next": "/ui/rules"},
        headers=ANON,
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/rules"
    cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and COOKIE in v)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert admin_token not in cookie
    page = web.get("/", headers=ANON)
    assert "signed in as <strong>tester</strong>" in page.text
    assert admin_token not in page.text


def test_sign_in_refusals(web: TestClient, admin_token: str) -> None:
    form = web.get("/ui/signin", headers=ANON)
    token = csrf_of(form.text)
    stale = web.post("/ui/signin", data={"token": admin_token, "csrf": "forged"}, headers=ANON)
    assert stale.status_code == 403 and "CSRF" in stale.text
    assert COOKIE not in web.cookies
    wrong = web.post("/ui/signin", data={"token": "nope", "csrf": token}, headers=ANON)
    assert wrong.status_code == 401
    assert 'id="token-error"' in wrong.text and "invalid, expired or revoked" in wrong.text
    assert COOKIE not in web.cookies


def test_sign_in_goes_only_to_this_server(web: TestClient, admin_token: str) -> None:
    form = web.get("/ui/signin", headers=ANON)
    answer = web.post(
        "/ui/signin",
        data={"token": admin_token, "csrf": csrf_of(form.text), "next": "//evil.example/x"},
        headers=ANON,
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/"


def test_sign_out_ends_the_session(web: TestClient, admin_token: str) -> None:
    csrf = sign_in(web, admin_token)
    refused = web.post("/ui/signout", data={"csrf": "x"}, headers=ANON, follow_redirects=False)
    assert refused.status_code == 403
    out = web.post("/ui/signout", data={"csrf": csrf}, headers=ANON, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/ui/signin"
    again = web.get("/", headers=ANON, follow_redirects=False)
    assert again.status_code == 303


def test_one_time_link_signs_in_once(web: TestClient, admin_token: str) -> None:
    link = signin_link(web.app, "http://testserver", admin_token)  # type: ignore[arg-type]
    assert admin_token not in link
    first = web.get(link, headers=ANON, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    assert web.get("/", headers=ANON).status_code == 200
    web.cookies.clear()
    second = web.get(link, headers=ANON, follow_redirects=False)
    assert second.status_code == 401 and "already used" in second.text
    assert COOKIE not in web.cookies


def test_revoking_the_token_ends_its_sessions(
    jobmill: Jobmill, web: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jobmill.service.tokens.CACHE_SECONDS", 0.0)  # no 10 s cache
    secret, record = jobmill.tokens.create("alice")
    sign_in(web, secret)
    sessions = web.app.state.web_sessions  # type: ignore[attr-defined]
    assert sessions.count() == 1
    jobmill.tokens.revoke(record.id)
    answer = web.get("/", headers=ANON, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/signin")
    assert sessions.count() == 0


def test_forms_need_the_session_csrf_token(web: TestClient, admin_token: str) -> None:
    job_id = make_job(web, seconds=30)
    csrf = sign_in(web, admin_token)
    refused = web.post(f"/ui/jobs/{job_id}/abort", data={}, headers=ANON)
    assert refused.status_code == 403 and "CSRF" in refused.text
    forged = web.post(f"/ui/jobs/{job_id}/abort", data={"csrf": csrf + "x"}, headers=ANON)
    assert forged.status_code == 403
    assert web.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "QUEUED"
    done = web.post(
        f"/ui/jobs/{job_id}/abort", data={"csrf": csrf}, headers=ANON, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"] == f"/ui/jobs/{job_id}"
    assert web.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "ABORTED"


def test_cross_site_posts_are_refused_before_the_page(web: TestClient, admin_token: str) -> None:
    job_id = make_job(web, seconds=30)
    csrf = sign_in(web, admin_token)
    answer = web.post(
        f"/ui/jobs/{job_id}/abort",
        data={"csrf": csrf},
        headers={**ANON, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert answer.status_code == 403
    assert web.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "QUEUED"


def test_pages_render_their_data_without_javascript(web: TestClient) -> None:
    job_id = make_job(web, seconds=5)
    home = web.get("/")
    assert home.status_code == 200
    assert f'id="job-{job_id}"' in home.text and "QUEUED" in home.text
    assert home.headers["content-security-policy"].startswith("default-src 'self'")
    job = web.get(f"/ui/jobs/{job_id}")
    assert '<h2 id="params-h">Parameters</h2>' in job.text
    assert "<strong>created</strong>" in job.text  # the timeline from the event log
    assert f'action="/ui/jobs/{job_id}/hold"' in job.text
    assert f'href="/ui/jobs/{job_id}/abort"' in job.text  # to a confirmation page
    confirm = web.get(f"/ui/jobs/{job_id}/abort")
    assert f'action="/ui/jobs/{job_id}/abort"' in confirm.text
    for url in ("/ui/jobtypes", "/ui/rules", "/ui/waits", "/ui/experiments", "/ui/experiments/x1"):
        answer = web.get(url)
        assert answer.status_code == 200, url
        assert "<main" in answer.text


def test_list_filters_and_keyset_pages(web: TestClient) -> None:
    ids = [make_job(web, seconds=1) for _ in range(3)]
    echo = make_job(web, "echo", message="hello")
    only_echo = web.get("/?type=echo")
    assert f"job-{echo}" in only_echo.text and f"job-{ids[0]}" not in only_echo.text
    by_run = web.get("/?run=none-such")
    assert "No jobs match these filters" in by_run.text
    import jobmill.web.pages as pages

    size, pages.PAGE_SIZE = pages.PAGE_SIZE, 2
    try:
        first = web.get("/?type=sleep")
        assert f"job-{ids[2]}" in first.text and f"job-{ids[0]}" not in first.text
        older = re.search(r'href="(/\?[^"]*cursor=[^"]+)" rel="next"', first.text)
        assert older
        second = web.get(older.group(1).replace("&amp;", "&"))
        assert f"job-{ids[0]}" in second.text and f"job-{ids[2]}" not in second.text
    finally:
        pages.PAGE_SIZE = size
    bad = web.get("/?phase=NOPE")
    assert bad.status_code == 422 and "unknown phase" in bad.text
    by_id = web.get(f"/?id={echo}", follow_redirects=False)
    assert by_id.headers["location"] == f"/ui/jobs/{echo}"


def test_generated_form_mirrors_the_server_checks(web: TestClient) -> None:
    sleep = web.get("/ui/jobtypes/sleep").text
    seconds = re.search(r'<input id="param-seconds"[^>]*>', sleep)
    assert seconds
    assert 'type="number"' in seconds.group(0)
    assert 'min="0' in seconds.group(0) and 'max="86400' in seconds.group(0)
    assert 'step="any"' in seconds.group(0) and 'value="30"' in seconds.group(0)
    code = re.search(r'<input id="param-code"[^>]*>', sleep)
    assert code and 'step="1"' in code.group(0)
    assert "[s]" in sleep  # the unit
    echo = web.get("/ui/jobtypes/echo").text
    message = re.search(r'<input id="param-message"[^>]*>', echo)
    assert message and "required" in message.group(0)


def test_server_error_is_shown_next_to_its_field_and_nothing_is_stored(
    web: TestClient, admin_token: str
) -> None:
    csrf = sign_in(web, admin_token)
    before = web.get("/api/v1/jobs").json()["jobs"]
    answer = web.post(
        "/ui/jobtypes/sleep",
        data={"csrf": csrf, "p.seconds": "-5", "p.code": "0"},
        headers=ANON,
    )
    assert answer.status_code == 422
    assert 'id="param-seconds-error"' in answer.text
    assert 'aria-invalid="true"' in answer.text
    assert 'value="-5"' in answer.text  # the form keeps what was typed
    assert web.get("/api/v1/jobs").json()["jobs"] == before
    missing = web.post("/ui/jobtypes/echo", data={"csrf": csrf}, headers=ANON)
    assert missing.status_code == 422 and 'id="param-message-error"' in missing.text
    ok = web.post(
        "/ui/jobtypes/sleep",
        data={"csrf": csrf, "p.seconds": "2", "p.code": "", "run_id": "r7"},
        headers=ANON,
        follow_redirects=False,
    )
    assert ok.status_code == 303
    job = web.get("/api/v1/jobs/" + ok.headers["location"].rsplit("/", 1)[1]).json()
    assert job["parameters"] == {"seconds": 2, "code": 0} and job["run_id"] == "r7"


def test_clone_fills_the_form(web: TestClient) -> None:
    job_id = make_job(web, seconds=7, code=3)
    page = web.get(f"/ui/jobtypes/sleep?from={job_id}").text
    assert re.search(r'id="param-seconds"[^>]*value="7"', page)
    assert re.search(r'id="param-code"[^>]*value="3"', page)


def test_unknown_things_are_html_404s(web: TestClient) -> None:
    for url in (
        f"/ui/jobs/{uuid.uuid4()}",
        "/ui/jobtypes/none-such",
        f"/ui/jobs/{uuid.uuid4()}/results/x",
        f"/ui/jobs/{uuid.uuid4()}/explode",
    ):
        answer = web.get(url)
        assert answer.status_code == 404, url
        assert answer.headers["content-type"].startswith("text/html")
        assert "<h1>404</h1>" in answer.text


def test_another_users_job_is_not_found(jobmill: Jobmill, web: TestClient) -> None:
    job_id = make_job(web, seconds=5)
    secret, _ = jobmill.tokens.create("bob")
    answer = web.get(f"/ui/jobs/{job_id}", headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 404
    home = web.get("/", headers={"Authorization": f"Bearer {secret}"})
    assert f"job-{job_id}" not in home.text


def test_rules_toggle_is_for_administrators(jobmill: Jobmill, web: TestClient) -> None:
    page = web.get("/ui/rules").text
    assert "echo-incoming" in page and 'action="/ui/rules/echo-incoming/enable"' in page
    switched = web.post("/ui/rules/echo-incoming/enable", follow_redirects=False)
    assert switched.status_code == 303
    assert web.get("/api/v1/rules/echo-incoming").json()["enabled"] is True
    secret, _ = jobmill.tokens.create("carol")
    user = {"Authorization": f"Bearer {secret}"}
    assert "/ui/rules/echo-incoming/" not in web.get("/ui/rules", headers=user).text
    refused = web.post("/ui/rules/echo-incoming/disable", headers=user)
    assert refused.status_code == 403
    assert web.get("/api/v1/rules/echo-incoming").json()["enabled"] is True


def test_docs_load_nothing_from_another_server(web: TestClient) -> None:
    page = web.get("/docs", headers=ANON)
    assert page.status_code == 200
    external = re.findall(r'(?:src|href)="(https?:[^"]+)"', page.text)
    assert external == [], external
    assert web.get("/ui/static/docs/swagger-ui-bundle.js", headers=ANON).status_code == 200
    assert web.get("/redoc", headers=ANON).status_code == 404


@pytest.fixture
def anonymous_reads(jobmill: Jobmill) -> Iterator[TestClient]:
    """JOBMILL_ANONYMOUS=read: callers without credentials may read."""
    with app_client(jobmill, start_engine=False) as test_client:
        test_client.app.state.auth.anonymous_reads = True  # type: ignore[attr-defined]
        yield test_client


def test_anonymous_read_shows_pages_but_no_actions(anonymous_reads: TestClient) -> None:
    web = anonymous_reads
    job_id = make_job(web, seconds=5)
    home = web.get("/", headers=ANON)
    assert home.status_code == 200 and f"job-{job_id}" in home.text
    assert "anonymous (read only)" in home.text
    job = web.get(f"/ui/jobs/{job_id}", headers=ANON)
    assert "Sign in to act on this job" in job.text and "/hold" not in job.text
    posted = web.post(f"/ui/jobs/{job_id}/abort", headers=ANON, follow_redirects=False)
    assert posted.status_code == 303 and posted.headers["location"].startswith("/ui/signin")
    assert web.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "QUEUED"


def test_results_download_and_whole_log(client: TestClient) -> None:
    job_id = make_job(client, "echo", message="downloaded")
    wait_phase(client, job_id)
    page = client.get(f"/ui/jobs/{job_id}").text
    assert f'href="/ui/jobs/{job_id}/results/echo" download' in page
    result = client.get(f"/ui/jobs/{job_id}/results/echo")
    assert result.status_code == 200 and result.text == "downloaded\n"
    assert "attachment" in result.headers["content-disposition"]
    log = client.get(f"/ui/jobs/{job_id}/logs/stdout")
    assert log.text == "downloaded\n"
    assert f'href="/ui/jobs/{job_id}/provenance.svg"' in page
    graph = client.get(f"/ui/jobs/{job_id}/provenance.svg")
    assert graph.status_code == 200 and graph.headers["content-type"] == "image/svg+xml"
    assert "<svg" in graph.text and graph.headers["content-security-policy"].startswith(
        "default-src 'none'"
    )


def test_pre_cookie_is_scoped_to_the_sign_in_form(web: TestClient) -> None:
    form = web.get("/ui/signin", headers=ANON)
    cookie = form.headers["set-cookie"]
    assert PRE_COOKIE in cookie and "Path=/ui/signin" in cookie and "HttpOnly" in cookie


def test_hold_release_run_and_delete(web: TestClient, admin_token: str) -> None:
    csrf = sign_in(web, admin_token)
    job_id = make_job(web, seconds=5)

    def act(action: str, target: str | None = None) -> None:
        answer = web.post(
            f"/ui/jobs/{target or job_id}/{action}",
            data={"csrf": csrf},
            headers=ANON,
            follow_redirects=False,
        )
        assert answer.status_code == 303, answer.text

    act("hold")
    assert web.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "HELD"
    assert f'action="/ui/jobs/{job_id}/release"' in web.get(f"/ui/jobs/{job_id}").text
    act("release")
    assert web.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "QUEUED"
    pending = web.post(
        "/api/v1/jobs", json={"type": "sleep", "parameters": {}, "phase": "PENDING"}
    ).json()["id"]
    assert f'action="/ui/jobs/{pending}/run"' in web.get(f"/ui/jobs/{pending}").text
    act("run", pending)
    assert web.get(f"/api/v1/jobs/{pending}").json()["phase"] == "QUEUED"
    act("delete")
    assert web.get(f"/api/v1/jobs/{job_id}").status_code == 404
    unknown = web.post(f"/ui/jobs/{pending}/explode", data={"csrf": csrf}, headers=ANON)
    assert unknown.status_code == 404


def test_run_grid_actions(web: TestClient, admin_token: str, tmp_path: Path) -> None:
    script = tmp_path / "step.sh"
    script.write_text("#!/bin/sh\nsleep 30\n")
    script.chmod(0o755)
    api = "/api/v1/arp/experiments/xpp1"
    assert web.post(f"{api}/definitions", json={"name": "d1", "executable": str(script)}).is_success
    assert web.post(f"{api}/runs/3/start").is_success
    csrf = sign_in(web, admin_token)
    grid = web.get("/ui/experiments/xpp1", headers=ANON).text
    assert "Runs (newest first) by definition" in grid
    assert 'action="/ui/experiments/xpp1/apply"' in grid and "autorun: off" in grid
    applied = web.post(
        "/ui/experiments/xpp1/apply",
        data={"csrf": csrf, "run": "3", "definition": "d1"},
        headers=ANON,
        follow_redirects=False,
    )
    assert applied.status_code == 303 and applied.headers["location"] == "/ui/experiments/xpp1"
    entries = web.get(f"{api}/status").json()
    assert len(entries) == 1
    job_id = entries[0]["job_id"]
    grid = web.get("/ui/experiments/xpp1", headers=ANON).text
    assert f'href="/ui/jobs/{job_id}"' in grid and "START" in grid  # the summary
    again = web.post(
        "/ui/experiments/xpp1/apply",
        data={"csrf": csrf, "run": "3", "definition": "d1"},
        headers=ANON,
    )
    assert again.status_code == 409 and "has not ended" in again.text
    confirm = web.get(f"/ui/experiments/xpp1/confirm/kill?job={job_id}", headers=ANON)
    assert confirm.status_code == 200 and "Yes, kill" in confirm.text
    killed = web.post("/ui/experiments/xpp1/kill", data={"csrf": csrf, "job": job_id}, headers=ANON)
    assert killed.status_code == 200  # after the redirect: the grid
    assert web.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "ABORTED"
    removed = web.post(
        "/ui/experiments/xpp1/remove", data={"csrf": csrf, "job": job_id}, headers=ANON
    )
    assert removed.status_code == 200
    assert web.get(f"{api}/status").json() == []
    toggled = web.post(
        "/ui/experiments/xpp1/autorun",
        data={"csrf": csrf, "definition": "d1", "on": "true"},
        headers=ANON,
    )
    assert toggled.status_code == 200 and "autorun: on" in toggled.text
    refused = web.post("/ui/experiments/xpp1/apply", data={"run": "3", "definition": "d1"},
                       headers=ANON)  # fmt: skip
    assert refused.status_code == 403


def test_tags_and_dependencies_when_the_server_has_them(web: TestClient) -> None:
    first = make_job(web, seconds=5)
    made = web.post(
        "/api/v1/jobs",
        json={"type": "sleep", "parameters": {}, "tags": ["nightly"], "after": [first]},
    )
    if made.status_code == 422 and made.json()["error"]["field"] in ("tags", "after"):
        pytest.skip("this server has no tags or dependencies")
    assert made.status_code == 201, made.text
    second = made.json()["id"]
    page = web.get(f"/ui/jobs/{second}").text
    assert 'href="/?tag=nightly"' in page
    assert f'<dt>After</dt><dd><a href="/ui/jobs/{first}">' in page
    assert f'href="/ui/jobs/{second}"' in web.get(f"/ui/jobs/{first}").text  # dependents
    tagged = web.get("/?tag=nightly").text
    assert f"job-{second}" in tagged and f"job-{first}" not in tagged
    by_prefix = web.get(f"/?id={second[:8]}").text
    assert f"job-{second}" in by_prefix and f"job-{first}" not in by_prefix
    assert web.get("/?id=xyz!").status_code == 422
