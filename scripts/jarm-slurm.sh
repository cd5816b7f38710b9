#!/usr/bin/env bash
# Install gridcredit's JARM hooks on a Slurm controller. See `scripts/jarm-slurm.sh --help`.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/jarm-slurm.sh install [--prefix DIR] [--python PYTHON]
       scripts/jarm-slurm.sh hooks --prefix DIR --config FILE --url URL --cert FILE --key FILE --trust DIR --out DIR
       scripts/jarm-slurm.sh --help

  install  a virtual environment at DIR/venv (default /opt/gridcredit) made with PYTHON (default
           /usr/bin/python3, the distribution's: slurmctld runs PrologSlurmctld and EpilogSlurmctld as
           SlurmUser, who must be able to run it — a Python under /root is not), with gridcredit installed
           from this checkout (a copy of it: not editable). Everything readable by all. Skipped when DIR
           already holds this checkout's code (a stamp of its files).
  hooks    write OUT/jarm-prolog and OUT/jarm-epilog: PrologSlurmctld and EpilogSlurmctld scripts that
           run `gridcredit jarm prolog|epilog` with the controller's credential (CERT, KEY: readable by
           SlurmUser, the key by nobody else) against the JARM at URL, trusting the CA directory TRUST,
           with the configuration FILE (its [jarm] section: slurm_bin_dir, …). Then set in slurm.conf:
               PrologSlurmctld=OUT/jarm-prolog
               EpilogSlurmctld=OUT/jarm-epilog
           and restart slurmctld. The JARM host must name the controller's DN in [jarm] controllers
           (its own host DN is always one).

Exit codes: 0 done; 1 a step failed (its message says which); 2 usage.
EOF
}

die() { local code="$1"; shift; echo "jarm-slurm.sh: $*" >&2; exit "$code"; }
SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX=/opt/gridcredit
PYTHON=/usr/bin/python3

source_stamp() {   # the checkout's code: what the venv was made from
    (cd "$SOURCE" && find gridcredit security server services xmlstore wsdl setup.py -type f \
        \( -name '*.py' -o -name '*.wsdl' -o -name '*.lua' \) -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}

install() {
    local stamp; stamp="$(source_stamp)"
    if [ -x "$PREFIX/venv/bin/gridcredit" ] && [ "$(cat "$PREFIX/venv/.gridcredit-stamp" 2>/dev/null)" = "$stamp" ]; then
        echo "jarm-slurm.sh: $PREFIX/venv has this checkout's gridcredit already"
        return 0
    fi
    [ -x "$PYTHON" ] || die 1 "no $PYTHON: install the distribution's python3 and python3-venv (apt-get install python3-venv)"
    local copy; copy="$(mktemp -d)"
    trap 'rm -rf "$copy"' RETURN
    # a clean copy: no .venv, no stale build/ of an earlier setup.py run, no tests
    tar -C "$SOURCE" --exclude=./.venv --exclude=./build --exclude=./.git --exclude=./tests --exclude='*.egg-info' \
        -cf - . | tar -C "$copy" -xf -
    rm -rf "$PREFIX/venv"
    mkdir -p "$PREFIX"
    "$PYTHON" -m venv "$PREFIX/venv" || die 1 "$PYTHON -m venv $PREFIX/venv failed (is python3-venv installed?)"
    "$PREFIX/venv/bin/python" -m pip install -q --disable-pip-version-check "$copy" \
        || die 1 "pip install of gridcredit into $PREFIX/venv failed"
    local version
    version="$("$PREFIX/venv/bin/gridcredit" --version)" || die 1 "$PREFIX/venv/bin/gridcredit does not run (above)"
    "$PREFIX/venv/bin/gridcredit" jarm --help >/dev/null || die 1 "$PREFIX/venv/bin/gridcredit jarm does not run (above)"
    echo "$stamp" > "$PREFIX/venv/.gridcredit-stamp"
    chmod -R a+rX "$PREFIX"
    echo "jarm-slurm.sh: gridcredit installed in $PREFIX/venv ($version)"
}

hooks() {
    local config="" url="" cert="" key="" trust="" out=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --config) config="$2"; shift 2 ;; --url) url="$2"; shift 2 ;; --cert) cert="$2"; shift 2 ;;
            --key) key="$2"; shift 2 ;; --trust) trust="$2"; shift 2 ;; --out) out="$2"; shift 2 ;;
            --prefix) PREFIX="$2"; shift 2 ;;
            *) echo "jarm-slurm.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        esac
    done
    for name in config url cert key trust out; do
        [ -n "${!name}" ] || { echo "jarm-slurm.sh: hooks needs --$name" >&2; exit 2; }
    done
    [ -x "$PREFIX/venv/bin/gridcredit" ] || die 1 "no $PREFIX/venv/bin/gridcredit: run scripts/jarm-slurm.sh install first"
    mkdir -p "$out"
    local command="env PATH=/usr/bin:/bin GRIDCREDIT_CONFIG='$config' '$PREFIX/venv/bin/gridcredit' jarm"
    local options="--url '$url' --cert '$cert' --key '$key' --trust '$trust' --timeout 20 --retries 2"
    # The prolog decides whether the job starts: slurmctld waits for it (the job is CONFIGURING meanwhile).
    cat > "$out/.jarm-prolog.$$" <<EOF
#!/bin/sh
# PrologSlurmctld of gridcredit's JARM (written by scripts/jarm-slurm.sh hooks): reserve, or refuse and hold.
exec $command prolog $options
EOF
    # The epilog only reports: a job keeps its resources until EpilogSlurmctld exits, so it hands the report
    # to a process of its own session (slurmctld kills the script's process group) and exits at once; its
    # output goes to syslog. A report that is lost is found by the JARM's reconciler.
    cat > "$out/.jarm-epilog.$$" <<EOF
#!/bin/sh
# EpilogSlurmctld of gridcredit's JARM (written by scripts/jarm-slurm.sh hooks): report the end, never wait.
setsid -f sh -c "$command epilog $options 2>&1 | logger -t gridcredit-jarm-epilog" </dev/null >/dev/null 2>&1
exit 0
EOF
    chmod 0755 "$out/.jarm-prolog.$$" "$out/.jarm-epilog.$$"
    mv "$out/.jarm-prolog.$$" "$out/jarm-prolog"
    mv "$out/.jarm-epilog.$$" "$out/jarm-epilog"
    echo "jarm-slurm.sh: wrote $out/jarm-prolog and $out/jarm-epilog; in slurm.conf:"
    echo "  PrologSlurmctld=$out/jarm-prolog"
    echo "  EpilogSlurmctld=$out/jarm-epilog"
}

command="${1:-}"
case "$command" in
    -h|--help|help) usage ;;
    install)
        shift
        while [ $# -gt 0 ]; do
            case "$1" in
                --prefix) PREFIX="$2"; shift 2 ;; --python) PYTHON="$2"; shift 2 ;;
                *) echo "jarm-slurm.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
            esac
        done
        install ;;
    hooks) shift; hooks "$@" ;;
    *) usage >&2; exit 2 ;;
esac
