#!/usr/bin/env python3
"""OCPS demo client: submits four Alert Production (``ap``) jobs and follows them to the end.

It plays the OCPS CSC the way the OCPS prototype client did, against jobmill's OCPS face::

    jobmill serve --jobtypes examples/jobtypes          # in one terminal
    python examples/ocps/client.py --config examples/ocps/config.yaml

The server address comes from ``API_PROTOCOL``, ``API_DOMAIN``, ``API_PORT`` and ``API_BASEPATH``
(defaults ``http``, ``localhost``, ``8080``, ``/api/v1``). jobmill needs a token: the one in
``JOBMILL_API_TOKEN``, else (for the user who started the server) the local credential that
``jobmill serve`` wrote to ``~/.config/jobmill/token`` (``JOBMILL_TOKEN_FILE``).

Images come from the Butler registry named by ``data.db`` (an SQLite file with a ``raw`` table)
when it exists; otherwise four demo images are used. A relative ``job.output_dir`` is made
absolute against the directory the client runs in; a relative ``job.log_dir`` is sent as it is,
and the server keeps the logs under its log root for the caller (``JOBMILL_LOG_ROOTS``: by
default ``<JOBMILL_HOME>/logs/<user>``; an absolute ``log_dir`` must lie under such a root).

Standard library and PyYAML only. Exits 0 when all four jobs completed successfully.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

STATUS_OK = "ok"
DONE_STATES = ("completed", "error", "removed", "held", "suspended", "unknown")
N_JOBS = 4
DEMO_IMAGES = [
    {"visit_id": 411371, "ccd": 56},
    {"visit_id": 411420, "ccd": 12},
    {"visit_id": 419802, "ccd": 5},
    {"visit_id": 421604, "ccd": 35},
]


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def api_base_url() -> str:
    basepath = "/" + _env("API_BASEPATH", "/api/v1").strip("/")
    return "{}://{}:{}{}".format(
        _env("API_PROTOCOL", "http"), _env("API_DOMAIN", "localhost"), _env("API_PORT", "8080"),
        basepath.rstrip("/"),
    )


def local_token() -> str | None:
    """The local credential ``jobmill serve`` wrote for the user who started it, if any."""
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    path = os.environ.get("JOBMILL_TOKEN_FILE") or os.path.join(config, "jobmill", "token")
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip() or None
    except OSError:
        return None


class Unreachable(Exception):
    """The OCPS service does not answer at the configured address."""


def call(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request; an error answer from the server is returned like any other envelope."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token := os.environ.get("JOBMILL_API_TOKEN") or local_token():
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            return json.loads(error.read())
        except ValueError:
            return {"status": "error", "msg": f"HTTP {error.code} {error.reason}"}
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise Unreachable(
            f"cannot reach the OCPS service at {url}: {reason}\n"
            "Start it (jobmill serve --jobtypes examples/jobtypes), or point this client at it "
            "with API_PROTOCOL, API_DOMAIN, API_PORT and API_BASEPATH "
            "(e.g. API_PORT=8081 for 'make run PORT=8081')."
        ) from None


def get_job_status(base: str, job_id: str) -> dict[str, Any]:
    return call("GET", f"{base}/job?" + urllib.parse.urlencode({"id": job_id}))


def post_job_ap(base: str, conf: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    return call(
        "POST",
        f"{base}/job",
        {
            "type": "ap",
            "env": {
                "AP_JOB_OUTPUT_DIR": conf["job"]["output_dir"],
                "AP_VISIT_ID": image["visit_id"],
                "AP_CCD_NUM": image["ccd"],
                "AP_REPO": conf["data"]["repo"],
                "AP_TEMPLATE": conf["data"]["template"],
                "AP_CALIB": conf["data"]["calib"],
                "AP_FILTER": conf["data"]["filter"],
            },
            "log_dir": conf["job"]["log_dir"],
        },
    )


def query_butler_repo_for_filter(conf: dict[str, Any]) -> list[dict[str, Any]]:
    """Images of the configured filter from the registry, or the demo images without one."""
    db_file = conf["data"].get("db")
    if not db_file or not Path(db_file).is_file():
        print(f"No registry at {db_file!r}: using {len(DEMO_IMAGES)} demo images")
        return [dict(image, filter=conf["data"]["filter"]) for image in DEMO_IMAGES]
    db = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT id, visit, ccd FROM raw WHERE filter=?", (conf["data"]["filter"],)
        ).fetchall()
    finally:
        db.close()
    images = [{"row_id": r[0], "visit_id": r[1], "ccd": r[2]} for r in rows]
    return [dict(image, filter=conf["data"]["filter"]) for image in images]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Submit four ap jobs to the OCPS Job Manager.")
    parser.add_argument(
        "--config", default=str(Path(__file__).with_name("config.yaml")), help="client config"
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after seconds")
    args = parser.parse_args(argv)

    with open(args.config, encoding="utf-8") as handle:
        conf = yaml.safe_load(handle)
    for key in ("output_dir",):
        conf["job"][key] = os.path.abspath(conf["job"][key])
    base = api_base_url()
    basepath = urllib.parse.urlsplit(base).path

    data = query_butler_repo_for_filter(conf)
    if not data:
        print(f"No images with filter {conf['data']['filter']!r} in the registry")
        return 1
    images = random.sample(data, min(N_JOBS, len(data)))
    job_ids = []
    for image in images:
        print(f"Image from selected data: \n{json.dumps(image, indent=2)}")
        response = post_job_ap(base, conf, image)
        print(f"POST {basepath}/job : \n{json.dumps(response, indent=2)}")
        if response.get("status") != STATUS_OK:
            return 1
        job_ids.append(response["job_id"])

    final: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + args.timeout
    for job_id in job_ids:
        print(f"Polling status of job: GET {basepath}/job?id={job_id} ...", end="")
        last_state = None
        while True:
            response = get_job_status(base, job_id)
            job = response.get("job") or {}
            state = job.get("state")
            print(f" {state}" if state != last_state else ".", end="", flush=True)
            last_state = state
            if response.get("status") != STATUS_OK or state in DONE_STATES:
                break
            if time.monotonic() > deadline:
                print(" timed out")
                break
            time.sleep(args.interval)
        print(f"\nJob Status ({job_id}): \n{json.dumps(response, indent=2)}")
        final[job_id] = response

    ok = all(
        r.get("status") == STATUS_OK and (r.get("job") or {}).get("phase") == "completed"
        for r in final.values()
    )
    print(f"All {len(final)} jobs completed" if ok else "Some jobs did not complete")
    return 0 if ok else 1


def run() -> int:
    try:
        return main()
    except Unreachable as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
