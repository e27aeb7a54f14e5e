"""Fixtures of the security tests: a jobmill built from the module's ``security_settings``
and an authenticated client of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobmill.config import Settings
from jobmill.factory import Jobmill, build
from tests.conftest import app_client


@pytest.fixture
def jm(security_settings: Settings) -> Iterator[Jobmill]:
    """A jobmill (engine not started) of the module's ``security_settings`` fixture."""
    jobmill = build(security_settings)
    try:
        yield jobmill
    finally:
        jobmill.close()


@pytest.fixture
def api(jm: Jobmill) -> Iterator[TestClient]:
    with app_client(jm) as client:
        yield client


def error(response: Any, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    return body
