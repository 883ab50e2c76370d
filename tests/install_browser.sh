#!/bin/sh
# Debian's chromium for tests/test_viewer.py (driven by Playwright through executable_path):
# installed with apt when /usr/bin/chromium is missing, nothing otherwise. Needs root (as in
# CI) or sudo. Playwright's own browser download (`playwright install`) is never used.
set -eu
if [ -x /usr/bin/chromium ]; then
    echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo present)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium
/usr/bin/chromium --version
