# iotgw — the two commands a newcomer needs are `make demo` and `make test`.
GO      ?= go
BIN     ?= bin/iotgw
export CGO_ENABLED := 1
# Stamped into the binary (iotgw version); empty without git, and then the
# binary falls back to the toolchain's VCS stamp, then to devel/unknown.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: all build release demo test unit unit-file e2e bench bench-scale bench-steady fuzz vet lint fmt deps deps-demo clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/iotgw

# release: dynamically linked (glibc) linux/amd64 and linux/arm64
# binaries in dist/, with SHA256SUMS. go-sqlite3 needs cgo, so each arch
# needs a C cross compiler: Debian's gcc-aarch64-linux-gnu (and, on an arm64
# host, gcc-x86-64-linux-gnu). Not part of `make test`.
CC_amd64 ?= $(if $(filter amd64,$(shell $(GO) env GOHOSTARCH)),gcc,x86_64-linux-gnu-gcc)
CC_arm64 ?= $(if $(filter arm64,$(shell $(GO) env GOHOSTARCH)),gcc,aarch64-linux-gnu-gcc)
release:
	@mkdir -p dist
	@for arch in amd64 arm64; do \
	  cc=$(CC_amd64); [ $$arch = arm64 ] && cc=$(CC_arm64); \
	  command -v $$cc >/dev/null 2>&1 || { echo "release: $$cc not found; apt-get install $$( [ $$arch = arm64 ] && echo gcc-aarch64-linux-gnu || echo gcc-x86-64-linux-gnu )" >&2; exit 1; }; \
	done
	GOOS=linux GOARCH=amd64 CC=$(CC_amd64) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/iotgw-linux-amd64 ./cmd/iotgw
	GOOS=linux GOARCH=arm64 CC=$(CC_arm64) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/iotgw-linux-arm64 ./cmd/iotgw
	cd dist && sha256sum iotgw-linux-amd64 iotgw-linux-arm64 > SHA256SUMS

# deps installs what the tests need and a fresh Debian lacks, and starts
# the PostgreSQL they use; deps-demo only what the demo needs (Mosquitto,
# gcc, Python's paho-mqtt). README.md says what each changes on the machine.
deps:
	@scripts/install-deps.sh test
	@scripts/postgres.sh

deps-demo:
	@scripts/install-deps.sh demo

# demo: PKI, two devices, Mosquitto with the project's config, the gateway,
# a sample backend and a simulated device with every attack; prints a table.
# It needs no PostgreSQL, golangci-lint or promtool.
demo: deps-demo build
	@scripts/demo.sh

# test: every test, the end-to-end and fault-injection ones included
# (those print one line per fault scenario: sent, forwarded, duplicate, lost).
test: deps vet lint unit unit-file examples e2e

unit:
	$(GO) test -count=1 ./pkg/... ./cmd/...

# sim: the deterministic simulation of the delivery core (docs/SIMULATION.md)
# with SEEDS seeds from seed FIRST; `make test` runs seeds 1..2000 in unit.
# A failing seed prints the command that replays it.
.PHONY: sim
SEEDS ?= 2000
FIRST ?= 1
sim:
	$(GO) test -count=1 -timeout 60m ./pkg/lease/sim -run TestSim -seeds=$(SEEDS) -first=$(FIRST)

# examples: the C device library (host build, then under ASan/UBSan) and
# the Python device against every vector in testdata/vectors.json, and the
# Python reference's counter persistence; the devices' runs against a live
# gateway are in e2e (TestPythonDevice, TestCDevice), and
# scripts/check_vectors.py in unit (TestVectorsPython).
.PHONY: examples
examples: deps
	@$(MAKE) --no-print-directory -C examples/c-device test
	@python3 examples/python-device/test_device.py
	@python3 examples/python/test_sign.py

# unit-file: systemd-analyze security (exposure <= 2.0) and verify on
# deploy/iotgw.service; skipped loudly without systemd-analyze (fails in CI).
unit-file:
	@GO=$(GO) scripts/check-unit.sh

e2e: deps
	@GO=$(GO) scripts/e2e.sh

# test-compose: the docker-compose test alone (test/compose), with a private
# Docker engine started and stopped around it (scripts/docker-engine.sh;
# needs root; installs docker.io, docker-compose and debootstrap if missing).
# `make test` runs the same test whenever an engine answers at DOCKER_HOST.
.PHONY: test-compose
test-compose:
	@set -e; env="$$(scripts/docker-engine.sh start)"; eval "$$env"; \
	trap 'scripts/docker-engine.sh stop' EXIT; \
	test/compose/base-images.sh && $(GO) test -count=1 -v -timeout 30m ./test/compose/

# bench: the packages' micro-benchmarks, then the end-to-end benchmark,
# the steady-rate one and the scale-out one (test/perf, about 14
# minutes): markdown tables on stdout, results in
# bench/results/<date>.json; see docs/PERFORMANCE.md.
bench: deps build
	@GO=$(GO) scripts/bench.sh

# bench-scale: the scale-out part of bench alone (1, 2, 3 gateways on the
# machine's PostgreSQL next to one on SQLite; about 2 minutes).
bench-scale: deps build
	@GO=$(GO) scripts/bench.sh scale

# bench-steady: the steady-rate part of bench alone (100 and 1,000 msg/s
# from 10 and 1,000 devices, an idle gateway; about 7 minutes).
bench-steady: deps build
	@GO=$(GO) scripts/bench.sh steady

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 60s ./pkg/envelope
	$(GO) test -run '^$$' -fuzz FuzzCheck -fuzztime 60s ./pkg/validate

vet:
	$(GO) vet ./...

# lint: golangci-lint v2 with gosec, errorlint, bodyclose and sqlclosecheck
# (.golangci.yml); scripts/install-deps.sh installs it.
GOLANGCI_LINT ?= $(shell command -v golangci-lint || echo "$$($(GO) env GOPATH)/bin/golangci-lint")
lint: deps
	$(GOLANGCI_LINT) run ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin demo-run dist
