package shedwriter

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	records *prometheus.CounterVec
	batch   prometheus.Histogram
	commit  prometheus.Histogram
	backlog prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, buffered func() float64) (*metrics, error) {
	m := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_shed_writer_records_total",
			Help: "Shed answers the writer settled, by outcome: stored, repeat (the message was stored already), " +
				"foreign (another user's conversation), human (kept for the agent who owns the conversation, the answer not stored), malformed, retried (the batch, the event or the announcement failed).",
		}, []string{"outcome"}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "peakdesk_shed_writer_batch_size",
			Help:    "Shed answers stored per transaction.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "peakdesk_shed_writer_commit_seconds",
			Help:    "Time to store one batch of shed answers.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peakdesk_shed_writer_backlog",
			Help: "Shed answers in CHAT_IN not yet stored (pending + unacked on the shed-writer consumer).",
		}),
	}
	buf := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "peakdesk_shed_writer_buffered",
		Help: "Shed answers fetched by this process and waiting for a transaction (bounded by the batch size).",
	}, buffered)
	for _, c := range []prometheus.Collector{m.records, m.batch, m.commit, m.backlog, buf} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
