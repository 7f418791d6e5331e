package ingest

import "github.com/prometheus/client_golang/prometheus"

type edgeMetrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	accepted    *prometheus.CounterVec
	duplicates  prometheus.Counter
	publish     prometheus.Histogram
	redisErrors prometheus.Counter
	sseStreams  prometheus.Gauge
}

func newEdgeMetrics(reg prometheus.Registerer) (*edgeMetrics, error) {
	m := &edgeMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_ingest_requests_total",
			Help: "Edge requests by route and result code (ok or an error code).",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "peakdesk_ingest_request_duration_seconds",
			Help:    "Edge request duration by route (event streams: until they end).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"route"}),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_ingest_accepted_total",
			Help: "Messages durably accepted into CHAT_IN, by priority.",
		}, []string{"priority"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peakdesk_ingest_duplicates_total",
			Help: "Publishes JetStream recognised as repeats of an idempotency key.",
		}),
		publish: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "peakdesk_ingest_publish_seconds",
			Help:    "Time from publish to JetStream ack.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		redisErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peakdesk_ingest_redis_errors_total",
			Help: "Redis operations of the edge that failed (the edge carries on without them).",
		}),
		sseStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peakdesk_ingest_sse_streams",
			Help: "Open server-sent event streams.",
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.accepted, m.duplicates, m.publish, m.redisErrors, m.sseStreams} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
