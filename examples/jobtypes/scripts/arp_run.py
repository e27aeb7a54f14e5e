"""Tell jobmill's ARP face that a run started or ended: ``arp_run.py start|end EXPERIMENT RUN``.

What ``jobmill runs start|end`` does, with the standard library only, for the job type
``arp-run`` (``arp_run.yaml``) that the example rules in ``arp.rules.yaml`` create when a run's
directory appears. It posts to ``$JOBMILL_URL`` (every job gets it) with ``$JOBMILL_API_TOKEN``,
else the local credential of the user it runs as (``$JOBMILL_TOKEN_FILE``, else
``~/.config/jobmill/token``), and prints jobmill's answer.
"""

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def token() -> str:
    explicit = os.environ.get("JOBMILL_API_TOKEN")
    if explicit:
        return explicit
    path = os.environ.get("JOBMILL_TOKEN_FILE") or str(Path.home() / ".config/jobmill/token")
    return Path(path).expanduser().read_text(encoding="utf-8").strip()


def main() -> int:
    edge, experiment, run = sys.argv[1:4]
    if edge not in ("start", "end"):
        print(f"usage: {sys.argv[0]} start|end EXPERIMENT RUN", file=sys.stderr)
        return 2
    base = os.environ.get("JOBMILL_URL", "http://127.0.0.1:8080").rstrip("/")
    name = urllib.parse.quote(experiment, safe="")
    url = f"{base}/api/v1/arp/experiments/{name}/runs/{int(run)}/{edge}"
    request = urllib.request.Request(  # noqa: S310 (JOBMILL_URL: the server's http URL)
        url,
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token()}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            print(json.dumps(json.load(answer), indent=2))
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read().decode('utf-8', 'replace')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
