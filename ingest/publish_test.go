package ingest

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// Concurrent publishes through the group-commit publisher: every request
// gets its own verdict, repeats of an id (also inside one batch) are
// reported as duplicates, and exactly the distinct messages are stored.
func TestBatchPublisherGroupsAndKeepsVerdictsApart(t *testing.T) {
	t.Parallel()
	ns := storagetest.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := queue.EnsureTopology(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	p := newBatchPublisher(js, 64, 2)
	t.Cleanup(p.stop)

	const distinct, repeats = 300, 3
	var wg sync.WaitGroup
	var mu sync.Mutex
	dups, errs := 0, 0
	for i := range distinct {
		for range repeats {
			wg.Go(func() {
				msg := nats.NewMsg(queue.InSubject(peakdesk.P2, "shop1"))
				msg.Data = []byte(fmt.Sprintf(`{"n":%d}`, i))
				msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("id-%d", i))
				dup, err := p.publish(ctx, msg)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					errs++
					t.Errorf("publish %d: %v", i, err)
				case dup:
					dups++
				}
			})
		}
	}
	wg.Wait()
	if errs != 0 || dups != distinct*(repeats-1) {
		t.Fatalf("%d errors, %d duplicates; want 0 and %d", errs, dups, distinct*(repeats-1))
	}
	s, _ := js.Stream(ctx, queue.StreamIn)
	info, _ := s.Info(ctx)
	if info.State.Msgs != distinct {
		t.Fatalf("stream holds %d messages, want %d", info.State.Msgs, distinct)
	}
	// After stop, publishing fails cleanly instead of hanging.
	p.stop()
	if _, err := p.publish(ctx, nats.NewMsg(queue.InSubject(peakdesk.P2, "shop1"))); err == nil {
		t.Error("publish after stop succeeded")
	}
}
