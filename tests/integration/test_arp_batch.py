"""ARP executables that call the batch system themselves (the seed's model).

The definition's executable runs ``sbatch`` (or ``bsub``) and exits at once; jobmill reads the
batch id it printed (``Submitted batch job N``, ``Job <N> is submitted``) and follows that
batch job: the ARP status is the batch job's, kill cancels it, details describe it and the log
is its output.

The Slurm tests need a working Slurm (``sinfo``) whose jobs run on this host: they skip without
one, except in CI (``CI=true``), where they fail. The LSF test runs stand-in ``bsub``,
``bjobs`` and ``bkill`` commands that answer in the formats of ``tests/data/lsf/``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobmill.config import Settings
from jobmill.executors.lsf import LsfExecutor
from jobmill.executors.slurm import SlurmExecutor
from jobmill.factory import Jobmill, build
from jobmill.service.handover import announced
from tests.conftest import app_client, require_service, wait_for
from tests.integration.test_slurm import slurm_available

EXP = "xppi0915"
API = f"/api/v1/arp/experiments/{EXP}"
LSF_DATA = Path(__file__).resolve().parent.parent / "data" / "lsf"

SBATCH_SCRIPT = """#!/bin/sh
# An ARP executable as the seed's were: it submits its own batch job and exits.
# argv: <experiment> <run> <seconds> <exit code>
echo "submitting $1 run $2"
sbatch -o {out}/arp-$1-$2.%j.out -J arp-$1-$2 \\
    --wrap "echo processing $1 run $2; sleep $3; echo done; exit $4"
"""

BSUB_SCRIPT = """#!/bin/sh
# The same with LSF: bsub prints "Job <N> is submitted to queue <Q>."
echo "submitting $1 run $2"
{bin}/bsub -o {out}/lsf-%J.out < /dev/null
"""


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: what is tested here does not depend on the database."""
    return f"sqlite:///{tmp_path / 'jobmill.db'}"


def executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def define_and_apply(client: TestClient, script: str, parameters: str, run: int) -> str:
    body = {"name": f"sub{run}", "executable": script, "parameters": parameters}
    response = client.post(f"{API}/definitions", json=body)
    assert response.status_code == 201, response.text
    response = client.post(f"{API}/runs/{run}/apply", json={"definition": f"sub{run}"})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def entry(client: TestClient, job_id: str) -> dict[str, Any]:
    response = client.get(f"{API}/jobs/{job_id}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def handed_over(client: TestClient, job_id: str, executor: str) -> dict[str, Any]:
    """The entry once the job follows the batch job its script submitted."""
    result: dict[str, Any] = wait_for(
        lambda: (e := entry(client, job_id))["executor"] == executor and e, timeout=30
    )
    return result


def printed_id(jm: Jobmill, job_id: str, pattern: str) -> str:
    """The batch id the executable printed (its own stdout, through the native API)."""
    out = jm.jobs.files.log_path(jm.store.require(job_id), "stdout").read_text()
    found = re.search(pattern, out)
    assert found, out
    return found.group(1)


def ended(client: TestClient, job_id: str, timeout: float = 60) -> dict[str, Any]:
    result: dict[str, Any] = wait_for(
        lambda: (e := entry(client, job_id))["status"] in ("DONE", "EXIT") and e, timeout
    )
    return result


def test_announcements_are_found_by_the_executors_that_know_them() -> None:
    executors: dict[str, Any] = {"slurm": SlurmExecutor(), "lsf": LsfExecutor()}
    lsf = (LSF_DATA / "bsub_submitted.txt").read_text()
    found = announced(f"setting up\n{lsf}", executors)
    assert found is not None and (found.executor, found.native_id) == ("lsf", "4211")
    both = "Submitted batch job 77\nJob <5> is submitted to queue <q>.\n"
    found = announced(both, executors)
    assert found is not None and (found.executor, found.native_id) == ("slurm", "77")
    assert announced("Submitted batch job 77\n", {"lsf": LsfExecutor()}) is None
    assert announced("no batch job here: 12345\n", executors) is None


# -- Slurm, for real --------------------------------------------------------------------------


@pytest.fixture
def slurm_settings(settings: Settings) -> Settings:
    require_service(slurm_available(), "Slurm (sinfo)")
    return settings.with_(
        executors=("local", "slurm"),
        poll_interval=0.5,
        slurm_lost_after=10.0,
        slurm_command_timeout=20.0,
    )


def slurm_state(native_id: str) -> str:
    out = subprocess.run(  # fixed argv
        ["sacct", "-X", "-n", "-P", "-j", native_id, "-o", "State"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    ).stdout
    return out.strip().split()[0] if out.strip() else ""


def test_slurm_job_submitted_by_the_executable_is_followed_to_its_end(
    slurm_settings: Settings, tmp_path: Path
) -> None:
    script = executable(tmp_path / "submit.sh", SBATCH_SCRIPT.format(out=tmp_path))
    jm = build(slurm_settings)
    try:
        with app_client(jm) as client:
            job_id = define_and_apply(client, script, "3 0", 134261)
            first = handed_over(client, job_id, "slurm")
            native = printed_id(jm, job_id, r"Submitted batch job ([0-9]+)")
            # not DONE when the script exited: the batch job's own state, and its id
            assert first["lsf_id"] == native and first["tool_id"] == native
            assert first["status"] in ("PEND", "RUN"), first
            assert first["workflow_status"] in ("SUBMITTED", "RUNNING"), first
            details = client.get(f"{API}/jobs/{job_id}/details").json()
            assert details["native_id"] == native and f"JobId={native}" in details["details"]
            last = ended(client, job_id)
            assert (last["status"], last["workflow_status"], last["exit_code"]) == (
                "DONE",
                "DONE",
                0,
            ), last
            log = client.get(f"{API}/jobs/{job_id}/log")
            assert log.status_code == 200
            assert log.text == "processing xppi0915 run 134261\ndone\n"
            assert slurm_state(native) == "COMPLETED"
            events = client.get(f"/api/v1/jobs/{job_id}/events").json()
            handover = [e for e in events if "batch_job" in (e.get("data") or {})]
            assert len(handover) == 1 and handover[0]["name"] == "requeue", events
            assert handover[0]["data"]["batch_job"]["native_id"] == native
    finally:
        jm.close()


def test_slurm_job_submitted_by_the_executable_fails_and_is_killed(
    slurm_settings: Settings, tmp_path: Path
) -> None:
    script = executable(tmp_path / "submit.sh", SBATCH_SCRIPT.format(out=tmp_path))
    jm = build(slurm_settings)
    try:
        with app_client(jm) as client:
            failing = define_and_apply(client, script, "1 3", 1)
            slow = define_and_apply(client, script, "300 0", 2)
            handed_over(client, failing, "slurm")
            last = ended(client, failing)
            assert (last["status"], last["workflow_status"], last["exit_code"]) == (
                "EXIT",
                "FAILED",
                3,
            ), last
            native = handed_over(client, slow, "slurm")["lsf_id"]
            wait_for(lambda: entry(client, slow)["status"] == "RUN", timeout=60)
            killed = client.post(f"{API}/jobs/{slow}/kill")
            assert killed.status_code == 200 and killed.json()["success"] is True
            assert ended(client, slow)["workflow_status"] == "EXITED"
            assert wait_for(lambda: slurm_state(native) == "CANCELLED", timeout=30)
    finally:
        jm.close()


# -- LSF, through stand-in commands -----------------------------------------------------------

FAKE_BSUB = """#!/bin/sh
cat {data}/bsub_submitted.txt
"""
FAKE_BJOBS = """#!/bin/sh
dir=$(dirname "$0")
if [ "$1" = "-l" ]; then cat {data}/bjobs_long.txt; exit 0; fi
case "$*" in
  *output_file*) echo "4211|$(cat "$dir/user" 2>/dev/null || id -un)|{out}/lsf-4211.out|-" ;;
  *) echo "4211|$(cat "$dir/state")" ;;
esac
"""
FAKE_BKILL = """#!/bin/sh
dir=$(dirname "$0")
echo "$*" >> "$dir/killed"
echo "EXIT|130|TERM_OWNER: job killed by owner" > "$dir/state"
echo "Job <$1> is being terminated"
"""


def lsf_stand_ins(
    settings: Settings, tmp_path: Path, state: str
) -> tuple[Path, Path, str, Settings]:
    """Stand-in bsub/bjobs/bkill answering for job 4211 (in ``state``), the ARP executable
    that calls bsub, and settings with the local and LSF executors."""
    bin_dir = tmp_path / "lsfbin"
    bin_dir.mkdir()
    out = tmp_path / "lsfout"
    out.mkdir()
    for name, text in (("bsub", FAKE_BSUB), ("bjobs", FAKE_BJOBS), ("bkill", FAKE_BKILL)):
        executable(bin_dir / name, text.format(data=LSF_DATA, out=out))
    (bin_dir / "state").write_text(state + "\n")
    script = executable(tmp_path / "submit.sh", BSUB_SCRIPT.format(bin=bin_dir, out=out))
    lsf = settings.with_(executors=("local", "lsf"), lsf_bin=str(bin_dir), poll_interval=0.3)
    return bin_dir, out, script, lsf


def test_lsf_job_submitted_by_the_executable_is_followed_and_killed(
    settings: Settings, tmp_path: Path
) -> None:
    bin_dir, out, script, lsf = lsf_stand_ins(settings, tmp_path, "PEND|-|-")
    (out / "lsf-4211.out").write_text("lsf output\n")
    jm = build(lsf)
    try:
        with app_client(jm) as client:
            job_id = define_and_apply(client, script, "", 7)
            first = handed_over(client, job_id, "lsf")
            assert first["lsf_id"] == "4211" and first["status"] == "PEND", first
            (bin_dir / "state").write_text("RUN|-|-\n")
            wait_for(lambda: entry(client, job_id)["status"] == "RUN", timeout=15)
            details = client.get(f"{API}/jobs/{job_id}/details").json()
            assert details["details"] == (LSF_DATA / "bjobs_long.txt").read_text()
            assert client.get(f"{API}/jobs/{job_id}/log").text == "lsf output\n"
            stderr = client.get(f"{API}/jobs/{job_id}/log", params={"stream": "stderr"})
            assert stderr.status_code == 404 and stderr.json()["error"]["code"] == "no_log"
            assert client.post(f"{API}/jobs/{job_id}/kill").json()["success"] is True
            last = ended(client, job_id, timeout=15)
            assert last["status"] == "EXIT" and last["workflow_status"] == "EXITED"
            killed = bin_dir / "killed"  # the engine cancels it a moment after the abort
            assert wait_for(lambda: killed.exists() and killed.read_text() == "4211\n", 15)
    finally:
        jm.close()


def test_a_followed_batch_job_is_followed_again_after_a_restart(
    settings: Settings, tmp_path: Path
) -> None:
    bin_dir, _out, script, lsf = lsf_stand_ins(settings, tmp_path, "RUN|-|-")
    jm = build(lsf)
    try:
        with app_client(jm) as client:
            job_id = define_and_apply(client, script, "", 9)
            handed_over(client, job_id, "lsf")
            wait_for(lambda: entry(client, job_id)["status"] == "RUN", timeout=15)
    finally:
        jm.close()
    (bin_dir / "state").write_text("EXIT|3|-\n")  # it failed while jobmill was down
    again = build(lsf)
    try:
        with app_client(again) as client:
            last = ended(client, job_id, timeout=15)
            assert (last["status"], last["exit_code"], last["lsf_id"]) == ("EXIT", 3, "4211")
    finally:
        again.close()


def test_another_users_batch_job_named_in_the_output_is_not_followed(
    settings: Settings, tmp_path: Path
) -> None:
    """An executable that prints someone else's job id does not make jobmill follow, kill or
    read that job: its own job ends as its process did."""
    bin_dir, _out, script, lsf = lsf_stand_ins(settings, tmp_path, "RUN|-|-")
    (bin_dir / "user").write_text("someone-else\n")  # whose bjobs says job 4211 is
    jm = build(lsf)
    try:
        with app_client(jm) as client:
            job_id = define_and_apply(client, script, "", 11)
            last = ended(client, job_id, timeout=15)
            assert last["status"] == "DONE" and last["lsf_id"] != "4211", last
            job = jm.store.get(job_id)
            assert job is not None and job.executor == "local"
            assert not (bin_dir / "killed").exists()
    finally:
        jm.close()
