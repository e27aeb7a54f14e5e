"""Loading job types from YAML files, with errors that name the file, the line and the problem.

Two formats are read:

* jobmill's own: one job type per YAML document (several documents per file allowed), with the
  fields of ``JobType``;
* the OCPS ``job_specs.yaml`` format: ``type: {<name>: {script: ..., env: [VAR, ...]}}``,
  where every listed variable becomes a required string parameter delivered by environment,
  and ``script`` (relative to the working directory, as in the prototype) must be an
  executable file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydantic
import yaml

from jobmill.domain.errors import JobTypeFileError
from jobmill.domain.jobtypes import INDEXER_PARAMETERS, JobType, resolve_command

SUFFIXES = (".yaml", ".yml")
RULES_SUFFIXES = (".rules.yaml", ".rules.yml")
"""Rules files (``domain.rule_files``) sit beside job types; they are not job types."""
_FIELD = re.compile(r"^([A-Za-z_][\w.-]*): ")


def load_jobtypes(sources: Iterable[str | os.PathLike[str]]) -> dict[str, JobType]:
    """Load every job type from files and directories (``*.yaml``/``*.yml``, not recursive)."""
    types: dict[str, JobType] = {}
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files = sorted(
                p
                for p in path.iterdir()
                if p.suffix in SUFFIXES and p.is_file() and not p.name.endswith(RULES_SUFFIXES)
            )
        elif path.is_file():
            files = [path]
        else:
            raise JobTypeFileError(str(path), None, "no such file or directory")
        for file in files:
            for jobtype in load_file(file):
                if jobtype.name in types:
                    raise JobTypeFileError(
                        str(file),
                        jobtype.line,
                        f"job type '{jobtype.name}' is already defined in "
                        f"{types[jobtype.name].source}",
                    )
                types[jobtype.name] = jobtype
    check_indexers(types)
    return types


def check_indexers(types: dict[str, JobType]) -> None:
    """Every ``indexer`` names a job type that takes the indexer's parameters."""
    for jobtype in types.values():
        if jobtype.indexer is None:
            continue
        indexer = types.get(jobtype.indexer.type)
        where = str(jobtype.source or jobtype.name)
        if indexer is None:
            raise JobTypeFileError(
                where, jobtype.line, f"indexer.type: no job type '{jobtype.indexer.type}'"
            )
        missing = [name for name in INDEXER_PARAMETERS if name not in indexer.parameters]
        if missing:
            raise JobTypeFileError(
                where,
                jobtype.line,
                f"indexer.type: job type '{indexer.name}' lacks the parameters {missing}",
            )


def load_file(path: Path) -> list[JobType]:
    """Every job type in one file."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobTypeFileError(name, None, f"cannot read: {exc}") from None
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise JobTypeFileError(name, line, f"invalid YAML: {problem}") from None
    result: list[JobType] = []
    for node, document in zip(nodes, documents, strict=True):
        if document is None:
            continue
        if not isinstance(document, dict):
            raise JobTypeFileError(name, _line(node, ()), "a job type must be a mapping")
        if "type" in document and isinstance(document["type"], dict) and "command" not in document:
            result.extend(_load_ocps(path, node, document))
        else:
            result.append(_build(path, node, document, ()))
    return result


def _load_ocps(path: Path, node: yaml.Node, document: dict[str, Any]) -> list[JobType]:
    types = []
    for type_name, spec in document["type"].items():
        loc: tuple[Any, ...] = ("type", type_name)
        if not isinstance(spec, dict) or "script" not in spec:
            raise JobTypeFileError(
                str(path), _line(node, loc), f"type '{type_name}' needs a 'script'"
            )
        env_vars = spec.get("env") or []
        if not isinstance(env_vars, list) or not all(isinstance(v, str) for v in env_vars):
            raise JobTypeFileError(
                str(path), _line(node, (*loc, "env")), "'env' must be a list of variable names"
            )
        script = _script(path, _line(node, (*loc, "script")), spec["script"])
        data = {
            "name": type_name,
            "description": spec.get("description", f"OCPS job type '{type_name}'"),
            "command": [script],
            "parameters": {
                var: {"type": "string", "required": True, "deliver": "env", "env": var}
                for var in env_vars
            },
        }
        types.append(_build(path, node, data, loc, ocps=True))
    return types


def _script(path: Path, line: int, value: Any) -> str:
    """The absolute path of an OCPS ``script``. A relative one is taken from the server's
    working directory, as the prototype did (it ran from its ``server/`` directory, with
    ``script: jobs/ap_job.sh``); when it is not there, from beside the YAML file. It must be
    an executable file: a job type that can only fail is refused at load time."""
    if not isinstance(value, str) or not value.strip():
        raise JobTypeFileError(str(path), line, "'script' must be a path")
    given = Path(value)
    tried = [given] if given.is_absolute() else [Path.cwd() / given, path.parent / given]
    for candidate in tried:
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                raise JobTypeFileError(
                    str(path), line, f"script '{candidate}' is not executable (chmod +x it)"
                )
            return str(candidate.resolve())
    where = " nor ".join(f"'{c}'" for c in tried)
    raise JobTypeFileError(
        str(path),
        line,
        f"script '{value}' not found: neither {where} is a file"
        if len(tried) > 1
        else f"script '{value}' is not a file",
    )


def _build(
    path: Path, node: yaml.Node, data: dict[str, Any], base: tuple[Any, ...], ocps: bool = False
) -> JobType:
    try:
        jobtype = JobType.model_validate(
            data
            | {
                "source": str(path),
                "line": _line(node, base if ocps else (*base, "name")),
                "directory": str(path.parent.resolve()),
                "ocps_specs": ocps,
            }
        )
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        named = _FIELD.match(message)
        if named and not loc:
            # A whole-type rule that names its field ("command: ..."): point at that field.
            loc = tuple(int(p) if p.isdigit() else p for p in named.group(1).split("."))
            message = message[named.end() :]
        where = ".".join(str(p) for p in loc) or "job type"
        line = _line(node, base if ocps else base + loc)
        raise JobTypeFileError(str(path), line, f"{where}: {message}") from None
    return resolve_command(jobtype)


def _line(node: yaml.Node, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the deepest key (or item) along ``loc`` that exists in the YAML."""
    current = node
    line = int(node.start_mark.line)
    for key in loc:
        child = None
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                if key_node.value == str(key):
                    child, line = value_node, int(key_node.start_mark.line)
                    break
        elif (
            isinstance(current, yaml.SequenceNode)
            and isinstance(key, int)
            and (0 <= key < len(current.value))
        ):
            child = current.value[key]
            line = int(child.start_mark.line)
        if child is None:
            break
        current = child
    return line + 1
