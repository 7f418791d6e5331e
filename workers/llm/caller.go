package llm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/peakdesk/peakdesk"
)

// CallerConfig configures a Caller.
type CallerConfig struct {
	// Redis shares the breakers' state between processes. Nil keeps each
	// breaker local to the process (tests, single-process set-ups).
	Redis *redis.Client
	// KeyPrefix starts every Redis key the Caller writes. Default "pd:".
	KeyPrefix string
	// Clock is the retry loop's clock. Default SystemClock.
	Clock Clock
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; default a private registry.
	Registerer prometheus.Registerer
	// HTTPClient is shared by the provider clients. Default NewHTTPClient().
	HTTPClient *http.Client

	// CallTimeout bounds one attempt. Default 30 s.
	CallTimeout time.Duration
	// MaxAttempts bounds the attempts of one Call, the first included.
	// Default 3.
	MaxAttempts int
	// RetryStep is the linear schedule: the n-th retry waits RetryStep·n.
	// Default 500 ms.
	RetryStep time.Duration
	// RetryJitter spreads each wait by ± this fraction. Default 0.2; a
	// negative value means none.
	RetryJitter float64
	// RetryMaxWait caps one wait of the linear schedule (a provider's
	// Retry-After is honoured in full). Default 5 s.
	RetryMaxWait time.Duration
	// MinCallTime is the least time worth calling with: a retry whose wait
	// would leave less than this before the deadline is not made. Default 1 s.
	MinCallTime time.Duration

	// BreakerFailures consecutive failures open a breaker. Default 3.
	BreakerFailures uint32
	// BreakerRatio of failed calls within BreakerWindow opens a breaker once
	// the window holds BreakerMinCalls calls. Defaults 0.5, 20, 60 s.
	BreakerRatio    float64
	BreakerMinCalls uint32
	BreakerWindow   time.Duration
	// BreakerOpen is how long an open breaker refuses calls before it lets
	// BreakerProbes calls through (half-open). Defaults 10 s and 1.
	BreakerOpen   time.Duration
	BreakerProbes uint32
	// BreakerSync is how long a process may keep the successes of calls in
	// a breaker's closed state to itself before it adds them to the shared
	// state in Redis (one update for all of them). A failure is shared at
	// once, together with the successes before it, and successes are
	// shared at once while the shared state holds consecutive failures, so
	// the breaker still opens after BreakerFailures failures in a row
	// across processes; only the failure ratio may lag by this much of
	// other processes' successes. Default 1 s.
	BreakerSync time.Duration
}

func (c *CallerConfig) setDefaults() {
	c.KeyPrefix = cmp.Or(c.KeyPrefix, "pd:")
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	if c.HTTPClient == nil {
		c.HTTPClient = NewHTTPClient()
	}
	c.CallTimeout = cmp.Or(c.CallTimeout, 30*time.Second)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, 3)
	c.RetryStep = cmp.Or(c.RetryStep, 500*time.Millisecond)
	c.RetryJitter = cmp.Or(c.RetryJitter, 0.2)
	c.RetryMaxWait = cmp.Or(c.RetryMaxWait, 5*time.Second)
	c.MinCallTime = cmp.Or(c.MinCallTime, time.Second)
	c.BreakerFailures = cmp.Or(c.BreakerFailures, 3)
	c.BreakerRatio = cmp.Or(c.BreakerRatio, 0.5)
	c.BreakerMinCalls = cmp.Or(c.BreakerMinCalls, 20)
	c.BreakerWindow = cmp.Or(c.BreakerWindow, time.Minute)
	c.BreakerOpen = cmp.Or(c.BreakerOpen, 10*time.Second)
	c.BreakerProbes = cmp.Or(c.BreakerProbes, 1)
	c.BreakerSync = cmp.Or(c.BreakerSync, time.Second)
}

func (c *CallerConfig) validate() error {
	switch {
	case c.CallTimeout < 0:
		return errors.New("llm: config: CallTimeout must not be negative")
	case c.MaxAttempts < 1:
		return errors.New("llm: config: MaxAttempts must be at least 1")
	case c.RetryStep < 0:
		return errors.New("llm: config: RetryStep must not be negative")
	case c.RetryJitter > 1:
		return errors.New("llm: config: RetryJitter must be at most 1")
	case c.BreakerRatio <= 0 || c.BreakerRatio > 1:
		return errors.New("llm: config: BreakerRatio must be within (0, 1]")
	case c.BreakerWindow < 6*time.Millisecond:
		return errors.New("llm: config: BreakerWindow is too short")
	case c.BreakerOpen < 0:
		return errors.New("llm: config: BreakerOpen must not be negative")
	case c.BreakerSync < 0:
		return errors.New("llm: config: BreakerSync must not be negative")
	}
	return nil
}

// Caller calls one model of one provider at a time with peakdesk's
// resilience around it: a circuit breaker per credential (base URL, model
// and API key), shared by all processes through Redis, and a linear retry
// schedule that honours the provider's Retry-After within the caller's
// deadline. It is safe for concurrent use.
type Caller struct {
	cfg      CallerConfig
	breakers *breakers
	metrics  *callerMetrics

	mu      sync.Mutex
	clients map[string]*Client // by base URL and key
}

// NewCaller returns a Caller for cfg.
func NewCaller(cfg CallerConfig) (*Caller, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newCallerMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("llm: metrics: %w", err)
	}
	s := breakerSettings{
		failures: cfg.BreakerFailures, ratio: cfg.BreakerRatio, minCalls: cfg.BreakerMinCalls,
		window: cfg.BreakerWindow, openFor: cfg.BreakerOpen, probes: cfg.BreakerProbes,
		probeTTL: cfg.CallTimeout + time.Second, degradeFor: 5 * time.Second, syncEvery: cfg.BreakerSync,
	}
	return &Caller{
		cfg:      cfg,
		breakers: newBreakers(cfg.Redis, cfg.KeyPrefix, s, cfg.Logger.With("component", "llm"), m.breaker),
		metrics:  m,
		clients:  map[string]*Client{},
	}, nil
}

// Call is one request to one model of one provider.
type Call struct {
	// BaseURL and APIKey name the provider; Model the model there.
	BaseURL, APIKey, Model string
	// Turns is the prompt, oldest first.
	Turns []Turn
	// Tools are offered to the model; NoToolCall asks for a text answer
	// while they stay declared (see Request).
	Tools      []Tool
	NoToolCall bool
	// OnDelta, when set, makes the call stream (see Request.OnDelta). A
	// stream that breaks after text was delivered is not retried.
	OnDelta func(text string)
	// Deadline is when the answer is due, on the Caller's Clock. No wait is
	// started that would leave less than MinCallTime before it, and no
	// attempt runs past it. Zero means only CallTimeout bounds the attempts.
	Deadline time.Time
	// MaxTokens caps the completion (0: no limit), sent in MaxTokensParam
	// (see Request).
	MaxTokens      int
	MaxTokensParam string
	// Temperature is sent when set (see Request).
	Temperature *float64
	// OwnKey says APIKey is a shop's own rather than the process-wide one.
	// It changes nothing but the metric: the breakers of shops' own keys
	// are reported together, as credential="shop".
	OwnKey bool
}

// Do makes call, retrying as configured. It returns ErrBreakerOpen (wrapped)
// at once, without a call, when the breaker of the model refuses; any other
// error is the last attempt's, after which the caller should fall back.
func (c *Caller) Do(ctx context.Context, call Call) (*Completion, error) {
	if call.Model == "" || call.BaseURL == "" {
		return nil, errors.New("llm: call needs a base URL and a model")
	}
	client, err := c.client(call.BaseURL, call.APIKey)
	if err != nil {
		return nil, err
	}
	br := c.breakers.get(call.BaseURL, call.APIKey, call.Model, call.OwnKey)
	jitter := max(c.cfg.RetryJitter, 0)
	schedule := backoff.WithMaxRetries(&peakdesk.LinearBackOff{Step: c.cfg.RetryStep, Max: c.cfg.RetryMaxWait, Jitter: jitter},
		uint64(c.cfg.MaxAttempts-1))
	for attempt := 1; ; attempt++ {
		t, err := br.allow(ctx)
		if err != nil {
			c.metrics.calls.WithLabelValues(call.Model, OutcomeBreakerOpen).Inc()
			return nil, fmt.Errorf("llm: %s: %w", call.Model, err)
		}

		// One attempt, bounded by CallTimeout and by the deadline.
		timeout, shortened := c.cfg.CallTimeout, false
		if !call.Deadline.IsZero() {
			if left := call.Deadline.Sub(c.cfg.Clock.Now()); left < timeout {
				timeout, shortened = left, true
			}
		}
		if timeout <= 0 {
			br.record(context.WithoutCancel(ctx), t, errExcluded)
			return nil, fmt.Errorf("llm: %s: %w", call.Model, context.DeadlineExceeded)
		}
		actx, cancel := context.WithTimeout(ctx, timeout)
		start := time.Now()
		comp, err := client.Do(actx, Request{Model: call.Model, Turns: call.Turns, Tools: call.Tools,
			NoToolCall: call.NoToolCall, OnDelta: call.OnDelta, MaxTokens: call.MaxTokens,
			MaxTokensParam: call.MaxTokensParam, Temperature: call.Temperature})
		cancel()
		c.metrics.seconds.Observe(time.Since(start).Seconds())
		v := classify(err)
		if ctx.Err() != nil && err != nil {
			// The caller gave up; that says nothing about the provider.
			v = verdict{outcome: OutcomeCanceled}
		} else if shortened && errors.Is(err, context.DeadlineExceeded) {
			// Our deadline cut the call (or the stream) short, not the
			// provider: no breaker failure.
			v.fault = false
		}
		c.metrics.calls.WithLabelValues(call.Model, v.outcome).Inc()
		outcome := error(nil)
		switch {
		case err == nil:
		case v.fault:
			outcome = errFault
		default:
			outcome = errExcluded
		}
		open := br.record(context.WithoutCancel(ctx), t, outcome)
		if err == nil {
			c.countToolCalls(call.Tools, comp.ToolCalls)
			return comp, nil
		}
		if !v.retry || open || ctx.Err() != nil {
			return nil, err
		}

		// Wait: the provider's Retry-After in full, else the linear schedule.
		next := schedule.NextBackOff()
		if next == backoff.Stop {
			return nil, err
		}
		wait, asked := retryAfter(err, c.cfg.Clock.Now())
		if !asked {
			wait = next
		}
		if !call.Deadline.IsZero() && c.cfg.Clock.Now().Add(wait+c.cfg.MinCallTime).After(call.Deadline) {
			return nil, fmt.Errorf("%w (a retry in %v would miss the deadline)", err, wait)
		}
		if err := c.cfg.Clock.Sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

// countToolCalls counts the calls the model asked for by tool; a name that
// was not offered counts as "unknown", so a model cannot mint labels.
func (c *Caller) countToolCalls(offered []Tool, calls []ToolCall) {
	for _, tc := range calls {
		name := "unknown"
		for _, t := range offered {
			if t.Name == tc.Name {
				name = t.Name
				break
			}
		}
		c.metrics.toolCalls.WithLabelValues(name).Inc()
	}
}

// client returns the client of the provider at baseURL with apiKey.
func (c *Caller) client(baseURL, apiKey string) (*Client, error) {
	key := baseURL + "\x00" + apiKey
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl, ok := c.clients[key]; ok {
		return cl, nil
	}
	// Each attempt gets its own deadline from Do; the client's own timeout
	// only backs it up.
	cl, err := New(Config{BaseURL: baseURL, APIKey: apiKey, Timeout: c.cfg.CallTimeout, HTTPClient: c.cfg.HTTPClient})
	if err != nil {
		return nil, err
	}
	c.clients[key] = cl
	return cl, nil
}

// BreakerState reports the state of the breaker of model at baseURL with
// apiKey: as this process knows it while it is open, else as Redis has it.
func (c *Caller) BreakerState(ctx context.Context, baseURL, apiKey, model string) gobreaker.State {
	b := c.breakers.get(baseURL, apiKey, model, false)
	if time.Now().UnixNano() < b.openUntil.Load() {
		return gobreaker.StateOpen
	}
	if b.store == nil || time.Now().UnixNano() < b.degradedUntil.Load() {
		return b.local.State()
	}
	st, found, err := b.sharedState(ctx)
	switch {
	case err != nil || !found:
		return b.local.State()
	case st.State == gobreaker.StateOpen && !time.Now().Before(st.Expiry):
		return gobreaker.StateHalfOpen
	}
	return st.State
}

// providerLabel is the provider's host, for metric labels and logs (never
// the key, never a path that might carry one).
func providerLabel(baseURL string) string {
	u, err := url.Parse(baseURL)
	if err != nil || u.Host == "" {
		return "unknown"
	}
	return u.Host
}

type callerMetrics struct {
	calls     *prometheus.CounterVec
	seconds   prometheus.Histogram
	breaker   *prometheus.GaugeVec
	toolCalls *prometheus.CounterVec
}

func newCallerMetrics(reg prometheus.Registerer) (*callerMetrics, error) {
	m := &callerMetrics{
		// The worker registered the first two before the Caller existed;
		// the same names and help let both share them on one registry.
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_llm_calls_total",
			Help: "LLM calls by model and outcome.",
		}, []string{"model", "outcome"}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "peakdesk_llm_call_seconds",
			Help:    "LLM call duration.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
		breaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "peakdesk_llm_breaker_state",
			Help: "LLM circuit breaker state by provider, model and credential (default: the process-wide key; " +
				"shop: the worst of the shops' own keys) as this process saw it last: 0 closed, 1 half-open, 2 open.",
		}, []string{"provider", "model", "credential"}),
		toolCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peakdesk_llm_tool_calls_total",
			Help: "Tool calls the LLM asked for, by tool (\"unknown\" for a name that was not offered).",
		}, []string{"tool"}),
	}
	var err error
	if m.calls, err = Register(reg, m.calls); err != nil {
		return nil, err
	}
	if m.seconds, err = Register(reg, m.seconds); err != nil {
		return nil, err
	}
	if m.breaker, err = Register(reg, m.breaker); err != nil {
		return nil, err
	}
	if m.toolCalls, err = Register(reg, m.toolCalls); err != nil {
		return nil, err
	}
	return m, nil
}

// Register registers c on reg, or returns the collector already registered
// under the same description, so that components sharing a registry can
// share a metric.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}
