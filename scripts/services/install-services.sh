#!/usr/bin/env bash
# jobmill CI / dev services, step 1 of 4 (install, start, smoke, stop; see README.md next to this file).
# Install real Slurm (+slurmdbd/MariaDB), PostgreSQL, Chromium and an HTCondor (minicondor) chroot.
# Debian 12 (bookworm), root, no systemd. Idempotent: a second run only re-checks the packages.
# HTCondor has no bookworm package, so minicondor comes from Debian 13 (trixie) in a debootstrap chroot.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin   # root tools (chroot, mount, runuser...) even from a non-login root shell
export DEBIAN_FRONTEND=noninteractive
CONDOR_ROOT=${CONDOR_ROOT:-/opt/condor-trixie}
CONDOR_SUITE=${CONDOR_SUITE:-trixie}
LOG=${INSTALL_LOG:-/var/log/ci-install.log}; : >"$LOG"
APT=(apt-get -y -qq -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
t0=$SECONDS
# quiet CMD...: run with output to $LOG; on failure show the end of it
quiet() { "$@" >>"$LOG" 2>&1 || { echo "[install] FAILED: $*" >&2; tail -n 40 "$LOG" >&2; return 1; }; }

# Package postinsts must not start daemons (start-services.sh does that); add a policy-rc.d only if the image has none.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi

# The Debian mirror this machine's apt already uses for its own release (override with DEBIAN_MIRROR).
CODENAME=$(. /etc/os-release && echo "$VERSION_CODENAME")
MIRROR=${DEBIAN_MIRROR:-$(apt-get indextargets --no-release-info --format '$(SITE) $(RELEASE)' \
                          | awk -v c="$CODENAME" '$2 == c { print $1; exit }')}
[ -n "$MIRROR" ] || { echo "[install] no '$CODENAME' source in apt; set DEBIAN_MIRROR" >&2; exit 1; }

# Host packages: Slurm + munge, MariaDB for slurmdbd, PostgreSQL, debootstrap, Chromium (with its fonts) for Playwright.
# SKIP_APT_UPDATE=1: the caller has just run apt-get update (jobmill's .ci/run does), so do not repeat it.
[ "${SKIP_APT_UPDATE:-0}" = 1 ] || quiet "${APT[@]}" update
quiet "${APT[@]}" install --no-install-recommends \
  slurm-wlm slurmdbd munge mariadb-server postgresql debootstrap bc graphviz
quiet "${APT[@]}" install chromium chromium-driver
echo "[install] host packages: $((SECONDS - t0))s"

# HTCondor chroot, built once in a scratch dir and moved into place only when complete.
if [ ! -x "$CONDOR_ROOT/usr/sbin/condor_master" ]; then
  [ ! -e "$CONDOR_ROOT" ] || { echo "[install] $CONDOR_ROOT exists but has no condor_master; remove it" >&2; exit 1; }
  t1=$SECONDS; T=$CONDOR_ROOT.partial
  findmnt -rn -o TARGET | { grep "^$T/" || true; } | sort -r | while read -r m; do umount "$m"; done   # interrupted run
  rm -rf "$T"
  quiet debootstrap --variant=minbase "$CONDOR_SUITE" "$T" "$MIRROR"
  printf '#!/bin/sh\nexit 101\n' >"$T/usr/sbin/policy-rc.d"; chmod +x "$T/usr/sbin/policy-rc.d"
  quiet chroot "$T" "${APT[@]}" update
  quiet chroot "$T" "${APT[@]}" install --no-install-recommends minicondor
  quiet chroot "$T" apt-get clean
  mv "$T" "$CONDOR_ROOT"
  echo "[install] $CONDOR_SUITE chroot + minicondor in $CONDOR_ROOT: $((SECONDS - t1))s"
fi
# What HTCondor jobs run with inside the chroot: python3 and curl (job scripts and progress reports).
if ! chroot "$CONDOR_ROOT" dpkg -s python3 curl >/dev/null 2>&1; then
  t2=$SECONDS
  quiet chroot "$CONDOR_ROOT" "${APT[@]}" update
  quiet chroot "$CONDOR_ROOT" "${APT[@]}" install --no-install-recommends python3 curl ca-certificates
  quiet chroot "$CONDOR_ROOT" apt-get clean
  echo "[install] python3 + curl in the chroot: $((SECONDS - t2))s"
fi
echo "[install] done in $((SECONDS - t0))s (log: $LOG)"
