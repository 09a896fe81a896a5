#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, from Debian 12 packages, for testing
# `snakemake --profile slurm` (tests/test_slurm.py) and for trying the profile by hand.
#
#   bash tools/slurm.sh up        install (first time), configure, start, wait until ready
#   bash tools/slurm.sh selftest  srun + sbatch + sacct against the running cluster
#   bash tools/slurm.sh status    which daemons run, the node's state and resources
#   bash tools/slurm.sh stop      cancel every job, stop the five daemons
#
#   SLURM_FAKE_GPUS=N bash tools/slurm.sh up   advertise N fake GPUs (gres/gpu) so that GPU
#                                              requests are scheduled (nothing computes on them)
#
# It needs root (it re-runs itself through `sudo -n` when it is not) and no systemd: every daemon
# is started directly and found again by its pid file. `up` is idempotent: when everything already
# runs with the same configuration it returns at once; when the generated configuration changed
# (say SLURM_FAKE_GPUS), it restarts the SLURM daemons. Accounting (slurmdbd + MariaDB) is always
# on because the Snakemake SLURM plugin polls job states with `sacct` whenever the sacct binary
# exists, and without accounting that poll fails quietly and Snakemake waits forever.
set -euo pipefail

ACTION="${1:-}"
FAKE_GPUS="${SLURM_FAKE_GPUS:-0}"

CLUSTER=localci
# A test cluster's database, reachable only from this machine (MariaDB binds to 127.0.0.1).
DB_USER=slurm
DB_PASS=slurmci
DB_NAME=slurm_acct_db
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm
FAKE_GPU_DIR="$STATE_DIR/fakegpu"
MARIADB_LOG=/var/log/mysql/error.log
PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)

say() { echo "[slurm] $*" >&2; }
die() { echo "[slurm] ERROR: $*" >&2; exit 1; }

usage() {
    sed -n '5,12p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# --- root -------------------------------------------------------------------------------------
need_root() {
    [ "$(id -u)" -eq 0 ] && return 0
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        # -E keeps SLURM_FAKE_GPUS; -n never waits for a password (CI has no terminal).
        exec sudo -n -E bash "$0" "$@"
    fi
    die "tools/slurm.sh $ACTION must run as root (it installs Debian packages and starts system" \
        "daemons), and 'sudo -n' is not available to user $(id -un)."
}

# --- daemons: name, pid file, log -----------------------------------------------------------------
# munged and the SLURM daemons daemonize themselves and write these pid files; mariadbd is put in
# the background with setsid and writes its own.
pidfile_of() {
    case "$1" in
        munged) echo /run/munge/munged.pid ;;
        mariadbd) echo /run/mysqld/mysqld.pid ;;
        slurmdbd) echo /run/slurmdbd.pid ;;
        slurmctld) echo /run/slurmctld.pid ;;
        slurmd) echo /run/slurmd.pid ;;
    esac
}
logfile_of() {
    case "$1" in
        munged) echo /var/log/munge/munged.log ;;
        mariadbd) echo "$MARIADB_LOG" ;;
        *) echo "$LOG_DIR/$1.log" ;;
    esac
}

# The pid of a running daemon, or nothing. A pid file alone is not enough: after a crash or a
# reboot of the container it may name a dead or reused pid, so the process name must match too.
running() { [ -n "$(pid_of "$1")" ]; }

pid_of() {
    local pidfile pid
    pidfile="$(pidfile_of "$1")"
    [ -r "$pidfile" ] || return 0
    pid="$(tr -dc 0-9 <"$pidfile")"
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
    return 0
}

failed_to_start() {
    local log
    log="$(logfile_of "$1")"
    echo "[slurm] ERROR: $1 did not start; its log is $log. Last lines:" >&2
    tail -n 20 "$log" >&2 2>/dev/null || echo "  (no log written)" >&2
    exit 1
}

# Wait up to $1 seconds until the command "${@:2}" succeeds.
wait_for() {
    local seconds="$1" i
    shift
    for ((i = 0; i < seconds * 4; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    return 1
}

stop_daemon() {
    local name="$1" pid i
    pid="$(pid_of "$name")"
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    # slurmctld saves its state on TERM and takes a few seconds; 30 s is far above what it needs.
    for ((i = 0; i < 120; i++)); do
        [ -d "/proc/$pid" ] || { say "stopped $name"; return 0; }
        sleep 0.25
    done
    say "$name (pid $pid) ignored TERM for 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

# --- install ----------------------------------------------------------------------------------
install_packages() {
    local missing=() package
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "apt-get not found: tools/slurm.sh needs Debian 12 (bookworm)" \
        "to install ${missing[*]}."
    say "installing ${missing[*]} (Debian packages, about 20 s)"
    local aptlog=/tmp/slurm-apt.log
    # The lock timeout makes apt wait for another apt run (unattended upgrades, a parallel setup)
    # instead of failing at once.
    { apt-get update -o DPkg::Lock::Timeout=300 \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            -o DPkg::Lock::Timeout=300 "${missing[@]}"; } >"$aptlog" 2>&1 \
        || { tail -n 20 "$aptlog" >&2; die "apt-get could not install ${missing[*]}; full output in $aptlog."; }
}

# --- configuration ----------------------------------------------------------------------------
# The node's line for slurm.conf, from what slurmd detects on this machine.
node_line() {
    local host="$1" hw memory
    # `slurmd -C` prints the hardware as a NodeName line (CPUs, sockets, cores, threads, memory).
    hw="$(slurmd -C 2>/dev/null | head -n 1)"
    [[ "$hw" == NodeName=* ]] || die "'slurmd -C' printed no NodeName line (got: '$hw')."
    memory="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
    [ -n "$memory" ] || die "'slurmd -C' reported no RealMemory (got: '$hw')."
    # 256 MB below what slurmd measures: free memory jitters, and a node that registers less than
    # its configured RealMemory is drained ("Low RealMemory").
    hw="$(sed -e "s/RealMemory=[0-9]*/RealMemory=$((memory - 256))/" -e "s/^NodeName=[^ ]*/NodeName=$host/" <<<"$hw")"
    # NodeAddr 127.0.0.1: no dependence on DNS or /etc/hosts for the node's own name.
    local gres=""
    [ "$FAKE_GPUS" -gt 0 ] && gres=" Gres=gpu:$FAKE_GPUS"
    echo "$hw NodeAddr=127.0.0.1$gres State=UNKNOWN"
}

write_slurm_conf() {
    local host="$1"
    cat <<EOF
# Generated by tools/slurm.sh (a single-node test cluster); rewritten on every 'up'.
ClusterName=$CLUSTER
# The controller is this machine, addressed by IP so that no name lookup is needed.
SlurmctldHost=$host(127.0.0.1)
# munge authenticates every RPC between commands and daemons.
AuthType=auth/munge
CredType=cred/munge
# slurmctld drops to the unprivileged 'slurm' user; slurmd must be root to start jobs as any user.
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
# Pid files are how 'stop' and 'status' find the daemons (no systemd here).
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# Track job processes by parent pid and bind no tasks: needs no cgroup set-up, which containers
# (hybrid cgroup v1/v2, no systemd) do not reliably offer.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
# Allocate cores and memory (not whole nodes), so that small jobs share the node as on a real
# cluster, and GRES (GPUs) as trackable resources.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job that asks for no memory gets 1 GB per CPU instead of the whole node, which would
# serialise every job.
DefMemPerCPU=1000
# A node that was down (a restart, a killed slurmd) returns to service when it registers.
ReturnToService=2
# Finished jobs stay visible to squeue for 5 minutes; the plugin needs MinJobAge >= 3 x its
# first-poll delay to trust squeue, and sacct (below) holds them forever anyway.
MinJobAge=300
JobCompType=jobcomp/none
# Accounting through slurmdbd, so that sacct (which the Snakemake plugin polls) answers.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
# Keep each job's --comment (the plugin writes rule_<rule>_wildcards_<...> there) in sacct.
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
EOF
    if [ "$FAKE_GPUS" -gt 0 ]; then
        echo "# Fake GPUs (SLURM_FAKE_GPUS=$FAKE_GPUS): scheduled as gres/gpu, backed by $FAKE_GPU_DIR."
        echo "GresTypes=gpu"
        # Account GPUs as a TRES, so that sacct's AllocTRES shows gres/gpu=N for a job.
        echo "AccountingStorageTRES=gres/gpu"
    fi
    node_line "$host"
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
}

write_gres_conf() {
    echo "# Generated by tools/slurm.sh: $FAKE_GPUS fake GPUs (SLURM_FAKE_GPUS) for scheduling tests."
    # slurmd insists on a device file per GPU (a count alone leaves the node INVALID_REG); these
    # are character devices with /dev/null's numbers, so a job given one can do no harm with it.
    echo "Name=gpu File=$FAKE_GPU_DIR/nvidia[0-$((FAKE_GPUS - 1))]"
}

write_slurmdbd_conf() {
    cat <<EOF
# Generated by tools/slurm.sh: job accounting in the local MariaDB, so that sacct works.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
}

# Install $2 (a temporary file) as $1 unless $1 already has that content; note any change.
CONFIG_CHANGED=0
install_if_changed() {
    local target="$1" new="$2" owner="$3" mode="$4"
    if ! { [ -f "$target" ] && cmp -s "$target" "$new"; }; then
        install -o "$owner" -g "$owner" -m "$mode" "$new" "$target"
        CONFIG_CHANGED=1
    fi
    rm -f "$new"
}

configure() {
    [[ "$FAKE_GPUS" =~ ^[0-9]+$ ]] || die "SLURM_FAKE_GPUS must be a whole number of GPUs (got '$FAKE_GPUS')."
    local host tmp
    host="$(hostname -s)"
    install -d -o slurm -g slurm "$CONF_DIR" "$LOG_DIR" "$STATE_DIR/slurmctld"
    install -d "$STATE_DIR/slurmd"

    tmp="$(mktemp)"
    write_slurm_conf "$host" >"$tmp"
    install_if_changed "$CONF_DIR/slurm.conf" "$tmp" root 644
    if [ "$FAKE_GPUS" -gt 0 ]; then
        install -d "$FAKE_GPU_DIR"
        local i
        for ((i = 0; i < FAKE_GPUS; i++)); do
            [ -c "$FAKE_GPU_DIR/nvidia$i" ] || { rm -f "$FAKE_GPU_DIR/nvidia$i"; mknod -m 666 "$FAKE_GPU_DIR/nvidia$i" c 1 3; }
        done
        tmp="$(mktemp)"
        write_gres_conf >"$tmp"
        install_if_changed "$CONF_DIR/gres.conf" "$tmp" root 644
    elif [ -f "$CONF_DIR/gres.conf" ]; then
        rm -f "$CONF_DIR/gres.conf"
        CONFIG_CHANGED=1
    fi
    tmp="$(mktemp)"
    write_slurmdbd_conf >"$tmp"
    # slurmdbd refuses a config that others can read (it holds the database password).
    install_if_changed "$CONF_DIR/slurmdbd.conf" "$tmp" slurm 600
}

# --- start ------------------------------------------------------------------------------------
start_munged() {
    running munged && return 0
    if [ ! -s /etc/munge/munge.key ]; then
        runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 755 /run/munge
    # munged must run as 'munge': it refuses a key owned by another user.
    runuser -u munge -- /usr/sbin/munged || failed_to_start munged
    wait_for 10 munge -n || failed_to_start munged
}

start_mariadbd() {
    running mariadbd || {
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null 2>&1 \
            || die "mariadb-install-db failed to create /var/lib/mysql."
        install -d -o mysql -g mysql /run/mysqld /var/log/mysql
        # setsid -f: its own session, so that it outlives this script and the caller's terminal.
        setsid -f /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
            --pid-file=/run/mysqld/mysqld.pid --log-error="$MARIADB_LOG" </dev/null >/dev/null 2>&1
    }
    wait_for 60 mariadb-admin ping || failed_to_start mariadbd
    mariadb -e "CREATE DATABASE IF NOT EXISTS $DB_NAME;
        CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';" \
        || die "could not create the accounting database $DB_NAME in MariaDB (log: $MARIADB_LOG)."
}

start_slurmdbd() {
    running slurmdbd || slurmdbd || failed_to_start slurmdbd
    wait_for 60 sacctmgr -n list cluster || failed_to_start slurmdbd
    # slurmctld would register the cluster itself on first contact; adding it first means that
    # sacct knows the cluster even before slurmctld's first connection.
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" \
        || sacctmgr -i add cluster "$CLUSTER" >/dev/null
}

start_slurmctld() {
    running slurmctld || slurmctld || failed_to_start slurmctld
    wait_for 30 sinfo -h || failed_to_start slurmctld
}

start_slurmd() {
    running slurmd || slurmd || failed_to_start slurmd
    wait_for 10 running slurmd || failed_to_start slurmd
}

node_state() { sinfo -h -N -o %t 2>/dev/null | head -n 1; }

wait_until_ready() {
    local host state i
    host="$(hostname -s)"
    for ((i = 0; i < 240; i++)); do
        state="$(node_state)"
        case "$state" in
            idle | mix | alloc) break ;;
            # A node left down or drained by an earlier run (killed slurmd, a restart): put it back.
            down* | drain* | drng* | fail*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.25
    done
    case "$state" in
        idle | mix | alloc) ;;
        *)
            scontrol show node "$host" >&2 || true
            die "node $host is '$state', not idle, after 60 s; see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log." ;;
    esac
    # sacct answering is what the Snakemake plugin needs; it is ready once slurmdbd serves queries.
    wait_for 30 sacct -n -X --starttime now || die "sacct does not answer; see $LOG_DIR/slurmdbd.log."
    local gpus
    gpus="$(sinfo -h -N -o %G | head -n 1)"
    [ "$gpus" = "(null)" ] && gpus=none
    say "ready: node $host $state, partition debug, gres $gpus"
}

# --- actions ----------------------------------------------------------------------------------
do_up() {
    install_packages
    configure
    if [ "$CONFIG_CHANGED" -eq 1 ]; then
        if [ -n "$(pid_of slurmctld)$(pid_of slurmd)$(pid_of slurmdbd)" ]; then
            say "configuration changed (SLURM_FAKE_GPUS=$FAKE_GPUS): restarting the SLURM daemons"
            stop_daemon slurmd
            stop_daemon slurmctld
            stop_daemon slurmdbd
        fi
    fi
    start_munged
    start_mariadbd
    start_slurmdbd
    start_slurmctld
    start_slurmd
    wait_until_ready
}

no_jobs_listed() { [ -z "$(squeue -h -o %i 2>/dev/null)" ]; }

do_stop() {
    if running slurmctld; then
        # Cancel every job first, so that no job process outlives slurmd.
        local jobs
        jobs="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
        [ -z "${jobs// /}" ] || scancel $jobs || true
        wait_for 20 no_jobs_listed || say "some jobs still listed after 20 s"
    fi
    local name
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        stop_daemon "$name"
    done
}

do_status() {
    local name pid rc=0
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        pid="$(pid_of "$name")"
        if [ -n "$pid" ]; then
            printf '%-10s running (pid %s)   log: %s\n' "$name" "$pid" "$(logfile_of "$name")"
        else
            printf '%-10s not running          log: %s\n' "$name" "$(logfile_of "$name")"
            rc=1
        fi
    done
    if running slurmctld; then
        sinfo -N -o '%N %P %t %c %m %G'
    fi
    return "$rc"
}

do_selftest() {
    running slurmctld || die "the cluster is not running: run 'bash tools/slurm.sh up' first."
    local out jobid state i
    # srun: an interactive step on the node (also what the plugin's jobstep runs inside each job).
    out="$(timeout 60 srun -N1 -n1 hostname)" || die "srun failed; see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log."
    say "srun hostname: $out"
    # sbatch: a batch job, waited for, then looked up in accounting as the plugin does.
    jobid="$(timeout 60 sbatch --parsable --wait -o /dev/null -J tools-slurm-selftest --wrap 'srun true')" \
        || die "sbatch failed (job ${jobid:-not submitted}); see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log."
    for ((i = 0; i < 40; i++)); do
        state="$(sacct -n -X -P -j "$jobid" -o State 2>/dev/null | head -n 1)"
        [ -n "$state" ] && [ "$state" != RUNNING ] && [ "$state" != PENDING ] && break
        sleep 0.25
    done
    [ "$state" = COMPLETED ] || die "sbatch job $jobid: sacct says '${state:-nothing}', not COMPLETED; see $LOG_DIR/slurmdbd.log."
    say "sbatch job $jobid COMPLETED (sacct)"
    if sinfo -h -N -o %G | grep -q gpu; then
        out="$(timeout 60 srun -N1 -n1 --gpus=1 printenv CUDA_VISIBLE_DEVICES)" \
            || die "srun --gpus=1 failed on a node that advertises GPUs; see $LOG_DIR/slurmd.log."
        say "srun --gpus=1: CUDA_VISIBLE_DEVICES=$out"
    fi
    say "selftest passed"
}

case "$ACTION" in
    up) need_root "$@"; do_up ;;
    stop) need_root "$@"; do_stop ;;
    status) do_status ;;
    selftest) do_selftest ;;
    *) usage ;;
esac
