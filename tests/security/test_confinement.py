"""Confinement: ``log_dir``, data waits, results, uploads and logs stay under the configured
roots, no symbolic link leads jobmill's reads or writes elsewhere, and jobs run with the
configured umask (docs/security.md)."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobmill.config import Settings
from jobmill.domain.errors import Forbidden
from jobmill.factory import Jobmill, build
from jobmill.service.files import open_inside
from tests.conftest import EXAMPLES, app_client, wait_phase
from tests.security.conftest import error
from tests.security.spew import spew_jobtypes

JOBS = "/api/v1/jobs"
OCPS = "/api/v1/job"
SECRET = "the server's secret\n"


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "roots"
    (root / "tester").mkdir(parents=True)
    return root


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET)
    return path


@pytest.fixture
def security_settings(settings: Settings, tmp_path: Path, roots: Path, data_dir: Path) -> Settings:
    return settings.with_(
        log_roots=(str(roots / "{user}"),),
        data_root=data_dir,
        data_roots=(str(data_dir),),
        jobtypes=(str(EXAMPLES), spew_jobtypes(tmp_path / "types")),
    )


def echo(log_dir: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "echo", "parameters": {"message": "hi"}, **extra}
    if log_dir is not None:
        body["log_dir"] = log_dir
    return body


def symlink_escape(tmp_path: Path, roots: Path) -> str:
    (tmp_path / "elsewhere").mkdir(exist_ok=True)
    (roots / "tester" / "link").symlink_to(tmp_path / "elsewhere")
    return str(roots / "tester" / "link" / "sub")


ESCAPES: dict[str, Callable[[Path, Path], str]] = {
    "absolute": lambda tmp, roots: str(tmp / "elsewhere" / "logs"),
    "system": lambda tmp, roots: "/etc/jobmill-logs",
    "dot-dot": lambda tmp, roots: str(roots / "tester" / ".." / ".." / "elsewhere" / "logs"),
    "relative dot-dot": lambda tmp, roots: "../../elsewhere/logs",
    "another user's root": lambda tmp, roots: str(roots / "alice" / "logs"),
    "symlink": symlink_escape,
}


# -- log_dir ------------------------------------------------------------------------------------


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_log_dir_outside_the_roots_is_refused_on_every_face(
    api: TestClient, jm: Jobmill, tmp_path: Path, roots: Path, escape: str
) -> None:
    log_dir = ESCAPES[escape](tmp_path, roots)
    native = error(api.post(JOBS, json=echo(log_dir)))
    assert native["field"] == "log_dir" and "JOBMILL_LOG_ROOTS" in native["message"]
    assert error(api.post(f"{JOBS}/render", json=echo(log_dir)))["field"] == "log_dir"
    batch = error(api.post(f"{JOBS}/batch", json={"jobs": [echo(), echo(log_dir)]}))
    assert batch["field"] == "jobs[1].log_dir"
    ocps = api.post(OCPS, json={"type": "fail", "env": {"code": 0}, "log_dir": log_dir})
    assert ocps.status_code == 400, ocps.text  # the OCPS face answers 400 for bad input
    assert ocps.json()["status"] == "error" and ocps.json()["field"] == "log_dir"
    form = api.post(OCPS, data={"type": "fail", "env": '{"code": 0}', "log_dir": log_dir})
    assert form.status_code == 400 and form.json()["field"] == "log_dir"
    assert jm.store.count() == 0
    assert not (tmp_path / "elsewhere" / "logs").exists()
    assert not (tmp_path / "elsewhere" / "sub").exists()
    assert not (roots / "alice").exists()


def test_log_dir_under_the_users_root_works(api: TestClient, roots: Path) -> None:
    created = api.post(JOBS, json=echo("mine/run1"))  # relative: under the user's own root
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["log_dir"] == str((roots / "tester" / "mine" / "run1").resolve())
    assert wait_phase(api, job["id"])["phase"] == "COMPLETED"
    out = Path(job["log_dir"]) / f"{uuid.UUID(job['id']).hex}.out"
    assert out.read_text() == "hi\n"
    absolute = api.post(JOBS, json=echo(str(roots / "tester" / "abs")))
    assert absolute.status_code == 201, absolute.text
    ocps = api.post(OCPS, json={"type": "fail", "env": {"code": 0}, "log_dir": "ocps"})
    assert ocps.status_code == 200 and ocps.json()["status"] == "ok", ocps.text
    assert (roots / "tester" / "ocps").is_dir()


def test_without_log_roots_log_dir_is_refused_and_says_how_to_enable_it(
    security_settings: Settings,
) -> None:
    jm = build(security_settings.with_(log_roots=()))
    try:
        with app_client(jm, start_engine=False) as api:
            refused = error(api.post(JOBS, json=echo("logs")))
            assert refused["field"] == "log_dir" and "JOBMILL_LOG_ROOTS" in refused["message"]
            assert api.post(JOBS, json=echo()).status_code == 201  # no log_dir: fine
    finally:
        jm.close()


def test_the_default_log_root_is_per_user_under_home(settings: Settings) -> None:
    defaults = Settings()
    assert defaults.log_roots == ("logs/{user}",)
    jm = build(settings.with_(log_roots=defaults.log_roots))
    try:
        with app_client(jm, start_engine=False) as api:
            created = api.post(JOBS, json=echo("demo"))
            assert created.status_code == 201, created.text
            home = settings.home.resolve()
            assert created.json()["log_dir"] == str(home / "logs" / "tester" / "demo")
            assert error(api.post(JOBS, json=echo(str(home / "jobs"))))["field"] == "log_dir"
    finally:
        jm.close()


def test_a_log_dir_swapped_for_a_link_before_the_job_starts_is_refused(
    api: TestClient, jm: Jobmill, tmp_path: Path, roots: Path
) -> None:
    created = api.post(JOBS, json=echo("later", phase="PENDING"))
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    later = roots / "tester" / "later"
    assert later.is_dir()
    later.rmdir()
    (tmp_path / "target").mkdir()
    later.symlink_to(tmp_path / "target")
    assert api.post(f"{JOBS}/{job_id}/run").status_code == 200
    job = wait_phase(api, job_id)
    assert job["phase"] == "ERROR" and "symbolic link" in job["error"]
    assert list((tmp_path / "target").iterdir()) == []


def test_a_log_turned_into_a_link_is_not_read(
    api: TestClient, roots: Path, secret: Path
) -> None:
    job = api.post(JOBS, json=echo("reads")).json()
    assert wait_phase(api, job["id"])["phase"] == "COMPLETED"
    out = roots / "tester" / "reads" / f"{uuid.UUID(job['id']).hex}.out"
    out.unlink()
    out.symlink_to(secret)
    native = api.get(f"{JOBS}/{job['id']}/logs/stdout")
    assert native.status_code == 403 and SECRET not in native.text
    uws = api.get(f"/uws/echo/{job['id']}/stdout")
    assert uws.status_code == 403 and SECRET not in uws.text


# -- data waits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../outside.dat", "/**/shadow", "link/x.dat", "{tmp}/elsewhere/*.dat"],
)
def test_a_data_wait_outside_the_data_roots_is_refused(
    api: TestClient, jm: Jobmill, tmp_path: Path, data_dir: Path, path: str
) -> None:
    (tmp_path / "elsewhere").mkdir()
    (data_dir / "link").symlink_to(tmp_path / "elsewhere")
    body = echo(wait_for={"paths": ["in/ok.dat", path.format(tmp=tmp_path)]})
    refused = error(api.post(JOBS, json=body))
    assert refused["field"] == "wait_for.paths[1]" and "JOBMILL_DATA_ROOTS" in refused["message"]
    assert error(api.post(f"{JOBS}/render", json=body))["field"] == "wait_for.paths[1]"
    assert jm.store.count() == 0
    inside = api.post(JOBS, json=echo(wait_for={"paths": ["in/ok.dat", "run*/**/x.dat"]}))
    assert inside.status_code == 201, inside.text


# -- results, uploads ---------------------------------------------------------------------------


def test_a_result_that_is_a_link_is_never_served(
    api: TestClient, jm: Jobmill, secret: Path
) -> None:
    job = api.post(JOBS, json=echo()).json()
    assert wait_phase(api, job["id"])["phase"] == "COMPLETED"
    assert [r["id"] for r in api.get(f"{JOBS}/{job['id']}/results").json()] == ["echo"]
    result = jm.jobs.files.workdir(job["id"]) / "echo.txt"
    result.unlink()
    result.symlink_to(secret)  # what a job could do: echo.txt -> a file only the server reads
    assert api.get(f"{JOBS}/{job['id']}/results").json() == []
    for url in (f"{JOBS}/{job['id']}/results/echo", f"/uws/echo/{job['id']}/results/echo"):
        answer = api.get(url)
        assert answer.status_code == 404 and SECRET not in answer.text
    assert b"secret" not in api.get(f"/uws/echo/{job['id']}/results").content
    with pytest.raises(Forbidden):  # a link swapped in after the listing: refused when opened
        open_inside(result, "result 'echo'")


def test_an_upload_turned_into_a_link_is_not_served(
    api: TestClient, jm: Jobmill, secret: Path
) -> None:
    created = api.post(
        "/uws/spew",
        data={"size": "0"},
        files={"DATA": ("t.vot", b"<VOTABLE/>", "text/xml")},
        follow_redirects=False,
    )
    assert created.status_code == 303, created.text
    url = created.headers["location"]
    job_id = url.rsplit("/", 1)[1]
    upload = jm.jobs.files.workdir(job_id) / "uploads" / "DATA"
    assert api.get(f"{url}/parameters/DATA").content == b"<VOTABLE/>"
    upload.unlink()
    upload.symlink_to(secret)
    answer = api.get(f"{url}/parameters/DATA")
    assert answer.status_code == 403 and SECRET not in answer.text


# -- umask ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o077, 0o600), (0o027, 0o640)])
def test_jobs_run_with_the_configured_umask(
    security_settings: Settings, umask: int, mode: int
) -> None:
    jm = build(security_settings.with_(umask=umask))
    try:
        with app_client(jm) as api:
            job = api.post(JOBS, json=echo("modes")).json()
            assert wait_phase(api, job["id"])["phase"] == "COMPLETED"
            made_by_job = jm.jobs.files.workdir(job["id"]) / "echo.txt"
            assert stat.S_IMODE(os.stat(made_by_job).st_mode) == mode
            log = Path(job["log_dir"]) / f"{uuid.UUID(job['id']).hex}.out"
            assert stat.S_IMODE(os.stat(log).st_mode) == mode & 0o666
            script = api.post(f"{JOBS}/render", json=echo()).json()["script"]
            assert f"umask {umask:03o}" in script
    finally:
        jm.close()


def test_the_umask_setting_is_read_as_octal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().umask == 0o077
    monkeypatch.setenv("JOBMILL_UMASK", "022")
    assert Settings.from_env().umask == 0o022
    monkeypatch.setenv("JOBMILL_UMASK", "0o027")
    assert Settings.from_env().umask == 0o027
    monkeypatch.setenv("JOBMILL_UMASK", "999")
    with pytest.raises(SystemExit, match="JOBMILL_UMASK"):
        Settings.from_env()
    monkeypatch.delenv("JOBMILL_UMASK")
    monkeypatch.setenv("JOBMILL_LOG_ROOTS", "/scratch/{user}/logs,/data/shared")
    monkeypatch.setenv("JOBMILL_DATA_ROOTS", "none")
    env = Settings.from_env()
    assert env.log_roots == ("/scratch/{user}/logs", "/data/shared") and env.data_roots == ()
