"""brownthrower's list filters for ``jobmill ls``: ``status!=DONE name=add2 id>10 tag=calib``.

Each term is ``FIELD OP VALUE`` (no spaces), and the terms combine with AND. ``parse`` turns
them into a ``Query``: what the server filters on (``GET /api/v1/jobs``: phases, type, owner,
run id, tag, id prefix, sequence range), so pages stay right, and the few tests the server
cannot make (``name!=``, ``id!=``, ``status=STAND-BY``...) as checks ``ls`` applies to the jobs it
is sent. A bad term is a ``FilterError`` naming it. The fields, operators and the map from
brownthrower's statuses to jobmill's phases are in docs/workflows.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobmill.domain.lifecycle import Phase, Reason

Check = Callable[[Mapping[str, Any]], bool]

TERM = re.compile(r"(?P<field>[A-Za-z_]+)(?P<op><=|>=|!=|==|=|<|>)(?P<value>.*)", re.S)
ORDERED = ("<", "<=", ">", ">=")
FIELDS = {
    "id": "id",
    "seq": "id",
    "status": "status",
    "phase": "status",
    "name": "name",
    "type": "name",
    "tag": "tag",
    "owner": "owner",
    "run_id": "run_id",
}
"""Names a term may use -> the field they mean (``phase`` = ``status``, ``type`` = ``name``)."""

CHILDREN = Reason.CHILDREN.value


@dataclass(frozen=True)
class Status:
    """What one status name selects: jobs in ``phases`` whose reason passes ``reason``."""

    phases: frozenset[Phase]
    reason: Callable[[str | None], bool] | None = None

    def matches(self, phase: str, reason: str | None) -> bool:
        return phase in self.phases and (self.reason is None or self.reason(reason))

    @property
    def exact(self) -> frozenset[Phase]:
        """The phases in which every job matches (none when the reason decides)."""
        return self.phases if self.reason is None else frozenset()


P = Phase
STATUSES: dict[str, Status] = {
    # brownthrower's statuses
    "STASHED": Status(frozenset({P.PENDING})),
    "STAND-BY": Status(frozenset({P.QUEUED}), lambda r: r == CHILDREN),
    "RUNNABLE": Status(frozenset({P.QUEUED}), lambda r: r == Reason.CAPACITY.value),
    "RUNNING": Status(frozenset({P.EXECUTING, P.SUSPENDED, P.UNKNOWN})),
    "DONE": Status(frozenset({P.COMPLETED})),
    "FAILED": Status(frozenset({P.ERROR, P.ABORTED})),
    # jobmill's phases (QUEUED is both: every queued job, whatever it waits for)
    **{phase.value: Status(frozenset({phase})) for phase in Phase},
}
"""Status names (either spelling, any case) -> the jobs they select."""


class FilterError(ValueError):
    """A term ``ls`` cannot read: the message names it."""


@dataclass
class Query:
    """Parsed terms: the server's filters and the checks left to the client."""

    phases: set[Phase] | None = None  # None: any phase
    type: str | None = None
    owner: str | None = None
    run_id: str | None = None
    tag: str | None = None
    id_prefix: str | None = None
    seq_min: int | None = None
    seq_max: int | None = None
    checks: list[Check] = field(default_factory=list)

    def server(self) -> dict[str, Any]:
        """The keyword arguments of ``Client.list`` for this query."""
        params: dict[str, Any] = {}
        if self.phases is not None and self.phases != set(Phase):
            params["phase"] = sorted(p.value for p in self.phases)
        for key in ("type", "owner", "run_id", "tag", "id_prefix", "seq_min", "seq_max"):
            value = getattr(self, key)
            if value is not None:
                params[key] = value
        return params

    @property
    def empty(self) -> bool:
        """Whether nothing can match (``status=DONE status=FAILED``, ``id>5 id<3``)."""
        if self.phases is not None and not self.phases:
            return True
        return self.seq_min is not None and self.seq_max is not None and self.seq_min > self.seq_max

    def matches(self, job: Mapping[str, Any]) -> bool:
        return all(check(job) for check in self.checks)


def parse(terms: list[str]) -> Query:
    """Read ``terms``; raise ``FilterError`` naming the first bad one."""
    query = Query()
    for term in terms:
        _one(query, term)
    return query


def _one(query: Query, term: str) -> None:
    match = TERM.fullmatch(term.strip())
    if match is None:
        raise FilterError(f"'{term}' is not FIELD=VALUE (or !=, <, <=, >, >=)")
    name, op, value = match["field"].lower(), match["op"], match["value"]
    op = "=" if op == "==" else op
    what = FIELDS.get(name)
    if what is None:
        known = ", ".join(sorted(FIELDS))
        raise FilterError(f"'{term}': unknown field '{name}' (fields: {known})")
    if not value:
        raise FilterError(f"'{term}': no value after '{op}'")
    if what == "id":
        _id(query, term, op, value)
        return
    if op in ORDERED:
        raise FilterError(f"'{term}': {name} takes only = and !=")
    if what == "status":
        _status(query, term, op, value)
    else:
        _text(query, what, op, value)


def _status(query: Query, term: str, op: str, value: str) -> None:
    status = STATUSES.get(value.upper())
    if status is None:
        names = ", ".join(STATUSES)
        raise FilterError(f"'{term}': unknown status '{value}' (statuses: {names})")
    current = query.phases if query.phases is not None else set(Phase)
    if op == "=":
        query.phases = current & status.phases
        if status.reason is not None:
            query.checks.append(lambda job: status.matches(job["phase"], job.get("reason")))
    else:
        query.phases = current - status.exact
        if status.reason is not None:
            query.checks.append(lambda job: not status.matches(job["phase"], job.get("reason")))


def _text(query: Query, what: str, op: str, value: str) -> None:
    """``name``, ``tag``, ``owner``, ``run_id``: ``=`` on the server (a second one, and ``!=``,
    in the client)."""
    if what == "tag":
        if op == "=" and query.tag is None:
            query.tag = value
        elif op == "=":
            query.checks.append(lambda job: value in (job.get("tags") or []))
        else:
            query.checks.append(lambda job: value not in (job.get("tags") or []))
        return
    key = "type" if what == "name" else what
    if op == "=" and getattr(query, key) is None:
        setattr(query, key, value)
    elif op == "=":
        query.checks.append(lambda job: job.get(key) == value)
    else:
        query.checks.append(lambda job: job.get(key) != value)


def _id(query: Query, term: str, op: str, value: str) -> None:
    """A number is the job's sequence number (the ``#`` column); anything else is the start of
    its id (``=`` only)."""
    if not value.isdigit():
        prefix = value.lower()
        if op != "=" or not re.fullmatch(r"[0-9a-f][0-9a-f-]{0,35}", prefix):
            raise FilterError(
                f"'{term}': id takes a sequence number (id>10) or the start of a job id (id=3f2a)"
            )
        if query.id_prefix is not None and not (
            prefix.startswith(query.id_prefix) or query.id_prefix.startswith(prefix)
        ):
            query.phases = set()  # two prefixes no id starts with both
        elif query.id_prefix is None or len(prefix) > len(query.id_prefix):
            query.id_prefix = prefix
        return
    if len(value) > 10:
        raise FilterError(f"'{term}': {value} is not a sequence number")
    number = int(value)
    low = {"=": number, ">": number + 1, ">=": number}.get(op)
    high = {"=": number, "<": number - 1, "<=": number}.get(op)
    if low is not None:
        query.seq_min = low if query.seq_min is None else max(query.seq_min, low)
    if high is not None:
        if high < 0:
            query.phases = set()
        else:
            query.seq_max = high if query.seq_max is None else min(query.seq_max, high)
    if op == "!=":
        query.checks.append(lambda job: job.get("seq") != number)
