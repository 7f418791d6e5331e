package ingest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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

func TestNormaliseQuestion(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ in, want string }{
		{"双11满减怎么算？", "双11满减怎么算"},
		{"  Where is   my ORDER?! ", "where is my order"},
		{"where is order 20241111001", "where is order #"},
		{"where is order 20241111002", "where is order #"},
		{"coupon 12345 ok", "coupon 12345 ok"},
		{"订单2024111100123到哪了", "订单#到哪了"},
	} {
		if got := normaliseQuestion(c.in); got != c.want {
			t.Errorf("normaliseQuestion(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// countingFAQ answers "满减" questions and counts its searches; a search
// whose request is gone finds nothing.
type countingFAQ struct {
	mu       sync.Mutex
	searches int
}

func (f *countingFAQ) Answer(ctx context.Context, _, q string) (string, bool) {
	f.mu.Lock()
	f.searches++
	f.mu.Unlock()
	if ctx.Err() != nil || !strings.Contains(q, "满减") {
		return "", false
	}
	return "满300减50", true
}

func (f *countingFAQ) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.searches
}

// The edge's FAQ answers are cached per shop and normalised question —
// answers and their absence — within a bounded size; a search cut short by
// its request is not cached.
func TestFAQAnswersAreCachedAndBounded(t *testing.T) {
	t.Parallel()
	m, err := newEdgeMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	f := &countingFAQ{}
	c := newFAQAnswers(f, time.Hour, 10, 2, m)
	ctx := context.Background()
	gone, cancel := context.WithCancel(ctx)
	cancel()
	if _, ok := c.answer(gone, "shop1", "双11满减怎么算？"); ok {
		t.Fatal("a search cut short answered")
	}
	cut := f.count() // 0 or 1: a gone request may not even wait for its turn
	for _, q := range []string{"双11满减怎么算？", "  双11满减怎么算。", "双11满减怎么算!!"} {
		if a, ok := c.answer(ctx, "shop1", q); !ok || a != "满300减50" {
			t.Errorf("answer(%q) = %q, %v", q, a, ok)
		}
	}
	if _, ok := c.answer(ctx, "shop1", "随便问问"); ok {
		t.Error("an unknown question answered")
	}
	c.answer(ctx, "shop1", "随便问问")
	c.answer(ctx, "shop2", "双11满减怎么算？")
	// One search per (shop, question), the cut-short one not counting.
	if got := f.count() - cut; got != 3 {
		t.Errorf("%d searches after the cut-short one, want 3", got)
	}
	for i := range 50 {
		c.answer(ctx, "shop1", fmt.Sprintf("问题 %d 号", i))
		if n := c.len(); n > 10 {
			t.Fatalf("%d cached questions, more than the bound 10", n)
		}
	}
}
