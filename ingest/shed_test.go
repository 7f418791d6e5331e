package ingest

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// A message answered from the FAQ while the edge shed keeps that answer:
// repeated with its key once the edge accepts again, it gets the same
// reply (not a second message queued, not "queued"), and GET still shows
// it before the shed writer has stored it.
func TestRepeatOfAShedAnswerGetsTheSameAnswerAfterTheShedding(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, func(c *Config) {
		c.FAQ, c.ReplyWebhook = fixedFAQ{}, outbox.ReplyWebhook
		c.Admission = AdmissionConfig{MinBacklog: 3, Refresh: 20 * time.Millisecond,
			MaxWait: map[peakdesk.Priority]time.Duration{peakdesk.P0: time.Hour, peakdesk.P1: time.Hour, peakdesk.P2: time.Nanosecond}}
	})
	u := tok(t, "shop1", b.salt+"u1")
	// A p2 backlog nobody drains, until the edge sheds.
	queued := 0
	storagetest.WaitFor(t, "the edge sheds p2", 10*time.Second, func() bool {
		r := b.do(t, "POST", "/v1/messages", u, fmt.Sprintf(`{"text":"随便问问 %d"}`, queued))
		if r.status == http.StatusAccepted {
			queued++
		}
		return r.status == http.StatusTooManyRequests
	})
	const question = `{"text":"双11满减怎么算？","client_msg_id":"k-faq"}`
	shed := b.do(t, "POST", "/v1/messages", u, question)
	reply, _ := shed.body["reply"].(map[string]any)
	if shed.status != http.StatusOK || reply == nil {
		t.Fatalf("shed FAQ question: %d %s", shed.status, shed.raw)
	}
	id := shed.body["message_id"].(string)

	// The workers catch up; the edge accepts p2 again.
	for range queued {
		b.takeMessage(t, peakdesk.P2)
	}
	storagetest.WaitFor(t, "the edge accepts p2 again", 10*time.Second, func() bool {
		r := b.do(t, "POST", "/v1/messages", u, `{"text":"还在忙吗"}`)
		if r.status == http.StatusAccepted {
			b.takeMessage(t, peakdesk.P2)
		}
		return r.status == http.StatusAccepted
	})

	again := b.do(t, "POST", "/v1/messages", u, question)
	againReply, _ := again.body["reply"].(map[string]any)
	if again.status != http.StatusOK || again.body["message_id"] != id || againReply == nil || againReply["reply_id"] != reply["reply_id"] {
		t.Errorf("repeat after the shedding: %d %s, want 200 with reply %v", again.status, again.raw, reply["reply_id"])
	}
	if g := b.do(t, "GET", "/v1/messages/"+id, u, ""); g.body["status"] != "answered" {
		t.Errorf("GET after the repeat: %s, want the shed answer", g.raw)
	}
	c, err := b.js.Consumer(context.Background(), queue.StreamIn, queue.ConsumerName(peakdesk.P2))
	if err != nil {
		t.Fatal(err)
	}
	if info, err := c.Info(context.Background()); err != nil || info.NumPending != 0 {
		t.Errorf("p2 pending %d (%v) after the repeat, want 0: the repeat queued a second message", info.NumPending, err)
	}
}
