"""The executor protocol: what every backend (local, Slurm, HTCondor, LSF) implements.

Executors never touch the database. They turn a ``LaunchSpec`` into a running native job and
answer, for a *batch* of native ids at once, what state each one is in (DESIGN rule 3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

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


@dataclass(frozen=True)
class NativeStatus:
    """What the backend says about one job, already mapped to a phase."""

    phase: Phase
    native_state: str
    exit_code: int | None = None
    error: str | None = None


class ExecutorUnavailable(Exception):
    """The backend cannot be reached; the job stays queued and is retried."""


class Executor(Protocol):
    """A backend that runs jobs."""

    name: str

    def render(self, spec: LaunchSpec) -> str:
        """The exact script or submit description ``submit`` would use, without submitting."""

    def submit(self, spec: LaunchSpec) -> str:
        """Start the job; return its native id."""

    def poll(self, native_ids: Sequence[str]) -> dict[str, NativeStatus]:
        """The state of every given job, in one backend call; a vanished job maps to ERROR."""

    def cancel(self, native_id: str) -> None:
        """Stop the job (politely first, then for good)."""

    def tick(self) -> float | None:
        """Do timed work (escalating kills); return seconds until it needs calling again."""

    def watch_fds(self) -> dict[int, str]:
        """File descriptors that become readable when a job ends (fd -> native id)."""

    def find(self, job_id: str) -> str | None:
        """The native id of the job jobmill submitted for ``job_id``, if the backend has it
        (used after a restart that interrupted a submission)."""

    def details(self, native_id: str) -> str:
        """The backend's own description of the job (``scontrol show job``, ``condor_q -l``)."""
