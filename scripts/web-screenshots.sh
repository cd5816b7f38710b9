#!/usr/bin/env bash
# Remake the web view's screenshots under docs/web/ (shown in the README): runs the web view's browser tests
# (tests/test_web_browser.py: a real host, Debian's headless chromium with a test user's certificate),
# which save a PNG of each page they check into $GRIDCREDIT_SCREENSHOT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/browser.sh install
mkdir -p docs/web
GRIDCREDIT_SCREENSHOT_DIR="$PWD/docs/web" .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_web_browser.py "$@"
ls -l docs/web
