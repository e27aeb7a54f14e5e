"""Rules: jobs created without a person. The model and its pure logic (no I/O).

A rule creates a job of type ``create`` with ``parameters`` (constants and ``{name}``
templates) when something happens. Exactly one of three fields says what:

* ``file``: a pattern relative to ``root`` with named captures, ``raw/{visit}/{ccd}.fits``. A
  capture matches one path component or part of one (never a ``/``); ``*``, ``?`` and ``[...]``
  are wildcards within a component and ``**`` (a whole component) any number of directories.
  Templates may use the captures, ``{path}`` (the absolute path) and ``{file}`` (the path
  relative to the root). The firing key is ``{file}``.
* ``job``: a job of that type ended in ``phase`` (default ``COMPLETED``). Templates may use
  ``{parameters.<name>}``, ``{results.<name>}`` (the path of a declared result),
  ``{report.<key>}`` and ``{job.id}``, ``{job.type}``, ``{job.owner}``, ``{job.run_id}``,
  ``{job.phase}``. The firing key is the upstream job's id.
* ``schedule``: a 5-field cron expression, in UTC. Templates may use ``{slot}`` (ISO 8601)
  and ``{date}`` (``YYYY-MM-DD``). The firing key is the slot (``2026-11-22T12:00:00Z``).

A template that is exactly one ``{name}`` passes the value with its type (an integer stays an
integer); anything else is text. ``{{`` and ``}}`` are literal braces. ``check`` verifies a
rule against the job types (types exist, template names are known, constants fit the
parameters); ``RuleSpec`` errors name the field at fault, which the YAML loader turns into a
line and the API into a field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobmill.domain.errors import ValidationError
from jobmill.domain.jobtypes import NAME_RE, JobType, coerce
from jobmill.domain.lifecycle import TERMINAL, Phase

KINDS = ("file", "job", "schedule")
MAX_KEY = 1024
"""The longest firing key (a relative path); longer paths never fire (and are logged)."""
FILE_BUILTINS = frozenset({"path", "file"})
SCHEDULE_NAMES = frozenset({"slot", "date"})
JOB_FIELDS = frozenset({"id", "type", "owner", "run_id", "phase"})
_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REF = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_REF_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_.-]+)?$")


class RuleSpec(BaseModel):
    """One rule as declared in YAML or posted to the API (checked for shape, not references)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    enabled: bool = True
    create: str = Field(description="the job type to create")
    parameters: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = Field(default=None, max_length=256, description="a template")
    owner: str | None = Field(default=None, max_length=128)
    file: str | None = Field(default=None, max_length=4096)
    root: str | None = Field(default=None, max_length=4096)
    marker: bool | None = None
    stable_seconds: float | None = Field(default=None, ge=0, le=86400)
    job: str | None = None
    phase: str | None = None
    schedule: str | None = Field(default=None, max_length=256)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(f"'{value}' is not a valid rule name (letters, digits, _.-)")
        return value

    @model_validator(mode="after")
    def _check(self) -> RuleSpec:
        given = [kind for kind in KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(
                "file: a rule needs exactly one of 'file', 'job' or 'schedule'"
                + (f" (it has {', '.join(given)})" if given else "")
            )
        kind = given[0]
        for name in ("root", "marker", "stable_seconds"):
            if kind != "file" and getattr(self, name) is not None:
                raise ValueError(f"{name}: only for a 'file' rule")
        if kind != "job" and self.phase is not None:
            raise ValueError("phase: only for a 'job' rule")
        if kind == "file":
            assert self.file is not None
            try:
                FilePattern.compile(self.file)
            except ValueError as exc:
                raise ValueError(f"file: {exc}") from None
        elif kind == "job":
            phase = (self.phase or Phase.COMPLETED.value).upper()
            if phase not in {p.value for p in TERMINAL}:
                ends = ", ".join(sorted(p.value for p in TERMINAL))
                raise ValueError(f"phase: must be one of {ends}")
            self.phase = phase
        else:
            assert self.schedule is not None
            try:
                Schedule(self.schedule)
            except ValueError as exc:
                raise ValueError(f"schedule: {exc}") from None
        for key, value in self.parameters.items():
            if isinstance(value, str):
                try:
                    references(value)
                except ValueError as exc:
                    raise ValueError(f"parameters.{key}: {exc}") from None
        if self.run_id is not None:
            try:
                references(self.run_id)
            except ValueError as exc:
                raise ValueError(f"run_id: {exc}") from None
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) is not None)

    def definition(self) -> dict[str, Any]:
        """The rule as stored and shown (without fields left unset)."""
        return self.model_dump(exclude_none=True)


@dataclass(frozen=True)
class FilePattern:
    """A file pattern with captures, as a regular expression and as a watcher glob."""

    text: str
    regex: re.Pattern[str]
    glob: str
    captures: tuple[str, ...]

    @classmethod
    def compile(cls, text: str) -> FilePattern:
        """Compile ``text`` (relative, ``/``-separated); raises ``ValueError`` saying why."""
        if not text or text.startswith("/"):
            raise ValueError("must be a path relative to 'root'")
        components = text.split("/")
        if any(c in ("", ".", "..") for c in components):
            raise ValueError("empty, '.' or '..' path components are not allowed")
        if components[-1] == "**":
            raise ValueError("must end with a file name or pattern, not '**'")
        captures: list[str] = []
        regex_parts: list[str] = []
        glob_parts: list[str] = []
        for component in components:
            if component == "**":
                regex_parts.append("(?:[^/]+/)*")
                glob_parts.append("**")
                continue
            if "**" in component:
                raise ValueError("'**' must be a whole path component")
            regex, glob = _component(component, captures)
            regex_parts.append(regex + "/")
            glob_parts.append(glob)
        regex_text = "".join(regex_parts)[:-1]
        return cls(text, re.compile(regex_text), "/".join(glob_parts), tuple(captures))

    def match(self, relative: str) -> dict[str, str] | None:
        """The captures when ``relative`` (a path relative to the root) matches, else None."""
        found = self.regex.fullmatch(relative)
        return None if found is None else dict(found.groupdict())


def _component(component: str, captures: list[str]) -> tuple[str, str]:
    regex: list[str] = []
    glob: list[str] = []
    i = 0
    while i < len(component):
        char = component[i]
        if char == "{":
            found = _CAPTURE.match(component, i)
            if found is None:
                raise ValueError(f"bad capture in '{component}': use {{name}} (letters, digits, _)")
            name = found.group(1)
            if name in captures:
                raise ValueError(f"capture '{{{name}}}' appears twice")
            if name in FILE_BUILTINS:
                raise ValueError(f"capture name '{name}' is reserved")
            captures.append(name)
            regex.append(f"(?P<{name}>[^/]+?)")
            glob.append("*")
            i = found.end()
        elif char == "}":
            raise ValueError(f"unmatched '}}' in '{component}'")
        elif char == "*":
            regex.append("[^/]*")
            glob.append("*")
            i += 1
        elif char == "?":
            regex.append("[^/]")
            glob.append("?")
            i += 1
        elif char == "[":
            end = component.find("]", i + 2)
            if end < 0:
                raise ValueError(f"unclosed '[' in '{component}'")
            body = component[i + 1 : end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            regex.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            glob.append(component[i : end + 1])
            i = end + 1
        else:
            regex.append(re.escape(char))
            glob.append(char)
            i += 1
    return "".join(regex), "".join(glob)


class Schedule:
    """A 5-field cron expression evaluated in UTC (``cronsim``)."""

    def __init__(self, expression: str) -> None:
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError("must be a 5-field cron expression (minute hour day month weekday)")
        self.expression = " ".join(fields)
        try:
            CronSim(self.expression, datetime(2000, 1, 1, tzinfo=UTC))
        except CronSimError as exc:
            raise ValueError(f"not a valid cron expression: {exc}") from None

    def latest(self, now: datetime) -> datetime:
        """The latest slot at or before ``now`` (UTC, whole minutes)."""
        after = now.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        return next(iter(CronSim(self.expression, after, reverse=True)))

    def next(self, now: datetime) -> datetime:
        """The first slot after ``now``."""
        return next(iter(CronSim(self.expression, now.astimezone(UTC))))


def slot_key(slot: datetime) -> str:
    """A slot as a firing key; keys sort as times do."""
    return slot.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def references(template: str) -> list[str]:
    """The ``{name}`` references of a template; raises ``ValueError`` for a malformed one."""
    found: list[str] = []
    rest = _REF.sub("", template)
    if "{" in rest or "}" in rest:
        raise ValueError(f"unbalanced braces in '{template}' (write {{{{ or }}}} for a brace)")
    for match in _REF.finditer(template):
        name = match.group(1)
        if name is None:
            continue
        if not _REF_NAME.match(name):
            raise ValueError(f"'{{{name}}}' is not a template name")
        found.append(name)
    return found


def render(value: Any, context: Mapping[str, Any], *, field: str) -> Any:
    """A parameter value with its templates filled from ``context``.

    Raises ``ValidationError`` (naming ``field``) when a referenced value is missing."""
    if not isinstance(value, str):
        return value
    refs = references(value)
    for name in refs:
        if name not in context or context[name] is None:
            raise ValidationError(f"{field}: no value for '{{{name}}}'", field=field)
    whole = _REF.fullmatch(value)
    if whole is not None and whole.group(1) is not None:
        return context[whole.group(1)]

    def one(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return match.group(0)[0]
        item = context[match.group(1)]
        if isinstance(item, bool):
            return "true" if item else "false"
        return str(item)

    return _REF.sub(one, value)


def render_parameters(spec: RuleSpec, context: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter of the rule, rendered."""
    return {
        key: render(value, context, field=f"parameters.{key}")
        for key, value in spec.parameters.items()
    }


def file_context(pattern: FilePattern, root: str, relative: str) -> dict[str, Any] | None:
    """Template values for a file, or None when it does not match the pattern."""
    captures = pattern.match(relative)
    if captures is None:
        return None
    return {**captures, "path": f"{root.rstrip('/')}/{relative}", "file": relative}


def job_context(
    *,
    job_id: str,
    job_type: str,
    owner: str,
    run_id: str | None,
    phase: str,
    parameters: Mapping[str, Any],
    results: Mapping[str, str],
    report: Mapping[str, Any],
) -> dict[str, Any]:
    """Template values for an upstream job that ended."""
    context: dict[str, Any] = {
        "job.id": job_id,
        "job.type": job_type,
        "job.owner": owner,
        "job.run_id": run_id,
        "job.phase": phase,
    }
    context.update({f"parameters.{k}": v for k, v in parameters.items()})
    context.update({f"results.{k}": v for k, v in results.items()})
    context.update(
        {f"report.{k}": v for k, v in report.items() if isinstance(v, str | int | float | bool)}
    )
    return context


def schedule_context(slot: datetime) -> dict[str, Any]:
    return {"slot": slot_key(slot), "date": slot.astimezone(UTC).strftime("%Y-%m-%d")}


def check(spec: RuleSpec, jobtypes: Mapping[str, JobType]) -> None:
    """Check a rule against the job types; raises ``ValidationError`` naming the field."""
    target = jobtypes.get(spec.create)
    if target is None:
        known = ", ".join(sorted(jobtypes)) or "none"
        raise ValidationError(
            f"create: unknown job type '{spec.create}' (known: {known})", field="create"
        )
    allowed = _allowed_names(spec, jobtypes)
    for key, value in spec.parameters.items():
        where = f"parameters.{key}"
        param = target.parameters.get(key)
        if param is None:
            known = ", ".join(sorted(target.parameters)) or "none"
            raise ValidationError(
                f"{where}: job type '{target.name}' has no parameter '{key}' (known: {known})",
                field=where,
            )
        refs = references(value) if isinstance(value, str) else []
        for ref in refs:
            _check_ref(ref, allowed, where)
        if not refs:
            coerce(param, value, field=where)
    for name, param in target.parameters.items():
        if param.required and name not in spec.parameters:
            raise ValidationError(
                f"parameters.{name}: required by job type '{target.name}' but not set",
                field=f"parameters.{name}",
            )
    for ref in references(spec.run_id or ""):
        _check_ref(ref, allowed, "run_id")


def _allowed_names(spec: RuleSpec, jobtypes: Mapping[str, JobType]) -> _Allowed:
    if spec.file is not None:
        pattern = FilePattern.compile(spec.file)
        return _Allowed(frozenset(pattern.captures) | FILE_BUILTINS, {}, "file")
    if spec.schedule is not None:
        return _Allowed(SCHEDULE_NAMES, {}, "schedule")
    upstream = jobtypes.get(spec.job or "")
    if upstream is None:
        known = ", ".join(sorted(jobtypes)) or "none"
        raise ValidationError(f"job: unknown job type '{spec.job}' (known: {known})", field="job")
    groups = {
        "parameters": frozenset(upstream.parameters),
        "results": frozenset(r.name for r in upstream.results),
        "job": JOB_FIELDS,
        "report": None,
    }
    return _Allowed(frozenset(), groups, "job")


@dataclass(frozen=True)
class _Allowed:
    names: frozenset[str]
    groups: dict[str, frozenset[str] | None]
    kind: str


def _check_ref(ref: str, allowed: _Allowed, where: str) -> None:
    head, dot, rest = ref.partition(".")
    if not dot:
        if ref in allowed.names:
            return
        known = ", ".join(sorted(allowed.names) or [f"{g}.<name>" for g in allowed.groups])
        raise ValidationError(
            f"{where}: '{{{ref}}}' is not known to a {allowed.kind} rule (known: {known})",
            field=where,
        )
    if head not in allowed.groups:
        raise ValidationError(
            f"{where}: '{{{ref}}}' is not known to a {allowed.kind} rule", field=where
        )
    names = allowed.groups[head]
    if names is not None and rest not in names:
        known = ", ".join(sorted(names)) or "none"
        raise ValidationError(
            f"{where}: the upstream job type has no {head} '{rest}' (known: {known})",
            field=where,
        )


@dataclass
class Firing:
    """One firing: the job it created, or why it created none."""

    id: int
    rule: str
    key: str
    kind: str
    job_id: str | None
    error: str | None
    fired_at: datetime
