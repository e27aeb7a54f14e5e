"""Which executors a jobmill runs, built from the settings (``JOBMILL_EXECUTORS``)."""

from __future__ import annotations

from jobmill.config import Settings
from jobmill.executors.base import Executor
from jobmill.executors.local import LocalExecutor

KNOWN = ("local", "slurm", "htcondor", "lsf")


def build_executors(settings: Settings) -> dict[str, Executor]:
    """One executor per configured name; ``local`` is always there."""
    executors: dict[str, Executor] = {"local": LocalExecutor(grace=settings.kill_grace)}
    for name in settings.executors:
        if name == "local":
            continue
        if name not in KNOWN:
            raise ValueError(f"JOBMILL_EXECUTORS: unknown executor '{name}' (known: {KNOWN})")
        if name == "htcondor":  # its bindings are an optional extra: imported only when used
            from jobmill.executors.htcondor import from_settings

            executors[name] = from_settings(settings)
            continue
        if name == "slurm":
            from jobmill.executors.slurm import SlurmExecutor

            executors[name] = SlurmExecutor.from_settings(settings)
            continue
        if name == "lsf":
            from jobmill.executors.lsf import LsfExecutor

            executors[name] = LsfExecutor.from_settings(settings)
            continue
        raise ValueError(f"JOBMILL_EXECUTORS: the '{name}' executor is not available yet")
    return executors
