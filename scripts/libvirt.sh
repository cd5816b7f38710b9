#!/usr/bin/env bash
# A real libvirtd + QEMU (TCG: no KVM needed) for the Auctioneer's enforcement tests and the demo: Debian's
# libvirt 9.0 and qemu-system-x86 7.2, virtlogd and libvirtd as plain daemons (no systemd). Run as root.
# See `scripts/libvirt.sh --help`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
usage: scripts/libvirt.sh [start|stop|status|install|--help]

  start    (default) install the Debian packages if missing (scripts/lib.sh: `apt-get update` only
           when installing fails without it; libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system qemu-system-x86 libvirt-dev
           libvirt-clients, without recommends), create the users and groups the QEMU driver runs guests
           as (libvirt-qemu, kvm, libvirt) and the folders it needs, give /dev/kvm to group kvm, give the
           VMs' cgroup (/machine) priority over the host's processes (GRIDCREDIT_MACHINE_CPU_SHARES,
           default 262144), start whatever of virtlogd and libvirtd is not running, give the two
           daemons a cgroup of their own (/hypervisor) with the same priority
           (GRIDCREDIT_HYPERVISOR_CPU_SHARES, default as the VMs'), and wait until
           `virsh -c qemu:///system version` answers.
           Idempotent: a second run starts nothing (it checks, and moves the daemons to /hypervisor).
  stop     stop libvirtd and virtlogd (SIGTERM, then SIGKILL after 15 s). Running guests are left
           running (libvirtd finds them again when it starts).
  status   one line per daemon; exit 0 only when both run and qemu:///system answers.
  install  only the Debian packages, users and folders.

libvirt-dev is installed for pip, which builds libvirt-python against it (`pip install -e .[test]`).
Guests run as user libvirt-qemu (the QEMU driver's default on Debian): the Auctioneer's state directory
(its disk copies) must be reachable by that user; see services/auctioneer/hypervisor.py.

Exit codes: 0 done (status: all running); 1 a daemon did not start or did not answer (the message names
the log); 2 usage; 3 status: not all running; 4 not root; 5 package install failed.
EOF
}

PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system qemu-system-x86 libvirt-dev libvirt-clients)
DAEMONS=(virtlogd libvirtd)
URI=qemu:///system
LOG_DIR=/var/log/libvirt

say() { echo "libvirt.sh: $*"; }
die() { local code="$1"; shift; echo "libvirt.sh: $*" >&2; exit "$code"; }

need_root() { [ "$(id -u)" = 0 ] || die 4 "NotRoot: run as root (it installs packages, adds users, starts daemons)"; }

install_packages() { install_missing_packages libvirt.sh "${PACKAGES[@]}" || exit 5; }

# The QEMU driver runs guests as libvirt-qemu:libvirt-qemu and chowns /dev/kvm-like files to group kvm; the
# packages' postinst makes these users only when it can (not always in a container): make them ourselves.
make_users() {
    getent group kvm >/dev/null || groupadd --system kvm
    getent group libvirt >/dev/null || groupadd --system libvirt
    getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
    id libvirt-qemu >/dev/null 2>&1 || useradd --system --gid libvirt-qemu --groups kvm \
        --home-dir /var/lib/libvirt --no-create-home --shell /usr/sbin/nologin libvirt-qemu
}

make_dirs() {
    mkdir -p "$LOG_DIR/qemu" /var/run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt/qemu
}

# /dev/kvm as Debian's udev rule leaves it (root:kvm 0660; no udev runs here). Left root-only, libvirtd
# probes QEMU with KVM (as root) and then finds KVM unusable by libvirt-qemu: it throws its capability cache
# away and probes again (~2 s a time) about 26 times per domain start — a VM took ~55 s to start instead of
# ~0.5 s. Our guests run on TCG (<domain type='qemu'>) either way.
fix_kvm_device() {
    [ -c /dev/kvm ] || return 0
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
}

# The pid of a running daemon (its pid file names a live, non-zombie process of that program), else nothing.
running_pid() {
    local file="/var/run/$1.pid" pid
    [ -s "$file" ] || return 1
    pid="$(tr -dc 0-9 <"$file")"
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm")" = "$1" ] || return 1
    # A killed daemon stays a zombie until PID 1 (not an init here) reaps it.
    [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
    echo "$pid"
}

answers() { timeout 20 virsh -c "$URI" version >/dev/null 2>&1; }

# The VMs' CPU partition (libvirt's /machine cgroup) gets cpu.shares $MACHINE_CPU_SHARES (default 262144, the
# most cgroup v1 takes; cgroup v2: cpu.weight 10000) against the host's own processes, each of which weighs
# 1024: on the sold CPUs the market's VMs then get what their caps allow even when the host is busy, and the
# host's processes move to the other CPUs. With the default 1024, an uncapped spinning guest got 0.38 of its
# CPU while other tests ran (load average 4 on 2 CPUs).
MACHINE_CPU_SHARES="${GRIDCREDIT_MACHINE_CPU_SHARES:-262144}"
prioritize_machines() {
    if [ -d /sys/fs/cgroup/cpu ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then    # cgroup v1
        mkdir -p /sys/fs/cgroup/cpu/machine 2>/dev/null \
            && echo "$MACHINE_CPU_SHARES" >/sys/fs/cgroup/cpu/machine/cpu.shares 2>/dev/null \
            || say "warning: could not set /sys/fs/cgroup/cpu/machine/cpu.shares (read-only cgroups?): the VMs compete with the host's processes"
    elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then                                # cgroup v2
        mkdir -p /sys/fs/cgroup/machine.slice 2>/dev/null || return 0
        local weight=$(( MACHINE_CPU_SHARES * 10000 / 262144 ))
        [ "$weight" -ge 1 ] || weight=1
        echo "$weight" >/sys/fs/cgroup/machine.slice/cpu.weight 2>/dev/null || true
    fi
}

# The daemons' own cgroup (/hypervisor), as heavy as the VMs': a VM start is ~400 QMP round trips between
# libvirtd and the new QEMU (libvirt 9.0 reads every CPU feature with qom-get), so a libvirtd weighing 1024
# among the host's busy processes (other tests, benchmarks) made three simultaneous starts take ~2 s. The
# daemons are idle but for the auctioneer's calls. Moved whenever `start` runs (they may have been started
# before, or by hand).
HYPERVISOR_CPU_SHARES="${GRIDCREDIT_HYPERVISOR_CPU_SHARES:-$MACHINE_CPU_SHARES}"
prioritize_daemons() {
    local group="" daemon pid
    if [ -d /sys/fs/cgroup/cpu ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then    # cgroup v1
        group=/sys/fs/cgroup/cpu/hypervisor
        mkdir -p "$group" 2>/dev/null && echo "$HYPERVISOR_CPU_SHARES" >"$group/cpu.shares" 2>/dev/null || group=""
    elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then                                # cgroup v2
        group=/sys/fs/cgroup/hypervisor
        mkdir -p "$group" 2>/dev/null \
            && echo $(( HYPERVISOR_CPU_SHARES * 10000 / 262144 > 0 ? HYPERVISOR_CPU_SHARES * 10000 / 262144 : 1 )) \
                >"$group/cpu.weight" 2>/dev/null || group=""
    fi
    if [ -z "$group" ]; then
        say "warning: could not make the daemons' cgroup (read-only cgroups?): VM starts compete with the host's processes"
        return 0
    fi
    for daemon in "${DAEMONS[@]}"; do
        pid="$(running_pid "$daemon")" || continue
        echo "$pid" >"$group/cgroup.procs" 2>/dev/null \
            || say "warning: could not move $daemon ($pid) to $group: VM starts compete with the host's processes"
    done
}

start_daemon() {
    local daemon="$1"
    running_pid "$daemon" >/dev/null && return 0
    say "starting $daemon"
    # -d: daemonize; each writes /var/run/<daemon>.pid. Their logs: $LOG_DIR/<daemon>.log (below).
    case "$daemon" in
    virtlogd) virtlogd -d ;;
    libvirtd) LIBVIRT_LOG_OUTPUTS="3:file:$LOG_DIR/libvirtd.log" libvirtd -d ;;
    esac
    local i
    for i in $(seq 1 50); do
        running_pid "$daemon" >/dev/null && return 0
        sleep 0.2
    done
    die 1 "DaemonNotStarted: $daemon did not start (see $LOG_DIR/$daemon.log)"
}

start() {
    need_root
    install_packages
    make_users
    make_dirs
    fix_kvm_device
    prioritize_machines
    start_daemon virtlogd
    start_daemon libvirtd
    prioritize_daemons
    local i
    for i in $(seq 1 60); do
        answers && { say "libvirtd answers on $URI"; return 0; }
        sleep 0.5
    done
    die 1 "NotAnswering: virsh -c $URI version failed for 30 s (see $LOG_DIR/libvirtd.log)"
}

stop() {
    need_root
    local daemon pid i
    for daemon in libvirtd virtlogd; do
        pid="$(running_pid "$daemon")" || { say "$daemon not running"; continue; }
        say "stopping $daemon ($pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 75); do
            running_pid "$daemon" >/dev/null || break
            sleep 0.2
        done
        if running_pid "$daemon" >/dev/null; then
            say "$daemon did not stop in 15 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

status() {
    local daemon pid ok=0
    for daemon in "${DAEMONS[@]}"; do
        if pid="$(running_pid "$daemon")"; then echo "$daemon running ($pid)"; else echo "$daemon stopped"; ok=3; fi
    done
    if answers; then echo "$URI answers"; else echo "$URI does not answer"; ok=3; fi
    return "$ok"
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
status) status ;;
install) need_root; install_packages; make_users; make_dirs; fix_kvm_device ;;
-h|--help|help) usage ;;
*) usage >&2; exit 2 ;;
esac
