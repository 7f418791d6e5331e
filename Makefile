# peakdesk — make run (dev mode) and make test (everything, on real services).
SHELL := /bin/bash
GO    ?= go
PKGS  ?= ./...

.PHONY: run test bench services build vet fmt nats clean

## run: start Postgres and Redis, then every role in one process (dev mode).
run: services
	$(GO) run ./cmd/peakdesk dev

## test: start Postgres and Redis, then run every test with the race detector.
test: services
	$(GO) vet ./...
	@unformatted="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

## bench: the DESIGN.md §11 scenarios, each beside its baseline from the same
## run, with ratios. BENCH_FLAGS=--short for a quick check.
BENCH_FLAGS ?=
bench: services
	$(GO) run ./cmd/peakdesk bench $(BENCH_FLAGS)

## services: install (Debian packages) and start Postgres and Redis; idempotent.
services:
	@bash deploy/local/services.sh

build:
	$(GO) build -o bin/peakdesk ./cmd/peakdesk

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

## nats: a standalone JetStream server from the version pinned in go.mod.
nats:
	$(GO) tool nats-server -js -a 127.0.0.1 -p 4222 -sd .peakdesk/nats-standalone

clean:
	rm -rf bin .peakdesk
