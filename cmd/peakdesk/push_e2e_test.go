package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk/loadtest"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
)

// The push scenario of `peakdesk loadtest` against the real program: every
// stream opens, every live reply arrives, a reconnect storm with
// Last-Event-ID gets every reply it missed once, and nothing arrives twice.
// (The figures at midnight scale are in the README; here the promise.)
func TestPushScenarioDeliversEveryReplyOnce(t *testing.T) {
	b := setup(t, llmsim.Faults{Latency: 5 * time.Millisecond})
	p := b.start(t, []string{roleIngest, roleWorker}, nil)
	rep, err := loadtest.RunPush(context.Background(), loadtest.PushConfig{
		BaseURL: "http://" + p.Addr(), Secret: []byte(testSecret), Shop: "demo",
		Streams: 60, Replies: 20, Storm: 30, StormReplies: 15,
		MetricsURL: "http://" + p.MetricsAddr() + "/metrics", Deadline: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	_ = rep.WriteText(&text)
	t.Log(text.String())
	if err := rep.Check(); err != nil {
		t.Fatal(err)
	}
	if rep.Live.Delivered != 20 || rep.StormDelivery.Delivered != 15 || rep.Reconnect.Opened != 30 {
		t.Fatalf("delivered %d live, %d missed, reopened %d; want 20, 15, 30", rep.Live.Delivered,
			rep.StormDelivery.Delivered, rep.Reconnect.Opened)
	}
	if rep.RSS.OpenBytes == 0 {
		t.Error("the edge's memory was not read from its metrics")
	}
}
