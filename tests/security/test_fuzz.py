"""Schemathesis against ``/openapi.json``: no request, however odd, gets a 5xx answer.

Every operation of the in-process app is fuzzed with Hypothesis: positive and negative cases,
path parameters drawn both from the schema and from what really exists (job types, the ids of
jobs created here, an experiment with a definition and runs, a rule, a job's report token), and
whole known-good requests, so that cases reach the services and create real jobs. Half of the
random cases carry one hostile value (``HOSTILE``); then every place of each accepted request
gets each hostile value in turn (the sweep). Checks: ``not_a_server_error`` (any 5xx fails),
and the answer's status code and content type are among those the operation documents.

On SQLite only, bounded to a couple of minutes on two cores: ``2 * JOBMILL_FUZZ_EXAMPLES``
random cases per operation (default 100), derandomized (the same cases every run; set
``JOBMILL_FUZZ_SEED`` to explore others). See docs/security.md, "Fuzzing".
"""

from __future__ import annotations

import copy
import itertools
import os
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, seed
from hypothesis import Phase as Stage
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.python import asgi

from jobmill.api.app import create_app
from jobmill.config import Settings
from jobmill.domain.jobs import JobFilter
from jobmill.domain.lifecycle import ACTIVE, Phase
from jobmill.factory import Jobmill
from jobmill.storage.tokens import hash_secret

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.timeout(900),
]

EXAMPLES = int(os.environ.get("JOBMILL_FUZZ_EXAMPLES", "100"))
SEED = os.environ.get("JOBMILL_FUZZ_SEED")
EXP = "fuzz1"
RULE = "fuzz-rule"
DEFINITION = "d1"
TOKEN = "fuzz-report-token"


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:  # narrows the shared one
    """The shared test settings with short waits (a fuzzed ``WAIT`` must not hold a case) and
    a data root of its own (fuzzed data waits and file rules watch there, not the checkout)."""
    data = tmp_path / "data"
    data.mkdir()
    return replace(settings, max_wait=0.5, data_root=data)


@dataclass
class Known:
    """What exists, for the cases to be about: values of path parameters, and whole requests
    (``as_strategy`` arguments) by operation, which the random cases and the sweep start from."""

    path: dict[str, list[Any]]
    requests: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@pytest.fixture
def known(client: TestClient, jobmill: Jobmill, tmp_path: Path) -> Iterator[Known]:
    """Job types, jobs in several phases (one with a report token), an experiment with a
    definition, runs and an ARP job, a rule. Active jobs are aborted afterwards."""
    jobs = []
    for body in (
        {"type": "echo", "parameters": {"message": "pending"}, "phase": "PENDING"},
        {"type": "echo", "parameters": {"message": "done"}},
        {"type": "fail", "parameters": {"code": 3}},
        {"type": "sleep", "parameters": {"seconds": 60}},
    ):
        answer = client.post("/api/v1/jobs", json=body)
        assert answer.status_code == 201, answer.text
        jobs.append(answer.json()["id"])
    jobmill.store.record(jobs[0], "token", actor="fuzz", values={"token_hash": hash_secret(TOKEN)})
    script = tmp_path / "arp.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    arp = f"/api/v1/arp/experiments/{EXP}"
    answer = client.post(f"{arp}/definitions", json={"name": DEFINITION, "executable": str(script)})
    assert answer.status_code == 201, answer.text
    client.post(f"{arp}/runs/1/start", json={"parameters": {"kind": "dark"}})
    client.post(f"{arp}/runs/1/end", json={})
    answer = client.post(f"{arp}/runs/1/apply", json={"definition": DEFINITION})
    assert answer.status_code == 201, answer.text
    jobs.append(answer.json()["job_id"])
    rule = {"name": RULE, "schedule": "0 6 * * *", "create": "echo", "enabled": False,
            "parameters": {"message": "{slot}"}}  # fmt: skip
    assert client.post("/api/v1/rules", json=rule).status_code == 201
    echo = {"type": "echo", "parameters": {"message": "hi"}, "run_id": "r1", "phase": "PENDING"}
    sleep = {"type": "sleep", "parameters": {"seconds": 0, "code": 0}, "execution_duration": 60}
    ocps_env = {"AP_JOB_OUTPUT_DIR": "out", "AP_VISIT_ID": "1", "AP_CCD_NUM": "2", "AP_REPO": "r",
                "AP_TEMPLATE": "t", "AP_CALIB": "c", "AP_FILTER": "g"}  # fmt: skip
    logs = str(tmp_path / "ocps-logs")
    json_body = "application/json"
    requests = {
        "POST /api/v1/jobs": [{"body": echo}, {"body": sleep}],
        "POST /api/v1/jobs/render": [{"body": echo}, {"body": sleep}],
        "POST /api/v1/jobs/batch": [{"body": {"jobs": [echo, sleep]}}],
        "POST /api/v1/jobs/{job_id}/report": [
            {
                "path_parameters": {"job_id": jobs[0]},
                "query": {"token": TOKEN},
                "body": {"counters": {"files": 1, "bytes": 10}, "status": "running"},
                "media_type": json_body,
            },
            {
                "path_parameters": {"job_id": jobs[0]},
                "query": {"token": TOKEN},
                "body": [{"key": "files", "value": 2}],
                "media_type": json_body,
            },
        ],
        "POST /api/v1/job": [
            {"body": {"type": "ap", "env": ocps_env, "log_dir": logs}, "media_type": json_body}
        ],
        "POST /uws/{job_type}": [
            {
                "path_parameters": {"job_type": "echo"},
                "body": {"message": "hi", "RUNID": "r1", "EXECUTIONDURATION": "30"},
                "media_type": "application/x-www-form-urlencoded",
            }
        ],
        "POST /api/v1/arp/experiments/{experiment}/definitions": [
            {
                "path_parameters": {"experiment": EXP},
                "body": {"name": "d2", "executable": str(script), "parameters": "--x 1"},
            }
        ],
        "POST /api/v1/arp/experiments/{experiment}/runs/{run}/start": [
            {"path_parameters": {"experiment": EXP, "run": 3}, "body": {"parameters": {"a": 1}}}
        ],
        "POST /api/v1/arp/experiments/{experiment}/runs/{run}/end": [
            {"path_parameters": {"experiment": EXP, "run": 3}, "body": {"parameters": {"b": "x"}}}
        ],
        "POST /api/v1/rules": [
            {"body": {**rule, "name": "fuzz-two", "run_id": "{date}", "description": "x"}}
        ],
    }
    yield Known(
        path={
            "job_id": jobs + [uuid.UUID(jobs[0]).hex],
            "job_type": ["echo", "sleep", "ap"],
            "experiment": [EXP],
            "run": [1, 2],
            "stream": ["stdout", "stderr"],
            "result_id": ["echo/echo.txt", "sleep"],
            "name": ["echo", RULE, DEFINITION, "message"],
        },
        requests=requests,
    )
    for job in jobmill.store.list(JobFilter(phases=[*ACTIVE, Phase.PENDING]), limit=100_000):
        client.post(f"/api/v1/jobs/{job.id}/abort")  # no fuzzed sleep outlives the test


def fixed_parameters(operation: Any, known: Known) -> list[dict[str, Any]]:
    """Combinations of real values for the operation's path parameters (a few, not all)."""
    names = [p.name for p in operation.path_parameters]
    if not names or any(name not in known.path for name in names):
        return []
    choices = [known.path[name] for name in names]
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*choices)][:12]


HOSTILE = (
    "x\ud800y",  # a lone surrogate: no UTF-8 for it
    "\udfff",
    "a\x00b",
    2**63,  # one past signed 64 bits
    -(2**63) - 1,
    10**30,
    2**31,  # one past a PostgreSQL integer
    float("nan"),
    float("inf"),
)
"""Values a well-formed request can carry that nothing can store. Schemathesis itself draws
valid Unicode and integers within the schema's bounds, so these are put in by hand: in half of
the random cases, and in every place of the first accepted requests of each operation (the
sweep)."""


Place = tuple[Any, Any, bool]  # (container, key, whether the key itself is replaced)


def places(case: Any, hostile: Any) -> list[Place]:
    """Where ``hostile`` can go in ``case``: values (and, for text, keys) of a JSON body;
    numbers in the query and the path (text there would be sent as UTF-8)."""
    found: list[Place] = []
    json_body = case.media_type == "application/json" and isinstance(case.body, dict | list)
    if json_body and not isinstance(hostile, float):  # a JSON client cannot send NaN
        stack: list[Any] = [case.body]
        while stack:
            container = stack.pop()
            items = container.items() if isinstance(container, dict) else enumerate(container)
            for key, value in list(items):
                found.append((container, key, False))
                if isinstance(container, dict) and isinstance(hostile, str):
                    found.append((container, key, True))
                if isinstance(value, dict | list):
                    stack.append(value)
    if not isinstance(hostile, str):
        for location in (case.query, case.path_parameters):
            found.extend((location, key, False) for key in location or {})
    return found


def mutate(case: Any, hostile: Any, pick: int) -> bool:
    """Put ``hostile`` in the ``pick``-th place of ``case`` that can carry it."""
    found = places(case, hostile)
    if not found:
        return False
    container, key, rename = found[pick % len(found)]
    if rename:
        container[f"{key}{hostile}"] = container.pop(key)
    else:
        container[key] = hostile
    return True


def clone(case: Any) -> Any:
    """A new case with copies of ``case``'s values (cases themselves cannot be copied)."""
    return case.operation.Case(
        path_parameters=copy.deepcopy(case.path_parameters),
        headers=copy.deepcopy(dict(case.headers or {})),
        cookies=copy.deepcopy(case.cookies),
        query=copy.deepcopy(case.query),
        body=copy.deepcopy(case.body) if isinstance(case.body, dict | list) else case.body,
        media_type=case.media_type,
    )


def order(operation: Any) -> tuple[int, str]:
    """Deletions last, so that the other operations meet the jobs they are about."""
    return (operation.method.upper() == "DELETE", operation.label)


class Fuzzer:
    """Runs the cases of one schema, counting them and the server errors."""

    CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance")
    ACCEPTED_PER_OPERATION = 3
    """Random cases the server accepted (2xx, 3xx) that the sweep starts from, besides the
    known requests."""

    def __init__(self, headers: dict[str, str], known: Known) -> None:
        self.headers = headers
        self.known = known
        self.checks = [getattr(schemathesis.checks, name) for name in self.CHECKS]
        self.cases = 0
        self.server_errors = 0
        self.failures: list[str] = []

    def exchange(self, case: Any) -> Any:
        """Send ``case`` and check the answer (raises on a failed check)."""
        self.cases += 1
        try:
            response = case.call(headers=self.headers)
        except Exception:  # the app raised: a 500 for a real client
            self.server_errors += 1
            raise
        if response.status_code >= 500:
            self.server_errors += 1
        case.validate_response(response, checks=self.checks, headers=self.headers)
        return response

    def fuzz(self, operation: Any) -> None:
        """Random cases (Hypothesis), then the hostile sweep over the accepted ones."""
        strategies = []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies.append(operation.as_strategy(generation_mode=mode))
            strategies.extend(
                operation.as_strategy(generation_mode=mode, path_parameters=fixed)
                for fixed in fixed_parameters(operation, self.known)
            )
        requests = [
            {"media_type": "application/json"} | request if "body" in request else request
            for request in self.known.requests.get(operation.label, ())
        ]
        strategies.extend(operation.as_strategy(**request) for request in requests)
        accepted: list[Any] = [operation.Case(**request) for request in requests]
        limit = len(accepted) + self.ACCEPTED_PER_OPERATION

        @hypothesis_settings(
            max_examples=EXAMPLES * 2,
            deadline=None,
            derandomize=SEED is None,
            database=None,
            phases=[Stage.explicit, Stage.generate, Stage.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=st.one_of(strategies),
            hostile=st.one_of(st.none(), st.sampled_from(HOSTILE)),
            pick=st.integers(min_value=0, max_value=1000),
        )
        def run(case: Any, hostile: Any, pick: int) -> None:
            original = clone(case)
            if hostile is not None:
                mutate(case, hostile, pick)
            response = self.exchange(case)
            if hostile is None and response.status_code < 400 and len(accepted) < limit:
                accepted.append(original)

        if SEED is not None:
            run = seed(int(SEED))(run)
        try:
            run()
            for base in accepted:
                for hostile in HOSTILE:
                    for pick in range(len(places(base, hostile))):
                        case = clone(base)
                        mutate(case, hostile, pick)
                        self.exchange(case)
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - one failure hides no other
            self.failures.append(f"{operation.label}: {str(exc)[:2000]}")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_no_operation_answers_5xx(client: TestClient, jobmill: Jobmill, known: Known) -> None:
    app = create_app(jobmill, start_engine=False)  # the client's app runs the engine
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    fuzzer = Fuzzer({"Authorization": client.headers["Authorization"]}, known)
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=order)
    started = time.monotonic()
    try:
        for operation in operations:
            fuzzer.fuzz(operation)
    finally:
        asgi.shutdown_lifespans()
    print(
        f"\nfuzz: {len(operations)} operations, {fuzzer.cases} cases, "
        f"{fuzzer.server_errors} answers >= 500, {len(fuzzer.failures)} failing operations, "
        f"{time.monotonic() - started:.0f} s"
    )
    assert not fuzzer.failures, "\n\n".join(fuzzer.failures)
