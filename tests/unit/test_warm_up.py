"""A server process prepares every route at start-up, so its first caller does not wait for
FastAPI to do it (``api/app.py``, ``_warm_up``); apps built for tests skip it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import jobmill.api.app as app_module
from jobmill.factory import Jobmill


@pytest.mark.parametrize("warm_up", [True, False])
def test_the_routes_are_prepared_at_start_up_only_when_asked(
    jobmill: Jobmill, monkeypatch: pytest.MonkeyPatch, warm_up: bool
) -> None:
    calls: list[str] = []
    real = app_module._warm_up

    async def recorded(app: object) -> None:
        calls.append("warm-up")
        await real(app)  # type: ignore[arg-type]

    monkeypatch.setattr(app_module, "_warm_up", recorded)
    app = app_module.create_app(jobmill, start_engine=False, warm_up=warm_up)
    with TestClient(app) as client:
        assert calls == (["warm-up"] if warm_up else [])
        # The warm-up's request for an unknown path reached no handler and changed nothing.
        assert client.get("/healthz").status_code == 200
