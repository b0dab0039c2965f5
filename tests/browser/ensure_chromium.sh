#!/usr/bin/env bash
# Make sure Debian's chromium is at /usr/bin/chromium for the browser tests.
# Playwright drives this browser; it never downloads one of its own.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_chromium: $CHROMIUM is missing and installing it needs root." >&2
    echo "ensure_chromium: run 'apt-get update && apt-get install -y chromium' as root, then retry." >&2
    exit 1
fi

echo "ensure_chromium: $CHROMIUM is missing; installing Debian's chromium" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium

if [ ! -x "$CHROMIUM" ]; then
    echo "ensure_chromium: apt-get installed chromium but $CHROMIUM is still missing" >&2
    exit 1
fi
"$CHROMIUM" --version >&2
