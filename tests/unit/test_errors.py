"""Error kinds and stable codes: one table (``domain.errors``), the same mapping on every face."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import jobmill
from jobmill.client import JobmillClientError
from jobmill.domain.errors import (
    CODES,
    KINDS,
    Conflict,
    InsufficientStorage,
    JobmillError,
    Kind,
    NotFound,
    TooMany,
    Unauthorized,
    ValidationError,
    exit_code,
    http_status,
    kind_of,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _all_errors() -> list[type[JobmillError]]:
    for info in pkgutil.walk_packages(jobmill.__path__, "jobmill."):
        if ".migrations" not in info.name:
            importlib.import_module(info.name)
    found, todo = [], [JobmillError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def _doc_codes() -> dict[str, tuple[int, str]]:
    """``code -> (status, kind)`` from the table in docs/api.md."""
    text = DOCS.read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \| ([a-z_]+) \|", text, re.MULTILINE)
    return {code: (int(status), kind) for status, code, kind in rows}


def test_every_error_class_has_a_documented_code_and_its_kind() -> None:
    documented = _doc_codes()
    for cls in _all_errors():
        assert cls.code in CODES, cls
        assert cls.kind is CODES[cls.code], cls
        assert documented[cls.code] == (cls.status, cls.kind.value), cls


def test_the_docs_table_is_the_code_table() -> None:
    assert {code: kind for code, (_status, kind) in _doc_codes().items()} == {
        code: kind.value for code, kind in CODES.items()
    }


def test_every_kind_has_a_rule_and_a_documented_row() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert set(KINDS) == set(Kind)
    for kind in Kind:
        row = re.search(rf"^\| {kind.value} \|.*\| (\d) \|$", text, re.MULTILINE)
        assert row is not None, kind
        assert int(row.group(1)) == exit_code(kind)


@pytest.mark.parametrize(
    ("error", "native", "uws", "ocps", "cli"),
    [
        (ValidationError("x"), 422, 400, 400, 2),
        (JobmillError("x"), 400, 400, 400, 2),
        (Conflict("x"), 409, 403, 409, 1),
        (NotFound("x"), 404, 404, 404, 1),
        (Unauthorized("x"), 401, 401, 401, 1),
        (TooMany("x"), 429, 429, 429, 1),
        (InsufficientStorage("x"), 507, 507, 507, 1),
    ],
)
def test_faces_map_kinds_the_same_way(
    error: JobmillError, native: int, uws: int, ocps: int, cli: int
) -> None:
    assert (http_status(error), http_status(error, "uws"), http_status(error, "ocps")) == (
        native,
        uws,
        ocps,
    )
    assert exit_code(error.kind) == cli


def test_a_new_code_takes_its_kind_and_the_kinds_status() -> None:
    class Gone(NotFound):
        pass

    assert (Gone.code, Gone.kind, Gone.status) == ("not_found", Kind.NOT_FOUND, 404)
    with pytest.raises(TypeError, match=r"not in domain\.errors\.CODES"):

        class Unknown(JobmillError):
            code = "no_such_code"


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (422, "invalid", Kind.USAGE),
        (409, "conflict", Kind.CONFLICT),
        (507, "insufficient_storage", Kind.TRANSIENT),
        (502, "http_502", Kind.TRANSIENT),
        (404, "http_404", Kind.NOT_FOUND),
        (500, "http_500", Kind.FATAL),
        (418, "http_418", Kind.USAGE),
        (0, "unreachable", Kind.TRANSIENT),
        (0, "timeout", Kind.TRANSIENT),
        (0, "not_in_job", Kind.USAGE),
    ],
)
def test_the_client_gives_the_kind(status: int, code: str, kind: Kind) -> None:
    assert JobmillClientError(status, code, "m").kind is kind
    if not code.startswith("http_") and code in CODES:
        assert kind_of(code) is kind
