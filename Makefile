# peakdesk — make run (dev mode) and make test (everything, on real services).
SHELL := /bin/bash
GO    ?= go
PKGS  ?= ./...

.PHONY: run test bench bench-short services build image drill drill-orders drill-cluster drill-faults vet fmt nats clean

## run: start Postgres and Redis, then every role in one process (dev mode).
## The binary runs in place of the shell, so Ctrl-C stops it cleanly.
run: services
	$(GO) build -o bin/peakdesk ./cmd/peakdesk
	exec ./bin/peakdesk dev

## test: start Postgres and Redis, then run every test with the race detector.
test: services
	$(GO) vet -race ./...   # -race: the same build as the tests, so nothing compiles twice
	@unformatted="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

## bench: the performance scenarios (docs/performance.md), each beside its baseline from the same
## run, with ratios; then the worker, LLM-resilience and relay benchmarks.
## bench-short: the same with fewer messages, for a quick check.
BENCH_N ?= 1
bench: services
	$(GO) run ./cmd/peakdesk bench $(BENCH_FLAGS)
	$(GO) test -run '^$$' -bench . -benchtime 1x ./workers/
	$(GO) test -run '^$$' -bench AnswerLLMDown -benchtime $$((5000*$(BENCH_N)))x ./workers/answer/
	$(GO) test -run '^$$' -bench Coalesce1000 -benchtime $$((5*$(BENCH_N)))x ./workers/answer/
	$(GO) test -run '^$$' -bench Relay -benchtime $$((5000*$(BENCH_N)))x ./outbox/

bench-short:
	$(MAKE) bench BENCH_FLAGS=--short

## drill: every long fault drill, each bounded and stopping by itself.
drill: drill-orders drill-cluster drill-faults

## drill-orders: the order drill, twice: customers ask
## about their orders for 4 minutes while the shop API is down from minute 1
## to minute 3, first with the LLM up, then with it down. Bounded (at most
## 4 + 5 minutes each); fails when a customer gets no first reply within the
## message's budget or not exactly one final answer.
DRILL_FLAGS ?= --rate 5 --duration 4m --outage-at 1m --outage-for 2m
drill-orders: services
	$(GO) run ./cmd/peakdesk drill orders $(DRILL_FLAGS)
	$(GO) run ./cmd/peakdesk drill orders $(DRILL_FLAGS) --llm-down

## drill-faults: the multi-process fault drill: 2 ingest, 3 worker and 2
## relay processes on a Postgres and a Redis of the drill's own (free
## loopback ports, a temporary directory), a standalone JetStream, the
## simulated LLM and shop, steady load (p0/p1/p2) and refund requests,
## while a worker and a relay are SIGKILLed, Postgres restarts, Redis, the
## LLM and the shop API are down for a minute each. Bounded (about 7
## minutes, then at most 3 of draining); fails on a lost or duplicated
## reply or refund, or a p0 answer p99 over 5 s around the worker SIGKILL.
## `make test` runs the short version (TestFaultDrill, about 90 s).
FAULTS_FLAGS ?= --rate 10 --warmup 20s --gap 30s --redis-down 1m --llm-down 1m --shop-down 1m
drill-faults: services
	$(GO) run ./cmd/peakdesk drill faults $(FAULTS_FLAGS)

## services: install (Debian packages) and start Postgres and Redis; idempotent.
services:
	@bash deploy/local/services.sh

VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT     ?= $(shell git rev-parse HEAD 2>/dev/null)
BUILD_DATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS    := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.buildDate=$(BUILD_DATE)
IMAGE_ARCH ?= amd64

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/peakdesk ./cmd/peakdesk

## image: an OCI image tarball without Docker (deploy/image): the static
## binary, Debian's CA certificates and time zones, user 65532, entrypoint
## peakdesk. `docker load -i bin/peakdesk-image.tar` or `podman load -i …`.
## deploy/Dockerfile builds the same image with Docker.
image:
	CGO_ENABLED=0 GOOS=linux GOARCH=$(IMAGE_ARCH) $(GO) build -trimpath -ldflags "$(LDFLAGS)" \
	  -o bin/peakdesk-linux-$(IMAGE_ARCH) ./cmd/peakdesk
	$(GO) run ./deploy/image --binary bin/peakdesk-linux-$(IMAGE_ARCH) --arch $(IMAGE_ARCH) \
	  --tag peakdesk:$(VERSION) --version $(VERSION) --revision $(COMMIT) --out bin/peakdesk-image.tar

## drill-cluster: the long NATS cluster drills (a 3-node cluster of real
## nats-server processes with auth.conf's users and TLS: the CHAT_IN leader
## killed during a burst, a rolling restart under load), printing their
## figures. `make test` runs short versions of the same tests.
drill-cluster: services
	set -o pipefail; PEAKDESK_DRILL=full $(GO) test -count=1 -timeout 20m -v -run 'ClusterDrill' ./cmd/peakdesk/ \
	  | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|cluster_drill_test.go:[0-9]+:'

vet:
	$(GO) vet -race ./...   # -race: the same build as the tests, so nothing compiles twice

fmt:
	gofmt -w $$(git ls-files '*.go')

## nats: a standalone JetStream server from the version pinned in go.mod.
nats:
	$(GO) tool nats-server -js -a 127.0.0.1 -p 4222 -sd .peakdesk/nats-standalone

clean:
	rm -rf bin .peakdesk
