package ingest

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// AdmissionConfig sets when the edge sheds load. A message of priority p is
// shed when the work queued at p or above would take longer than MaxWait[p]
// to drain at the measured rate — so p2 goes first and p0 last.
type AdmissionConfig struct {
	// MaxWait is the longest expected queueing per priority before shedding.
	// Defaults: p0 5 min, p1 2 min, p2 30 s.
	MaxWait map[peakdesk.Priority]time.Duration
	// MinBacklog is the backlog below which nothing is shed, whatever the
	// drain rate (a cold start has no rate yet). Default 2,000.
	MinBacklog int64
	// Refresh is how often consumer info is read. Default 500 ms.
	Refresh time.Duration
	// Disabled turns shedding off (the stream's size limit still applies).
	Disabled bool
}

func (c *AdmissionConfig) setDefaults() {
	if c.MaxWait == nil {
		c.MaxWait = map[peakdesk.Priority]time.Duration{}
	}
	for p, d := range map[peakdesk.Priority]time.Duration{peakdesk.P0: 5 * time.Minute, peakdesk.P1: 2 * time.Minute, peakdesk.P2: 30 * time.Second} {
		if c.MaxWait[p] <= 0 {
			c.MaxWait[p] = d
		}
	}
	if c.MinBacklog <= 0 {
		c.MinBacklog = 2000
	}
	if c.Refresh <= 0 {
		c.Refresh = 500 * time.Millisecond
	}
}

// admission keeps a cached view of each priority's backlog and of the rate
// the workers drain CHAT_IN, refreshed in the background from consumer info.
type admission struct {
	cfg     AdmissionConfig
	js      jetstream.JetStream
	metrics *edgeMetrics

	mu      sync.RWMutex
	backlog [3]int64  // pending + unacked, by priority rank
	drain   float64   // messages acked per second, all priorities (EWMA)
	acked   [3]uint64 // last ack floors
	at      time.Time // when acked was read
	valid   bool

	cancel context.CancelFunc
	done   chan struct{}
}

func newAdmission(cfg AdmissionConfig, js jetstream.JetStream, m *edgeMetrics) *admission {
	cfg.setDefaults()
	return &admission{cfg: cfg, js: js, metrics: m, done: make(chan struct{})}
}

func (a *admission) start() {
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() {
		defer close(a.done)
		t := time.NewTicker(a.cfg.Refresh)
		defer t.Stop()
		for {
			a.refresh(ctx)
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
	}()
}

func (a *admission) stop() {
	if a.cancel != nil {
		a.cancel()
		<-a.done
	}
}

func (a *admission) refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var backlog [3]int64
	var acked [3]uint64
	for _, p := range peakdesk.Priorities {
		c, err := a.js.Consumer(ctx, queue.StreamIn, queue.ConsumerName(p))
		if err != nil {
			return // keep the last view; the stream limit still protects us
		}
		info := c.CachedInfo()
		backlog[p.Rank()] = int64(info.NumPending) + int64(info.NumAckPending)
		acked[p.Rank()] = info.AckFloor.Consumer
	}
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.valid {
		var delta uint64
		for i := range acked {
			if acked[i] >= a.acked[i] {
				delta += acked[i] - a.acked[i]
			}
		}
		if dt := now.Sub(a.at).Seconds(); dt > 0 {
			rate := float64(delta) / dt
			// EWMA over a few refreshes: steady enough to compute Retry-After,
			// quick enough to follow the workers scaling out.
			a.drain = 0.7*a.drain + 0.3*rate
		}
	}
	a.backlog, a.acked, a.at, a.valid = backlog, acked, now, true
	for _, p := range peakdesk.Priorities {
		a.metrics.backlog.WithLabelValues(string(p)).Set(float64(backlog[p.Rank()]))
	}
	a.metrics.drain.Set(a.drain)
}

// check decides whether a message of priority p of a shop with the
// thresholds shop (zero fields: the configured ones) may be queued now.
// When it may not, it returns how long until it probably could.
func (a *admission) check(p peakdesk.Priority, shop storage.ShopAdmission) (retryAfter time.Duration, ok bool) {
	if a.cfg.Disabled {
		return 0, true
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if !a.valid {
		return 0, true
	}
	var ahead int64
	for r := 0; r <= p.Rank(); r++ {
		ahead += a.backlog[r]
	}
	minBacklog := a.cfg.MinBacklog
	if shop.MinBacklog > 0 {
		minBacklog = int64(shop.MinBacklog)
	}
	if ahead < minBacklog {
		return 0, true
	}
	maxWait := a.cfg.MaxWait[p].Seconds()
	if d := [3]time.Duration{shop.MaxWaitP0, shop.MaxWaitP1, shop.MaxWaitP2}[p.Rank()]; d > 0 {
		maxWait = d.Seconds()
	}
	drain := math.Max(a.drain, 1)
	wait := float64(ahead) / drain
	if wait <= maxWait {
		return 0, true
	}
	// Until the queue ahead has drained back under the threshold.
	after := time.Duration((wait - maxWait) * float64(time.Second))
	return min(max(after, time.Second), time.Minute), false
}
