package workers

import (
	"sync"
	"time"
)

// Signal is what one LLM call says about the provider's capacity.
type Signal int

// Signals.
const (
	// SignalOK: the call succeeded.
	SignalOK Signal = iota
	// SignalOverload: 429, 503, 529 or a timeout: the provider wants less.
	SignalOverload
	// SignalIgnore: an error that says nothing about capacity (a rejected
	// request, a cancelled call).
	SignalIgnore
)

// AIMDConfig configures an AIMD limit. Zero fields take the defaults.
type AIMDConfig struct {
	// Min and Max bound the limit. Max defaults to 64, Min to 1.
	Min, Max int
	// Backoff multiplies the limit on an overload signal. Default 0.75.
	Backoff float64
	// SlowFactor: a call counts as an overload signal when the recent
	// latency (short average) exceeds SlowFactor × the long-run average and
	// is at least SlowMargin above it: the provider is queueing our calls.
	// Defaults 2 and 250 ms.
	SlowFactor float64
	SlowMargin time.Duration
	// Now is the clock; defaults to time.Now.
	Now func() time.Time
}

// AIMD is an adaptive concurrency limit: additive increase (one more call
// per limit's worth of successful calls, i.e. about +1 per round trip) while
// the limit is in use, multiplicative decrease on overload signals, at most
// once per recent round trip so that one burst of 429s counts once. It starts
// at Max: the provider's rate limits are enforced separately, this only
// backs off when the provider shows distress.
type AIMD struct {
	cfg AIMDConfig

	mu       sync.Mutex
	limit    float64
	short    float64 // seconds, fast EWMA of successful call latency
	long     float64 // seconds, slow EWMA
	lastDrop time.Time
}

// NewAIMD returns a limit for cfg.
func NewAIMD(cfg AIMDConfig) *AIMD {
	if cfg.Max <= 0 {
		cfg.Max = 64
	}
	cfg.Min = min(max(cfg.Min, 1), cfg.Max)
	if cfg.Backoff <= 0 || cfg.Backoff >= 1 {
		cfg.Backoff = 0.75
	}
	if cfg.SlowFactor <= 1 {
		cfg.SlowFactor = 2
	}
	if cfg.SlowMargin <= 0 {
		cfg.SlowMargin = 250 * time.Millisecond
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &AIMD{cfg: cfg, limit: float64(cfg.Max)}
}

// Limit returns the current limit.
func (a *AIMD) Limit() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return int(a.limit)
}

// Observe feeds one call's latency and signal; inflight is the number of
// calls in flight when it ended (the limit only grows while it is used).
// It returns the new limit.
func (a *AIMD) Observe(latency time.Duration, s Signal, inflight int) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.cfg.Now()
	switch s {
	case SignalIgnore:
		return int(a.limit)
	case SignalOK:
		sec := latency.Seconds()
		if a.long == 0 {
			a.short, a.long = sec, sec
		}
		a.short += 0.2 * (sec - a.short)
		a.long += 0.02 * (sec - a.long)
		slow := a.short > a.long*a.cfg.SlowFactor && a.short-a.long > a.cfg.SlowMargin.Seconds()
		if !slow {
			if float64(inflight) >= a.limit/2 {
				a.limit = min(a.limit+1/a.limit, float64(a.cfg.Max))
			}
			return int(a.limit)
		}
	}
	// Overload: back off, once per recent round trip.
	cooldown := max(time.Duration(a.short*float64(time.Second)), 100*time.Millisecond)
	if now.Sub(a.lastDrop) >= cooldown {
		a.limit = max(a.limit*a.cfg.Backoff, float64(a.cfg.Min))
		a.lastDrop = now
	}
	return int(a.limit)
}

// slots counts the messages in flight against a limit that may change. It is
// the scheduler's one source of truth for "how many more can start now".
type slots struct {
	mu       sync.Mutex
	limit    int
	inflight int
	// freed is signalled (without blocking) when a slot frees or the limit
	// grows, to wake the fetch loop.
	freed chan struct{}
}

func newSlots(limit int) *slots {
	return &slots{limit: limit, freed: make(chan struct{}, 1)}
}

// free returns how many more may start now.
func (s *slots) free() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return max(s.limit-s.inflight, 0)
}

// tryAcquire takes a slot if one is free.
func (s *slots) tryAcquire() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight >= s.limit {
		return false
	}
	s.inflight++
	return true
}

func (s *slots) release() {
	s.mu.Lock()
	s.inflight--
	s.mu.Unlock()
	s.signal()
}

func (s *slots) setLimit(n int) {
	s.mu.Lock()
	grew := n > s.limit
	s.limit = n
	s.mu.Unlock()
	if grew {
		s.signal()
	}
}

func (s *slots) counts() (inflight, limit int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inflight, s.limit
}

func (s *slots) signal() {
	select {
	case s.freed <- struct{}{}:
	default:
	}
}
