"""OPUS job definitions read into job type documents (``domain/opus_jdl.py``)."""

from __future__ import annotations

import pytest

from jobmill.domain.jobtypes import JobType
from jobmill.domain.opus_jdl import JdlError, parse

HEAD = '<VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.2" version="1.2">'


def definition(name: str, params: str = "", groups: str = "", top: str = "") -> bytes:
    return (
        f'{HEAD}<RESOURCE ID="{name}" name="{name}" type="meta" '
        f'utype="voprov:ActivityDescription"><DESCRIPTION>d</DESCRIPTION>{top}'
        f'<PARAM name="script" datatype="char" arraysize="*" value="true"/>'
        f'<GROUP name="InputParams">{params}</GROUP>{groups}</RESOURCE></VOTABLE>'
    ).encode()


def test_types_requirements_and_values() -> None:
    imported = parse(
        definition(
            "types",
            '<PARAM name="n" datatype="long" value=""/>'
            '<PARAM name="opt" datatype="short" value="" type="no_query"/>'
            '<PARAM name="flag" datatype="boolean" value="true"/>'
            '<PARAM name="x" datatype="xs:double" value="1e3"/>'
            '<PARAM name="level" datatype="int" value="2"><VALUES>'
            '<OPTION value="1"/><OPTION value="2"/></VALUES></PARAM>'
            '<PARAM name="blob" datatype="char" xtype="application/octet-stream" value=""/>'
            '<PARAM name="odd" datatype="complex" value="1+2j" ucd="x.y"/>',
        )
    )
    params = imported.document["parameters"]
    assert params["n"]["type"] == "integer" and params["n"]["required"] is True
    assert params["opt"]["type"] == "integer" and "required" not in params["opt"]
    assert params["flag"]["default"] is True
    assert params["x"] == params["x"] | {"type": "number", "default": 1000.0}
    assert params["level"]["type"] == "enum" and params["level"]["options"] == [1, 2]
    assert params["blob"]["type"] == "path" and params["blob"]["required"] is True
    assert params["odd"]["type"] == "string"
    assert any("datatype 'complex'" in note for note in imported.notes)
    assert any("ucd=x.y" in note for note in imported.notes)
    assert all(p["deliver"] == "env" and p["env"] == name for name, p in params.items())
    JobType.model_validate(imported.document)  # what the loader builds


def test_names_jobmill_cannot_take_are_made_usable_or_left_out_and_said() -> None:
    imported = parse(definition("1st job", '<PARAM name="bad-name" datatype="int" value="1"/>'))
    assert imported.name == "opus_1st_job"
    assert "parameters" not in imported.document
    assert any("'1st job'" in note for note in imported.notes)
    assert any("'bad-name': not a shell variable name" in note for note in imported.notes)


def test_results_without_a_file_name_and_unknown_groups_are_reported() -> None:
    groups = (
        '<GROUP name="Generated"><GROUP name="out" utype="voprov:WasGeneratedBy"/></GROUP>'
        '<GROUP name="Extras"/>'
    )
    imported = parse(definition("r", groups=groups, top='<PARAM name="quote" value="5"/>'))
    assert imported.document["results"] == [{"name": "out", "pattern": "out*"}]
    assert any("published as 'out*'" in note for note in imported.notes)
    assert any("GROUP 'Extras'" in note for note in imported.notes)
    assert any(note.startswith("quote: 5 s") for note in imported.notes)


@pytest.mark.parametrize(
    "content",
    [b"", b"<a/>", HEAD.encode() + b"</VOTABLE>", b"\xff\xfe", b"<VOTABLE>" * 10],
)
def test_not_a_definition(content: bytes) -> None:
    with pytest.raises(JdlError):
        parse(content)
