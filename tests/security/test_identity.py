"""Who is calling: another account on the same host, tokens that were revoked or expired, and
the token of a job that has ended (docs/security.md, "Identity")."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from jobmill.client import Client
from jobmill.domain.jobs import utcnow
from jobmill.factory import Jobmill
from jobmill.service.credentials import ensure_local_token
from tests.conftest import LiveServer, app_client
from tests.security.nobody import as_nobody

ANONYMOUS = {"Authorization": ""}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- another local account on a loopback server -------------------------------------------------

def _attack(url: str, token_file: str) -> dict[str, object]:
    """What another account can do: read files it may read, and send requests to loopback."""
    out: dict[str, object] = {}
    try:
        out["read_token_file"] = bool(Path(token_file).read_text())
    except OSError:
        out["read_token_file"] = False
    echo = {"type": "echo", "parameters": {"message": "x"}}
    with httpx.Client(base_url=url, timeout=10) as http:
        out["list"] = http.get("/api/v1/jobs").status_code
        out["create"] = http.post("/api/v1/jobs", json=echo).status_code
        out["arp"] = http.post(
            "/api/v1/arp/experiments/exp1/definitions",
            json={"name": "pwn", "executable": "/usr/bin/find"},
        ).status_code
        out["uws"] = http.post("/uws/echo", data={"MESSAGE": "x"}).status_code
        out["ocps"] = http.post(
            "/api/v1/job", json={"type": "ap", "env": {}, "log_dir": "/tmp"}
        ).status_code
    os.environ["JOBMILL_TOKEN_FILE"] = token_file
    with Client(url) as jm:
        out["client_token"] = jm.token is not None
    return out


def _as_nobody(url: str, token_file: str) -> dict[str, object]:
    """Run ``_attack`` in a child process that has become uid/gid ``nobody``."""
    return dict(as_nobody(_attack, url, token_file, timeout=60.0))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another uid (setuid)")
def test_another_account_on_the_host_is_anonymous_on_loopback(
    live: LiveServer, token_file: Path
) -> None:
    assert token_file.exists() and token_file.stat().st_mode & 0o777 == 0o600
    seen = _as_nobody(live.url, str(token_file))
    assert seen == {
        "read_token_file": False,
        "list": 401,
        "create": 401,
        "arp": 401,
        "uws": 401,
        "ocps": 401,
        "client_token": False,
    }
    assert live.jobmill.store.count() == 0
    # The server's own user, holding the file, is served.
    with httpx.Client(base_url=live.url, headers=live.headers) as http:
        assert http.get("/api/v1/jobs").status_code == 200


def test_a_token_file_others_can_read_is_not_trusted(tmp_path: Path) -> None:
    from jobmill.paths import read_token_file

    path = tmp_path / "token"
    path.write_text("secret\n")
    path.chmod(0o644)
    assert read_token_file(path) is None
    path.chmod(0o600)
    assert read_token_file(path) == "secret"


def test_the_local_credential_is_renewed_when_revoked(jobmill: Jobmill, token_file: Path) -> None:
    tokens = jobmill.store.tokens
    first = ensure_local_token(tokens, "tester", token_file)
    assert ensure_local_token(tokens, "tester", token_file) == first
    record = tokens.find(first)
    assert record is not None and record.admin and record.user == "tester"
    tokens.revoke(record.id)
    second = ensure_local_token(tokens, "tester", token_file)
    assert second != first and token_file.read_text().strip() == second
    assert token_file.stat().st_mode & 0o777 == 0o600


# -- token lifecycle ----------------------------------------------------------------------------


def test_revoked_and_expired_tokens_are_refused(client: TestClient, jobmill: Jobmill) -> None:
    tokens = jobmill.store.tokens
    revoked = tokens.add("alice", "revoked-secret", admin=False)
    tokens.revoke(revoked)
    tokens.add("alice", "expired-secret", admin=False, expires_at=utcnow() - timedelta(seconds=1))
    tokens.add("alice", "valid-secret", admin=False, expires_at=utcnow() + timedelta(days=90))
    for secret in ("revoked-secret", "expired-secret"):
        refused = client.get("/api/v1/jobs", headers=bearer(secret))
        assert refused.status_code == 401, secret
        assert refused.json()["error"]["field"] == "Authorization"
    assert client.get("/api/v1/jobs", headers=bearer("valid-secret")).status_code == 200
    valid = tokens.find("valid-secret")
    assert valid is not None and valid.last_used_at is not None


def test_a_token_expiring_while_cached_stops_at_its_expiry(
    client: TestClient, jobmill: Jobmill
) -> None:

    # Three seconds: time enough for the first request on a loaded machine; the token is
    # then in the look-up cache (10 s), which must not outlive its expiry.
    expires_at = utcnow() + timedelta(seconds=3)
    jobmill.store.tokens.add("alice", "brief-secret", admin=False, expires_at=expires_at)
    assert client.get("/api/v1/jobs", headers=bearer("brief-secret")).status_code == 200
    time.sleep(max(0.0, (expires_at - utcnow()).total_seconds()) + 0.2)
    assert client.get("/api/v1/jobs", headers=bearer("brief-secret")).status_code == 401


def test_an_ended_jobs_token_no_longer_reports(jobmill: Jobmill) -> None:
    from jobmill.domain.lifecycle import Action
    from jobmill.storage.tokens import hash_secret

    with app_client(jobmill, start_engine=False) as client:  # the test plays the engine
        created = client.post(
            "/api/v1/jobs",
            json={"type": "sleep", "parameters": {"seconds": 0}, "phase": "PENDING"},
        )
        job_id = created.json()["id"]
        jobmill.store.transition(job_id, Action.RUN, actor="test", reason="capacity")
        jobmill.store.transition(
            job_id, Action.START, actor="test", values={"token_hash": hash_secret("job-secret")}
        )
        url = f"/api/v1/jobs/{job_id}/report"
        header = {"X-Jobmill-Token": "job-secret", "Authorization": ""}
        assert client.post(url, json={"counters": {"n": 1}}, headers=header).status_code == 200
        as_bearer = client.post(url, json={"counters": {"n": 2}}, headers=bearer("job-secret"))
        assert as_bearer.status_code == 200
        jobmill.store.transition(job_id, Action.COMPLETE, actor="test")
        late = client.post(url, json={"counters": {"n": 3}}, headers=header)
        assert late.status_code in (403, 409) and late.json()["error"]["field"] == "token"
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        assert job["phase"] == "COMPLETED" and job["report"]["counters"] == {"n": 2}
