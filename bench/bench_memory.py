"""Server memory at rest, per process (target: 100 MiB each).

Starts ``jobmill serve`` with 1 process and with ``--workers 2`` (``JOBMILL_WORKERS``), each on
SQLite in its home, and again each on a fresh PostgreSQL database when
``JOBMILL_BENCH_DATABASE_URL`` is set (an admin URL). Each server is warmed up: a few hundred
PENDING jobs created from 8 keep-alive clients, a few ``/bin/true`` jobs run to their end (the
first local job starts the shepherd, ``python -m jobmill.executors.shepherd``), a few job lists
read. Then it is left idle for a few seconds, and the memory of every jobmill process in its tree
is read from ``/proc/PID/smaps_rollup``: the serve process (the engine; with 1 process also the
API), the worker manager and the API workers of ``--workers N``, and the shepherd.

* RSS counts every page the process maps, the shared ones in full;
* PSS divides each shared page among the processes that share it, which is fairer to forked
  workers sharing the pages of their parent (the PSS of a tree sums to its real footprint);
* private = the pages of this process alone (Private_Clean + Private_Dirty).

"at start" is the RSS just after the server answered (and every worker started). The ratio is
target / measured: 1 or more meets the target.

Run: ``.venv/bin/python bench/bench_memory.py [--quick]``; for PostgreSQL as well, with
``JOBMILL_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5433/postgres``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _common import (
    BENCH_DATABASE_URL,
    Connection,
    Server,
    banner,
    closed_loop,
    parse_args,
    print_table,
    running_server,
    tree,
    verdict,
    worker_server,
    write_jobtype,
)

TARGET_MIB = 100.0
CLIENTS = 8
SHEPHERD = "jobmill.executors.shepherd"


@dataclass
class Memory:
    rss: float  # MiB
    pss: float
    private: float


def memory(pid: int) -> Memory | None:
    """RSS, PSS and private memory of a process in MiB (None once it has gone)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    values[name] = int(parts[0])
    except OSError:
        return None
    private = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    return Memory(values.get("Rss", 0) / 1024, values.get("Pss", 0) / 1024, private / 1024)


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return []


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        stat = handle.read()
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def roles(server: Server, workers: int) -> list[tuple[str, int]]:
    """(role, pid) of every jobmill process of the server's tree (jobs and other programs out)."""
    serve_cmd = cmdline(server.pid)
    found: list[tuple[str, int]] = []
    manager = None
    api = 0
    for pid in sorted(tree(server.pid)):
        argv = cmdline(pid)
        try:
            parent = ppid(pid)
        except OSError:
            continue
        if pid == server.pid:
            found.append(("serve (engine + API)" if workers == 1 else "serve (engine)", pid))
        elif SHEPHERD in argv:
            found.append(("shepherd", pid))
        elif argv == serve_cmd and parent == server.pid:
            manager = pid
            found.append(("worker manager", pid))
        elif argv == serve_cmd:
            api += 1
            found.append((f"API worker {api}" if parent == manager else "serve child", pid))
    return found


async def warm_up(server: Server, pending: int, runs: int, lists: int) -> int:
    """Create ``pending`` PENDING jobs, run ``runs`` /bin/true jobs to their end and read
    ``lists`` job lists; return how many of the runs completed."""

    def make(phase: str) -> Callable[[Connection, int], bytes]:
        def encode(conn: Connection, i: int) -> bytes:
            body = {"type": "noop", "parameters": {"message": f"warm {i}"}, "phase": phase}
            return conn.encode("POST", "/api/v1/jobs", json.dumps(body).encode())

        return encode

    await closed_loop(server, CLIENTS, pending, make("PENDING"), expect=201)
    await closed_loop(server, 2, runs, make("QUEUED"), expect=201)
    conn = await Connection("127.0.0.1", server.port).open()
    try:
        done = 0
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            page = await conn.request("GET", f"/api/v1/jobs?phase=COMPLETED&limit={runs}")
            done = len(page["jobs"])
            if done >= runs:
                break
            await asyncio.sleep(0.2)
        cursor = ""
        for _ in range(lists):
            page = await conn.request("GET", f"/api/v1/jobs?limit=100{cursor}")
            if page["next_cursor"]:
                cursor = f"&cursor={page['next_cursor']}"
            await conn.request("GET", f"/api/v1/jobs/{page['jobs'][0]['id']}")
    finally:
        await conn.close()
    return done


def main() -> int:
    args = parse_args(__doc__ or "")
    pending = 200 if args.quick else 500
    runs = 10 if args.quick else 20
    lists = 5
    idle = 3.0 if args.quick else 5.0
    kinds = ["SQLite", *(["PostgreSQL"] if BENCH_DATABASE_URL else [])]
    banner(f"bench_memory: jobmill processes at rest, target {TARGET_MIB:.0f} MiB each")
    rows: list[list[object]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="jobmill-bench-types-") as tmp:
        types = Path(tmp)
        write_jobtype(
            types,
            "noop",
            ["/bin/true", "{message}"],
            parameters={"message": {"type": "string", "required": True}},
        )
        for kind in kinds:
            for workers in (1, 2):
                sqlite = kind == "SQLite"
                if workers == 1:
                    context = running_server([types], keep=args.keep, sqlite=sqlite)
                else:
                    context = worker_server([types], workers, keep=args.keep, sqlite=sqlite)
                with context as server:
                    start = {pid: memory(pid) for _, pid in roles(server, workers)}
                    done = asyncio.run(warm_up(server, pending, runs, lists))
                    time.sleep(idle)
                    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
                    label = f"{kind}, {workers} process{'es' * (workers > 1)}"
                    total = 0.0
                    found = roles(server, workers)
                    for role, pid in found:
                        mem = memory(pid)
                        if mem is None:
                            continue
                        total += mem.pss
                        at_start = start.get(pid)
                        rows.append(
                            [
                                label,
                                role,
                                mem.rss,
                                mem.pss,
                                mem.private,
                                at_start.rss if at_start else float("nan"),
                                TARGET_MIB / mem.rss,
                                verdict(TARGET_MIB / mem.rss),
                                TARGET_MIB / mem.pss,
                                verdict(TARGET_MIB / mem.pss),
                            ]
                        )
                    if not any(role == "shepherd" for role, _ in found):
                        notes.append(f"{label}: no shepherd process found")
                    notes.append(
                        f"{label}: PSS of the whole tree {total:.1f} MiB; load {load}; "
                        f"{done} of {runs} /bin/true jobs completed, {pending} PENDING created"
                    )
    headers = ["server", "process", "RSS MiB", "PSS MiB", "private MiB", "RSS at start"]
    print_table([*headers, "RSS ratio", "", "PSS ratio", ""], rows)
    print(
        f"at rest = after the warm-up and {idle:.0f} s idle; ratio = {TARGET_MIB:.0f} MiB / "
        "measured (>= 1 meets the target)"
    )
    for line in notes:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
