package workers

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

func TestPickerSharesByWeight(t *testing.T) {
	cases := []struct {
		name     string
		weights  []int
		eligible []bool
		n        int
		want     []int
	}{
		{"4:1 over 100", []int{4, 1}, []bool{true, true}, 100, []int{80, 20}},
		{"4:1 over 5", []int{4, 1}, []bool{true, true}, 5, []int{4, 1}},
		{"1:1", []int{1, 1}, []bool{true, true}, 10, []int{5, 5}},
		{"only p2 eligible", []int{4, 1}, []bool{false, true}, 7, []int{0, 7}},
		{"none eligible", []int{4, 1}, []bool{false, false}, 7, []int{0, 0}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPicker(tc.weights...)
			got := p.plan(tc.n, tc.eligible)
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("plan(%d) = %v, want %v", tc.n, got, tc.want)
				}
			}
		})
	}
}

// One slot at a time, as a busy worker frees them, the shares still hold.
func TestPickerOneAtATime(t *testing.T) {
	p := newPicker(4, 1)
	counts := []int{0, 0}
	for range 1000 {
		counts[p.pick([]bool{true, true})]++
	}
	if counts[0] != 800 || counts[1] != 200 {
		t.Fatalf("counts %v, want [800 200]", counts)
	}
}

// A class that ran dry keeps no credit: when work returns it gets its share,
// not a burst making up for the time it was idle.
func TestPickerIdleClassForfeitsCredit(t *testing.T) {
	p := newPicker(4, 1)
	for range 100 {
		plan := p.plan(1, []bool{true, true})
		if plan[1] == 1 { // p2 has nothing queued
			p.unused(1, 1)
		}
	}
	got := p.plan(10, []bool{true, true})
	if got[1] > 3 {
		t.Fatalf("after idling, p2 got %d of 10 slots; want its share (about 2)", got[1])
	}
}

func TestAIMD(t *testing.T) {
	now := time.Unix(0, 0)
	clock := func() time.Time { return now }
	a := NewAIMD(AIMDConfig{Min: 4, Max: 32, Now: clock})
	if a.Limit() != 32 {
		t.Fatalf("starts at %d, want the max 32", a.Limit())
	}
	// A burst of 429s within one round trip backs off once.
	for range 10 {
		a.Observe(0, SignalOverload, 32)
	}
	if got := a.Limit(); got != 24 {
		t.Fatalf("after a burst of overloads: %d, want 24", got)
	}
	// Later overloads back off again, down to the floor.
	for range 20 {
		now = now.Add(time.Second)
		a.Observe(0, SignalOverload, 32)
	}
	if got := a.Limit(); got != 4 {
		t.Fatalf("after many overloads: %d, want the min 4", got)
	}
	// Successes while the limit is in use add about one per limit's worth.
	for range 5 { // 4 → 4.25 → 4.49 → 4.71 → 4.92 → 5.12
		now = now.Add(10 * time.Millisecond)
		a.Observe(100*time.Millisecond, SignalOK, 4)
	}
	if got := a.Limit(); got != 5 {
		t.Fatalf("after a round of successes: %d, want 5", got)
	}
	// Successes while the limit is mostly idle do not raise it.
	before := a.Limit()
	for range 100 {
		a.Observe(100*time.Millisecond, SignalOK, 1)
	}
	if got := a.Limit(); got != before {
		t.Fatalf("idle successes moved the limit from %d to %d", before, got)
	}
	// Errors that say nothing about load change nothing.
	a.Observe(0, SignalIgnore, 5)
	if got := a.Limit(); got != before {
		t.Fatalf("an ignored error moved the limit from %d to %d", before, got)
	}
}

// Rising latency (the provider queueing our calls) backs the limit off.
func TestAIMDBacksOffOnRisingLatency(t *testing.T) {
	now := time.Unix(0, 0)
	a := NewAIMD(AIMDConfig{Min: 1, Max: 16, Now: func() time.Time { return now }})
	for range 200 {
		now = now.Add(100 * time.Millisecond)
		a.Observe(300*time.Millisecond, SignalOK, 16)
	}
	if a.Limit() != 16 {
		t.Fatalf("steady latency: %d, want 16", a.Limit())
	}
	for range 20 {
		now = now.Add(2 * time.Second)
		a.Observe(3*time.Second, SignalOK, 16)
	}
	if got := a.Limit(); got >= 16 {
		t.Fatalf("latency went from 300 ms to 3 s and the limit stayed %d", got)
	}
}

// 5,000 p2 messages are queued; then one p0 arrives: it starts before any
// p2 message that was not already in flight.
func TestP0JumpsAheadOfQueuedP2(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{faults: llmsim.Faults{Latency: 30 * time.Millisecond}})
	const concurrency = 4
	var p2 []peakdesk.Message
	for i := range 5000 {
		p2 = append(p2, message(peakdesk.P2, "", "pre-sale question "+string(rune('a'+i%26))))
	}
	b.publish(t, p2...)
	b.start(t, func(c *Config, l *LimitsConfig) { l.Concurrency, l.MinConcurrency = concurrency, concurrency })
	storagetest.WaitFor(t, "the worker to be busy with p2", 30*time.Second, func() bool { return b.calls.len() >= 20 })

	urgent := message(peakdesk.P0, "", "refund failed")
	b.publish(t, urgent) // returns once JetStream has stored it
	ctx := context.Background()
	var startedBefore int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM messages WHERE priority = 'p2'`).Scan(&startedBefore); err != nil {
		t.Fatal(err)
	}
	storagetest.WaitFor(t, "the p0 answer", 30*time.Second, func() bool { return b.answered(t, []string{urgent.ID}) == 1 })

	// A message starts when its worker stores it (created_at). Only p2
	// messages already in flight when the p0 was queued (at most one per
	// slot) may start after that and before the p0.
	var startedBetween int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM messages WHERE priority = 'p2'
		AND created_at < (SELECT created_at FROM messages WHERE id = $1)`, urgent.ID).Scan(&startedBetween); err != nil {
		t.Fatal(err)
	}
	if n := startedBetween - startedBefore; n > concurrency {
		t.Fatalf("%d p2 messages started after the p0 was queued and before it; at most %d were in flight",
			n, concurrency)
	}
	if calls := b.calls.len(); calls >= 1000 {
		t.Fatalf("%d p2 calls before the p0 was answered: it waited in line", calls)
	}
}

// Under sustained p0 traffic and backlogs of p1 and p2, the slots p0 leaves
// are shared 4:1 between p1 and p2: p2 is served at its weight, never
// starved. The p0 messages arrive with the work, not with the clock: one
// after every fourth LLM call, so the share does not depend on how fast
// the machine is.
func TestP2ServedAtItsWeightUnderOverload(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{faults: llmsim.Faults{Latency: 20 * time.Millisecond}})
	var backlog []peakdesk.Message
	for range 400 {
		backlog = append(backlog, message(peakdesk.P1, "", "where is my order"), message(peakdesk.P2, "", "any coupons"))
	}
	b.publish(t, backlog...)
	b.start(t, func(c *Config, l *LimitsConfig) { l.Concurrency, l.MinConcurrency = 5, 5 })

	// A steady stream of p0 takes part of the capacity all along.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for next := 4; ; {
			select {
			case <-b.calls.called:
				if b.calls.len() >= next {
					b.publish(t, message(peakdesk.P0, "", "complaint"))
					next += 4
				}
			case <-ctx.Done():
				return
			}
		}
	})
	storagetest.WaitFor(t, "300 LLM calls", 60*time.Second, func() bool { return b.calls.len() >= 300 })
	stop()
	wg.Wait()

	counts := map[string]int{}
	for _, c := range b.calls.snapshot()[:300] {
		counts[c.prio]++
	}
	if counts["p0"] < 30 {
		t.Fatalf("%d p0 answered among 300 calls: %v; want them to take part of the capacity", counts["p0"], counts)
	}
	share := float64(counts["p2"]) / float64(counts["p1"]+counts["p2"])
	if share < 0.17 || share > 0.23 {
		t.Fatalf("p2 got %.2f of the slots p0 left (calls %v), want 0.2 (weight 1 of 5)", share, counts)
	}
}

// An idle worker starts a new message at once, from any priority, without
// polling: its parked pulls deliver it. The parked pulls wait 10 minutes,
// far longer than the test, so only they can bring the messages; and an
// idle worker sends a handful of pull requests per message it answers,
// not a stream of them while it waits.
func TestIdleWorkerWakesForEachPriority(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	w := b.start(t, func(c *Config, l *LimitsConfig) {
		l.Concurrency, l.MinConcurrency = 2, 2
		c.IdleWait = 10 * time.Minute
	})
	const perMessage = 8 // pull requests one message may cost an idle worker
	answered := 0
	for _, p := range []peakdesk.Priority{peakdesk.P2, peakdesk.P0, peakdesk.P1, peakdesk.P2} {
		b.waitParked(t, 1)
		m := message(p, "", "hello")
		b.publish(t, m)
		storagetest.WaitFor(t, "the "+string(p)+" answer", 20*time.Second, func() bool { return b.answered(t, []string{m.ID}) == 1 })
		answered++
		if n := w.pulls.Load(); n > int64(len(peakdesk.Priorities)+perMessage*answered) {
			t.Fatalf("%d pull requests for %d messages; an idle worker should wait on its parked pulls", n, answered)
		}
	}
	// Three messages at once with two slots: one is held, none is lost.
	var msgs []peakdesk.Message
	for _, p := range peakdesk.Priorities {
		msgs = append(msgs, message(p, "", "at once"))
	}
	b.waitParked(t, 1)
	b.publish(t, msgs...)
	storagetest.WaitFor(t, "three answers", 20*time.Second, func() bool { return b.answered(t, ids(msgs)) == 3 })
	for _, c := range b.calls.snapshot() {
		if !strings.HasPrefix(c.users[len(c.users)-1], "[p") {
			t.Fatalf("unexpected call %+v", c)
		}
	}
}
