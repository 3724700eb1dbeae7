#!/usr/bin/env bash
# Make sure a Docker engine answers, with Compose: install Debian's docker.io and
# docker-compose (and debootstrap, for the image stand-ins) if missing, and start dockerd
# if nothing runs it. Needs root for both; does nothing when `docker info` already works.
set -euo pipefail
CACHE=${CACHE:-$HOME/.cache/streamer}

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  mkdir -p "$CACHE"
  nohup dockerd >"$CACHE/dockerd.log" 2>&1 &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
fi
docker info >/dev/null 2>&1 || { echo "engine.sh: dockerd did not start; see $CACHE/dockerd.log" >&2; exit 1; }
