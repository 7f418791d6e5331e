package ingest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

// openGate admits event stream opens: at most slots opens are set up at
// once, and when a reconnect storm brings more, they wait their turn — up to
// maxWait, and at most maxQueue of them — instead of failing. One that
// cannot get in is answered 503 with a Retry-After spread over a few
// seconds, so the retries do not come back as one wave.
type openGate struct {
	slots    chan struct{}
	waiting  atomic.Int64
	maxQueue int64
	maxWait  time.Duration
	metrics  *pushMetrics
}

func newOpenGate(slots, maxQueue int, maxWait time.Duration, m *pushMetrics) *openGate {
	return &openGate{slots: make(chan struct{}, slots), maxQueue: int64(maxQueue), maxWait: maxWait, metrics: m}
}

// enter waits for a slot; leave must be called once the stream is set up.
func (g *openGate) enter(ctx context.Context) (leave func(), err error) {
	leave = func() { <-g.slots }
	select {
	case g.slots <- struct{}{}:
		g.metrics.openWait.Observe(0)
		return leave, nil
	default:
	}
	busy := &peakdesk.Error{Code: peakdesk.EOverloaded, Message: "too many event streams are opening, retry shortly",
		RetryAfter: time.Duration(1+rand.IntN(5)) * time.Second}
	if g.waiting.Add(1) > g.maxQueue {
		g.waiting.Add(-1)
		g.metrics.openRefused.WithLabelValues("queue_full").Inc()
		return nil, busy
	}
	g.metrics.openQueue.Inc()
	defer func() {
		g.waiting.Add(-1)
		g.metrics.openQueue.Dec()
	}()
	start := time.Now()
	t := time.NewTimer(g.maxWait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		g.metrics.openWait.Observe(time.Since(start).Seconds())
		return leave, nil
	case <-t.C:
		g.metrics.openRefused.WithLabelValues("waited_too_long").Inc()
		return nil, busy
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// ownerCache remembers who owns a conversation, for the opens whose
// conversation id does not prove it (its HMAC names another user, or a
// service token names none): a conversation never changes hands, so an
// owner read once stays true. When full it starts over.
type ownerCache struct {
	db  *storage.DB
	max int

	mu sync.Mutex
	m  map[string]string
}

func (c *ownerCache) lookup(ctx context.Context, shop, conv string) (string, error) {
	key := userKey(shop, conv)
	c.mu.Lock()
	owner, ok := c.m[key]
	c.mu.Unlock()
	if ok {
		return owner, nil
	}
	owner, err := c.db.ConversationOwner(ctx, shop, conv)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	if len(c.m) >= c.max {
		clear(c.m)
	}
	c.m[key] = owner
	c.mu.Unlock()
	return owner, nil
}

// openStream counts an event stream of user in shop in, unless the edge is
// closing, the process holds MaxStreams already or the user perUser. The
// caller must call release when the stream ends.
func (e *Edge) openStream(route, shop, user string, perUser int) (release func(), err error) {
	key := userKey(shop, user)
	e.streamsMu.Lock()
	defer e.streamsMu.Unlock()
	switch {
	case e.closed:
		return nil, &peakdesk.Error{Code: peakdesk.EOverloaded, Message: "the server is shutting down, reconnect",
			RetryAfter: time.Second}
	case e.openStreams >= e.cfg.MaxStreams:
		e.metrics.readRefusals.WithLabelValues(route, "process_streams").Inc()
		return nil, &peakdesk.Error{Code: peakdesk.ERateLimited, RetryAfter: 5 * time.Second,
			Message: "this server holds too many event streams, retry later"}
	case e.userStreams[key] >= perUser:
		e.metrics.readRefusals.WithLabelValues(route, "user_streams").Inc()
		return nil, &peakdesk.Error{Code: peakdesk.ERateLimited, RetryAfter: 10 * time.Second,
			Message: fmt.Sprintf("at most %d event streams may be open per user; close one or poll", perUser)}
	}
	e.openStreams++
	e.userStreams[key]++
	e.streams.Add(1)
	e.metrics.sseStreams.Inc()
	var once sync.Once
	return func() {
		once.Do(func() {
			e.streamsMu.Lock()
			e.openStreams--
			if e.userStreams[key]--; e.userStreams[key] <= 0 {
				delete(e.userStreams, key)
			}
			e.streamsMu.Unlock()
			e.metrics.sseStreams.Dec()
			e.streams.Done()
		})
	}, nil
}

// CloseStreams ends open event streams and waits for them. Register it with
// http.Server.RegisterOnShutdown: Shutdown does not end streaming requests,
// and knows nothing of the connections streams have taken over.
func (e *Edge) CloseStreams() {
	e.closeOnce.Do(func() {
		e.streamsMu.Lock()
		e.closed = true
		close(e.closing)
		e.streamsMu.Unlock()
	})
	e.hub.closeAll()
	e.streams.Wait()
	e.hub.goroutines.Wait()
}

// pushMetrics are the metrics of event streams beyond the ones every edge
// route has.
type pushMetrics struct {
	opens       *prometheus.CounterVec
	openQueue   prometheus.Gauge
	openWait    prometheus.Histogram
	openRefused *prometheus.CounterVec
	closed      *prometheus.CounterVec
	replayed    prometheus.Counter
	// delivery is how long a reply event took from its store in
	// CHAT_EVENTS to the edge's hub (stage hub) and to a live stream's
	// connection (stage wire).
	delivery *prometheus.HistogramVec
	// toHub and toWire are delivery's two series.
	toHub, toWire prometheus.Observer
	// watchFallbacks counts taken-over streams whose epoll watch could not
	// be set up: a reader goroutine watches them instead.
	watchFallbacks prometheus.Counter
}

func newPushMetrics(reg prometheus.Registerer) (*pushMetrics, error) {
	m := &pushMetrics{
		opens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_ingest_stream_opens_total",
			Help: "Event streams opened, by kind (customer, conversation), transport (sse, websocket) and replay (read: JetStream was read; skipped: the edge knew nothing was missed).",
		}, []string{"kind", "transport", "replay"}),
		openQueue: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peakdesk_ingest_stream_open_queue",
			Help: "Event stream opens waiting for their turn.",
		}),
		openWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "peakdesk_ingest_stream_open_wait_seconds",
			Help:    "How long event stream opens waited for their turn.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		openRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_ingest_stream_open_refused_total",
			Help: "Event stream opens answered 503 by the open queue, by reason (queue_full, waited_too_long).",
		}, []string{"reason"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_ingest_streams_closed_total",
			Help: "Event streams ended, by reason (client, slow, write, shutdown, replay).",
		}, []string{"reason"}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peakdesk_ingest_stream_replayed_events_total",
			Help: "Reply events replayed from JetStream to reopened event streams.",
		}),
		delivery: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "peakdesk_ingest_reply_delivery_seconds",
			Help:    "Live reply events from their store in CHAT_EVENTS to the edge (stage hub) and to an open stream's connection (stage wire; replays aside).",
			Buckets: []float64{0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5},
		}, []string{"stage"}),
		watchFallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peakdesk_ingest_stream_watch_fallbacks_total",
			Help: "Taken-over event streams the epoll watcher could not watch: a reader goroutine notices their client leaving instead.",
		}),
	}
	m.toHub, m.toWire = m.delivery.WithLabelValues("hub"), m.delivery.WithLabelValues("wire")
	for _, c := range []prometheus.Collector{m.opens, m.openQueue, m.openWait, m.openRefused, m.closed, m.replayed,
		m.delivery, m.watchFallbacks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
