# iotgw — the two commands a newcomer needs are `make demo` and `make test`.
GO      ?= go
BIN     ?= bin/iotgw
export CGO_ENABLED := 1

.PHONY: all build demo test unit e2e bench fuzz vet lint fmt deps clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/iotgw

# deps installs what the tests and the demo need and a fresh Debian lacks.
deps:
	@scripts/install-deps.sh

# demo: PKI, two devices, Mosquitto with the project's config, the gateway,
# a sample backend and a simulated device with every attack; prints a table.
demo: deps build
	@scripts/demo.sh

# test: every test, the end-to-end and fault-injection ones included
# (those print one line per fault scenario: sent, forwarded, duplicate, lost).
test: deps vet lint unit e2e

unit:
	$(GO) test -count=1 ./pkg/... ./cmd/...

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

# bench: the packages' micro-benchmarks, then the end-to-end benchmark
# (test/perf, about 5 minutes): markdown tables on stdout, results in
# bench/results/<date>.json; see docs/PERFORMANCE.md.
bench: deps build
	@GO=$(GO) scripts/bench.sh

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
	rm -rf bin demo-run
