"""What a local job's output and disk say about its end: the output cap
(``JOBMILL_MAX_JOB_OUTPUT``, stdout and stderr together) and a note when its disk was (nearly)
full as it failed. The engine applies them when it records a local job's end, and stops a
running job whose output passed the cap."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from jobmill.domain.lifecycle import Phase
from jobmill.executors.base import NativeStatus
from jobmill.service.space import format_size, free_bytes


def over_cap(cap: int) -> str:
    """The error of a job whose output passed ``cap`` bytes."""
    return f"output over {format_size(cap)} (JOBMILL_MAX_JOB_OUTPUT)"


def output_size(paths: Iterable[Path]) -> int:
    """The bytes in ``paths`` (a missing file counts 0)."""
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += os.lstat(path).st_size
    return total


def past_cap(logs: tuple[Path, ...], cap: int) -> bool:
    """Whether the output in ``logs`` passed ``cap`` (0: no cap)."""
    return cap > 0 and bool(logs) and output_size(logs) > cap


def ended_as(
    status: NativeStatus, logs: tuple[Path, ...], cap: int, workdir: Path, min_free: int
) -> NativeStatus:
    """How a local job that wrote ``logs`` and ran in ``workdir`` is recorded as ended: ERROR
    when its output passed the cap, and a failure says when its disk was full."""
    if not logs or status.phase is Phase.ABORTED:
        return status
    if past_cap(logs, cap):
        return NativeStatus(Phase.ERROR, status.native_state, status.exit_code, error=over_cap(cap))
    if status.phase is Phase.ERROR:
        full = disk_note({path.parent for path in logs} | {workdir}, min_free)
        if full:
            return replace(status, error=f"{status.error or status.native_state}; {full}")
    return status


def disk_note(places: Iterable[Path], min_free: int) -> str | None:
    """What to add to a job's error when the disk of one of ``places`` was (nearly) full."""
    need = max(min_free, 1 << 20)
    for place in sorted(places):
        free = free_bytes(place)
        if free is not None and free < need:
            how = "full" if free < 1 << 20 else "nearly full"
            return f"the disk was {how} ({format_size(free)} free under {place})"
    return None
