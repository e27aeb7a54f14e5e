"""OPUS job definitions (VOTable "JDL" files: an IVOA Provenance ActivityDescription as a
DataLink service descriptor) translated into a jobmill job type.

OPUS runs a definition's bash ``script`` in the job's directory with every parameter and input
exported under its own name (``$text``, ``$input``); the job's results are the files named by
the ``Generated`` entries. So the job type runs ``bash {jobtype_dir}/<name>.sh``, delivers each
parameter and each ``Used`` input by environment under its OPUS name, and publishes each
``Generated`` file as a result. What jobmill has no place for (a quote, contact, ``ucd``, an input
URL template OPUS would fetch) is listed in ``notes``, never silently dropped. docs/uws.md
("OPUS job definitions") has the table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_FILE = 4 << 20
DATATYPES = {  # VOTable datatype (or the xs: types of OPUS's JSON form) -> jobmill type
    "char": "string",
    "unicodechar": "string",
    "string": "string",
    "anyuri": "string",
    "short": "integer",
    "int": "integer",
    "long": "integer",
    "integer": "integer",
    "unsignedbyte": "integer",
    "float": "number",
    "double": "number",
    "decimal": "number",
    "boolean": "boolean",
    "bool": "boolean",
    "file": "path",
}
DESCRIPTIVE = ("doculink", "type", "subtype", "contact_name", "contact_email")
"""ActivityDescription attributes jobmill's job type has no field for (kept as comments)."""


class JdlError(ValueError):
    """The file is not an OPUS job definition jobmill can read."""


@dataclass
class Imported:
    """A job type made from an OPUS definition: the YAML document, its script, and notes on
    what could not be mapped."""

    name: str
    document: dict[str, Any]
    script: str | None
    notes: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)


def _local(element: Any) -> str:
    return str(etree.QName(element).localname)


def _children(element: Any, tag: str) -> list[Any]:
    return [c for c in element if isinstance(c.tag, str) and _local(c) == tag]


def _description(element: Any) -> str:
    found = _children(element, "DESCRIPTION")
    return " ".join((found[0].text or "").split()) if found else ""


def _params(element: Any) -> dict[str, Any]:
    return {p.get("name") or p.get("ID") or "": p for p in _children(element, "PARAM")}


def _value(param: Any | None) -> str:
    if param is None:
        return ""
    value = param.get("value") or ""
    return "" if value.strip() in ("", "None") else value


def _number(text: str) -> int | float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() and "." not in text else number


def parse(data: bytes, source: str = "the file") -> Imported:
    """Translate one OPUS job definition; ``JdlError`` when it is not one."""
    if len(data) > MAX_FILE:
        raise JdlError(f"{source} is larger than {MAX_FILE >> 20} MiB")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise JdlError(f"{source} is not XML: {exc}") from None
    resources = [
        r
        for r in root.iter("{*}RESOURCE")
        if (r.get("utype") or "").endswith("ActivityDescription") or r.get("type") == "meta"
    ]
    if _local(root) != "VOTABLE" or not resources:
        raise JdlError(
            f"{source} is not an OPUS job definition (a VOTABLE with a RESOURCE of "
            "utype voprov:ActivityDescription)"
        )
    resource = resources[0]
    raw_name = resource.get("name") or resource.get("ID") or ""
    notes: list[str] = []
    comments: list[str] = []
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", raw_name)[:64]
    if name and not name[0].isalpha():
        name = f"opus_{name}"[:64]
    if not NAME_RE.match(name):
        raise JdlError(f"{source}: the RESOURCE has no usable name ('{raw_name}')")
    if name != raw_name:
        notes.append(f"name: '{raw_name}' is not a jobmill name; the job type is '{name}'")

    top = _params(resource)
    description = _description(resource) or _value(top.get("annotation"))
    doc: dict[str, Any] = {"name": name, "description": description}
    version = _value(top.get("version"))
    doc["version"] = version or "1"
    doc["command"] = ["/bin/bash", f"{{jobtype_dir}}/{name}.sh"]
    for key in DESCRIPTIVE:
        if _value(top.get(key)):
            comments.append(f"OPUS {key}: {_value(top.get(key))}")
    duration = _value(top.get("executionDuration"))
    if duration:
        seconds = _number(duration)
        if isinstance(seconds, int) and seconds >= 0:
            doc["execution_duration"] = seconds
        else:
            notes.append(f"executionDuration: '{duration}' is not whole seconds; not set")
    if _value(top.get("quote")):
        notes.append(
            f"quote: {_value(top.get('quote'))} s (the expected duration) has no jobmill field; "
            "jobmill makes no estimates"
        )
    script = top["script"].get("value") if "script" in top else None
    script = script.replace("\r\n", "\n") if script else None
    known = {"annotation", "version", "executionDuration", "quote", "script", *DESCRIPTIVE}
    service = {"accessURL", "standardID", "name"}
    for key in top:
        if key not in known and key not in service and _value(top[key]):
            notes.append(f"{key}: '{_value(top[key])}' has no jobmill field; ignored")

    groups = {g.get("name"): g for g in _children(resource, "GROUP")}
    parameters: dict[str, Any] = {}
    group = groups.get("InputParams")
    for param in _children(group, "PARAM") if group is not None else []:
        pname = param.get("name") or param.get("ID") or ""
        parameters[pname] = _parameter(param, pname, notes)
    group = groups.get("Used")
    for used in _children(group, "GROUP") if group is not None else []:
        uname = used.get("name") or ""
        if uname in parameters or used.get("ref") in parameters:
            continue  # the entity a parameter (its value, an id or a list of ids) names
        parameters[uname] = _input(used, uname, notes)
    for pname in list(parameters):
        if not ENV_RE.match(pname):
            notes.append(f"parameter '{pname}': not a shell variable name; left out")
            del parameters[pname]
    if parameters:
        doc["parameters"] = parameters
    results = []
    group = groups.get("Generated")
    for generated in _children(group, "GROUP") if group is not None else []:
        results.append(_result(generated, notes))
    if results:
        doc["results"] = results
    for other in groups:
        if other not in ("InputParams", "Used", "Generated"):
            notes.append(f"GROUP '{other}': not an OPUS section jobmill knows; ignored")
    return Imported(name, doc, script, notes, comments)


def _parameter(param: Any, name: str, notes: list[str]) -> dict[str, Any]:
    datatype = (param.get("datatype") or "char").lower().removeprefix("xs:")
    if (param.get("xtype") or "") == "application/octet-stream":
        datatype = "file"
    kind = DATATYPES.get(datatype)
    if kind is None:
        notes.append(f"parameter '{name}': datatype '{datatype}' is read as a string")
        kind = "string"
    spec: dict[str, Any] = {"type": kind}
    values = _children(param, "VALUES")
    options = [o.get("value") for v in values for o in _children(v, "OPTION")]
    if options:
        spec["type"] = "enum"
        spec["options"] = [_typed(o, kind) for o in options if o is not None]
    for bound in ("MIN", "MAX"):
        found = [b.get("value") for v in values for b in _children(v, bound)]
        number = _number(found[0]) if found and found[0] else None
        if number is not None:
            spec[bound.lower()] = number
    default = _value(param)
    if default and kind != "path":
        spec["default"] = _typed(default, kind)
    elif default:
        spec["default"] = default
    if not default and param.get("type") != "no_query":
        spec["required"] = True
    if param.get("unit"):
        spec["unit"] = param.get("unit")
    spec["description"] = _description(param)
    spec["deliver"] = "env"
    spec["env"] = name
    dropped = [f"{a}={param.get(a)}" for a in ("ucd", "utype", "arraysize") if _kept(param, a)]
    if dropped:
        notes.append(f"parameter '{name}': {', '.join(dropped)}: no jobmill field")
    return spec


def _kept(param: Any, attribute: str) -> bool:
    value = param.get(attribute)
    return bool(value) and not (attribute == "arraysize" and value in ("*", "x"))


def _typed(text: str, kind: str) -> Any:
    if kind in ("integer", "number"):
        number = _number(text)
        return number if number is not None else text
    if kind == "boolean":
        return text.strip().lower() in ("true", "yes", "1", "t")
    return text


def _input(used: Any, name: str, notes: list[str]) -> dict[str, Any]:
    """A ``Used`` entity: a file the job reads, given (uploaded) when the job is created."""
    params = _params(used)
    spec: dict[str, Any] = {"type": "path"}
    default = _value(params.get("default"))
    if default:
        spec["default"] = default
    else:
        spec["required"] = True
    spec["description"] = _description(used)
    spec["deliver"] = "env"
    spec["env"] = name
    url = _value(params.get("url"))
    if url and not url.startswith("file://"):
        notes.append(
            f"input '{name}': OPUS fetches it from '{url}'; jobmill does not fetch inputs: "
            "upload the file or give a path the job can read"
        )
    for key in ("content_type", "multiplicity", "role"):
        if _value(params.get(key)):
            notes.append(f"input '{name}': {key}={_value(params.get(key))} has no jobmill field")
    return spec


def _result(generated: Any, notes: list[str]) -> dict[str, Any]:
    name = generated.get("name") or "result"
    params = _params(generated)
    pattern = _value(params.get("default")) or f"{name}*"
    if not _value(params.get("default")):
        notes.append(f"result '{name}': no file name (default); published as '{pattern}'")
    result: dict[str, Any] = {"name": name, "pattern": pattern}
    content_type = _value(params.get("content_type"))
    if content_type:
        result["content_type"] = content_type
    for key in ("multiplicity", "role"):
        if _value(params.get(key)):
            notes.append(f"result '{name}': {key}={_value(params.get(key))} has no jobmill field")
    return result
