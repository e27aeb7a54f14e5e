"""Progress reports posted by jobs themselves, authorised by their own tokens."""

from __future__ import annotations

import time
from typing import Any

from jobmill.domain.errors import Forbidden, Unauthorized
from jobmill.domain.jobs import parse_job_id
from jobmill.domain.values import check_value
from jobmill.service import reports
from jobmill.service.jobs.base import JobServiceBase
from jobmill.storage.jobs import hash_secret

TOKEN_CACHE_SECONDS = 10.0


class JobReporting(JobServiceBase):
    """Reports from running jobs."""

    def report(self, job_id: str, token: str | None, payload: Any) -> dict[str, Any]:
        """Merge a progress report posted by the job itself, authorised by its own token.

        Returns the merged report. A token once verified is remembered for a few seconds, so
        a job posting often costs one database transaction per post, not two.
        """
        canonical = parse_job_id(job_id)
        if not token:
            raise Unauthorized("a job token is required", field="token")
        if canonical is None or not self._token_valid(canonical, token):
            raise Forbidden("this token is not valid for this job", field="token")
        check_value(payload, "")  # fields: "counters.done", "status"
        return self.store.merge_report(
            canonical, reports.merge, reports.normalise(payload), actor=f"job:{canonical}"
        )

    def _token_valid(self, job_id: str, token: str) -> bool:
        key = (job_id, hash_secret(token))
        now = time.monotonic()
        if self._verified.get(key, 0.0) > now:
            return True
        if not self.store.check_job_token(job_id, token):
            return False
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[key] = now + TOKEN_CACHE_SECONDS
        return True
