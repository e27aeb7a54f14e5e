"""Loading rules from ``*.rules.yaml`` files in the job types directories.

A rules file holds one mapping with a ``rules:`` list; each item is a ``RuleSpec``. Every
problem (bad YAML, a bad field, an unknown job type, a template name the rule cannot fill, a
name used twice) is a ``JobTypeFileError`` naming the file and the line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pydantic
import yaml

from jobmill.domain.errors import JobTypeFileError, ValidationError
from jobmill.domain.jobtype_files import _line
from jobmill.domain.jobtypes import JobType
from jobmill.domain.rules import RuleSpec, check

SUFFIXES = (".rules.yaml", ".rules.yml")
_FIELD = re.compile(r"^([A-Za-z_][\w.-]*): ")


def is_rules_file(path: Path) -> bool:
    return path.name.endswith(SUFFIXES)


def load_rules(
    sources: Iterable[str | os.PathLike[str]], jobtypes: Mapping[str, JobType]
) -> dict[str, tuple[RuleSpec, str]]:
    """Every rule of the rules files among ``sources`` (files and directories, not recursive),
    checked against ``jobtypes``: ``{name: (spec, "file:line")}``."""
    found: dict[str, tuple[RuleSpec, str]] = {}
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if is_rules_file(p) and p.is_file())
        elif path.is_file() and is_rules_file(path):
            files = [path]
        else:
            continue
        for file in files:
            for spec, line in load_file(file, jobtypes):
                if spec.name in found:
                    raise JobTypeFileError(
                        str(file),
                        line,
                        f"rule '{spec.name}' is already defined in {found[spec.name][1]}",
                    )
                found[spec.name] = (spec, f"{file}:{line}")
    return found


def load_file(path: Path, jobtypes: Mapping[str, JobType]) -> list[tuple[RuleSpec, int]]:
    """The rules of one file, with the line each starts on."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise JobTypeFileError(name, None, f"cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise JobTypeFileError(name, line, f"invalid YAML: {problem}") from None
    if document is None or node is None:
        return []
    if not isinstance(document, dict) or set(document) != {"rules"}:
        raise JobTypeFileError(name, 1, "a rules file holds one mapping: 'rules: [...]'")
    items = document["rules"] or []
    if not isinstance(items, list):
        raise JobTypeFileError(name, _line(node, ("rules",)), "'rules' must be a list")
    result = []
    for i, item in enumerate(items):
        base: tuple[Any, ...] = ("rules", i)
        if not isinstance(item, dict):
            raise JobTypeFileError(name, _line(node, base), "a rule must be a mapping")
        spec = _build(name, node, item, base)
        try:
            check(spec, jobtypes)
        except ValidationError as exc:
            loc = tuple(_parts(exc.field or ""))
            message = exc.message
            problem = f"rule '{spec.name}': {message}"
            raise JobTypeFileError(name, _line(node, base + loc), problem) from None
        result.append((spec, _line(node, (*base, "name"))))
    return result


def _build(name: str, node: yaml.Node, item: dict[str, Any], base: tuple[Any, ...]) -> RuleSpec:
    try:
        return RuleSpec.model_validate(item)
    except pydantic.ValidationError as exc:
        loc, message = spec_error(exc)
        where = ".".join(str(p) for p in loc) or "rule"
        prefix = f"{where}: " if not message.startswith(f"{where}:") else ""
        raise JobTypeFileError(name, _line(node, base + loc), prefix + message) from None


def spec_error(exc: pydantic.ValidationError) -> tuple[tuple[Any, ...], str]:
    """The field (as a path) and the message of the first problem in a ``RuleSpec``."""
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    named = _FIELD.match(message)
    if named and not loc:
        loc = tuple(_parts(named.group(1)))
    return loc, message


def _parts(field: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in field.split(".") if p]
