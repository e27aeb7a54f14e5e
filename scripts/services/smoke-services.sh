#!/usr/bin/env bash
# jobmill CI / dev services, step 3 of 4, optional (see README.md next to this file).
# Smoke-check what start-services.sh started: a Slurm job (+ sacct / sacct --json), PostgreSQL, an HTCondor job
# submitted as $JOBUSER through the Python bindings, and a Playwright screenshot taken with Debian's Chromium.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin   # root tools (chroot, mount, runuser...) even from a non-login root shell
JOBUSER=${JOBUSER:-jobmill}
PGPORT=${PGPORT:-5433}; PGDATABASE=${PGDATABASE:-jobmill_test}
VENV=${SMOKE_VENV:-/opt/ci-smoke-venv}   # made with /usr/bin/python3 so that $JOBUSER can run it
W=${SMOKE_DIR:-/tmp/ci-smoke}            # under /tmp: the HTCondor chroot sees it at the same path
JH=$(getent passwd "$JOBUSER" | cut -d: -f6)
# Which services to check: any of "slurm postgres condor chromium" (same variable as start-services.sh; default all).
JOBMILL_SERVICES=${JOBMILL_SERVICES:-slurm postgres condor chromium}
read -ra SERVICES <<<"${JOBMILL_SERVICES//,/ }"
[ "${#SERVICES[@]}" -gt 0 ] || { echo "[smoke] JOBMILL_SERVICES names no service" >&2; exit 2; }
for s in "${SERVICES[@]}"; do case $s in slurm|postgres|condor|chromium) ;;
  *) echo "[smoke] unknown service '$s' in JOBMILL_SERVICES (known: slurm postgres condor chromium)" >&2; exit 2;; esac; done
want() { local s; for s in "${SERVICES[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
rm -rf "$W"; mkdir -p "$W"; chmod 1777 "$W"; cd "$W"
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
T0=$(date +%s%N)

# ---- slurm (JOBMILL_SERVICES); blocks are not indented, so that their here-documents stay as they are.
if want slurm; then
# Slurm: submit a trivial job and poll squeue --json until COMPLETED (22.05 ignores -j there: filter here).
t=$(date +%s%N)
id=$(sbatch --parsable -o "$W/slurm-%j.out" --wrap 'echo hello from slurm')
slurm_state() { squeue --json | /usr/bin/python3 -c 'import json, sys
print(next((j["job_state"] for j in json.load(sys.stdin)["jobs"] if j["job_id"] == int(sys.argv[1])), "GONE"))' "$id"; }
for _ in $(seq 600); do
  s=$(slurm_state || echo ERROR); case $s in ERROR|PENDING|CONFIGURING|RUNNING|COMPLETING) sleep 0.1;; *) break;; esac
done
[ "$s" = COMPLETED ] || { echo "FAIL: slurm job $id ended $s" >&2; exit 1; }
grep -qx 'hello from slurm' "$W/slurm-$id.out" || { echo "FAIL: no output in $W/slurm-$id.out" >&2; exit 1; }
echo "[smoke] slurm job $id COMPLETED (squeue --json): $(ms "$t") ms"

# Accounting: text sacct (right exit codes) and, with slurmdbd, sacct --json (its exit codes are unreliable).
t=$(date +%s%N); SACCT=(sacct); DBD=yes
grep -q '^AccountingStorageType=accounting_storage/slurmdbd' /etc/slurm/slurm.conf || { SACCT=(sacct -c); DBD=; }
for _ in $(seq 300); do
  a=$("${SACCT[@]}" -n -X -P -j "$id" -o State,ExitCode 2>/dev/null || true); [ "$a" = "COMPLETED|0:0" ] && break; sleep 0.1; done
[ "$a" = "COMPLETED|0:0" ] || { echo "FAIL: ${SACCT[*]} says '$a'" >&2; exit 1; }
[ -z "$DBD" ] || sacct --json -j "$id" | /usr/bin/python3 -c 'import json, sys
jobs = json.load(sys.stdin)["jobs"]; assert [j["state"]["current"] for j in jobs] == ["COMPLETED"], jobs'
echo "[smoke] ${SACCT[*]}: COMPLETED|0:0${DBD:+, sacct --json: COMPLETED}: $(ms "$t") ms"
fi   # slurm

# PostgreSQL: connect, write, read.
if want postgres; then
t=$(date +%s%N)
r=$(psql "postgresql://postgres@127.0.0.1:$PGPORT/$PGDATABASE" -v ON_ERROR_STOP=1 -Atq \
  -c 'CREATE TEMP TABLE t (x int)' -c 'INSERT INTO t VALUES (41)' -c 'SELECT x + 1 FROM t')
[ "$r" = 42 ] || { echo "FAIL: psql returned '$r'" >&2; exit 1; }
echo "[smoke] psql $PGDATABASE: $(ms "$t") ms"
fi   # postgres

# Client venv (system Python, readable by $JOBUSER) with the HTCondor bindings and Playwright.
if want condor || want chromium; then
t=$(date +%s%N)
[ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
"$VENV/bin/pip" install -q htcondor playwright
chmod -R a+rX "$VENV"
echo "[smoke] venv $VENV: $(ms "$t") ms"
fi

# HTCondor: submit /bin/echo as $JOBUSER via htcondor2, wait until it leaves the queue, check history + output.
if want condor; then
t=$(date +%s%N)
runuser -u "$JOBUSER" -- env HOME="$JH" CONDOR_CONFIG="$JH/.condor/condor_config" "$VENV/bin/python" - "$W" <<'PY'
import sys, time
import htcondor2 as htcondor
w = sys.argv[1]
schedd = htcondor.Schedd()
cid = schedd.submit(htcondor.Submit({
    "executable": "/bin/echo", "arguments": "hello from condor", "initialdir": w,
    "output": "condor.out", "error": "condor.err", "log": "condor.log", "should_transfer_files": "NO"})).cluster()
deadline = time.time() + 120
while (q := schedd.query(f"ClusterId == {cid}", ["JobStatus", "HoldReason"])) and time.time() < deadline:
    assert q[0]["JobStatus"] != 5, f"job held: {q[0].get('HoldReason')}"
    time.sleep(0.1)
assert not q, "condor job did not finish in 120 s"
h = list(schedd.history(f"ClusterId == {cid}", ["JobStatus", "ExitCode", "Owner"], match=1))
assert h and h[0]["JobStatus"] == 4 and h[0]["ExitCode"] == 0, h
assert open(f"{w}/condor.out").read() == "hello from condor\n"
print(f"[smoke] condor job {cid} completed as {h[0]['Owner']} (htcondor {htcondor.version().split()[1]})", end=": ")
PY
echo "$(ms "$t") ms"
fi   # condor

# Playwright: headless Debian Chromium screenshots a page served on 127.0.0.1.
if want chromium; then
t=$(date +%s%N)
"$VENV/bin/python" - "$W" <<'PY'
import functools, http.server, sys, threading
from playwright.sync_api import sync_playwright
w = sys.argv[1]
open(f"{w}/index.html", "w").write("<title>smoke</title><h1 id=h style='color:green'>jobmill CI smoke</h1>")
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=w))
threading.Thread(target=srv.serve_forever, daemon=True).start()
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
    page = browser.new_page(viewport={"width": 480, "height": 160})
    page.goto(f"http://127.0.0.1:{srv.server_port}/index.html")
    page.screenshot(path=f"{w}/shot.png")
    text, version = page.text_content("#h"), browser.version
    browser.close()
srv.shutdown()
png = open(f"{w}/shot.png", "rb").read()
assert text == "jobmill CI smoke" and png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000, (text, len(png))
print(f"[smoke] chromium {version} screenshot {w}/shot.png ({len(png)} bytes)", end=": ")
PY
echo "$(ms "$t") ms"
fi   # chromium

echo "[smoke] all OK (${SERVICES[*]}) in $(ms "$T0") ms"
