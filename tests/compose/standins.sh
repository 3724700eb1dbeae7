#!/usr/bin/env bash
# Make the images that Dockerfile and docker-compose.yml name available to a Docker engine
# that cannot reach a registry: for each image that is neither here as the real image nor
# can be pulled, build a local stand-in under the exact same name, labelled
# streamer.standin=true. A pull is tried every time, so once a registry can be reached the
# real image replaces the stand-in; a machine that can pull gets the real images and this
# script builds nothing.
#
# Stand-ins: a Debian bookworm base made with debootstrap; the Python image = base +
# Debian's python3; the MinIO image = base + the minio and mc binaries given in MINIO_BIN
# and MC_BIN, behind an entrypoint that, like the official image's, runs `minio` unless the
# command is a program; the nginx image (the distributed profile's balancer) = base +
# Debian's nginx, run in the foreground as the official image runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE=${CACHE:-$HOME/.cache/streamer}
BASE=streamer-standin/debian:bookworm
python_image=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' Dockerfile | sort -u)
minio_image=$(sed -n 's/^ *image: *\(&[^ ]* \)\{0,1\}\(.*minio\/minio:.*\)$/\2/p' docker-compose.yml)
nginx_image=$(sed -n 's/^ *image: *\(nginx:.*\)$/\1/p' docker-compose.yml)

standin() {
  [ "$(docker image inspect -f '{{index .Config.Labels "streamer.standin"}}' "$1" 2>/dev/null)" = true ]
}
real() {  # the real image is here, or can be pulled now (over a stand-in of the same name)
  { docker image inspect "$1" >/dev/null 2>&1 && ! standin "$1"; } || docker pull -q "$1" >/dev/null 2>&1
}
need_standin() {  # IMAGE: true when a stand-in must be built
  if real "$1"; then
    echo "standins: $1 is the real image"
    return 1
  fi
  if standin "$1"; then
    echo "standins: $1 cannot be pulled; using the stand-in built before"
    return 1
  fi
  echo "standins: $1 cannot be pulled; building a stand-in"
}

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

if need_standin "$python_image"; then
  base
  cp /etc/ssl/certs/ca-certificates.crt "$context/ca.crt"
  build "$python_image" <<DOCKERFILE
FROM $BASE
LABEL streamer.standin=true
COPY ca.crt /etc/ssl/certs/standin-ca.crt
ENV PIP_CERT=/etc/ssl/certs/standin-ca.crt SSL_CERT_FILE=/etc/ssl/certs/standin-ca.crt
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      python3 python3-venv python3-pip >/dev/null \
 && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \
 && ln -sf /usr/bin/python3 /usr/local/bin/python \
 && rm -rf /var/lib/apt/lists/*
DOCKERFILE
fi

if need_standin "$minio_image"; then
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
LABEL streamer.standin=true
COPY minio mc /usr/bin/
COPY entrypoint.sh /usr/bin/docker-entrypoint.sh
ENTRYPOINT ["/usr/bin/docker-entrypoint.sh"]
CMD ["minio"]
DOCKERFILE
fi
if need_standin "$nginx_image"; then
  base
  build "$nginx_image" <<DOCKERFILE
FROM $BASE
LABEL streamer.standin=true
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx >/dev/null \
 && rm -rf /var/lib/apt/lists/*
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
DOCKERFILE
fi
echo "standins: $python_image, $minio_image and $nginx_image are available"
