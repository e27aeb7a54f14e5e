"""Handing claimed jobs to an executor: one ``submit_many`` per ``batch_key`` group, the
submission events of those that went in, and the failure of a job the backend refuses (the
engine records every native id in one transaction and tracks the jobs)."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable

from jobmill.domain.jobs import Job
from jobmill.executors.base import Executor, ExecutorUnavailable, LaunchSpec, PartlySubmitted
from jobmill.service.dispatcher import Dispatcher
from jobmill.storage.jobs import Entry

log = logging.getLogger(__name__)


class Submitter:
    """Submits claimed jobs; ``slow_submit`` is the seconds past which a submission is
    flagged slow."""

    def __init__(self, dispatcher: Dispatcher, slow_submit: float) -> None:
        self.dispatcher = dispatcher
        self.slow_submit = slow_submit

    def submit(self, executor: Executor, claimed: list[tuple[Job, str]]) -> dict[str, Entry]:
        """Submit claimed jobs (each with its token) group by group: the ``submitted`` entry
        of every job that went in, by job id. A job whose launch spec cannot be built, or
        that the backend refuses, fails; one a backend that cannot be reached did not take
        waits for a retry."""
        groups: dict[Hashable, list[tuple[Job, LaunchSpec]]] = {}
        for job, token in claimed:
            spec = self.dispatcher.spec_for(job, token)
            if isinstance(spec, str):
                self.dispatcher.fail(job, spec)
            else:
                groups.setdefault(executor.batch_key(spec), []).append((job, spec))
        submitted: dict[str, Entry] = {}
        for members in groups.values():
            self._submit_members(executor, members, submitted)
        return submitted

    def _submit_members(
        self,
        executor: Executor,
        members: list[tuple[Job, LaunchSpec]],
        submitted: dict[str, Entry],
    ) -> str | None:
        """Submit one group; what went in lands in ``submitted``. A backend that cannot be
        reached leaves the rest QUEUED for a retry (and that error is returned); a group the
        backend refuses as a whole is submitted again job by job, so only the job at fault
        fails."""
        started = time.monotonic()
        try:
            native_ids = executor.submit_many([spec for _, spec in members])
            error: Exception | None = None
        except PartlySubmitted as exc:
            native_ids, error = exc.native_ids, exc.error
        except Exception as exc:
            native_ids, error = [], exc
        took = time.monotonic() - started
        for (job, _), native_id in zip(members, native_ids, strict=False):
            submitted[job.id] = self._submitted_entry(native_id, took, len(members))
        rest = members[len(native_ids) :]
        if error is None or not rest:
            return None
        if isinstance(error, ExecutorUnavailable):
            for job, _ in rest:
                self.dispatcher.backend_unavailable(job, str(error))
            return str(error)
        if len(rest) > 1 and not native_ids:  # refused as a whole: which job is at fault?
            for n, member in enumerate(rest):
                unavailable = self._submit_members(executor, [member], submitted)
                if unavailable is not None:
                    for job, _ in rest[n + 1 :]:
                        self.dispatcher.backend_unavailable(job, unavailable)
                    return unavailable
            return None
        self._refused(rest[0][0], error)
        return self._submit_members(executor, rest[1:], submitted) if rest[1:] else None

    def _refused(self, job: Job, error: Exception) -> None:
        if isinstance(error, OSError):
            self.dispatcher.fail(job, f"cannot start the job: {error.strerror or error}")
        else:  # a bug: say so in the job rather than retry it for ever
            log.error("job %s: submission failed", job.id, exc_info=error)
            self.dispatcher.fail(job, f"cannot start the job: internal error: {error!r}")

    def _submitted_entry(self, native_id: str, took: float, together: int) -> Entry:
        data: dict[str, object] = {"native_id": native_id, "seconds": round(took, 3)}
        if together > 1:
            data["submitted_with"] = together  # jobs in the same backend call
        if took > self.slow_submit:
            data["slow"] = True  # ARP's "LSF_Slow": flagged, then reconciled by polling
        return Entry(data=data, values={"native_id": native_id})
