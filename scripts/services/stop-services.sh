#!/usr/bin/env bash
# jobmill CI / dev services, step 4 of 4 (see README.md next to this file).
# Stop everything start-services.sh started, by recorded PID (never by name), and unmount the HTCondor chroot.
# Safe at any time (nothing started, half started, run twice). Exit status 1 if something could not be stopped.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin   # root tools (chroot, mount, runuser...) even from a non-login root shell
PIDDIR=${PIDDIR:-/run/ci-services}
R=$(realpath -m "$(cat "$PIDDIR/condor_root" 2>/dev/null || echo "${CONDOR_ROOT:-/opt/condor-trixie}")")  # chroot last used
rc=0; T0=$(date +%s%N)

# alive PID: true while PID runs (a zombie that PID 1 has not reaped yet counts as gone)
alive() { grep -q '^State:[[:space:]]*[^Z[:space:]]' "/proc/$1/status" 2>/dev/null; }
# pid_of NAME: the recorded PID, only if that process is still NAME (guards against stale files and reused PIDs)
pid_of() { local p; p=$(cat "$PIDDIR/$1.pid" 2>/dev/null) && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$1" ] && echo "$p"; }
gone() { local p; for p; do alive "$p" && return 1; done; return 0; }
# kill_wait SIGNAL PID...: signal the PIDs, wait up to 30 s for them to exit, then SIGKILL; fails if one survives
kill_wait() { local sig=$1; shift; kill -s "$sig" "$@" 2>/dev/null || true
  for _ in $(seq 300); do gone "$@" && return 0; sleep 0.1; done
  echo "[stop] SIGKILL $*" >&2; kill -s KILL "$@" 2>/dev/null || true; sleep 0.5
  gone "$@" || { echo "[stop] still running after SIGKILL: $*" >&2; return 1; }; }
# stop NAME [SIGNAL [PIDFILE]]: stop the daemon recorded as NAME, forget it, remove the PIDFILE it leaves behind
stop() { local p t; t=$(date +%s%N)
  if p=$(pid_of "$1"); then
    if kill_wait "${2:-TERM}" "$p"; then echo "[stop] $1 ($p): $(( ($(date +%s%N) - t) / 1000000 )) ms"; [ -z "${3:-}" ] || rm -f "$3"
    else rc=1; fi
  fi
  rm -f "$PIDDIR/$1.pid"; }

# Cancel leftover jobs first, so no job step or starter outlives its daemon.
if pid_of slurmctld >/dev/null && ids=$(squeue -h -o %A 2>/dev/null) && [ -n "$ids" ]; then
  scancel $ids 2>/dev/null || true
  for _ in $(seq 100); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.1; done
fi
if pid_of condor_master >/dev/null; then chroot "$R" condor_rm -all >/dev/null 2>&1 || true; fi

# HTCondor: SIGQUIT = fast shutdown; the master takes its schedd/startd/collector/negotiator with it.
stop condor_master QUIT
# Anything still rooted in the chroot was started by us (orphans of a killed master): stop it by PID.
left=$(for p in /proc/[0-9]*; do [ "$(readlink "$p/root" 2>/dev/null)" = "$R" ] && echo "${p#/proc/}"; done || true)
if [ -n "$left" ]; then echo "[stop] processes left in $R:" $left >&2; kill_wait TERM $left || rc=1; fi
# Unmount everything under the chroot, deepest first.
for m in $(findmnt -rn -o TARGET | { grep "^$R/" || true; } | sort -r); do
  umount "$m" || { echo "[stop] cannot unmount $m" >&2; rc=1; }
done
[ "$rc" != 0 ] || rm -f "$PIDDIR/condor_root"

# Slurm before its accounting database, PostgreSQL, munge last (Slurm needs it to shut down cleanly).
# (a stale /run/slurmctld.pid makes the slurmctld package's prerm fail, so those files go too)
stop slurmd TERM /run/slurmd.pid; stop slurmctld TERM /run/slurmctld.pid; stop slurmdbd TERM /run/slurmdbd.pid
stop mariadbd
stop postgres INT   # SIGINT = PostgreSQL "fast" shutdown
stop munged
[ "$rc" = 0 ] && echo "[stop] done in $(( ($(date +%s%N) - T0) / 1000000 )) ms" || echo "[stop] FAILED (see above)" >&2
exit "$rc"
