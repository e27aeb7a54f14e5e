"""The LSF executor without LSF: the exact script (a golden file), the state table, and bjobs
answers in ``tests/data/lsf/`` (written from LSF's documented formats, see its README)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from jobmill.domain.jobtypes import Resources
from jobmill.domain.lifecycle import Phase
from jobmill.executors._commands import CommandFailed
from jobmill.executors.base import ExecutorUnavailable, LaunchSpec
from jobmill.executors.lsf import (
    BJOBS_CHUNK,
    LSF_STATES,
    LsfExecutor,
    bsub_environment,
    map_state,
    parse_bjobs,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "lsf"
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


def full_resources() -> Resources:
    return Resources(
        cpus=4,
        memory_mb=8000,
        walltime=5400,
        partition="normal",
        account="rubin",
        extra=['-R "select[type==X86_64]"', "#BSUB -G ops"],
    )


def test_render_matches_the_golden_file() -> None:
    rendered = LsfExecutor().render(spec(resources=full_resources()))
    assert rendered == (DATA / "render_full.sh").read_text()


def test_render_defaults() -> None:
    lines = (
        LsfExecutor(queue="short", project="ops").render(spec(execution_duration=30)).splitlines()
    )
    assert "#BSUB -n 1" in lines and "#BSUB -W 1" in lines
    assert "#BSUB -q short" in lines and "#BSUB -P ops" in lines
    assert '#BSUB -env "none"' in lines
    assert not any("span[hosts=1]" in line or "-M" in line for line in lines)


@pytest.mark.parametrize(
    "changes",
    [
        {"stdout": Path("/tmp/x\nrm -rf ~")},
        {"stdout": Path("/tmp/%J.out")},
        {"workdir": Path('/tmp/a"b')},
        {"resources": Resources(extra=["-q a\n-q b"])},
        {"env": {"1BAD": "x"}},
    ],
)
def test_render_refuses_what_cannot_be_written_safely(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LsfExecutor().render(spec(**changes))


def test_paths_with_spaces_are_quoted() -> None:
    script = LsfExecutor().render(spec(workdir=Path("/w/a b")))
    assert '#BSUB -cwd "/w/a b"' in script.splitlines()


# -- the state table and recorded bjobs answers ----------------------------------------------


def test_bjobs_answers_map_through_the_table() -> None:
    statuses = parse_bjobs((DATA / "bjobs_poll.txt").read_text())
    expected = {
        "4101": (Phase.QUEUED, None, None),
        "4102": (Phase.HELD, None, "held (suspended while pending)"),
        "4103": (Phase.EXECUTING, None, None),
        "4104": (Phase.SUSPENDED, None, "suspended by its owner or an administrator"),
        "4105": (Phase.SUSPENDED, None, "suspended by LSF (load or queue window)"),
        "4106": (Phase.COMPLETED, 0, None),
        "4107": (Phase.ERROR, 3, "exit code 3"),
        "4108": (Phase.ABORTED, 130, "killed outside jobmill (by its owner)"),
        "4109": (Phase.ERROR, 140, "timeout: the LSF run limit was reached"),
        "4110": (Phase.ERROR, 137, "out of memory: the LSF memory limit was reached"),
        "4111": (Phase.UNKNOWN, None, "mbatchd lost contact with its execution host"),
        "4112": (Phase.UNKNOWN, None, "killed while its execution host was unreachable"),
        "4113": (Phase.ABORTED, 143, "killed outside jobmill (by an administrator)"),
        "4114": (Phase.QUEUED, None, None),
        "4115": (Phase.COMPLETED, 0, None),
    }
    assert {k: (s.phase, s.exit_code, s.error) for k, s in statuses.items()} == expected
    assert statuses["4108"].native_state == "EXIT (TERM_OWNER: job killed by owner)"


def test_every_state_in_the_table_maps() -> None:
    for stat, (phase, _error) in LSF_STATES.items():
        assert map_state(stat, "-").phase in (phase, Phase.ERROR)
    assert map_state("NEWSTATE", "-").phase is Phase.UNKNOWN


def test_done_with_a_non_zero_code_is_an_error() -> None:
    status = map_state("DONE", "2")
    assert (status.phase, status.exit_code) == (Phase.ERROR, 2)


class FakeLsf:
    """Answers LSF commands from the recorded files, and records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, Any]]] = []
        self.known: set[str] | None = None  # ids bjobs knows (None: as in bjobs_poll.txt)

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> str:
        argv = list(argv)
        self.calls.append((argv, kwargs))
        command = Path(argv[0]).name
        if command == "bsub":
            return (DATA / "bsub_submitted.txt").read_text()
        if command == "bjobs" and "-l" in argv:
            return (DATA / "bjobs_long.txt").read_text()
        if command == "bjobs" and "-J" in argv:
            return (DATA / "bjobs_find.txt").read_text()
        if command == "bjobs":
            assert kwargs["accept"] == (0, 255)
            lines = (DATA / "bjobs_poll.txt").read_text().splitlines()
            if self.known is not None:
                lines = [f"{i}|RUN|-|-" for i in argv if i in self.known]
            return "\n".join(lines) + "\n"
        if command == "bkill":
            raise CommandFailed(argv, 255, "Job <4106>: Job has already finished")
        raise AssertionError(argv)

    def argvs(self, command: str) -> list[list[str]]:
        return [argv for argv, _ in self.calls if Path(argv[0]).name == command]


def test_submit_pipes_the_script_into_bsub_with_a_scrubbed_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBMILL_DATABASE_URL", "postgresql://secret@db/jobmill")
    monkeypatch.setenv("LSF_ENVDIR", "/etc/lsf")
    fake = FakeLsf()
    executor = LsfExecutor(bin_dir="/opt/lsf/bin", runner=fake)
    job = spec(workdir=tmp_path / "job", stdout=tmp_path / "job" / "o", stderr=tmp_path / "e")
    assert executor.submit(job) == "4211"
    ((argv, kwargs),) = fake.calls
    assert argv == ["/opt/lsf/bin/bsub"]
    assert kwargs["stdin"] == executor.render(job)
    assert kwargs["env"]["LSF_ENVDIR"] == "/etc/lsf"
    assert "JOBMILL_DATABASE_URL" not in kwargs["env"]
    assert (tmp_path / "job").is_dir()


def test_submit_default_queue_answer() -> None:
    def runner(argv: Sequence[str], **_: Any) -> str:
        return (DATA / "bsub_default_queue.txt").read_text()

    assert (
        LsfExecutor(runner=runner).submit(
            spec(workdir=Path("/tmp"), stdout=Path("/tmp/o"), stderr=Path("/tmp/e"))
        )
        == "4212"
    )


def test_poll_is_batched_in_chunks() -> None:
    fake = FakeLsf()
    ids = [str(10_000 + i) for i in range(BJOBS_CHUNK + 10)]
    fake.known = set(ids)
    statuses = LsfExecutor(runner=fake).poll(ids)
    calls = fake.argvs("bjobs")
    assert len(calls) == 2
    assert calls[0][:5] == [
        "bjobs",
        "-a",
        "-noheader",
        "-o",
        "jobid stat exit_code exit_reason delimiter='|'",
    ]
    assert len(calls[0]) - 5 == BJOBS_CHUNK
    assert {s.phase for s in statuses.values()} == {Phase.EXECUTING}


def test_an_unknown_job_is_lost_after_the_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("jobmill.executors.batch.time.monotonic", lambda: clock[0])
    fake = FakeLsf()
    executor = LsfExecutor(runner=fake, lost_after=20)
    fake.known = {"4103"}
    assert executor.poll(["4103"])["4103"].phase is Phase.EXECUTING
    fake.known = set()  # "Job <4103> is not found"
    clock[0] = 5
    assert executor.poll(["4103"])["4103"].phase is Phase.EXECUTING
    clock[0] = 26
    lost = executor.poll(["4103"])["4103"]
    assert lost.phase is Phase.ERROR
    assert lost.error == "lost: LSF job 4103 is unknown to bjobs (for 20 s)"


def test_unreachable_lsf_raises_for_the_engine_to_retry() -> None:
    def runner(argv: Sequence[str], **_: Any) -> str:
        raise ExecutorUnavailable("bjobs: LSF is down. Please wait ...")

    with pytest.raises(ExecutorUnavailable):
        LsfExecutor(runner=runner).poll(["1"])


def test_cancel_find_details() -> None:
    fake = FakeLsf()
    executor = LsfExecutor(runner=fake)
    executor.cancel("4106")  # already finished: quiet
    assert executor.find(JOB) == "4211"
    assert fake.argvs("bjobs")[0] == [
        "bjobs",
        "-a",
        "-noheader",
        "-J",
        f"jobmill-{JOB}",
        "-o",
        "jobid",
    ]
    assert "Status <RUN>" in executor.details("4103")


def test_bsub_environment_keeps_only_lsf_and_basics() -> None:
    env = bsub_environment(
        {
            "PATH": "/bin",
            "LSF_SERVERDIR": "/s",
            "LSB_DEFAULTQUEUE": "q",
            "EGO_TOP": "/e",
            "AWS_SECRET_ACCESS_KEY": "x",
            "JOBMILL_TOKEN": "y",
        }
    )
    assert set(env) == {"PATH", "LSF_SERVERDIR", "LSB_DEFAULTQUEUE", "EGO_TOP"}


# -- hold and release, through fake LSF commands on disk ----------------------------------------

FAKE_LSF = """#!/bin/sh
# A fake LSF command: the job's state lives in $STATE; every call is logged to $STATE.log.
STATE={state}
printf '%s\\n' "$(basename "$0") $*" >> "$STATE.log"
case $(basename "$0") in
  bjobs) cat "$STATE" ;;
  bstop) [ "$(cat "$STATE")" = PEND ] && echo PSUSP > "$STATE" && echo "Job <$3> is stopped" ;;
  bresume)
    if [ "$(cat "$STATE")" = PSUSP ]; then echo PEND > "$STATE"; echo "Job <$3> is being resumed"
    else echo "Job <$3>: The job is not suspended" >&2; exit 255; fi ;;
esac
"""


def fake_lsf(tmp_path: Path, state: str) -> tuple[LsfExecutor, Path]:
    """An executor whose bjobs/bstop/bresume are shell scripts sharing one job's state."""
    bin_dir = tmp_path / "lsf-bin"
    bin_dir.mkdir()
    state_file = tmp_path / "state"
    state_file.write_text(state + "\n")
    for name in ("bjobs", "bstop", "bresume"):
        command = bin_dir / name
        command.write_text(FAKE_LSF.format(state=state_file))
        command.chmod(0o755)
    return LsfExecutor(bin_dir=str(bin_dir), timeout=10), state_file


def test_hold_stops_a_pending_job_with_the_reason_and_release_resumes_it(tmp_path: Path) -> None:
    executor, state = fake_lsf(tmp_path, "PEND")
    executor.hold("4211", "held through jobmill by ada")
    assert state.read_text().strip() == "PSUSP"
    executor.release("4211", "released through jobmill by ada")
    assert state.read_text().strip() == "PEND"
    calls = Path(f"{state}.log").read_text().splitlines()
    assert calls == [
        "bjobs -noheader -o stat 4211",
        "bstop -C held through jobmill by ada 4211",
        "bresume -C released through jobmill by ada 4211",
    ]


@pytest.mark.parametrize("stat", ["RUN", "PSUSP", "DONE", ""])
def test_hold_refuses_a_job_that_is_not_pending_and_never_stops_it(
    tmp_path: Path, stat: str
) -> None:
    executor, state = fake_lsf(tmp_path, stat)
    with pytest.raises(CommandFailed, match="only a pending"):
        executor.hold("4211", "held through jobmill by ada")
    assert state.read_text().strip() == stat  # bstop of a RUN job would have suspended it
    assert not any(c.startswith("bstop") for c in Path(f"{state}.log").read_text().splitlines())


def test_release_of_a_job_lsf_does_not_hold_is_refused(tmp_path: Path) -> None:
    executor, _state = fake_lsf(tmp_path, "PEND")
    with pytest.raises(CommandFailed, match="not suspended"):
        executor.release("4211", "")


def test_hold_when_lsf_is_down_is_unavailable_not_refused() -> None:
    def down(argv: Sequence[str], **_: Any) -> str:
        raise ExecutorUnavailable("bjobs: LSF is down; please wait")

    with pytest.raises(ExecutorUnavailable):
        LsfExecutor(runner=down).hold("4211", "x")
