package outbox

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/workers/texts"
)

// WaitNotifier keeps customers who wait for a human agent informed: when a
// conversation has waited longer than its shop's handoff_sla with no agent
// claiming it, the customer is told, in their language, how long it may
// still take — once per waiting period (storage.NoticeWaits; processes
// running it at once skip each other's conversations, so it may run in
// every relay). It also keeps peakdesk_conversations_waiting current.
type WaitNotifier struct {
	cfg     WaitNotifierConfig
	log     *slog.Logger
	waiting prometheus.Gauge

	stop     context.CancelFunc
	done     chan struct{}
	stopOnce sync.Once
}

// WaitNotifierConfig configures a WaitNotifier. DB and JS are required.
type WaitNotifierConfig struct {
	DB *storage.DB
	JS jetstream.JetStream
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives peakdesk_conversations_waiting; defaults to a
	// private registry.
	Registerer prometheus.Registerer
	// Interval is how often waiting conversations are looked at. Default
	// 5 s.
	Interval time.Duration
	// Batch is how many notices one transaction posts. Default 100.
	Batch int
}

// NewWaitNotifier returns a WaitNotifier for cfg.
func NewWaitNotifier(cfg WaitNotifierConfig) (*WaitNotifier, error) {
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	cfg.Interval = cmp.Or(cfg.Interval, 5*time.Second)
	cfg.Batch = cmp.Or(cfg.Batch, 100)
	switch {
	case cfg.DB == nil || cfg.JS == nil:
		return nil, errors.New("outbox: wait notifier config: DB and JS are required")
	case cfg.Interval < 10*time.Millisecond:
		return nil, errors.New("outbox: wait notifier config: Interval must be at least 10ms")
	case cfg.Batch < 1:
		return nil, errors.New("outbox: wait notifier config: Batch must be at least 1")
	}
	n := &WaitNotifier{cfg: cfg, log: cfg.Logger.With("component", "wait-notifier"),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peakdesk_conversations_waiting",
			Help: "Conversations handed to a human that no agent has claimed yet.",
		})}
	if err := cfg.Registerer.Register(n.waiting); err != nil {
		return nil, err
	}
	return n, nil
}

// Start starts looking every Interval. It returns at once.
func (n *WaitNotifier) Start(ctx context.Context) error {
	ctx, n.stop = context.WithCancel(context.WithoutCancel(ctx))
	n.done = make(chan struct{})
	go func() {
		defer close(n.done)
		t := time.NewTicker(n.cfg.Interval)
		defer t.Stop()
		for {
			n.tick(ctx)
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
	}()
	return nil
}

// Stop stops looking and waits for a look in progress. Idempotent.
func (n *WaitNotifier) Stop() {
	n.stopOnce.Do(func() {
		if n.stop != nil {
			n.stop()
			<-n.done
		}
	})
}

// tick posts the notices that are due, and counts the waiting.
func (n *WaitNotifier) tick(ctx context.Context) {
	for ctx.Err() == nil {
		replies, err := n.cfg.DB.NoticeWaits(ctx, n.cfg.Batch, waitNotice, ReplyWebhook)
		if err != nil {
			if ctx.Err() == nil {
				n.log.Warn("posting waiting notices failed; will retry", "err", err)
			}
			break
		}
		for _, r := range replies {
			// Should this fail, the workers' sweeper publishes it (the
			// notice is event pending).
			if err := queue.PublishReplyEvent(ctx, n.cfg.JS, r); err != nil {
				n.log.Warn("publishing a waiting notice failed; the sweeper will", "reply_id", r.ID, "err", err)
				continue
			}
			if err := n.cfg.DB.EventPublished(ctx, r.ShopID, r.ID); err != nil {
				n.log.Warn("noting a waiting notice published failed", "reply_id", r.ID, "err", err)
			}
			n.log.Info("customer told the expected wait for an agent", "shop", r.ShopID, "conversation_id", r.ConversationID)
		}
		if len(replies) < n.cfg.Batch {
			break
		}
	}
	if c, err := n.cfg.DB.CountWaiting(ctx); err == nil {
		n.waiting.Set(float64(c))
	} else if ctx.Err() == nil {
		n.log.Warn("counting waiting conversations failed", "err", err)
	}
}

// waitNotice is the notice for a customer who waited f: the expected wait
// is the conversations ahead (and theirs) at the pace agents claimed them
// over the last storage.ClaimWindow; no estimate when no agent claimed any.
func waitNotice(f storage.WaitFacts) string {
	var w texts.Wait
	if f.RecentClaims > 0 {
		perMinute := float64(f.RecentClaims) / storage.ClaimWindow.Minutes()
		w.Minutes = int(math.Ceil(float64(f.Ahead+1) / perMinute))
		w.Minutes = min(max(w.Minutes, 1), 24*60)
	}
	return texts.Text(texts.Detect(f.LastText, texts.DefaultLang), texts.HandoffWaiting, w)
}
