"""The Python client of jobmill's native JSON API (``/api/v1``), used by the CLI and job scripts.

    from jobmill.client import Client

    jm = Client("http://127.0.0.1:8080", token="...")
    job = jm.submit("echo", {"message": "hi"})
    job = jm.wait(job["id"], timeout=60)

Inside a running job, ``report(counters={"files": 3})`` posts progress to the job's own report
URL with the job's token, both taken from the environment jobmill gave the process.

Every failure raises ``JobmillClientError``: an error answer of the server keeps its status,
code, message and field; a server that cannot be reached gives status 0. Its ``kind`` (usage,
denied, not_found, conflict, transient, fatal) says what to do about it, e.g. retry a transient
error later.
"""

from __future__ import annotations

import ipaddress
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx

from jobmill.domain.errors import Kind, kind_of
from jobmill.domain.lifecycle import TERMINAL
from jobmill.paths import default_token_file, read_server_url, read_token_file, server_file

DEFAULT_TIMEOUT = 30.0
SUBMIT_ATTEMPTS = 3
"""Attempts of ``Client.submit`` (with one ``Idempotency-Key``) before its error is raised."""
SUBMIT_RETRY_DELAY = 0.5
"""Seconds before the second attempt of ``Client.submit``; twice that before the third."""
RETRY_STATUSES = (0, 502, 503)  # 0: unreachable, or no answer in time
TERMINAL_PHASES = TERMINAL  # phases are strings: "COMPLETED" in TERMINAL_PHASES

JobDict = dict[str, Any]
JobList = list[JobDict]


CLIENT_CODES = {"unreachable": Kind.TRANSIENT, "timeout": Kind.TRANSIENT, "not_in_job": Kind.USAGE}
"""The codes of failures the client finds itself (status 0), and their kinds."""


class JobmillClientError(Exception):
    """A refused request (``status`` >= 400) or an unreachable server (``status`` 0).

    ``kind`` follows from the code (``domain.errors.CODES``, or ``CLIENT_CODES``), else from
    the status."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    @property
    def kind(self) -> Kind:
        return CLIENT_CODES.get(self.code) or kind_of(self.code, self.status)

    def __str__(self) -> str:
        if self.field and not self.message.startswith(self.field):
            return f"{self.field}: {self.message}"
        return self.message


class JobPage(NamedTuple):
    """One page of ``Client.list``: the jobs and the cursor of the next page (or ``None``)."""

    jobs: JobList
    next_cursor: str | None


class LogChunk(NamedTuple):
    """A slice of a job's log: the bytes, the offset to read from next, whether the log exists."""

    data: bytes
    next_offset: int
    exists: bool


def default_url() -> str:
    """``JOBMILL_URL``, else ``http://JOBMILL_HOST:JOBMILL_PORT`` when either is set, else where
    the user's own ``jobmill serve`` listens (``jobmill.paths.server_file``), else
    ``http://127.0.0.1:8080``."""
    if url := os.environ.get("JOBMILL_URL"):
        return url.rstrip("/")
    if not (os.environ.get("JOBMILL_HOST") or os.environ.get("JOBMILL_PORT")):
        noted = read_server_url(server_file())
        if noted is not None:
            return noted
    host = os.environ.get("JOBMILL_HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{os.environ.get('JOBMILL_PORT') or 8080}"


def local_token(url: str) -> str | None:
    """The local credential (``jobmill.paths.default_token_file``) when ``url`` is a server on
    this machine; never sent anywhere else."""
    host = (httpx.URL(url).host or "").strip("[]")
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return None
        except ValueError:
            return None
    return read_token_file(default_token_file())


def _error(response: httpx.Response) -> JobmillClientError:
    """The ``{"error": {code, message, field}}`` body as an exception (or a fallback for others)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return JobmillClientError(
            response.status_code,
            str(err.get("code") or f"http_{response.status_code}"),
            str(err.get("message") or response.reason_phrase),
            err.get("field"),
        )
    detail = body.get("detail") if isinstance(body, dict) else None
    message = str(detail) if detail else (response.text.strip()[:200] or response.reason_phrase)
    return JobmillClientError(response.status_code, f"http_{response.status_code}", message)


class Client:
    """A synchronous client of one jobmill server.

    ``url`` defaults to ``JOBMILL_URL`` (see ``default_url``); ``token`` to ``JOBMILL_API_TOKEN``,
    else, for a server on this machine (a loopback URL), the local credential that ``jobmill
    serve`` wrote for the user who started it (``~/.config/jobmill/token``, see ``local_token``).
    Without a token the caller is anonymous.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or default_url()).rstrip("/")
        if token is None:
            token = os.environ.get("JOBMILL_API_TOKEN") or local_token(self.url)
        self.token = token or None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TimeoutException:
            raise JobmillClientError(
                0, "timeout", f"jobmill at {self.url} did not answer in time"
            ) from None
        except httpx.TransportError as exc:
            raise JobmillClientError(
                0, "unreachable", f"cannot reach jobmill at {self.url}: {exc}"
            ) from None
        if response.status_code >= 400:
            raise _error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, f"/api/v1{path}", **kwargs).json()

    # -- jobs ---------------------------------------------------------------------------------

    def submit(
        self,
        type: str,
        parameters: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        executor: str | None = None,
        execution_duration: int | None = None,
        log_dir: str | None = None,
        phase: str | None = None,
        tags: Sequence[str] | None = None,
        after: Sequence[str] | None = None,
        on_parent_failure: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobDict:
        """Create a job (queued at once, or ``phase="PENDING"`` to hold it until ``run``);
        ``after``: ids of jobs that must complete first (``on_parent_failure``: "fail" or
        "wait" when one of them fails).

        The request carries an ``Idempotency-Key`` (``idempotency_key``, else a random one),
        and is sent again with the same key, up to ``SUBMIT_ATTEMPTS`` times in all, when the
        server cannot be reached, does not answer in time, or answers 502 or 503: a job the
        server created before its answer was lost is answered, not created twice (the key
        holds 24 hours)."""
        body = _job_body(
            type, parameters, run_id, executor, execution_duration, log_dir, phase,
            after, on_parent_failure,
        )  # fmt: skip
        if tags:
            body["tags"] = list(tags)
        return self._create("/jobs", body, idempotency_key)

    def _create(self, path: str, body: Any, idempotency_key: str | None) -> Any:
        """POST a creation with an ``Idempotency-Key`` (the caller's, else a random one), sent
        again with the same key when its answer may have been lost (``submit``)."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            try:
                return self._json("POST", path, json=body, headers=headers)
            except JobmillClientError as exc:
                if attempt == SUBMIT_ATTEMPTS or exc.status not in RETRY_STATUSES:
                    raise
                time.sleep(SUBMIT_RETRY_DELAY * attempt)
        raise AssertionError("unreachable")

    def link(self, job_id: str, after: Sequence[str]) -> JobDict:
        """The job (PENDING, or waiting for upstream jobs) also runs after ``after``."""
        return self._json("POST", f"/jobs/{job_id}/links", json={"after": list(after)})

    def unlink(self, job_id: str, parent_id: str) -> JobDict:
        """The job no longer runs after ``parent_id``."""
        return self._json("DELETE", f"/jobs/{job_id}/links/{parent_id}")

    def graph(self, job_id: str | None = None) -> JobDict:
        """Jobs connected by dependencies and sub-jobs (to ``job_id``, or all of the user's):
        ``{"jobs", "after", "subjobs", "truncated"}``."""
        params = {"job": job_id} if job_id else {}
        return self._json("GET", "/graph", params=params)

    def render(
        self,
        type: str,
        parameters: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        executor: str | None = None,
        execution_duration: int | None = None,
        log_dir: str | None = None,
        phase: str | None = None,
    ) -> JobDict:
        """A dry run of ``submit``: validated the same way, nothing created. Returns
        ``{"executor", "script", "job_id"}``: the exact script or submit description."""
        body = _job_body(type, parameters, run_id, executor, execution_duration, log_dir, phase)
        return self._json("POST", "/jobs/render", json=body)

    def submit_many(
        self, jobs: Sequence[Mapping[str, Any]], idempotency_key: str | None = None
    ) -> list[str]:
        """Create many jobs (dicts with ``submit``'s keys) in one all-or-nothing request; sent
        again with the same ``Idempotency-Key`` like ``submit``, so a batch the server created
        before its answer was lost is answered, not created twice."""
        body = {"jobs": [_job_body(**dict(job)) for job in jobs]}
        return list(self._create("/jobs/batch", body, idempotency_key)["ids"])

    def get(self, job_id: str) -> JobDict:
        return self._json("GET", f"/jobs/{job_id}")

    def list(
        self,
        phase: str | Sequence[str] | None = None,
        type: str | None = None,
        owner: str | None = None,
        run_id: str | None = None,
        created_after: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        tag: str | None = None,
        id_prefix: str | None = None,
        seq_min: int | None = None,
        seq_max: int | None = None,
    ) -> JobPage:
        """One page of jobs, newest first (``id_prefix``: ids starting so; ``seq_min`` and
        ``seq_max``: sequence numbers within)."""
        phases = [phase] if isinstance(phase, str) else [*phase] if phase else []
        params: dict[str, Any] = {"phase": phases} if phases else {}
        for key, value in (
            ("type", type),
            ("owner", owner),
            ("run_id", run_id),
            ("created_after", created_after),
            ("limit", limit),
            ("cursor", cursor),
            ("tag", tag),
            ("id_prefix", id_prefix),
            ("seq_min", seq_min),
            ("seq_max", seq_max),
        ):
            if value is not None:
                params[key] = value
        body = self._json("GET", "/jobs", params=params)
        return JobPage(body["jobs"], body.get("next_cursor"))

    def iter_jobs(self, **filters: Any) -> Iterator[JobDict]:
        """Every job matching ``filters`` (``list``'s keywords), following the cursors."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.list(cursor=cursor, **filters)
            yield from page.jobs
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def abort(self, job_id: str) -> JobDict:
        return self._json("POST", f"/jobs/{job_id}/abort")

    def run(self, job_id: str) -> JobDict:
        """Queue a PENDING job."""
        return self._json("POST", f"/jobs/{job_id}/run")

    def hold(self, job_id: str) -> JobDict:
        """Keep a QUEUED job from starting (HELD) until ``release``."""
        return self._json("POST", f"/jobs/{job_id}/hold")

    def release(self, job_id: str) -> JobDict:
        """Let a HELD job start again (QUEUED)."""
        return self._json("POST", f"/jobs/{job_id}/release")

    def details(self, job_id: str) -> JobDict:
        """What the job's backend says about it: ``{"id", "phase", "executor", "native_id",
        "details"}``, ``details`` being the backend's own text (``scontrol show job``...)."""
        return self._json("GET", f"/jobs/{job_id}/details")

    def delete(self, job_id: str) -> None:
        self._send("DELETE", f"/api/v1/jobs/{job_id}")

    def events(self, job_id: str, after: int = 0) -> JobList:
        """The job's events numbered above ``after``, oldest first."""
        return self._json("GET", f"/jobs/{job_id}/events", params={"after": after})

    def log(
        self,
        job_id: str,
        stream: str = "stdout",
        offset: int = 0,
        tail: int | None = None,
        limit: int | None = None,
    ) -> LogChunk:
        """Bytes of ``stdout``/``stderr`` from ``offset`` (or the last ``tail`` bytes)."""
        params: dict[str, Any] = {"offset": offset}
        if tail is not None:
            params["tail"] = tail
        if limit is not None:
            params["limit"] = limit
        response = self._send("GET", f"/api/v1/jobs/{job_id}/logs/{stream}", params=params)
        start = int(response.headers.get("X-Log-Offset", offset))
        exists = response.headers.get("X-Log-Exists", "true") == "true"
        return LogChunk(response.content, start + len(response.content), exists)

    def results(self, job_id: str) -> JobList:
        """The job's result files: ``id``, ``size``, ``content_type`` and download ``url``."""
        return self._json("GET", f"/jobs/{job_id}/results")

    def download(self, job_id: str, result_id: str, directory: str | os.PathLike[str]) -> str:
        """Download one result file into ``directory`` (streamed, any size); returns its path.
        The file is named after the result's file name, never a path the server chose."""
        target_dir = os.fspath(directory)
        os.makedirs(target_dir, exist_ok=True)
        path = f"/api/v1/jobs/{quote(job_id, safe='')}/results/{quote(result_id)}"
        with self._http.stream("GET", path) as response:
            if response.status_code >= 400:
                response.read()
                raise _error(response)
            name = os.path.basename(result_id.rstrip("/"))
            if name in ("", ".", ".."):
                name = "result"
            target = os.path.join(target_dir, name)
            with open(target, "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        return target

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll: float = 0.5,
        on_update: Callable[[JobDict], None] | None = None,
    ) -> JobDict:
        """Poll until the job reaches a terminal phase and return it.

        ``on_update`` sees the job after every poll. Raises ``JobmillClientError`` (code
        ``timeout``) if ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job["phase"] in TERMINAL_PHASES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise JobmillClientError(
                    0, "timeout", f"job {job_id} is still {job['phase']} after {timeout} s"
                )
            time.sleep(poll)

    # -- the manager's verbs (docs/workflows.md) ------------------------------------------------

    def edit(
        self, job_id: str, parameters: Mapping[str, Any], version: int | None = None
    ) -> JobDict:
        """Change parameters of a PENDING job; with ``version`` (a job's ``version``), only if
        it has not changed since (else a ``conflict`` error)."""
        return self._json(
            "PATCH",
            f"/jobs/{job_id}",
            json={"parameters": dict(parameters)},
            headers=_if_match(version),
        )

    def reset(self, job_id: str, version: int | None = None) -> JobDict:
        """Put a job in ERROR or ABORTED back to PENDING."""
        return self._json("POST", f"/jobs/{job_id}/reset", headers=_if_match(version))

    def clone(self, job_id: str, phase: str = "PENDING") -> JobDict:
        """A new job with the same type, parameters and tags (PENDING, or ``"QUEUED"``)."""
        return self._json("POST", f"/jobs/{job_id}/clone", json={"phase": phase})

    def tags(self, job_id: str) -> tuple[str, ...]:
        """The job's tags, sorted."""
        return tuple(self._json("GET", f"/jobs/{job_id}/tags"))

    def add_tag(self, job_id: str, tag: str, version: int | None = None) -> JobDict:
        """Tag a job (a no-op when it has the tag)."""
        path = f"/jobs/{job_id}/tags/{quote(tag, safe='')}"
        return self._json("PUT", path, headers=_if_match(version))

    def remove_tag(self, job_id: str, tag: str, version: int | None = None) -> JobDict:
        path = f"/jobs/{job_id}/tags/{quote(tag, safe='')}"
        return self._json("DELETE", path, headers=_if_match(version))

    # -- job types and health -----------------------------------------------------------------

    def jobtypes(self) -> JobList:
        return self._json("GET", "/jobtypes")

    def jobtype(self, name: str) -> JobDict:
        return self._json("GET", f"/jobtypes/{name}")

    def health(self) -> JobDict:
        return self._send("GET", "/healthz").json()

    # -- rules --------------------------------------------------------------------------------

    def rules(self) -> JobList:
        return self._json("GET", "/rules")

    def rule(self, name: str) -> JobDict:
        return self._json("GET", f"/rules/{name}")

    def rule_firings(self, name: str, limit: int = 100) -> JobList:
        return self._json("GET", f"/rules/{name}/firings", params={"limit": limit})

    def enable_rule(self, name: str) -> JobDict:
        """Switch a rule on (administrators only)."""
        return self._json("POST", f"/rules/{name}/enable")

    def disable_rule(self, name: str) -> JobDict:
        """Switch a rule off (administrators only)."""
        return self._json("POST", f"/rules/{name}/disable")

    # -- ARP runs -------------------------------------------------------------------------------

    def run_start(
        self, experiment: str, run: int, parameters: Mapping[str, Any] | None = None
    ) -> JobDict:
        """Tell the ARP face that a run of an experiment started (replays are harmless)."""
        return self._run_edge(experiment, run, "start", parameters)

    def run_end(
        self, experiment: str, run: int, parameters: Mapping[str, Any] | None = None
    ) -> JobDict:
        """Tell the ARP face that a run ended: ``{"run", "jobs", "errors"}``, the jobs autorun
        created for it."""
        return self._run_edge(experiment, run, "end", parameters)

    def _run_edge(
        self, experiment: str, run: int, edge: str, parameters: Mapping[str, Any] | None
    ) -> JobDict:
        body = {"parameters": dict(parameters)} if parameters else {}
        path = f"/arp/experiments/{quote(experiment, safe='')}/runs/{int(run)}/{edge}"
        return self._json("POST", path, json=body)

    # -- PipelineJobs (docs/pipelinejobs.md) ---------------------------------------------------

    def pipeline_create(
        self, type: str, parameters: Mapping[str, Any] | None = None, **fields: Any
    ) -> JobDict:
        """Create a PipelineJob: ``{uuid, state, token, callback, pipeline, job}`` (the update
        token is shown only here). ``fields``: ``executor`` ("external"), ``data``, ``run_id``..."""
        body = {"type": type, "parameters": dict(parameters or {}), **fields}
        return self._json("POST", "/pipelinejobs", json=body)

    def pipeline_event(
        self,
        job_id: str,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        event_id: str | None = None,
    ) -> JobDict:
        """Send a named event to a PipelineJob: ``{uuid, state, last_event, event,
        duplicate}``. ``token`` is the job's update token (else the client's bearer token
        authorises it); ``event_id`` names the delivery, so a retry is recorded once."""
        body: dict[str, Any] = {"uuid": job_id, "name": name}
        if data is not None:
            body["data"] = dict(data)
        if token is not None:
            body["token"] = token
        headers = {"Idempotency-Key": event_id} if event_id else {}
        return self._json("POST", "/pipelinejobs/events", json=body, headers=headers)

    def pipeline_status(self, job_id: str) -> JobDict:
        """A PipelineJob's state, last event, phase and curation status."""
        return self._json("GET", f"/pipelinejobs/{quote(job_id, safe='')}")

    def pipeline_history(self, job_id: str) -> JobList:
        """A PipelineJob's history, oldest first: ``{date, name, data, uuid, state, ...}``."""
        path = f"/pipelinejobs/{quote(job_id, safe='')}/history"
        return self._json("GET", path)["history"]

    def pipeline_token(self, job_id: str, *, revoke: bool = False) -> JobDict:
        """A new update token for a PipelineJob (the old one stops working at once), with its
        callback URL; with ``revoke``, no update token at all (events then need a bearer)."""
        path = f"/pipelinejobs/{quote(job_id, safe='')}/token"
        return self._json("DELETE" if revoke else "POST", path)

    # -- inside a job ---------------------------------------------------------------------------

    def report(self, /, counters: Mapping[str, Any] | None = None, **fields: Any) -> JobDict:
        """Post progress for the job this process runs in; returns the merged report.

        Counters merge by name; other fields replace the same top-level keys. The URL and the
        job's token come from ``JOBMILL_REPORT_URL`` and ``JOBMILL_TOKEN``.
        """
        url, token = os.environ.get("JOBMILL_REPORT_URL"), os.environ.get("JOBMILL_TOKEN")
        if not url or not token:
            raise JobmillClientError(
                0,
                "not_in_job",
                "JOBMILL_REPORT_URL and JOBMILL_TOKEN are not set: report works only inside a job",
            )
        payload = dict(fields)
        if counters is not None:
            payload["counters"] = dict(counters)
        auth = {"Authorization": f"Bearer {token}"}
        response = self._send("POST", url, json=payload, headers=auth)
        return response.json()["report"]


def report(counters: Mapping[str, Any] | None = None, **fields: Any) -> JobDict:
    """``Client().report(...)``: post progress from inside a job in one call."""
    with Client() as client:
        return client.report(counters, **fields)


def _if_match(version: int | None) -> dict[str, str]:
    return {} if version is None else {"If-Match": f'"{version}"'}


def _job_body(
    type: str,
    parameters: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    executor: str | None = None,
    execution_duration: int | None = None,
    log_dir: str | None = None,
    phase: str | None = None,
    after: Sequence[str] | None = None,
    on_parent_failure: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type, "parameters": dict(parameters or {})}
    if after:
        body["after"] = list(after)
    for key, value in (
        ("on_parent_failure", on_parent_failure),
        ("run_id", run_id),
        ("executor", executor),
        ("execution_duration", execution_duration),
        ("log_dir", log_dir),
        ("phase", phase),
    ):
        if value is not None:
            body[key] = value
    return body
