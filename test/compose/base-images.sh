#!/usr/bin/env bash
# Makes sure the base images that Dockerfile and docker-compose.yml name
# (debian:bookworm-slim, golang:1.26-bookworm, eclipse-mosquitto:2) exist
# in the engine at DOCKER_HOST. An image already present is kept; one that
# can be pulled is pulled; otherwise a local stand-in is built, for
# machines that reach Debian's mirror and the Go module proxy but no image
# registry (the project's CI):
#   debian:bookworm-slim   debootstrap --variant=minbase bookworm, imported
#   golang:1.26-bookworm   that + gcc, libc6-dev, git and this host's Go
#                          ($(go env GOROOT)), GOPATH=/go as in the real image
#   eclipse-mosquitto:2    that + Debian's mosquitto, the mosquitto user at
#                          uid/gid 1883 and /docker-entrypoint.sh, as in the
#                          real image
# The debootstrap rootfs is cached as a tarball under $CACHE (default
# /var/cache/iotgw-docker), keyed by a hash of its recipe, so a second run
# on the same machine imports it in seconds. Needs root for debootstrap.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
CACHE="${IOTGW_DOCKER_CACHE:-/var/cache/iotgw-docker}"
MIRROR="${DEBIAN_MIRROR:-}"
if [ -z "$MIRROR" ]; then
  # The mirror apt already uses (deb822 or one-line sources).
  MIRROR="$(grep -hs -m1 -E '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1 || true)"
  [ -n "$MIRROR" ] || MIRROR="$(grep -hs -m1 -E '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}' | head -1 || true)"
  [ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
fi

have() { docker image inspect "$1" >/dev/null 2>&1; }
# The recipe hash a stand-in was built from (label iotgw.standin), "" for
# a real image; a stand-in built from another recipe is rebuilt.
label() { docker image inspect -f '{{index .Config.Labels "iotgw.standin"}}' "$1" 2>/dev/null || true; }
recipe() {
  case "$1" in
    debian:*) printf 'minbase bookworm %s v1' "$MIRROR" ;;
    golang:*) docker image inspect -f '{{.Id}}' debian:bookworm-slim; cat "$here/images/golang.Dockerfile"; go version; sha256sum </etc/ssl/certs/ca-certificates.crt ;;
    eclipse-mosquitto:*) docker image inspect -f '{{.Id}}' debian:bookworm-slim; cat "$here/images/mosquitto.Dockerfile" "$here/images/docker-entrypoint.sh" ;;
  esac | sha256sum | cut -c1-16
}
pull() { timeout 120 docker pull -q "$1" >/dev/null 2>&1; }
# Standard build of a stand-in: legacy builder, host network (no bridge).
build() {
  local log; log="$(mktemp)"
  if ! DOCKER_BUILDKIT=0 docker build --network host --label "iotgw.standin=$HASH" "$@" >"$log" 2>&1; then
    tail -30 "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
}

slim() {
  local recipe="debootstrap --variant=minbase bookworm $MIRROR v1"
  local key; key="$(printf '%s' "$recipe" | sha256sum | cut -c1-16)"
  local tarball="$CACHE/rootfs-bookworm-minbase-$key.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { echo "base-images: debootstrap is not installed (apt-get install debootstrap)" >&2; return 1; }
    mkdir -p "$CACHE"
    local dir; dir="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    echo "base-images: debootstrap bookworm from $MIRROR (about 90 s, once per machine)" >&2
    if ! debootstrap --variant=minbase bookworm "$dir" "$MIRROR" >"$dir.log" 2>&1; then
      tail -20 "$dir.log" >&2; rm -rf "$dir"; return 1
    fi
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir.log"
    tar -C "$dir" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$dir"
  fi
  docker import \
    --change "LABEL iotgw.standin=$HASH" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    - debian:bookworm-slim <"$tarball" >/dev/null
}

golang() {
  local goroot; goroot="$(go env GOROOT)"
  local ctx; ctx="$(mktemp -d)"
  cp "$here/images/golang.Dockerfile" "$ctx/Dockerfile"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
  # The context is the Dockerfile, the CA bundle and this host's Go tree as go/.
  tar -c -C "$ctx" Dockerfile ca-certificates.crt -C "$(dirname "$goroot")" --transform "s#^$(basename "$goroot")#go#" "$(basename "$goroot")" |
    build -t golang:1.26-bookworm -
  rm -rf "$ctx"
}

mosquitto() { build -t eclipse-mosquitto:2 -f "$here/images/mosquitto.Dockerfile" "$here/images"; }

ensure() {
  local name="$1" fn="$2"
  HASH="$(recipe "$name")"
  if have "$name"; then
    local l; l="$(label "$name")"
    [ -z "$l" ] || [ "$l" = "$HASH" ] && return 0
    echo "base-images: $name: stand-in from an older recipe; rebuilding" >&2
  elif pull "$name"; then
    echo "base-images: pulled $name" >&2; return 0
  else
    echo "base-images: $name: not present and not pullable; building a local stand-in" >&2
  fi
  "$fn"
}

ensure debian:bookworm-slim slim
ensure golang:1.26-bookworm golang
ensure eclipse-mosquitto:2 mosquitto
