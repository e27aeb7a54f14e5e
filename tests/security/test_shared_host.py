"""Another account on the same host against jobmill's newer faces (docs/security.md,
"Identity"): PipelineJobs, the workflow verbs, the web pages, and the files a server leaves on
disk.

A child process becomes uid/gid ``nobody`` and attacks a live server over loopback, as
``test_identity.py`` does for the older faces: it sends requests without credentials, with a
guessed token, with a nonce of another job, with a forged session cookie, and with the token of
another jobmill user ("mallory", a foreign caller); and it tries to read every file the server
made. What it saw comes back through a pipe as JSON; the parent checks it, and checks, as the
server's own user, that every job is as it was.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from jobmill.config import Settings
from jobmill.domain.lifecycle import ENDED
from jobmill.factory import Jobmill
from jobmill.web import live as web_live
from jobmill.web import pages as web_pages
from jobmill.web import signin_link
from jobmill.web.pages import ACTIONS
from jobmill.web.session import COOKIE, PRE_COOKIE
from tests.conftest import EXAMPLES, LiveServer, free_port, wait_for
from tests.security.nobody import as_nobody
from tests.security.test_identity import bearer

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to become another uid (setuid)"
)

PJ = "/api/v1/pipelinejobs"
EVENTS = f"{PJ}/events"
BODY_LIMIT = 64 * 1024
STREAM_READ = 1.5  # seconds a live page (Server-Sent Events) is read before giving up
JOBMILL = str(Path(sys.executable).parent / "jobmill")
LINK = re.compile(r"open (http://\S+/ui/signin\?once=\S+) to sign in")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SIGN_IN = "/ui/signin"


# -- the other account ----------------------------------------------------------------------------




def _send(url: str, probes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Send each probe (``name``, ``method``, ``path`` and optionally ``params``, ``json``,
    ``data``, ``headers``); what came back: status, Location and the start of the body."""
    seen: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as http:
        for probe in probes:
            http.cookies.clear()
            options = {k: probe[k] for k in ("params", "json", "data", "headers") if k in probe}
            with http.stream(probe["method"], probe["path"], **options) as answer:
                body = b""
                started = time.monotonic()
                for chunk in answer.iter_bytes():  # a live page streams: read a little of it
                    body += chunk
                    if len(body) > BODY_LIMIT or time.monotonic() - started > STREAM_READ:
                        break
            seen[probe["name"]] = {
                "status": answer.status_code,
                "location": answer.headers.get("location"),
                "cookies": answer.headers.get_list("set-cookie"),
                "body": body[:BODY_LIMIT].decode("utf-8", "replace"),
            }
    return seen


def _reach(paths: list[str], pid: int, url: str, guessed_link: str) -> dict[str, Any]:
    """What the other account can read of the server's files and process."""
    files: dict[str, Any] = {}
    for name in paths:
        path = Path(name)
        try:
            if path.is_dir():
                files[name] = {"listed": sorted(os.listdir(path))}
            else:
                files[name] = {"read": path.read_bytes()[: 8 << 20].decode("utf-8", "replace")}
        except OSError as exc:
            files[name] = {"refused": exc.errno}
    process: dict[str, Any] = {}
    for name in ("environ", "cmdline", "fd/1", "fd/2"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as handle:
                process[name] = handle.read(1 << 20).decode("utf-8", "replace")
        except OSError as exc:
            process[name] = {"refused": exc.errno}
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as http:
        link = http.get(guessed_link).status_code
    return {"files": files, "process": process, "guessed_link": link}


def refused(seen: dict[str, Any]) -> bool:
    """Refused: 401/403, or (a page) sent to the sign-in form."""
    return seen["status"] in (401, 403) or (
        seen["status"] == 303 and (seen["location"] or "").startswith(SIGN_IN)
    )


def leaks(seen: dict[str, dict[str, Any]], secrets_: dict[str, str]) -> list[str]:
    """``probe: secret`` for each secret found in an answer."""
    return [
        f"{name}: {what}"
        for name, answer in seen.items()
        for what, value in secrets_.items()
        if value in answer["body"] or value in (answer["location"] or "")
    ]


# -- the server's own user -------------------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test settings, with the ``external`` executor PipelineJobs use."""
    return settings.with_(executors=("local", "external"))


@pytest.fixture
def mallory(jobmill: Jobmill) -> str:
    """A token of another jobmill user (not an administrator): what a foreign caller holds."""
    secret = secrets.token_urlsafe(32)
    jobmill.store.tokens.add("mallory", secret, admin=False)
    return secret


def owner(live: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=live.url, headers=live.headers, timeout=20, trust_env=False)


def created(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


def wait_job(http: httpx.Client, job_id: str, *phases: str) -> dict[str, Any]:
    wanted = set(phases) or {p.value for p in ENDED}

    def reached() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(f"/api/v1/jobs/{job_id}").json()
        return job if job["phase"] in wanted else None

    found: dict[str, Any] = wait_for(reached, 20)
    return found


def job_state(http: httpx.Client, job_id: str) -> dict[str, Any]:
    """What the other account must not change: the job as its owner reads it."""
    answer = http.get(f"/api/v1/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    job = answer.json()
    keep = ("phase", "version", "parameters", "tags", "after", "dependents", "children", "report")
    return {key: job.get(key) for key in keep}


def job_count(http: httpx.Client) -> int:
    return len(http.get("/api/v1/jobs", params={"limit": 1000}).json()["jobs"])


# -- 1. PipelineJobs ------------------------------------------------------------------------------


def test_pipelinejobs_refuse_another_account(live: LiveServer, mallory: str) -> None:
    mark = f"pj-secret-{secrets.token_hex(8)}"
    with owner(live) as http:

        def make(n: int) -> dict[str, Any]:
            return created(
                http.post(
                    PJ,
                    json={
                        "type": "echo",
                        "parameters": {"message": f"{mark} {n}"},
                        "executor": "external",
                        "data": {"secret": mark},
                    },
                )
            )

        job, other = make(1), make(2)
        ran = http.post(
            EVENTS, json={"uuid": job["uuid"], "name": "run", "token": job["token"]}, headers={}
        )
        assert ran.status_code == 200 and ran.json()["state"] == "RUNNING", ran.text
        issued = http.post(f"{PJ}/{other['uuid']}/nonces", json={})
        other_nonce = created(issued)["nonce"]

        def snapshot() -> dict[str, Any]:
            found = {}
            for one in (job, other):
                uuid = one["uuid"]
                found[uuid] = {
                    "status": http.get(f"{PJ}/{uuid}").json(),
                    "history": len(http.get(f"{PJ}/{uuid}/history").json()["history"]),
                    "nonces": http.get(f"{PJ}/{uuid}/nonces").json(),
                    "job": job_state(http, uuid),
                }
            return found

        before, count = snapshot(), job_count(http)

    target = job["uuid"]
    guessed = secrets.token_hex(16)  # an update token is 128 random bits, as hex
    agave = {"id": "6400734946462224871-242ac113-0001-007", "status": "FINISHED"}
    nonce_of_other = {"x-nonce": other_nonce}
    mallory_header = bearer(mallory)
    probes: list[dict[str, Any]] = [
        # events, the three ways in, with no credential, a guessed token, another job's nonce
        {"name": "json", "json": {"uuid": target, "name": "finish"}},
        {"name": "json+guess", "json": {"uuid": target, "name": "finish", "token": guessed}},
        {"name": "json+nonce", "params": nonce_of_other, "json": {"uuid": target, "name": "fail"}},
        {"name": "url", "params": {"uuid": target, "event": "finish"}},
        {"name": "url+guess", "params": {"uuid": target, "event": "finish", "token": guessed}},
        {"name": "url+nonce", "params": {"uuid": target, "name": "finish", **nonce_of_other}},
        {"name": "agave", "params": {"uuid": target, "status": "FINISHED"}, "json": agave},
        {
            "name": "agave+guess",
            "params": {"uuid": target, "status": "FINISHED", "token": guessed},
            "json": agave,
        },
        {
            "name": "agave+nonce",
            "params": {"uuid": target, "status": "FAILED", **nonce_of_other},
            "json": agave,
        },
        {"name": "reset+nonce", "params": {"uuid": target, "event": "reset", **nonce_of_other}},
        # a bearer token: guessed, or another user's (alone and with a guessed update token)
        {
            "name": "json+guessed bearer",
            "json": {"uuid": target, "name": "finish"},
            "headers": bearer(guessed),
        },
        {
            "name": "json+mallory",
            "json": {"uuid": target, "name": "finish"},
            "headers": mallory_header,
        },
        {
            "name": "url+mallory+guess",
            "params": {"uuid": target, "event": "finish", "token": guessed},
            "headers": mallory_header,
        },
    ]
    for probe in probes:
        probe.update(method="POST", path=EVENTS)
    reads = {
        "status": f"{PJ}/{target}",
        "history": f"{PJ}/{target}/history",
        "nonces": f"{PJ}/{target}/nonces",
    }
    for what, path in reads.items():
        probes.append({"name": what, "method": "GET", "path": path})
        probes.append({"name": f"{what}+mallory", "method": "GET", "path": path})
        probes[-1]["headers"] = mallory_header
    new = {"type": "echo", "parameters": {"message": "x"}, "executor": "external"}
    probes += [
        {"name": "create", "method": "POST", "path": PJ, "json": new},
        {"name": "create+guess", "method": "POST", "path": PJ, "json": new},
        {"name": "issue nonce", "method": "POST", "path": f"{PJ}/{target}/nonces", "json": {}},
        {"name": "delete", "method": "DELETE", "path": f"{PJ}/{target}"},
    ]
    probes[-3]["headers"] = bearer(guessed)
    probes += [
        {**probe, "name": probe["name"] + "+mallory", "headers": mallory_header}
        for probe in probes[-2:]
    ]

    seen = as_nobody(_send, live.url, probes)

    statuses = {name: answer["status"] for name, answer in seen.items()}
    assert statuses == {
        # no credential at all: 401
        "json": 401,
        "url": 401,
        "agave": 401,
        # a token or nonce that is not this job's: 403
        "json+guess": 403,
        "json+nonce": 403,
        "url+guess": 403,
        "url+nonce": 403,
        "agave+guess": 403,
        "agave+nonce": 403,
        "reset+nonce": 403,
        "url+mallory+guess": 403,
        # a bearer token that names nobody: 401; another user's: the job is not found
        "json+guessed bearer": 401,
        "json+mallory": 404,
        "status": 401,
        "history": 401,
        "nonces": 401,
        "status+mallory": 404,
        "history+mallory": 404,
        "nonces+mallory": 404,
        "create": 401,
        "create+guess": 401,
        "issue nonce": 401,
        "delete": 401,
        "issue nonce+mallory": 404,
        "delete+mallory": 403,
    }
    secret_values = {
        "job data": mark,
        "the job's update token": job["token"],
        "the other job's update token": other["token"],
        "the nonce": other_nonce,
    }
    assert leaks(seen, secret_values) == []
    assert not any('"state"' in answer["body"] for answer in seen.values())
    with owner(live) as http:
        assert snapshot() == before  # state, history, nonces and the job: unchanged
        assert job_count(http) == count


# -- 2. workflows ---------------------------------------------------------------------------------


def test_workflow_verbs_refuse_another_account(live: LiveServer, mallory: str) -> None:
    mark = f"wf-secret-{secrets.token_hex(8)}"
    with owner(live) as http:

        def submit(job_type: str, **fields: Any) -> str:
            body = {"type": job_type, "parameters": {}, **fields}
            return str(created(http.post("/api/v1/jobs", json=body))["id"])

        top = submit("echo", parameters={"message": mark}, phase="PENDING", tags=["calib"])
        linked = submit("echo", parameters={"message": mark}, phase="PENDING", after=[top])
        loose = submit("echo", parameters={"message": mark}, phase="PENDING")
        failed = submit("fail", parameters={"code": 3})
        running = submit("sleep", parameters={"seconds": 60})
        wait_job(http, failed, "ERROR")
        wait_job(http, running, "EXECUTING")
        ids = (top, linked, loose, failed, running)
        before = {job_id: job_state(http, job_id) for job_id in ids}
        graph = http.get("/api/v1/graph", params={"job": top}).json()
        count = job_count(http)

    try:
        guessed = secrets.token_urlsafe(24)  # as a job's own token is made
        sub_job = {"type": "echo", "parameters": {"message": "x"}}
        acts: list[dict[str, Any]] = [
            {"name": "link", "method": "POST", "path": f"/api/v1/jobs/{loose}/links"},
            {"name": "unlink", "method": "DELETE", "path": f"/api/v1/jobs/{linked}/links/{top}"},
            {"name": "tag add", "method": "PUT", "path": f"/api/v1/jobs/{top}/tags/pwned"},
            {"name": "tag remove", "method": "DELETE", "path": f"/api/v1/jobs/{top}/tags/calib"},
            {"name": "tags", "method": "GET", "path": f"/api/v1/jobs/{top}/tags"},
            {"name": "reset", "method": "POST", "path": f"/api/v1/jobs/{failed}/reset"},
            {"name": "edit", "method": "PATCH", "path": f"/api/v1/jobs/{top}"},
            {"name": "clone", "method": "POST", "path": f"/api/v1/jobs/{top}/clone"},
            {"name": "run", "method": "POST", "path": f"/api/v1/jobs/{loose}/run"},
            {"name": "graph of a job", "method": "GET", "path": "/api/v1/graph"},
            {"name": "graph", "method": "GET", "path": "/api/v1/graph"},
            {"name": "job", "method": "GET", "path": f"/api/v1/jobs/{linked}"},
        ]
        acts[0]["json"] = {"after": [top]}
        acts[6].update(
            json={"parameters": {"message": "pwned"}},
            headers={"If-Match": f'"{before[top]["version"]}"'},
        )
        acts[9]["params"] = {"job": top}
        probes = [dict(act) for act in acts]
        for act in acts:
            headers = {**act.get("headers", {}), **bearer(mallory)}
            probes.append({**act, "name": act["name"] + "+mallory", "headers": headers})
        probes += [
            # a sub-job without the running job's token: none, a guessed one, either header
            {"name": "sub-job", "method": "POST", "path": "/api/v1/jobs", "json": sub_job},
            {
                "name": "sub-job+guess",
                "method": "POST",
                "path": "/api/v1/jobs",
                "json": sub_job,
                "headers": bearer(guessed),
            },
            {
                "name": "sub-job+guess header",
                "method": "POST",
                "path": "/api/v1/jobs",
                "json": sub_job,
                "headers": {"X-Jobmill-Token": guessed},
            },
            # the running job's report, without its token or with a guessed one
            {
                "name": "report",
                "method": "POST",
                "path": f"/api/v1/jobs/{running}/report",
                "json": {"counters": {"n": 1}},
            },
            {
                "name": "report+guess",
                "method": "POST",
                "path": f"/api/v1/jobs/{running}/report",
                "params": {"token": guessed},
                "json": {"counters": {"n": 1}},
            },
        ]

        seen = as_nobody(_send, live.url, probes)

        statuses = {name: answer["status"] for name, answer in seen.items()}
        expected = {act["name"]: 401 for act in acts}
        # Another user: the owner's jobs are not found; the graph is theirs (empty).
        expected.update({act["name"] + "+mallory": 404 for act in acts})
        expected.update({"graph of a job+mallory": 422, "graph+mallory": 200})
        expected.update(
            {
                "sub-job": 401,
                "sub-job+guess": 401,
                "sub-job+guess header": 401,
                "report": 401,
                "report+guess": 403,
            }
        )
        assert statuses == expected
        own_ids = {f"job {n}": job_id for n, job_id in enumerate(ids)}
        assert leaks(seen, {"job data": mark}) == []
        assert leaks({"graph+mallory": seen["graph+mallory"]}, own_ids) == []
        assert seen["graph+mallory"]["body"] == json.dumps(
            {"jobs": [], "after": [], "subjobs": [], "truncated": False}, separators=(",", ":")
        )
        with owner(live) as http:
            assert {job_id: job_state(http, job_id) for job_id in ids} == before
            assert http.get("/api/v1/graph", params={"job": top}).json() == graph
            assert job_count(http) == count
    finally:
        with owner(live) as http:
            http.post(f"/api/v1/jobs/{running}/abort")


# -- 3. the web pages -----------------------------------------------------------------------------

ACTIONS_OF = {
    "/ui/jobs/": sorted(ACTIONS),
    "/ui/experiments/{experiment}/confirm/": ["kill", "remove"],
    "/ui/experiments/": ["apply", "kill", "remove", "autorun"],
    "/ui/rules/": ["enable", "disable"],
}
"""The actions of each kind of page (the first prefix a page starts with)."""


def page_urls(method: str, values: dict[str, list[str]]) -> list[str]:
    """Every page of the web face (but the sign-in form) answering ``method``, each path
    parameter filled with each of its values (``action``: those of its kind of page). A page
    with a parameter not in ``values`` fails the test, so a new page is not forgotten."""
    urls: list[str] = []
    for router in (web_pages.router, web_live.router):
        for route in router.routes:
            if not isinstance(route, APIRoute) or method not in (route.methods or ()):
                continue
            path = route.path
            filled = [path]
            for param in re.findall(r"{(\w+)}", path):
                if param == "action":
                    kind = next(k for k in ACTIONS_OF if path.startswith(k))
                    options = ACTIONS_OF[kind]
                else:
                    assert param in values, f"no test value for {{{param}}} of {path}"
                    options = values[param]
                filled = [u.replace(f"{{{param}}}", v) for u in filled for v in options]
            urls += filled
    return urls


def test_web_pages_refuse_another_account(live: LiveServer, jobmill: Jobmill, mallory: str) -> None:
    mark = f"web-secret-{secrets.token_hex(8)}"
    assert jobmill.rules is not None
    rules = [rule.name for rule in jobmill.rules.rules()]
    with owner(live) as http:
        done = str(created(http.post("/api/v1/jobs", json=echo(mark)))["id"])
        pending = str(created(http.post("/api/v1/jobs", json=echo(mark, "PENDING")))["id"])
        wait_job(http, done, "COMPLETED")
        result_ids = [r["id"] for r in http.get(f"/api/v1/jobs/{done}/results").json()]
        assert result_ids
        assert http.get(f"/api/v1/jobs/{done}/logs/stdout").text.strip() == mark
        before = {job_id: job_state(http, job_id) for job_id in (done, pending)}
        count = job_count(http)
        rules_before = [r.enabled for r in jobmill.rules.rules()]

    values = {
        "job_id": [done, pending],
        "result_id": result_ids,
        "stream": ["stdout", "stderr"],
        "experiment": ["exp1"],
        "name": ["echo", *rules],  # a job type's form, a rule's switch
    }
    forged = {"Cookie": f"{COOKIE}={secrets.token_urlsafe(32)}"}
    probes: list[dict[str, Any]] = []
    for method in ("GET", "POST"):
        for url in page_urls(method, values):
            form = {"csrf": secrets.token_urlsafe(32), "message": "pwned"}
            base = {"method": method, "path": url, **({"data": form} if method == "POST" else {})}
            probes.append({**base, "name": f"{method} {url}"})
            probes.append({**base, "name": f"{method} {url} +forged", "headers": forged})
            probes.append({**base, "name": f"{method} {url} +mallory", "headers": bearer(mallory)})
    guess = secrets.token_urlsafe(32)
    probes += [
        {"name": "once", "method": "GET", "path": SIGN_IN, "params": {"once": guess}},
        {
            "name": "sign in with a guessed token",
            "method": "POST",
            "path": SIGN_IN,
            "data": {"csrf": guess, "token": secrets.token_urlsafe(32), "next": "/"},
            "headers": {"Cookie": f"{PRE_COOKIE}={guess}"},
        },
    ]

    seen = as_nobody(_send, live.url, probes)

    # Without a session, or with a forged cookie: every page sends to the sign-in form.
    for name, answer in seen.items():
        if "+mallory" not in name and name.startswith(("GET", "POST")):
            assert refused(answer), (name, answer["status"], answer["location"])
            assert not any(c.startswith(f"{COOKIE}=") for c in answer["cookies"]), name
    assert seen["once"]["status"] == 401
    assert seen["sign in with a guessed token"]["status"] == 401
    # Another user: the owner's jobs are not found, and no page shows them.
    for name, answer in seen.items():
        if "+mallory" in name and (done in name or pending in name):
            assert answer["status"] == 404, (name, answer["status"], answer["location"])
    assert seen["GET / +mallory"]["status"] == 200
    for name in ("GET / +mallory", "GET /ui/live/jobs +mallory", "GET /ui/waits +mallory"):
        assert done not in seen[name]["body"] and pending not in seen[name]["body"], name
    assert leaks(seen, {"job data": mark}) == []
    with owner(live) as http:
        assert {job_id: job_state(http, job_id) for job_id in (done, pending)} == before
        assert job_count(http) == count
    assert [r.enabled for r in jobmill.rules.rules()] == rules_before


def echo(message: str, phase: str = "QUEUED") -> dict[str, Any]:
    return {"type": "echo", "parameters": {"message": message}, "phase": phase}


def test_web_forms_need_the_sessions_csrf_token(live: LiveServer) -> None:
    """The server's own user, signed in with the one-time link: a form posted without the
    session's CSRF token, or with another, is refused and changes nothing."""
    token = live.headers["Authorization"].removeprefix("Bearer ")
    app = live.server.config.app
    assert isinstance(app, FastAPI)
    link = signin_link(app, live.url, token)
    with owner(live) as http:
        job = str(created(http.post("/api/v1/jobs", json=echo("x", "PENDING")))["id"])
        count = job_count(http)
    with httpx.Client(base_url=live.url, timeout=20, trust_env=False) as browser:
        signed_in = browser.get(link)
        assert signed_in.status_code == 303 and COOKIE in browser.cookies
        page = browser.get(f"/ui/jobs/{job}")
        assert page.status_code == 200
        csrf = CSRF.search(page.text)
        assert csrf is not None
        for form in ({}, {"csrf": secrets.token_urlsafe(32)}, {"csrf": ""}):
            assert browser.post(f"/ui/jobs/{job}/delete", data=form).status_code == 403
            assert browser.post(f"/ui/jobs/{job}/run", data=form).status_code == 403
            submit = browser.post("/ui/jobtypes/echo", data={**form, "message": "pwned"})
            assert submit.status_code == 403
            assert browser.post("/ui/signout", data=form).status_code == 403
        assert browser.get("/").status_code == 200  # still signed in
        with owner(live) as http:
            assert http.get(f"/api/v1/jobs/{job}").json()["phase"] == "PENDING"
            assert job_count(http) == count
        # With the session's token the same posts go through.
        deleted = browser.post(f"/ui/jobs/{job}/delete", data={"csrf": csrf.group(1)})
        assert deleted.status_code == 303
        with owner(live) as http:
            assert http.get(f"/api/v1/jobs/{job}").status_code == 404
        assert browser.post("/ui/signout", data={"csrf": csrf.group(1)}).status_code == 303
        out = browser.get("/")
        assert out.status_code == 303 and out.headers["location"].startswith(SIGN_IN)
        assert browser.get(link).status_code == 401  # the link worked once


# -- 4. files: a real `jobmill serve` in a home other accounts may enter ---------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, Any]]:
    """``jobmill serve`` started as a user on a login node starts it: from a home directory
    other accounts may enter (0755), with the usual umask (022), every path by default
    (``.jobmill``, ``~/.config/jobmill/token``). Jobs leave output, logs in a ``log_dir``, a
    parents file and a UWS upload; then the other account tries every path."""
    root = Path(tempfile.mkdtemp(prefix="jobmill-owner-"))
    root.chmod(0o755)
    mark = f"file-secret-{secrets.token_hex(8)}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBMILL_", "XDG_CONFIG"))}
    env["HOME"] = str(root)
    proc = subprocess.Popen(
        [JOBMILL, "serve", "--port", str(port), "--jobtypes", str(EXAMPLES)],
        cwd=root,
        env=env,
        umask=0o022,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        found = wait_for(lambda: next(filter(None, map(LINK.search, lines)), None), 30)
        link = found.group(1)
        code = parse_qs(urlsplit(link).query)["once"][0]
        token_file = root / ".config" / "jobmill" / "token"
        token = token_file.read_text().strip()

        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1, trust_env=False).is_success
            except httpx.HTTPError:
                return False

        wait_for(up, 30, 0.1)
        with httpx.Client(base_url=url, headers=bearer(token), timeout=20, trust_env=False) as http:
            first = str(created(http.post("/api/v1/jobs", json=echo(mark)))["id"])
            logged = {**echo(mark), "log_dir": "out"}
            in_log_dir = str(created(http.post("/api/v1/jobs", json=logged))["id"])
            after = str(
                created(http.post("/api/v1/jobs", json={**echo(mark), "after": [first]}))["id"]
            )
            uws = http.post(
                "/uws/echo",
                data={"MESSAGE": mark, "PHASE": "RUN"},
                files={"table": ("table.txt", mark.encode())},
                follow_redirects=False,
            )
            assert uws.status_code == 303, uws.text
            uploaded = uws.headers["location"].rstrip("/").rsplit("/", 1)[-1]
            jobs = [first, in_log_dir, after, uploaded]
            for job_id in jobs:
                assert wait_job(http, job_id)["phase"] == "COMPLETED"
            log_dir = http.get(f"/api/v1/jobs/{in_log_dir}").json()["log_dir"]
        paths = sorted(str(p) for p in root.rglob("*"))
        modes = {p: stat.S_IMODE(os.lstat(p).st_mode) for p in paths}
        guessed_link = f"{SIGN_IN}?once={secrets.token_urlsafe(32)}"
        reach = as_nobody(_reach, paths, proc.pid, url, guessed_link)
        # The link was printed, not written: the other account could not have used it.
        with httpx.Client(base_url=url, timeout=20, trust_env=False) as browser:
            assert browser.get(link).status_code == 303
        contents = {p: Path(p).read_bytes() for p in paths if Path(p).is_file()}
        yield {
            "root": root,
            "home": root / ".jobmill",
            "token_file": token_file,
            "mark": mark,
            "token": token,
            "code": code,
            "jobs": jobs,
            "log_dir": log_dir,
            "modes": modes,
            "reach": reach,
            "written": [p for p, data in contents.items() if code.encode() in data],
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def readable(served: dict[str, Any]) -> dict[str, str]:
    """The files the other account read, with their modes."""
    return {
        path: oct(served["modes"][path])
        for path, seen in served["reach"]["files"].items()
        if "read" in seen
    }


def test_serve_keeps_credentials_link_and_job_output_from_other_accounts(
    served: dict[str, Any],
) -> None:
    reach, modes, token_file = served["reach"], served["modes"], served["token_file"]
    # The local credential and the URL note: 0600 in a 0700 directory, unread.
    note = token_file.with_name("token.url")
    assert modes[str(token_file.parent)] == 0o700
    for path in (token_file, note):
        assert modes[str(path)] == 0o600
        assert "read" not in reach["files"][str(path)], path
    # The one-time sign-in link is printed to the terminal of `serve` and written to no file;
    # the other account cannot read the process's output or environment, and cannot guess it.
    assert served["written"] == []
    for name in ("environ", "fd/1", "fd/2"):
        assert isinstance(reach["process"][name], dict), name
    assert served["code"] not in reach["process"]["cmdline"]
    assert reach["guessed_link"] == 401
    # A job's output: its results, stdout and stderr, in its directory or its log_dir.
    outputs = [
        p for p in modes if p.endswith(("stdout.log", "stderr.log", "echo.txt", ".out", ".err"))
    ]
    assert len([p for p in outputs if p.endswith("echo.txt")]) == len(served["jobs"])
    assert any(p.startswith(served["log_dir"]) for p in outputs)
    for path in outputs:
        assert modes[path] & 0o077 == 0, f"{path} is {oct(modes[path])}"
        assert "read" not in reach["files"][path], path
    # No secret in anything the other account could read, but job data (below).
    for path, seen in reach["files"].items():
        text = seen.get("read", "")
        assert served["token"] not in text and served["code"] not in text, path


def test_nothing_under_the_home_is_readable_by_other_accounts(served: dict[str, Any]) -> None:
    home = str(served["home"])
    mark, files = served["mark"], served["reach"]["files"]
    opened = {
        path[len(home) :] or "/": mode
        for path, mode in readable(served).items()
        if path.startswith(home)
    }
    with_job_data = sorted(
        path[len(home) :] for path, seen in files.items() if mark in seen.get("read", "")
    )
    home_mode = served["modes"][home]
    assert (oct(home_mode & 0o077), opened, with_job_data) == ("0o0", {}, [])
