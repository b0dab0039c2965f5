#!/usr/bin/env bash
# Make sure podman, buildah and a local Debian base image exist for the container test.
#
# No image registry is reachable here, so the base image is made once with debootstrap
# (minbase plus python3, python3-venv and ca-certificates: what the Dockerfile needs of a
# base) and imported into podman's storage, where later runs find it.
set -euo pipefail

BASE_IMAGE=${CHATTERBOX_STATUS_BASE_IMAGE:?set by tox.ini, testenv:container}
TOOLS=(podman buildah debootstrap)

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "ensure_podman: $1 needs root; run this test as root (CI does)." >&2
        exit 1
    fi
}

missing=()
for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    need_root "installing ${missing[*]}"
    echo "ensure_podman: installing Debian's ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

if podman image exists "$BASE_IMAGE"; then
    exit 0
fi
need_root "debootstrap"
echo "ensure_podman: building $BASE_IMAGE with debootstrap (once)" >&2
rootfs=$(mktemp -d /var/tmp/chatterbox-status-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE"
