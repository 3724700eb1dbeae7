#!/usr/bin/env bash
# Make the images that Dockerfile and docker-compose.yml name available to a Docker engine
# that cannot reach a registry: for each image that can neither be found locally nor
# pulled, build a local stand-in under the exact same name. A machine that can pull gets
# the real images and this script changes nothing.
#
# Stand-ins: a Debian bookworm base made with debootstrap; the Python image = base +
# Debian's python3; the MinIO image = base + the minio and mc binaries given in MINIO_BIN
# and MC_BIN, behind an entrypoint that, like the official image's, runs `minio` unless the
# command is a program.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE=${CACHE:-$HOME/.cache/streamer}
BASE=streamer-standin/debian:bookworm
python_image=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' Dockerfile | sort -u)
minio_image=$(sed -n 's/^ *image: *\(.*minio\/minio:.*\)$/\1/p' docker-compose.yml)

have() { docker image inspect "$1" >/dev/null 2>&1 || docker pull -q "$1" >/dev/null 2>&1; }

base() {
  docker image inspect "$BASE" >/dev/null 2>&1 && return
  local rootfs="$CACHE/standin-rootfs"
  if [ ! -x "$rootfs/bin/sh" ]; then
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  fi
  tar -C "$rootfs" -c . | docker import - "$BASE" >/dev/null
}

build() {  # build IMAGE, with the Dockerfile on stdin and $context as context
  docker build -q -t "$1" -f - "$context" >/dev/null
}

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT

if ! have "$python_image"; then
  echo "standins: building $python_image"
  base
  cp /etc/ssl/certs/ca-certificates.crt "$context/ca.crt"
  build "$python_image" <<DOCKERFILE
FROM $BASE
COPY ca.crt /etc/ssl/certs/standin-ca.crt
ENV PIP_CERT=/etc/ssl/certs/standin-ca.crt SSL_CERT_FILE=/etc/ssl/certs/standin-ca.crt
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      python3 python3-venv python3-pip >/dev/null \
 && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \
 && ln -sf /usr/bin/python3 /usr/local/bin/python \
 && rm -rf /var/lib/apt/lists/*
DOCKERFILE
fi

if ! have "$minio_image"; then
  echo "standins: building $minio_image"
  base
  cp "${MINIO_BIN:?set MINIO_BIN to a minio binary}" "$context/minio"
  cp "${MC_BIN:?set MC_BIN to an mc binary}" "$context/mc"
  cat > "$context/entrypoint.sh" <<'SH'
#!/bin/sh
# As the official image does: `server /data` means `minio server /data`.
if [ "${1#-}" != "$1" ] || ! command -v "$1" >/dev/null 2>&1; then
  set -- minio "$@"
fi
exec "$@"
SH
  chmod +x "$context/entrypoint.sh"
  build "$minio_image" <<DOCKERFILE
FROM $BASE
COPY minio mc /usr/bin/
COPY entrypoint.sh /usr/bin/docker-entrypoint.sh
ENTRYPOINT ["/usr/bin/docker-entrypoint.sh"]
CMD ["minio"]
DOCKERFILE
fi
echo "standins: $python_image and $minio_image are available"
