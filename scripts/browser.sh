#!/usr/bin/env bash
# A real browser for the web view's tests (tests/test_web_browser.py): Debian's chromium, run headless,
# and NSS's certutil/pk12util (libnss3-tools) to give it a test user's certificate. Installs only what
# is missing; nothing is downloaded at test time (no browser build of its own, no CDN).
#   scripts/browser.sh install     install chromium, libnss3-tools and a font (apt-get update once first)
#   scripts/browser.sh status      exit 0 when everything is there
set -euo pipefail
PACKAGES=(chromium libnss3-tools fonts-dejavu-core)
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing() {
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || echo "$package"
  done
}
case "${1:-install}" in
  install)
    wanted=($(missing))
    if [ ${#wanted[@]} -gt 0 ]; then
      echo "== installing ${wanted[*]} (the web view's browser tests)"
      as_root apt-get update -q
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${wanted[@]}"
    fi
    command -v chromium >/dev/null && command -v certutil >/dev/null && command -v pk12util >/dev/null
    ;;
  status)
    [ -z "$(missing)" ] ;;
  *)
    echo "usage: scripts/browser.sh install|status" >&2; exit 2 ;;
esac
