"""The executor protocol: what every backend (local, Slurm, HTCondor, LSF) implements.

Executors never touch the database. They turn a ``LaunchSpec`` into a running native job and
answer, for a *batch* of native ids at once, what state each one is in (DESIGN rule 3).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from jobmill.domain.jobtypes import Resources
from jobmill.domain.lifecycle import Phase


@dataclass(frozen=True)
class LaunchSpec:
    """Everything an executor needs to start one job."""

    job_id: str
    argv: Sequence[str]
    env: Mapping[str, str]
    workdir: Path
    stdout: Path
    stderr: Path
    resources: Resources = field(default_factory=Resources)
    execution_duration: int = 0
    umask: int | None = None  # of the job's processes (local executor); None: the server's


@dataclass(frozen=True)
class NativeStatus:
    """What the backend says about one job, already mapped to a phase."""

    phase: Phase
    native_state: str
    exit_code: int | None = None
    error: str | None = None
    native_id: str | None = None
    """The job's native id when it is not the one asked about: a backend that names a job only
    once it starts (a local job waiting in the shepherd's queue)."""


@dataclass(frozen=True)
class SubmittedJob:
    """A batch job submitted outside jobmill (by an ARP executable): whose it is, and where
    the scheduler says it writes its output (None for what it does not say)."""

    user: str | None
    stdout: str | None
    stderr: str | None


RETURNED = "returned"
"""The native state of a job the executor gave back before it started (QUEUED): the engine
queues it again (the local shepherd let go of its queue)."""


class ExecutorUnavailable(Exception):
    """The backend cannot be reached; the job stays queued and is retried."""


class PartlySubmitted(Exception):
    """``submit_many`` stopped part way: the first ``len(native_ids)`` specs were submitted
    (their ids, in order), the next one raised ``error``, the rest were not tried."""

    def __init__(self, native_ids: list[str], error: Exception) -> None:
        super().__init__(f"{len(native_ids)} submitted, then: {error}")
        self.native_ids = native_ids
        self.error = error


@runtime_checkable
class Holding(Protocol):
    """An executor whose backend can keep a queued job from starting (Slurm, LSF, HTCondor).

    Both raise ``OSError`` when the backend refuses (the job started meanwhile, someone else
    holds it) and ``ExecutorUnavailable`` when it cannot be asked.
    """

    def hold(self, native_id: str, reason: str) -> None:
        """Keep the pending job from starting; ``reason`` is recorded where the backend can."""

    def release(self, native_id: str, reason: str) -> None:
        """Let a job held by ``hold`` start again."""


class Executor(Protocol):
    """A backend that runs jobs."""

    name: str

    def render(self, spec: LaunchSpec) -> str:
        """The exact script or submit description ``submit`` would use, without submitting."""

    def submit(self, spec: LaunchSpec) -> str:
        """Start the job; return its native id."""

    def batch_key(self, spec: LaunchSpec) -> Hashable:
        """Jobs whose keys are equal may go to the backend together in one ``submit_many``."""

    def submit_many(self, specs: Sequence[LaunchSpec]) -> list[str]:
        """Submit jobs of one ``batch_key`` together (one schedd transaction, a Slurm job
        array...); return their native ids in order. ``submit_each`` is the default. When some
        went in before a failure it raises ``PartlySubmitted``; any other error means none
        did."""

    def poll(self, native_ids: Sequence[str]) -> dict[str, NativeStatus]:
        """The state of every given job, in one backend call; a vanished job maps to ERROR."""

    def cancel(self, native_id: str) -> None:
        """Stop the job (politely first, then for good)."""

    def tick(self) -> float | None:
        """Do timed work (escalating kills); return seconds until it needs calling again."""

    def watch_fds(self) -> dict[int, str]:
        """File descriptors that become readable when a job ends (fd -> native id). One mapped
        to ``""`` stands for several jobs: the executor's ``changed()`` then names them."""

    def find(self, job_id: str) -> str | None:
        """The native id of the job jobmill submitted for ``job_id``, if the backend has it
        (used after a restart that interrupted a submission)."""

    def details(self, native_id: str) -> str:
        """The backend's own description of the job (``scontrol show job``, ``condor_q -l``)."""


def submit_each(executor: Executor, specs: Sequence[LaunchSpec]) -> list[str]:
    """The default ``submit_many``: ``submit`` one spec after the other."""
    native_ids: list[str] = []
    for spec in specs:
        try:
            native_ids.append(executor.submit(spec))
        except Exception as exc:
            if native_ids:
                raise PartlySubmitted(native_ids, exc) from exc
            raise
    return native_ids
