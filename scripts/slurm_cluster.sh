#!/usr/bin/env bash
# A private single-node Slurm cluster on this machine, for CI and for trying the sbatch
# templates in slurm/: munged, slurmctld and slurmd as background processes.
#
#   bash scripts/slurm_cluster.sh start    # install (apt-get) if missing, configure, start
#   bash scripts/slurm_cluster.sh status   # daemons, node state; exit 0 when usable
#   bash scripts/slurm_cluster.sh stop     # stop the daemons this script started (by PID)
#   bash scripts/slurm_cluster.sh env      # prints: export SLURM_CONF=...
#
# Then: export SLURM_CONF=$HOMODYNE_SLURM_DIR/slurm.conf and use sbatch/srun/scontrol.
#
# Made for Debian 12 (slurm-wlm 22.05) as root without systemd or cgroup control:
# proctrack/linuxproc, task/none, no accounting, MpiDefault=pmi2 (srun + MPICH). The node
# is 127.0.0.1 with HOMODYNE_SLURM_CPUS CPUs (default 8; more than the real cores is fine,
# the node config overrides what slurmd detects). Everything lives in HOMODYNE_SLURM_DIR
# (default /tmp/homodyne-slurm); /etc/slurm is not touched. munged uses the system key
# /etc/munge/munge.key (created if missing) and its standard socket; a munged that is
# already running is used as it is and never stopped by this script.
#
# Environment: HOMODYNE_SLURM_DIR, HOMODYNE_SLURM_CPUS (8), HOMODYNE_SLURM_PORT (6817: the
# controller; slurmd uses PORT+1), HOMODYNE_SLURM_NODE (homodyne-node).
# Idempotent: start on a running cluster only checks it; stop on a stopped one is a no-op.
set -euo pipefail

DIR="${HOMODYNE_SLURM_DIR:-/tmp/homodyne-slurm}"
CPUS="${HOMODYNE_SLURM_CPUS:-8}"
PORT="${HOMODYNE_SLURM_PORT:-6817}"
NODE="${HOMODYNE_SLURM_NODE:-homodyne-node}"
CONF="$DIR/slurm.conf"
PACKAGES=(slurmctld slurmd slurm-client munge)
export SLURM_CONF="$CONF"

say() { echo "slurm_cluster: $*"; }
die() { echo "slurm_cluster: error: $*" >&2; exit 1; }

# -- PIDs of the daemons this script started ----------------------------------------------

pid_file() { echo "$DIR/pids/$1.pid"; }

# alive NAME: the recorded process is running and is still that daemon (not a reused PID)
alive() {
    local file pid
    file="$(pid_file "$1")"
    [ -f "$file" ] || return 1
    pid="$(cat "$file")"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$1"
}

# -- install ------------------------------------------------------------------------------

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages with apt-get, runs munged as the munge user and slurmd as root); run it with sudo, or as root in CI"
}

install_if_missing() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "Slurm is not installed (${missing[*]} missing) and there is no apt-get: install ${PACKAGES[*]} with this system's package manager"
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >"$DIR/apt.log" 2>&1; then
        apt-get update -qq >>"$DIR/apt.log" 2>&1 || die "apt-get update failed; see $DIR/apt.log"
        apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >>"$DIR/apt.log" 2>&1 \
            || die "apt-get install ${PACKAGES[*]} failed; see $DIR/apt.log"
    fi
}

# -- munge --------------------------------------------------------------------------------

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        alive munged && say "munged running (pid $(cat "$(pid_file munged)"))" || say "using the munged already running on this machine"
        return 0
    fi
    id munge >/dev/null 2>&1 || die "there is no munge user (the munge package creates it): reinstall munge"
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    chmod 0400 /etc/munge/munge.key
    # setpriv execs munged itself, so $! is munged's PID (runuser would stay in between).
    setsid setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground \
        </dev/null >"$DIR/log/munged.out" 2>&1 &
    echo $! >"$(pid_file munged)"
    for _ in $(seq 50); do
        munge_works && { say "munged started (pid $(cat "$(pid_file munged)"))"; return 0; }
        alive munged || break
        sleep 0.1
    done
    die "munged did not start; see $DIR/log/munged.out and /var/log/munge/munged.log"
}

# -- slurm.conf ---------------------------------------------------------------------------

write_conf() {
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/pids"
    cat >"$CONF.new" <<EOF
# Generated by scripts/slurm_cluster.sh: a single-node test cluster at 127.0.0.1.
ClusterName=homodyne
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd, no cgroup control: track processes by parentage, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
# srun starts MPICH ranks through PMI-2 (Open MPI 5 would need --mpi=pmix).
MpiDefault=pmi2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
# Finished jobs stay visible to scontrol for 10 minutes; the poll interval of --signal.
MinJobAge=600
KillWait=30
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE NodeHostname=$(hostname) NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    if [ -f "$CONF" ] && cmp -s "$CONF" "$CONF.new"; then
        rm -f "$CONF.new"
        return 1   # unchanged
    fi
    mv "$CONF.new" "$CONF"
    return 0
}

# -- start / stop / status ----------------------------------------------------------------

node_state() { scontrol show node "$NODE" 2>/dev/null | sed -n 's/.*State=\([^ ]*\).*/\1/p' | head -n1; }

wait_for_node() {
    local state=""
    for _ in $(seq 120); do
        state="$(node_state)"
        case "$state" in
            IDLE* | MIXED* | ALLOCATED*) say "node $NODE is ${state,,} ($CPUS CPUs); export SLURM_CONF=$CONF"; return 0 ;;
            DOWN* | *DRAIN*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die "node $NODE did not become idle (state '${state:-unknown}'); see $DIR/log/slurmctld.log and $DIR/log/slurmd.log"
}

start() {
    need_root
    mkdir -p "$DIR/log" "$DIR/pids"
    install_if_missing
    local changed=0
    write_conf && changed=1
    if [ $changed -eq 1 ] && { alive slurmctld || alive slurmd; }; then
        say "configuration changed: restarting the daemons"
        stop_slurm
    fi
    start_munge
    if ! alive slurmctld; then
        rm -rf "$DIR/state"; mkdir -p "$DIR/state"
        setsid /usr/sbin/slurmctld -D -i -f "$CONF" </dev/null >"$DIR/log/slurmctld.out" 2>&1 &
        echo $! >"$(pid_file slurmctld)"
        for _ in $(seq 100); do
            scontrol ping 2>/dev/null | grep -q "is UP" && break
            alive slurmctld || die "slurmctld exited at start; see $DIR/log/slurmctld.out and $DIR/log/slurmctld.log"
            sleep 0.1
        done
        scontrol ping 2>/dev/null | grep -q "is UP" || die "slurmctld does not answer; see $DIR/log/slurmctld.log"
        say "slurmctld started (pid $(cat "$(pid_file slurmctld)"))"
    fi
    if ! alive slurmd; then
        setsid /usr/sbin/slurmd -D -N "$NODE" -f "$CONF" </dev/null >"$DIR/log/slurmd.out" 2>&1 &
        echo $! >"$(pid_file slurmd)"
        sleep 0.3
        alive slurmd || die "slurmd exited at start; see $DIR/log/slurmd.out and $DIR/log/slurmd.log"
        say "slurmd started (pid $(cat "$(pid_file slurmd)"))"
    fi
    wait_for_node
}

# stop_one NAME: TERM, then KILL after 10 s, the recorded PID only
stop_one() {
    local name="$1" pid
    if alive "$name"; then
        pid="$(cat "$(pid_file "$name")")"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            alive "$name" || break
            sleep 0.1
        done
        if alive "$name"; then
            kill -KILL "$pid" 2>/dev/null || true
            say "$name (pid $pid) did not stop on SIGTERM; killed"
        else
            say "$name (pid $pid) stopped"
        fi
    fi
    rm -f "$(pid_file "$name")"
}

stop_slurm() {
    stop_one slurmd
    stop_one slurmctld
}

stop() {
    [ -d "$DIR/pids" ] || { say "nothing to stop ($DIR/pids does not exist)"; return 0; }
    stop_slurm
    stop_one munged
}

status() {
    local ok=0 name
    for name in munged slurmctld slurmd; do
        if alive "$name"; then
            say "$name running (pid $(cat "$(pid_file "$name")"))"
        elif [ "$name" = munged ] && munge_works; then
            say "munged: using one not started by this script"
        else
            say "$name not running"; ok=1
        fi
    done
    if [ $ok -eq 0 ]; then
        say "node $NODE: $(node_state)"
        say "export SLURM_CONF=$CONF"
    fi
    return $ok
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
