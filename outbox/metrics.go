package outbox

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
)

type relayMetrics struct {
	actions        *prometheus.GaugeVec
	oldestDue      prometheus.Gauge
	attempts       *prometheus.CounterVec
	attemptSeconds *prometheus.HistogramVec
	inflight       prometheus.Gauge
	leaseLost      prometheus.Counter
}

func newRelayMetrics(reg prometheus.Registerer) (*relayMetrics, error) {
	m := &relayMetrics{
		actions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "peakdesk_outbox_actions",
			Help: "Outbox actions by state and kind (refreshed periodically from Postgres).",
		}, []string{"state", "kind"}),
		oldestDue: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peakdesk_outbox_oldest_due_seconds",
			Help: "How long the longest-waiting due action has been due (0 when none is).",
		}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_outbox_attempts_total",
			Help: "Attempts of outbox actions by kind and outcome (succeeded, failed, rejected, aborted).",
		}, []string{"kind", "outcome"}),
		attemptSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "peakdesk_outbox_attempt_seconds",
			Help:    "Duration of one attempt of an outbox action, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"kind"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peakdesk_outbox_relay_inflight",
			Help: "Actions this relay is carrying out now.",
		}),
		leaseLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peakdesk_outbox_lease_lost_total",
			Help: "Attempts that finished after their lease had expired and the action was re-claimed.",
		}),
	}
	for _, c := range []prometheus.Collector{m.actions, m.oldestDue, m.attempts, m.attemptSeconds, m.inflight, m.leaseLost} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Start every series at zero so dashboards and alerts see them at once.
	for _, k := range peakdesk.ActionKinds {
		for _, s := range peakdesk.ActionStates {
			m.actions.WithLabelValues(string(s), string(k))
		}
		for _, o := range []string{peakdesk.AttemptSucceeded, peakdesk.AttemptFailed, peakdesk.AttemptRejected, peakdesk.AttemptAborted} {
			m.attempts.WithLabelValues(string(k), o)
		}
	}
	return m, nil
}
