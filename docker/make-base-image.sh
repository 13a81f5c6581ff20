#!/usr/bin/env bash
# Make a Debian 12 base image with python3 locally, for machines that cannot pull from a
# container registry (see docs/deploy.md). The Dockerfile builds on it unchanged:
#
#   docker/make-base-image.sh [NAME:TAG]          default localhost/lpt-base:bookworm
#   podman build --build-arg BASE_IMAGE=localhost/lpt-base:bookworm ...
#
# Needs root, debootstrap and podman (or docker). Mirror: $DEBIAN_MIRROR, else the first
# Debian URI in the host's apt sources, else deb.debian.org. About a minute and 200 MB.
set -euo pipefail
NAME=${1:-localhost/lpt-base:bookworm}
ENGINE=${ENGINE:-$(command -v podman || command -v docker)}

mirror=${DEBIAN_MIRROR:-}
if [[ -z "$mirror" ]]; then
    mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
             | head -1 | awk '{print $2}' || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi

rootfs=$(mktemp -d /tmp/lpt-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "make-base-image: debootstrap bookworm from $mirror" >&2
# python3-venv: the Dockerfile installs into a venv (Debian's python is "externally managed").
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >/dev/null
# what python:3.11-slim also leaves out: apt lists, caches, docs
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
echo "deb $mirror bookworm main" > "$rootfs/etc/apt/sources.list"
if ! out=$(tar -C "$rootfs" -c . | "$ENGINE" import \
        --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$NAME" 2>&1); then
    echo "$out" >&2; exit 1
fi
echo "make-base-image: $NAME" >&2
