"""The progress-report merge rule (ARP's ``BATCH_UPDATE_URL`` semantics, made safe).

Top-level keys posted replace only those keys; ``counters`` merge by name, so a partial post
never wipes other counters. ARP's newer list form ``[{"key": .., "value": ..}]`` is accepted
for the whole payload and for ``counters``.
"""

from __future__ import annotations

from typing import Any

from jobmill.domain.errors import ValidationError

MAX_KEYS = 1000


def normalise(payload: Any) -> dict[str, Any]:
    """A report payload as a dict, or ``ValidationError`` naming what is wrong."""
    if isinstance(payload, list):
        return {"counters": _pairs(payload, "body")}
    if not isinstance(payload, dict):
        raise ValidationError(
            "a report must be a JSON object or a list of {key, value}", field="body"
        )
    if len(payload) > MAX_KEYS:
        raise ValidationError(f"a report may have at most {MAX_KEYS} keys", field="body")
    result = dict(payload)
    if "counters" in result:
        counters = result["counters"]
        if isinstance(counters, list):
            result["counters"] = _pairs(counters, "counters")
        elif not isinstance(counters, dict):
            raise ValidationError(
                "counters must be an object or a list of {key, value}", field="counters"
            )
        elif len(counters) > MAX_KEYS:
            raise ValidationError(f"at most {MAX_KEYS} counters", field="counters")
    return result


def _pairs(items: list[Any], field: str) -> dict[str, Any]:
    counters: dict[str, Any] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "key" not in item or "value" not in item:
            raise ValidationError(
                f"{field}[{index}] must be an object with 'key' and 'value'",
                field=f"{field}[{index}]",
            )
        counters[str(item["key"])] = item["value"]
    if len(counters) > MAX_KEYS:
        raise ValidationError(f"at most {MAX_KEYS} counters", field=field)
    return counters


def merge(old: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The stored report after ``payload`` (already normalised) is posted."""
    new = dict(old)
    for key, value in payload.items():
        if key == "counters" and isinstance(value, dict):
            counters = dict(old.get("counters") or {})
            counters.update(value)
            new["counters"] = counters
        else:
            new[key] = value
    if len(new) > MAX_KEYS:
        raise ValidationError(f"the report would have more than {MAX_KEYS} keys", field="body")
    merged = new.get("counters")
    if isinstance(merged, dict) and len(merged) > MAX_KEYS:
        raise ValidationError(f"the report would have more than {MAX_KEYS} counters",
                              field="counters")  # fmt: skip
    return new
