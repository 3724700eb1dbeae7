#!/usr/bin/env bash
# Make sure a Docker engine answers, with both Composes: install Debian's docker.io and
# docker-compose 1.29 (and debootstrap, for the image stand-ins) if missing, build Compose
# v2 from its Go module if `docker compose` is missing, and start dockerd if nothing runs
# it. Needs root; skips each step whose result is already there.
set -euo pipefail
CACHE=${CACHE:-$HOME/.cache/streamer}
COMPOSE_V2=v2.40.3

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# `go install` refuses Compose's module (its go.mod has exclude directives), so it is built
# inside its own module directory.
if ! docker compose version >/dev/null 2>&1; then
  plugin="$CACHE/bin/docker-compose-$COMPOSE_V2"
  if [ ! -x "$plugin" ]; then
    src=$(cd /tmp && go mod download -json "github.com/docker/compose/v2@$COMPOSE_V2" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
    (cd "$src" && go build -trimpath -o "$plugin" \
      -ldflags "-X github.com/docker/compose/v2/internal.Version=$COMPOSE_V2" ./cmd)
  fi
  mkdir -p "$HOME/.docker/cli-plugins"
  cp "$plugin" "$HOME/.docker/cli-plugins/docker-compose"
fi

# A dockerd killed without its shutdown leaves pid files behind. Once the PID is reused by
# another process, the next dockerd takes that process for its containerd and waits for a
# socket that never comes, so a pid file whose process is not the daemon it names goes.
drop_stale_pid() {
  local file=$1 daemon=$2 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file" 2>/dev/null || true)
  if [ -z "$pid" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" != "$daemon" ]; then
    rm -f "$file"
  fi
}

if ! docker info >/dev/null 2>&1; then
  mkdir -p "$CACHE"
  drop_stale_pid /var/run/docker.pid dockerd
  drop_stale_pid /var/run/docker/containerd/containerd.pid containerd
  nohup dockerd >"$CACHE/dockerd.log" 2>&1 &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
fi
if ! docker info >/dev/null 2>&1; then
  echo "engine.sh: dockerd did not start; the end of $CACHE/dockerd.log:" >&2
  tail -n 20 "$CACHE/dockerd.log" >&2 || true
  exit 1
fi
