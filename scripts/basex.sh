#!/bin/sh
# Development BaseX server for gridcredit.
#   scripts/basex.sh install          apt-get install -y basex (if missing)
#   scripts/basex.sh start [DIR] [PORT]   start our own server (data in DIR, default ./.basex-dev; port 1984)
#   scripts/basex.sh stop  [DIR]      stop it (SIGTERM, then kill -9 after 15 s)
#   scripts/basex.sh status [DIR]
# The server binds 127.0.0.1 only; user admin/admin (Debian 9.x default).
set -eu
command="${1:-start}"
dir="${2:-./.basex-dev}"
port="${3:-1984}"

install() {
    if [ ! -f /usr/share/java/basex.jar ]; then
        apt-get install -y basex
    fi
}

case "$command" in
install)
    install ;;
start)
    install
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if [ -f "$dir/server.pid" ] && kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
        echo "already running (pid $(cat "$dir/server.pid"))"; exit 0
    fi
    nohup java -Xmx512m "-Dorg.basex.path=$dir" "-Dorg.basex.DBPATH=$dir/data" \
        -cp /usr/share/java/basex.jar org.basex.BaseXServer "-p$port" -n127.0.0.1 \
        >>"$dir/server.log" 2>&1 &
    echo $! >"$dir/server.pid"
    for _ in $(seq 1 100); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.5)" 2>/dev/null; then
            echo "BaseX on 127.0.0.1:$port (pid $(cat "$dir/server.pid")), data in $dir/data"; exit 0
        fi
        sleep 0.2
    done
    echo "BaseX did not start; see $dir/server.log" >&2; exit 1 ;;
stop)
    [ -f "$dir/server.pid" ] || { echo "not running"; exit 0; }
    pid="$(cat "$dir/server.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/server.pid"; echo "stopped" ;;
status)
    if [ -f "$dir/server.pid" ] && kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
        echo "running (pid $(cat "$dir/server.pid"))"
    else
        echo "not running"; exit 1
    fi ;;
*)
    echo "usage: $0 install|start|stop|status [DIR] [PORT]" >&2; exit 2 ;;
esac
