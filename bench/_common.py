"""Shared helpers of the benchmarks: a real jobmill server in a temporary home, a lean
keep-alive HTTP client, percentiles and a table printer.

The benchmarks measure a real ``jobmill serve`` subprocess over loopback HTTP. The client side
is deliberately thin (pre-encoded HTTP/1.1 requests over asyncio streams) so that, on a small
machine where client and server share the cores, the figures describe the server and not the
client library. Each benchmark also reports the server's own CPU time per operation (from
``/proc``), which is far less sensitive to a noisy machine than wall-clock rates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
JOBMILL = Path(sys.executable).parent / "jobmill"
# Every server a benchmark starts writes the local credential of its user here (``jobmill
# serve`` does), and every request of the benchmark carries it: one file for the whole run, so
# each server (each its own database) accepts the same token.
TOKEN_FILE = Path(tempfile.mkdtemp(prefix="jobmill-bench-token-")) / "token"
os.environ["JOBMILL_TOKEN_FILE"] = str(TOKEN_FILE)


def token() -> str | None:
    """The benchmark's token (once a server has started), or None."""
    try:
        return TOKEN_FILE.read_text().strip() or None
    except OSError:
        return None


def auth_headers() -> dict[str, str]:
    """``Authorization`` for httpx clients of the benchmark's servers."""
    secret = token()
    return {"Authorization": f"Bearer {secret}"} if secret else {}


CLK_TCK = os.sysconf("SC_CLK_TCK")
# Opt-in PostgreSQL: with an admin URL here (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5433/
# postgres``) every server gets a fresh database of its own, created before it starts and dropped
# after it stops. Without it every server uses SQLite in its temporary home.
BENCH_DATABASE_URL = os.environ.get("JOBMILL_BENCH_DATABASE_URL") or None


def database_kind() -> str:
    """Which database the benchmark's servers use: ``PostgreSQL`` or ``SQLite``."""
    return "PostgreSQL" if BENCH_DATABASE_URL else "SQLite"


PROFILE_DIR: Path | None = None  # set by --py-spy: record a flame graph of every server


# -- command line ---------------------------------------------------------------------------


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short run (a smoke test)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary server home and print its path"
    )
    parser.add_argument(
        "--py-spy",
        metavar="DIR",
        type=Path,
        dest="py_spy",
        help="record each server with py-spy (--gil: where the Python time goes) into DIR/*.svg "
        "(py-spy must be installed; the figures are then slower)",
    )
    args = parser.parse_args()
    global PROFILE_DIR
    PROFILE_DIR = args.py_spy
    return args


def banner(title: str, database: str | None = None) -> None:
    """The bench's title, the machine, and its database (``database``: said by the bench
    itself, for one that does not use ``JOBMILL_BENCH_DATABASE_URL``)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"== {title} ==")
    print(f"{now}  cpus={os.cpu_count()}  load={load}  python={sys.version.split()[0]}")
    if database is None:
        where = "a fresh database per server" if BENCH_DATABASE_URL else "in each server's home"
        database = f"{database_kind()}, {where} (JOBMILL_BENCH_DATABASE_URL)"
    print(f"database: {database}")


# -- statistics and output ------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(values: Sequence[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = [v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row))


def verdict(ratio: float) -> str:
    return "ok" if ratio >= 1.0 else "MISSED"


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (its threads included) so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        stat = handle.read()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu_seconds(pid: int) -> float:
    """CPU seconds of the reaped children of a process (its jobs, once they have exited)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        stat = handle.read()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / CLK_TCK


def write_jobtype(directory: Path, name: str, command: Sequence[str], **extra: Any) -> Path:
    """A job type YAML file (JSON is valid YAML) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "command": list(command), **extra}, indent=2))
    return path


@dataclass
class Server:
    """A running ``jobmill serve`` subprocess with its own temporary home."""

    proc: subprocess.Popen[bytes]
    port: int
    home: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def tail_log(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_healthy(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"jobmill serve exited with {server.proc.returncode}:\n{server.tail_log()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/healthz").status_code == 200:
                    return
            time.sleep(0.05)
    raise RuntimeError(
        f"jobmill serve did not answer /healthz in {timeout} s:\n{server.tail_log()}"
    )


def _kill_jobs(home: Path) -> None:
    """Kill any job process group a server left behind (jobs run in their own sessions)."""
    for pid_file in home.glob("jobs/*/.jobmill-pid"):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)
    _kill_jobs(server.home)


def _start_py_spy(server: Server) -> subprocess.Popen[bytes] | None:
    if PROFILE_DIR is None:
        return None
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    out = PROFILE_DIR / f"{Path(sys.argv[0]).stem}-{server.port}.svg"
    argv = [exe, "record", "--gil", "--rate", "200", "--pid", str(server.pid), "--output", str(out)]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL)  # noqa: S603 - fixed argv
    time.sleep(1.0)  # let it attach before the measurement starts
    print(f"(py-spy: {out})")
    return spy


@contextlib.contextmanager
def bench_database(sqlite: bool = False) -> Iterator[str | None]:
    """A fresh PostgreSQL database URL for one server (``JOBMILL_BENCH_DATABASE_URL`` set), dropped
    afterwards; None (SQLite in the server's home) otherwise or with ``sqlite``."""
    if sqlite or not BENCH_DATABASE_URL:
        yield None
        return
    from sqlalchemy import create_engine, text  # noqa: PLC0415 - only for the PostgreSQL runs
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    name = f"jm_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(BENCH_DATABASE_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = make_url(BENCH_DATABASE_URL).set(database=name)
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def running_server(
    jobtypes: Sequence[Path | str],
    *,
    env: Mapping[str, str] | None = None,
    keep: bool = False,
    startup_timeout: float = 30.0,
    sqlite: bool = False,
) -> Iterator[Server]:
    """Start ``jobmill serve`` on a free loopback port with a temporary home; always stop it.

    The server's output goes to ``serve.log`` in the home. With ``keep`` the home survives.
    With ``JOBMILL_BENCH_DATABASE_URL`` set the server gets a fresh PostgreSQL database
    (``bench_database``), else (or with ``sqlite``) SQLite in its home.
    """
    with (
        bench_database(sqlite) as database_url,
        _running_server(jobtypes, database_url, env=env, keep=keep, timeout=startup_timeout) as s,
    ):
        yield s


@contextlib.contextmanager
def _running_server(
    jobtypes: Sequence[Path | str],
    database_url: str | None,
    *,
    env: Mapping[str, str] | None,
    keep: bool,
    timeout: float,
) -> Iterator[Server]:
    base = Path(tempfile.mkdtemp(prefix="jobmill-bench-"))
    home = base / "home"
    log = base / "serve.log"
    port = free_port()
    full_env = dict(os.environ)
    full_env.pop("JOBMILL_DATABASE_URL", None)
    if database_url:
        full_env["JOBMILL_DATABASE_URL"] = database_url
    full_env.update(env or {})
    argv = [str(JOBMILL), "serve", "--home", str(home), "--port", str(port)]
    for jobtype in jobtypes:
        argv += ["--jobtypes", str(jobtype)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            argv,
            cwd=base,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(proc, port, home, log, dict(env or {}))
    spy: subprocess.Popen[bytes] | None = None
    try:
        _wait_healthy(server, timeout)
        spy = _start_py_spy(server)
        yield server
    finally:
        if spy is not None and spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
        _stop(server)
        if keep:
            print(f"(kept {base})")
        else:
            shutil.rmtree(base, ignore_errors=True)


# -- a lean keep-alive HTTP/1.1 client --------------------------------------------------------


class HTTPError(RuntimeError):
    """A response with an unexpected status."""


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams (Content-Length bodies only)."""

    def __init__(self, host: str, port: int, token: str | None = None) -> None:
        self.host = host
        self.port = port
        self.token = token if token is not None else globals()["token"]()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def encode(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """A complete request, encoded once and reusable."""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if self.token:
            head += f"Authorization: Bearer {self.token}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + (body or b"")

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise HTTPError(f"no Content-Length in the response: {lines[0]}")
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    async def request(
        self, method: str, path: str, payload: Any = None, *, expect: int = 200
    ) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        status, data = await self.send(self.encode(method, path, body))
        if status != expect:
            raise HTTPError(f"{method} {path}: {status} {data[:300]!r}")
        return json.loads(data) if data else None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


@dataclass
class Load:
    """The outcome of a closed-loop load run."""

    requests: int
    seconds: float
    latencies: list[float]  # seconds
    server_cpu: float  # seconds of server CPU during the run

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")

    def p(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        return percentile(self.latencies, q) * 1000.0


async def closed_loop(
    server: Server,
    clients: int,
    total: int,
    make_request: Callable[[Connection, int], bytes],
    *,
    expect: int,
    check: Callable[[bytes], None] | None = None,
) -> Load:
    """``clients`` connections each sending its next request as soon as the last one answered,
    until ``total`` requests were sent. ``make_request(conn, i)`` returns pre-encoded bytes;
    every answer must have status ``expect`` and pass ``check(body)`` if given."""
    conns = [await Connection("127.0.0.1", server.port).open() for _ in range(clients)]
    payloads = [make_request(conns[i % clients], i) for i in range(total)]
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker(conn: Connection) -> None:
        for i in counter:
            start = time.perf_counter()
            status, body = await conn.send(payloads[i])
            latencies.append(time.perf_counter() - start)
            if status != expect:
                raise HTTPError(f"request {i}: {status} {body[:300]!r}")
            if check is not None:
                check(body)

    try:
        cpu0 = server.cpu()
        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        seconds = time.perf_counter() - start
        cpu = server.cpu() - cpu0
    finally:
        for conn in conns:
            await conn.close()
    return Load(total, seconds, latencies, cpu)


# -- several API worker processes (``jobmill serve --workers N``) ------------------------------


def workers_arg() -> int:
    """``--workers N`` (taken off the command line before the common options are read)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--workers", type=int, default=1)
    known, rest = parser.parse_known_args()
    sys.argv[1:] = rest
    if not 1 <= known.workers <= 64:
        raise SystemExit("--workers: give 1 to 64")
    return int(known.workers)


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the serve process, its worker manager and workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                    stat = handle.read()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def tree_cpu(pids: list[int]) -> dict[int, float]:
    cpu = {}
    for pid in pids:
        try:
            cpu[pid] = cpu_seconds(pid)
        except OSError:
            continue
    return cpu


def ready_all(server: Server, workers: int, timeout: float = 60.0) -> None:
    """Wait until every worker has started its application (the first answers earlier)."""
    deadline = time.monotonic() + timeout
    while server.log.read_text(errors="replace").count("Application startup complete") < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers did not all start:\n{server.tail_log()}")
        time.sleep(0.1)


@contextlib.contextmanager
def worker_server(
    jobtypes: Sequence[Path | str], workers: int, env: Mapping[str, str] | None = None, **kw: Any
) -> Iterator[Server]:
    """``running_server`` with ``JOBMILL_WORKERS``: every worker started, and ``server.cpu()``
    the whole process tree's (the engine process and every worker)."""
    with running_server(
        jobtypes, env={**(env or {}), "JOBMILL_WORKERS": str(workers)}, **kw
    ) as server:
        ready_all(server, workers)
        pids = tree(server.pid)
        server.cpu = lambda: sum(tree_cpu(pids).values())  # type: ignore[method-assign]
        yield server
