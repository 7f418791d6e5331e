package workers

import "github.com/prometheus/client_golang/prometheus"

type workerMetrics struct {
	limit       prometheus.Gauge
	inflight    prometheus.Gauge
	answers     *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	llmCalls    *prometheus.CounterVec
	llmSeconds  prometheus.Histogram
	redelivered prometheus.Counter
}

func newWorkerMetrics(reg prometheus.Registerer) (*workerMetrics, error) {
	m := &workerMetrics{
		limit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peakdesk_worker_concurrency_limit",
			Help: "Messages this worker process may answer at once.",
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peakdesk_worker_inflight",
			Help: "Messages this worker process is answering now.",
		}),
		answers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_answers_total",
			Help: "Replies stored, by priority and source.",
		}, []string{"priority", "source"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "peakdesk_answer_latency_seconds",
			Help:    "Time from acceptance at the edge to the stored reply, by priority and source.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}, []string{"priority", "source"}),
		llmCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_llm_calls_total",
			Help: "LLM calls by model and outcome.",
		}, []string{"model", "outcome"}),
		llmSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "peakdesk_llm_call_seconds",
			Help:    "LLM call duration.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peakdesk_worker_already_answered_total",
			Help: "Deliveries of messages that already had a reply (event re-published, no LLM call).",
		}),
	}
	for _, c := range []prometheus.Collector{m.limit, m.inflight, m.answers, m.latency, m.llmCalls, m.llmSeconds, m.redelivered} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
