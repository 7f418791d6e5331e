#!/usr/bin/env bash
# Kills the worker role with SIGKILL in the middle of a load test and
# restarts it 10 s later. The load test must report lost = 0 and
# duplicates = 0: a killed worker shows up as delayed answers only.
# Runs every role as its own process against a standalone JetStream server
# (the version pinned in go.mod) and the simulated LLM, all on loopback.
# Usage: deploy/local/kill-worker-demo.sh   (after deploy/local/services.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
go build -o bin/peakdesk ./cmd/peakdesk
work=$(mktemp -d)
export PEAKDESK_JWT_SECRET=kill-worker-demo-secret-0123456789abcdef
export PEAKDESK_MASTER_KEY=cafdf7ce1c8b2536a95fa46675fe56fbaed010d7e0120a1b9eae3bc88dd172a6 # the public dev-only key, as `peakdesk dev` uses: this database is dev's
export NATS_URL=nats://127.0.0.1:4333
export PEAKDESK_LLM_BASE_URL=http://127.0.0.1:8095/v1
pids=()
cleanup() { kill -INT "${pids[@]}" 2>/dev/null || true; sleep 2; kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

go tool nats-server -js -a 127.0.0.1 -p 4333 -sd "$work/nats" >"$work/nats.log" 2>&1 & pids+=($!)
bin/peakdesk mockllm --addr 127.0.0.1:8095 --latency 300ms --latency-jitter 100ms >"$work/llm.log" 2>&1 & pids+=($!)
sleep 2
bin/peakdesk migrate --ensure-shop demo
bin/peakdesk serve --roles ingest --http-addr 127.0.0.1:8181 --metrics-addr 127.0.0.1:9181 >"$work/ingest.log" 2>&1 & pids+=($!)
bin/peakdesk serve --roles worker --http-addr 127.0.0.1:8182 --metrics-addr 127.0.0.1:9182 --ack-wait 10s >"$work/worker1.log" 2>&1 &
worker=$!
sleep 2
bin/peakdesk loadtest --url http://127.0.0.1:8181 --scenario steady --rate 100 --duration 40s \
  --conversations 400 --deadline 120s "$@" &
loadtest=$!
sleep 12
echo "kill -9 the worker at $(date +%T)" >&2
kill -9 "$worker"
sleep 10
echo "restart the worker at $(date +%T)" >&2
bin/peakdesk serve --roles worker --http-addr 127.0.0.1:8182 --metrics-addr 127.0.0.1:9182 --ack-wait 10s >"$work/worker2.log" 2>&1 & pids+=($!)
wait "$loadtest"
