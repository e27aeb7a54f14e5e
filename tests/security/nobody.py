"""Another account on the same host: run a probe in a child process that has become uid/gid
``nobody`` (the tests need root to do so), and read back what it saw."""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

NOBODY = 65534


def as_nobody(probe: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
    """``probe(*args)`` in a child process that has become uid/gid ``nobody``; its answer
    (JSON) is read while the child writes it, so it may be large."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, probe, report through the pipe
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            payload = {"uid": os.getuid(), "euid": os.geteuid(), "result": probe(*args)}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            payload = {"error": repr(exc)}
            code = 1
        try:
            data = json.dumps(payload).encode()
            while data:
                data = data[os.write(write, data) :]
        finally:
            os._exit(code)
    os.close(write)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError("the other account's process hung")
            if select.select([read], [], [], left)[0]:
                chunk = os.read(read, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    answer = json.loads(b"".join(chunks))
    assert "error" not in answer, f"the other account's process failed: {answer['error']}"
    assert answer["uid"] == answer["euid"] == NOBODY
    return answer["result"]
