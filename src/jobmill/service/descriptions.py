"""Job types as IVOA Provenance ``ActivityDescription`` documents, serialised as VOTable.

The layout follows OPUS's job definition files (a DataLink-style service descriptor): one
``RESOURCE type="meta" utype="voprov:ActivityDescription"`` with the job type's attributes as
``PARAM``s, a ``GROUP name="InputParams"`` with one ``PARAM`` per parameter (type, default as
``value``, ``MIN``/``MAX``/``OPTION`` in ``VALUES``, unit, ``DESCRIPTION``), a ``GROUP name="Used"``
describing the data a ``path`` parameter names, and a ``GROUP name="Generated"`` describing each
declared result. ``docs/provenance.md`` shows an example.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from jobmill.domain.jobtypes import JobType, Parameter, ParamType

VOTABLE_NS = "http://www.ivoa.net/xml/VOTable/v1.3"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
MEDIA_TYPE = "application/x-votable+xml"

_DATATYPES: dict[ParamType, tuple[str, str | None]] = {
    ParamType.STRING: ("char", "*"),
    ParamType.INTEGER: ("long", None),
    ParamType.NUMBER: ("double", None),
    ParamType.BOOLEAN: ("boolean", None),
    ParamType.ENUM: ("char", "*"),
    ParamType.PATH: ("char", "*"),
}
_GLOB_CHARS = frozenset("*?[")


def votable_datatype(kind: ParamType) -> tuple[str, str | None]:
    """The VOTable ``datatype`` and ``arraysize`` of a jobmill parameter type."""
    return _DATATYPES[kind]


def text_value(value: Any) -> str:
    """A value as VOTable text: booleans as ``true``/``false``, whole floats without ``.0``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def activity_description(jobtype: JobType, *, doculink: str | None = None) -> bytes:
    """The job type as a VOTable ``ActivityDescription`` (UTF-8 XML with a declaration)."""
    root = etree.Element(
        _tag("VOTABLE"),
        nsmap={None: VOTABLE_NS, "xsi": XSI_NS},
        attrib={
            "version": "1.3",
            f"{{{XSI_NS}}}schemaLocation": f"{VOTABLE_NS} {VOTABLE_NS}",
        },
    )
    resource = _sub(
        root,
        "RESOURCE",
        ID=jobtype.name,
        name=jobtype.name,
        type="meta",
        utype="voprov:ActivityDescription",
    )
    if jobtype.description:
        _sub(resource, "DESCRIPTION").text = jobtype.description
    _text_param(resource, "name", jobtype.name, "voprov:ActivityDescription.name")
    _text_param(resource, "version", jobtype.version, "voprov:ActivityDescription.version")
    link = doculink or getattr(jobtype, "doculink", None)
    if link:
        _text_param(resource, "doculink", str(link), "voprov:ActivityDescription.doculink")
    if jobtype.execution_duration:
        _sub(
            resource,
            "PARAM",
            name="executionDuration",
            datatype="int",
            unit="s",
            value=str(jobtype.execution_duration),
            utype="uws:Job.executionDuration",
        )
    if jobtype.max_execution_duration:
        _sub(
            resource,
            "PARAM",
            name="maxExecutionDuration",
            datatype="int",
            unit="s",
            value=str(jobtype.max_execution_duration),
        )

    inputs = _sub(resource, "GROUP", name="InputParams")
    for param in jobtype.parameters.values():
        _input_param(inputs, param)

    used = _sub(resource, "GROUP", name="Used")
    for param in jobtype.parameters.values():
        if param.type is not ParamType.PATH:
            continue
        group = _sub(used, "GROUP", name=param.name, utype="voprov:UsedDescription")
        if param.description:
            _sub(group, "DESCRIPTION").text = param.description
        _text_param(group, "role", param.name, "voprov:UsedDescription.role")
        _text_param(group, "multiplicity", "1", "voprov:UsedDescription.multiplicity")
        _text_param(group, "default", text_value(param.default), "voprov:Entity.id")

    generated = _sub(resource, "GROUP", name="Generated")
    for result in jobtype.results:
        group = _sub(generated, "GROUP", name=result.name, utype="voprov:WasGeneratedBy")
        _sub(
            group, "DESCRIPTION"
        ).text = f"Files matching '{result.pattern}' in the job's directory"
        several = bool(_GLOB_CHARS & set(result.pattern))
        _text_param(group, "role", result.name, "voprov:WasGeneratedByDescription.role")
        _text_param(
            group,
            "multiplicity",
            "*" if several else "1",
            "voprov:WasGeneratedByDescription.multiplicity",
        )
        _text_param(group, "default", result.pattern, "voprov:Entity.id")
        _text_param(
            group, "content_type", result.content_type, "voprov:EntityDescription.content_type"
        )
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def _tag(name: str) -> str:
    return f"{{{VOTABLE_NS}}}{name}"


def _sub(parent: etree._Element, element: str, /, **attrib: str) -> etree._Element:
    return etree.SubElement(parent, _tag(element), attrib=attrib)


def _text_param(parent: etree._Element, name: str, value: str, utype: str) -> None:
    _sub(parent, "PARAM", name=name, datatype="char", arraysize="*", value=value, utype=utype)


def _input_param(group: etree._Element, param: Parameter) -> None:
    datatype, arraysize = votable_datatype(param.type)
    attrib = {"name": param.name, "datatype": datatype}
    if arraysize:
        attrib["arraysize"] = arraysize
    attrib["value"] = text_value(param.default)
    if param.unit:
        attrib["unit"] = param.unit
    if not param.required:
        attrib["type"] = "no_query"  # OPUS's mark for an optional parameter
    element = _sub(group, "PARAM", **attrib)
    if param.description:
        _sub(element, "DESCRIPTION").text = param.description
    if param.min is None and param.max is None and not param.options:
        return
    values = _sub(element, "VALUES")
    if param.min is not None:
        _sub(values, "MIN", value=text_value(param.min), inclusive="yes")
    if param.max is not None:
        _sub(values, "MAX", value=text_value(param.max), inclusive="yes")
    for option in param.options or []:
        _sub(values, "OPTION", value=text_value(option))
