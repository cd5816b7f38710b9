#!/usr/bin/env bash
# A real browser for the web view's tests (tests/test_web_browser.py): Debian's chromium, run headless,
# and NSS's certutil/pk12util (libnss3-tools) to give it a test user's certificate. Installs only what
# is missing; nothing is downloaded at test time (no browser build of its own, no CDN).
#   scripts/browser.sh install     install chromium, libnss3-tools and a font (scripts/lib.sh)
#   scripts/browser.sh status      exit 0 when everything is there
set -euo pipefail
. "$(dirname "$0")/lib.sh"
PACKAGES=(chromium libnss3-tools fonts-dejavu-core)
case "${1:-install}" in
  install)
    install_missing_packages browser.sh "${PACKAGES[@]}"
    command -v chromium >/dev/null && command -v certutil >/dev/null && command -v pk12util >/dev/null
    ;;
  status)
    [ -z "$(missing_packages "${PACKAGES[@]}")" ] ;;
  *)
    echo "usage: scripts/browser.sh install|status" >&2; exit 2 ;;
esac
