#!/usr/bin/env bash
# Make sure Debian's redis-server is installed for the cluster tests. The tests start their
# own on a free loopback port in a temporary directory; nothing here starts or touches a
# system-wide instance.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_redis: redis-server is missing and installing it needs root." >&2
    echo "ensure_redis: run 'apt-get update && apt-get install -y redis-server' as root, then retry." >&2
    exit 1
fi

echo "ensure_redis: redis-server is missing; installing Debian's redis-server" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update
# policy-rc.d keeps the package from starting the system-wide service it ships.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get install -y --no-install-recommends redis-server
redis-server --version >&2
