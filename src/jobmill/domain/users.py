"""Who is asking: the user every service call is made for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    """Who is asking: a named user, an administrator, or an anonymous reader (a deployment
    that lets callers without credentials read, ``JOBMILL_ANONYMOUS=read``)."""

    name: str
    admin: bool = False
    reader: bool = False
    job: str | None = None
    """Set for a running job's own token: it acts for the job's owner, and only to create the
    job's sub-jobs (``docs/workflows.md``)."""

    @property
    def sees_all(self) -> bool:
        """May read every job (an administrator, or an anonymous reader)."""
        return self.admin or self.reader
