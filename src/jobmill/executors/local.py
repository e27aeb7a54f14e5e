"""The local executor: each job is a process group on this machine.

A job runs as ``/bin/sh -c WRAPPER jobmill-job ARGV...``: the wrapper is a constant string and
the job's argv reaches it only as positional arguments (``"$@"``), so user values are never
parsed by a shell. The wrapper writes the job's pid and, when the job ends, its exit status
into the working directory: that is how a restarted jobmill learns the true result of a job
that finished while it was down. Exits are noticed at once through pidfds, not by polling.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobmill.domain.confine import open_nofollow
from jobmill.domain.lifecycle import Phase
from jobmill.executors.base import LaunchSpec, NativeStatus, submit_each

WRAPPER = 'echo $$ > .jobmill-pid; "$@"; c=$?; echo $c > .jobmill-exit; exit $c'
PID_FILE = ".jobmill-pid"
EXIT_FILE = ".jobmill-exit"
KEEP_ENDED = 10_000  # exit statuses remembered after the process was reaped
LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields and fields[0] == "Z":
        return None
    return fields[19] if len(fields) > 19 else None


def native_id_of(pid: int) -> str:
    return f"{pid}@{_start_time(pid) or 0}"


def split_native_id(native_id: str) -> tuple[int, str]:
    pid, _, start = native_id.partition("@")
    return int(pid), start


@dataclass
class _Proc:
    popen: subprocess.Popen[bytes] | None
    workdir: Path
    pidfd: int | None


class LocalExecutor:
    """Runs jobs as local process groups."""

    name = "local"

    def __init__(self, grace: float = 5.0) -> None:
        self.grace = grace
        self._procs: dict[str, _Proc] = {}
        self._kills: dict[int, float] = {}  # process group -> when SIGKILL is due
        # Exit statuses of reaped jobs, answered again until the engine could record them
        # (a full disk or a database away must not turn a finished job into a lost one).
        self._ended: dict[str, NativeStatus] = {}

    def render(self, spec: LaunchSpec) -> str:
        env = " ".join(f"{k}={_quote(v)}" for k, v in sorted(spec.env.items()))
        argv = " ".join(_quote(a) for a in spec.argv)
        umask = f"umask {spec.umask:03o}\n" if spec.umask is not None else ""
        return (
            f"# local process group, working directory {spec.workdir}\n"
            f"# stdout > {spec.stdout}\n# stderr > {spec.stderr}\n"
            f"{umask}env -i {env} {argv}\n"
        )

    def submit(self, spec: LaunchSpec) -> str:
        spec.workdir.mkdir(parents=True, exist_ok=True)
        for stale in (PID_FILE, EXIT_FILE):
            with contextlib.suppress(FileNotFoundError):
                (spec.workdir / stale).unlink()
        spec.stdout.parent.mkdir(parents=True, exist_ok=True)
        spec.stderr.parent.mkdir(parents=True, exist_ok=True)
        umask = -1 if spec.umask is None else spec.umask
        mode = 0o666 & ~spec.umask if spec.umask is not None else 0o666
        with _log_file(spec.stdout, mode) as out, _log_file(spec.stderr, mode) as err:
            popen = subprocess.Popen(  # noqa: S603 - constant wrapper, argv passed as "$@"
                ["/bin/sh", "-c", WRAPPER, "jobmill-job", *spec.argv],
                cwd=spec.workdir,
                env=dict(spec.env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
                umask=umask,
            )
        native_id = native_id_of(popen.pid)
        self._procs[native_id] = _Proc(popen, spec.workdir, _pidfd(popen.pid))
        return native_id

    def adopt(self, native_id: str, workdir: Path) -> None:
        """Track a job started by an earlier jobmill process (after a restart)."""
        pid, _ = split_native_id(native_id)
        self._procs[native_id] = _Proc(None, workdir, _pidfd(pid))

    def find_started(self, workdir: Path) -> str | None:
        """The native id of a job whose wrapper started but was never recorded, if alive."""
        try:
            pid = int((workdir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        start = _start_time(pid)
        return f"{pid}@{start}" if start else f"{pid}@gone"

    def batch_key(self, spec: LaunchSpec) -> Hashable:
        return ""  # any jobs can go together: submit_many submits them one by one

    def submit_many(self, specs: Sequence[LaunchSpec]) -> list[str]:
        return submit_each(self, specs)

    def poll(self, native_ids: Sequence[str]) -> dict[str, NativeStatus]:
        return {native_id: self._status(native_id) for native_id in native_ids}

    def _status(self, native_id: str) -> NativeStatus:
        ended = self._ended.get(native_id)
        if ended is not None:
            return ended
        proc = self._procs.get(native_id)
        pid, start = split_native_id(native_id)
        if proc is not None and proc.popen is not None:
            code = proc.popen.poll()
            if code is None:
                return NativeStatus(Phase.EXECUTING, "running")
            self._forget(native_id)
            self._end_group(pid)
            return self._remember(native_id, _finished(code))
        if _start_time(pid) == start:
            return NativeStatus(Phase.EXECUTING, "running")
        workdir = proc.workdir if proc else None
        self._forget(native_id)
        self._end_group(pid)
        if workdir is not None:
            try:
                code = int((workdir / EXIT_FILE).read_text().strip())
            except (OSError, ValueError):
                pass
            else:
                return self._remember(native_id, _finished(code))
        return NativeStatus(
            Phase.ERROR, "lost", error="lost: the process vanished without an exit status"
        )

    def _remember(self, native_id: str, status: NativeStatus) -> NativeStatus:
        self._ended[native_id] = status
        while len(self._ended) > KEEP_ENDED:
            del self._ended[next(iter(self._ended))]
        return status

    def status_after_restart(self, native_id: str, workdir: Path) -> NativeStatus:
        """Like ``poll`` for a job this process did not start."""
        self.adopt(native_id, workdir)
        return self._status(native_id)

    def cancel(self, native_id: str) -> None:
        """SIGTERM to the job's process group; SIGKILL follows after the grace period."""
        pid, start = split_native_id(native_id)
        if _start_time(pid) != start and native_id not in self._procs:
            return
        self._signal_group(pid, signal.SIGTERM)

    def _end_group(self, pgid: int) -> None:
        """A job's leader has exited: its leftover processes end with it."""
        if _group_exists(pgid):
            self._signal_group(pgid, signal.SIGTERM)

    def _signal_group(self, pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        if sig is signal.SIGTERM:
            self._kills.setdefault(pgid, time.monotonic() + self.grace)

    def tick(self) -> float | None:
        now = time.monotonic()
        soonest: float | None = None
        for pgid, due in list(self._kills.items()):
            if now >= due:
                del self._kills[pgid]
                if _group_exists(pgid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pgid, signal.SIGKILL)
            else:
                soonest = due - now if soonest is None else min(soonest, due - now)
        return soonest

    def watch_fds(self) -> dict[int, str]:
        return {p.pidfd: nid for nid, p in self._procs.items() if p.pidfd is not None}

    def find(self, job_id: str) -> str | None:
        return None  # local jobs are found through their working directory (find_started)

    def details(self, native_id: str) -> str:
        pid, start = split_native_id(native_id)
        alive = _start_time(pid) == start
        state = "running" if alive else "ended"
        lines = [f"process group {pid} ({state})"]
        if alive:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                lines.append("command: " + " ".join(a.decode(errors="replace") for a in cmdline))
        return "\n".join(lines) + "\n"

    def running(self) -> int:
        return len(self._procs)

    def _forget(self, native_id: str) -> None:
        proc = self._procs.pop(native_id, None)
        if proc is not None and proc.pidfd is not None:
            os.close(proc.pidfd)

    def close(self) -> None:
        for native_id in list(self._procs):
            self._forget(native_id)


@contextlib.contextmanager
def _log_file(path: Path, mode: int) -> Iterator[int]:
    """A job's log, opened for appending without following a symbolic link anywhere in its
    path (a ``log_dir`` a user can write to must not lead jobmill's writes elsewhere)."""
    try:
        fd = open_nofollow(path, LOG_FLAGS, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(exc.errno, f"{path}: a symbolic link in its path (refused)") from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def _finished(code: int) -> NativeStatus:
    if code == 0:
        return NativeStatus(Phase.COMPLETED, "exited", exit_code=0)
    if code < 0:
        return NativeStatus(
            Phase.ERROR, "killed", exit_code=128 - code, error=f"killed by signal {-code}"
        )
    return NativeStatus(Phase.ERROR, "exited", exit_code=code, error=f"exit code {code}")


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _quote(value: str) -> str:
    import shlex

    return shlex.quote(value)
