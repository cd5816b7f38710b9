#!/usr/bin/env bash
# Run the whole stack on the embedded store and show a signed call working.
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

$GC serve &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT INT TERM

echo "== waiting for the services"
for _ in $(seq 1 60); do
  if [ -f "$GRIDCREDIT_STATE_DIR/pki/host/hostcert.pem" ] && \
     (exec 3<>/dev/tcp/127.0.0.1/$GRIDCREDIT_SERVER_PORT) 2>/dev/null; then break; fi
  sleep 0.5
done

user_dir="$GRIDCREDIT_STATE_DIR/demo-user"
if [ ! -f "$user_dir/usercert.pem" ]; then
  echo "== making a user certificate for 'Demo User'"
  $GC pki user --ca "$GRIDCREDIT_STATE_DIR/pki/ca" --cn "Demo User" --out "$user_dir"
fi
echo "== making a 1-hour RFC 3820 proxy"
$GC pki proxy --cert "$user_dir/usercert.pem" --key "$user_dir/userkey.pem" --hours 1 --out "$user_dir/proxy.pem"

export X509_CERT_DIR="$GRIDCREDIT_STATE_DIR/pki/certificates"
for service in bank luts jarm auctioneer; do
  echo "== signed WhoAmI on /$service"
  $GC whoami --url "https://localhost:$GRIDCREDIT_SERVER_PORT" --service "$service" --proxy "$user_dir/proxy.pem"
done
echo
echo "The services are running at https://localhost:$GRIDCREDIT_SERVER_PORT/{bank,luts,jarm,auctioneer} (WSDL at ?wsdl)."
echo "Press Ctrl-C to stop."
wait $server
