package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/peakdesk/peakdesk/loadtest/llmsim"
)

// runMockLLM serves the simulated OpenAI-compatible LLM provider (and its /admin
// endpoints for changing faults at run time) until ctx is cancelled.
func runMockLLM(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mockllm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := httpAddrFlag(fs, "127.0.0.1:8090")
	setUsage(fs, "mockllm", simulatorHelp, "addr")
	var f llmsim.Faults
	fs.StringVar(&f.Model, "model", "", "model name answered when a request names none (default llmsim-1)")
	fs.DurationVar(&f.Latency, "latency", 0, "mean wait before an answer starts")
	fs.DurationVar(&f.LatencyJitter, "latency-jitter", 0, "spread of the wait: uniform in --latency ± this, never below 0")
	fs.Float64Var(&f.SlowRate, "slow-rate", 0, "share (0..1) of requests that wait --slow instead of --latency")
	fs.DurationVar(&f.Slow, "slow", 0, "wait of a request in the slow tail")
	fs.DurationVar(&f.ChunkDelay, "chunk-delay", 0, "pause between streamed chunks")
	fs.Float64Var(&f.ErrorRate, "error-rate", 0, "share (0..1) of requests answered with an error")
	fs.Func("error-statuses", "statuses of injected errors, weighted: e.g. `429=1,500=1,503=1,529=1`, or one status (default 500)",
		func(s string) error {
			statuses, err := parseErrorStatuses(s)
			f.ErrorStatuses = statuses
			return err
		})
	fs.DurationVar(&f.RetryAfter, "retry-after", time.Second, "wait announced by injected 429s (Retry-After, retry-after-ms)")
	fs.BoolVar(&f.InsufficientQuota, "insufficient-quota", false, "answer every request 429 insufficient_quota")
	fs.IntVar(&f.RPM, "rpm", 0, "requests per minute before 429 rate_limit_exceeded (0: unlimited)")
	fs.IntVar(&f.TPM, "tpm", 0, "tokens per minute before 429 rate_limit_exceeded (0: unlimited)")
	fs.BoolVar(&f.Outage, "outage", false, "answer every request 503 at once")
	fs.BoolVar(&f.Hang, "hang", false, "hold every request until the client goes away (or --hang-max)")
	fs.DurationVar(&f.HangMax, "hang-max", 10*time.Minute, "longest a hanging request is held")
	fs.Float64Var(&f.StreamCutRate, "stream-cut-rate", 0, "share (0..1) of streams broken off before [DONE]")
	fs.Uint64Var(&f.Seed, "seed", 0, "seed of the random source, for reproducible runs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("mockllm: unexpected arguments %q", fs.Args())
	}
	if err := f.Validate(); err != nil {
		return fmt.Errorf("mockllm: %w", err)
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("mockllm: listen: %w", err)
	}
	srv := &http.Server{
		Handler:           llmsim.New(f),
		ReadHeaderTimeout: 5 * time.Second,
	}
	fmt.Fprintf(stdout, "%shttp://%s\n", mockLLMListening, ln.Addr())

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("mockllm: serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	shutdownErr := srv.Shutdown(shutdownCtx)
	if shutdownErr != nil {
		// Hanging or slow requests outlived the grace period: drop their
		// connections, which also ends their handlers.
		_ = srv.Close()
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("mockllm: serve: %w", err)
	}
	if shutdownErr != nil {
		fmt.Fprintln(stdout, "mockllm: requests still open after 5s; their connections were closed")
	}
	return nil
}

// simulatorHelp ends the help of mockllm and mockshop: the flags they
// share mean the same in both.
const simulatorHelp = `The simulators share their fault flags: --latency is the mean wait, --latency-jitter
spreads it uniformly over latency ± jitter (never below 0), --error-rate is the share of
requests that fail and --error-statuses their weighted statuses. /admin/faults changes
them at run time.
`

// mockLLMListening starts the line mockllm prints once it listens, before
// its base URL (the bench reads it).
const mockLLMListening = "mockllm listening on "

// httpAddrFlag defines --http-addr, the listen address of every command
// that serves HTTP, with --addr as its hidden deprecated alias.
func httpAddrFlag(fs *flag.FlagSet, def string) *string {
	addr := fs.String("http-addr", def, "HTTP listen address (`host:port`; port 0 picks a free one)")
	fs.StringVar(addr, "addr", def, "deprecated: use --http-addr")
	return addr
}

// parseErrorStatuses parses "429=1,500=2" into status weights; a status
// without "=weight" weighs 1.
func parseErrorStatuses(s string) (map[int]float64, error) {
	statuses := map[int]float64{}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		code, weight, hasWeight := strings.Cut(part, "=")
		status, err := strconv.Atoi(strings.TrimSpace(code))
		if err != nil {
			return nil, fmt.Errorf("error-statuses: bad status %q", code)
		}
		w := 1.0
		if hasWeight {
			if w, err = strconv.ParseFloat(strings.TrimSpace(weight), 64); err != nil {
				return nil, fmt.Errorf("error-statuses: bad weight %q for %d", weight, status)
			}
		}
		statuses[status] += w
	}
	return statuses, nil
}
