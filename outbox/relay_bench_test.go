package outbox_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// BenchmarkRelay measures how many actions per second 1 and 2 relays carry
// out against the simulated shop answering at once (coupons and refunds,
// every one a real HTTP call and its attempt recorded in Postgres).
func BenchmarkRelay(b *testing.B) {
	for _, relays := range []int{1, 2} {
		b.Run(fmt.Sprintf("relays=%d", relays), func(b *testing.B) {
			e := setup(b, shopsim.Faults{})
			ctx := context.Background()
			actions := make([]peakdesk.Action, 0, b.N)
			for i := range b.N {
				if i%2 == 0 {
					actions = append(actions, e.coupon(i))
				} else {
					actions = append(actions, e.refund(i))
				}
			}
			for start := 0; start < len(actions); start += 5000 {
				e.enqueue(b, actions[start:min(start+5000, len(actions))]...)
			}
			var rs []*outbox.Relay
			b.ResetTimer()
			for range relays {
				cfg := e.relayConfig(b)
				cfg.PollInterval = 0 // the default: NOTIFY and freed slots drive it
				cfg.Now = nil        // real time
				rs = append(rs, e.startRelay(b, cfg))
			}
			start := time.Now()
			// The simulator counts effects in memory: cheap to poll. Then
			// wait for the last results to be recorded.
			storagetest.WaitFor(b, "every effect applied", 10*time.Minute, func() bool { return len(e.sim.Effects()) >= b.N })
			storagetest.WaitFor(b, "every action succeeded", time.Minute, func() bool {
				counts, err := e.db.ActionCounts(ctx, 0)
				if err != nil {
					b.Fatal(err)
				}
				for _, c := range counts {
					if c.State != peakdesk.ActionSucceeded {
						return false
					}
				}
				return true
			})
			elapsed := time.Since(start)
			b.StopTimer()
			for _, r := range rs {
				r.Stop()
			}
			if len(e.sim.Effects()) != b.N {
				b.Fatalf("%d effects for %d actions", len(e.sim.Effects()), b.N)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "actions/s")
		})
	}
}
