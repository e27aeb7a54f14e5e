"""Web sessions and one-time sign-in links live in the database: every jobmill of one site
(the workers of ``jobmill serve --workers``, ``jobmill api`` processes, a restarted server)
knows them, a link works once across all of them, and the rows hold no usable secret."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from jobmill.config import Settings
from jobmill.factory import Jobmill, build
from jobmill.storage.tables import web_sessions, web_signin_links
from jobmill.web import signin_link
from jobmill.web.session import COOKIE, Sessions, csrf_for
from tests.conftest import app_client
from tests.web.test_pages import ANON, csrf_of, make_job, sign_in


@pytest.fixture
def other(settings: Settings, jobmill: Jobmill) -> Iterator[Jobmill]:
    """A second jobmill on the same database (another process of the same site)."""
    jm = build(settings)
    try:
        yield jm
    finally:
        jm.close()


def rows(jm: Jobmill) -> list[dict[str, object]]:
    with jm.db.connect() as conn:
        found = [dict(r._mapping) for r in conn.execute(select(web_sessions))]
        found += [dict(r._mapping) for r in conn.execute(select(web_signin_links))]
    return found


def test_a_session_opened_in_one_jobmill_is_valid_in_another(
    jobmill: Jobmill, other: Jobmill, admin_token: str
) -> None:
    with (
        app_client(jobmill, start_engine=False) as first,
        app_client(other, start_engine=False) as second,
    ):
        csrf = sign_in(first, admin_token)
        cookie = first.cookies[COOKIE]
        second.cookies.set(COOKIE, cookie)
        page = second.get("/", headers=ANON, follow_redirects=False)
        assert page.status_code == 200
        assert csrf_of(page.text) == csrf == csrf_for(cookie)  # the same CSRF token everywhere
        # A form of the session posted to the other jobmill passes its CSRF check.
        job_id = make_job(first, seconds=30)
        done = second.post(
            f"/ui/jobs/{job_id}/abort", data={"csrf": csrf}, headers=ANON, follow_redirects=False
        )
        assert done.status_code == 303
        assert first.get(f"/api/v1/jobs/{job_id}").json()["phase"] == "ABORTED"
        # Signing out through the other ends the session for both.
        out = second.post("/ui/signout", data={"csrf": csrf}, headers=ANON, follow_redirects=False)
        assert out.status_code == 303
        assert first.get("/", headers=ANON, follow_redirects=False).status_code == 303


def test_a_session_outlives_the_jobmill_that_opened_it(
    settings: Settings, jobmill: Jobmill, admin_token: str
) -> None:
    with app_client(jobmill, start_engine=False) as first:
        sign_in(first, admin_token)
        cookie = first.cookies[COOKIE]
    restarted = build(settings)
    try:
        with app_client(restarted, start_engine=False) as again:
            again.cookies.set(COOKIE, cookie)
            assert again.get("/", headers=ANON, follow_redirects=False).status_code == 200
    finally:
        restarted.close()


def test_a_link_issued_by_one_jobmill_works_once_in_any(
    jobmill: Jobmill, other: Jobmill, admin_token: str
) -> None:
    link = signin_link(Sessions(jobmill.tokens), "http://testserver", admin_token)
    with (
        app_client(jobmill, start_engine=False) as first,
        app_client(other, start_engine=False) as second,
    ):
        redeemed = second.get(link, headers=ANON, follow_redirects=False)
        assert redeemed.status_code == 303 and COOKIE in second.cookies
        assert second.get("/", headers=ANON).status_code == 200
        again = first.get(link, headers=ANON, follow_redirects=False)
        assert again.status_code == 401 and "already used" in again.text
        assert COOKIE not in first.cookies


def test_racing_redeems_of_one_link_have_one_winner(jobmill: Jobmill, other: Jobmill) -> None:
    secret, _record = jobmill.tokens.create("alice")
    instances = [Sessions(jobmill.tokens), Sessions(other.tokens)]
    for _round in range(5):
        code = instances[0].issue_link(secret)
        won: list[int | None] = []
        barrier = threading.Barrier(8)

        def redeem(
            i: int, code: str = code, won: list[int | None] = won, barrier: Any = barrier
        ) -> None:
            barrier.wait()
            won.append(instances[i % 2].redeem_link(code))

        threads = [threading.Thread(target=redeem, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert len(won) == 8
        assert sum(w is not None for w in won) == 1, won


def test_revoking_the_token_ends_the_session_in_every_jobmill(
    jobmill: Jobmill, other: Jobmill, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jobmill.service.tokens.CACHE_SECONDS", 0.0)  # no 10 s cache
    secret, record = jobmill.tokens.create("alice")
    with (
        app_client(jobmill, start_engine=False) as first,
        app_client(other, start_engine=False) as second,
    ):
        sign_in(first, secret)
        second.cookies.set(COOKIE, first.cookies[COOKIE])
        assert second.get("/", headers=ANON, follow_redirects=False).status_code == 200
        other.tokens.revoke(record.id)
        for client in (second, first):
            answer = client.get("/", headers=ANON, follow_redirects=False)
            assert answer.status_code == 303
            assert answer.headers["location"].startswith("/ui/signin")
    assert Sessions(jobmill.tokens).count() == 0


def test_the_database_holds_no_usable_secret(jobmill: Jobmill, admin_token: str) -> None:
    code = Sessions(jobmill.tokens).issue_link(admin_token)
    with app_client(jobmill, start_engine=False) as web:
        csrf = sign_in(web, admin_token)
        cookie = web.cookies[COOKIE]
    found = rows(jobmill)
    assert len(found) == 2  # one session, one unused link
    text = repr(found)
    for secret in (admin_token, cookie, code, csrf):
        assert secret not in text
    session = next(r for r in found if "id_hash" in r)
    assert session["id_hash"] == hashlib.sha256(cookie.encode()).hexdigest()
    assert session["user"] == jobmill.settings.local_user
    token_row = jobmill.tokens.store.find(admin_token)
    assert token_row is not None and session["token_id"] == token_row.id
    link = next(r for r in found if "code_hash" in r)
    assert link["code_hash"] == hashlib.sha256(code.encode()).hexdigest()
    # The hash of a session id is no cookie: presented as one, it signs nobody in.
    with app_client(jobmill, start_engine=False) as web:
        web.cookies.set(COOKIE, str(session["id_hash"]))
        assert web.get("/", headers=ANON, follow_redirects=False).status_code == 303


def test_expired_sessions_and_links_are_refused_and_purged(
    jobmill: Jobmill, admin_token: str
) -> None:
    short = Sessions(jobmill.tokens, lifetime=0.5)
    session = short.open(admin_token, "tester")
    assert session is not None
    code = short.issue_link(admin_token, lifetime=0.5)
    assert short.get(session.id) is not None
    time.sleep(0.7)
    assert short.get(session.id) is None
    assert short.redeem_link(code) is None
    later = Sessions(jobmill.tokens)  # a fresh process purges at its first write
    fresh = later.open(admin_token, "tester")
    assert fresh is not None
    assert [r for r in rows(jobmill) if r.get("id_hash")] == [
        r
        for r in rows(jobmill)
        if r.get("id_hash") == hashlib.sha256(fresh.id.encode()).hexdigest()
    ]
    assert not [r for r in rows(jobmill) if "code_hash" in r]


def test_a_link_needs_an_active_token(jobmill: Jobmill) -> None:
    secret, record = jobmill.tokens.create("alice")
    jobmill.tokens.revoke(record.id)
    with pytest.raises(ValueError):
        Sessions(jobmill.tokens).issue_link(secret)
