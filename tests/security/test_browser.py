"""Browser safety (issue 9, item 2): the Host check, the same-origin check, OCPS CORS.

The attacks: a web page that re-binds its DNS name to the server (foreign ``Host``), and a web
page on another site that posts forms or JSON to the server (cross-origin writes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from jobmill.api.app import create_app
from jobmill.api.browser import BrowserPolicy, split_host
from jobmill.config import Settings
from jobmill.factory import Jobmill
from tests.conftest import LiveServer

EVIL = "https://evil.example"
PORTAL = "https://portal.example.org"
OCPS_JOB = "/api/v1/job"
ECHO = {"type": "echo", "parameters": {"message": "hi"}}


@contextmanager
def app_with(jobmill: Jobmill, client: TestClient, **changes: Any) -> Iterator[TestClient]:
    """A second app over the same jobmill with changed settings, sending ``client``'s headers."""
    changed = dataclasses.replace(jobmill, settings=jobmill.settings.with_(**changes))
    with TestClient(create_app(changed, start_engine=False), headers=client.headers) as other:
        yield other


def jobs_of(client: TestClient) -> list[Any]:
    response = client.get("/api/v1/jobs")
    assert response.status_code == 200, response.text
    jobs: list[Any] = response.json()["jobs"]
    return jobs


def refused(response: httpx.Response, status: int, field: str) -> str:
    """The refusal's message; checks the status and the error shape (plain text under /uws/)."""
    assert response.status_code == status, response.text
    if response.request.url.path.startswith("/uws/"):
        assert response.headers["content-type"].startswith("text/plain")
        return response.text
    error = response.json()["error"]
    assert error["field"] == field and error["code"] in ("bad_request", "forbidden")
    return str(error["message"])


# -- Host ----------------------------------------------------------------------------------------

FACES = [
    ("GET", "/api/v1/jobs", {}),
    ("POST", "/api/v1/jobs", {"json": ECHO}),
    ("GET", "/uws/echo", {}),
    ("POST", "/uws/echo", {"data": {"MESSAGE": "hi"}}),
    ("GET", OCPS_JOB, {"params": {"id": "x"}}),
    ("POST", OCPS_JOB, {"json": {"type": "echo", "env": {}, "log_dir": "/tmp"}}),
    ("GET", "/api/v1/arp/experiments/x/definitions", {}),
    ("GET", "/api/v1/rules", {}),
    ("GET", "/healthz", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), FACES)
def test_foreign_host_is_refused_on_every_face(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    response = client.request(method, path, headers={"Host": "evil.example"}, **kwargs)
    assert "evil.example" in refused(response, 400, "Host")
    assert jobs_of(client) == []


def test_dns_rebinding_page_is_refused(client: TestClient) -> None:
    """A page on evil.example whose name now resolves to 127.0.0.1: same-origin in the browser's
    eyes, so ``Origin`` and ``Sec-Fetch-Site`` look fine; only ``Host`` gives it away."""
    page = {
        "Host": "evil.example:8080",
        "Origin": "http://evil.example:8080",
        "Sec-Fetch-Site": "same-origin",
    }
    assert refused(client.get("/api/v1/jobs", headers=page), 400, "Host")
    assert refused(client.post("/api/v1/jobs", json=ECHO, headers=page), 400, "Host")
    assert refused(client.post("/uws/echo", data={"MESSAGE": "x"}, headers=page), 400, "Host")
    assert jobs_of(client) == []


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8080", "127.0.0.1:1", "127.8.9.10", "[::1]:8080", "LOCALHOST."]
)
def test_loopback_names_are_allowed(client: TestClient, host: str) -> None:
    assert client.get("/api/v1/jobs", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["", "a b", "evil.example/x", "[::1", "x:y", "[not-v6]:80"])
def test_malformed_host_is_refused(client: TestClient, host: str) -> None:
    refused(client.get("/api/v1/jobs", headers={"Host": host}), 400, "Host")


def test_host_names_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_DOMAIN", raising=False)
    bound = BrowserPolicy.from_settings(Settings(host="node7.example.org"))
    assert bound.host_allowed("node7.example.org") and bound.host_allowed("localhost")
    assert not bound.host_allowed("evil.example")
    public = BrowserPolicy.from_settings(Settings(public_url="https://jobs.example.org:8443/jm"))
    assert public.host_allowed("jobs.example.org")
    listed = BrowserPolicy.from_settings(Settings(allowed_hosts=("a.example", "*.example.org")))
    assert listed.host_allowed("a.example") and listed.host_allowed("x.y.example.org")
    assert not listed.host_allowed("example.org") and not listed.host_allowed("badexample.org")
    assert BrowserPolicy.from_settings(Settings(allowed_hosts=("*",))).host_allowed("evil.example")
    v6 = BrowserPolicy.from_settings(Settings(host="2001:db8::1"))
    assert v6.host_allowed(split_host("[2001:db8:0::1]:8080")[0])  # type: ignore[index]


def test_the_callback_host_is_always_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs call back to ``callback_url``; its host must never be refused."""
    monkeypatch.setenv("API_DOMAIN", "callback.example.org")
    settings = Settings.from_env(host="0.0.0.0")
    host = split_host(settings.callback_url.split("://")[1])
    assert host is not None and host[0] == "callback.example.org"
    assert BrowserPolicy.from_settings(settings).host_allowed(host[0])


def test_a_real_server_checks_host(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url, timeout=10) as http:
        assert http.get("/healthz").status_code == 200  # Host: 127.0.0.1:<port>
        assert http.get("/healthz", headers={"Host": "evil.example"}).status_code == 400


# -- Origin and Sec-Fetch-Site on state-changing requests -----------------------------------------


@pytest.mark.parametrize("origin", [EVIL, "null", "http://testserver:8080", "http://127.0.0.1"])
def test_cross_origin_form_post_to_uws_is_refused(client: TestClient, origin: str) -> None:
    response = client.post(
        "/uws/echo", data={"MESSAGE": "pwned"}, headers={"Origin": origin}, follow_redirects=False
    )
    assert "may not change anything" in refused(response, 403, "Origin")
    assert jobs_of(client) == []


def test_cross_origin_json_post_to_native_is_refused(client: TestClient) -> None:
    response = client.post("/api/v1/jobs", json=ECHO, headers={"Origin": EVIL})
    assert EVIL in refused(response, 403, "Origin")
    # text/plain is what a page can send without a preflight
    plain = client.post(
        "/api/v1/jobs",
        content=b'{"type": "echo", "parameters": {"message": "hi"}}',
        headers={"Origin": EVIL, "Content-Type": "text/plain"},
    )
    refused(plain, 403, "Origin")
    assert jobs_of(client) == []


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_sec_fetch_site_from_elsewhere_is_refused(client: TestClient, site: str) -> None:
    headers = {"Sec-Fetch-Site": site}
    refused(client.post("/api/v1/jobs", json=ECHO, headers=headers), 403, "Origin")
    refused(client.post("/uws/echo", data={"MESSAGE": "x"}, headers=headers), 403, "Origin")
    assert jobs_of(client) == []


SOME_OF_EVERY_FACE = [
    ("POST", "/api/v1/jobs/render", {"json": ECHO}),
    ("POST", "/api/v1/jobs/batch", {"json": {"jobs": [ECHO]}}),
    ("POST", "/api/v1/jobs/00000000-0000-0000-0000-000000000000/abort", {}),
    ("DELETE", "/api/v1/jobs/00000000-0000-0000-0000-000000000000", {}),
    ("POST", "/api/v1/jobs/00000000-0000-0000-0000-000000000000/report", {"json": {}}),
    ("PUT", "/uws/echo/00000000-0000-0000-0000-000000000000/parameters/message", {}),
    ("DELETE", "/uws/echo/00000000-0000-0000-0000-000000000000", {}),
    ("POST", OCPS_JOB, {"data": {"type": "echo", "env": "{}", "log_dir": "/tmp"}}),
    ("POST", "/api/v1/arp/experiments/x/definitions", {"json": {}}),
    ("PATCH", "/api/v1/arp/experiments/x/definitions/y", {"json": {}}),
    ("POST", "/api/v1/arp/experiments/x/runs/1/start", {}),
    ("POST", "/api/v1/rules", {"json": {}}),
    ("POST", "/api/v1/rules/x/disable", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), SOME_OF_EVERY_FACE)
def test_cross_origin_writes_are_refused_on_every_face(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    response = client.request(method, path, headers={"Origin": EVIL}, **kwargs)
    refused(response, 403, "Origin")


def test_same_origin_requests_pass(client: TestClient) -> None:
    page = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/api/v1/jobs", json=ECHO, headers=page).status_code == 201
    response = client.post(
        "/uws/echo", data={"MESSAGE": "x"}, headers=page, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    with_port = {"Host": "localhost:8080", "Origin": "http://localhost:8080"}
    assert client.post("/api/v1/jobs", json=ECHO, headers=with_port).status_code == 201
    assert len(jobs_of(client)) == 3


def test_requests_without_browser_headers_pass(client: TestClient) -> None:
    """curl, scripts, pyvo and the CLI send neither ``Origin`` nor ``Sec-Fetch-Site``."""
    assert client.post("/api/v1/jobs", json=ECHO).status_code == 201
    response = client.post("/uws/echo", data={"MESSAGE": "x"}, follow_redirects=False)
    assert response.status_code == 303
    navigation = {"Sec-Fetch-Site": "none"}  # typed in the address bar, a bookmark
    assert client.post("/api/v1/jobs", json=ECHO, headers=navigation).status_code == 201


def test_reads_from_other_origins_are_not_refused(client: TestClient) -> None:
    """Reading is guarded by the browser (no CORS headers), not by this check."""
    response = client.get("/api/v1/jobs", headers={"Origin": EVIL, "Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_configured_origins_may_post(jobmill: Jobmill, client: TestClient) -> None:
    with app_with(jobmill, client, allowed_origins=(PORTAL,)) as other:
        portal = {"Origin": PORTAL, "Sec-Fetch-Site": "same-site"}
        assert other.post("/api/v1/jobs", json=ECHO, headers=portal).status_code == 201
        refused(other.post("/api/v1/jobs", json=ECHO, headers={"Origin": EVIL}), 403, "Origin")
        wrong_port = {"Origin": PORTAL + ":8443"}
        refused(other.post("/api/v1/jobs", json=ECHO, headers=wrong_port), 403, "Origin")
    with app_with(jobmill, client, public_url="https://jobs.example.org/jm") as proxied:
        behind = {"Host": "127.0.0.1:8080", "Origin": "https://jobs.example.org"}
        assert proxied.post("/api/v1/jobs", json=ECHO, headers=behind).status_code == 201


# -- CORS on the OCPS face -----------------------------------------------------------------------


def preflight(client: TestClient, path: str, origin: str) -> httpx.Response:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )


def test_ocps_has_no_cors_by_default(client: TestClient) -> None:
    answers = [
        client.get("/api/v1/schema/ap", headers={"Origin": PORTAL}),
        client.get(OCPS_JOB, params={"id": "x"}, headers={"Origin": PORTAL}),
        client.options(OCPS_JOB),
    ]
    for response in answers:
        assert response.status_code in (200, 204)
        assert not any(h.startswith("access-control-") for h in response.headers)
    refused(preflight(client, OCPS_JOB, PORTAL), 403, "Origin")
    cross = client.post(OCPS_JOB, json={}, headers={"Origin": PORTAL})
    refused(cross, 403, "Origin")


def test_ocps_cors_for_a_configured_origin(jobmill: Jobmill, client: TestClient) -> None:
    with app_with(jobmill, client, ocps_cors_origins=(PORTAL,)) as other:
        for path in (OCPS_JOB, "/api/v1/schema/ap", "/api/v1/monitor/complete"):
            answer = preflight(other, path, PORTAL)
            assert answer.status_code == 204
            assert answer.headers["access-control-allow-origin"] == PORTAL
            assert "POST" in answer.headers["access-control-allow-methods"]
            assert "Authorization" in answer.headers["access-control-allow-headers"]
        schema = other.get("/api/v1/schema/ap", headers={"Origin": PORTAL})
        assert schema.headers["access-control-allow-origin"] == PORTAL
        assert "Origin" in schema.headers["vary"]
        posted = other.post(
            OCPS_JOB, json={}, headers={"Origin": PORTAL, "Sec-Fetch-Site": "cross-site"}
        )
        assert posted.status_code == 400 and posted.json()["status"] == "error"  # reached OCPS
        assert posted.headers["access-control-allow-origin"] == PORTAL
        # another origin: no CORS, no preflight, no post
        evil = other.get("/api/v1/schema/ap", headers={"Origin": EVIL})
        assert "access-control-allow-origin" not in evil.headers
        refused(preflight(other, OCPS_JOB, EVIL), 403, "Origin")
        refused(other.post(OCPS_JOB, json={}, headers={"Origin": EVIL}), 403, "Origin")
        # the OCPS origin does not open the other faces
        native = other.post("/api/v1/jobs", json=ECHO, headers={"Origin": PORTAL})
        refused(native, 403, "Origin")
        assert "access-control-allow-origin" not in native.headers
    assert jobs_of(client) == []


def test_ocps_wildcard_cors_is_an_explicit_opt_in(jobmill: Jobmill, client: TestClient) -> None:
    with app_with(jobmill, client, ocps_cors_origins=("*",)) as other:
        answers = [
            preflight(other, OCPS_JOB, EVIL),
            other.options("/api/v1/schema/ap"),
            other.get("/api/v1/schema/ap"),
            other.get(OCPS_JOB, params={"id": "x"}, headers={"Origin": EVIL}),
            other.post(OCPS_JOB, json={}, headers={"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}),
            other.post(OCPS_JOB, json={}, headers={"Origin": "null"}),
        ]
        for response in answers:
            assert response.status_code in (200, 204, 400), response.text
            assert response.headers["access-control-allow-origin"] == "*"
            assert response.headers["access-control-allow-methods"] == (
                "POST, PUT, DELETE, OPTIONS, GET"
            )
        native = other.post("/api/v1/jobs", json=ECHO, headers={"Origin": EVIL})
        refused(native, 403, "Origin")
        assert "access-control-allow-origin" not in native.headers


def test_ocps_cors_follows_the_base_path(jobmill: Jobmill, client: TestClient) -> None:
    changes = {"ocps_basepath": "/ocps/v2", "ocps_cors_origins": (PORTAL,)}
    with app_with(jobmill, client, **changes) as other:
        assert preflight(other, "/ocps/v2/job", PORTAL).status_code == 204
        moved = other.get("/ocps/v2/schema/ap", headers={"Origin": PORTAL})
        assert moved.headers["access-control-allow-origin"] == PORTAL
        refused(other.post("/api/v1/jobs", json=ECHO, headers={"Origin": PORTAL}), 403, "Origin")


# -- settings ------------------------------------------------------------------------------------


def test_browser_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBMILL_ALLOWED_HOSTS", "jobs.example.org, *.cluster.example:8080")
    monkeypatch.setenv("JOBMILL_ALLOWED_ORIGINS", "https://portal.example.org/,http://x:8081")
    monkeypatch.setenv("JOBMILL_OCPS_CORS_ORIGINS", "*")
    settings = Settings.from_env()
    assert settings.allowed_hosts == ("jobs.example.org", "*.cluster.example:8080")
    assert settings.allowed_origins == ("https://portal.example.org", "http://x:8081")
    assert settings.ocps_cors_origins == ("*",)
    policy = BrowserPolicy.from_settings(settings)
    assert policy.host_allowed("node1.cluster.example") and policy.cors_any
    for bad in ("portal.example.org", "https://portal.example.org/path", "*"):
        monkeypatch.setenv("JOBMILL_ALLOWED_ORIGINS", bad)
        with pytest.raises(SystemExit, match="JOBMILL_ALLOWED_ORIGINS"):
            Settings.from_env()
    monkeypatch.delenv("JOBMILL_ALLOWED_ORIGINS")
    monkeypatch.setenv("JOBMILL_OCPS_CORS_ORIGINS", "ftp://x")
    with pytest.raises(SystemExit, match="JOBMILL_OCPS_CORS_ORIGINS"):
        Settings.from_env()
