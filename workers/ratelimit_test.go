package workers

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// admissions records when calls were admitted.
type admissions struct {
	mu     sync.Mutex
	at     []time.Time
	tokens int
}

func (a *admissions) add(tokens int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.at = append(a.at, time.Now())
	a.tokens += tokens
}

// window is the time from the first admission to the last.
func (a *admissions) window() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.at) < 2 {
		return 0
	}
	first, last := a.at[0], a.at[0]
	for _, t := range a.at {
		first, last = earlier(first, t), later(last, t)
	}
	return last.Sub(first)
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// hammer makes callers on each limiter ask for the budget until ctx ends.
func hammer(ctx context.Context, limiters []*ProviderLimiter, callers, est, actual int, got *admissions) {
	var wg sync.WaitGroup
	for _, l := range limiters {
		for range callers {
			wg.Go(func() {
				for {
					p, err := l.Wait(ctx, peakdesk.P1, est)
					if err != nil {
						return
					}
					got.add(actual)
					p.Done(actual)
				}
			})
		}
	}
	wg.Wait()
}

func testRedis(t *testing.T) *redis.Client {
	t.Helper()
	rdb, err := storage.OpenRedis(storagetest.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// Two processes' limiters sharing one budget in Redis never admit more than
// it: requests per minute.
func TestProviderLimitersShareTheRequestBudget(t *testing.T) {
	t.Parallel()
	rdb := testRedis(t)
	key := "test-" + newID()
	const rpm = 1200 // 20/s, burst of 100 ms = 2
	var limiters []*ProviderLimiter
	for range 2 {
		limiters = append(limiters, NewProviderLimiter(ProviderLimitConfig{Redis: rdb, Key: key, RPM: rpm}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	var got admissions
	hammer(ctx, limiters, 8, 10, 10, &got)

	n := len(got.at)
	budget := 2 + 20*got.window().Seconds() + 1
	if n == 0 || float64(n) > budget {
		t.Fatalf("admitted %d calls in %v; the budget allows %.1f", n, got.window(), budget)
	}
	limiters[0].peersAt = time.Time{} // recount now
	limiters[0].refreshPeers(context.Background(), time.Now())
	if p := limiters[0].Peers(); p != 2 {
		t.Errorf("a limiter counts %d peers, want 2", p)
	}
}

// Tokens are charged as the calls really used them: an estimate that is too
// low is settled on the next reservation, so the budget holds anyway.
func TestProviderLimitersShareTheTokenBudget(t *testing.T) {
	t.Parallel()
	rdb := testRedis(t)
	key := "test-" + newID()
	const tpm = 60_000 // 1000/s, burst of 100 ms = 100
	var limiters []*ProviderLimiter
	for range 2 {
		limiters = append(limiters, NewProviderLimiter(ProviderLimitConfig{Redis: rdb, Key: key, TPM: tpm}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	var got admissions
	// Each call is estimated at 20 tokens and uses 50.
	hammer(ctx, limiters, 4, 20, 50, &got)

	// The last call of each limiter may leave its excess unsettled.
	budget := 100 + 1000*got.window().Seconds() + 2*50 + 50
	if got.tokens == 0 || float64(got.tokens) > budget {
		t.Fatalf("admitted %d tokens in %v; the budget allows %.0f", got.tokens, got.window(), budget)
	}
}

// With Redis unreachable the limiter keeps admitting, at this process's
// share of the budget, and says so.
func TestProviderLimiterFallsBackToALocalShare(t *testing.T) {
	t.Parallel()
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 50 * time.Millisecond})
	t.Cleanup(func() { _ = dead.Close() })
	l := NewProviderLimiter(ProviderLimitConfig{Redis: dead, Key: "test-" + newID(), RPM: 1200, Logger: storagetest.Logger(t)})
	var degraded atomic.Bool
	l.Degraded = func(local bool) { degraded.Store(local) }
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var got admissions
	hammer(ctx, []*ProviderLimiter{l}, 4, 1, 1, &got)
	n := len(got.at)
	if n == 0 || float64(n) > 2+20*got.window().Seconds()+1 {
		t.Fatalf("admitted %d calls in %v without Redis; want some, within 20/s", n, got.window())
	}
	if !degraded.Load() {
		t.Fatal("the switch to the local share was not reported")
	}
}

// Callers waiting for the budget go most urgent first.
func TestProviderLimiterServesP0First(t *testing.T) {
	t.Parallel()
	// 1/s, burst 1: the first caller waits a second, long enough for the
	// others to queue behind it even on a loaded machine.
	l := NewProviderLimiter(ProviderLimitConfig{Redis: testRedis(t), Key: "test-" + newID(), RPM: 60})
	ctx := context.Background()
	if _, err := l.Wait(ctx, peakdesk.P2, 0); err != nil { // spend the burst
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	call := func(name string, p peakdesk.Priority) {
		wg.Go(func() {
			if _, err := l.Wait(ctx, p, 0); err != nil {
				t.Error(err)
			}
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
		})
	}
	call("first", peakdesk.P2) // holds the line, waiting for the budget
	storagetest.WaitFor(t, "the first caller to wait", 15*time.Second, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.busy
	})
	call("p2", peakdesk.P2)
	storagetest.WaitFor(t, "the p2 caller to queue", 15*time.Second, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.line.Len() == 1
	})
	call("p0", peakdesk.P0)
	wg.Wait()
	if order[0] != "first" || order[1] != "p0" || order[2] != "p2" {
		t.Fatalf("admitted in order %v, want [first p0 p2]", order)
	}
}
