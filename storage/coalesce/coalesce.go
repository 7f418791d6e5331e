// Package coalesce runs one computation per key at a time across every
// process of the desk and keeps its result briefly, so that a thousand
// customers asking about one parcel at midnight cost the shop one lookup.
//
// Within a process, callers of the same key share one run (singleflight).
// Across processes, the run's leader holds a short Redis lease
// (github.com/bsm/redislock, renewed while it runs) and stores the result
// under the key for the TTL its function gives; the other processes poll for
// it. A leader that vanishes lets its lease lapse and the next caller takes
// over; one whose run failed stores a short failure marker, so that a shop
// that is down is asked once per key and failure window, not once per
// customer. A caller waits only as long as its context allows: the run goes
// on without it (bounded by Config.Timeout) and fills the cache for the
// next one. When Redis is unreachable, callers of one process still share
// runs and nothing is cached.
package coalesce

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bsm/redislock"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"

	"github.com/peakdesk/peakdesk"
)

// How a caller got its value (Do's Outcome).
const (
	// Ran: this caller's process ran the function (one call of it).
	Ran = "ran"
	// Joined: another caller of this process was running it.
	Joined = "joined"
	// Cached: the result of a recent run was in Redis.
	Cached = "cached"
	// Followed: another process was running it; this one waited for its
	// result.
	Followed = "followed"
)

// Config configures a Group.
type Config struct {
	// Redis shares runs and results between processes; nil shares them
	// within the process only.
	Redis *redis.Client
	// Prefix starts every Redis key. Default "pd:co:".
	Prefix string
	// Lease is the life of a leader's lease, renewed every third of it
	// while the function runs. Default 3 s.
	Lease time.Duration
	// Timeout bounds one run of the function, whoever waits for it.
	// Default 10 s.
	Timeout time.Duration
	// FailureTTL is how long a failed run's marker answers other processes'
	// callers. Default 1 s.
	FailureTTL time.Duration
}

func (c *Config) setDefaults() {
	c.Prefix = cmp.Or(c.Prefix, "pd:co:")
	c.Lease = cmp.Or(c.Lease, 3*time.Second)
	c.Timeout = cmp.Or(c.Timeout, 10*time.Second)
	c.FailureTTL = cmp.Or(c.FailureTTL, time.Second)
}

// Group coalesces runs by key. It is safe for concurrent use.
type Group struct {
	cfg   Config
	sf    singleflight.Group
	locks *redislock.Client

	// Runs in flight, for Wait (a WaitGroup's Add may not race its Wait).
	mu   sync.Mutex
	idle *sync.Cond
	runs int

	// callers counts the callers of Do that have joined a run and wait for
	// its result (tests).
	callers atomic.Int32
}

// New returns a Group for cfg.
func New(cfg Config) *Group {
	cfg.setDefaults()
	g := &Group{cfg: cfg}
	g.idle = sync.NewCond(&g.mu)
	if cfg.Redis != nil {
		g.locks = redislock.New(cfg.Redis)
	}
	return g
}

// Func computes the value of a key: the value and how long it may be
// served to others (0: not at all), or an error (shared with the callers
// waiting, and with other processes' for FailureTTL).
type Func func(ctx context.Context) (value []byte, ttl time.Duration, err error)

// Error is a run's failure as another process's caller learns it: its
// message, without the original error's type.
type Error struct{ Message string }

func (e *Error) Error() string { return "coalesce: shared failure: " + e.Message }

// result is what a run gave the callers that shared it.
type result struct {
	value   []byte
	outcome string
	err     error
}

// failurePrefix marks a failure stored in Redis.
const failurePrefix = "\x00fail:"

// Do returns the value of key: a recent result, another caller's run (in
// this process or another) or a run of fn, and how it got it (Ran, Joined,
// Cached or Followed). It returns ctx's error when ctx ends first; the run
// goes on.
func (g *Group) Do(ctx context.Context, key string, fn Func) ([]byte, string, error) {
	// singleflight runs the function of the first caller only: the caller
	// whose closure ran is the one that counts the run as its own.
	mine := false
	ch := g.sf.DoChan(key, func() (any, error) {
		mine = true
		// The run belongs to the group, not to the first caller: it is
		// not cut short when that caller gives up.
		g.mu.Lock()
		g.runs++
		g.mu.Unlock()
		defer func() {
			// A caller that comes once the run is over (after Wait, too)
			// starts its own, which finds the stored result, instead of
			// joining this one.
			g.sf.Forget(key)
			g.mu.Lock()
			if g.runs--; g.runs == 0 {
				g.idle.Broadcast()
			}
			g.mu.Unlock()
		}()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.Timeout)
		defer cancel()
		return g.acrossProcesses(rctx, key, fn), nil
	})
	g.callers.Add(1)
	defer g.callers.Add(-1)
	select {
	case res := <-ch:
		r := res.Val.(result)
		if !mine && r.outcome == Ran {
			r.outcome = Joined
		}
		return r.value, r.outcome, r.err
	case <-ctx.Done():
		return nil, "", ctx.Err()
	}
}

// Wait waits for the runs in flight (each is bounded by Timeout).
func (g *Group) Wait() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.runs > 0 {
		g.idle.Wait()
	}
}

// acrossProcesses answers from Redis, as the key's leader, or by waiting
// for another process's leader.
func (g *Group) acrossProcesses(ctx context.Context, key string, fn Func) result {
	if g.cfg.Redis == nil {
		return g.run(ctx, key, fn, nil)
	}
	for pause := 5 * time.Millisecond; ; pause = min(2*pause, 50*time.Millisecond) {
		// 1. A result there already.
		if r, ok, err := g.stored(ctx, key); err != nil {
			return g.run(ctx, key, fn, nil) // Redis unreachable: alone
		} else if ok {
			return r
		}
		// 2. Lead.
		lctx, cancel := context.WithTimeout(ctx, time.Second)
		lease, err := g.locks.Obtain(lctx, g.cfg.Prefix+"l:"+key, g.cfg.Lease, nil)
		cancel()
		switch {
		case err == nil:
			// A leader elected just after another stored its result must
			// not run again.
			if r, ok, _ := g.stored(ctx, key); ok {
				g.release(ctx, lease)
				return r
			}
			return g.run(ctx, key, fn, lease)
		case !errors.Is(err, redislock.ErrNotObtained):
			return g.run(ctx, key, fn, nil)
		}
		// 3. Follow another process's leader.
		if peakdesk.Sleep(ctx, pause) != nil {
			return result{err: fmt.Errorf("coalesce: waiting for another process: %w", ctx.Err())}
		}
	}
}

// stored returns key's result in Redis, if any.
func (g *Group) stored(ctx context.Context, key string) (result, bool, error) {
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	v, err := g.cfg.Redis.Get(rctx, g.cfg.Prefix+"r:"+key).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return result{}, false, nil
	case err != nil:
		return result{}, false, err
	}
	if msg, ok := cutPrefix(v, failurePrefix); ok {
		return result{outcome: Followed, err: &Error{Message: msg}}, true, nil
	}
	return result{value: v, outcome: Cached}, true, nil
}

func cutPrefix(v []byte, prefix string) (string, bool) {
	if len(v) < len(prefix) || string(v[:len(prefix)]) != prefix {
		return "", false
	}
	return string(v[len(prefix):]), true
}

// run runs fn, keeping lease (nil: none) alive meanwhile, and stores its
// result for other processes.
func (g *Group) run(ctx context.Context, key string, fn Func, lease *redislock.Lock) result {
	var stop chan struct{}
	var renew sync.WaitGroup
	if lease != nil {
		stop = make(chan struct{})
		renew.Go(func() {
			t := time.NewTicker(g.cfg.Lease / 3)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					rctx, cancel := context.WithTimeout(context.Background(), time.Second)
					_ = lease.Refresh(rctx, g.cfg.Lease, nil)
					cancel()
				}
			}
		})
	}
	v, ttl, err := fn(ctx)
	if lease != nil {
		close(stop)
		renew.Wait()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		switch {
		case err != nil:
			_ = g.cfg.Redis.Set(sctx, g.cfg.Prefix+"r:"+key, failurePrefix+err.Error(), g.cfg.FailureTTL).Err()
		case ttl > 0:
			_ = g.cfg.Redis.Set(sctx, g.cfg.Prefix+"r:"+key, v, ttl).Err()
		}
		cancel()
		g.release(ctx, lease)
	}
	return result{value: v, outcome: Ran, err: err}
}

func (g *Group) release(ctx context.Context, lease *redislock.Lock) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_ = lease.Release(rctx)
}
