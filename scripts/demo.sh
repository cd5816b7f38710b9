#!/usr/bin/env bash
# Run the whole stack on the embedded store and show signed calls working: WhoAmI on every
# service, then a Bank scenario (accounts, credits issued, a hold charged and released, an audit).
#   scripts/demo.sh            (Ctrl-C stops the server)
# Everything it makes lives under ./gridcredit-data (a development CA, host and user certificates).
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
export GRIDCREDIT_BANK_ADMINS=${GRIDCREDIT_BANK_ADMINS:-"/DC=org/DC=gridcredit/O=Development/CN=Demo Admin"}

$GC serve &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT INT TERM

echo "== waiting for the services"
.venv/bin/python - "$GRIDCREDIT_SERVER_PORT" <<'PY'
import socket, ssl, sys, time
port = int(sys.argv[1])
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only waiting for the port to answer TLS
for _ in range(120):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, context.wrap_socket(raw):
            break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("the services did not start; see the messages above")
PY

export X509_CERT_DIR="$GRIDCREDIT_STATE_DIR/pki/certificates"
URL="https://localhost:$GRIDCREDIT_SERVER_PORT"
for name in "Demo Admin" "Demo User"; do
  dir="$GRIDCREDIT_STATE_DIR/demo/${name// /-}"
  if [ ! -f "$dir/usercert.pem" ]; then
    echo "== making a user certificate for '$name'"
    $GC pki user --ca "$GRIDCREDIT_STATE_DIR/pki/ca" --cn "$name" --out "$dir"
  fi
done
admin="$GRIDCREDIT_STATE_DIR/demo/Demo-Admin"
user="$GRIDCREDIT_STATE_DIR/demo/Demo-User"
echo "== making a 1-hour RFC 3820 proxy for Demo User"
$GC pki proxy --cert "$user/usercert.pem" --key "$user/userkey.pem" --hours 1 --out "$user/proxy.pem"

for service in bank luts jarm auctioneer; do
  echo "== signed WhoAmI on /$service"
  $GC whoami --url "$URL" --service "$service" --proxy "$user/proxy.pem"
done

AS_ADMIN=(--url "$URL" --cert "$admin/usercert.pem" --key "$admin/userkey.pem")
AS_USER=(--url "$URL" --proxy "$user/proxy.pem")
run=$(date +%s)   # account names of this run, so the demo can be repeated on the same state
echo "== the bank: an administrator opens accounts and issues credits"
$GC bank create-account "vo-demo-$run" --project demo --owner "/DC=org/DC=gridcredit/O=Development/CN=Demo User" "${AS_ADMIN[@]}"
$GC bank create-account "site-demo-$run" --project site --owner "/DC=org/DC=gridcredit/O=Development/CN=Demo Admin" "${AS_ADMIN[@]}"
$GC bank mint "vo-demo-$run" 10000 "${AS_ADMIN[@]}"
echo "== the user reserves 3,000 credits for a job, the site charges 1,250, the rest goes back"
hold=$($GC bank hold "vo-demo-$run" --amount 3000 --expires-in 1h --reference demo-job "${AS_USER[@]}" --json \
       | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["transaction"]["hold_id"])')
$GC bank charge "$hold" --payee "site-demo-$run" --amount 1250 "${AS_USER[@]}"
$GC bank release "$hold" "${AS_USER[@]}"
$GC bank balance "vo-demo-$run" "${AS_USER[@]}"
$GC bank history "vo-demo-$run" "${AS_USER[@]}"
echo "== the ledger audits clean"
$GC bank audit "${AS_ADMIN[@]}"
$GC bank money-supply "${AS_USER[@]}"
echo
echo "The services are running at https://localhost:$GRIDCREDIT_SERVER_PORT/{bank,luts,jarm,auctioneer} (WSDL at ?wsdl)."
echo "Press Ctrl-C to stop."
wait $server
