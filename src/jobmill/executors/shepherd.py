"""The shepherd: one long-lived process per local executor that starts local jobs and reaps them.

The local executor hands it jobs over a private socket pair, one JSON line each, and it starts
them as its slots free up: no shell per job, and the engine never waits for a spawn. Messages::

    {"op": "start", "key": JOB_ID, "argv": [...], "env": {...}, "workdir": ..., ...}
    {"op": "drop", "key": ...}          # cancel a job that has not started
    {"op": "recorded", "keys": [...]}   # jobmill's database has these jobs' ends
    {"op": "detach"}                    # jobmill stops: answered {"ev": "detached"}
    {"op": "ping"}                      # jobmill holds its engine lease

and it answers with one line per event::

    {"ev": "started", "key": ..., "native_id": "PID@STARTTIME"}
    {"ev": "failed", "key": ..., "error": "..."}      # could not start (no program, a link...)
    {"ev": "dropped", "key": ...}                     # cancelled before it started
    {"ev": "exited", "key": ..., "code": N}           # negative N: the signal that killed it
    {"ev": "ready"}                                   # first: it holds its lock (if any)

While jobmill is attached the shepherd writes no file of its own (a job's directory and logs
are all it creates): it keeps each exit status until jobmill says it recorded it. When jobmill
goes away (``detach``, or the socket closes: a stop, a crash, a SIGKILL) it starts nothing more
and writes, in each job's working directory, the native id (``PID@STARTTIME``) of every job
it started that still runs or whose end was not recorded (``.jobmill-pid``), and the exit
status of the latter (``.jobmill-exit``); it goes on reaping the jobs that run, writing each
exit status before it reaps the job, and ends with the last of them. A jobmill started later
reads those files (``LocalExecutor.status_after_restart``).
It runs in its own session, so a signal to jobmill's terminal does not reach it.

Given SILENCE seconds, it also lets go when jobmill said nothing for that long (an engine
frozen, or that lost its lease, pings no more: a standby may take its jobs over, and finds the
files), and tells jobmill so (``{"ev": "detached"}``) should it come back.

Given a LOCK file, it holds an exclusive ``flock`` on it while jobmill is attached: it takes it
before anything else (then says ``{"ev": "ready"}``) and lets it go once its files are written
on detaching. A restarted jobmill waits for its new shepherd to be ready before it looks for
those files (``LocalExecutor.attach``), so it never reads a job's directory before the shepherd
of the jobmill that died has written the job's pid there.

Run as ``python -m jobmill.executors.shepherd SLOTS [SILENCE [LOCK]]`` with the socket as
standard input and output.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jobmill.domain.confine import makedirs_nofollow, open_nofollow

PID_FILE = ".jobmill-pid"
EXIT_FILE = ".jobmill-exit"
LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND
MAX_UNRECORDED = 10_000  # ends kept in memory for jobmill to record; beyond, written to disk
_READ = 1 << 16


def process_state(pid: int) -> tuple[str, str] | None:
    """The state letter (``Z``: ended, not reaped yet) and the kernel's start time of ``pid``
    (which tells a reused pid apart), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def start_time(pid: int) -> str | None:
    """The start time of ``pid`` while it runs; None once it ended."""
    state = process_state(pid)
    return state[1] if state is not None and state[0] != "Z" else None


def log_dir(path: Path) -> None:
    """Make a job's log directory without going through a symbolic link."""
    try:
        makedirs_nofollow(path)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(exc.errno, f"{path}: a symbolic link in its path (refused)") from None
        raise


def open_log(path: Path, mode: int) -> int:
    """A job's log, opened for appending without following a symbolic link anywhere in its
    path (a ``log_dir`` a user can write to must not lead jobmill's writes elsewhere)."""
    try:
        return open_nofollow(path, LOG_FLAGS, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(exc.errno, f"{path}: a symbolic link in its path (refused)") from None
        raise


def start(job: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str]:
    """Start one job as its own process group; returns it and its native id."""
    workdir = Path(job["workdir"])
    stdout, stderr = Path(job["stdout"]), Path(job["stderr"])
    umask: int | None = job.get("umask")
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in (PID_FILE, EXIT_FILE):
        with contextlib.suppress(FileNotFoundError):
            (workdir / stale).unlink()
    mask = os.umask(umask) if umask is not None else None  # the logs are the job's files
    try:
        for directory in {stdout.parent, stderr.parent}:
            log_dir(directory)
        out = open_log(stdout, 0o666)
        try:
            err = open_log(stderr, 0o666) if stderr != stdout else os.dup(out)
        except BaseException:
            os.close(out)
            raise
    finally:
        if mask is not None:
            os.umask(mask)
    try:
        try:
            proc = subprocess.Popen(  # noqa: S603 - the job's own argv, never a shell string
                job["argv"],
                cwd=workdir,
                env=job["env"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
                umask=-1 if umask is None else umask,
            )
        finally:
            os.close(err)
    finally:
        os.close(out)
    state = process_state(proc.pid)  # it may have ended already: not reaped, still there
    return proc, f"{proc.pid}@{state[1] if state else 0}"


def ended(pid: int) -> int | None:
    """The return code of the child ``pid`` if it ended (negative: the signal that killed it),
    without reaping it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None or info.si_pid == 0:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _write(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):  # a full disk: the live shepherd still reports it
        path.write_text(text)


def ended_unrecorded(workdir: Path, native_id: str, code: int) -> None:
    """Leave a job's end for the next jobmill: its exit status, then its native id. Without the
    pid file a job that ran would look never started, and run again."""
    _write(workdir / EXIT_FILE, f"{code}\n")
    _write(workdir / PID_FILE, f"{native_id}\n")


def refusal(exc: OSError) -> str:
    """Why a job could not start, as the job's error says it."""
    what = exc.strerror or str(exc)
    if exc.filename is not None and str(exc.filename) not in what:
        what = f"{what}: {exc.filename}"
    return f"cannot start the job: {what}"


def take_lock(path: str) -> tuple[int | None, str | None]:
    """Open ``path`` (never through a symbolic link) and wait for an exclusive ``flock`` on it;
    returns the descriptor holding it, or None and why it could not."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return None, f"cannot open the shepherd's lock {path}: {exc.strerror}"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        os.close(fd)
        return None, f"cannot lock {path}: {exc.strerror}"
    return fd, None


class Shepherd:
    def __init__(self, slots: int, channel: int, silence: float = 0.0, lock: str = "") -> None:
        self.slots = max(1, slots)
        self.lock = lock  # held while attached (``take_lock``), let go once detached
        self.lock_fd: int | None = None
        self.channel = channel
        self.silence = silence  # seconds without a word from jobmill before it lets go (0: never)
        self.heard = time.monotonic()
        self.attached = True  # jobmill is at the other end of the channel
        self.queue: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        # key -> (the job's process, its working directory, its native id)
        self.running: dict[str, tuple[subprocess.Popen[bytes], Path, str]] = {}
        # ended, jobmill has not recorded it: key -> (working directory, pid, exit status)
        self.unrecorded: dict[str, tuple[Path, str, int]] = {}
        self.pending = bytearray()
        self.out: list[dict[str, Any]] = []
        self.wake_r, wake_w = os.pipe()
        for fd in (self.wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def run(self) -> None:
        ready: dict[str, Any] = {"ev": "ready"}
        if self.lock:
            self.lock_fd, error = take_lock(self.lock)
            if error:
                ready["error"] = error
        self.heard = time.monotonic()
        self.out.append(ready)
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        poller.register(self.channel, select.POLLIN)
        while self.attached or self.running:
            self._start_free()
            self._flush()
            timeout = None
            if self.attached and self.silence:
                timeout = max(0.0, self.heard + self.silence - time.monotonic()) * 1000
            for fd, _mask in poller.poll(timeout):
                if fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 4096):
                            pass
                elif fd == self.channel and not self._read():
                    poller.unregister(self.channel)
            if self.attached and self.silence and time.monotonic() > self.heard + self.silence:
                # jobmill stopped answering (frozen, or its engine lease lost): a standby may
                # take over, so act as if it went away, and say so if it comes back.
                self._detach()
                self.out.append({"ev": "detached", "why": "silence"})
                self._send()
            self._reap()

    def _read(self) -> bool:
        """Take what jobmill sent; False once it went away."""
        try:
            chunk = os.read(self.channel, _READ)
        except OSError:
            chunk = b""
        if not chunk:
            self._detach()
            return False
        self.heard = time.monotonic()
        self.pending += chunk
        *lines, rest = self.pending.split(b"\n")
        self.pending = bytearray(rest)
        for line in lines:
            if line:
                self._handle(json.loads(line))
        return True

    def _handle(self, message: dict[str, Any]) -> None:
        op, key = message["op"], message.get("key", "")
        if op == "start":
            self.queue[key] = message
        elif op == "drop" and self.queue.pop(key, None) is not None:
            self.out.append({"ev": "dropped", "key": key})
        elif op == "recorded":  # jobmill's database has these ends: no file is needed
            for each in message["keys"]:
                self.unrecorded.pop(each, None)
        elif op == "detach":
            self._detach()
            self.out.append({"ev": "detached"})
            self._send()

    def _detach(self) -> None:
        """jobmill goes away: start nothing more, and leave in each job's directory what the
        next jobmill needs (the pid of every running job, the exit status of every job whose
        end was not recorded); from now on a job's exit status is written before it is
        reaped."""
        if not self.attached:
            return
        self.attached = False
        self.queue.clear()  # not started: the next jobmill queues them again
        for _proc, workdir, native_id in self.running.values():
            _write(workdir / PID_FILE, f"{native_id}\n")
        for workdir, pid, code in self.unrecorded.values():
            ended_unrecorded(workdir, pid, code)
        self.unrecorded.clear()
        if self.lock_fd is not None:  # the files are written: the next shepherd may attach
            os.close(self.lock_fd)
            self.lock_fd = None

    def _start_free(self) -> None:
        while self.attached and self.queue and len(self.running) < self.slots:
            key, job = self.queue.popitem(last=False)
            try:
                proc, native_id = start(job)
            except OSError as exc:
                self.out.append({"ev": "failed", "key": key, "error": refusal(exc)})
            except (ValueError, TypeError) as exc:  # e.g. a NUL byte in an argument
                self.out.append({"ev": "failed", "key": key, "error": f"cannot start: {exc}"})
            else:
                self.running[key] = (proc, Path(job["workdir"]), native_id)
                self.out.append({"ev": "started", "key": key, "native_id": native_id})

    def _reap(self) -> None:
        for key, (proc, workdir, native_id) in list(self.running.items()):
            if self.attached:
                code = proc.poll()
                if code is None:
                    continue
                self.unrecorded[key] = (workdir, native_id, code)
                self.out.append({"ev": "exited", "key": key, "code": code})
                if len(self.unrecorded) > MAX_UNRECORDED:  # jobmill does not keep up: on disk
                    old = next(iter(self.unrecorded))
                    ended_unrecorded(*self.unrecorded.pop(old))
            else:
                # Written while the process still exists (a zombie), so whoever watches its
                # pid finds the file once the pid is gone.
                code = ended(proc.pid)
                if code is None:
                    continue
                _write(workdir / EXIT_FILE, f"{code}\n")
                proc.wait()
            del self.running[key]

    def _flush(self) -> None:
        if self.attached:
            self._send()
        self.out.clear()

    def _send(self) -> None:
        if not self.out:
            return
        data = "".join(json.dumps(event) + "\n" for event in self.out).encode()
        self.out.clear()
        try:
            view = memoryview(data)
            while view:
                written = os.write(self.channel, view)
                view = view[written:]
        except OSError:  # jobmill went away meanwhile
            self._detach()


def main(argv: list[str]) -> int:
    slots = int(argv[1]) if len(argv) > 1 else 1
    silence = float(argv[2]) if len(argv) > 2 else 0.0
    lock = argv[3] if len(argv) > 3 else ""
    os.set_blocking(0, True)
    Shepherd(slots, channel=0, silence=silence, lock=lock).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
