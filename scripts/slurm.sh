#!/usr/bin/env bash
# A real single-node Slurm cluster (Debian's slurm-wlm 22.05) for the tests and the demo: munged, MariaDB,
# slurmdbd, slurmctld and slurmd as plain daemons (no systemd, no cgroups), every file of theirs under one
# directory. Run as root. See `scripts/slurm.sh --help`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
usage: scripts/slurm.sh [start|stop [DAEMON...]|status|install|env|--help]

  start    (default) install the Debian packages if missing (slurm-wlm slurmdbd munge mariadb-server,
           without recommends; `apt-get update` only when installing fails without it),
           write the configuration, a munge key, a MariaDB database and user for slurmdbd, the Unix users
           gcuser1 and gcuser2, start whatever of munged, mariadbd, slurmdbd, slurmctld, slurmd is not
           running, register the cluster, accounts and users with sacctmgr, and wait until `sinfo` shows
           the node idle and `sacct` answers. Idempotent: a second run only checks.
  stop     stop DAEMON... (munged mariadbd slurmdbd slurmctld slurmd), or all of them (SIGTERM, then
           SIGKILL after 15 s). `stop slurmctld` then `start` restarts the controller.
  status   one line per daemon; exit 0 only when all five run.
  install  only the Debian packages.
  env      print the environment a client needs (SLURM_CONF=...), for `eval "$(scripts/slurm.sh env)"`.

Everything lives in $GRIDCREDIT_SLURM_DIR (default /var/lib/gridcredit-slurm):
  etc/slurm.conf etc/slurmdbd.conf   the configuration (written on every start; slurmctld and slurmd
                                      are restarted when slurm.conf changed)
  etc/job_submit.lua                  the job_submit/lua script (Slurm reads it from slurm.conf's folder
                                      and reloads it when its mtime, in whole seconds, is later than the
                                      loaded one's); written only when missing
  etc/prolog_slurmctld                PrologSlurmctld (runs as user slurm); written only when missing
  etc/epilog_slurmctld                EpilogSlurmctld (as user slurm, at each job's end); the same
  etc/*.default                       the accept-all defaults of those three, to put back after a test
  munge/ mysql/ spool/ log/ run/      munge key and log (its socket: /run/munge), MariaDB data, state, logs, pid files
/etc/slurm/slurm.conf is made a symbolic link to etc/slurm.conf when no other slurm.conf is there, so
plain `sinfo`/`sbatch` work for every user; otherwise set SLURM_CONF (see `env`).
Cluster "gridcredit", node "gcnode" (127.0.0.1), partitions "batch" (default) and "short" (1 hour),
accounts proj1 and proj2 (gcuser1's default proj1, gcuser2's proj2; each may use both), root in "root".
Ports on 127.0.0.1: slurmctld 6817, slurmd 6818, slurmdbd 6819, MariaDB 6820.

Exit codes: 0 done (status: all running); 1 a daemon did not start or the cluster did not become ready
(the message names the log); 2 usage; 3 status: not all running; 4 not root; 5 package install failed.
EOF
}

DIR="${GRIDCREDIT_SLURM_DIR:-/var/lib/gridcredit-slurm}"
ETC="$DIR/etc"; LOG="$DIR/log"; RUN="$DIR/run"; MUNGE="$DIR/munge"; MYSQL="$DIR/mysql"; SPOOL="$DIR/spool"
CONF="$ETC/slurm.conf"
CLUSTER=gridcredit
NODE=gcnode
DB_PORT=6820
DB_SOCKET="$MYSQL/mysqld.sock"
# munged's socket stays where every munge client looks: AuthInfo=socket= in slurm.conf is not honoured
# by the clients' connections to slurmdbd (sacctmgr went to the default path).
MUNGE_SOCKET=/run/munge/munge.socket.2
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server lua-socket)   # lua-socket: socket.unix for JARM's job_submit.lua (Lua 5.1)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
export SLURM_CONF="$CONF"

say() { echo "slurm.sh: $*"; }
die() { local code="$1"; shift; echo "slurm.sh: $*" >&2; exit "$code"; }

need_root() { [ "$(id -u)" = 0 ] || die 4 "NotRoot: run as root (it installs packages, adds users, starts daemons)"; }

install_packages() { install_missing_packages slurm.sh "${PACKAGES[@]}" || exit 5; }   # scripts/lib.sh

pid_file() {
    case "$1" in
    munged) echo "$MUNGE/munged.pid" ;;
    mariadbd) echo "$MYSQL/mariadbd.pid" ;;
    *) echo "$RUN/$1.pid" ;;
    esac
}

# The pid of a running daemon (its pid file names a live process of that program), else nothing.
running_pid() {
    local file pid
    file="$(pid_file "$1")"
    [ -s "$file" ] || return 1
    pid="$(tr -dc 0-9 <"$file")"
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm")" = "$1" ] || return 1
    # A killed daemon stays a zombie until PID 1 (not an init here) reaps it.
    [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
    echo "$pid"
}

write_if_changed() {  # write_if_changed FILE MODE OWNER < content; returns 0 when the file changed
    local file="$1" mode="$2" owner="$3" tmp
    tmp="$(mktemp "$file.XXXXXX")"
    cat >"$tmp"
    if [ -f "$file" ] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"; chmod "$mode" "$file"; chown "$owner" "$file"; return 1
    fi
    chmod "$mode" "$tmp"; chown "$owner" "$tmp"; mv -f "$tmp" "$file"
    return 0
}

make_users() {
    local user
    for user in gcuser1 gcuser2; do
        id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
    done
}

make_dirs() {
    install -d -m 0755 -o root -g root "$DIR" "$ETC"
    install -d -m 0755 -o munge -g munge "$MUNGE"
    install -d -m 0750 -o mysql -g mysql "$MYSQL"
    install -d -m 0755 -o slurm -g slurm "$LOG" "$RUN" "$SPOOL" "$SPOOL/ctld"
    install -d -m 0755 -o root -g root "$SPOOL/d"
}

write_munge_key() {
    if [ ! -s "$MUNGE/munge.key" ]; then
        head -c 1024 /dev/urandom >"$MUNGE/munge.key"
    fi
    chown munge:munge "$MUNGE/munge.key"; chmod 0400 "$MUNGE/munge.key"
}

node_line() {
    # The hardware as slurmd sees it, under our node name and address.
    local hw
    hw="$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //')"
    echo "NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=localhost $hw State=UNKNOWN"
}

write_configs() {
    local changed=1 password
    if [ ! -s "$ETC/db-password" ]; then
        (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$ETC/db-password")
    fi
    password="$(cat "$ETC/db-password")"
    write_if_changed "$CONF" 0644 root:root <<EOF && changed=0
# Written by scripts/slurm.sh: a single-node cluster in a container (no systemd, no cgroups).
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: processes are tracked through /proc, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
SlurmdParameters=config_overrides
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
MinJobAge=600
KillWait=5
InactiveLimit=0
# Accounting as real sites run it: slurmdbd in front of MariaDB; jobs need an association.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageEnforce=associations
AccountingStorageTRES=cpu,mem,node,billing,gres/gpu
JobCompType=jobcomp/none
# The hooks JARM uses: admission (serialized under the controller's locks), the hold off the
# submission path, the job's end. Slurm reads job_submit.lua from this file's folder.
JobSubmitPlugins=lua
PrologSlurmctld=$ETC/prolog_slurmctld
EpilogSlurmctld=$ETC/epilog_slurmctld
MailProg=/bin/true
$(node_line)
PartitionName=batch Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=$NODE MaxTime=60 State=UP
EOF
    write_if_changed "$ETC/slurmdbd.conf" 0600 slurm:slurm <<EOF || true
# Written by scripts/slurm.sh.
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$password
StorageLoc=slurm_acct_db
EOF
    write_if_changed "$ETC/job_submit.lua.default" 0644 root:root <<'EOF' || true
-- The default job_submit.lua of scripts/slurm.sh: accepts every job.
function slurm_job_submit(job_desc, part_list, submit_uid)
    return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    return slurm.SUCCESS
end

return slurm.SUCCESS
EOF
    write_if_changed "$ETC/prolog_slurmctld.default" 0755 root:root <<'EOF' || true
#!/bin/sh
# The default PrologSlurmctld of scripts/slurm.sh: lets every job start.
exit 0
EOF
    write_if_changed "$ETC/epilog_slurmctld.default" 0755 root:root <<'EOF' || true
#!/bin/sh
# The default EpilogSlurmctld of scripts/slurm.sh: does nothing.
exit 0
EOF
    [ -f "$ETC/job_submit.lua" ] || install -m 0644 "$ETC/job_submit.lua.default" "$ETC/job_submit.lua"
    [ -f "$ETC/prolog_slurmctld" ] || install -m 0755 "$ETC/prolog_slurmctld.default" "$ETC/prolog_slurmctld"
    [ -f "$ETC/epilog_slurmctld" ] || install -m 0755 "$ETC/epilog_slurmctld.default" "$ETC/epilog_slurmctld"
    # Plain `sinfo` for every user, unless another Slurm's configuration is already there.
    mkdir -p /etc/slurm
    if [ ! -e /etc/slurm/slurm.conf ] || [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
        ln -sfn "$CONF" /etc/slurm/slurm.conf
    fi
    return $changed
}

wait_for() {  # wait_for SECONDS WHAT LOGFILE COMMAND...
    local seconds="$1" what="$2" log="$3"; shift 3
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "slurm.sh: NotReady: $what after ${seconds} s; see $log:" >&2
            tail -n 15 "$log" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.5
    done
}

# Every daemon is started detached (setsid, standard streams closed) so a caller's pipe never waits on it.
start_munged() {
    running_pid munged >/dev/null && return 0
    install -d -m 0755 -o munge -g munge "$(dirname "$MUNGE_SOCKET")"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    touch "$MUNGE/munged.log"; chown munge:munge "$MUNGE/munged.log"; chmod 0640 "$MUNGE/munged.log"
    setsid runuser -u munge -- /usr/sbin/munged --key-file="$MUNGE/munge.key" \
        --socket="$MUNGE_SOCKET" --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" \
        --seed-file="$MUNGE/munged.seed" </dev/null >>"$MUNGE/munged.log" 2>&1 \
        || die 1 "NotStarted: munged; see $MUNGE/munged.log"
    wait_for 20 "munged answers" "$MUNGE/munged.log" \
        sh -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'"
    say "munged running (pid $(running_pid munged))"
}

mysql_root() { mariadb --no-defaults --protocol=socket --socket="$DB_SOCKET" -u root "$@"; }

start_mariadbd() {
    if ! running_pid mariadbd >/dev/null; then
        if [ ! -d "$MYSQL/data/mysql" ]; then
            say "creating the MariaDB data directory"
            mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL/data" \
                --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
                || die 1 "NotStarted: mariadb-install-db failed; see $LOG/mariadb-install.log"
        fi
        touch "$LOG/mariadb.log"; chown mysql:mysql "$LOG/mariadb.log"
        setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$MYSQL/data" --socket="$DB_SOCKET" \
            --pid-file="$MYSQL/mariadbd.pid" --bind-address=127.0.0.1 --port=$DB_PORT --skip-name-resolve \
            --log-error="$LOG/mariadb.log" --innodb-buffer-pool-size=1024M --innodb-lock-wait-timeout=900 \
            --innodb-log-file-size=64M </dev/null >>"$LOG/mariadb.log" 2>&1 &
        wait_for 60 "MariaDB answers on $DB_SOCKET" "$LOG/mariadb.log" mysql_root -e "SELECT 1"
        say "mariadbd running (pid $(running_pid mariadbd))"
    fi
    # The database and user of slurmdbd (TCP on 127.0.0.1 with a password; root keeps socket auth).
    local password
    password="$(cat "$ETC/db-password")"
    mysql_root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

start_slurmdbd() {
    running_pid slurmdbd >/dev/null && return 0
    setsid /usr/sbin/slurmdbd </dev/null >>"$LOG/slurmdbd.log" 2>&1 \
        || die 1 "NotStarted: slurmdbd; see $LOG/slurmdbd.log"
    # The first start creates the tables: allow it time on a loaded machine.
    wait_for 120 "slurmdbd answers" "$LOG/slurmdbd.log" sacctmgr -n -P show cluster
    say "slurmdbd running (pid $(running_pid slurmdbd))"
}

start_slurmctld() {
    running_pid slurmctld >/dev/null && return 0
    setsid /usr/sbin/slurmctld -f "$CONF" </dev/null >>"$LOG/slurmctld.log" 2>&1 \
        || die 1 "NotStarted: slurmctld; see $LOG/slurmctld.log"
    wait_for 60 "slurmctld answers" "$LOG/slurmctld.log" scontrol ping
    say "slurmctld running (pid $(running_pid slurmctld))"
}

start_slurmd() {
    running_pid slurmd >/dev/null && return 0
    setsid /usr/sbin/slurmd -f "$CONF" -N "$NODE" </dev/null >>"$LOG/slurmd.log" 2>&1 \
        || die 1 "NotStarted: slurmd; see $LOG/slurmd.log"
    wait_for 30 "slurmd writes its pid file" "$LOG/slurmd.log" running_pid slurmd
    say "slurmd running (pid $(running_pid slurmd))"
}

has_assoc() {  # has_assoc ACCOUNT [USER]
    sacctmgr -n -P show assoc cluster=$CLUSTER account="$1" ${2:+user="$2"} format=account,user \
        | grep -q "^$1|${2:-}$"
}

register() {
    sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER" \
        || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    local account user
    for account in proj1 proj2; do
        has_assoc "$account" || sacctmgr -i add account "$account" cluster=$CLUSTER \
            description="gridcredit test project" organization=gridcredit >/dev/null
    done
    has_assoc proj1 gcuser1 || sacctmgr -i add user gcuser1 account=proj1 defaultaccount=proj1 cluster=$CLUSTER >/dev/null
    has_assoc proj2 gcuser1 || sacctmgr -i add user gcuser1 account=proj2 cluster=$CLUSTER >/dev/null
    has_assoc proj2 gcuser2 || sacctmgr -i add user gcuser2 account=proj2 defaultaccount=proj2 cluster=$CLUSTER >/dev/null
    has_assoc proj1 gcuser2 || sacctmgr -i add user gcuser2 account=proj1 cluster=$CLUSTER >/dev/null
    has_assoc root root || sacctmgr -i add user root account=root defaultaccount=root cluster=$CLUSTER >/dev/null
}

node_ready() {
    sinfo -h -n "$NODE" -o '%T' | grep -Eqx 'idle|mixed|allocated|completing' && sacct -n -X -S now-1minute >/dev/null
}

start() {
    need_root
    local started=$SECONDS
    install_packages
    make_users
    make_dirs
    write_munge_key
    local conf_changed=1
    write_configs && conf_changed=0
    start_munged
    start_mariadbd
    start_slurmdbd
    register
    if [ $conf_changed = 0 ] && { running_pid slurmctld || running_pid slurmd; } >/dev/null; then
        # Not `scontrol reconfigure`: it shows a newly set EpilogSlurmctld in `scontrol show config` but
        # never runs it (22.05); a restart does.
        say "slurm.conf changed: restarting slurmctld and slurmd"
        stop slurmd slurmctld
    fi
    start_slurmctld
    start_slurmd
    # A node that was DOWN (e.g. slurmd killed) comes back with ReturnToService=2 once slurmd registers.
    wait_for 90 "node $NODE idle in sinfo and sacct answering" "$LOG/slurmd.log" node_ready
    say "cluster $CLUSTER ready: node $NODE $(sinfo -h -n $NODE -o '%T'), state in $DIR ($((SECONDS - started)) s)"
}

stop_one() {
    local name="$1" pid
    pid="$(running_pid "$name")" || { say "$name not running"; return 0; }
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 75); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    if [ -d "/proc/$pid" ]; then kill -9 "$pid" 2>/dev/null || true; say "$name killed (no exit 15 s after SIGTERM)"; fi
    say "$name stopped"
}

stop() {
    need_root
    local names=("$@") name i
    [ ${#names[@]} -gt 0 ] || names=(slurmd slurmctld slurmdbd mariadbd munged)
    for name in "${names[@]}"; do
        case " ${DAEMONS[*]} " in *" $name "*) ;; *) echo "slurm.sh: unknown daemon '$name' (one of: ${DAEMONS[*]})" >&2; exit 2 ;; esac
    done
    # Stop in dependency order whatever the order given: clients first, munged last.
    for i in slurmd slurmctld slurmdbd mariadbd munged; do
        for name in "${names[@]}"; do [ "$name" = "$i" ] && stop_one "$i"; done
    done
    return 0
}

status() {
    local name pid all=0
    for name in "${DAEMONS[@]}"; do
        if pid="$(running_pid "$name")"; then echo "$name running (pid $pid)"; else echo "$name not running"; all=3; fi
    done
    return $all
}

case "${1:-start}" in
-h|--help|help) usage ;;
start) [ $# -le 1 ] || { usage >&2; exit 2; }; start ;;
stop) shift; stop "$@" ;;
status) status ;;
install) need_root; install_packages ;;
env) echo "export SLURM_CONF=$CONF" ;;
*) usage >&2; exit 2 ;;
esac
