"""The base of the executors that drive a batch system through its commands (Slurm, LSF, PBS).

In the manner of dask-jobqueue's ``Job`` and Parsl's providers, a scheduler is a small subclass:
a few class attributes (its commands, its directive prefix, the pattern of the id its submit
command prints, ONE table from its native states to phases) and a few methods (the directives of
a job, the arguments and the parser of its status command). The base does the rest the same way
for every scheduler:

- ``render`` (dask-jobqueue's ``job_script``): ``#!/bin/sh``, the directives, then the job's
  environment as single-quoted ``export`` lines and ``exec`` of its argv;
- ``submit``: the script on the submit command's stdin; a submission that timed out may have
  gone in, so the job is looked up by name (``find``) before it is sent again;
- ``poll``: the status of many jobs with one command (per ``status_chunk`` ids), mapped through
  the state table. A job the scheduler no longer lists keeps its last answer for ``lost_after``
  seconds, then is lost: ERROR with a reason, never COMPLETED. HELD stays HELD, and a job last
  answered HELD or SUSPENDED that is now COMPLETED is answered EXECUTING once (``settle``);
- ``cancel``, ``hold``, ``release``, ``find``, ``details``: one command each.

Only the command interface runs commands: ``submit_script``, ``status``, ``cancel_job``,
``hold``, ``release``, ``find`` and ``details``. ``executors/fake.py`` answers it from memory.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, ClassVar

from jobmill.domain.lifecycle import ENDED, Phase
from jobmill.executors._commands import CommandFailed, run
from jobmill.executors.base import ExecutorUnavailable, LaunchSpec, NativeStatus, submit_each

log = logging.getLogger(__name__)

JOB_NAME_PREFIX = "jobmill-"  # + the jobmill job id: how ``find`` knows a job after a restart
SUBMITTED = NativeStatus(Phase.QUEUED, "submitted")
_NOT_COMPLETABLE = frozenset({Phase.HELD, Phase.SUSPENDED})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Runner = Callable[..., str]
StateTable = Mapping[str, tuple[Phase, str | None]]


class BatchExecutor:
    """Runs jobs on a batch system through its commands; a subclass names the commands."""

    name: str = "batch"
    label: ClassVar[str] = "batch"  # the scheduler's name in messages ("Slurm")
    directive: ClassVar[str] = "#"  # the prefix of a directive line ("#SBATCH")
    states: ClassVar[StateTable] = {}  # native state -> (phase, error)
    listing: ClassVar[str] = "the scheduler"  # what lists jobs, in messages ("bjobs")
    transient: ClassVar[re.Pattern[str] | None] = None  # stderr that means "unreachable"
    submit_command: ClassVar[tuple[str, ...]] = ()  # reads the script on stdin
    submitted: ClassVar[re.Pattern[str]] = re.compile(r"^([0-9]+)$", re.M)  # group 1: the id
    native_id: ClassVar[re.Pattern[str]] = re.compile(r"[0-9]+")  # a whole native id
    status_chunk: ClassVar[int | None] = 500  # ids per status command; None: it lists all jobs
    status_accept: ClassVar[tuple[int, ...]] = (0,)  # exit statuses of status/find/details
    cancel_command: ClassVar[tuple[str, ...]] = ()
    hold_command: ClassVar[tuple[str, ...]] = ()
    release_command: ClassVar[tuple[str, ...]] = ()
    find_command: ClassVar[tuple[str, ...]] = ()  # "{name}" stands for the job's name
    details_commands: ClassVar[tuple[tuple[str, ...], ...]] = ()  # the first that knows it

    def __init__(
        self,
        *,
        bin_dir: str = "",
        queue: str | None = None,
        account: str | None = None,
        timeout: float = 30.0,
        lost_after: float = 60.0,
        runner: Runner = run,
    ) -> None:
        """``bin_dir``: where the scheduler's commands are (empty: on ``PATH``); ``queue`` and
        ``account``: for the jobs whose type names none (``resources.partition``/``account``)."""
        self.bin_dir = bin_dir
        self.queue = queue
        self.account = account
        self.timeout = timeout
        self.lost_after = lost_after
        self._runner = runner
        self._last: dict[str, NativeStatus] = {}  # last answer for each live job
        self._missing: dict[str, float] = {}  # native id -> when the scheduler first lacked it
        self._uncertain: set[str] = set()  # jobmill ids whose submission may have gone in

    # -- what a scheduler says about itself -------------------------------------------------

    def directives(self, spec: LaunchSpec) -> list[str]:
        """The directive lines of a job, without their prefix."""
        raise NotImplementedError

    def status_argv(self, native_ids: Sequence[str]) -> list[str]:
        """The status command for these jobs (command name first)."""
        raise NotImplementedError

    def parse_status(self, out: str, native_ids: Sequence[str]) -> dict[str, NativeStatus]:
        """The statuses the status command printed for ``native_ids``."""
        raise NotImplementedError

    # -- the script (dask-jobqueue's job_script) ----------------------------------------------

    def render(self, spec: LaunchSpec) -> str:
        """The exact script ``submit`` hands to the scheduler; ValueError if a value cannot be
        written into it safely (a newline in a path, a bad variable name)."""
        lines = ["#!/bin/sh", *(f"{self.directive} {line}" for line in self.directives(spec))]
        return "\n".join([*lines, *self.body(spec)]) + "\n"

    def body(self, spec: LaunchSpec) -> list[str]:
        """The script after its directives."""
        return script_body(spec)

    def extra_directives(self, spec: LaunchSpec) -> list[str]:
        """The job type's extra directives, verbatim (a leading prefix is dropped)."""
        return [self.extra(line) for line in spec.resources.extra]

    def extra(self, line: str) -> str:
        check_line(line)
        text = line.strip()
        if text.startswith(self.directive):
            text = text[len(self.directive) :].strip()
        return text

    # -- the command interface (what executors/fake.py answers from memory) -----------------

    def command(self, name: str) -> str:
        return os.path.join(self.bin_dir, name) if self.bin_dir else name

    def _run(self, name: str, *args: str, **options: Any) -> str:
        return self._runner(
            [self.command(name), *args], timeout=self.timeout, transient=self.transient, **options
        )

    def submit_script(self, script: str) -> str:
        """Hand the script to the scheduler; its native id."""
        return self.job_id_from(self._run(*self.submit_command, stdin=script))

    def job_id_from(self, out: str) -> str:
        """The native id in the submit command's output (the last one it names)."""
        found = self.submitted.findall(out)
        if not found:
            raise OSError(f"{self.submit_command[0]} printed no job id: {out.strip()[:200]!r}")
        return str(found[-1])

    def status(self, native_ids: Sequence[str]) -> dict[str, NativeStatus]:
        """What the scheduler says of these jobs: ONE status command per ``status_chunk`` ids
        (Parsl's ``status``). A job it does not list is absent from the answer."""
        size = self.status_chunk or max(1, len(native_ids))
        listed: dict[str, NativeStatus] = {}
        for start in range(0, len(native_ids), size):
            chunk = native_ids[start : start + size]
            try:
                out = self._run(*self.status_argv(chunk), accept=self.status_accept)
            except CommandFailed as exc:  # no answer this time: the engine tries again
                raise ExecutorUnavailable(str(exc)) from None
            listed.update(self.parse_status(out, chunk))
        return listed

    def cancel_job(self, native_id: str) -> None:
        self._run(*self.cancel_command, native_id)

    def hold(self, native_id: str, reason: str = "") -> None:
        """Keep a pending job from starting (the scheduler keeps no reason; jobmill records it
        in the job's event). ``OSError`` when the scheduler refuses."""
        self._run(*self.hold_command, native_id)

    def release(self, native_id: str, reason: str = "") -> None:
        """Let a held job start again."""
        self._run(*self.release_command, native_id)

    def find(self, job_id: str) -> str | None:
        """The newest job named ``jobmill-<job id>`` the scheduler still knows."""
        argv = [part.format(name=JOB_NAME_PREFIX + job_id) for part in self.find_command]
        try:
            out = self._run(*argv, accept=self.status_accept)
        except CommandFailed as exc:  # not knowing is not "not there": look again later
            raise ExecutorUnavailable(str(exc)) from None
        ids = [word for word in out.split() if self.native_id.fullmatch(word)]
        return max(ids, key=_sequence) if ids else None

    def details(self, native_id: str) -> str:
        """The scheduler's own description of the job: the first of ``details_commands`` that
        knows it."""
        names = " and ".join(argv[0] for argv in self.details_commands)
        refusal: CommandFailed | None = None
        for argv in self.details_commands:
            try:
                out = self._run(*argv, native_id, accept=self.status_accept)
            except CommandFailed as exc:
                refusal = exc
                continue
            if out.strip():
                return out
        if refusal is not None:
            return f"{self.label} job {native_id}: {names} cannot show it ({refusal})\n"
        return f"{self.label} job {native_id} is unknown to {names}\n"

    # -- the executor protocol --------------------------------------------------------------

    def submit(self, spec: LaunchSpec) -> str:
        try:
            script = self.render(spec)
        except ValueError as exc:
            raise OSError(f"cannot write the batch script: {exc}") from None
        if spec.job_id in self._uncertain:
            # An earlier submission timed out: it may have been accepted after all.
            found = self.find(spec.job_id)
            if found is not None:
                self._uncertain.discard(spec.job_id)
                return found
        make_directories(spec)
        try:
            native_id = self.submit_script(script)
        except ExecutorUnavailable:
            self._uncertain.add(spec.job_id)
            raise
        self._uncertain.discard(spec.job_id)
        self._last[native_id] = SUBMITTED
        return native_id

    def batch_key(self, spec: LaunchSpec) -> Hashable:
        return ""  # any jobs can go together: submit_many submits them one by one

    def submit_many(self, specs: Sequence[LaunchSpec]) -> list[str]:
        return submit_each(self, specs)

    def poll(self, native_ids: Sequence[str]) -> dict[str, NativeStatus]:
        wanted = list(dict.fromkeys(native_ids))
        if not wanted:
            return {}
        keep = set(wanted)
        listed = {nid: s for nid, s in self.status(wanted).items() if nid in keep}
        gone = [nid for nid in wanted if nid not in listed]
        statuses = {**listed, **(self.vanished(gone) if gone else {})}
        for nid in wanted:
            if nid in listed:
                self._missing.pop(nid, None)
            statuses[nid] = status = settle(self._last.get(nid), statuses[nid])
            if status.phase in ENDED:
                self._last.pop(nid, None)
                self._missing.pop(nid, None)
            else:
                self._last[nid] = status
        for table in (self._last, self._missing):
            for nid in [n for n in table if n not in keep]:
                del table[nid]
        return {nid: statuses[nid] for nid in wanted}

    def vanished(self, gone: Sequence[str]) -> dict[str, NativeStatus]:
        """The jobs the status command did not list (a scheduler with an accounting record
        asks it here first)."""
        return {nid: self.missing(nid) for nid in gone}

    def missing(
        self, nid: str, stale: NativeStatus | None = None, where: str | None = None
    ) -> NativeStatus:
        """A job the scheduler does not list now: its last answer (or ``stale``) until it has
        been missing for ``lost_after`` seconds, then lost."""
        now = time.monotonic()
        if now - self._missing.setdefault(nid, now) >= self.lost_after:
            where = where or f"is unknown to {self.listing}"
            return NativeStatus(
                Phase.ERROR,
                "lost",
                error=f"lost: {self.label} job {nid} {where} (for {self.lost_after:g} s)",
            )
        return stale or self._last.get(nid) or self.not_yet(nid)

    def not_yet(self, nid: str) -> NativeStatus:
        return NativeStatus(Phase.QUEUED, "unknown", error=f"{nid} is not in {self.listing} yet")

    def cancel(self, native_id: str) -> None:
        """Stop the job; one the scheduler says is gone or finished leaves nothing to stop."""
        try:
            self.cancel_job(native_id)
        except CommandFailed as exc:
            log.info("%s: cancel %s: %s", self.name, native_id, exc)

    def tick(self) -> float | None:
        return None

    def watch_fds(self) -> dict[int, str]:
        return {}

    def close(self) -> None:
        pass


# -- shared pieces (pure functions, tested through every scheduler) ---------------------------


def table_status(
    table: StateTable,
    label: str,
    state: str,
    *,
    native: str | None = None,
    exit_code: int | None = None,
    failure: str | None = None,
) -> NativeStatus:
    """One native state through a scheduler's table. An ended job carries its exit code (none
    for 0) and the table's error, else ``failure`` (default: its exit code); a COMPLETED state
    with a non-zero exit code is an ERROR."""
    row = table.get(state)
    if row is None:
        return NativeStatus(Phase.UNKNOWN, state, error=f"unknown {label} state '{state}'")
    phase, error = row
    native = native or state
    if phase not in ENDED:
        return NativeStatus(phase, native, error=error)
    if phase is Phase.COMPLETED:
        if not exit_code:
            return NativeStatus(Phase.COMPLETED, state, exit_code=0)
        phase, error = Phase.ERROR, None
    return NativeStatus(
        phase, native, exit_code=exit_code or None, error=error or failure or exit_text(exit_code)
    )


def exit_text(exit_code: int | None, signal: int | None = None) -> str:
    if signal:
        return f"killed by signal {signal}"
    if exit_code is None:
        return "failed"
    return f"exit code {exit_code}"


def settle(last: NativeStatus | None, status: NativeStatus) -> NativeStatus:
    """The engine completes only QUEUED or EXECUTING jobs. A job this process last answered
    HELD or SUSPENDED, or never answered (after a restart it does not know what the engine
    saw), that is now COMPLETED is answered EXECUTING once, and COMPLETED at the next poll."""
    if status.phase is Phase.COMPLETED and (last is None or last.phase in _NOT_COMPLETABLE):
        return NativeStatus(Phase.EXECUTING, f"{status.native_state} (ended between two polls)")
    return status


def script_body(spec: LaunchSpec) -> list[str]:
    """The part of a batch script after its directives: the job's environment as ``export``
    lines and ``exec`` of its argv, every value single-quoted (``shlex.quote``)."""
    lines = ["# generated by jobmill: values are single-quoted, never interpreted"]
    for name, value in sorted(spec.env.items()):
        if not _ENV_NAME.match(name):
            raise ValueError(f"'{name}' is not a valid environment variable name")
        lines.append(f"export {name}={shlex.quote(value)}")
    lines.append("exec " + " ".join(shlex.quote(arg) for arg in spec.argv))
    return lines


def make_directories(spec: LaunchSpec) -> None:
    for directory in {spec.workdir, spec.stdout.parent, spec.stderr.parent}:
        directory.mkdir(parents=True, exist_ok=True)


def time_limit_seconds(walltime: int | None, execution_duration: int) -> int | None:
    """The tighter of the job type's walltime and the job's execution duration; None when
    neither is set."""
    limits = [s for s in (walltime, execution_duration) if s]
    return min(limits) if limits else None


def time_limit_minutes(walltime: int | None, execution_duration: int) -> int | None:
    """``time_limit_seconds`` in whole minutes, rounded up (Slurm's ``--time``, LSF's ``-W``)."""
    seconds = time_limit_seconds(walltime, execution_duration)
    return max(1, math.ceil(seconds / 60)) if seconds else None


def check_line(value: str) -> None:
    if _CONTROL.search(value):
        raise ValueError(f"control characters (newline...) are not allowed: {value!r}")


def _sequence(native_id: str) -> int:
    """The job number a native id starts with (``4211``, ``4211_3``, ``4211.server``)."""
    digits = re.match(r"[0-9]+", native_id)
    return int(digits.group()) if digits else -1
