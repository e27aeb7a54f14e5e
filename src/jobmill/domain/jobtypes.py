"""Job types: the declared kinds of job, their typed parameters, and how values reach a process.

A job type says what to run (``command``, an argv template, never a shell string), which
parameters it takes and how each one reaches the process (argv, environment, or both), what
results it leaves behind, where it runs and for how long. ``jobtype_files`` loads them from YAML.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobmill.domain.errors import ValidationError

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
BUILTIN_PLACEHOLDERS = frozenset({"jobtype_dir", "job_dir", "job_id"})
MAX_STRING = 65536


class ParamType(StrEnum):
    """The value types a parameter can declare."""

    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    ENUM = "enum"
    PATH = "path"


class Parameter(BaseModel):
    """One typed parameter of a job type."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    type: ParamType = ParamType.STRING
    required: bool = False
    default: Any = None
    options: list[str | int | float] | None = None
    min: float | None = None
    max: float | None = None
    unit: str | None = None
    description: str = ""
    deliver: Literal["argv", "env", "both"] = "argv"
    env: str | None = Field(default=None, description="environment variable name")

    @model_validator(mode="after")
    def _check(self) -> Parameter:
        if self.type is ParamType.ENUM and not self.options:
            raise ValueError("an enum parameter needs 'options'")
        if self.env is not None and not ENV_RE.match(self.env):
            raise ValueError(f"'{self.env}' is not a valid environment variable name")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("'min' is larger than 'max'")
        if self.required and self.default is not None:
            raise ValueError("a required parameter cannot have a default")
        if self.default is not None:
            try:
                self.default = coerce(self, self.default, field="default")
            except ValidationError as exc:
                raise ValueError(exc.message) from None
        return self

    @property
    def env_name(self) -> str:
        return self.env or self.name.upper().replace("-", "_").replace(".", "_")

    def schema_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True) | {"env": self.env_name}


class Result(BaseModel):
    """A result file the job leaves in its working directory."""

    model_config = ConfigDict(extra="forbid")

    name: str
    pattern: str
    content_type: str = "application/octet-stream"


class Resources(BaseModel):
    """What a job asks of its executor."""

    model_config = ConfigDict(extra="forbid")

    cpus: int = Field(default=1, ge=1)
    memory_mb: int | None = Field(default=None, ge=1)
    walltime: int | None = Field(default=None, ge=1, description="seconds")
    partition: str | None = None
    account: str | None = None
    extra: list[str] = Field(default_factory=list)


class Indexer(BaseModel):
    """``indexer``: the job type that indexes this type's finished PipelineJobs (once each;
    docs/pipelinejobs.md). It must declare the parameters ``job`` (the id of the job to index),
    ``filters`` and ``level``, which it gets from here."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=64, description="the indexer's job type")
    filters: list[str] = Field(default_factory=list, description="regular expressions")
    level: str = Field(default="1", min_length=1, max_length=16, description="processing level")

    @field_validator("filters")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        for index, pattern in enumerate(value):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"filters[{index}]: not a regular expression: {exc}") from None
        return value


INDEXER_PARAMETERS = ("job", "filters", "level")
"""The parameters an indexer job type declares."""


class JobType(BaseModel):
    """A declared kind of job."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    version: str = "1"
    command: list[str] = Field(min_length=1)
    epilog: list[str] | None = Field(
        default=None,
        min_length=1,
        description="what runs after the sub-jobs a job created have completed (an argv "
        "template like command)",
    )
    on_parent_failure: Literal["fail", "wait"] = Field(
        default="fail",
        description="what a job does when a job it runs after ends in ERROR or ABORTED",
    )
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    results: list[Result] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, description="constant environment")
    executor: str = "local"
    resources: Resources = Field(default_factory=Resources)
    execution_duration: int = Field(default=0, ge=0, description="default seconds; 0 = none")
    max_execution_duration: int = Field(default=0, ge=0, description="seconds; 0 = none")
    destruction: int = Field(default=7 * 86400, ge=0, description="seconds after creation")
    retries: int = Field(default=0, ge=0, le=10)
    indexer: Indexer | None = Field(
        default=None, description="PipelineJobs: the job type that indexes finished jobs"
    )
    reject_unknown_parameters: bool = Field(
        default=False, description="refuse undeclared parameters even where a protocol keeps them"
    )
    source: str | None = Field(default=None, exclude=True)
    line: int | None = Field(default=None, exclude=True)
    directory: str | None = Field(default=None, exclude=True)
    ocps_specs: bool = Field(default=False, exclude=True)  # loaded from a job_specs.yaml

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(f"'{value}' is not a valid job type name (letters, digits, _.-)")
        return value

    @model_validator(mode="after")
    def _check(self) -> JobType:
        for key, param in self.parameters.items():
            if key in BUILTIN_PLACEHOLDERS:
                raise ValueError(f"parameters.{key}: '{key}' is reserved for jobmill's own value")
            if not NAME_RE.match(key):
                raise ValueError(f"parameters.{key}: '{key}' is not a valid parameter name")
            param.name = key
        known = set(self.parameters) | BUILTIN_PLACEHOLDERS
        for field_name, template in (("command", self.command), ("epilog", self.epilog or [])):
            for element in template:
                for ref in placeholders(element):
                    if ref not in known:
                        raise ValueError(f"{field_name}: refers to unknown parameter '{{{ref}}}'")
        referenced = {
            ref for element in self.command + (self.epilog or []) for ref in placeholders(element)
        }
        for param in self.parameters.values():
            if param.deliver in ("argv", "both") and param.name not in referenced:
                raise ValueError(
                    f"parameters.{param.name}: delivered by argv but the command "
                    f"never mentions '{{{param.name}}}'"
                )
        if self.max_execution_duration and self.execution_duration > self.max_execution_duration:
            raise ValueError("execution_duration: larger than 'max_execution_duration'")
        for key in self.env:
            if not ENV_RE.match(key):
                raise ValueError(f"env.{key}: not a valid environment variable name")
        return self

    def schema_dict(self) -> dict[str, Any]:
        """The full description served at ``GET /api/v1/jobtypes/{name}``."""
        data = self.model_dump(exclude={"parameters"})
        data["parameters"] = [p.schema_dict() for p in self.parameters.values()]
        return data

    def validate_parameters(
        self, values: Mapping[str, Any], *, prefix: str = "parameters", allow_unknown: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check ``values`` against the declared parameters.

        Returns ``(declared, extra)``: the typed values of declared parameters (defaults
        filled in) and the undeclared ones, which are refused unless ``allow_unknown`` (UWS
        keeps them, as TAP clients send ``REQUEST``/``LANG``; they never reach the process).
        Raises ``ValidationError`` naming the first bad field.
        """
        if not isinstance(values, Mapping):
            raise ValidationError("parameters must be an object", field=prefix)
        declared: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, raw in values.items():
            param = self.parameters.get(key)
            if param is None:
                if not allow_unknown:
                    known = ", ".join(sorted(self.parameters)) or "none"
                    raise ValidationError(
                        f"unknown parameter '{key}' for job type '{self.name}' (known: {known})",
                        field=f"{prefix}.{key}",
                    )
                extra[str(key)] = raw if isinstance(raw, str) else str(raw)
                continue
            if raw is None:
                continue
            declared[key] = coerce(param, raw, field=f"{prefix}.{key}")
        for name, param in self.parameters.items():
            if name in declared:
                continue
            if param.required:
                raise ValidationError(
                    f"missing required parameter '{name}'", field=f"{prefix}.{name}"
                )
            if param.default is not None:
                declared[name] = param.default
        return declared, extra


def placeholders(template: str) -> list[str]:
    """The ``{name}`` references in one argv element."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"bad placeholder in command element '{template}': {exc}") from None


_NUMBER = re.compile(r"\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*")
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def coerce(param: Parameter, raw: Any, *, field: str) -> Any:
    """Turn a raw value (JSON value or string) into the parameter's type, or raise."""

    def bad(why: str) -> ValidationError:
        return ValidationError(f"{field}: {why}", field=field)

    kind = param.type
    value: Any
    if kind is ParamType.BOOLEAN:
        if isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            value = raw.strip().lower() in _TRUE
        else:
            raise bad(f"expected a boolean, got {raw!r}")
    elif kind is ParamType.INTEGER:
        if isinstance(raw, bool):
            raise bad(f"expected an integer, got {raw!r}")
        if isinstance(raw, int):
            value = raw
        elif (isinstance(raw, float) and raw.is_integer()) or (
            isinstance(raw, str) and re.fullmatch(r"\s*[-+]?[0-9]{1,30}\s*", raw)
        ):
            value = int(raw)
        else:
            raise bad(f"expected an integer, got {raw!r}")
    elif kind is ParamType.NUMBER:
        if isinstance(raw, bool):
            raise bad(f"expected a number, got {raw!r}")
        if isinstance(raw, int | float):
            value = raw
        elif isinstance(raw, str) and _NUMBER.fullmatch(raw):
            value = float(raw) if re.search(r"[.eE]", raw) else int(raw)
        else:
            raise bad(f"expected a number, got {raw!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise bad("expected a finite number")
    else:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise bad(f"expected a string, got {type(raw).__name__}")
        value = raw if isinstance(raw, str) else str(raw)
        if "\x00" in value:
            raise bad("contains a NUL character")
        if len(value) > MAX_STRING:
            raise bad(f"longer than {MAX_STRING} characters")
    if param.options is not None and value not in param.options:
        if not any(str(option) == str(value) for option in param.options):
            choices = ", ".join(str(o) for o in param.options)
            raise bad(f"{value!r} is not one of: {choices}")
        value = next(o for o in param.options if str(o) == str(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        if param.min is not None and value < param.min:
            raise bad(f"{value} is below the minimum {_num(param.min)}")
        if param.max is not None and value > param.max:
            raise bad(f"{value} is above the maximum {_num(param.max)}")
    return value


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def render_value(value: Any) -> str:
    """How a typed value is written into argv or the environment."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build_argv(
    jobtype: JobType,
    values: Mapping[str, Any],
    builtins: Mapping[str, str],
    *,
    epilog: bool = False,
) -> list[str]:
    """The process argv: the command template (the ``epilog`` one with ``epilog``) with values
    substituted element by element.

    An element that refers to an optional parameter without a value is left out.
    """
    argv: list[str] = []
    context = {k: render_value(v) for k, v in values.items()} | dict(builtins)
    template = jobtype.epilog if epilog and jobtype.epilog else jobtype.command
    for element in template:
        refs = placeholders(element)
        if any(ref not in context for ref in refs):
            continue
        argv.append(element.format_map(context))
    return argv


def build_env(jobtype: JobType, values: Mapping[str, Any]) -> dict[str, str]:
    """Environment variables coming from the job type: constants plus env-delivered values."""
    env = dict(jobtype.env)
    for name, param in jobtype.parameters.items():
        if param.deliver in ("env", "both") and name in values:
            env[param.env_name] = render_value(values[name])
    return env


def resolve_command(jobtype: JobType) -> JobType:
    """Make a relative first argv element that names a file beside the job type absolute."""
    for template in (jobtype.command, jobtype.epilog or []):
        if template and jobtype.directory and not placeholders(template[0]):
            first = Path(template[0])
            candidate = Path(jobtype.directory) / first
            if not first.is_absolute() and "/" in template[0] and candidate.exists():
                template[0] = str(candidate.resolve())
    return jobtype
