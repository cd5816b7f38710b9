#!/usr/bin/env bash
# Run the whole stack on the embedded store and show signed calls working: WhoAmI on every
# service, a Bank scenario (accounts, credits issued, a hold charged and released, an audit) and
# usage records published to the LUTS and asked for.
#   scripts/demo.sh            (Ctrl-C stops the server and ends the demo with status 0)
# Everything it makes lives under ./gridcredit-data (GRIDCREDIT_STATE_DIR): the development CA
# and host certificate (pki/), the users Demo Admin and Demo User (demo/), the server's log
# (serve.log). The README's examples run against what it leaves: the accounts vo-demo and
# site-demo, the usage records of scripts/demo-records.xml.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/gridcredit ]; then
  echo "== installing gridcredit into .venv"
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e .
fi
GC=.venv/bin/gridcredit
export GRIDCREDIT_STATE_DIR=${GRIDCREDIT_STATE_DIR:-$PWD/gridcredit-data}
export GRIDCREDIT_SERVER_PORT=${GRIDCREDIT_SERVER_PORT:-8443}
# The development CA names its users /DC=org/DC=gridcredit/O=Development/CN=<name>.
DN=/DC=org/DC=gridcredit/O=Development/CN
export GRIDCREDIT_BANK_ADMINS=${GRIDCREDIT_BANK_ADMINS:-"$DN=Demo Admin"}
mkdir -p "$GRIDCREDIT_STATE_DIR"
log="$GRIDCREDIT_STATE_DIR/serve.log"

# The server's own lines (what it made, where its state is) show here; its log goes to serve.log.
$GC serve 2>>"$log" &
server=$!
stop() {
  trap - INT TERM EXIT
  if kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
}
# Ctrl-C (the terminal sends SIGINT to the server too) is how the demo is meant to end: status 0.
trap 'stop; echo; echo "== stopped (the server log: $log)"; exit 0' INT TERM
trap stop EXIT

echo "== waiting for the services (the server's log: $log)"
.venv/bin/python - "$GRIDCREDIT_SERVER_PORT" "$server" <<'PY'
import os, socket, ssl, sys, time
port, server = int(sys.argv[1]), int(sys.argv[2])
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only waiting for a worker to answer TLS
for _ in range(240):
    try:
        os.kill(server, 0)
    except OSError:
        sys.exit("gridcredit serve ended; its message is above")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, context.wrap_socket(raw):
            break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("the services did not start within 2 minutes; see " + os.environ["GRIDCREDIT_STATE_DIR"] + "/serve.log")
PY

# The clients read the same configuration (GRIDCREDIT_STATE_DIR, GRIDCREDIT_SERVER_PORT): the URL
# https://localhost:$GRIDCREDIT_SERVER_PORT and the development trust directory need no options.
for name in "Demo Admin" "Demo User"; do
  dir="$GRIDCREDIT_STATE_DIR/demo/${name// /-}"
  if [ ! -f "$dir/usercert.pem" ]; then
    echo "== making a user certificate for '$name'"
    $GC pki user --ca "$GRIDCREDIT_STATE_DIR/pki/ca" --cn "$name" --out "$dir"
  fi
done
admin="$GRIDCREDIT_STATE_DIR/demo/Demo-Admin"
user="$GRIDCREDIT_STATE_DIR/demo/Demo-User"
host="$GRIDCREDIT_STATE_DIR/pki/host"
echo "== making a 12-hour RFC 3820 proxy for Demo User"
$GC pki proxy --cert "$user/usercert.pem" --key "$user/userkey.pem" --hours 12 --out "$user/proxy.pem"

for service in bank luts jarm auctioneer; do
  echo "== signed WhoAmI on /$service"
  $GC whoami --service "$service" --proxy "$user/proxy.pem"
done

AS_ADMIN=(--cert "$admin/usercert.pem" --key "$admin/userkey.pem")
AS_USER=(--proxy "$user/proxy.pem")
AS_HOST=(--cert "$host/hostcert.pem" --key "$host/hostkey.pem")
echo "== the bank: an administrator opens accounts (once) and issues credits"
if ! $GC bank account vo-demo "${AS_USER[@]}" >/dev/null 2>&1; then
  $GC bank create-account vo-demo --project demo --owner "$DN=Demo User" "${AS_ADMIN[@]}"
  $GC bank create-account site-demo --project site --owner "$DN=Demo Admin" "${AS_ADMIN[@]}"
fi
$GC bank mint vo-demo 10000 "${AS_ADMIN[@]}"
echo "== the user reserves 3,000 credits for a job, the site charges 1,250, the rest goes back"
hold=$($GC bank hold vo-demo --amount 3000 --expires-in 1h --reference demo-job "${AS_USER[@]}" --json \
       | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["transaction"]["hold_id"])')
echo "hold $hold: 3,000 on vo-demo"
$GC bank charge "$hold" --payee site-demo --amount 1250 "${AS_USER[@]}"
$GC bank release "$hold" "${AS_USER[@]}"
$GC bank balance vo-demo "${AS_USER[@]}"
$GC bank history vo-demo --limit 5 --filter "t:kind='charge' or t:kind='release'" "${AS_USER[@]}"
echo "== the ledger audits clean"
$GC bank audit "${AS_ADMIN[@]}"
$GC bank money-supply "${AS_USER[@]}"
echo "== the site publishes usage records with its host certificate (again: each is stored once)"
$GC luts publish scripts/demo-records.xml "${AS_HOST[@]}"
echo "== the user asks for their jobs of November 2026 that ran over an hour, and a summary"
$GC luts query 'n:Usage/n:wall_us > $w' --int-var w=3600000000 --from 2026-11 --to 2026-11 "${AS_USER[@]}"
$GC luts summary --by vo,month "${AS_USER[@]}"
echo
echo "The services are running at https://localhost:$GRIDCREDIT_SERVER_PORT (each at /<name>, its WSDL at /<name>?wsdl)."
echo "Try the README's examples in another shell, in $PWD:"
echo "  export GRIDCREDIT_STATE_DIR=$GRIDCREDIT_STATE_DIR GRIDCREDIT_SERVER_PORT=$GRIDCREDIT_SERVER_PORT"
echo "  export X509_USER_PROXY=$user/proxy.pem"
echo "Press Ctrl-C to stop."
wait "$server"
