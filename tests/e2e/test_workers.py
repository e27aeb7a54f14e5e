"""``jobmill serve --workers 2``: real processes, real HTTP, on SQLite and on PostgreSQL.

The serve process runs the engine; a worker manager it forks keeps two API workers serving
one listening socket. Which worker answered a connection is read from ``/proc``: the
server-side socket of a loopback connection (``/proc/net/tcp``) is among the open files of
exactly one worker.

* Jobs submitted over many connections, to both workers, all run, once.
* A web sign-in (the printed one-time link, then the session cookie) holds across requests
  that land on either worker; the link works once, whichever worker it reaches.
* A SIGKILLed worker is started again while the other keeps answering; SIGTERM stops the
  workers, then the engine, and leaves no process; a SIGKILLed serve process takes its
  workers with it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, local_headers, wait_for

JOBMILL = str(Path(sys.executable).with_name("jobmill"))
STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")
MANAGER = re.compile(r"manager pid (\d+)")
LINK = re.compile(r"open http://[^/\s]+(/ui/signin\?once=\S+) to sign in")

SCRIPT = """\
import sys
with open(sys.argv[2], "a") as handle:
    handle.write(sys.argv[1] + "\\n")
"""


def _socket_owner(port: int, client_port: int, pids: list[int]) -> int | None:
    """The pid among ``pids`` holding the server side of 127.0.0.1:client_port -> :port."""
    local, remote = f"0100007F:{port:04X}", f"0100007F:{client_port:04X}"
    inode = None
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Served:
    """A ``jobmill serve --workers 2`` process; its output goes to a log file."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.tmp_path = tmp_path
        types = tmp_path / "types"
        types.mkdir()
        (types / "note.py").write_text(SCRIPT)
        (types / "note.yaml").write_text(
            "name: note\n"
            'command: ["python3", "{jobtype_dir}/note.py", "{name}", "{log}"]\n'
            "parameters:\n"
            "  name: {type: string, required: true}\n"
            "  log: {type: path, required: true}\n"
        )
        self.port = free_port()
        self.log = tmp_path / "serve.log"
        self.runlog = tmp_path / "runs.log"
        env = dict(
            os.environ,
            JOBMILL_DATABASE_URL=db_url,
            JOBMILL_WORKERS="2",
            JOBMILL_POLL_INTERVAL="0.2",
            JOBMILL_MAX_LOCAL_JOBS="4",
        )
        # fmt: off
        args = [JOBMILL, "serve", "--port", str(self.port), "--home", str(tmp_path / "home"),
                "--jobtypes", str(types)]
        # fmt: on
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=out)  # fixed argv
        wait_for(lambda: len(self.workers()) == 2 and self._answers(), timeout=60, interval=0.1)
        self.token = local_headers()["Authorization"]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> dict[int, int]:
        """Slot -> pid of the worker last started in it."""
        return {int(s): int(p) for s, p in STARTED.findall(self.text())}

    def manager(self) -> int:
        found = MANAGER.search(self.text())
        assert found, self.text()
        return int(found.group(1))

    def _answers(self) -> bool:
        assert self.proc.poll() is None, self.text()
        try:
            return self.request(self.connect(), "GET", "/healthz")[0] == 200
        except OSError:
            return False

    def connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        conn.connect()
        return conn

    def request(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        sent = dict(headers or {})
        data = None
        if isinstance(body, dict):
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            data = body.encode()
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        conn.request(method, path, body=data, headers=sent)
        answer = conn.getresponse()
        got: dict[str, str] = {}
        for key, value in answer.getheaders():  # several Set-Cookie: one per line
            got[key.lower()] = f"{got[key.lower()]}\n{value}" if key.lower() in got else value
        return answer.status, got, answer.read()

    def owner(self, conn: http.client.HTTPConnection) -> int | None:
        """The worker that accepted ``conn`` (after a first request on it)."""
        client_port = conn.sock.getsockname()[1]
        return _socket_owner(self.port, client_port, list(self.workers().values()))

    def spread(
        self, per_worker: int = 2, tries: int = 400
    ) -> dict[int, list[http.client.HTTPConnection]]:
        """Open keep-alive connections until each worker holds ``per_worker`` of them."""
        found: dict[int, list[http.client.HTTPConnection]] = {}
        for _ in range(tries):
            conn = self.connect()
            assert self.request(conn, "GET", "/healthz")[0] == 200
            pid = self.owner(conn)
            assert pid is not None, "a connection no worker holds"
            if len(found.setdefault(pid, [])) < per_worker:
                found[pid].append(conn)
            else:
                conn.close()
            if len(found) == 2 and all(len(c) >= per_worker for c in found.values()):
                return found
        raise AssertionError(f"connections went to {sorted(found)} only")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def served(tmp_path: Path, db_url: str) -> Iterator[Served]:
    server = Served(tmp_path, db_url)
    pids = [server.manager(), *server.workers().values()]
    try:
        yield server
    finally:
        server.stop()
        for pid in pids + list(server.workers().values()):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_jobs_over_many_connections_run_once_on_both_workers(served: Served) -> None:
    spread = served.spread(per_worker=4)
    auth = {"Authorization": served.token}
    ids: list[str] = []
    by_worker: dict[int, int] = {}
    for round_ in range(5):
        for pid, conns in spread.items():
            for k, conn in enumerate(conns):
                name = f"j{round_}-{pid}-{k}"
                job = {"type": "note", "parameters": {"name": name, "log": str(served.runlog)}}
                status, _h, body = served.request(conn, "POST", "/api/v1/jobs", job, auth)
                assert status == 201, body
                ids.append(json.loads(body)["id"])
                by_worker[pid] = by_worker.get(pid, 0) + 1
    # And over a new connection each.
    for i in range(10):
        job = {"type": "note", "parameters": {"name": f"fresh{i}", "log": str(served.runlog)}}
        status, _h, body = served.request(served.connect(), "POST", "/api/v1/jobs", job, auth)
        assert status == 201, body
        ids.append(json.loads(body)["id"])
    assert len(by_worker) == 2 and all(n == 20 for n in by_worker.values())
    conn = served.connect()

    def phases() -> set[str]:
        return {
            json.loads(served.request(conn, "GET", f"/api/v1/jobs/{j}", None, auth)[2])["phase"]
            for j in ids
        }

    wait_for(lambda: phases() <= {"COMPLETED", "ERROR"}, timeout=90, interval=0.3)
    assert phases() == {"COMPLETED"}
    names = served.runlog.read_text().split()
    assert len(names) == len(ids) == len(set(names)) == 50  # each ran, once
    for job_id in ids[::7]:
        events = json.loads(
            served.request(conn, "GET", f"/api/v1/jobs/{job_id}/events", None, auth)[2]
        )
        assert sum(e["name"] == "start" for e in events) == 1


def test_a_web_sign_in_holds_on_both_workers_and_the_link_works_once(served: Served) -> None:
    found = LINK.search(served.text())
    assert found, served.text()
    link = found.group(1)
    spread = served.spread(per_worker=3)
    first_conns, second_conns = spread.values()
    status, headers, _body = served.request(first_conns[0], "GET", link)
    assert status == 303 and headers["location"] == "/"
    cookie = next(c for c in headers["set-cookie"].splitlines() if c.startswith("jobmill_session="))
    cookie = cookie.split(";")[0]
    # The link was redeemed by one worker: the other refuses it.
    status, headers, body = served.request(second_conns[0], "GET", link)
    assert status == 401 and b"already used" in body
    assert "jobmill_session=" not in headers.get("set-cookie", "")
    status, _h, _b = served.request(first_conns[1], "GET", link)
    assert status == 401
    # The session cookie works on every connection of both workers, many times over.
    csrf = set()
    for _ in range(10):
        for conn in first_conns + second_conns:
            status, _h, body = served.request(conn, "GET", "/", None, {"Cookie": cookie})
            assert status == 200, body[:200]
            csrf.update(re.findall(rb'name="csrf" value="([^"]+)"', body))
    assert len(csrf) == 1  # one CSRF token, whichever worker rendered the page
    # A form rendered by one worker and posted to the other: signing out, which ends it for both.
    form = f"csrf={csrf.pop().decode()}"
    headers = {"Cookie": cookie}
    status, _h, _b = served.request(second_conns[1], "POST", "/ui/signout", form, headers)
    assert status == 303
    for conn in (first_conns[2], second_conns[2]):
        status, answer, _b = served.request(conn, "GET", "/", None, {"Cookie": cookie})
        assert status == 303 and answer["location"].startswith("/ui/signin")


def test_a_killed_worker_is_started_again_and_sigterm_leaves_nothing(served: Served) -> None:
    before = served.workers()
    victim = before[1]
    os.kill(victim, signal.SIGKILL)
    # The other worker keeps answering, on new connections, while the victim is replaced.
    answered = 0
    deadline = time.monotonic() + 30
    while served.workers()[1] == victim and time.monotonic() < deadline:
        assert served.request(served.connect(), "GET", "/healthz")[0] == 200
        answered += 1
        time.sleep(0.05)
    after = served.workers()
    assert after[1] != victim and after[2] == before[2], served.text()
    assert answered > 0
    assert f"worker 1 (pid {victim}) ended (killed by SIGKILL)" in served.text()
    assert not _alive(victim)
    served.spread(per_worker=1, tries=600)  # both answer again, the new one included
    pids = [served.proc.pid, served.manager(), *after.values()]
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(40) == 0
    wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=10)
    text = served.text()
    assert text.index("workers stopped") < text.rindex("stopped")  # the workers, then the engine
    assert "Traceback" not in text
    with pytest.raises(OSError):
        served.connect()


def test_sighup_reloads_the_job_types_of_every_worker(served: Served) -> None:
    types = served.tmp_path / "types"
    (types / "second.yaml").write_text('name: second\ncommand: ["true"]\n')
    served.proc.send_signal(signal.SIGHUP)
    spread = served.spread(per_worker=1)
    auth = {"Authorization": served.token}

    def everywhere() -> bool:
        for (conn,) in spread.values():
            body = served.request(conn, "GET", "/api/v1/jobtypes", None, auth)[2]
            if "second" not in {t["name"] for t in json.loads(body)}:
                return False
        return True

    wait_for(everywhere, timeout=20, interval=0.2)


def test_a_killed_serve_process_takes_its_workers_along(served: Served) -> None:
    pids = [served.manager(), *served.workers().values()]
    served.proc.send_signal(signal.SIGKILL)
    served.proc.wait(10)
    wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=30, interval=0.1)


@pytest.mark.parametrize("how", ["option", "env"])
def test_the_worker_count_is_checked(tmp_path: Path, how: str) -> None:
    args = [JOBMILL, "serve", "--home", str(tmp_path / "home"), "--port", str(free_port())]
    env = dict(os.environ)
    if how == "option":
        args += ["--workers", "0"]
    else:
        env["JOBMILL_WORKERS"] = "65"
    done = subprocess.run(  # fixed argv
        args, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "--workers (JOBMILL_WORKERS)" in done.stderr, done.stderr
    assert "give 1 to 64" in done.stderr, done.stderr
