# peakdesk — make run (dev mode) and make test (everything, on real services).
SHELL := /bin/bash
GO    ?= go
PKGS  ?= ./...

.PHONY: run test bench bench-short services build vet fmt nats clean

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

## bench: the DESIGN.md §11 scenarios, each beside its baseline from the same
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

## services: install (Debian packages) and start Postgres and Redis; idempotent.
services:
	@bash deploy/local/services.sh

build:
	$(GO) build -o bin/peakdesk ./cmd/peakdesk

vet:
	$(GO) vet -race ./...   # -race: the same build as the tests, so nothing compiles twice

fmt:
	gofmt -w $$(git ls-files '*.go')

## nats: a standalone JetStream server from the version pinned in go.mod.
nats:
	$(GO) tool nats-server -js -a 127.0.0.1 -p 4222 -sd .peakdesk/nats-standalone

clean:
	rm -rf bin .peakdesk
