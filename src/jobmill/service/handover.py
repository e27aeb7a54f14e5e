"""ARP executables that submit their own batch job: following the job they submitted.

The seed's model: an ARP definition's executable calls ``bsub`` or ``sbatch`` itself and exits.
When such a job (one of an ARP definition, run by the local executor) ends with exit code 0 and
its standard output announces a batch job the way a configured batch executor's submit command
does (``announced``: LSF's ``Job <N> is submitted``, Slurm's ``Submitted batch job N``), the job
is *handed over*: one transition (``requeue``, to QUEUED with reason ``backend``: the batch job
waits in its queue) sets its executor and native id to that batch job's, and from then on the
engine follows it like a job jobmill submitted there itself (status, kill, details, recovery
after a restart). The event's ``batch_job`` data also records where the scheduler says the
batch job writes its output (``stdout``, ``stderr``), which the ARP log action reads.

The first announcement in the first ``SCAN_BYTES`` of the output wins. Only a batch job of the
server's own user is followed: the executable ran as that user, so the jobs it submitted are
that user's; a job id of anyone else's job in the output is logged and ignored (the job then
ends as its process did).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jobmill.domain.errors import Conflict, JobmillError, NotFound
from jobmill.domain.jobs import Event, Job
from jobmill.domain.lifecycle import Action, Reason
from jobmill.executors.base import Executor, ExecutorUnavailable, SubmittedJob
from jobmill.service.files import open_inside
from jobmill.storage.jobs import JobStore

log = logging.getLogger(__name__)
SCAN_BYTES = 2 << 20
EVENT = "batch_job"


@dataclass(frozen=True)
class BatchJob:
    """A batch job a script said it submitted: the executor that knows it, and its id."""

    executor: str
    native_id: str


def announced(text: str, executors: Mapping[str, Executor]) -> BatchJob | None:
    """The first batch job ``text`` announces, among the executors configured here."""
    best: tuple[int, BatchJob] | None = None
    for name, executor in executors.items():
        pattern: re.Pattern[str] | None = getattr(executor, "announced", None)
        if pattern is None:
            continue
        match = pattern.search(text)
        if match is not None and (best is None or match.start() < best[0]):
            best = (match.start(), BatchJob(name, match.group(1)))
    return best[1] if best else None


def server_user() -> str:
    """The name of the user this process runs as (who an executable's batch jobs belong to)."""
    return pwd.getpwuid(os.getuid()).pw_name


def read_head(path: Path) -> str:
    """The first ``SCAN_BYTES`` of a log ('' when it is missing or unreadable)."""
    try:
        handle = open_inside(path, "the job's output")
    except (OSError, JobmillError):  # a refused link announces nothing
        return ""
    if handle is None:
        return ""
    with handle:
        return handle.read(SCAN_BYTES).decode("utf-8", "replace")


def hand_over(
    store: JobStore,
    executors: Mapping[str, Executor],
    job_id: str,
    stdout: Path,
    *,
    actor: str,
) -> Job | None:
    """Point the job at the batch job its output announces; None when it announces none (or
    the job changed meanwhile): it then ends as its process did."""
    found = announced(read_head(stdout), executors)
    if found is None:
        return None
    executor = executors[found.executor]
    ask = getattr(executor, "submitted_job", None)
    submitted: SubmittedJob | None = None
    if ask is not None:
        with contextlib.suppress(ExecutorUnavailable, OSError):
            submitted = ask(found.native_id)
    if submitted is None or submitted.user != server_user():
        # The executable ran as the server's user, so every batch job it submitted is that
        # user's. Another user's job (an id printed by mistake, or to have jobmill follow,
        # kill and read someone else's job) is never followed.
        log.warning(
            "job %s: its output names %s job %s, which is %s, not of %s: not followed",
            job_id, found.executor, found.native_id,
            f"{submitted.user}'s" if submitted and submitted.user else "unknown",
            server_user(),
        )  # fmt: skip
        return None
    data = {
        "executor": found.executor,
        "native_id": found.native_id,
        "stdout": submitted.stdout,
        "stderr": submitted.stderr,
    }
    try:
        job = store.transition(
            job_id,
            Action.REQUEUE,
            actor=actor,
            reason=Reason.BACKEND.value,
            data={"why": "the executable submitted a batch job", EVENT: data},
            values={"executor": found.executor, "native_id": found.native_id},
        )
    except (Conflict, NotFound):  # it ended otherwise meanwhile (aborted, timed out)
        return None
    log.info("job %s: following %s job %s it submitted", job_id, found.executor,
             found.native_id)  # fmt: skip
    return job


def _handover(event: Event) -> dict[str, object] | None:
    found = event.data.get(EVENT) if isinstance(event.data, dict) else None
    return found if isinstance(found, dict) else None


def batch_output(events: list[Event], stream: str) -> str | None:
    """Where the batch job a job was handed over to writes ``stream`` (from its handover
    event); None when it was not handed over or the scheduler did not say."""
    for event in reversed(events):
        found = _handover(event)
        if found is not None:
            value = found.get(stream)
            return str(value) if value else None
    return None


def handed_over(events: list[Event]) -> bool:
    return any(_handover(event) is not None for event in events)
