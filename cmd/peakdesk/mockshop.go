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
func runMockShop(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("mockshop", flag.ContinueOnError)
	fs.SetOutput(stdout)
	addr := fs.String("addr", "127.0.0.1:8091", "listen address (`host:port`; port 0 picks a free one)")
	latency := fs.Duration("latency", 0, "added latency of every shop request")
	jitter := fs.Duration("latency-jitter", 0, "extra random latency, uniform in 0..this")
	errorRate := fs.Float64("error-rate", 0, "probability (0..1) that a shop request fails with --error-status")
	errorStatus := fs.Int("error-status", http.StatusServiceUnavailable, "HTTP status of injected failures")
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
