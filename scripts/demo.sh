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
