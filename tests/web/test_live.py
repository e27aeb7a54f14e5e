"""Pieces of the web face that a browser test would only catch by chance."""

from __future__ import annotations

import pytest

from jobmill.web.live import fragment, whole_characters
from jobmill.web.render import part
from jobmill.web.signin import local_target


@pytest.mark.parametrize(
    ("data", "kept"),
    [
        (b"", b""),
        (b"abc", b"abc"),
        ("é".encode(), "é".encode()),
        ("aé".encode()[:-1], b"a"),  # the second byte of a 2-byte character is missing
        ("a€".encode()[:-1], b"a"),
        ("a€".encode()[:-2], b"a"),
        ("a😀".encode()[:-1], b"a"),
        ("a😀".encode(), "a😀".encode()),
        (b"\x80\x80\x80\x80", b"\x80\x80\x80\x80"),  # not UTF-8: sent as it is
    ],
)
def test_log_text_ends_on_a_whole_character(data: bytes, kept: bytes) -> None:
    assert whole_characters(data) == kept


def test_parts_carry_their_version_and_change_with_their_content() -> None:
    job = {"id": "j1", "type": "sleep", "phase": "QUEUED", "owner": "u", "created": None}
    first = str(part("job_row", job))
    again = str(part("job_row", job))
    moved = str(part("job_row", {**job, "phase": "EXECUTING"}))
    assert first == again and 'data-v=""' not in first
    sent = fragment("job-j1", first)
    assert sent["v"] in first and sent["id"] == "job-j1"
    assert fragment("job-j1", moved)["v"] != sent["v"]
    assert "&lt;b&gt;" in str(part("job_row", {**job, "type": "<b>"}))  # escaped


@pytest.mark.parametrize(
    ("target", "kept"),
    [
        ("/ui/rules", "/ui/rules"),
        ("/?phase=ERROR&type=sleep", "/?phase=ERROR&type=sleep"),
        ("//evil.example/x", "/"),
        ("/\t/evil.example", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("", "/"),
    ],
)
def test_sign_in_returns_only_to_this_server(target: str, kept: str) -> None:
    assert local_target(target) == kept
