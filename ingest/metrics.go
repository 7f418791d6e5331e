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

	rateFallbacks prometheus.Counter
	rateDegraded  prometheus.Gauge
	backlog       *prometheus.GaugeVec
	drain         prometheus.Gauge
	shed          *prometheus.CounterVec
	p0Capped      prometheus.Counter
	readRefusals  *prometheus.CounterVec

	// The bounds of the paths a burst takes (see bindBounds for the rest).
	inflightRefusals *prometheus.CounterVec
	publishInflight  prometheus.Gauge
	faqLookups       *prometheus.CounterVec
	faqInflight      prometheus.Gauge
	faqSeconds       prometheus.Histogram
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
		rateFallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peakdesk_ingest_ratelimit_redis_failures_total",
			Help: "Rate-limit checks that found Redis unreachable and fell back to local limits.",
		}),
		rateDegraded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peakdesk_ingest_ratelimit_local",
			Help: "1 while rate limits are enforced locally because Redis is unreachable.",
		}),
		backlog: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "peakdesk_ingest_backlog",
			Help: "CHAT_IN backlog (pending + unacked) by priority, as the edge's admission control sees it.",
		}, []string{"priority"}),
		drain: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peakdesk_ingest_drain_rate",
			Help: "Messages per second the workers take off CHAT_IN (smoothed), as admission control sees it.",
		}),
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_ingest_shed_total",
			Help: "Messages shed by admission control, by priority and outcome: faq (answered), order (checking, followed up), rejected (429), human (a human agent owns the conversation: queued for the agent, never answered by the bot), unknown_owner (429: the edge does not know whether a human owns the named conversation).",
		}, []string{"priority", "outcome"}),
		p0Capped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peakdesk_ingest_p0_capped_total",
			Help: "Messages that keywords made p0 but were classified p1 because their user reached p0_per_user_per_hour.",
		}),
		readRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_ingest_read_refusals_total",
			Help: "Reads and event streams refused with 429, by route and reason (read_limit, user_streams, process_streams).",
		}, []string{"route", "reason"}),
		inflightRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_ingest_inflight_refusals_total",
			Help: "Requests answered 503 at once because MaxInFlight requests were being handled, by route.",
		}, []string{"route"}),
		publishInflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peakdesk_ingest_publish_inflight",
			Help: "Publishes to CHAT_IN (messages and shed answers) waiting for JetStream's ack.",
		}),
		faqLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_ingest_faq_lookups_total",
			Help: "FAQ lookups for shed messages, by result: hit (cached answer or its absence), miss (searched).",
		}, []string{"result"}),
		faqInflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peakdesk_ingest_faq_searches_inflight",
			Help: "FAQ searches for shed messages running now (bounded by FAQConcurrency).",
		}),
		faqSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "peakdesk_ingest_faq_search_seconds",
			Help:    "Time of one FAQ search for a shed message (cache misses).",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 14),
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.accepted, m.duplicates, m.publish,
		m.redisErrors, m.sseStreams, m.rateFallbacks, m.rateDegraded, m.backlog, m.drain, m.shed,
		m.p0Capped, m.readRefusals, m.inflightRefusals, m.publishInflight, m.faqLookups, m.faqInflight,
		m.faqSeconds} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// bindBounds registers the gauges read from the edge's bounded queues at
// scrape time: requests in flight (MaxInFlight), cached FAQ answers
// (FAQCacheSize) and queued-state cache writes waiting for Redis.
func (m *edgeMetrics) bindBounds(reg prometheus.Registerer, e *Edge) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "peakdesk_ingest_inflight_requests",
			Help: "Requests being handled now, event streams aside (bounded by MaxInFlight).",
		}, func() float64 { return float64(len(e.inflight)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "peakdesk_ingest_faq_cache_entries",
			Help: "Questions whose FAQ answer (or its absence) the edge holds for shed messages (bounded by FAQCacheSize).",
		}, func() float64 { return float64(e.faq.len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "peakdesk_ingest_human_owned_conversations",
			Help: "Conversations human agents own, as this edge follows them for shedding; -1 while it does not know (then a shed message naming a conversation gets 429).",
		}, e.humans.size),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "peakdesk_ingest_human_owned_listener_up",
			Help: "1 while this edge follows which conversations human agents own (listening on Postgres, the set loaded), 0 while it reconnects.",
		}, e.humans.up),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "peakdesk_ingest_queued_cache_buffered",
			Help: "Queued-state and shed-answer cache writes waiting for Redis (bounded; beyond it they are dropped and counted in peakdesk_ingest_redis_errors_total).",
		}, func() float64 { return float64(e.queuedW.buffered()) }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
