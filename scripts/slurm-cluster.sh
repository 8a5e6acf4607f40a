#!/usr/bin/env bash
# slurm-cluster.sh — bring up (or stop) a real single-node SLURM cluster on this
# machine for tests/CI: one node (the local host) with two fake GPUs, with
# working accounting (slurmdbd + MariaDB) so that `sacct` behaves as on real
# clusters. No systemd needed; daemons run in the background.
#
#   scripts/slurm-cluster.sh          # install if needed, configure, start, wait idle
#   scripts/slurm-cluster.sh --stop   # stop slurmd, slurmctld, slurmdbd, mariadb, munged
#
# Idempotent: re-running leaves exactly one set of daemons; a down/drained node
# is resumed. Must run as root (Debian 12 / slurm-wlm 22.05). See
# docs/slurm-cluster.md.
set -euo pipefail

CLUSTER=kdsweep
PARTITION=debug
NGPU=2
CONF_DIR=/etc/slurm
SLURM_CONF_PATH=$CONF_DIR/slurm.conf   # must be this path (job step drops SLURM_CONF)
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS_FILE=/etc/slurm/.dbpass
PID_MUNGE=/run/munge/munged.pid
PID_MYSQL=/run/mysqld/mysqld.pid
SOCK_MYSQL=/run/mysqld/mysqld.sock
PID_DBD=/run/slurm/slurmdbd.pid
PID_CTLD=/run/slurm/slurmctld.pid
PID_SLURMD=/run/slurm/slurmd.pid
# Names the cluster this script built, once it runs: tests/test_slurm.py submits jobs (and fails
# the node) only on the cluster it names, or where KDSWEEP_TEST_SLURM=1 says so.
MARKER=/run/slurm/kdsweep-test-cluster
START_TIMEOUT=${SLURM_CLUSTER_TIMEOUT:-90}

export SLURM_CONF=$SLURM_CONF_PATH
unset SLURM_JOB_ID SLURM_JOBID 2>/dev/null || true

log() { printf '[slurm-cluster] %s\n' "$*" >&2; }
die() {
  printf '[slurm-cluster] ERROR: %s\n' "$1" >&2
  shift || true
  for f in "$@"; do
    if [[ -f $f ]]; then
      printf -- '----- tail of %s -----\n' "$f" >&2
      tail -n 25 "$f" >&2 || true
    fi
  done
  exit 1
}

# pid from pidfile if that process is alive (and is the expected program)
pid_alive() { # pidfile comm
  local pf=$1 comm=$2 pid
  [[ -s $pf ]] || return 1
  pid=$(tr -dc '0-9' <"$pf")
  [[ -n $pid ]] || return 1
  [[ -d /proc/$pid ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm"* ]] || return 1
  echo "$pid"
}
# any process with exactly this name (for daemons started by someone else)
running() { pgrep -x "$1" >/dev/null 2>&1; }

wait_for() { # seconds description command...
  local t=$1 what=$2
  shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 0.5
  done
  log "$what: ok"
}

stop_pid() { # pidfile comm
  local pid i
  pid=$(pid_alive "$1" "$2") || { rm -f "$1"; return 0; }
  log "stopping $2 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 60); do
    [[ -d /proc/$pid ]] || { rm -f "$1"; return 0; }
    sleep 0.5
  done
  log "$2 did not stop after 30s; sending KILL to pid $pid"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
}

stop_all() {
  rm -f "$MARKER"
  stop_pid "$PID_SLURMD" slurmd
  stop_pid "$PID_CTLD" slurmctld
  stop_pid "$PID_DBD" slurmdbd
  stop_pid "$PID_MYSQL" mariadbd
  stop_pid "$PID_MUNGE" munged
  for d in slurmd slurmctld slurmdbd mariadbd munged; do
    if running "$d"; then
      log "note: a '$d' not started by this script is still running (pids: $(pgrep -x "$d" | tr '\n' ' '))"
    fi
  done
  log "stopped"
}

[[ $(id -u) -eq 0 ]] || die "must run as root"
case "${1:-}" in
  --stop) stop_all; exit 0 ;;
  "") ;;
  -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
  *) die "unknown argument '$1' (usage: $0 [--stop])" ;;
esac

# ---------------------------------------------------------------- install
need=()
for p in slurm-wlm munge slurmdbd mariadb-server; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq "${need[@]}" >/tmp/slurm-cluster-apt.log 2>&1 \
    || die "apt-get install ${need[*]} failed" /tmp/slurm-cluster-apt.log
fi
for b in munged mariadbd slurmdbd slurmctld slurmd sinfo sacctmgr; do
  command -v "$b" >/dev/null || [[ -x /usr/sbin/$b ]] || die "$b not found after install"
done
export PATH=/usr/sbin:/sbin:$PATH

# ---------------------------------------------------------------- machine facts
HOST=$(hostname -s)
NODE_ADDR=127.0.0.1
# slurmd -C prints the node's hardware as slurm sees it
HW=$(slurmd -C 2>/dev/null | head -1)
hw() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
CPUS=$(hw CPUs); SOCKETS=$(hw SocketsPerBoard); CORES=$(hw CoresPerSocket)
THREADS=$(hw ThreadsPerCore); MEM_MB=$(hw RealMemory)
[[ -n $CPUS ]] || CPUS=$(nproc)
[[ -n $MEM_MB ]] || MEM_MB=$(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo)
# headroom for the daemons/OS: 5% but at least 512 MB
HEADROOM=$((MEM_MB / 20)); ((HEADROOM >= 512)) || HEADROOM=512
REAL_MEM=$((MEM_MB - HEADROOM))
TOPO=""
if [[ -n $SOCKETS && -n $CORES && -n $THREADS ]]; then
  TOPO="Sockets=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS"
fi
DEF_MEM_PER_CPU=$((REAL_MEM / CPUS / 2)); ((DEF_MEM_PER_CPU <= 2048)) || DEF_MEM_PER_CPU=2048

# ---------------------------------------------------------------- users/dirs
id slurm >/dev/null 2>&1 || die "user 'slurm' missing (slurm-wlm package should create it)"
id munge >/dev/null 2>&1 || die "user 'munge' missing"
install -d -o slurm -g slurm -m 755 "$LOG_DIR" /run/slurm /var/lib/slurm "$STATE_DIR"
install -d -o root -g root -m 755 "$SPOOL_DIR"
install -d -o munge -g munge -m 755 /run/munge /var/log/munge /var/lib/munge
install -d -o mysql -g mysql -m 755 /run/mysqld
install -d -m 755 "$CONF_DIR"

# fake GPU device files (a count-only GPU GRES leaves the node invalid)
for i in $(seq 0 $((NGPU - 1))); do
  d=/dev/fakegpu$i
  if [[ ! -c $d ]]; then
    rm -f "$d"
    mknod -m 666 "$d" c 195 "$i" || die "mknod $d failed"
  fi
done

# ---------------------------------------------------------------- configs
changed=0
write_conf() { # path mode owner  (content on stdin); sets changed=1 if different
  local path=$1 mode=$2 owner=$3 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
  else
    install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$tmp" "$path"
    rm -f "$tmp"
    changed=1
    log "wrote $path"
  fi
  chmod "$mode" "$path"; chown "$owner" "$path"
}

if [[ ! -s $DB_PASS_FILE ]]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DB_PASS_FILE")
fi
chmod 600 "$DB_PASS_FILE"
DB_PASS=$(cat "$DB_PASS_FILE")

GPU_LAST=$((NGPU - 1))
write_conf "$SLURM_CONF_PATH" 644 root:root <<EOF
# Generated by scripts/slurm-cluster.sh — single-node test cluster, fake GPUs.
ClusterName=$CLUSTER
SlurmctldHost=$HOST($NODE_ADDR)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire + 1 s before it may start again (default 120 s)
AuthInfo=cred_expire=30
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$PID_CTLD
SlurmdPidFile=$PID_SLURMD
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in this container (22.05 has no CgroupPlugin=disabled)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# scheduling
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5,sched_min_interval=100000,defer_batch=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
GresTypes=gpu
JobRequeue=1
ReturnToService=2
# fast turnaround for tests
MinJobAge=30
KillWait=5
OverTimeLimit=0
InactiveLimit=0
Waittime=0
MessageTimeout=10
SlurmctldTimeout=30
# a node that stops answering is marked DOWN after this long (default 300 s)
SlurmdTimeout=30
UnkillableStepTimeout=30
# accounting (so sacct works, as on real clusters)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# node / partition
NodeName=$HOST NodeAddr=$NODE_ADDR CPUs=$CPUS $TOPO RealMemory=$REAL_MEM Gres=gpu:$NGPU State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

write_conf "$CONF_DIR/gres.conf" 644 root:root <<EOF
# Generated by scripts/slurm-cluster.sh — fake GPUs backed by char devices
AutoDetect=off
Name=gpu File=/dev/fakegpu[0-$GPU_LAST]
EOF

write_conf "$CONF_DIR/slurmdbd.conf" 600 slurm:slurm <<EOF
# Generated by scripts/slurm-cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$PID_DBD
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
rm -f "$CONF_DIR/cgroup.conf"

# ---------------------------------------------------------------- munge
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating munge key"
  if command -v mungekey >/dev/null; then mungekey --create --force
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
if ! running munged; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged --pid-file=$PID_MUNGE \
    >>"$LOG_DIR/munged.out" 2>&1 || die "munged failed to start" /var/log/munge/munged.log "$LOG_DIR/munged.out"
fi
wait_for 20 munge bash -c 'munge -n </dev/null | unmunge' \
  || die "munge does not work" /var/log/munge/munged.log

# ---------------------------------------------------------------- mariadb
if [[ ! -d /var/lib/mysql/mysql ]]; then
  log "initialising mariadb data dir"
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOG_DIR/mariadb-install.log" 2>&1 \
    || die "mariadb-install-db failed" "$LOG_DIR/mariadb-install.log"
fi
if ! running mariadbd && ! running mysqld; then
  log "starting mariadbd"
  setsid /usr/sbin/mariadbd --user=mysql --pid-file=$PID_MYSQL --socket=$SOCK_MYSQL \
    --bind-address=127.0.0.1 --log-error="$LOG_DIR/mariadb.log" \
    --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
    </dev/null >>"$LOG_DIR/mariadb.out" 2>&1 &
  disown || true
fi
wait_for 60 mariadb mariadb --socket=$SOCK_MYSQL -e 'select 1' \
  || die "mariadb did not come up" "$LOG_DIR/mariadb.log" "$LOG_DIR/mariadb.out"
mariadb --socket=$SOCK_MYSQL <<SQL || die "creating slurm database/user failed" "$LOG_DIR/mariadb.log"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL

# ---------------------------------------------------------------- slurm daemons
if ((changed)); then
  # config changed: slurm daemons that are running use the old one -> restart them
  for pair in "$PID_SLURMD slurmd" "$PID_CTLD slurmctld" "$PID_DBD slurmdbd"; do
    set -- $pair
    if pid_alive "$1" "$2" >/dev/null; then log "config changed, restarting $2"; stop_pid "$1" "$2"; fi
  done
fi

if ! running slurmdbd; then
  log "starting slurmdbd"
  /usr/sbin/slurmdbd >>"$LOG_DIR/slurmdbd.out" 2>&1 \
    || die "slurmdbd failed to start" "$LOG_DIR/slurmdbd.log" "$LOG_DIR/slurmdbd.out"
fi
wait_for 60 slurmdbd sacctmgr -n -P list cluster \
  || die "slurmdbd does not answer (sacctmgr list cluster)" "$LOG_DIR/slurmdbd.log" "$LOG_DIR/slurmdbd.out"

# register cluster, account and user (root) in the accounting database
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed" "$LOG_DIR/slurmdbd.log"
fi
if ! sacctmgr -n -P list account root format=account | grep -qx root; then
  sacctmgr -i add account root Cluster="$CLUSTER" Description=root Organization=root >/dev/null || true
fi
if ! sacctmgr -n -P list assoc cluster="$CLUSTER" user=root account=root format=user | grep -qx root; then
  sacctmgr -i add user root Account=root DefaultAccount=root Cluster="$CLUSTER" >/dev/null \
    || die "sacctmgr add user root failed" "$LOG_DIR/slurmdbd.log"
fi

if ! running slurmctld; then
  log "starting slurmctld"
  /usr/sbin/slurmctld >>"$LOG_DIR/slurmctld.out" 2>&1 \
    || die "slurmctld failed to start" "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmctld.out"
fi
wait_for 60 slurmctld scontrol ping \
  || die "slurmctld does not answer (scontrol ping)" "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmctld.out"

if ! running slurmd; then
  log "starting slurmd"
  /usr/sbin/slurmd >>"$LOG_DIR/slurmd.out" 2>&1 \
    || die "slurmd failed to start" "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmd.out"
fi

# ---------------------------------------------------------------- node state
node_state() { sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -1; }
resumed=0
end=$((SECONDS + START_TIMEOUT))
while :; do
  st=$(node_state || true)
  case "$st" in
    idle|mixed|allocated|completing) break ;;
    drain*|down*|fail*|inval*)
      if ((resumed < 3)); then
        log "node state '$st' -> scontrol update state=resume"
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
        resumed=$((resumed + 1))
      fi ;;
  esac
  if ((SECONDS >= end)); then
    reason=$(sinfo -h -R -n "$HOST" -o '%E' 2>/dev/null || true)
    die "node $HOST not idle after ${START_TIMEOUT}s (state='$st' reason='$reason')" \
      "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmctld.log"
  fi
  sleep 1
done

# ---------------------------------------------------------------- summary
gres=$(scontrol show node "$HOST" | sed -n 's/^ *Gres=\([^ ]*\).*/\1/p')
if sacct -n -X -S now-1minutes >/dev/null 2>&1 \
   && sacctmgr -n -P list assoc cluster="$CLUSTER" user=root format=account | grep -qx root; then
  acct="accounting=ok(slurmdbd,account=root)"
else
  acct="accounting=BROKEN"
fi
echo "slurm-cluster: node=$HOST state=$st cpus=$CPUS mem=${REAL_MEM}MB gres=$gres partition=$PARTITION cluster=$CLUSTER $acct"
[[ $acct != *BROKEN* ]] || die "accounting does not work" "$LOG_DIR/slurmdbd.log"

# ---------------------------------------------------------------- the marker
# What tests/test_slurm.py compares with `scontrol show config` and sinfo before it submits
# anything: the cluster's name, its one node and its slurm.conf. Replaced in one step (mv), so that
# a test reading it while this script runs again never finds it missing or half written.
cat >"$MARKER.tmp" <<EOF
# Written by scripts/slurm-cluster.sh: the SLURM test cluster it built and started on this machine.
# tests/test_slurm.py submits to it (and fails its node) while scontrol answers with these values.
cluster=$CLUSTER
node=$HOST
conf=$SLURM_CONF_PATH
EOF
chmod 644 "$MARKER.tmp"
mv -f "$MARKER.tmp" "$MARKER"
