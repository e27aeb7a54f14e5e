"""Progress reports posted by jobs themselves, authorised by their own tokens."""

from __future__ import annotations

from typing import Any

from jobmill.domain.errors import Forbidden, Unauthorized
from jobmill.domain.jobs import parse_job_id
from jobmill.domain.values import check_value
from jobmill.service import reports
from jobmill.service.jobs.base import JobServiceBase
from jobmill.storage.group import Write


class JobReporting(JobServiceBase):
    """Reports from running jobs."""

    def report(self, job_id: str, token: str | None, payload: Any) -> dict[str, Any]:
        """Merge a progress report posted by the job itself, authorised by its own token.

        Returns the merged report. The token is checked in the statement that reads the report,
        and the post is committed with the others of the same moment (``storage.group``)."""
        return self.store.group.run(self._report(job_id, token, payload))

    async def report_async(self, job_id: str, token: str | None, payload: Any) -> dict[str, Any]:
        """``report`` for a request on the event loop: waits for the commit without a thread."""
        return await self.store.group.run_async(self._report(job_id, token, payload))

    def _report(self, job_id: str, token: str | None, payload: Any) -> Write[dict[str, Any]]:
        canonical = parse_job_id(job_id)
        if not token:
            raise Unauthorized("a job token is required", field="token")
        if canonical is None:
            raise Forbidden("this token is not valid for this job", field="token")
        check_value(payload, "")  # fields: "counters.done", "status"
        return self.store.merge_report_write(
            canonical,
            reports.merge,
            reports.normalise(payload),
            actor=f"job:{canonical}",
            token=token,
        )
