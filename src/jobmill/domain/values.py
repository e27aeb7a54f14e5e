"""The one rule for values that come from outside: what may be stored and shown again.

Every face hands the service JSON-like values (parsed JSON, form fields, YAML). Some of them
parse fine but cannot be stored or rendered: a lone surrogate (``"\\ud800"``) has no UTF-8
encoding, so the database driver or the JSON response fails on it; an integer outside signed
64 bits does not fit a database integer; ``NaN`` and ``Infinity`` are not JSON; ``U+0000``
is refused by PostgreSQL text and ``jsonb``. ``check_value`` refuses all of these, plus
values past the size limits below, with a ``ValidationError`` naming the field (a dotted path:
``parameters.message``, ``counters[3]``), before anything is stored or echoed in a message.

Limits (docs/security.md, "Input hygiene"):

* strings: at most ``MAX_STRING`` characters, Unicode scalar values only (no U+D800..U+DFFF),
  no U+0000;
* object keys: strings, at most ``MAX_KEY`` characters, the same characters;
* integers: ``INT_MIN`` .. ``INT_MAX`` (signed 64 bits; a value stored in its own ``INTEGER``
  column, such as an execution duration, at most ``INT32_MAX``); floats: finite;
* containers: at most ``MAX_ITEMS`` entries each, nested at most ``MAX_DEPTH`` deep.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from jobmill.domain.errors import ValidationError, printable

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
"""The largest value of an ``INTEGER`` column (32 bits on PostgreSQL): durations, run numbers,
and the sequence numbers and ids a page continues after (``after=``, ``before=``, ``cursor``)."""
MAX_STRING = 65536
MAX_KEY = 1024
MAX_ITEMS = 10_000
MAX_DEPTH = 32


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None when it can."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(value[exc.start])
            return (
                f"is not valid Unicode text (a lone surrogate U+{code:04X} at position {exc.start})"
            )
    if "\x00" in value:
        return f"contains a NUL character (at position {value.index(chr(0))})"
    return None


def safe_text(value: str) -> str:
    """``value`` with lone surrogates written as ``\\udXXX`` escapes: safe to put in a message
    or a response, whatever it holds."""
    return printable(value)


def check_text(value: str, field: str, *, max_length: int = MAX_STRING) -> str:
    """One string: valid Unicode scalar values, no NUL, at most ``max_length`` characters."""
    if len(value) > max_length:
        raise ValidationError(f"{field}: longer than {max_length} characters", field=field)
    problem = text_problem(value)
    if problem is not None:
        raise ValidationError(f"{field}: the value {problem}", field=field)
    return value


MAX_TAG = 64
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+-]*")
ID_PREFIX_RE = re.compile(r"[0-9a-f][0-9a-f-]*")


def check_tag(value: Any, field: str = "tag") -> str:
    """A job tag: 1 to ``MAX_TAG`` characters, letters, digits and ``_ . : @ + -`` (no
    space, no control character, no slash, none of the filter grammar's ``= ! < >``), not
    starting with punctuation other than ``_``."""
    if not isinstance(value, str):
        raise ValidationError(f"{field}: a tag must be a string", field=field)
    if not value or len(value) > MAX_TAG:
        raise ValidationError(f"{field}: a tag has 1 to {MAX_TAG} characters", field=field)
    if not TAG_RE.fullmatch(value):
        raise ValidationError(
            f"{field}: '{safe_text(value)}' is not a tag (letters, digits and _ . : @ + -)",
            field=field,
        )
    return value


def check_id_prefix(value: str, field: str = "id_prefix") -> str:
    """The start of a job id: lowercase hex digits and dashes, at most 36 characters."""
    if not 1 <= len(value) <= 36 or not ID_PREFIX_RE.fullmatch(value):
        raise ValidationError(
            f"{field}: '{safe_text(value[:40])}' is not the start of a job id "
            "(hex digits and dashes)",
            field=field,
        )
    return value


def check_int(value: int, field: str, *, low: int = INT_MIN, high: int = INT_MAX) -> int:
    """An integer within ``low`` .. ``high`` (signed 64 bits by default)."""
    if not low <= value <= high:
        raise ValidationError(f"{field}: {_short(value)} is out of range ({low} to {high})",
                              field=field)  # fmt: skip
    return value


def check_value(value: Any, field: str = "body") -> Any:
    """Walk a JSON-like value (dict keys too) and raise ``ValidationError`` naming the first
    field that breaks the rule (see the module's docstring). Returns ``value`` unchanged.

    With ``field=""`` the keys of a top-level object are the fields' names (``counters.done``)
    and a problem with the value itself is reported as ``body``. Values of other types (dates,
    paths...) are not JSON input and are left to the caller.
    """
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        item, where, depth = stack.pop()
        name = where or "body"
        if isinstance(item, str):
            check_text(item, name)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            check_int(item, name)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValidationError(f"{name}: {item} is not a finite number", field=name)
        elif isinstance(item, Mapping | list | tuple):
            if depth >= MAX_DEPTH:
                raise ValidationError(f"{name}: nested deeper than {MAX_DEPTH} levels", field=name)
            if len(item) > MAX_ITEMS:
                raise ValidationError(f"{name}: more than {MAX_ITEMS} entries", field=name)
            if isinstance(item, Mapping):
                pairs = [(child, _key_path(where, key), depth + 1) for key, child in item.items()]
                stack.extend(reversed(pairs))
            else:
                stack.extend(
                    (child, f"{name}[{index}]", depth + 1)
                    for index, child in reversed(list(enumerate(item)))
                )
    return value


def _key_path(where: str, key: Any) -> str:
    """``where.key``, after checking the key itself (the path shows a bad key escaped)."""
    if not isinstance(key, str):
        raise ValidationError(f"{where or 'body'}: keys must be strings", field=where or "body")
    if len(key) > MAX_KEY:
        path = _join(where, safe_text(key[:64]) + "...")
        raise ValidationError(f"{path}: a key longer than {MAX_KEY} characters", field=path)
    path = _join(where, safe_text(key))
    problem = text_problem(key)
    if problem is not None:
        raise ValidationError(f"{path}: the key {problem}", field=path)
    return path


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _short(value: int) -> str:
    """An integer for a message: huge ones by their size, not thousands of digits."""
    if value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    return str(value)
