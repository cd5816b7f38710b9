# shellcheck shell=bash
# Shared by the set-up scripts (scripts/libvirt.sh, slurm.sh, browser.sh), sourced: `. "$(dirname "$0")/lib.sh"`.
# Debian packages, installed only when missing, without recommends.
#
#   missing_packages PACKAGE...              the packages not installed, one a line
#   install_missing_packages WHO PACKAGE...  install the missing ones; messages begin "WHO: "; returns 0 when
#                                            all are installed, 5 (PackageInstallFailed, said on stderr) if not
#   as_root COMMAND...                       COMMAND as root (sudo when not root)
#
# One `apt-get update` per machine is enough (scripts/test.sh runs it when it installs anything): install with
# the package lists there are, and update only when that fails (no lists yet, or lists older than the mirror's
# .debs — qemu's security updates replace them often). The lists' mtimes are the mirror's, not the time of the
# update, so they cannot tell how fresh they are. policy-rc.d (or the missing runlevel/systemd) keeps the
# packages' postinst from starting services: each script starts its own daemons.

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing_packages() {
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || echo "$package"
    done
}

install_missing_packages() {
    local who="$1" missing=()
    shift
    mapfile -t missing < <(missing_packages "$@")
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "$who: installing Debian packages: ${missing[*]}"
    local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}")
    as_root "${install[@]}" && return 0
    echo "$who: installing failed with the package lists there were: apt-get update, then again"
    if ! as_root apt-get update -q; then
        echo "$who: PackageInstallFailed: apt-get update failed (network? the mirror in /etc/apt/sources.list)" >&2
        return 5
    fi
    if ! as_root "${install[@]}"; then
        echo "$who: PackageInstallFailed: apt-get install ${missing[*]} failed" >&2
        return 5
    fi
}
