"""The shepherd and the local executor that talks to it: exit statuses, slots, refusals,
cancellation of a queued job, logs, restart safety and a shepherd that dies."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from jobmill.domain.lifecycle import Phase
from jobmill.executors.base import RETURNED, LaunchSpec, NativeStatus
from jobmill.executors.local import LocalExecutor
from jobmill.executors.shepherd import EXIT_FILE, PID_FILE

ENDED = {Phase.COMPLETED, Phase.ERROR, Phase.ABORTED}
PR_SET_CHILD_SUBREAPER = 36

MakeExecutor = Callable[..., LocalExecutor]


def job(tmp_path: Path, job_id: str, argv: list[str], umask: int | None = None) -> LaunchSpec:
    workdir = tmp_path / job_id
    return LaunchSpec(
        job_id=job_id,
        argv=argv,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        workdir=workdir,
        stdout=workdir / "out",
        stderr=workdir / "err",
        umask=umask,
    )


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def settle(
    executor: LocalExecutor,
    native_id: str,
    until: Callable[[NativeStatus], bool] = lambda status: status.phase in ENDED,
    timeout: float = 5.0,
    changed: set[str] | None = None,
    meanwhile: Callable[[], None] = lambda: None,
) -> NativeStatus:
    """Wait as the engine does (on ``watch_fds``, ``changed`` for the shepherd's channel), then
    ``poll``, until ``until`` holds; ``changed`` collects what ``changed()`` named."""
    deadline = time.monotonic() + timeout
    while True:
        status = executor.poll([native_id])[native_id]
        if until(status):
            return status
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{native_id}: still {status} after {timeout} s")
        meanwhile()
        fds = executor.watch_fds()
        ready, _, _ = select.select(list(fds), [], [], min(remaining, 0.1))
        if any(fds[fd] == "" for fd in ready):
            named = executor.changed()
            if changed is not None:
                changed.update(named)
        elif ready:  # a pidfd of an ended process stays readable: do not spin
            time.sleep(0.005)


def _kill_jobs_under(root: Path) -> None:
    """SIGKILL the process group of every process whose working directory is under ``root``
    (every job a test started, whoever its parent is now)."""
    ours = os.getpgrp()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            pgid = os.getpgid(int(entry.name))
        except OSError:
            continue
        if Path(cwd).is_relative_to(root) and pgid != ours:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)


@pytest.fixture
def make_executor(tmp_path: Path) -> Iterator[MakeExecutor]:
    made: list[LocalExecutor] = []
    shepherds: list[subprocess.Popen[bytes]] = []

    def make(slots: int = 2, grace: float = 0.5, lock: Path | None = None) -> LocalExecutor:
        executor = LocalExecutor(grace=grace, slots=slots, lock=lock)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        if executor._shepherd is not None:
            shepherds.append(executor._shepherd)
        executor.close()
    _kill_jobs_under(tmp_path)
    for shepherd in shepherds:  # with no job left, each ends by itself
        try:
            shepherd.wait(timeout=3)
        except subprocess.TimeoutExpired:
            shepherd.kill()
            shepherd.wait()
            raise AssertionError("the shepherd did not end after its last job") from None


# -- 1. exit statuses ---------------------------------------------------------------------------

ENDINGS = [
    pytest.param("exit 0", Phase.COMPLETED, "exited", 0, id="exit-0"),
    pytest.param("exit 3", Phase.ERROR, "exited", 3, id="exit-3"),
    pytest.param("kill -KILL $$", Phase.ERROR, "killed", 128 + signal.SIGKILL, id="sigkill"),
]


@pytest.mark.parametrize(("script", "phase", "state", "code"), ENDINGS)
def test_an_enqueued_job_reports_its_exit_status(
    make_executor: MakeExecutor, tmp_path: Path, script: str, phase: Phase, state: str, code: int
) -> None:
    executor = make_executor()
    spec = job(tmp_path, "j", sh(script))
    queued = executor.enqueue(spec)
    assert queued == "queued:j"
    named: set[str] = set()
    status = settle(executor, queued, changed=named)
    named.update(executor.changed())  # (news that ``poll`` read before ``changed`` was asked)
    assert (status.phase, status.native_state, status.exit_code) == (phase, state, code)
    assert queued in named  # the engine learns of it through changed()
    assert status.native_id is not None and status.native_id in named
    # No file while jobmill is attached; the end not recorded is written when it detaches.
    assert not (spec.workdir / EXIT_FILE).exists()
    executor.close()
    expected = code if state == "exited" else -signal.SIGKILL
    assert (spec.workdir / EXIT_FILE).read_text() == f"{expected}\n"
    if state == "killed":
        assert status.error == f"killed by signal {signal.SIGKILL}"


@pytest.mark.parametrize(("script", "phase", "state", "code"), ENDINGS)
def test_a_submitted_job_reports_its_exit_status(
    make_executor: MakeExecutor, tmp_path: Path, script: str, phase: Phase, state: str, code: int
) -> None:
    executor = make_executor()
    native_id = executor.submit(job(tmp_path, "j", sh(script)))
    pid, _, start = native_id.partition("@")
    assert pid.isdigit() and start.isdigit() and start != "0"
    status = settle(executor, native_id)
    assert (status.phase, status.native_state, status.exit_code) == (phase, state, code)
    assert executor.poll([native_id])[native_id] == status  # answered again until recorded


# -- 2. slots -----------------------------------------------------------------------------------

TRACE = (
    "import sys, time\n"
    "with open(sys.argv[1], 'a') as f:\n"
    "    f.write(f'{sys.argv[2]} start {time.time()}\\n'); f.flush()\n"
    "    time.sleep(0.3)\n"
    "    f.write(f'{sys.argv[2]} end {time.time()}\\n')\n"
)


def test_one_slot_runs_one_job_at_a_time(make_executor: MakeExecutor, tmp_path: Path) -> None:
    executor = make_executor(slots=1)
    trace = tmp_path / "trace"
    first = executor.enqueue(job(tmp_path, "a", [sys.executable, "-c", TRACE, str(trace), "a"]))
    second = executor.enqueue(job(tmp_path, "b", [sys.executable, "-c", TRACE, str(trace), "b"]))
    running = settle(executor, first, lambda s: s.phase is Phase.EXECUTING)
    assert running.native_id is not None
    assert executor.poll([second])[second].phase is Phase.QUEUED
    assert settle(executor, first).phase is Phase.COMPLETED
    assert settle(executor, second).phase is Phase.COMPLETED
    events = [line.split() for line in trace.read_text().splitlines()]
    assert [(who, what) for who, what, _ in events] == [
        ("a", "start"),
        ("a", "end"),
        ("b", "start"),
        ("b", "end"),
    ]
    assert float(events[2][2]) >= float(events[1][2])  # b started after a ended


# -- 3. a program that does not exist -----------------------------------------------------------


def test_a_missing_program_is_an_error_naming_the_cause(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor()
    program = str(tmp_path / "no-such-program")
    queued = executor.enqueue(job(tmp_path, "j", [program]))
    status = settle(executor, queued)
    assert status.phase is Phase.ERROR and status.native_state == "not started"
    assert status.error is not None
    assert status.error.startswith("cannot start the job: No such file or directory")
    assert program in status.error
    with pytest.raises(OSError, match="No such file or directory"):
        executor.submit(job(tmp_path, "k", [program]))
    # the shepherd is still there for the next job
    assert settle(executor, executor.submit(job(tmp_path, "l", sh("exit 0")))).exit_code == 0


# -- 4. cancelling a queued job -----------------------------------------------------------------


def test_a_cancelled_queued_job_never_runs(make_executor: MakeExecutor, tmp_path: Path) -> None:
    executor = make_executor(slots=1)
    blocker = executor.submit(job(tmp_path, "blocker", sh("sleep 5")))
    waiting = job(tmp_path, "b", sh(f"touch {tmp_path / 'ran'}"))
    queued = executor.enqueue(waiting)
    assert executor.poll([queued])[queued].phase is Phase.QUEUED
    executor.cancel(queued)
    status = settle(executor, queued)
    assert (status.phase, status.native_state) == (Phase.ABORTED, "cancelled")
    executor.cancel(blocker)  # the slot frees: a job still queued would start now
    ended = settle(executor, blocker)
    assert (ended.phase, ended.native_state, ended.exit_code) == (
        Phase.ERROR,
        "killed",
        128 + signal.SIGTERM,
    )
    assert executor.poll([queued])[queued].phase is Phase.ABORTED
    assert not (waiting.workdir / PID_FILE).exists()
    assert not (tmp_path / "ran").exists()


# -- 5. logs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o077, 0o002])  # (jobmill's own umask is 0o022 here)
def test_logs_land_in_their_files_with_the_jobs_umask(
    make_executor: MakeExecutor, tmp_path: Path, umask: int
) -> None:
    executor = make_executor()
    spec = job(tmp_path, "j", sh("echo to-out; echo to-err >&2"), umask=umask)
    old = os.umask(0o022)  # the shepherd starts with the first job, with jobmill's umask
    try:
        native_id = executor.submit(spec)
    finally:
        os.umask(old)
    assert settle(executor, native_id).phase is Phase.COMPLETED
    assert spec.stdout.read_text() == "to-out\n"
    assert spec.stderr.read_text() == "to-err\n"
    for log in (spec.stdout, spec.stderr):
        assert log.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("where", ["directory", "file"])
def test_a_symbolic_link_in_a_log_path_is_refused(
    make_executor: MakeExecutor, tmp_path: Path, where: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "target"
    target.write_text("keep\n")
    logs = tmp_path / "logs"
    if where == "directory":
        logs.symlink_to(elsewhere)
        stdout = logs / "out"
    else:
        logs.mkdir()
        stdout = logs / "out"
        stdout.symlink_to(target)
    spec = job(tmp_path, "j", sh(f"echo written; touch {tmp_path / 'ran'}"))
    spec = replace(spec, stdout=stdout, stderr=stdout)
    executor = make_executor()
    status = settle(executor, executor.enqueue(spec))
    assert status.phase is Phase.ERROR and status.native_state == "not started"
    assert status.error is not None and "symbolic link" in status.error
    assert sorted(p.name for p in elsewhere.iterdir()) == ["target"]
    assert target.read_text() == "keep\n"
    assert not (tmp_path / "ran").exists() and not (spec.workdir / PID_FILE).exists()


def test_no_directory_is_created_through_a_linked_log_directory(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "logs").symlink_to(elsewhere)
    out = tmp_path / "logs" / "sub" / "out"
    spec = replace(job(tmp_path, "j", ["/bin/true"]), stdout=out, stderr=out)
    executor = make_executor()
    status = settle(executor, executor.enqueue(spec))
    assert status.error is not None and "symbolic link" in status.error
    assert list(elsewhere.iterdir()) == []


# -- 6. restart safety --------------------------------------------------------------------------


def test_a_job_ending_while_jobmill_is_down_keeps_its_exit_status(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    for attempt in range(5):  # a loop: catch races between the reaping and the new watcher
        first = make_executor()
        spec = job(tmp_path, f"r{attempt}", sh(f"sleep 0.{2 + attempt % 3}; exit 4"))
        native_id = first.submit(spec)
        shepherd = first._shepherd
        assert shepherd is not None
        first.close()  # jobmill stops; the shepherd stays with its job
        second = make_executor()
        assert second.status_after_restart(native_id, spec.workdir).phase is Phase.EXECUTING
        status = settle(second, native_id)
        assert (status.phase, status.native_state, status.exit_code) == (
            Phase.ERROR,
            "exited",
            4,
        ), status
        assert shepherd.wait(timeout=2) == 0  # it ended with its last job
        assert (spec.workdir / EXIT_FILE).read_text() == "4\n"
        second.close()


def test_a_restarted_jobmill_reads_the_job_directories_only_after_the_old_shepherd_wrote_them(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    """jobmill SIGKILLed: its shepherd writes the pids of its jobs as it sees its socket close.
    A new jobmill that looked before then would take a running job for one never started and
    run it twice: ``attach`` waits until the new shepherd holds the lock the old one held."""
    lock = tmp_path / "shepherd.lock"
    first = make_executor(lock=lock)
    assert first.attach(timeout=5)
    spec = job(tmp_path, "j", sh("sleep 5"))
    native = first.submit(spec)
    old = first._shepherd
    assert old is not None and first._channel is not None
    old.send_signal(signal.SIGSTOP)  # slow to notice: a busy machine
    try:
        first._channel.close()  # jobmill killed: no detach
        first._channel = None
        second = make_executor(lock=lock)
        assert not second.attach(timeout=0.5)  # the old shepherd has not let go
        assert second.find_started(spec.workdir) is None  # (its pid file is not written yet)
    finally:
        old.send_signal(signal.SIGCONT)
    assert second.attach(timeout=5)
    assert second.find_started(spec.workdir) == native
    second.cancel(native)


def test_a_reused_pid_is_not_taken_for_the_job_nor_its_group_signalled(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    """A job that ended while jobmill was down, whose pid a new process (here: the leader of
    its own process group, as every job is) has taken since: the job's exit status is read,
    and the new process is left alone."""
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        workdir = tmp_path / "ended"
        workdir.mkdir()
        (workdir / EXIT_FILE).write_text("3\n")
        (workdir / PID_FILE).write_text(f"{stranger.pid}@1\n")  # started long before
        executor = make_executor()
        native_id = executor.find_started(workdir)
        assert native_id == f"{stranger.pid}@1"
        status = executor.status_after_restart(native_id, workdir)
        assert (status.phase, status.exit_code) == (Phase.ERROR, 3)
        time.sleep(0.2)
        assert stranger.poll() is None  # not signalled
    finally:
        stranger.kill()
        stranger.wait()


# -- 7. the shepherd killed ---------------------------------------------------------------------


def _subreaper(on: bool) -> None:
    """Make this process the reaper of orphaned descendants, as init is: the orphaned job's end
    then does not wait on how soon (or whether) this machine's PID 1 reaps orphans."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        pytest.skip(f"prctl: {os.strerror(ctypes.get_errno())}")


def test_a_killed_shepherd_loses_its_running_job_and_gives_the_waiting_one_back(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    _subreaper(True)
    try:
        executor = make_executor(slots=1)
        running = executor.enqueue(job(tmp_path, "a", sh("sleep 0.5; exit 0")))
        waiting_spec = job(tmp_path, "b", sh(f"touch {tmp_path / 'ran'}; exit 5"))
        waiting = executor.enqueue(waiting_spec)
        started = settle(executor, running, lambda s: s.phase is Phase.EXECUTING).native_id
        assert started is not None
        assert executor.poll([waiting])[waiting].phase is Phase.QUEUED
        old = executor._shepherd
        assert old is not None
        old.kill()
        assert old.wait(timeout=2) == -signal.SIGKILL
        pid = int(started.partition("@")[0])

        def reap() -> None:  # as init would, once the orphan ended
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

        status = settle(executor, waiting, lambda s: s.native_state != "queued", meanwhile=reap)
        assert (status.phase, status.native_state) == (Phase.QUEUED, RETURNED)  # queued again
        again = executor.enqueue(waiting_spec)  # (as the engine dispatches it again)
        status = settle(executor, again, meanwhile=reap)
        assert (status.phase, status.exit_code) == (Phase.ERROR, 5)  # run by a new shepherd
        assert (tmp_path / "ran").exists()
        assert executor._shepherd is not None and executor._shepherd is not old
        lost = settle(executor, started, meanwhile=reap)
        assert (lost.phase, lost.native_state) == (Phase.ERROR, "lost")
        assert not (tmp_path / "a" / EXIT_FILE).exists()
    finally:
        _subreaper(False)


# -- 8. a queued job's real native id -----------------------------------------------------------


def test_a_started_queued_job_answers_the_id_of_its_pid_file(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(slots=1)
    blocker = executor.submit(job(tmp_path, "blocker", sh("sleep 5")))
    spec = job(tmp_path, "j", sh("sleep 0.5"))
    queued = executor.enqueue(spec)
    assert executor.poll([queued])[queued].phase is Phase.QUEUED
    assert executor.find_started(spec.workdir) is None
    executor.cancel(blocker)
    status = settle(executor, queued, lambda s: s.phase is not Phase.QUEUED)
    assert status.phase is Phase.EXECUTING
    assert status.native_id is not None
    assert executor.find_started(spec.workdir) is None  # no file while jobmill is attached
    ended = settle(executor, queued)
    assert ended.phase is Phase.COMPLETED and ended.native_id == status.native_id


def test_detaching_writes_the_pids_of_running_jobs_and_only_unrecorded_ends(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(slots=3)
    running = job(tmp_path, "running", sh("sleep 0.5"))
    recorded, unrecorded = job(tmp_path, "rec", sh("exit 1")), job(tmp_path, "unrec", sh("exit 2"))
    native = executor.submit(running)
    ids = {spec.job_id: executor.enqueue(spec) for spec in (recorded, unrecorded)}
    done = {name: settle(executor, queued) for name, queued in ids.items()}
    executor.recorded(str(done["rec"].native_id))  # the engine committed this end
    executor.tick()
    executor.close()  # detach: returns once the shepherd wrote its files
    assert native == LocalExecutor().find_started(running.workdir)
    assert not (recorded.workdir / EXIT_FILE).exists()
    assert not (recorded.workdir / PID_FILE).exists()
    assert (unrecorded.workdir / EXIT_FILE).read_text() == "2\n"
    # An end not recorded also leaves the job's native id: without it the job would look never
    # started to the next jobmill, and run again.
    assert LocalExecutor().find_started(unrecorded.workdir) == done["unrec"].native_id
    gone = LocalExecutor().status_after_restart(str(done["unrec"].native_id), unrecorded.workdir)
    assert (gone.phase, gone.exit_code) == (Phase.ERROR, 2)
    after = LocalExecutor()
    try:
        assert after.status_after_restart(native, running.workdir).phase is Phase.EXECUTING
        ended = settle(after, native)
        assert (ended.phase, ended.exit_code) == (Phase.COMPLETED, 0)
    finally:
        after.close()


def test_a_shepherd_not_pinged_lets_go_and_the_jobmill_learns_it(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    """A frozen engine (or one that lost its lease) pings no more: the shepherd lets go before
    a standby takes over, leaving the files the standby reads, and gives the queue back."""
    executor = make_executor(slots=1)
    executor.silence = 0.6
    running = job(tmp_path, "running", sh("sleep 1.2; exit 6"))
    native = executor.submit(running)
    waiting = executor.enqueue(job(tmp_path, "waiting", sh("exit 0")))
    time.sleep(0.3)
    executor.ping()  # still here
    time.sleep(0.4)
    assert executor.poll([waiting])[waiting].phase is Phase.QUEUED  # (0.7 s, pinged at 0.3)
    returned = settle(executor, waiting, lambda s: s.native_state != "queued")
    assert (returned.phase, returned.native_state) == (Phase.QUEUED, RETURNED)
    assert executor.find_started(running.workdir) == native  # the pid file, for a standby
    ended = settle(executor, native)
    assert (ended.phase, ended.exit_code) == (Phase.ERROR, 6)  # its exit file: not lost
    assert executor.find_started(tmp_path / "waiting") is None  # it never ran
