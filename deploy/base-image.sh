#!/usr/bin/env bash
# Makes the Debian bookworm base image every local image is built FROM, for a machine whose
# Docker engine cannot pull from a registry: `debootstrap bookworm` from this machine's own
# Debian mirror, piped into `docker import`. Idempotent: skips everything when the tag exists,
# and keeps the debootstrap tarball in LOCKSTEP_BASE_CACHE so a later run (after `docker
# system prune`, say) only re-imports it. Prints the tag on stdout (progress goes to stderr).
#
#   deploy/base-image.sh                 # -> lockstep-base:bookworm
#   LOCKSTEP_BASE_TAG=my-base:1 deploy/base-image.sh
#
# Needs root (debootstrap), debootstrap and docker.
set -euo pipefail

TAG="${LOCKSTEP_BASE_TAG:-lockstep-base:bookworm}"
CACHE="${LOCKSTEP_BASE_CACHE:-/var/cache/lockstep}"
SUITE=bookworm

say() { echo "base-image: $*" >&2; }
fail() { say "error: $*"; exit 1; }

# Validated where they enter: the tag goes to docker, the cache folder to rm/tar.
[[ "$TAG" =~ ^[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] \
  || fail "LOCKSTEP_BASE_TAG '$TAG' is not an image tag of the form name:tag (lower-case name)"
[[ "$CACHE" = /* && "$CACHE" != "/" && "$CACHE" != *..* ]] \
  || fail "LOCKSTEP_BASE_CACHE '$CACHE' must be an absolute folder other than /, without '..'"

if docker image inspect "$TAG" >/dev/null 2>&1; then
  say "$TAG exists, nothing to do"
  echo "$TAG"
  exit 0
fi

# The mirror this machine's apt uses (deb822 .sources first, then one-line sources.list).
mirror() {
  local uri
  uri="$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)"
  if [ -z "$uri" ]; then
    uri="$(grep -hsE '^deb +(\[[^]]*\] +)?https?://[^ ]+/debian/? +bookworm' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | sed -E 's/^deb +(\[[^]]*\] +)?//' | awk '{print $1}' | head -n1 || true)"
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

TARBALL="$CACHE/debootstrap-$SUITE.tar"
if [ ! -s "$TARBALL" ]; then
  [ "$(id -u)" = "0" ] || fail "debootstrap needs root (or a cached $TARBALL)"
  command -v debootstrap >/dev/null || fail "debootstrap not installed (apt-get install debootstrap)"
  MIRROR="$(mirror)"
  say "debootstrap $SUITE from $MIRROR (once; cached in $TARBALL)"
  mkdir -p "$CACHE"
  ROOTFS="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  trap 'rm -rf "$ROOTFS"' EXIT
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$MIRROR" >&2
  # Same apt source inside the image as on this machine, and no apt caches kept.
  echo "deb $MIRROR $SUITE main" > "$ROOTFS/etc/apt/sources.list"
  echo "deb $MIRROR $SUITE-updates main" >> "$ROOTFS/etc/apt/sources.list"
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  tar -C "$ROOTFS" -cf "$TARBALL.part" .
  mv "$TARBALL.part" "$TARBALL"
fi

say "docker import $TARBALL as $TAG"
docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$TARBALL" "$TAG" >&2
echo "$TAG"
