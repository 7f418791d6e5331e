// Package retention keeps customers' words as written only as long as their
// shop allows. Once a message or a reply is older than its shop's retention
// (shops.retention_days, default 30), its text is replaced by its masked form
// (workers/pii: phone, ID-card and card numbers, e-mail addresses), once: the
// row is marked redacted and never read again. The copies of those texts
// in the outbox's webhook deliveries (a reply.created event's reply, a desk
// event's customer message) are masked with them.
//
// A Redactor runs in the relay role every Interval. It reads a batch of a
// shop's expired rows, masks them in Go and writes them back in the same
// transaction (storage.RedactExpired); batches are taken with SKIP LOCKED,
// so any number of relays may run it at once without doing the work twice.
// The rows it looks for are indexed where not yet redacted, so a run over a
// large table costs only the expired rows.
package retention

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/workers/pii"
)

// Config configures a Redactor. DB is required.
type Config struct {
	DB *storage.DB
	// Interval is the time between runs; the first run starts with Start.
	// Default 10 min.
	Interval time.Duration
	// BatchSize is how many rows one statement redacts (one transaction).
	// Default 1000.
	BatchSize int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; defaults to a private registry.
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	c.Interval = cmp.Or(c.Interval, 10*time.Minute)
	c.BatchSize = cmp.Or(c.BatchSize, 1000)
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
}

func (c *Config) validate() error {
	switch {
	case c.DB == nil:
		return errors.New("retention: config: DB is required")
	case c.Interval < time.Second:
		return errors.New("retention: config: Interval must be at least 1s")
	case c.BatchSize < 1 || c.BatchSize > 10_000:
		return errors.New("retention: config: BatchSize must be within 1..10000")
	}
	return nil
}

// Redactor replaces expired chat texts by their masked form.
type Redactor struct {
	cfg      Config
	log      *slog.Logger
	redacted *prometheus.CounterVec
	runs     *prometheus.CounterVec

	startOnce, stopOnce sync.Once
	cancel              context.CancelFunc
	done                chan struct{}
}

// New returns a Redactor for cfg.
func New(cfg Config) (*Redactor, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &Redactor{
		cfg: cfg,
		log: cfg.Logger.With("component", "retention"),
		redacted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_retention_redacted_total",
			Help: "Messages, replies and webhook deliveries (outbox_actions) whose texts were replaced by their masked form after the shop's retention, by table.",
		}, []string{"table"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_retention_runs_total",
			Help: "Runs of the retention job by outcome (ok, failed).",
		}, []string{"outcome"}),
	}
	for _, c := range []prometheus.Collector{r.redacted, r.runs} {
		if err := cfg.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("retention: metrics: %w", err)
		}
	}
	for _, t := range storage.RedactTables {
		r.redacted.WithLabelValues(string(t))
	}
	r.runs.WithLabelValues("ok")
	r.runs.WithLabelValues("failed")
	return r, nil
}

// Start checks that Postgres answers (failing fast when it does not) and
// starts running the job at once and then every Interval. Calling it again
// does nothing.
func (r *Redactor) Start(ctx context.Context) error {
	var err error
	r.startOnce.Do(func() {
		if err = r.cfg.DB.Ping(ctx); err != nil {
			err = fmt.Errorf("retention: start: %w", err)
			return
		}
		loopCtx, cancel := context.WithCancel(context.Background())
		r.cancel, r.done = cancel, make(chan struct{})
		go r.loop(loopCtx)
		r.log.Info("retention job started", "interval", r.cfg.Interval.String(), "batch", r.cfg.BatchSize)
	})
	return err
}

// Stop ends the job and waits for it. A batch in flight is rolled back: its
// rows are simply redacted by the next run. Stop is idempotent.
func (r *Redactor) Stop() {
	r.stopOnce.Do(func() {
		if r.cancel == nil {
			return
		}
		r.cancel()
		<-r.done
	})
}

func (r *Redactor) loop(ctx context.Context) {
	defer close(r.done)
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		if _, err := r.RunOnce(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("retention run failed; retrying at the next run", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Result counts the rows one run redacted: messages, replies and the
// outbox's webhook deliveries (whose payloads copy their texts).
type Result struct {
	Messages, Replies, Webhooks int
}

// RunOnce redacts every shop's expired messages, replies and webhook
// deliveries, batch by batch, until none is left that this Redactor may
// take. It may be called while the job runs (concurrent runs share the
// work).
func (r *Redactor) RunOnce(ctx context.Context) (Result, error) {
	var res Result
	err := r.run(ctx, &res)
	outcome := "ok"
	if err != nil {
		outcome = "failed"
	}
	r.runs.WithLabelValues(outcome).Inc()
	if res.Messages+res.Replies+res.Webhooks > 0 {
		r.log.Info("retention: expired texts masked", "messages", res.Messages, "replies", res.Replies,
			"webhooks", res.Webhooks)
	}
	return res, err
}

func (r *Redactor) run(ctx context.Context, res *Result) error {
	shops, err := r.cfg.DB.ShopRetentions(ctx)
	if err != nil {
		return fmt.Errorf("retention: %w", err)
	}
	for _, s := range shops {
		for _, t := range storage.RedactTables {
			for {
				n, err := r.cfg.DB.RedactExpired(ctx, t, s.ShopID, s.Days, r.cfg.BatchSize, mask)
				if err != nil {
					return fmt.Errorf("retention: shop %s: %w", s.ShopID, err)
				}
				r.redacted.WithLabelValues(string(t)).Add(float64(n))
				switch t {
				case storage.RedactMessages:
					res.Messages += n
				case storage.RedactReplies:
					res.Replies += n
				case storage.RedactWebhooks:
					res.Webhooks += n
				}
				if n < r.cfg.BatchSize {
					break
				}
			}
		}
	}
	return nil
}

// mask is the masked form a text keeps after its retention.
func mask(text string) string {
	masked, _ := pii.Mask(text)
	return masked
}
