"""An in-memory batch scheduler, and the batch executor on it: for tests of the executor base.

``FakeExecutor`` is a ``BatchExecutor`` whose command interface (submit, status, cancel, hold,
release, find, details) is answered by a ``FakeScheduler`` instead of commands; everything else
(render, the state table, lost detection, settle, hold bookkeeping) is the base's own code. No
process runs: a test moves jobs between states (``start``, ``finish``, ``set_state``,
``forget``) and checks what ``poll`` answers. The scheduler keeps a real one's rules: only a
pending job can be held and only a held one released, a job that ended cannot be cancelled
(``CommandFailed``, as a real command would exit), an unknown id is simply not listed, and
``down`` makes every call ``ExecutorUnavailable``. Every call is recorded in ``calls``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from jobmill.domain.lifecycle import Phase
from jobmill.executors._commands import CommandFailed
from jobmill.executors.base import ExecutorUnavailable, LaunchSpec, NativeStatus
from jobmill.executors.batch import (
    JOB_NAME_PREFIX,
    BatchExecutor,
    check_line,
    table_status,
    time_limit_seconds,
)

# The fake scheduler's states -> (phase, error), as a real scheduler's table.
FAKE_STATES: dict[str, tuple[Phase, str | None]] = {
    "PENDING": (Phase.QUEUED, None),
    "HELD": (Phase.HELD, "held"),
    "RUNNING": (Phase.EXECUTING, None),
    "SUSPENDED": (Phase.SUSPENDED, "suspended"),
    "DONE": (Phase.COMPLETED, None),
    "FAILED": (Phase.ERROR, None),
    "TIMEOUT": (Phase.ERROR, "timeout: the time limit was reached"),
    "CANCELLED": (Phase.ABORTED, "cancelled outside jobmill"),
    "NODE_LOST": (Phase.UNKNOWN, "the scheduler lost contact with the job's node"),
}
ENDED_STATES = frozenset({"DONE", "FAILED", "TIMEOUT", "CANCELLED"})
_NAME = re.compile(r"^#FAKE --name=(\S+)$", re.M)


@dataclass
class FakeJob:
    """One job of the fake scheduler."""

    native_id: str
    name: str
    script: str
    state: str = "PENDING"
    exit_code: int | None = None


class FakeScheduler:
    """A batch system in memory: its jobs by native id, every call recorded."""

    def __init__(self) -> None:
        self.jobs: dict[str, FakeJob] = {}
        self.calls: list[tuple[str, ...]] = []
        self.down = False
        self._next = 1000

    def record(self, *call: str) -> None:
        self.calls.append(call)
        if self.down:
            raise ExecutorUnavailable(f"fake scheduler: {call[0]}: not responding")

    def count(self, command: str) -> int:
        return sum(1 for call in self.calls if call[0] == command)

    # -- its commands ---------------------------------------------------------------------

    def submit(self, script: str) -> str:
        self.record("submit")
        self._next += 1
        native_id = str(self._next)
        name = _NAME.search(script)
        self.jobs[native_id] = FakeJob(native_id, name.group(1) if name else "", script)
        return native_id

    def status(self, native_ids: Sequence[str]) -> dict[str, FakeJob]:
        self.record("status", *native_ids)
        return {nid: self.jobs[nid] for nid in native_ids if nid in self.jobs}

    def cancel(self, native_id: str) -> None:
        self.record("cancel", native_id)
        self._refuse_unless(native_id, *(set(FAKE_STATES) - ENDED_STATES))
        self.set_state(native_id, "CANCELLED")

    def hold(self, native_id: str) -> None:
        self.record("hold", native_id)
        self._refuse_unless(native_id, "PENDING")
        self.set_state(native_id, "HELD")

    def release(self, native_id: str) -> None:
        self.record("release", native_id)
        self._refuse_unless(native_id, "HELD")
        self.set_state(native_id, "PENDING")

    def select(self, name: str) -> list[str]:
        """The ids of the jobs named ``name`` (``qselect -N``)."""
        self.record("select", name)
        return [job.native_id for job in self.jobs.values() if job.name == name]

    def show(self, native_id: str) -> str:
        self.record("show", native_id)
        job = self.jobs.get(native_id)
        if job is None:
            return ""
        return f"JobId={job.native_id}\nName={job.name}\nState={job.state}\n"

    def _refuse_unless(self, native_id: str, *states: str) -> None:
        job = self.jobs.get(native_id)
        if job is None or job.state not in states:
            now = job.state if job else "unknown"
            raise CommandFailed(["fake"], 1, f"job {native_id} is {now}: not allowed")

    # -- what a test does to its jobs -------------------------------------------------------

    def set_state(self, native_id: str, state: str, exit_code: int | None = None) -> None:
        self.jobs[native_id].state = state
        self.jobs[native_id].exit_code = exit_code

    def start(self, native_id: str) -> None:
        self.set_state(native_id, "RUNNING")

    def finish(self, native_id: str, exit_code: int = 0) -> None:
        self.set_state(native_id, "DONE" if exit_code == 0 else "FAILED", exit_code)

    def forget(self, native_id: str) -> None:
        """The job vanishes (purged from the scheduler's memory)."""
        del self.jobs[native_id]


class FakeExecutor(BatchExecutor):
    """The batch executor base on a ``FakeScheduler`` (shared, if given, as by two processes)."""

    name = "fake"
    label = "fake"
    directive = "#FAKE"
    states = FAKE_STATES
    listing = "the fake scheduler"

    def __init__(self, scheduler: FakeScheduler | None = None, *, lost_after: float = 60.0) -> None:
        super().__init__(lost_after=lost_after)
        self.scheduler = scheduler or FakeScheduler()

    def directives(self, spec: LaunchSpec) -> list[str]:
        res = spec.resources
        lines = [f"--name={JOB_NAME_PREFIX}{_plain(spec.job_id)}"]
        lines += [f"--output={_plain(str(spec.stdout))}", f"--error={_plain(str(spec.stderr))}"]
        lines.append(f"--cpus={res.cpus}")
        if res.memory_mb:
            lines.append(f"--memory={res.memory_mb}M")
        if seconds := time_limit_seconds(res.walltime, spec.execution_duration):
            lines.append(f"--time={seconds}")
        if queue := res.partition or self.queue:
            lines.append(f"--queue={_plain(queue)}")
        return [*lines, *self.extra_directives(spec)]

    def submit_script(self, script: str) -> str:
        return self.scheduler.submit(script)

    def status(self, native_ids: Sequence[str]) -> dict[str, NativeStatus]:
        jobs = self.scheduler.status(native_ids)
        return {
            nid: table_status(FAKE_STATES, self.label, job.state, exit_code=job.exit_code)
            for nid, job in jobs.items()
        }

    def cancel_job(self, native_id: str) -> None:
        self.scheduler.cancel(native_id)

    def hold(self, native_id: str, reason: str = "") -> None:
        self.scheduler.hold(native_id)

    def release(self, native_id: str, reason: str = "") -> None:
        self.scheduler.release(native_id)

    def find(self, job_id: str) -> str | None:
        ids = self.scheduler.select(JOB_NAME_PREFIX + job_id)
        return max(ids, key=int) if ids else None

    def details(self, native_id: str) -> str:
        return self.scheduler.show(native_id) or f"fake job {native_id} is unknown\n"


def _plain(value: str) -> str:
    check_line(value)
    if " " in value:
        raise ValueError(f"the fake scheduler takes no spaces in a directive: {value!r}")
    return value
