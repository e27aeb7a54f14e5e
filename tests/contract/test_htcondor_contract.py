"""The executor contract (``test_executor_contract.py``) on HTCondor: the same scenarios, with the
HTCondor ``Backend`` entry below and nothing else.

It lives in its own module because HTCondor refuses jobs owned by root: the main pytest run (as
root) skips this module, and ``scripts/condor-tests.sh`` runs it as the ``jobmill`` user (with
``CI=true`` a missing schedd fails instead of skipping, through ``require_service``). The scenarios
are the contract module's own functions, collected here with this module's ``backend`` fixture.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest

if os.geteuid() == 0:
    pytest.skip(
        "HTCondor refuses root-owned jobs: run by scripts/condor-tests.sh as the jobmill user",
        allow_module_level=True,
    )

from tests.conftest import require_service
from tests.contract import test_executor_contract as contract
from tests.contract.test_executor_contract import *  # noqa: F403 - the scenarios and fixtures


@functools.cache
def _schedd() -> Any:
    """The pool's schedd, or None without bindings or a reachable schedd."""
    try:
        import htcondor2

        schedd = htcondor2.Schedd()
        schedd.query(constraint="false", projection=["ClusterId"])
    except Exception:  # noqa: BLE001 - any failure means: no pool here
        return None
    return schedd


def _act(action: str, native: str) -> None:
    import htcondor2

    _schedd().act(getattr(htcondor2.JobAction, action), [native])


def _stopped(native: str) -> bool:
    cluster, proc = native.split(".")
    ads = _schedd().query(
        constraint=f"ClusterId == {cluster} && ProcId == {proc}", projection=["JobStatus"]
    )
    return not ads or ads[0]["JobStatus"] in (3, 4)  # removed or completed


HTCONDOR = contract.Backend(
    name="htcondor",
    available=lambda: _schedd() is not None,
    what="HTCondor (the htcondor2 bindings and a reachable schedd)",
    settings=lambda s: s.with_(executors=("local", "htcondor")),
    jobtype_yaml="executor: htcondor\n",
    never_a_job="999999999.0",
    stopped=_stopped,
    cleanup=lambda native: _act("Remove", native),
    held_yaml="resources:\n  extra: ['hold = true']\n",
    release=lambda native: _act("Release", native),
)


@pytest.fixture(params=[HTCONDOR], ids=lambda backend: backend.name)
def backend(request: pytest.FixtureRequest) -> contract.Backend:
    chosen: contract.Backend = request.param
    require_service(chosen.available(), chosen.what)
    return chosen
