package coalesce_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/coalesce"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// processes returns n Groups sharing one Redis under a prefix of this
// test's own, as n processes of the desk would.
func processes(t *testing.T, n int) []*coalesce.Group {
	t.Helper()
	rdb, err := storage.OpenRedis(storagetest.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "pdtest:co:" + hex.EncodeToString(b[:]) + ":"
	gs := make([]*coalesce.Group, n)
	for i := range gs {
		gs[i] = coalesce.New(coalesce.Config{Redis: rdb, Prefix: prefix})
		t.Cleanup(gs[i].Wait)
	}
	return gs
}

// A hundred customers asking at once, spread over two processes, cost one
// run; each gets its value, and exactly one of them counts the run.
func TestOneRunForManyCallersAcrossProcesses(t *testing.T) {
	t.Parallel()
	gs := processes(t, 2)
	var calls atomic.Int32
	release := make(chan struct{})
	fn := func(context.Context) ([]byte, time.Duration, error) {
		calls.Add(1)
		<-release // the shop is slow: everyone arrives while it answers
		return []byte("order 42: shipped"), 30 * time.Second, nil
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	outcomes := map[string]int{}
	started := make(chan struct{}, 100)
	for i := range 100 {
		wg.Go(func() {
			started <- struct{}{}
			v, outcome, err := gs[i%2].Do(context.Background(), "shop1:order:42", fn)
			if err != nil || string(v) != "order 42: shipped" {
				t.Errorf("caller %d: %q %v", i, v, err)
			}
			mu.Lock()
			outcomes[outcome]++
			mu.Unlock()
		})
	}
	for range 100 {
		<-started
	}
	// Every caller is waiting once the one run has started and some of
	// them have joined it; the rest poll Redis or join in their process.
	deadline := time.Now().Add(10 * time.Second)
	for calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d runs for 100 callers, want 1", n)
	}
	if outcomes[coalesce.Ran] != 1 || outcomes[coalesce.Ran]+outcomes[coalesce.Joined]+outcomes[coalesce.Followed]+
		outcomes[coalesce.Cached] != 100 {
		t.Fatalf("outcomes %v", outcomes)
	}

	// Within the TTL the next caller is answered from Redis.
	v, outcome, err := gs[1].Do(context.Background(), "shop1:order:42", fn)
	if err != nil || outcome != coalesce.Cached || string(v) != "order 42: shipped" || calls.Load() != 1 {
		t.Fatalf("after the run: %q %s %v, %d runs", v, outcome, err, calls.Load())
	}
}

// A failed run is shared too: a shop that is down is asked once, not once
// per customer; and the next window asks again.
func TestAFailureIsSharedNotRepeated(t *testing.T) {
	t.Parallel()
	gs := processes(t, 2)
	var calls atomic.Int32
	fn := func(context.Context) ([]byte, time.Duration, error) {
		calls.Add(1)
		time.Sleep(50 * time.Millisecond) // a shop that takes a moment to fail
		return nil, 0, errors.New("shop answered 503")
	}
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := range 20 {
		wg.Go(func() {
			if _, _, err := gs[i%2].Do(context.Background(), "k", fn); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if failed.Load() != 20 {
		t.Fatalf("%d of 20 callers saw the failure", failed.Load())
	}
	if n := calls.Load(); n < 1 || n > 2 {
		// Two only if the second process's leader looked before the
		// first's lease was taken.
		t.Fatalf("%d runs for 20 callers of a failing key", n)
	}
}

// A caller gives up at its own deadline; the run goes on and its result
// answers the next caller from the cache.
func TestACallerThatGivesUpLeavesTheRunGoing(t *testing.T) {
	t.Parallel()
	g := processes(t, 1)[0]
	release := make(chan struct{})
	var calls atomic.Int32
	fn := func(context.Context) ([]byte, time.Duration, error) {
		calls.Add(1)
		<-release
		return []byte("facts"), time.Minute, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, _, err := g.Do(ctx, "slow", fn); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("impatient caller: %v", err)
	}
	close(release)
	g.Wait()
	v, outcome, err := g.Do(context.Background(), "slow", fn)
	if err != nil || string(v) != "facts" || outcome != coalesce.Cached || calls.Load() != 1 {
		t.Fatalf("next caller: %q %s %v, %d runs", v, outcome, err, calls.Load())
	}
}

// Without Redis (or with Redis unreachable) the callers of one process
// still share a run.
func TestWithoutRedisOneProcessStillShares(t *testing.T) {
	t.Parallel()
	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 50 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = down.Close() })
	for name, g := range map[string]*coalesce.Group{
		"none": coalesce.New(coalesce.Config{}), "unreachable": coalesce.New(coalesce.Config{Redis: down}),
	} {
		var calls atomic.Int32
		release := make(chan struct{})
		fn := func(context.Context) ([]byte, time.Duration, error) {
			calls.Add(1)
			<-release
			return []byte("v"), time.Minute, nil
		}
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() {
				if v, _, err := g.Do(context.Background(), "k", fn); err != nil || string(v) != "v" {
					t.Errorf("%s: %q %v", name, v, err)
				}
			})
		}
		// The run ends only once every caller has joined it (a caller
		// still being scheduled when it ended would rightly start its own).
		storagetest.WaitFor(t, name+": 10 callers in one run", 10*time.Second, func() bool {
			return calls.Load() == 1 && g.Callers() == 10
		})
		close(release)
		wg.Wait()
		if calls.Load() != 1 {
			t.Errorf("%s: %d runs", name, calls.Load())
		}
	}
}
