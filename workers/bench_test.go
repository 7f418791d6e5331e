package workers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// The benchmarks run one scenario each (a few to 30 seconds) on the real
// services and report what it measured with b.ReportMetric; ns/op is not
// meaningful. Run them with
//
//	go test ./workers -run '^$' -bench . -benchtime 1x

// answeredTotal counts the stored messages that have a reply.
func (b *testBundle) answeredTotal(tb testing.TB) int {
	tb.Helper()
	var n int
	if err := b.pool.QueryRow(context.Background(),
		`SELECT count(*) FROM messages WHERE reply_id IS NOT NULL`).Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n
}

// drain starts the workers, waits until n messages are answered and returns
// how long that took.
func (b *testBundle) drain(tb testing.TB, n int, timeout time.Duration, start func()) time.Duration {
	tb.Helper()
	t0 := time.Now()
	start()
	storagetest.WaitFor(tb, fmt.Sprintf("%d answers", n), timeout, func() bool { return b.answeredTotal(tb) >= n })
	return time.Since(t0)
}

// End-to-end answers per second of one worker process with an LLM that
// answers at once: the cost of peakdesk itself (claim, memory, LLM round
// trip, reply transaction, event, ack) on this machine.
func BenchmarkAnswersPerSecondInstantLLM(b *testing.B) {
	for b.Loop() {
		const n = 3000
		tb := setup(b, bundleOpts{transport: true, dbConns: 40})
		msgs := make([]peakdesk.Message, n)
		for i := range msgs {
			msgs[i] = message(peakdesk.Priorities[i%3], "", "hello")
		}
		tb.publish(b, msgs...)
		took := tb.drain(b, n, 2*time.Minute, func() {
			tb.start(b, func(c *Config, l *LimitsConfig) { l.Concurrency = 64; c.Logger = storagetest.Logger(b) })
		})
		b.ReportMetric(float64(n)/took.Seconds(), "answers/s")
	}
	b.ReportMetric(0, "ns/op")
}

// Provider-limited drain: the simulated provider allows R requests per
// second (429 beyond) at 300 ms per call; two worker processes share the
// budget through Redis. Target: answers at ≥ 95 % of R with < 1 % of calls
// refused.
func BenchmarkProviderLimitedDrain(b *testing.B) {
	const r = 50 // requests per second
	for b.Loop() {
		const n = 12 * r
		tb := setup(b, bundleOpts{transport: true, dbConns: 40, faults: llmsim.Faults{
			Latency: 300 * time.Millisecond, LatencyJitter: 50 * time.Millisecond, RPM: r * 60}})
		msgs := make([]peakdesk.Message, n)
		for i := range msgs {
			msgs[i] = message(peakdesk.Priorities[i%3], "", "hello")
		}
		tb.publish(b, msgs...)
		took := tb.drain(b, n, 2*time.Minute, func() {
			for range 2 {
				tb.start(b, func(c *Config, l *LimitsConfig) { l.Concurrency = 32; l.ProviderRPM = r * 60 })
			}
		})
		st := tb.sim.Stats()
		b.ReportMetric(float64(n)/took.Seconds()/r*100, "%_of_R")
		b.ReportMetric(float64(st.ByStatus[429])/float64(max(st.Requests, 1))*100, "%_429")
		b.ReportMetric(float64(n)/took.Seconds(), "answers/s")
	}
	b.ReportMetric(0, "ns/op")
}

// 5x overload: one worker process (32 calls at 300 ms: about 107 answers/s)
// is offered 5 times that for 6 s, 10 % of it p0. p0's end-to-end latency
// (published → reply event delivered) stays low while p2 queues. Target:
// p0 p99 ≤ 1.5 s.
func BenchmarkOverloadP0Latency(b *testing.B) {
	for b.Loop() {
		tb := setup(b, bundleOpts{transport: true, dbConns: 40, faults: llmsim.Faults{
			Latency: 300 * time.Millisecond, LatencyJitter: 50 * time.Millisecond}})
		const concurrency = 32
		capacity := float64(concurrency) / 0.3
		offered := 5 * capacity
		ctx, cancel := context.WithCancel(context.Background())

		// Follow reply events.
		var mu sync.Mutex
		sentAt := map[string]time.Time{}
		var p0Lat []time.Duration
		answered := map[peakdesk.Priority]int{}
		prioOf := map[string]peakdesk.Priority{}
		cons, err := tb.js.OrderedConsumer(ctx, queue.StreamEvents, jetstream.OrderedConsumerConfig{})
		if err != nil {
			b.Fatal(err)
		}
		cc, err := cons.Consume(func(msg jetstream.Msg) {
			var r peakdesk.Reply
			if json.Unmarshal(msg.Data(), &r) != nil {
				return
			}
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			for _, id := range r.MessageIDs {
				answered[prioOf[id]]++
				if prioOf[id] == peakdesk.P0 {
					p0Lat = append(p0Lat, now.Sub(sentAt[id]))
				}
			}
		})
		if err != nil {
			b.Fatal(err)
		}

		tb.start(b, func(c *Config, l *LimitsConfig) { l.Concurrency, l.MinConcurrency = concurrency, concurrency })
		// Offer 5x capacity for 6 s in 10 ms ticks.
		const offerFor = 6 * time.Second
		perTick := offered / 100
		var carry float64
		p0Sent := 0
		tick := time.NewTicker(10 * time.Millisecond)
		for t0 := time.Now(); time.Since(t0) < offerFor; {
			<-tick.C
			carry += perTick
			var batch []peakdesk.Message
			for ; carry >= 1; carry-- {
				p := peakdesk.P2
				switch i := len(sentAt) % 10; {
				case i == 0:
					p = peakdesk.P0
				case i < 4:
					p = peakdesk.P1
				}
				m := message(p, "", "overload")
				mu.Lock()
				sentAt[m.ID], prioOf[m.ID] = time.Now(), p
				mu.Unlock()
				if p == peakdesk.P0 {
					p0Sent++
				}
				batch = append(batch, m)
			}
			tb.publish(b, batch...)
		}
		tick.Stop()
		storagetest.WaitFor(b, "every p0 answer", time.Minute, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(p0Lat) >= p0Sent
		})
		cc.Stop()
		cancel()

		mu.Lock()
		slices.Sort(p0Lat)
		p99 := p0Lat[len(p0Lat)*99/100]
		p50 := p0Lat[len(p0Lat)/2]
		b.ReportMetric(p99.Seconds(), "p0_p99_s")
		b.ReportMetric(p50.Seconds(), "p0_p50_s")
		b.ReportMetric(offered, "offered/s")
		b.ReportMetric(float64(answered[peakdesk.P0]+answered[peakdesk.P1]+answered[peakdesk.P2])/offerFor.Seconds(), "answers/s")
		b.ReportMetric(float64(answered[peakdesk.P2]), "p2_answered")
		mu.Unlock()
	}
	b.ReportMetric(0, "ns/op")
}
