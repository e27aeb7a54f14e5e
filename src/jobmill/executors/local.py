"""The local executor: each job is a process group on this machine.

Jobs are started by the shepherd (``executors.shepherd``), one long-lived process per executor
that this executor starts on first use and talks to over a private socket pair. The engine
hands it jobs (``enqueue``) and learns what happened from one file descriptor
(``watch_fds`` maps it to ``""``; ``changed`` names the jobs): the shepherd starts each job as
its slots free up, with the job's argv exactly (no shell), and keeps each exit status until the
engine recorded it (``recorded``). When jobmill goes away (``close``, a crash) the shepherd
writes the pids of the running jobs and the exit statuses not recorded in their working
directories, and the exit status of each job that ends later: that is how a restarted jobmill
learns the true result of a job that finished while it was down. Jobs started by an earlier
jobmill process are watched through pidfds (``adopt``). The shepherds of one executor take
turns on a lock file (``lock``): a restarted jobmill calls ``attach`` before it reads the jobs'
directories, which returns once its new shepherd holds the lock, that is once the shepherd of
the jobmill that died has written its files.

A job waiting in the shepherd's queue has the native id ``queued:JOB_ID`` here; once it runs,
``poll`` answers it with the real native id (``PID@STARTTIME``) in ``NativeStatus.native_id``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jobmill.domain.lifecycle import Phase
from jobmill.executors.base import RETURNED, LaunchSpec, NativeStatus, submit_each
from jobmill.executors.shepherd import EXIT_FILE, PID_FILE, process_state, start_time

log = logging.getLogger(__name__)

KEEP_ENDED = 10_000  # exit statuses remembered after the process was reaped
QUEUED_PREFIX = "queued:"
SUBMIT_WAIT = 30.0  # seconds ``submit`` waits for the shepherd to start a job
DETACH_WAIT = 5.0  # seconds ``close`` waits for the shepherd to write its files
ATTACH_WAIT = 30.0  # seconds ``attach`` waits for an earlier shepherd to let go of the lock
_READ = 1 << 16


def split_native_id(native_id: str) -> tuple[int, str]:
    pid, _, start = native_id.partition("@")
    return int(pid), start


@dataclass
class _Proc:
    workdir: Path
    pidfd: int | None  # for a job the shepherd does not report on (adopted, or orphaned)
    key: str = ""  # the shepherd's key (the job id) for a job it runs


class LocalExecutor:
    """Runs jobs as local process groups, started by the shepherd."""

    name = "local"

    def __init__(
        self, grace: float = 5.0, slots: int = 4, silence: float = 0.0, lock: Path | None = None
    ) -> None:
        """``silence``: seconds without a ``ping`` after which the shepherd lets go (0: it
        waits for jobmill for ever; the engine sets it below its lease's duration). ``lock``:
        the file this executor's shepherds hold in turn, in a directory of jobmill's own."""
        self.grace = grace
        self.slots = slots
        self.silence = silence
        self.lock = lock
        self._ready = False  # the shepherd said it holds the lock
        self._procs: dict[str, _Proc] = {}
        self._kills: dict[int, float] = {}  # process group -> when SIGKILL is due
        # Exit statuses of reaped jobs, answered again until the engine could record them
        # (a full disk or a database away must not turn a finished job into a lost one).
        self._ended: dict[str, NativeStatus] = {}
        self._queued: dict[str, dict[str, Any]] = {}  # key -> the start message sent
        self._started_as: dict[str, str] = {}  # key -> native id, once started
        self._keys: dict[str, str] = {}  # native id -> key, for the jobs the shepherd ran
        self._recorded: list[str] = []  # keys whose end jobmill recorded, to tell the shepherd
        self._not_started: dict[str, NativeStatus] = {}  # key -> why it never ran
        self._changed: list[str] = []  # native ids (as the engine knows them) with news
        self._shepherd: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._pending = bytearray()
        self._detached = False
        self._closing = False
        self._sending = threading.Lock()  # the lease's thread pings

    def render(self, spec: LaunchSpec) -> str:
        env = " ".join(f"{k}={_quote(v)}" for k, v in sorted(spec.env.items()))
        argv = " ".join(_quote(a) for a in spec.argv)
        umask = f"umask {spec.umask:03o}\n" if spec.umask is not None else ""
        return (
            f"# local process group, working directory {spec.workdir}\n"
            f"# stdout > {spec.stdout}\n# stderr > {spec.stderr}\n"
            f"{umask}env -i {env} {argv}\n"
        )

    # -- the shepherd -----------------------------------------------------------------------

    def _channel_open(self) -> socket.socket:
        if self._channel is not None:
            return self._channel
        ours, theirs = socket.socketpair()
        try:
            self._shepherd = subprocess.Popen(  # noqa: S603 - this interpreter, a fixed module
                [
                    sys.executable,
                    "-m",
                    "jobmill.executors.shepherd",
                    str(self.slots),
                    str(self.silence),
                    str(self.lock or ""),
                ],
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                start_new_session=True,  # a signal to jobmill's terminal does not stop it
                close_fds=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._channel = ours  # blocking: sends wait, reads ask not to (MSG_DONTWAIT)
        return ours

    def _send(self, message: dict[str, Any]) -> None:
        channel = self._channel_open()
        data = (json.dumps(message) + "\n").encode()
        try:
            with self._sending:
                channel.sendall(data)
        except OSError:
            self._lost_shepherd()

    def attach(self, timeout: float = ATTACH_WAIT) -> bool:
        """Start the shepherd and wait until it holds the lock: the shepherd of an earlier
        jobmill has then written the pids and exit statuses a restart reads. False when it
        still waits after ``timeout`` seconds (that shepherd is stuck)."""
        channel = self._channel_open()
        deadline = time.monotonic() + timeout
        while not self._ready and self._channel is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            select.select([channel], [], [], remaining)
            self._receive()
        return self._ready

    def ping(self) -> None:
        """Tell the shepherd that this jobmill still holds its engine lease (any thread); a
        shepherd told nothing for ``silence`` seconds lets go of its jobs."""
        channel = self._channel
        if channel is not None:
            with self._sending, contextlib.suppress(OSError):  # (its reader sees it closed)
                channel.sendall(b'{"op": "ping"}\n')

    def _receive(self) -> None:
        """Read the shepherd's events (without waiting) and apply them."""
        channel = self._channel
        while channel is not None:
            try:
                chunk = channel.recv(_READ, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._lost_shepherd()
                return
            self._pending += chunk
            *lines, rest = self._pending.split(b"\n")
            self._pending = bytearray(rest)
            for line in lines:
                if line:
                    self._event(json.loads(line))

    def _event(self, event: dict[str, Any]) -> None:
        kind = event["ev"]
        if kind == "ready":
            self._ready = True
            if event.get("error"):
                log.warning("local shepherd: %s", event["error"])
            return
        if kind == "detached":
            self._detached = True
            if not self._closing:  # it let go on its own (jobmill was silent too long)
                self._lost_shepherd()
            return
        key = event["key"]
        message = self._queued.pop(key, None)
        if kind == "started" and message is not None:
            native_id = event["native_id"]
            self._started_as[key] = native_id
            self._keys[native_id] = key
            self._procs[native_id] = _Proc(Path(message["workdir"]), None, key)
            self._changed.append(QUEUED_PREFIX + key)
        elif kind == "exited":
            native_id = self._started_as.get(key)
            if native_id is None:
                return
            self._forget(native_id)
            self._end_group(split_native_id(native_id)[0])
            self._remember(native_id, _finished(int(event["code"])))
            self._changed += [QUEUED_PREFIX + key, native_id]
        elif kind == "failed":
            error = str(event.get("error") or "cannot start the job")
            self._not_started[key] = NativeStatus(Phase.ERROR, "not started", error=error)
            self._changed.append(QUEUED_PREFIX + key)
        elif kind == "dropped":
            self._not_started[key] = NativeStatus(
                Phase.ABORTED, "cancelled", error="cancelled before it started"
            )
            self._changed.append(QUEUED_PREFIX + key)
        _trim(self._started_as)
        _trim(self._not_started)
        _trim(self._keys)

    def _lost_shepherd(self) -> None:
        """The shepherd went away (killed) or let go (detached): its running jobs are watched
        like adopted ones (one that let go writes their exit statuses; a killed one cannot: such
        a job ends lost), and the jobs it had not started are given back (``RETURNED``): the
        engine queues them again if it still holds its lease. The next job starts a new
        shepherd."""
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._ready = False
        self._pending.clear()
        self._reap_shepherd()
        for native_id, proc in self._procs.items():
            if proc.key and proc.pidfd is None:
                proc.key = ""
                proc.pidfd = _pidfd(split_native_id(native_id)[0])
        for key in self._queued:
            self._not_started[key] = NativeStatus(
                Phase.QUEUED, RETURNED, error="the local shepherd let go of it before it started"
            )
            self._changed.append(QUEUED_PREFIX + key)
        self._queued.clear()

    def _reap_shepherd(self) -> None:
        if self._shepherd is not None and self._shepherd.poll() is not None:
            self._shepherd = None

    def recorded(self, native_id: str) -> None:
        """jobmill's database has the end of this job: the shepherd need not keep its exit
        status for a later jobmill (told with the next ``tick``)."""
        key = self._keys.pop(native_id, None)
        if key is not None:
            self._recorded.append(key)

    def _tell_recorded(self) -> None:
        if self._recorded and self._channel is not None:
            keys, self._recorded = self._recorded, []
            self._send({"op": "recorded", "keys": keys})

    def changed(self) -> list[str]:
        """The native ids (as ``enqueue`` or ``poll`` gave them) of jobs the shepherd reported
        on since the last call; call it when its file descriptor (``watch_fds``) is readable."""
        self._receive()
        changed, self._changed = self._changed, []
        return changed

    # -- submitting -------------------------------------------------------------------------

    def enqueue(self, spec: LaunchSpec) -> str:
        """Hand the job to the shepherd, which starts it when a slot is free; returns its
        native id while it waits (``queued:JOB_ID``)."""
        key = spec.job_id
        message = {
            "op": "start",
            "key": key,
            "argv": [str(a) for a in spec.argv],
            "env": dict(spec.env),
            "workdir": str(spec.workdir),
            "stdout": str(spec.stdout),
            "stderr": str(spec.stderr),
            "umask": spec.umask,
        }
        self._started_as.pop(key, None)
        self._not_started.pop(key, None)
        self._queued[key] = message
        self._send(message)
        return QUEUED_PREFIX + key

    def submit(self, spec: LaunchSpec) -> str:
        """Start the job and wait until it runs; returns its native id (``OSError`` when it
        cannot start)."""
        self.enqueue(spec)
        key = spec.job_id
        deadline = time.monotonic() + SUBMIT_WAIT
        while (native_id := self._started_as.get(key)) is None:
            failed = self._not_started.get(key)
            if failed is not None:
                raise OSError(failed.error)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OSError(f"the shepherd did not start the job within {SUBMIT_WAIT:g} s")
            select.select([self._channel_open()], [], [], remaining)
            self._receive()
        return native_id

    def adopt(self, native_id: str, workdir: Path) -> None:
        """Track a job started by an earlier jobmill process (after a restart)."""
        pid, _ = split_native_id(native_id)
        self._procs[native_id] = _Proc(workdir, _pidfd(pid))

    def find_started(self, workdir: Path) -> str | None:
        """The native id of a job the shepherd started but jobmill never recorded, if any."""
        try:
            text = (workdir / PID_FILE).read_text().strip()
            pid, start = split_native_id(text)
        except (OSError, ValueError):
            return None
        if start:  # PID@STARTTIME: a reused pid is not taken for the job
            return f"{pid}@{start}"
        now = start_time(pid)  # (a bare pid, as earlier versions wrote)
        return f"{pid}@{now}" if now else f"{pid}@gone"

    def batch_key(self, spec: LaunchSpec) -> Hashable:
        return ""  # any jobs can go together: submit_many submits them one by one

    def submit_many(self, specs: Sequence[LaunchSpec]) -> list[str]:
        return submit_each(self, specs)

    # -- watching ---------------------------------------------------------------------------

    def poll(self, native_ids: Sequence[str]) -> dict[str, NativeStatus]:
        self._receive()
        return {native_id: self._status(native_id) for native_id in native_ids}

    def _status(self, native_id: str) -> NativeStatus:
        if native_id.startswith(QUEUED_PREFIX):
            key = native_id.removeprefix(QUEUED_PREFIX)
            started = self._started_as.get(key)
            if started is not None:
                return replace(self._status(started), native_id=started)
            if key in self._queued:
                return NativeStatus(Phase.QUEUED, "queued")
            return self._not_started.get(key) or NativeStatus(
                Phase.ERROR, "lost", error="lost: the shepherd lost the job before it started"
            )
        ended = self._ended.get(native_id)
        if ended is not None:
            return ended
        proc = self._procs.get(native_id)
        if proc is not None and proc.key:
            return NativeStatus(Phase.EXECUTING, "running")  # the shepherd reports its end
        pid, start = split_native_id(native_id)
        if start_time(pid) == start:
            return NativeStatus(Phase.EXECUTING, "running")
        zombie = _zombie(pid, start)  # first: once reaped, its exit status is written
        code = _exit_status(proc.workdir) if proc else None
        if code is None and zombie:
            return NativeStatus(Phase.EXECUTING, "running")  # its exit status is being written
        self._forget(native_id)
        if start_time(pid) is None:  # else the pid, and its group, belong to a new process
            self._end_group(pid)
        if code is not None:
            return self._remember(native_id, _finished(code))
        return NativeStatus(
            Phase.ERROR, "lost", error="lost: the process vanished without an exit status"
        )

    def _remember(self, native_id: str, status: NativeStatus) -> NativeStatus:
        self._ended[native_id] = status
        _trim(self._ended)
        return status

    def status_after_restart(self, native_id: str, workdir: Path) -> NativeStatus:
        """Like ``poll`` for a job this process did not start."""
        self.adopt(native_id, workdir)
        return self._status(native_id)

    def cancel(self, native_id: str) -> None:
        """SIGTERM to the job's process group; SIGKILL follows after the grace period. A job
        still waiting in the shepherd's queue is taken out of it."""
        if native_id.startswith(QUEUED_PREFIX):
            key = native_id.removeprefix(QUEUED_PREFIX)
            started = self._started_as.get(key)
            if started is not None:
                self.cancel(started)
            elif key in self._queued:
                self._send({"op": "drop", "key": key})
            return
        pid, start = split_native_id(native_id)
        now = start_time(pid)
        if now != start and (now is not None or native_id not in self._procs):
            return  # ended, or its pid (and so its group) is another process's now
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
        self._reap_shepherd()
        self._tell_recorded()
        return soonest

    def watch_fds(self) -> dict[int, str]:
        """The pidfds of adopted jobs, and the shepherd's channel (``""``: see ``changed``)."""
        fds = {p.pidfd: nid for nid, p in self._procs.items() if p.pidfd is not None}
        if self._channel is not None:
            fds[self._channel.fileno()] = ""
        return fds

    def find(self, job_id: str) -> str | None:
        return None  # local jobs are found through their working directory (find_started)

    def details(self, native_id: str) -> str:
        if native_id.startswith(QUEUED_PREFIX):
            native_id = self._started_as.get(native_id.removeprefix(QUEUED_PREFIX), native_id)
            if native_id.startswith(QUEUED_PREFIX):
                return "waiting for a free slot in the local shepherd\n"
        pid, start = split_native_id(native_id)
        alive = start_time(pid) == start
        state = "running" if alive else "ended"
        lines = [f"process group {pid} ({state})"]
        if alive:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                lines.append("command: " + " ".join(a.decode(errors="replace") for a in cmdline))
        return "\n".join(lines) + "\n"

    def _forget(self, native_id: str) -> None:
        proc = self._procs.pop(native_id, None)
        if proc is not None and proc.pidfd is not None:
            os.close(proc.pidfd)

    def close(self) -> None:
        """Stop watching. The shepherd starts nothing more, writes what a later jobmill needs
        (the pids of the running jobs, the exit statuses not recorded) before this returns,
        goes on reaping the jobs that run (writing their exit statuses) and ends with the
        last of them."""
        self._queued.clear()  # (the shepherd drops them: not sent again to another)
        if self._channel is not None:
            self._tell_recorded()
            self._closing = True
            try:
                self._detach()
            finally:
                self._closing = False
        for native_id in list(self._procs):
            self._forget(native_id)
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._pending.clear()

    def _detach(self) -> None:
        """Ask the shepherd to detach and wait (a little) until it has written its files."""
        channel = self._channel
        if channel is None:
            return
        self._detached = False
        self._send({"op": "detach"})
        deadline = time.monotonic() + DETACH_WAIT
        while self._channel is not None and not self._detached:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            select.select([channel], [], [], remaining)
            self._receive()


def _trim(mapping: dict[str, Any]) -> None:
    while len(mapping) > KEEP_ENDED:
        del mapping[next(iter(mapping))]


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


def _exit_status(workdir: Path) -> int | None:
    """The exit status the shepherd wrote in a job's working directory, if any."""
    try:
        return int((workdir / EXIT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _zombie(pid: int, start: str) -> bool:
    """Whether the process ``pid`` started at ``start`` ended but was not reaped yet (its
    parent, a shepherd, is writing its exit status)."""
    return process_state(pid) == ("Z", start)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _quote(value: str) -> str:
    import shlex

    return shlex.quote(value)
