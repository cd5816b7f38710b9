#!/usr/bin/env bash
# Install what the tests need on a fresh Debian machine, then run the whole suite.
#   scripts/test.sh [pytest arguments]
# Debian packages: basex (XML database server), xmlsec1 (independent signature verifier),
# globus-proxy-utils and nordugrid-arc-client (grid-proxy-init, arcproxy: real grid proxies must be accepted).
# nordugrid-arc-arex: ARC's own accounting publisher (jura-ng, SGAS target) for the /sgas/ur tests
# (tests/arc_sgas.py). Its postinst starts no service (defaults-disabled; invoke-rc.d refuses without a
# runlevel or via policy-rc.d) but makes an ARC test CA in /etc/grid-security (docs/arc-sgas.md).
# gsoap, libgsoap-dev (wsdl2h, soapcpp2, the WS-Security plugin sources), gcc, pkg-config, libssl-dev,
# zlib1g-dev; jaxws (wsimport) and default-jdk-headless: stubs from our served WSDLs (tests/test_wsdl_stubs.py).
# nodejs and npm (only when `node` is missing): node-soap, npm `soap`, as a stock SOAP client (tests/interop/node,
# installed from its package-lock.json with `npm ci`; tests/test_interop_node.py).
# Python packages go into .venv (created here); tests start the servers they need themselves, except the
# Slurm cluster, which scripts/slurm.sh installs and starts before pytest (and stops after, if it started it).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(basex xmlsec1 globus-proxy-utils nordugrid-arc-client nordugrid-arc-arex openssl python3-venv
                 gsoap libgsoap-dev gcc pkg-config libssl-dev zlib1g-dev jaxws default-jdk-headless)
command -v node >/dev/null && command -v npm >/dev/null || DEBIAN_PACKAGES+=(nodejs npm)
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

# Debian's chromium and NSS's certutil/pk12util for the web view's tests in a real headless browser
# (tests/test_web_browser.py); scripts/browser.sh installs only what is missing.
echo "== installing the browser for the web view's tests (scripts/browser.sh install)"
as_root scripts/browser.sh install

# A real libvirtd + QEMU (TCG) for the Auctioneer's enforcement tests (tests/test_auctioneer_hypervisor*.py):
# scripts/libvirt.sh installs its Debian packages (libvirt-dev among them, which pip needs below to build
# libvirt-python) and starts virtlogd and libvirtd. Stopped after the tests only when this run started it.
libvirt_was_running=1
as_root scripts/libvirt.sh status >/dev/null 2>&1 || libvirt_was_running=0
echo "== starting libvirtd (scripts/libvirt.sh start)"
as_root scripts/libvirt.sh start

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "== installing gridcredit and its test requirements into .venv"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

echo "== installing the node modules of tests/interop/node (npm ci, from package-lock.json)"
npm ci --prefix tests/interop/node --no-audit --no-fund --prefer-offline --loglevel=error

# A real single-node Slurm (munged, MariaDB, slurmdbd, slurmctld, slurmd) for tests/test_slurm_*.py; it
# installs its own Debian packages. Stopped after the tests only when this run started it.
slurm_was_running=1
as_root scripts/slurm.sh status >/dev/null 2>&1 || slurm_was_running=0
echo "== starting the single-node Slurm cluster (scripts/slurm.sh start)"
as_root scripts/slurm.sh start

# Two phases. First everything but the `alone` tests, in parallel (pytest-xdist; the Slurm tests stay on one
# worker, in order: one shared cluster): most tests wait on servers, Slurm or BaseX more than they compute.
# Then the `alone` tests (CPU shares of real QEMU guests, which any other process on the cores would distort)
# one at a time on a quiet machine. GRIDCREDIT_TEST_WORKERS sets the parallel workers (default: cores + 1, at
# least 3); 1 runs everything in one plain pytest, as does a selection of your own (-m, -k or test paths).
# Exit 5 (a phase selected no test) is not a failure.
workers=${GRIDCREDIT_TEST_WORKERS:-$(( $(nproc) + 1 ))}
[ "$workers" -ge 3 ] || [ "$workers" = 1 ] || workers=3
for argument in "$@"; do
  case "$argument" in -m|-k|-m*|-k*|tests*|*.py|*::*) workers=1 ;; esac
done
echo "== running the tests"
status=0
run_pytest() { .venv/bin/python -m pytest "$@" || { rc=$?; [ "$rc" = 5 ] || status=$rc; }; }
if [ "$workers" = 1 ]; then
  run_pytest "$@"
else
  echo "== phase 1: all but the 'alone' tests, $workers workers"
  run_pytest -n "$workers" --dist loadscope -m "not alone" "$@"   # units: tests/conftest.py
  echo "== phase 2: the 'alone' tests (CPU shares of real guests), one at a time"
  run_pytest -m alone "$@"
fi
[ "$slurm_was_running" = 1 ] || as_root scripts/slurm.sh stop >/dev/null 2>&1 || true
[ "$libvirt_was_running" = 1 ] || as_root scripts/libvirt.sh stop >/dev/null 2>&1 || true
exit "$status"
