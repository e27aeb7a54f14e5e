"""The ``external`` executor: jobs that jobmill never runs.

Something outside jobmill does the work (an Agave/Tapis job, an agent on another site) and tells
jobmill about it with PipelineJobs events (``run``, ``finish``, ``fail``; docs/pipelinejobs.md),
which move the job's phase. Such a job is created PENDING and normally never reaches the engine;
should one be queued anyway (``PHASE=RUN``), the engine hands it here, which starts nothing,
names it by its job id and never reports a state of its own: the job waits in the queue until
its events move it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from jobmill.executors.base import LaunchSpec, NativeStatus

NAME = "external"


class ExternalExecutor:
    """Runs nothing: the job's events are its only source of state."""

    name = NAME

    def render(self, spec: LaunchSpec) -> str:
        return (
            f"# job {spec.job_id} is external: jobmill does not run it.\n"
            "# Its agent reports run, finish and fail as PipelineJobs events.\n"
        )

    def submit(self, spec: LaunchSpec) -> str:
        return spec.job_id

    def batch_key(self, spec: LaunchSpec) -> Hashable:
        return NAME

    def submit_many(self, specs: Sequence[LaunchSpec]) -> list[str]:
        return [spec.job_id for spec in specs]

    def poll(self, native_ids: Sequence[str]) -> dict[str, NativeStatus]:
        return {}  # no news: only events change an external job

    def cancel(self, native_id: str) -> None:
        return None  # nothing runs here; the job's own agent is told by whoever aborts it

    def tick(self) -> float | None:
        return None

    def watch_fds(self) -> dict[int, str]:
        return {}

    def find(self, job_id: str) -> str | None:
        return job_id

    def details(self, native_id: str) -> str:
        return f"job {native_id} is external: jobmill does not run it; events drive it"
