// Package faq answers customer questions from each shop's FAQ: the step of
// the graded fallback after the LLM models, the context given to the LLM,
// and the ingest edge's instant answers when it sheds load.
//
// Each shop's entries live in an in-memory bleve index (scorch, BM25) whose
// analyzer is bleve's cjk chain plus English stemming and Chinese and English
// stop words. The Engine loads every shop's FAQ from Postgres at Start and
// rebuilds a shop's index when its FAQ version (bumped by a trigger on every
// change) moves; it polls the versions every Refresh, and at once when told
// a shop changed (Changed, called on the settings notifications).
package faq

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk/storage"
)

// DefaultThreshold is the default confidence a match needs to be used as an
// answer. On testdata/questions_zh.json against DemoEntries it answers 28 of
// 34 paraphrased questions with the right entry, one with a wrong one, and
// none of the 10 off-topic questions, the most confident of which scores
// 0.113 (see TestChineseFAQHitRate). A shop whose FAQ entries overlap a lot
// may want it higher.
const DefaultThreshold = 0.12

// Config configures an Engine.
type Config struct {
	// DB holds the FAQ entries. Required.
	DB *storage.DB
	// Refresh is how often the FAQ versions are polled. Default 2 s.
	Refresh time.Duration
	// Threshold is the confidence Search needs to answer. Default
	// DefaultThreshold.
	Threshold float64
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; default a private registry.
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	c.Refresh = cmp.Or(c.Refresh, 2*time.Second)
	c.Threshold = cmp.Or(c.Threshold, DefaultThreshold)
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
}

func (c *Config) validate() error {
	switch {
	case c.DB == nil:
		return errors.New("faq: config: DB is required")
	case c.Refresh < 10*time.Millisecond:
		return errors.New("faq: config: Refresh must be at least 10ms")
	case c.Threshold < 0 || c.Threshold > 1:
		return errors.New("faq: config: Threshold must be within 0..1")
	}
	return nil
}

// Engine searches the FAQ of every shop. It is safe for concurrent use;
// Search never touches Postgres.
type Engine struct {
	cfg      Config
	log      *slog.Logger
	searches *prometheus.CounterVec
	entries  *prometheus.GaugeVec

	mu    sync.RWMutex
	shops map[string]*shopIndex

	refreshMu sync.Mutex // one refresh at a time
	wake      chan struct{}

	startOnce, stopOnce sync.Once
	cancel              context.CancelFunc
	done                chan struct{}
}

// New returns an Engine for cfg. Call Start to load the FAQs.
func New(cfg Config) (*Engine, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "faq"),
		shops: map[string]*shopIndex{},
		wake:  make(chan struct{}, 1),
		searches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_faq_searches_total",
			Help: "FAQ searches by result: hit (confident match), miss.",
		}, []string{"result"}),
		entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "peakdesk_faq_entries",
			Help: "FAQ entries indexed, by shop.",
		}, []string{"shop"}),
	}
	var err error
	if e.searches, err = register(cfg.Registerer, e.searches); err != nil {
		return nil, fmt.Errorf("faq: metrics: %w", err)
	}
	if e.entries, err = register(cfg.Registerer, e.entries); err != nil {
		return nil, fmt.Errorf("faq: metrics: %w", err)
	}
	return e, nil
}

// register registers c, or returns the collector registered under the same
// description before (engines sharing a registry share their metrics).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}

// Start loads every shop's FAQ and starts the refresh loop. It returns once
// the FAQs are loaded, or fails fast.
func (e *Engine) Start(ctx context.Context) error {
	if err := e.Refresh(ctx); err != nil {
		return err
	}
	e.startOnce.Do(func() {
		loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		e.cancel = cancel
		e.done = make(chan struct{})
		go e.loop(loopCtx)
	})
	return nil
}

// Stop ends the refresh loop, waits for it and releases the indexes. It is
// idempotent; Search finds nothing afterwards.
func (e *Engine) Stop() {
	e.stopOnce.Do(func() {
		if e.cancel != nil {
			e.cancel()
			<-e.done
		}
		e.refreshMu.Lock()
		defer e.refreshMu.Unlock()
		e.mu.Lock()
		shops := e.shops
		e.shops = map[string]*shopIndex{}
		e.mu.Unlock()
		for _, si := range shops {
			si.close()
		}
	})
}

func (e *Engine) loop(ctx context.Context) {
	defer close(e.done)
	t := time.NewTicker(e.cfg.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.wake:
		case <-t.C:
		}
		if err := e.Refresh(ctx); err != nil && ctx.Err() == nil {
			e.log.Warn("faq refresh failed; serving the indexes already loaded", "err", err)
		}
	}
}

// Changed makes the refresh loop look for changes now rather than at its
// next tick: shop's settings changed (the FAQ's among them, maybe).
// Subscribe it to the settings notifications (storage/shopwatch). It never
// waits.
func (e *Engine) Changed(shop string) {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Refresh rebuilds the index of every shop whose FAQ changed since it was
// loaded. The refresh loop calls it; tests and the import command may call
// it to see a change at once.
func (e *Engine) Refresh(ctx context.Context) error {
	e.refreshMu.Lock()
	defer e.refreshMu.Unlock()
	versions, err := e.cfg.DB.FAQVersions(ctx)
	if err != nil {
		return fmt.Errorf("faq: refresh: %w", err)
	}
	var errs []error
	for shop, v := range versions {
		e.mu.RLock()
		cur := e.shops[shop]
		e.mu.RUnlock()
		if cur != nil && cur.version == v {
			continue
		}
		if err := e.load(ctx, shop); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// load (re)builds shop's index from Postgres and swaps it in.
func (e *Engine) load(ctx context.Context, shop string) error {
	entries, version, err := e.cfg.DB.FAQEntries(ctx, shop)
	if err != nil {
		return fmt.Errorf("faq: load %s: %w", shop, err)
	}
	si, err := buildIndex(entries, version)
	if err != nil {
		return fmt.Errorf("faq: load %s: %w", shop, err)
	}
	e.mu.Lock()
	old := e.shops[shop]
	e.shops[shop] = si
	e.mu.Unlock()
	if old != nil {
		old.close() // waits for searches still running on it
	}
	e.entries.WithLabelValues(shop).Set(float64(len(entries)))
	e.log.Debug("faq index loaded", "shop", shop, "entries", len(entries), "version", version)
	return nil
}

// Search returns the best entry of shop's FAQ for text when its confidence
// reaches the threshold.
func (e *Engine) Search(ctx context.Context, shop, text string) (Match, bool) {
	ms := e.Top(ctx, shop, text, 1)
	if len(ms) == 0 || ms[0].Confidence < e.cfg.Threshold {
		e.searches.WithLabelValues("miss").Inc()
		return Match{}, false
	}
	e.searches.WithLabelValues("hit").Inc()
	return ms[0], true
}

// Top returns up to n entries of shop's FAQ for text, most confident first,
// whatever their confidence: context for the LLM.
func (e *Engine) Top(ctx context.Context, shop, text string, n int) []Match {
	text = strings.TrimSpace(text)
	if n <= 0 || text == "" {
		return nil
	}
	e.mu.RLock()
	si := e.shops[shop]
	e.mu.RUnlock()
	if si == nil {
		return nil
	}
	ms, err := si.search(ctx, text, n)
	if err != nil {
		e.log.Warn("faq search failed", "shop", shop, "err", err)
		return nil
	}
	return ms
}

// Threshold returns the confidence Search needs.
func (e *Engine) Threshold() float64 { return e.cfg.Threshold }
