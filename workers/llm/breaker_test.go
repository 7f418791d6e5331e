package llm_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/workers/llm"
)

// roundTrips counts the Redis round trips of a client: one per command, one
// per pipeline.
type roundTrips struct{ n atomic.Int64 }

func (h *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// A successful call in the closed state costs at most one Redis round trip
// (the read of the shared state); its success is shared later, with others.
func TestBreakerSuccessCostsAtMostOneRedisRoundTrip(t *testing.T) {
	t.Parallel()
	hook := &roundTrips{}
	c, b := setup(t, llmsim.Faults{}, func(cfg *llm.CallerConfig) {
		cfg.BreakerSync = time.Hour // only the count of a single call's trips is asserted
		cfg.Redis = openRedis(t)
		cfg.Redis.AddHook(hook)
	})
	ctx := context.Background()
	// The first call creates the shared state (a lock, a read, a write).
	if _, err := c.Do(ctx, call(b, "m1")); err != nil {
		t.Fatal(err)
	}
	const calls = 20
	before := hook.n.Load()
	for range calls {
		if _, err := c.Do(ctx, call(b, "m1")); err != nil {
			t.Fatal(err)
		}
	}
	if got := hook.n.Load() - before; got > calls {
		t.Errorf("%d successful calls cost %d Redis round trips, want at most %d (one each)", calls, got, calls)
	}
	if got := c.BreakerState(ctx, b.url, "", "m1"); got != gobreaker.StateClosed {
		t.Errorf("breaker %v, want closed", got)
	}
}

// Successes kept in a process still break a failure streak of the shared
// state: a success of one process between two processes' failures resets
// the consecutive failures, as it did when every success went to Redis.
func TestBreakerSuccessInOneProcessBreaksAnothersFailureStreak(t *testing.T) {
	t.Parallel()
	one := func(cfg *llm.CallerConfig) {
		cfg.MaxAttempts = 1
		cfg.BreakerSync = time.Hour // shared only because the streak asks for it
	}
	c1, b := setup(t, llmsim.Faults{}, one)
	b2 := *b
	c2, _ := newCaller(t, &b2, openRedis(t), one)
	ctx := context.Background()
	ok := func(c *llm.Caller, b *testBundle) {
		t.Helper()
		b.sim.SetFaults(llmsim.Faults{})
		if _, err := c.Do(ctx, call(b, "m1")); err != nil {
			t.Fatal(err)
		}
	}
	fail := func(c *llm.Caller, b *testBundle) {
		t.Helper()
		b.sim.SetFaults(llmsim.Faults{Outage: true})
		if _, err := c.Do(ctx, call(b, "m1")); err == nil {
			t.Fatal("call succeeded during an outage")
		}
	}
	ok(c1, b)
	ok(c2, &b2)
	fail(c1, b)
	fail(c1, b)
	ok(c2, &b2) // sees the streak of two and breaks it
	fail(c1, b)
	if got := c1.BreakerState(ctx, b.url, "", "m1"); got != gobreaker.StateClosed {
		t.Fatalf("breaker %v after failure, failure, success, failure; want closed", got)
	}
	fail(c2, &b2)
	fail(c1, b) // the third in a row, across the two processes
	if got := c2.BreakerState(ctx, b.url, "", "m1"); got != gobreaker.StateOpen {
		t.Fatalf("breaker %v after three failures in a row across processes, want open", got)
	}
}

// Successes held in the process do not delay the opening: after many
// successes the configured number of failures, from two processes, opens
// the breaker.
func TestBreakerOpensAfterTheConfiguredFailuresAcrossProcessesDespiteHeldSuccesses(t *testing.T) {
	t.Parallel()
	one := func(cfg *llm.CallerConfig) {
		cfg.MaxAttempts = 1
		cfg.BreakerSync = time.Hour
	}
	c1, b := setup(t, llmsim.Faults{}, one)
	b2 := *b
	c2, _ := newCaller(t, &b2, openRedis(t), one)
	ctx := context.Background()
	for range 30 {
		for _, c := range []*llm.Caller{c1, c2} {
			if _, err := c.Do(ctx, call(b, "m1")); err != nil {
				t.Fatal(err)
			}
		}
	}
	b.sim.SetFaults(llmsim.Faults{Outage: true})
	for i, c := range []*llm.Caller{c1, c2, c1} {
		if _, err := c.Do(ctx, call(b, "m1")); err == nil {
			t.Fatalf("call %d succeeded during an outage", i)
		}
	}
	before := b.sim.Stats().Requests
	if _, err := c2.Do(ctx, call(b, "m1")); !errors.Is(err, llm.ErrBreakerOpen) {
		t.Fatalf("after three failures across processes: err = %v, want ErrBreakerOpen", err)
	}
	if got := b.sim.Stats().Requests; got != before {
		t.Errorf("the open breaker let %d calls through", got-before)
	}
}
