#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine, for the tests and for trying the launchers:
# munged, slurmctld and two slurmd daemons (nodes n1 and n2) that share this host, as Debian's
# slurm-wlm (22.05) and munge packages run them. As root:
#
#   slurm/local_cluster.sh start    # installs slurm-wlm and munge when missing; idempotent
#   slurm/local_cluster.sh status   # sinfo; exit 0 when both nodes are up
#   slurm/local_cluster.sh stop     # shuts the daemons down and undoes what start added
#
# It owns /etc/slurm/slurm.conf (marked as written here; a slurm.conf it did not write is left
# alone and start refuses), its state under /var/lib/auforge-slurm, and a marked line in
# /etc/hosts that resolves n1 and n2 to 127.0.0.1: jobs take the torch.distributed master address
# from the first node name, as on a real cluster whose node names are host names.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by auforge slurm/local_cluster.sh"
HOSTS_MARK="# auforge local SLURM cluster"
STATE=/var/lib/auforge-slurm
NODES=(n1 n2)
# CPUs per node: two one-task jobs (or one two-task job) run at once whatever the core count;
# SLURM is told what we declare (config_overrides), the kernel shares the real cores.
CPUS_PER_NODE=${AUFORGE_SLURM_CPUS:-2}
WAIT_S=${AUFORGE_SLURM_WAIT_S:-90}

log() { echo "local_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts SLURM's daemons); try: sudo $0 $1"
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
}

# The daemon a pid file names is alive (and is that daemon, not a process that reused its pid).
pid_alive() {
    local pid
    [[ -s $1 ]] && pid=$(cat "$1") && [[ -r /proc/$pid/stat ]] || return 1
    [[ $(cat "/proc/$pid/comm") == slurm* && $(awk '{print $3}' "/proc/$pid/stat") != Z ]]
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged already answers (ours from an earlier start, or the system's)
    fi
    runuser -u munge -- /usr/sbin/munged
    touch "$STATE/munged.ours"  # stop ends only a munged that start started
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "munged did not answer; see /var/log/munge/munged.log"
}

write_conf() {
    if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; move it away to use the local cluster"
    fi
    local host mem
    host=$(hostname -s)
    # Half the machine's memory per node, so that --mem requests are checked against something real.
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/log"
    cat >"$CONF.tmp" <<EOF
$MARK
ClusterName=auforge
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=6817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# No cgroups here: processes are tracked through /proc, tasks are not bound to cores.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
# Between SIGTERM and SIGKILL when a job is cancelled, requeued or preempted: time for a final
# checkpoint at the next step boundary.
KillWait=20
MinJobAge=600
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_min_interval=100000
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
NodeName=n[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=17001-17002 CPUs=$CPUS_PER_NODE RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv "$CONF.tmp" "$CONF"
}

add_hosts() {
    grep -qF "$HOSTS_MARK" /etc/hosts || echo "127.0.0.1 ${NODES[*]} $HOSTS_MARK" >>/etc/hosts
}

remove_hosts() {
    if grep -qF "$HOSTS_MARK" /etc/hosts; then
        # /etc/hosts may be a bind mount (containers): rewrite it in place rather than replace it.
        local kept
        kept=$(grep -vF "$HOSTS_MARK" /etc/hosts)
        printf '%s\n' "$kept" >/etc/hosts
    fi
}

nodes_up() {
    # Both nodes answer and take jobs: idle, or busy with jobs (alloc, mix).
    local states
    states=$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u) || return 1
    [[ $(grep -cE '^n[12] (idle|alloc|mix|comp)$' <<<"$states") -eq 2 ]]
}

start() {
    need_root start
    install_packages
    mkdir -p "$STATE"
    start_munge
    write_conf
    add_hosts
    if ! pid_alive "$STATE/slurmctld.pid"; then
        # A fresh controller: no jobs or node states left from an earlier cluster.
        rm -rf "$STATE/ctld" && mkdir -p "$STATE/ctld"
        slurmctld -i
    fi
    for node in "${NODES[@]}"; do
        mkdir -p "$STATE/spool/$node"
        pid_alive "$STATE/slurmd-$node.pid" || slurmd -N "$node"
    done
    local waited=0
    until nodes_up; do
        if (( waited % 10 == 9 )); then
            scontrol update nodename=n[1-2] state=resume >/dev/null 2>&1 || true
        fi
        (( waited++ < WAIT_S * 2 )) || { sinfo -N >&2 || true; die "nodes not idle after ${WAIT_S}s; logs in $STATE/log"; }
        sleep 0.5
    done
    log "up: $(sinfo -h -N -o '%N:%t' | sort -u | tr '\n' ' ')(config $CONF, logs $STATE/log)"
}

stop() {
    need_root stop
    if [[ -e $CONF ]] && grep -qF "$MARK" "$CONF" && pid_alive "$STATE/slurmctld.pid"; then
        # Jobs first, killed outright, so that no job process outlives its slurmd.
        scancel --full --quiet --signal=KILL --partition=debug 2>/dev/null || true
        scancel --quiet --partition=debug 2>/dev/null || true
        for _ in $(seq 60); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 0.5; done
        scontrol shutdown >/dev/null 2>&1 || true  # the controller and every slurmd
    fi
    local pidfile
    for pidfile in "$STATE"/slurmctld.pid "$STATE"/slurmd-*.pid; do
        [[ -e $pidfile ]] || continue
        for _ in $(seq 100); do pid_alive "$pidfile" || break; sleep 0.1; done
        if pid_alive "$pidfile"; then kill -KILL "$(cat "$pidfile")" 2>/dev/null || true; fi
        rm -f "$pidfile"
    done
    if [[ -e $STATE/munged.ours ]]; then
        [[ -s /run/munge/munged.pid ]] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
        rm -f "$STATE/munged.ours"
    fi
    remove_hosts
    log "stopped"
}

status() {
    if ! command -v sinfo >/dev/null; then
        log "slurm-wlm is not installed (start installs it)"
        return 1
    fi
    sinfo -N 2>&1 || true
    nodes_up
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
