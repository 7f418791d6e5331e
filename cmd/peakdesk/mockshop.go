package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/peakdesk/peakdesk/loadtest/shopsim"
)

// runMockShop serves the simulated shop API (orders, logistics, coupons,
// refunds, reply-webhook receiver, /admin) until ctx is cancelled.
func runMockShop(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mockshop", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := httpAddrFlag(fs, "127.0.0.1:8091")
	setUsage(fs, "mockshop", simulatorHelp, "addr", "error-status")
	latency := fs.Duration("latency", 0, "mean added latency of every shop request")
	jitter := fs.Duration("latency-jitter", 0, "spread of the latency: uniform in --latency ± this, never below 0")
	errorRate := fs.Float64("error-rate", 0, "share (0..1) of shop requests that fail with one of --error-statuses")
	var statuses map[int]float64
	fs.Func("error-statuses", "statuses of injected failures, weighted: e.g. `500=1,503=3`, or one status (default 503)",
		func(s string) (err error) {
			statuses, err = parseErrorStatuses(s)
			return err
		})
	errorStatus := fs.Int("error-status", http.StatusServiceUnavailable, "deprecated: use --error-statuses")
	down := fs.Bool("down", false, "answer every shop request 503 at once")
	validationFail := fs.Bool("validation-fail", false, "answer every POST 422 validation_failed")
	secret := fs.String("webhook-secret", "", "webhook secret of the shops: reply webhooks' Peakdesk-Signature is verified, stale (>5 min) and replayed signatures refused; empty records them unchecked")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("mockshop: unexpected arguments %q", fs.Args())
	}
	faults := shopsim.Faults{
		LatencyMS:       int(latency.Milliseconds()),
		LatencyJitterMS: int(jitter.Milliseconds()),
		ErrorRate:       *errorRate,
		ErrorStatus:     *errorStatus,
		ErrorStatuses:   statuses,
		Down:            *down,
		ValidationFail:  *validationFail,
	}
	if err := faults.Validate(); err != nil {
		return fmt.Errorf("mockshop: %w", err)
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("mockshop: listen: %w", err)
	}
	srv := &http.Server{
		Handler:           shopsim.New(faults, []byte(*secret)),
		ReadHeaderTimeout: 5 * time.Second,
	}
	fmt.Fprintf(stdout, "mockshop listening on http://%s\n", ln.Addr())

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("mockshop: serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("mockshop: shutdown: %w", err)
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("mockshop: serve: %w", err)
	}
	return nil
}
