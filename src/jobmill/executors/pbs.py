"""The PBS Pro / OpenPBS executor, on the batch executor base (``batch.py``).

``qsub`` a generated script (``#PBS`` directives; PBS starts a job in the home directory, so the
script changes into the job's working directory itself); the status of many jobs in one
``qstat -f -F json -x`` call (finished jobs too, from the server's job history), mapped through
``PBS_STATES``; ``qdel``, ``qhold``/``qrls``; ``qselect -x -N`` finds a job after a restart.
No PBS server runs where jobmill is developed: the tests parse recorded answers
(``tests/data/pbs/``). See docs/pbs.md.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jobmill.domain.lifecycle import Phase
from jobmill.executors.base import ExecutorUnavailable, LaunchSpec, NativeStatus
from jobmill.executors.batch import (
    JOB_NAME_PREFIX,
    BatchExecutor,
    check_line,
    exit_text,
    script_body,
    table_status,
    time_limit_seconds,
)

QSTAT_CHUNK = 500  # job ids per qstat call
# qstat exits 153 (PBSE_UNKJOBID) when one of the ids is unknown, yet prints the others
UNKNOWN_JOB_EXIT = (0, 153)
TERMINATED = 91  # the substate of a finished job that was deleted (qdel)
SIGNALLED = 256  # an Exit_status above this is 256 + the signal that killed the job

PBS_TRANSIENT = re.compile(
    r"[Cc]annot connect to (PBS )?server|Connection refused|cannot read reply|No route to host"
    r"|[Cc]ommunication failure|[Tt]imed? ?out|[Ss]erver (is )?(down|unavailable)|try again"
    r"|Maximum number of jobs already in queue",
)

# Every PBS job_state -> (phase, error). F and X are refined by Exit_status and substate.
PBS_STATES: dict[str, tuple[Phase, str | None]] = {
    "Q": (Phase.QUEUED, None),
    "W": (Phase.QUEUED, "waiting for its start time or a file stage-in"),
    "T": (Phase.QUEUED, None),  # in transit between queues
    "H": (Phase.HELD, "held"),
    "R": (Phase.EXECUTING, None),
    "E": (Phase.EXECUTING, None),  # exiting after having run
    "B": (Phase.EXECUTING, None),  # an array job: at least one subjob has started
    "S": (Phase.SUSPENDED, "suspended by PBS (preemption) or an administrator"),
    "U": (Phase.SUSPENDED, "suspended: its workstation became busy"),
    "F": (Phase.COMPLETED, None),
    "X": (Phase.COMPLETED, None),  # a finished subjob
    "M": (Phase.ERROR, "lost: moved to another PBS server (jobmill follows one server)"),
}
# Exit_status values below 0 are PBS's own (JOB_EXEC_* in OpenPBS's job.h): limits it enforced,
# else a failure to start the job.
PBS_KILLS: dict[int, str] = {
    -24: "killed by PBS: more CPUs in use than requested (ncpus burst)",
    -25: "killed by PBS: more CPU time than its CPUs allow (ncpus sum)",
    -26: "out of memory: the PBS vmem limit was reached",
    -27: "out of memory: the PBS memory limit was reached",
    -28: "timeout: the PBS CPU time limit was reached",
    -29: "timeout: the PBS walltime was reached",
}

_JOB_ID = re.compile(r"[0-9]+(?:\[[0-9]*\])?(?:\.[A-Za-z0-9_.-]+)?")  # 1234.server, 1234[7].server
_SUBMITTED = re.compile(r"^\s*(" + _JOB_ID.pattern + r")\s*$", re.M)
_PLAIN = re.compile(r"[A-Za-z0-9_./=,+@%-]+")
_REFUSED_EXTRA = {"-J": "job arrays", "-V": "passing the server's environment"}


class PbsExecutor(BatchExecutor):
    """Runs jobs as PBS Pro / OpenPBS batch jobs through ``qsub``, ``qstat`` and ``qdel``."""

    name = "pbs"
    label = "PBS"
    directive = "#PBS"
    states = PBS_STATES
    listing = "qstat -x"
    transient = PBS_TRANSIENT
    submit_command = ("qsub",)
    submitted = _SUBMITTED
    native_id = _JOB_ID
    status_chunk = QSTAT_CHUNK
    status_accept = UNKNOWN_JOB_EXIT
    cancel_command = ("qdel",)
    hold_command = ("qhold",)
    release_command = ("qrls",)
    find_command = ("qselect", "-x", "-N", "{name}")
    details_commands = (("qstat", "-f", "-x"),)

    def directives(self, spec: LaunchSpec) -> list[str]:
        res = spec.resources
        select = f"select=1:ncpus={res.cpus}" + (f":mem={res.memory_mb}MB" if res.memory_mb else "")
        lines = [
            f"-N {JOB_NAME_PREFIX}{_value(spec.job_id)}",
            "-S /bin/sh",
            f"-o {_log_path(spec.stdout)}",
            f"-e {_log_path(spec.stderr)}",
            "-k oed",  # written where they belong while the job runs, not copied at its end
            f"-l {select}",
        ]
        if seconds := time_limit_seconds(res.walltime, spec.execution_duration):
            lines.append(
                f"-l walltime={seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
            )
        if queue := res.partition or self.queue:
            lines.append(f"-q {_value(queue)}")
        if account := res.account or self.account:
            lines.append(f"-A {_value(account)}")
        return [*lines, *self.extra_directives(spec)]

    def extra(self, line: str) -> str:
        text = super().extra(line)
        option = text.split()[0] if text else ""
        if option in _REFUSED_EXTRA:
            raise ValueError(
                f"{_REFUSED_EXTRA[option]} ('{option}') are not supported in extra directives"
            )
        return text

    def body(self, spec: LaunchSpec) -> list[str]:
        return [f"cd {shlex.quote(str(spec.workdir))} || exit 1", *script_body(spec)]

    def status_argv(self, native_ids: Sequence[str]) -> list[str]:
        return ["qstat", "-f", "-F", "json", "-x", *native_ids]

    def parse_status(self, out: str, native_ids: Sequence[str]) -> dict[str, NativeStatus]:
        return parse_qstat(out, native_ids)


def parse_qstat(out: str, wanted: Sequence[str] | None = None) -> dict[str, NativeStatus]:
    """``qstat -f -F json`` output -> statuses by job id; with ``wanted``, by the ids asked
    for, matched on their number (``1234.pbs01`` finds ``1234.pbs01.example.org``)."""
    try:
        jobs = (json.loads(out, strict=False) if out.strip() else {}).get("Jobs") or {}
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ExecutorUnavailable(f"qstat printed JSON jobmill cannot read: {exc}") from None
    statuses = {job_id.split(".")[0]: map_job(job) for job_id, job in jobs.items()}
    if wanted is None:
        return {job_id: statuses[job_id.split(".")[0]] for job_id in jobs}
    return {nid: statuses[nid.split(".")[0]] for nid in wanted if nid.split(".")[0] in statuses}


def map_job(job: Mapping[str, Any]) -> NativeStatus:
    """One job's attributes (``job_state``, ``substate``, ``Exit_status``, ``Hold_Types``) ->
    a jobmill phase, via PBS_STATES."""
    state = str(job.get("job_state", "")).strip()
    if state not in ("F", "X"):
        holds = job.get("Hold_Types") if state == "H" else None
        return table_status(PBS_STATES, "PBS", state, native=f"H ({holds})" if holds else state)
    status = _number(job.get("Exit_status"))
    if _number(job.get("substate")) == TERMINATED:
        return NativeStatus(Phase.ABORTED, f"{state} (deleted)", error="deleted outside jobmill")
    if status is None:
        return NativeStatus(Phase.ERROR, state, error="finished without an exit status")
    if status < 0:
        why = PBS_KILLS.get(status, f"PBS could not run the job (Exit_status {status})")
        return NativeStatus(Phase.ERROR, f"{state} (Exit_status {status})", error=why)
    signal = status - SIGNALLED if status > SIGNALLED else None
    code = 128 + signal if signal else status
    return table_status(PBS_STATES, "PBS", state, exit_code=code, failure=exit_text(status, signal))


def _number(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _value(value: str) -> str:
    """A value in a ``#PBS`` line: plain, or double-quoted when it has spaces; nothing else."""
    check_line(value)
    if _PLAIN.fullmatch(value):
        return value
    if _PLAIN.fullmatch(value.replace(" ", "_")):
        return f'"{value}"'
    raise ValueError(f"cannot be written into a #PBS line: {value!r}")


def _log_path(path: Path) -> str:
    """``-o``/``-e``: PBS reads ``host:path``, so a ``:`` in the path cannot be written."""
    if ":" in str(path):
        raise ValueError(f"a ':' in a log path cannot be passed to PBS: {str(path)!r}")
    return _value(str(path))
