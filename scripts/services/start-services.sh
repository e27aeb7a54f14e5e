#!/usr/bin/env bash
# jobmill CI / dev services, step 2 of 4 (see README.md next to this file).
# Start munge, MariaDB + slurmdbd, slurmctld + slurmd, a throwaway PostgreSQL and minicondor (in its chroot).
# Everything listens on 127.0.0.1 (or a unix socket) only; no systemd. Needs install-services.sh first.
# Re-runnable: it first runs stop-services.sh, so a second start restarts everything from a clean state.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin   # root tools (chroot, mount, runuser...) even from a non-login root shell
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SLURM_ACCOUNTING=${SLURM_ACCOUNTING:-dbd}    # dbd: MariaDB + slurmdbd (sacct, sacct --json) | none: only sacct -c
SLURMCTLD_PORT=${SLURMCTLD_PORT:-6817}; SLURMD_PORT=${SLURMD_PORT:-6818}; SLURMDBD_PORT=${SLURMDBD_PORT:-6819}
PGPORT=${PGPORT:-5433}; PGBASE=${PGBASE:-/tmp/ci-pg}; PGDATABASE=${PGDATABASE:-jobmill_test}
CONDOR_ROOT=${CONDOR_ROOT:-/opt/condor-trixie}; CONDOR_PORT=${CONDOR_PORT:-9618}
CONDOR_SHARED_DIRS=${CONDOR_SHARED_DIRS:-/tmp}   # host dirs bind-mounted at the same path inside the chroot
JOBUSER=${JOBUSER:-jobmill}; JOBUID=${JOBUID:-2001}
# Which services to start: any of "slurm postgres condor" (space- or comma-separated; default all of them).
# "chromium" is accepted too (nothing to start; smoke-services.sh checks it). stop-services.sh always stops
# whatever was started, so it needs no selection.
JOBMILL_SERVICES=${JOBMILL_SERVICES:-slurm postgres condor chromium}
read -ra SERVICES <<<"${JOBMILL_SERVICES//,/ }"
[ "${#SERVICES[@]}" -gt 0 ] || { echo "[start] JOBMILL_SERVICES names no service" >&2; exit 2; }
for s in "${SERVICES[@]}"; do case $s in slurm|postgres|condor|chromium) ;;
  *) echo "[start] unknown service '$s' in JOBMILL_SERVICES (known: slurm postgres condor chromium)" >&2; exit 2;; esac; done
want() { local s; for s in "${SERVICES[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
export PIDDIR=${PIDDIR:-/run/ci-services} CONDOR_ROOT
R=$CONDOR_ROOT; T0=$(date +%s%N)
cd /   # runuser'd tools and daemons must not inherit an unreadable working directory

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
# waitfor SECONDS LOG CMD...: poll CMD every 0.1 s; on timeout print the end of LOG and fail
waitfor() { local n=$(( $1 * 10 )) log=$2; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "[start] TIMEOUT waiting for: $*; end of $log:" >&2; tail -n 30 "$log" >&2 || true; return 1; }
# daemon NAME PIDFILE LOG CMD...: run a self-daemonizing CMD and record the PID it writes, for stop-services.sh
daemon() { local name=$1 pidfile=$2 log=$3; shift 3; rm -f "$pidfile"
  "$@" || { echo "[start] $name failed; end of $log:" >&2; tail -n 30 "$log" >&2 || true; return 1; }
  waitfor 30 "$log" test -s "$pidfile"; head -n 1 "$pidfile" >"$PIDDIR/$name.pid"; }
# A failed start stops whatever it had started (the logs stay).
on_exit() { local rc=$?; [ "$rc" = 0 ] && return
  echo "[start] FAILED (exit $rc); stopping what was started" >&2; "$HERE/stop-services.sh" >&2 || true; }
trap on_exit EXIT

# Clean slate: stop what an earlier start left running, then make sure no one else holds our ports.
"$HERE/stop-services.sh"
mkdir -p "$PIDDIR"
PORTS=()
if want slurm; then PORTS+=("$SLURMCTLD_PORT" "$SLURMD_PORT" "$SLURMDBD_PORT"); fi
if want postgres; then PORTS+=("$PGPORT"); fi
if want condor; then PORTS+=("$CONDOR_PORT"); fi
for p in "${PORTS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "[start] port $p is already in use" >&2; false; fi
done

# Slurm daemons bind to the address the hostname resolves to (NoInAddrAny): make that 127.0.0.1.
H=$(hostname -s); HF=$(hostname)
for n in "$HF" "$H"; do
  if [ "$(getent ahostsv4 "$n" | awk 'NR == 1 { print $1 }')" != 127.0.0.1 ]; then
    hosts=$(cat /etc/hosts); printf '127.0.0.1 %s\n%s\n' "$n" "$hosts" >/etc/hosts; fi
done

# The unprivileged job owner (HTCondor refuses root-owned jobs); the chroot gets the same uid/gid below.
id -u "$JOBUSER" >/dev/null 2>&1 || useradd -m -u "$JOBUID" -s /bin/bash "$JOBUSER"
JUID=$(id -u "$JOBUSER"); JGID=$(id -g "$JOBUSER"); JH=$(getent passwd "$JOBUSER" | cut -d: -f6)

# ---- slurm (JOBMILL_SERVICES); the blocks below are not indented, so that their here-documents stay as they are.
if want slurm; then
# munge: authentication for all Slurm traffic (key made by the package, or here).
t=$(date +%s%N)
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; fi
daemon munged /run/munge/munged.pid /var/log/munge/munged.log runuser -u munge -- /usr/sbin/munged
waitfor 10 /var/log/munge/munged.log munge -n
echo "[start] munged pid $(cat "$PIDDIR/munged.pid"): $(ms "$t") ms"

# slurm.conf: one node (this host, 8 virtual CPUs), loopback only, fast scheduling, jobs kept 1 h in squeue.
if [ "$SLURM_ACCOUNTING" = dbd ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$SLURMDBD_PORT"
else ACCT="AccountingStorageType=accounting_storage/none"; fi
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=ci
SlurmctldHost=$H(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
$ACCT
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
NodeName=$H NodeAddr=127.0.0.1 CPUs=8 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
mkdir -p /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
chown slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm

# MariaDB (unix socket only) + slurmdbd, for real accounting.
if [ "$SLURM_ACCOUNTING" = dbd ]; then
  t=$(date +%s%N)
  if mariadb -e 'select 1' >/dev/null 2>&1; then echo "[start] a MariaDB we did not start is running" >&2; false; fi
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld; rm -f /run/mysqld/mysqld.pid
  setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
    --pid-file=/run/mysqld/mysqld.pid </dev/null >/var/log/mariadbd-ci.log 2>&1 &
  echo $! >"$PIDDIR/mariadbd.pid"
  waitfor 60 /var/log/mariadbd-ci.log mariadb -e 'select 1'
  head -n 1 /run/mysqld/mysqld.pid >"$PIDDIR/mariadbd.pid"
  echo "[start] mariadbd pid $(cat "$PIDDIR/mariadbd.pid"): $(ms "$t") ms"
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$SLURMDBD_PORT
CommunicationParameters=NoInAddrAny
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
  chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf
  t=$(date +%s%N)
  daemon slurmdbd /run/slurmdbd.pid /var/log/slurm/slurmdbd.log /usr/sbin/slurmdbd
  waitfor 60 /var/log/slurm/slurmdbd.log sacctmgr -n list cluster
  echo "[start] slurmdbd pid $(cat "$PIDDIR/slurmdbd.pid"): $(ms "$t") ms"
fi

# slurmctld + slurmd; ready once slurmd has registered since now and the node takes jobs (saved state may say idle).
t=$(date +%s%N); since=$(date +%s)
slurm_ready() { local n; n=$(scontrol -o show node "$H") && [[ $n =~ SlurmdStartTime=([^ ]+) ]] &&
  [ "$(date -d "${BASH_REMATCH[1]}" +%s)" -ge "$since" ] && [[ $n =~ " State="(IDLE|MIXED|ALLOCATED)" " ]]; }
daemon slurmctld /run/slurmctld.pid /var/log/slurm/slurmctld.log /usr/sbin/slurmctld
daemon slurmd /run/slurmd.pid /var/log/slurm/slurmd.log /usr/sbin/slurmd
waitfor 60 /var/log/slurm/slurmctld.log slurm_ready
if [ "$SLURM_ACCOUNTING" = dbd ]; then
  waitfor 60 /var/log/slurm/slurmctld.log sh -c 'sacctmgr -n -P list cluster format=cluster,controlport | grep -qx "ci|'"$SLURMCTLD_PORT"'"'
fi
echo "[start] slurmctld pid $(cat "$PIDDIR/slurmctld.pid"), slurmd pid $(cat "$PIDDIR/slurmd.pid"): $(ms "$t") ms"
fi   # slurm

# ---- postgres (JOBMILL_SERVICES)
if want postgres; then
# PostgreSQL: a fresh throwaway cluster on 127.0.0.1:$PGPORT, trust auth, durability off for speed.
t=$(date +%s%N)
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
rm -rf "$PGBASE"; mkdir -p "$PGBASE"; chown postgres:postgres "$PGBASE"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGBASE/data" -U postgres -A trust --no-sync -E UTF8 >"$PGBASE/initdb.log" 2>&1 ||
  { tail -n 20 "$PGBASE/initdb.log" >&2; false; }
PGOPTS="-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGBASE -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGBASE/data" -l "$PGBASE/pg.log" -w -t 60 -o "$PGOPTS" start >/dev/null ||
  { tail -n 20 "$PGBASE/pg.log" >&2; false; }
head -n 1 "$PGBASE/data/postmaster.pid" >"$PIDDIR/postgres.pid"
psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE $PGDATABASE"
echo "[start] postgres pid $(cat "$PIDDIR/postgres.pid"): $(ms "$t") ms"
fi   # postgres

# ---- condor (JOBMILL_SERVICES)
if want condor; then
# HTCondor chroot: the job user with the same uid/gid, kernel filesystems, shared dirs, /etc/hosts.
t=$(date +%s%N)
chroot "$R" sh -c "getent group $JGID >/dev/null || groupadd -g $JGID $JOBUSER
  id -u $JOBUSER >/dev/null 2>&1 || useradd -m -u $JUID -g $JGID -s /bin/sh $JOBUSER"
[ "$(chroot "$R" id -u "$JOBUSER")" = "$JUID" ] || { echo "[start] $JOBUSER has another uid in $R" >&2; false; }
echo "$R" >"$PIDDIR/condor_root"   # tells stop-services.sh what to unmount
mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
mountpoint -q "$R/sys" || mount -t sysfs sys "$R/sys"
for d in /dev /dev/pts $CONDOR_SHARED_DIRS; do
  mkdir -p "$R$d"; mountpoint -q "$R$d" || mount --bind "$d" "$R$d"; done
cp /etc/hosts "$R/etc/hosts"
chroot "$R" sh -c 'mkdir -p /run/condor /run/lock/condor && chown condor:condor /run/condor /run/lock/condor'
# Condor config: loopback, no namespaces/cgroups (no systemd in a chroot), fast negotiation for tests.
cat >"$R/etc/condor/config.d/99-ci.conf" <<CONF
ENABLE_IPV6 = False
NETWORK_INTERFACE = 127.0.0.1
UID_DOMAIN = $H
COLLECTOR_PORT = $CONDOR_PORT
SHARED_PORT_PORT = $CONDOR_PORT
COLLECTOR_HOST = 127.0.0.1:$CONDOR_PORT
MOUNT_UNDER_SCRATCH =
USE_PID_NAMESPACES = False
BASE_CGROUP =
NEGOTIATOR_INTERVAL = 1
NEGOTIATOR_CYCLE_DELAY = 1
NEGOTIATOR_MIN_INTERVAL = 1
SCHEDD_INTERVAL = 1
STARTER_UPDATE_INTERVAL = 2
SHADOW_QUEUE_UPDATE_INTERVAL = 2
UPDATE_INTERVAL = 2
NUM_CPUS = 8
CONF
daemon condor_master "$R/run/condor/condor_master.pid" "$R/var/log/condor/MasterLog" \
  chroot "$R" /usr/sbin/condor_master -pidfile /run/condor/condor_master.pid
waitfor 60 "$R/var/log/condor/MasterLog" \
  sh -c "chroot $R condor_status -schedd -af Name | grep -q . && chroot $R condor_status -af State | grep -q ."
# Client side for $JOBUSER: an IDTOKEN and a config pointing at the pool.
mkdir -p "$JH/.condor/tokens.d"
chroot "$R" condor_token_create -identity "$JOBUSER@$H" >"$JH/.condor/tokens.d/ci.token"
cat >"$JH/.condor/condor_config" <<CONF
CONDOR_HOST = 127.0.0.1
COLLECTOR_HOST = 127.0.0.1:$CONDOR_PORT
UID_DOMAIN = $H
ENABLE_IPV6 = False
SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS
SEC_TOKEN_DIRECTORY = $JH/.condor/tokens.d
CONF
chown -R "$JOBUSER:" "$JH/.condor"; chmod 700 "$JH/.condor/tokens.d"; chmod 600 "$JH/.condor/tokens.d/ci.token"
echo "[start] condor_master pid $(cat "$PIDDIR/condor_master.pid"): $(ms "$t") ms"
fi   # condor

# What clients need.
echo "[start] all up (${SERVICES[*]}) in $(ms "$T0") ms."
if want slurm; then echo "[start] Slurm: CLI on PATH (cluster ci, partition debug)"; fi
if want postgres; then echo "[start] PostgreSQL: postgresql://postgres@127.0.0.1:$PGPORT/$PGDATABASE"; fi
if want condor; then
  echo "[start] HTCondor: run as $JOBUSER with CONDOR_CONFIG=$JH/.condor/condor_config (Python: import htcondor2)"; fi
