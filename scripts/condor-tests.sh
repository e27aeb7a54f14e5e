#!/usr/bin/env bash
# Run jobmill's HTCondor tests (or its HTCondor benchmark) as the user HTCondor takes jobs from.
#
#   sudo bash scripts/condor-tests.sh [PYTEST_ARGS...]      the HTCondor tests (make test-condor)
#   sudo bash scripts/condor-tests.sh --bench [BENCH_ARGS...] bench/bench_htcondor.py
#
# HTCondor refuses jobs owned by root, so the tests cannot run in the main (root) pytest run, where
# they skip. This script, as root:
#   1. builds a venv with /usr/bin/python3 at $CONDOR_VENV, which $JOBUSER can read (the venv is
#      reused while its stamp matches pyproject.toml and the htcondor version);
#   2. copies the checkout to $CONDOR_SRC (a checkout under /root is not readable by $JOBUSER) and
#      installs it there, editable, with the dev extras and the htcondor bindings;
#   3. runs pytest (or the benchmark) from that copy as $JOBUSER, with the HTCondor client
#      configuration that scripts/services/start-services.sh wrote for it.
# Needs the services up (make services-up, or at least HTCondor). With CI=true a missing schedd
# fails the tests instead of skipping them. JOBMILL_TEST_DATABASE_URL is passed on when set.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONDOR_VENV=${CONDOR_VENV:-/opt/jobmill-condor-venv}
CONDOR_SRC=${CONDOR_SRC:-/tmp/jobmill-condor-src}
JOBUSER=${JOBUSER:-jobmill}
JOBHOME=$(getent passwd "$JOBUSER" | cut -d: -f6 || true)
CONDOR_CONFIG_FILE=${JOBHOME:-/home/$JOBUSER}/.condor/condor_config
# The bindings: pyproject.toml's [htcondor] extra when it exists, else this pin (HTCONDOR_PIN
# overrides both, e.g. HTCONDOR_PIN=htcondor==23.10.29 CONDOR_VENV=/opt/jobmill-condor-venv-23).
HTCONDOR_DEFAULT=htcondor==25.14.1
CONDOR_TESTS=${CONDOR_TESTS:-tests/integration/test_htcondor.py tests/contract/test_htcondor_contract.py}
say() { echo "[condor-tests] $*"; }
die() { echo "[condor-tests] $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it builds $CONDOR_VENV and switches to $JOBUSER): sudo $0"
[ -n "$JOBHOME" ] || die "no user '$JOBUSER': start HTCondor first (make services-up, see scripts/services/README.md)"
[ -r "$CONDOR_CONFIG_FILE" ] || die "no $CONDOR_CONFIG_FILE: start HTCondor first (make services-up)"
[ -x /usr/bin/python3 ] || die "/usr/bin/python3 is missing (apt-get install python3 python3-venv)"
case $CONDOR_SRC in /tmp/?*|/var/tmp/?*|/opt/?*) ;; *) die "CONDOR_SRC=$CONDOR_SRC: use a directory under /tmp, /var/tmp or /opt";; esac

MODE=test
if [ "${1:-}" = --bench ]; then MODE=bench; shift; fi

# -- 1. the venv --------------------------------------------------------------------------------
extra=$(/usr/bin/python3 - "$REPO/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as handle:
    extras = tomllib.load(handle)["project"].get("optional-dependencies", {})
print("yes" if "htcondor" in extras else "no")
PY
)
if [ -n "${HTCONDOR_PIN:-}" ]; then SPEC="[dev]"; PINS=("$HTCONDOR_PIN")
elif [ "$extra" = yes ]; then SPEC="[dev,htcondor]"; PINS=()
else SPEC="[dev]"; PINS=("$HTCONDOR_DEFAULT"); fi
stamp=$( { cat "$REPO/pyproject.toml"; echo "$SPEC ${PINS[*]:-} $CONDOR_SRC"; /usr/bin/python3 -V; } | sha256sum | cut -c1-32)

# -- 2. the readable copy (fresh every run: the tests see the working tree as it is) -------------
t=$SECONDS
rm -rf "$CONDOR_SRC"
mkdir -p "$CONDOR_SRC"
tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude='__pycache__' --exclude=./.mypy_cache \
  --exclude=./.pytest_cache --exclude=./.ruff_cache --exclude='*.egg-info' --exclude=./build \
  -cf - . | tar -C "$CONDOR_SRC" -xf -

if [ -f "$CONDOR_VENV/.jobmill-stamp" ] && [ "$(cat "$CONDOR_VENV/.jobmill-stamp")" = "$stamp" ] \
    && "$CONDOR_VENV/bin/python" -c 'import htcondor2, jobmill, pytest' 2>/dev/null; then
  say "reusing $CONDOR_VENV"
else
  say "building $CONDOR_VENV with $(/usr/bin/python3 -V) (jobmill$SPEC ${PINS[*]:-})"
  rm -rf "$CONDOR_VENV"
  /usr/bin/python3 -m venv "$CONDOR_VENV"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$CONDOR_VENV/bin/python" -m pip install -q -e "$CONDOR_SRC$SPEC" "${PINS[@]}"
  echo "$stamp" >"$CONDOR_VENV/.jobmill-stamp"
fi
chmod -R a+rX "$CONDOR_VENV" "$CONDOR_SRC"
say "venv and source ready in $((SECONDS - t)) s ($("$CONDOR_VENV/bin/python" -c 'import htcondor2; print(htcondor2.version().split()[1])' 2>/dev/null) bindings)"

# -- 3. run as the job user -----------------------------------------------------------------------
RUN_ENV=(HOME="$JOBHOME" USER="$JOBUSER" LOGNAME="$JOBUSER" CONDOR_CONFIG="$CONDOR_CONFIG_FILE"
  PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 CI="${CI:-}")
[ -z "${JOBMILL_TEST_DATABASE_URL:-}" ] || RUN_ENV+=(JOBMILL_TEST_DATABASE_URL="$JOBMILL_TEST_DATABASE_URL")
for var in JOBMILL_CONDOR_SCHEDD JOBMILL_CONDOR_COLLECTOR; do
  [ -z "${!var:-}" ] || RUN_ENV+=("$var=${!var}")
done
cd "$CONDOR_SRC"
if [ "$MODE" = bench ]; then
  say "bench/bench_htcondor.py $* (as $JOBUSER)"
  exec runuser -u "$JOBUSER" -- env -i "${RUN_ENV[@]}" "$CONDOR_VENV/bin/python" bench/bench_htcondor.py "$@"
fi
read -ra TESTS <<<"$CONDOR_TESTS"
say "pytest ${TESTS[*]} $* (as $JOBUSER, CI=${CI:-})"
exec runuser -u "$JOBUSER" -- env -i "${RUN_ENV[@]}" \
  "$CONDOR_VENV/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}" "$@"
