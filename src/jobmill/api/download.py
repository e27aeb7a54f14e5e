"""Answers that send a file the service opened (results, uploads, logs).

The service opens files without following symbolic links (``service.files.open_inside``); the
face sends what was opened, from the descriptor, rather than opening the path again (which a
job could have swapped for a link in between). The whole file is sent, up to its size when it
was opened (a log still being written keeps growing).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import BinaryIO
from urllib.parse import quote

from starlette.responses import StreamingResponse

CHUNK = 1 << 20


def _chunks(handle: BinaryIO, size: int) -> Iterator[bytes]:
    with handle:
        left = size
        while left > 0:
            data = handle.read(min(CHUNK, left))
            if not data:
                return
            left -= len(data)
            yield data


def send_file(
    handle: BinaryIO,
    media_type: str,
    *,
    filename: str | None = None,
    size: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> StreamingResponse:
    """The whole of ``handle`` (``size`` bytes: its size now unless given), as an attachment
    named ``filename`` if one is given. The handle is closed once sent."""
    if size is None:
        size = os.fstat(handle.fileno()).st_size
    extra = {"Content-Length": str(size), **(headers or {})}
    if filename is not None:
        quoted = quote(filename)
        if quoted != filename:
            extra["Content-Disposition"] = f"attachment; filename*=utf-8''{quoted}"
        else:
            extra["Content-Disposition"] = f'attachment; filename="{filename}"'
    return StreamingResponse(_chunks(handle, size), media_type=media_type, headers=extra)
