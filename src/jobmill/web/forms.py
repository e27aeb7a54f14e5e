"""Forms generated from a job type's typed parameters (the OPUS web client's idea).

Each parameter becomes one field whose HTML attributes mirror the server's checks (``required``,
``min``/``max``, ``step`` for integers, a ``select`` for options and booleans), so a browser
refuses what the server would; the server still validates everything (``JobService``) and its
422 is shown next to the field it names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobmill.domain.jobtypes import JobType, Parameter, ParamType

PREFIX = "p."  # form field names of parameters: p.<name>
MAX_VALUE = 65_536  # characters of one field


@dataclass
class Field:
    """One input of a generated form."""

    name: str
    input: str  # "text", "number", "select"
    label: str
    required: bool
    value: str
    description: str = ""
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    step: str | None = None
    options: list[tuple[str, str]] | None = None  # (value, label)
    kind: str = "string"
    error: str | None = None

    @property
    def key(self) -> str:
        return PREFIX + self.name

    @property
    def dom_id(self) -> str:
        return "param-" + self.name


def shown(value: Any) -> str:
    """A parameter value as a form field shows it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def fields(jobtype: JobType, values: Mapping[str, Any] | None = None) -> list[Field]:
    """The form's fields, filled with ``values`` (a clone's or a refused post's) or defaults."""
    values = values or {}
    return [_field(p, values.get(p.name, p.default)) for p in jobtype.parameters.values()]


def _field(param: Parameter, value: Any) -> Field:
    field = Field(
        name=param.name,
        input="text",
        label=param.name,
        required=param.required,
        value=shown(value),
        description=param.description,
        unit=param.unit,
        kind=param.type.value,
    )
    if param.options:
        field.input = "select"
        field.options = [(shown(o), shown(o)) for o in param.options]
    elif param.type is ParamType.BOOLEAN:
        field.input = "select"
        field.options = [("true", "true"), ("false", "false")]
    elif param.type in (ParamType.INTEGER, ParamType.NUMBER):
        field.input = "number"
        field.min, field.max = param.min, param.max
        field.step = "1" if param.type is ParamType.INTEGER else "any"
    if field.options is not None and not param.required:
        field.options.insert(0, ("", "(default)" if param.default is not None else "(none)"))
    return field


def parameters(jobtype: JobType, form: Mapping[str, Any]) -> dict[str, str]:
    """The parameters a posted form gives: only declared ones; an empty field is left out (its
    default applies, or the server names it as required)."""
    found: dict[str, str] = {}
    for name in jobtype.parameters:
        raw = form.get(PREFIX + name)
        if isinstance(raw, str) and raw.strip() != "":
            found[name] = raw
    return found


def error_field(field: str | None, jobtype: JobType) -> str | None:
    """The parameter a service error names (``parameters.seconds``, ``seconds``), or None."""
    if not field:
        return None
    name = field.removeprefix("parameters.").removeprefix("parameters[").rstrip("]")
    name = name.strip("'\"")
    return name if name in jobtype.parameters else None
