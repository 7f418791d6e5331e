package workers

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
)

type workerMetrics struct {
	inflight    prometheus.Gauge
	answers     *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	redelivered prometheus.Counter
	turnSize    prometheus.Histogram
	waited      prometheus.Counter
	swept       *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	backlog     *backlogCollector
}

func newWorkerMetrics(reg prometheus.Registerer) (*workerMetrics, error) {
	m := &workerMetrics{
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peakdesk_worker_inflight",
			Help: "Messages this worker process is answering now.",
		}),
		answers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_answers_total",
			Help: "Messages answered (one reply may answer several), by priority and source.",
		}, []string{"priority", "source"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "peakdesk_answer_latency_seconds",
			Help:    "Time from acceptance at the edge to the stored reply, by priority and source.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}, []string{"priority", "source"}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peakdesk_worker_already_answered_total",
			Help: "Deliveries of messages that already had a reply (event re-published, no LLM call).",
		}),
		turnSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "peakdesk_worker_turn_messages",
			Help:    "Messages answered together by one reply.",
			Buckets: []float64{1, 2, 3, 5, 8, 13, 20},
		}),
		waited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peakdesk_worker_waiting_total",
			Help: "Messages stored to wait for their conversation's next turn (another worker held it).",
		}),
		swept: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_worker_swept_total",
			Help: "Work the sweeper picked up: turns of conversations nobody held, reply events not published.",
		}, []string{"kind"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_dead_letters_total",
			Help: "Messages moved to CHAT_DLQ after their last delivery, by priority.",
		}, []string{"priority"}),
		backlog: &backlogCollector{desc: prometheus.NewDesc("peakdesk_queue_backlog",
			"Messages queued per priority and not answered yet (consumer num_pending + num_ack_pending; cached for 2 s).",
			[]string{"priority"}, nil)},
	}
	for _, c := range []prometheus.Collector{m.inflight, m.answers, m.latency, m.redelivered,
		m.turnSize, m.waited, m.swept, m.deadLetters, m.backlog} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// backlogCollector reports each priority consumer's lag, read from
// JetStream at scrape time at most every 2 s.
type backlogCollector struct {
	desc *prometheus.Desc

	mu        sync.Mutex
	consumers []jetstream.Consumer
	at        time.Time
	values    []float64
}

func (c *backlogCollector) bind(consumers []jetstream.Consumer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.consumers = consumers
}

// Describe implements prometheus.Collector.
func (c *backlogCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *backlogCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.consumers) == 0 {
		return
	}
	if time.Since(c.at) > 2*time.Second {
		// On failure the last values stand (and are retried next scrape).
		if values, ok := c.read(); ok {
			c.values, c.at = values, time.Now()
		}
	}
	for i, v := range c.values {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, string(peakdesk.Priorities[i]))
	}
}

func (c *backlogCollector) read() ([]float64, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	values := make([]float64, len(c.consumers))
	for i, cons := range c.consumers {
		info, err := cons.Info(ctx)
		if err != nil {
			return nil, false
		}
		values[i] = float64(info.NumPending) + float64(info.NumAckPending)
	}
	return values, true
}
