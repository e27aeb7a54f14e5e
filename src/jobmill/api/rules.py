"""Rules under ``/api/v1/rules``: a thin layer over ``RuleEngine`` (docs/triggers.md, "Rules").

* ``GET /rules``, ``POST /rules`` (admin): list, create;
* ``GET /rules/{name}``, ``DELETE /rules/{name}`` (admin; rules-file rules cannot be deleted);
* ``POST /rules/{name}/enable`` and ``/disable`` (admin);
* ``GET /rules/{name}/firings``: newest first (``limit``, ``before``; ``X-Next-Before`` when
  more follow).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response

from jobmill.api.auth import current_user
from jobmill.api.responses import COMMON, errors
from jobmill.domain.jobs import iso
from jobmill.domain.rules import Firing
from jobmill.domain.values import INT32_MAX
from jobmill.service.jobs import User
from jobmill.service.rules import Rule, RuleEngine

router = APIRouter(prefix="/api/v1/rules", tags=["rules"], responses=errors(*COMMON))
UserDep = Annotated[User, Depends(current_user)]


async def _engine(request: Request) -> RuleEngine:
    rules: RuleEngine = request.app.state.jobmill.rules
    return rules


EngineDep = Annotated[RuleEngine, Depends(_engine)]


def rule_out(engine: RuleEngine, rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": rule.name,
        "kind": rule.kind,
        "enabled": rule.enabled,
        "source": rule.source,
        "origin": rule.origin,
        "definition": rule.spec.definition() | {"enabled": rule.enabled},
        "created_by": rule.created_by,
        "created_at": iso(rule.created_at),
    }
    if rule.root is not None:
        out["root"] = rule.root
    if rule.schedule is not None:
        out["next_slot"] = iso(engine.next_slot(rule))
    return out


def firing_out(firing: Firing) -> dict[str, Any]:
    return {
        "id": firing.id,
        "rule": firing.rule,
        "key": firing.key,
        "kind": firing.kind,
        "job_id": firing.job_id,
        "error": firing.error,
        "fired_at": iso(firing.fired_at),
    }


@router.get("")
def list_rules(_user: UserDep, engine: EngineDep) -> list[dict[str, Any]]:
    return [rule_out(engine, rule) for rule in engine.rules()]


@router.post("", status_code=201, responses=errors(409))
def create_rule(
    user: UserDep, engine: EngineDep, body: Annotated[Any, Body()] = None
) -> dict[str, Any]:
    return rule_out(engine, engine.create(user, body))


@router.get("/{name}", responses=errors(404))
def get_rule(name: str, _user: UserDep, engine: EngineDep) -> dict[str, Any]:
    return rule_out(engine, engine.get(name))


@router.delete("/{name}", status_code=204, responses=errors(404, 409))
def delete_rule(name: str, user: UserDep, engine: EngineDep) -> Response:
    engine.delete(user, name)
    return Response(status_code=204)


@router.post("/{name}/enable", responses=errors(404, 409))
def enable_rule(name: str, user: UserDep, engine: EngineDep) -> dict[str, Any]:
    return rule_out(engine, engine.set_enabled(user, name, True))


@router.post("/{name}/disable", responses=errors(404, 409))
def disable_rule(name: str, user: UserDep, engine: EngineDep) -> dict[str, Any]:
    return rule_out(engine, engine.set_enabled(user, name, False))


@router.get("/{name}/firings", responses=errors(404))
def rule_firings(
    name: str,
    _user: UserDep,
    engine: EngineDep,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, le=INT32_MAX)] = None,
) -> list[dict[str, Any]]:
    firings = engine.firings(name, limit=limit + 1, before=before)
    if len(firings) > limit:
        firings = firings[:limit]
        response.headers["X-Next-Before"] = str(firings[-1].id)
    return [firing_out(f) for f in firings]
