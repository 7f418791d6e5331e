package workers

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/workers/llm"
)

// LimitsConfig configures a worker process's Limits. Zero fields take the
// defaults.
type LimitsConfig struct {
	// Concurrency is the most messages one process answers at once: the
	// ceiling of the adaptive limit. Default 64.
	Concurrency int
	// MinConcurrency is the floor the adaptive limit backs off to when the
	// provider shows distress (429, 503, 529, timeouts, rising latency).
	// Default Concurrency/8, at least 1.
	MinConcurrency int
	// ProviderRPM and ProviderTPM are the LLM provider's requests and tokens
	// per minute for all worker processes together; 0 = unlimited. They
	// apply through an LLMTransport made on these Limits.
	ProviderRPM, ProviderTPM int
	// ProviderKey names that budget in Redis (one per provider account and
	// model). Default "default".
	ProviderKey string
	// Redis holds the provider budget shared by all worker processes; nil
	// keeps it local to this process.
	Redis *redis.Client
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the limits' metrics; defaults to a private
	// registry. Give the worker's, so they are served with its metrics.
	Registerer prometheus.Registerer
}

func (c *LimitsConfig) setDefaults() {
	c.Concurrency = cmp.Or(c.Concurrency, 64)
	c.MinConcurrency = cmp.Or(c.MinConcurrency, max(c.Concurrency/8, 1))
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
}

func (c *LimitsConfig) validate() error {
	switch {
	case c.Concurrency < 1:
		return errors.New("workers: limits: Concurrency must be at least 1")
	case c.MinConcurrency < 1 || c.MinConcurrency > c.Concurrency:
		return errors.New("workers: limits: MinConcurrency must be within 1..Concurrency")
	case c.ProviderRPM < 0 || c.ProviderTPM < 0:
		return errors.New("workers: limits: ProviderRPM and ProviderTPM must not be negative")
	}
	return nil
}

// Limits are what keeps one worker process within what its LLM provider
// can take: an adaptive concurrency limit (AIMD) on the messages it answers
// at once, and the provider's requests/tokens-per-minute budget shared by
// all processes (ProviderLimiter). Both the LLMTransport and the Worker are
// made on the same Limits: the transport admits each call under the budget
// and tells the adaptive limit how it went; the Worker starts no more
// messages than the limit allows.
type Limits struct {
	cfg      LimitsConfig
	aimd     *AIMD
	slots    *slots
	provider *ProviderLimiter
	limit    prometheus.Gauge
	// transports counts the LLMTransports made on these Limits: a provider
	// budget nobody applies is a configuration error.
	transports atomic.Int32
}

// NewLimits returns Limits for cfg.
func NewLimits(cfg LimitsConfig) (*Limits, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	l := &Limits{
		cfg:   cfg,
		aimd:  NewAIMD(AIMDConfig{Min: cfg.MinConcurrency, Max: cfg.Concurrency}),
		slots: newSlots(cfg.Concurrency),
		provider: NewProviderLimiter(ProviderLimitConfig{
			Redis: cfg.Redis, Key: cfg.ProviderKey, RPM: cfg.ProviderRPM, TPM: cfg.ProviderTPM, Logger: cfg.Logger,
		}),
	}
	var err error
	if l.limit, err = llm.Register(cfg.Registerer, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "peakdesk_worker_concurrency_limit",
		Help: "Messages this worker process may answer at once (adaptive, AIMD).",
	})); err != nil {
		return nil, fmt.Errorf("workers: limits: metrics: %w", err)
	}
	rateWait, err := llm.Register(cfg.Registerer, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "peakdesk_llm_rate_wait_seconds",
		Help:    "Time an LLM call waited for the provider's requests/tokens-per-minute budget, by priority.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
	}, []string{"priority"}))
	if err != nil {
		return nil, fmt.Errorf("workers: limits: metrics: %w", err)
	}
	rateLocal, err := llm.Register(cfg.Registerer, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "peakdesk_llm_rate_local",
		Help: "1 while Redis is unreachable and this process enforces its share of the provider budget locally.",
	}))
	if err != nil {
		return nil, fmt.Errorf("workers: limits: metrics: %w", err)
	}
	l.provider.Waited = func(p peakdesk.Priority, d time.Duration) {
		rateWait.WithLabelValues(string(p)).Observe(d.Seconds())
	}
	l.provider.Degraded = func(local bool) {
		rateLocal.Set(map[bool]float64{false: 0, true: 1}[local])
	}
	l.limit.Set(float64(cfg.Concurrency))
	return l, nil
}

// Limit returns the adaptive concurrency limit now.
func (l *Limits) Limit() int { return l.aimd.Limit() }

// observeCall feeds one LLM call to the adaptive limit.
func (l *Limits) observeCall(took time.Duration, s Signal) {
	inflight, _ := l.slots.counts()
	limit := l.aimd.Observe(took, s, inflight)
	l.slots.setLimit(limit)
	l.limit.Set(float64(limit))
}

// budgeted reports whether a provider budget is set.
func (l *Limits) budgeted() bool { return l.cfg.ProviderRPM > 0 || l.cfg.ProviderTPM > 0 }
