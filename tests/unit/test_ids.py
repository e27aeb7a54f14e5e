"""Short job ids in the CLI (``cli/ids.py``), against a mocked server."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from jobmill.cli.ids import AmbiguousId, full_id, resolve
from jobmill.client import Client, JobmillClientError

IDS = [
    "3f2a1111-0000-4000-8000-000000000001",
    "3f2b2222-0000-4000-8000-000000000002",
    "70000000-0000-4000-8000-000000000003",
]


def client(ids: list[str], asked: list[dict[str, Any]]) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        asked.append(params)
        prefix = params["id_prefix"]
        found = [{"id": i} for i in ids if i.startswith(prefix)][: int(params["limit"])]
        return httpx.Response(200, json={"jobs": found, "next_cursor": None})

    return Client("http://jm.test", token="t", transport=httpx.MockTransport(handler))


def test_a_full_id_needs_no_request() -> None:
    asked: list[dict[str, Any]] = []
    jm = client(IDS, asked)
    assert resolve(jm, IDS[0]) == IDS[0]
    assert resolve(jm, IDS[0].replace("-", "").upper()) == IDS[0]
    assert asked == []
    assert full_id(str(uuid.uuid4())[:-1]) is None


def test_a_unique_prefix_is_the_job() -> None:
    asked: list[dict[str, Any]] = []
    jm = client(IDS, asked)
    assert resolve(jm, "3f2a") == IDS[0]
    assert resolve(jm, "7") == IDS[2]
    assert resolve(jm, "3F2B22") == IDS[1]
    assert asked[0] == {"id_prefix": "3f2a", "limit": "11"}


def test_an_ambiguous_prefix_lists_the_candidates() -> None:
    with pytest.raises(AmbiguousId) as info:
        resolve(client(IDS, []), "3f")
    message = str(info.value)
    assert "ambiguous" in message and IDS[0] in message and IDS[1] in message
    assert info.value.status == 409 and info.value.field == "id"


def test_many_candidates_are_cut_short() -> None:
    many = [f"aa{n:06x}-0000-4000-8000-000000000000" for n in range(30)]
    with pytest.raises(AmbiguousId) as info:
        resolve(client(many, []), "aa")
    assert len(info.value.candidates) == 10 and str(info.value).endswith("; give more of it")
    assert ", ..." in str(info.value)


def test_no_match_and_no_hex() -> None:
    with pytest.raises(JobmillClientError) as info:
        resolve(client(IDS, []), "0123")
    assert info.value.status == 404 and "no job whose id starts with '0123'" in str(info.value)
    with pytest.raises(JobmillClientError) as info:
        resolve(client(IDS, []), "zz-top")
    assert info.value.status == 422 and "not a job id" in str(info.value)
