"""Runs one command of the OCPS successor service's ``PUT /job``, as its Kubernetes job did.

In the job's working directory: ``$JOB_OUTPUT_DIR`` is ``out/``; with a repository
(``$SRC_GIT_URL``, ``$GIT_COMMIT_REF``) it is cloned into ``src/`` (``$JOB_SOURCE_DIR``);
``$JOB_ID`` is the job id (32 hex digits); the request's ``environment`` is set; then
``bash -c "$UWS_COMMAND"`` replaces this process (its exit code is the job's).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def main() -> int:
    work = Path.cwd()
    env = dict(os.environ)
    env["JOB_ID"] = env.get("JOBMILL_JOB_ID", "").replace("-", "")
    out = work / "out"
    out.mkdir(exist_ok=True)
    env["JOB_OUTPUT_DIR"] = str(out)
    url = env.pop("SRC_GIT_URL", "")
    ref = env.pop("GIT_COMMIT_REF", "")
    if url:
        source = work / "src"
        clone = ["git", "clone", "--quiet", "--", url, str(source)]
        subprocess.run(clone, check=True)  # noqa: S603 (git from PATH, no shell)
        if ref:
            checkout = ["git", "-C", str(source), "checkout", "--quiet", ref]
            subprocess.run(checkout, check=True)  # noqa: S603
        env.update(JOB_SOURCE_DIR=str(source), SRC_GIT_URL=url, GIT_COMMIT_REF=ref)
    for item in json.loads(env.pop("UWS_ENVIRONMENT", "") or "[]"):
        name = str(item.get("name", ""))
        if not NAME.match(name) or name.startswith("JOBMILL_"):
            print(f"environment: '{name}' cannot be set", file=sys.stderr)
            return 2
        env[name] = str(item.get("value", ""))
    command = env.pop("UWS_COMMAND")
    os.execvpe("bash", ["bash", "-c", command], env)  # noqa: S606, S607 (the job's command)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
