package outbox

import (
	"context"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Hooks for the external tests (package outbox_test, which can use the
// simulated shop in loadtest without an import cycle).

// Kill stops r as a crash would: nothing more is recorded.
func Kill(r *Relay) { r.kill() }

// AttemptsMetric reads peakdesk_outbox_attempts_total{kind,outcome} of r.
func AttemptsMetric(r *Relay, kind, outcome string) float64 {
	return testutil.ToFloat64(r.metrics.attempts.WithLabelValues(kind, outcome))
}

// ActionsGauge refreshes and reads peakdesk_outbox_actions{state,kind} of r.
func ActionsGauge(ctx context.Context, r *Relay, state, kind string) (float64, error) {
	if err := r.updateGauges(ctx); err != nil {
		return 0, err
	}
	return testutil.ToFloat64(r.metrics.actions.WithLabelValues(state, kind)), nil
}

// OldestDueGauge refreshes and reads peakdesk_outbox_oldest_due_seconds.
func OldestDueGauge(ctx context.Context, r *Relay) (float64, error) {
	if err := r.updateGauges(ctx); err != nil {
		return 0, err
	}
	return testutil.ToFloat64(r.metrics.oldestDue), nil
}
