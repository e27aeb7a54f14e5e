"""Which executors a jobmill runs, built from the settings (``JOBMILL_EXECUTORS``).

This is the one module of ``executors/`` that reads the settings, by attribute (it does not
import ``jobmill.config``: executors sit below it). Every executor gets plain values: its
constructor's arguments.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from jobmill.executors.base import Executor
from jobmill.executors.local import LocalExecutor

# The batch executors: name -> (module.class, its own arguments). An argument ``x`` comes from
# the setting ``<name>_x``; every one also gets ``bin_dir``, ``timeout`` and ``lost_after`` from
# ``<name>_bin``, ``<name>_command_timeout`` and ``<name>_lost_after``.
BATCH: dict[str, tuple[str, tuple[str, ...]]] = {
    "slurm": ("slurm.SlurmExecutor", ("partition", "account", "array_min")),
    "lsf": ("lsf.LsfExecutor", ("queue", "project")),
    "pbs": ("pbs.PbsExecutor", ("queue", "account")),
}
KNOWN = ("local", "htcondor", "external", *BATCH)


class ExecutorSettings(Protocol):
    """What the registry reads of the settings besides the batch executors' own."""

    @property
    def home(self) -> Path: ...
    @property
    def node(self) -> str: ...
    @property
    def executors(self) -> Sequence[str]: ...
    @property
    def kill_grace(self) -> float: ...
    @property
    def max_local_jobs(self) -> int: ...
    @property
    def condor_schedd(self) -> str | None: ...
    @property
    def condor_collector(self) -> str | None: ...


def shepherd_lock(settings: ExecutorSettings) -> Path:
    """The lock the local shepherds of this node take in turn (``executors.local``), in
    jobmill's private home."""
    node = re.sub(r"[^A-Za-z0-9._-]", "_", settings.node)[:100]
    return settings.home / f".shepherd-local@{node}.lock"


def build_executors(settings: ExecutorSettings) -> dict[str, Executor]:
    """One executor per configured name; ``local`` is always there."""
    executors: dict[str, Executor] = {
        "local": LocalExecutor(
            grace=settings.kill_grace, slots=settings.max_local_jobs, lock=shepherd_lock(settings)
        )
    }
    for name in settings.executors:
        if name == "local":
            continue
        if name == "htcondor":  # its bindings are an optional extra: imported only when used
            from jobmill.executors.htcondor import configured

            executors[name] = configured(settings.condor_schedd, settings.condor_collector)
        elif name == "external":  # jobs jobmill never runs: PipelineJobs events drive them
            from jobmill.executors.external import ExternalExecutor

            executors[name] = ExternalExecutor()
        elif name in BATCH:
            where, own = BATCH[name]
            module, class_name = where.split(".")
            executor = getattr(importlib.import_module(f"jobmill.executors.{module}"), class_name)
            executors[name] = executor(
                bin_dir=getattr(settings, f"{name}_bin"),
                timeout=getattr(settings, f"{name}_command_timeout"),
                lost_after=getattr(settings, f"{name}_lost_after"),
                **{argument: getattr(settings, f"{name}_{argument}") for argument in own},
            )
        else:
            raise ValueError(f"JOBMILL_EXECUTORS: unknown executor '{name}' (known: {KNOWN})")
    return executors
