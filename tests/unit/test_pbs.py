"""The PBS Pro / OpenPBS executor without PBS: the exact script (a golden file), the state
table, ``qstat -f -F json`` answers in ``tests/data/pbs/`` (written from PBS's documented formats,
see its README), and the whole command cycle against fake PBS commands on disk."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from jobmill.domain.jobtypes import Resources
from jobmill.domain.lifecycle import Phase
from jobmill.executors._commands import CommandFailed
from jobmill.executors.base import ExecutorUnavailable, LaunchSpec
from jobmill.executors.pbs import PBS_KILLS, PBS_STATES, PbsExecutor, map_job, parse_qstat

DATA = Path(__file__).resolve().parent.parent / "data" / "pbs"
JOB = "0b7e2c4a-1d2f-4e5a-9c3b-123456789abc"


def spec(**changes: Any) -> LaunchSpec:
    workdir = Path("/data/jobmill/jobs") / JOB
    values: dict[str, Any] = {
        "job_id": JOB,
        "argv": ["python3", "/opt/types/echo.py", "hi; $(rm -rf /) 'q'"],
        "env": {"PATH": "/usr/bin:/bin", "JOBMILL_TOKEN": "t0k'en"},
        "workdir": workdir,
        "stdout": workdir / "stdout.log",
        "stderr": workdir / "stderr.log",
    }
    values.update(changes)
    return LaunchSpec(**values)


# -- the script -----------------------------------------------------------------------------


def test_render_matches_the_golden_file() -> None:
    resources = Resources(
        cpus=4,
        memory_mb=8000,
        walltime=5400,
        partition="workq",
        account="rubin",
        extra=["-l place=scatter", "#PBS -m n"],
    )
    assert PbsExecutor().render(spec(resources=resources)) == (DATA / "render_full.sh").read_text()


def test_render_defaults() -> None:
    lines = (
        PbsExecutor(queue="short", account="ops").render(spec(execution_duration=61)).split("\n")
    )
    assert "#PBS -l select=1:ncpus=1" in lines  # no memory asked: none written
    assert "#PBS -l walltime=00:01:01" in lines  # seconds, not rounded
    assert "#PBS -q short" in lines and "#PBS -A ops" in lines
    assert not any(line.startswith("#PBS -V") for line in lines)  # the environment is explicit
    assert lines[lines.index("#PBS -A ops") + 1] == f"cd /data/jobmill/jobs/{JOB} || exit 1"
    long = PbsExecutor().render(spec(resources=Resources(walltime=100 * 3600 + 59)))
    assert "#PBS -l walltime=100:00:59" in long.split("\n")


def test_values_with_spaces_are_quoted() -> None:
    script = PbsExecutor().render(spec(stdout=Path("/w/a b/out.log"), workdir=Path("/w/a b")))
    assert '#PBS -o "/w/a b/out.log"' in script.split("\n")
    assert "cd '/w/a b' || exit 1" in script.split("\n")


@pytest.mark.parametrize(
    "changes",
    [
        {"stdout": Path("/tmp/x\nrm -rf ~")},
        {"stderr": Path("/tmp/a:b/err.log")},  # PBS reads host:path
        {"stdout": Path('/tmp/a"b/out.log')},
        {"resources": Resources(partition="q'1")},
        {"resources": Resources(extra=["-q a\n-q b"])},
        {"resources": Resources(extra=["-J 1-10"])},  # one native id is one job
        {"resources": Resources(extra=["#PBS -V"])},  # would pass the server's environment
        {"env": {"1BAD": "x"}},
    ],
)
def test_render_refuses_what_cannot_be_written_safely(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PbsExecutor().render(spec(**changes))


# -- the state table and recorded qstat answers ----------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "native_id", "phase", "exit_code", "error", "native"),
    [
        ("queued", "4301.pbs01", Phase.QUEUED, None, None, "Q"),
        ("running", "4302.pbs01", Phase.EXECUTING, None, None, "R"),
        ("held", "4303.pbs01", Phase.HELD, None, "held", "H (u)"),
        ("finished_ok", "4304.pbs01", Phase.COMPLETED, 0, None, "F"),
        ("finished_exit3", "4305.pbs01", Phase.ERROR, 3, "exit code 3", "F"),
        (
            "walltime",
            "4306.pbs01",
            Phase.ERROR,
            None,
            "timeout: the PBS walltime was reached",
            "F (Exit_status -29)",
        ),
        ("killed", "4307.pbs01", Phase.ERROR, 137, "killed by signal 9", "F"),
        ("deleted", "4308.pbs01", Phase.ABORTED, None, "deleted outside jobmill", "F (deleted)"),
    ],
)
def test_recorded_answers_map_through_the_table(
    recorded: str,
    native_id: str,
    phase: Phase,
    exit_code: int | None,
    error: str | None,
    native: str,
) -> None:
    statuses = parse_qstat((DATA / f"qstat_{recorded}.json").read_text())
    assert list(statuses) == [native_id]
    status = statuses[native_id]
    assert (status.phase, status.exit_code, status.error, status.native_state) == (
        phase,
        exit_code,
        error,
        native,
    )


def test_an_array_job_and_its_subjobs() -> None:
    statuses = parse_qstat((DATA / "qstat_array.json").read_text())
    assert {k: (s.phase, s.exit_code) for k, s in statuses.items()} == {
        "4320[].pbs01": (Phase.EXECUTING, None),  # B: begun
        "4320[1].pbs01": (Phase.COMPLETED, 0),  # X: a finished subjob
        "4320[2].pbs01": (Phase.EXECUTING, None),
        "4320[3].pbs01": (Phase.QUEUED, None),
    }


def test_a_missing_job_is_not_listed() -> None:
    assert parse_qstat((DATA / "qstat_missing.json").read_text(), ["4299.pbs01"]) == {}
    assert parse_qstat("", ["4299.pbs01"]) == {}


def test_the_recorded_unknown_job_answer_is_no_error(tmp_path: Path) -> None:
    """qstat prints the prolog, says "Unknown Job Id" on stderr and exits 153."""
    qstat = tmp_path / "qstat"
    qstat.write_text(
        f"#!/bin/sh\ncat '{DATA}/qstat_missing.json'\ncat '{DATA}/qstat_missing.stderr' >&2\n"
        "exit 153\n"
    )
    qstat.chmod(0o755)
    status = PbsExecutor(bin_dir=str(tmp_path)).poll(["4299.pbs01"])["4299.pbs01"]
    assert (status.phase, status.error) == (Phase.QUEUED, "4299.pbs01 is not in qstat -x yet")


def test_ids_are_matched_on_their_number() -> None:
    """qsub and qstat may name the server differently (short name, full name)."""
    out = (DATA / "qstat_running.json").read_text().replace("4302.pbs01", "4302.pbs01.example.org")
    statuses = parse_qstat(out, ["4302.pbs01", "4301.pbs01"])
    assert list(statuses) == ["4302.pbs01"]
    assert statuses["4302.pbs01"].phase is Phase.EXECUTING


def test_unreadable_json_is_no_answer_not_a_crash() -> None:
    with pytest.raises(ExecutorUnavailable, match="cannot read"):
        parse_qstat('{"Jobs": {"1.pbs01": {"job_state": "R"', ["1.pbs01"])


def test_every_state_in_the_table_maps() -> None:
    for state, (phase, _error) in PBS_STATES.items():
        job: dict[str, Any] = {"job_state": state, "Exit_status": 0, "substate": 92}
        assert map_job(job).phase is phase
    assert map_job({"job_state": "Z"}).phase is Phase.UNKNOWN
    assert map_job({"job_state": "M"}).error.startswith("lost: moved")  # type: ignore[union-attr]
    assert map_job({"job_state": "F", "substate": 93}).error == "finished without an exit status"
    assert map_job({"job_state": "F", "Exit_status": 271}).exit_code == 143  # 256 + SIGTERM
    assert map_job({"job_state": "F", "Exit_status": -27}).error == PBS_KILLS[-27]
    unknown = map_job({"job_state": "F", "Exit_status": -1})
    assert (unknown.phase, unknown.error) == (
        Phase.ERROR,
        "PBS could not run the job (Exit_status -1)",
    )


# -- the command cycle, through fake PBS commands on disk -----------------------------------

FAKE_PBS = """#!{python}
# A fake PBS command: the server's jobs live in a JSON file; every call is logged beside it.
import json, os, re, sys
STATE = {state!r}
command, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(STATE + ".log", "a") as log:
    log.write(" ".join([command, *args]) + "\\n")
with open(STATE) as handle:
    server = json.load(handle)
jobs = server["Jobs"]
def fail(message, code):
    sys.stderr.write(message + "\\n")
    sys.exit(code)
def save():
    with open(STATE, "w") as handle:
        json.dump(server, handle)
def job(nid, verb):
    if nid not in jobs:
        fail(f"{{verb}}: Unknown Job Id {{nid}}", 153)
    return jobs[nid]
if server.get("down"):
    fail(f"Connection refused\\n{{command}}: cannot connect to server pbs01 (errno=15010)", 218)
ids = [a for a in args if not a.startswith("-") and a != "json"]
if command == "qsub":
    script = sys.stdin.read()
    nid = f"{{4400 + len(jobs)}}.pbs01"
    name = re.search(r"^#PBS -N (\\S+)$", script, re.M).group(1)
    jobs[nid] = {{"Job_Name": name, "job_state": "Q", "substate": 10, "Hold_Types": "n"}}
    server.setdefault("scripts", {{}})[nid] = script
    save()
    print(nid)
elif command == "qstat" and "-F" in args:
    answer = {{"timestamp": 1741083300, "pbs_version": "2022.1.4", "pbs_server": "pbs01"}}
    found = {{nid: jobs[nid] for nid in ids if nid in jobs}}
    if found:
        answer["Jobs"] = found
    print(json.dumps(answer, indent=4))
    for nid in ids:
        if nid not in jobs:
            sys.stderr.write(f"qstat: Unknown Job Id {{nid}}\\n")
    sys.exit(153 if len(found) < len(ids) else 0)
elif command == "qstat":
    for nid in ids:
        print(f"Job Id: {{nid}}\\n    job_state = {{job(nid, 'qstat')['job_state']}}\\n")
elif command == "qselect":
    name = args[args.index("-N") + 1]
    print("\\n".join(nid for nid, one in jobs.items() if one.get("Job_Name") == name))
elif command in ("qhold", "qrls"):
    one = job(ids[0], command)
    if one["job_state"] in ("F", "X"):
        fail(f"{{command}}: Job has finished {{ids[0]}}", 35)
    one["Hold_Types"] = "u" if command == "qhold" else "n"
    if one["job_state"] in ("Q", "H"):  # a running job keeps running (no checkpoint)
        one["job_state"] = "H" if command == "qhold" else "Q"
    save()
elif command == "qdel":
    one = job(ids[0], "qdel")
    if one["job_state"] == "F":
        fail(f"qdel: Job has finished {{ids[0]}}", 35)
    if one["job_state"] == "R":
        one["Exit_status"] = 271
    one["job_state"], one["substate"] = "F", 91
    save()
"""


class FakePbs:
    """A directory of fake PBS commands sharing one server state (seeded from the recordings)."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "pbs-bin"
        self.bin.mkdir()
        self.state = root / "server.json"
        jobs: dict[str, Any] = {}
        for recorded in sorted(DATA.glob("qstat_*.json")):
            jobs.update(json.loads(recorded.read_text()).get("Jobs", {}))
        self.write({"Jobs": jobs})
        text = FAKE_PBS.format(python=sys.executable, state=str(self.state))
        for name in ("qsub", "qstat", "qdel", "qhold", "qrls", "qselect"):
            command = self.bin / name
            command.write_text(text)
            command.chmod(0o755)

    def read(self) -> dict[str, Any]:
        return json.loads(self.state.read_text())  # type: ignore[no-any-return]

    def write(self, server: dict[str, Any]) -> None:
        self.state.write_text(json.dumps(server))

    def calls(self) -> list[str]:
        log = Path(f"{self.state}.log")
        return log.read_text().splitlines() if log.exists() else []

    def set(self, native_id: str, **attributes: Any) -> None:
        server = self.read()
        if attributes:
            server["Jobs"][native_id].update(attributes)
        else:
            del server["Jobs"][native_id]
        self.write(server)

    def executor(self, **options: Any) -> PbsExecutor:
        return PbsExecutor(bin_dir=str(self.bin), timeout=20, **options)


@pytest.fixture
def pbs(tmp_path: Path) -> FakePbs:
    return FakePbs(tmp_path)


def test_submit_pipes_the_script_into_qsub(tmp_path: Path, pbs: FakePbs) -> None:
    executor = pbs.executor(queue="workq")
    job = spec(workdir=tmp_path / "job", stdout=tmp_path / "logs" / "o", stderr=tmp_path / "e")
    native = executor.submit(job)
    assert native.endswith(".pbs01") and pbs.calls() == ["qsub"]
    assert pbs.read()["scripts"][native] == executor.render(job)
    assert (tmp_path / "job").is_dir() and (tmp_path / "logs").is_dir()
    assert executor.poll([native])[native].phase is Phase.QUEUED


def test_recorded_submit_answer() -> None:
    def runner(argv: Sequence[str], **_: Any) -> str:
        return (DATA / "qsub_submitted.txt").read_text()

    job = spec(workdir=Path("/tmp"), stdout=Path("/tmp/o"), stderr=Path("/tmp/e"))
    assert PbsExecutor(runner=runner).submit(job) == "4301.pbs01"
    with pytest.raises(OSError, match="qsub printed no job id"):
        PbsExecutor(runner=lambda argv, **_: "qsub: would exceed limit\n").submit(job)


def test_one_qstat_for_many_jobs_and_an_unknown_one_is_not_an_error(pbs: FakePbs) -> None:
    ids = ["4301.pbs01", "4302.pbs01", "4303.pbs01", "4305.pbs01", "4299.pbs01"]
    statuses = pbs.executor().poll(ids)
    assert pbs.calls() == ["qstat -f -F json -x " + " ".join(ids)]  # exit 153: accepted
    assert [statuses[i].phase for i in ids] == [
        Phase.QUEUED,
        Phase.EXECUTING,
        Phase.HELD,
        Phase.ERROR,
        Phase.QUEUED,  # unknown for now: lost only after lost_after
    ]


def test_qstat_is_asked_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def runner(argv: Sequence[str], **kwargs: Any) -> str:
        calls.append(list(argv))
        assert kwargs["accept"] == (0, 153)
        return "{}"

    monkeypatch.setattr(PbsExecutor, "status_chunk", 2)
    PbsExecutor(runner=runner).poll([f"{n}.pbs01" for n in range(5)])
    assert [len(argv) - 5 for argv in calls] == [2, 2, 1]


def test_a_job_qstat_no_longer_knows_is_lost_after_the_grace_period(
    pbs: FakePbs, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [0.0]
    monkeypatch.setattr("jobmill.executors.batch.time.monotonic", lambda: clock[0])
    executor = pbs.executor(lost_after=20)
    assert executor.poll(["4302.pbs01"])["4302.pbs01"].phase is Phase.EXECUTING
    pbs.set("4302.pbs01")  # purged from the server's history
    clock[0] = 5
    assert executor.poll(["4302.pbs01"])["4302.pbs01"].phase is Phase.EXECUTING
    clock[0] = 26
    lost = executor.poll(["4302.pbs01"])["4302.pbs01"]
    assert lost.phase is Phase.ERROR
    assert lost.error == "lost: PBS job 4302.pbs01 is unknown to qstat -x (for 20 s)"


def test_a_held_job_that_finished_unseen_is_reported_executing_first(pbs: FakePbs) -> None:
    executor = pbs.executor()
    assert executor.poll(["4303.pbs01"])["4303.pbs01"].phase is Phase.HELD
    assert executor.poll(["4303.pbs01"])["4303.pbs01"].phase is Phase.HELD  # held stays held
    pbs.set("4303.pbs01", job_state="F", substate=92, Exit_status=0)
    assert executor.poll(["4303.pbs01"])["4303.pbs01"].phase is Phase.EXECUTING
    assert executor.poll(["4303.pbs01"])["4303.pbs01"].phase is Phase.COMPLETED


def test_hold_release_and_their_refusals(pbs: FakePbs) -> None:
    executor = pbs.executor()
    executor.hold("4301.pbs01", "held through jobmill by ada")
    assert executor.poll(["4301.pbs01"])["4301.pbs01"].native_state == "H (u)"
    executor.release("4301.pbs01", "released through jobmill by ada")
    assert executor.poll(["4301.pbs01"])["4301.pbs01"].phase is Phase.QUEUED
    # PBS sets the hold on a running job it cannot checkpoint and lets it run: the next poll
    # says EXECUTING (as Slurm does).
    executor.hold("4302.pbs01", "")
    assert executor.poll(["4302.pbs01"])["4302.pbs01"].phase is Phase.EXECUTING
    with pytest.raises(CommandFailed, match="Job has finished"):  # jobmill answers 409
        executor.hold("4304.pbs01", "")
    assert [c for c in pbs.calls() if not c.startswith("qstat")] == [
        "qhold 4301.pbs01",
        "qrls 4301.pbs01",
        "qhold 4302.pbs01",
        "qhold 4304.pbs01",
    ]


def test_cancel_deletes_and_a_finished_job_is_quiet(pbs: FakePbs) -> None:
    executor = pbs.executor()
    executor.cancel("4302.pbs01")
    executor.cancel("4304.pbs01")  # "qdel: Job has finished": nothing left to stop
    status = executor.poll(["4302.pbs01"])["4302.pbs01"]
    assert (status.phase, status.native_state) == (Phase.ABORTED, "F (deleted)")
    assert pbs.calls()[:2] == ["qdel 4302.pbs01", "qdel 4304.pbs01"]


def test_find_and_details(pbs: FakePbs) -> None:
    executor = pbs.executor()
    job_id = "0b7e2c4a-1d2f-4e5a-9c3b-123456704302"
    assert executor.find(job_id) == "4302.pbs01"
    assert executor.find("never-submitted") is None
    assert pbs.calls()[0] == f"qselect -x -N jobmill-{job_id}"
    assert "job_state = R" in executor.details("4302.pbs01")
    assert executor.details("4299.pbs01") == "PBS job 4299.pbs01 is unknown to qstat\n"


def test_find_takes_the_newest_of_recorded_ids() -> None:
    def runner(argv: Sequence[str], **_: Any) -> str:
        return (DATA / "qselect_find.txt").read_text()

    assert PbsExecutor(runner=runner).find(JOB) == "4301.pbs01"


def test_details_of_a_recorded_answer() -> None:
    def runner(argv: Sequence[str], **_: Any) -> str:
        assert list(argv) == ["qstat", "-f", "-x", "4302.pbs01"]
        return (DATA / "qstat_full.txt").read_text()

    assert "exec_host = node017/0*4" in PbsExecutor(runner=runner).details("4302.pbs01")


def test_an_unreachable_server_is_unavailable_not_refused(pbs: FakePbs) -> None:
    server = pbs.read()
    pbs.write({**server, "down": True})
    executor = pbs.executor()
    with pytest.raises(ExecutorUnavailable, match="Connection refused"):
        executor.poll(["4301.pbs01"])
    with pytest.raises(ExecutorUnavailable):
        executor.hold("4301.pbs01", "")
    with pytest.raises(ExecutorUnavailable):
        executor.submit(spec(workdir=pbs.bin, stdout=pbs.bin / "o", stderr=pbs.bin / "e"))


def test_settings_and_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobmill.config import Settings
    from jobmill.executors.registry import build_executors

    monkeypatch.setenv("JOBMILL_EXECUTORS", "local,pbs")
    monkeypatch.setenv("JOBMILL_PBS_BIN", "/opt/pbs/bin")
    monkeypatch.setenv("JOBMILL_PBS_QUEUE", "workq")
    monkeypatch.setenv("JOBMILL_PBS_ACCOUNT", "rubin")
    monkeypatch.setenv("JOBMILL_PBS_TIMEOUT", "12")
    monkeypatch.setenv("JOBMILL_PBS_LOST_AFTER", "90")
    pbs = build_executors(Settings.from_env())["pbs"]
    assert isinstance(pbs, PbsExecutor)
    assert (pbs.command("qsub"), pbs.queue, pbs.account, pbs.timeout, pbs.lost_after) == (
        "/opt/pbs/bin/qsub",
        "workq",
        "rubin",
        12.0,
        90.0,
    )
