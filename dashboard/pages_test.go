package dashboard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/dashboard/snapshot"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// deadLetter records a dead letter of a new message in shop.
func (b *testBundle) deadLetter(t testing.TB, shop string, seq uint64) *storage.DLQEntry {
	t.Helper()
	m := peakdesk.Message{ID: fmt.Sprintf("%032x", seq+1<<40), ShopID: shop, ConversationID: fmt.Sprintf("%032x", seq+2<<40),
		UserID: "u1", Text: "my refund for order 1234567 please", Priority: peakdesk.P0, AcceptedAt: time.Now()}
	out, err := b.db.RecordDeadLetter(context.Background(), &storage.DeadLetter{Message: m,
		Subject: queue.InSubject(m.Priority, shop), InSeq: seq, Deliveries: 6, Reason: "max deliveries"}, "a human takes over")
	if err != nil || out.Entry == nil {
		t.Fatalf("dead letter: %+v %v", out, err)
	}
	return out.Entry
}

// An operator re-drives one dead message (it is queued again) and then
// discards every other dead one after a confirmation that counts them.
func TestDLQRedriveOneThenDiscardAll(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{})
	ctx := context.Background()
	first := b.deadLetter(t, "demo", 1)
	for seq := uint64(2); seq <= 4; seq++ {
		b.deadLetter(t, "demo", seq)
	}
	theirs := b.deadLetter(t, "other", 9)
	c, email := b.loggedIn(t, storage.RoleOperator, "demo")

	p := c.get("/console/dlq")
	if !strings.Contains(p.body, "my refund for order 1234567") || !strings.Contains(p.body, "Re-drive all 4 dead") ||
		strings.Contains(p.body, fmt.Sprintf(`data-dlq="%d"`, theirs.ID)) {
		t.Fatalf("dlq page: %s", p.body)
	}
	if p := c.post(fmt.Sprintf("/console/dlq/%d/redrive", first.ID), nil); p.status != http.StatusSeeOther {
		t.Fatalf("redrive: %d %s", p.status, p.body)
	}
	e, err := b.db.DLQEntry(ctx, storage.AllShops, first.ID)
	if err != nil || e.State != storage.DLQRedriven || e.ResolvedBy != email {
		t.Fatalf("after redrive: %+v %v", e, err)
	}
	stream, err := b.js.Stream(ctx, queue.StreamIn)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := stream.Info(ctx); err != nil || info.State.Msgs != 1 {
		t.Fatalf("CHAT_IN holds %d messages, want the re-driven one (%v)", info.State.Msgs, err)
	}
	if len(b.audit(t, "dlq.redrive")) != 1 {
		t.Fatal("re-drive not audited")
	}

	if p := c.get("/console/dlq/bulk?op=discard"); !strings.Contains(p.body, "Discard 3 dead messages?") {
		t.Fatalf("confirmation: %s", p.body)
	}
	if p := c.post("/console/dlq/bulk", url.Values{"op": {"discard"}}); !strings.Contains(p.body, "3 dead letters discarded.") {
		t.Fatalf("bulk discard: %s", p.body)
	}
	if n, _ := b.db.CountDLQ(ctx, storage.DLQFilter{Scope: storage.AllShops, State: storage.DLQDead}); n != 1 {
		t.Fatalf("%d dead left, want only the other shop's", n)
	}
	if e, _ := b.db.DLQEntry(ctx, storage.AllShops, theirs.ID); e.State != storage.DLQDead {
		t.Fatal("the other shop's dead letter was touched")
	}
	if a := b.audit(t, "dlq.bulk_discard"); len(a) != 1 || !strings.Contains(string(a[0].Details), `"affected": 3`) {
		t.Fatalf("bulk audit: %+v", a)
	}
	viewer, _ := b.loggedIn(t, storage.RoleViewer, "")
	if p := viewer.post(fmt.Sprintf("/console/dlq/%d/discard", theirs.ID), nil); p.status != http.StatusForbidden {
		t.Fatalf("viewer's discard: %d", p.status)
	}
}

// A conversation is found by its id, its customer, a message id or an
// order number, and its timeline shows the message, the reply with source,
// model, tokens and cost, and the refund the tool call promised with its
// money grant.
func TestConversationFoundEveryWayShowsItsTimeline(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{})
	ctx := context.Background()
	conv, msgID := strings.Repeat("d", 32), strings.Repeat("e", 32)
	m := &peakdesk.Message{ID: msgID, ShopID: "demo", ConversationID: conv, UserID: "u7",
		Text: "please refund order 1234567", Priority: peakdesk.P0, AcceptedAt: time.Now()}
	r := &peakdesk.Reply{ID: "reply-1", ShopID: "demo", ConversationID: conv, MessageIDs: []string{msgID},
		Text: "refund requested", Source: peakdesk.SourceLLM, Model: "qwen-max", PromptTokens: 321, CompletionTokens: 45,
		CostMicroUSD: 1234}
	if _, _, err := b.db.SaveAnsweredMessage(ctx, m, r, nil); err != nil {
		t.Fatal(err)
	}
	// As a worker's turn stores an LLM reply: model, tokens and price.
	if _, err := b.conn.Exec(ctx, `UPDATE replies SET model = 'qwen-max', prompt_tokens = 321, completion_tokens = 45,
		cost_micro_usd = 1234 WHERE id = 'reply-1'`); err != nil {
		t.Fatal(err)
	}
	g, err := b.db.TakeGrant(ctx, storage.GrantRequest{Shop: "demo", Kind: storage.GrantRefund, User: "u7",
		ConversationID: conv, OrderID: "1234567", AmountCents: 4990})
	if err != nil || g.ID == 0 {
		t.Fatalf("grant: %+v %v", g, err)
	}
	payload, _ := json.Marshal(outbox.RefundPayload{OrderID: "1234567", UserID: "u7", AmountCents: 4990, Reason: "damaged"})
	if _, err := b.db.EnqueueActions(ctx, []peakdesk.Action{{ShopID: "demo", ConversationID: conv, ReplyID: "reply-1",
		Kind: peakdesk.ActionRefundRequest, Payload: payload, IdempotencyKey: "conv-refund", MaxAttempts: 3, GrantID: g.ID,
		NextAttemptAt: time.Now().Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	c, _ := b.loggedIn(t, storage.RoleViewer, "")
	for _, q := range []string{conv, "u7", msgID, "1234567"} {
		if p := c.get("/console/conversations?q=" + q); p.status != http.StatusSeeOther || p.location != "/console/conversations/"+conv {
			t.Fatalf("find %q: %d %s", q, p.status, p.location)
		}
	}
	p := c.get("/console/conversations/" + conv)
	for _, want := range []string{"please refund order 1234567", "refund requested", "qwen-max", "321 &#43; 45 tokens", "$0.0012",
		"tool request_refund", fmt.Sprintf("grant #%d (49.90)", g.ID), "order 1234567", "refund.request"} {
		if !strings.Contains(p.body, want) {
			t.Errorf("timeline lacks %q", want)
		}
	}
	// The grant is on the action's detail too.
	page, _ := b.db.ListActions(ctx, "demo", storage.ActionFilter{Q: "conv-refund"}, 0, 1)
	if p := c.get("/console/outbox/" + strconv.FormatInt(page[0].ID, 10)); !strings.Contains(p.body, fmt.Sprintf("#%d", g.ID)) {
		t.Error("action detail lacks the grant id")
	}
	shopOp, _ := b.loggedIn(t, storage.RoleViewer, "other")
	if p := shopOp.get("/console/conversations/" + conv); p.status != http.StatusNotFound {
		t.Fatalf("another shop's operator: %d", p.status)
	}
	if p := shopOp.get("/console/conversations?q=u7"); p.status != http.StatusOK || strings.Contains(p.body, conv) {
		t.Fatalf("another shop's operator found it: %d", p.status)
	}
}

// A shop's overview waits for Postgres only the first time it is shown:
// within a poll interval its counts are reused, past it the last counts are
// served while they are counted again — unless they are a minute old.
func TestShopOverviewServesTheLastCountsWhileItCountsAgain(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{clock: true})
	b.seedActions(t, "demo", peakdesk.ActionCouponIssue, 3, peakdesk.ActionDead, "boom")
	c, _ := b.loggedIn(t, storage.RoleViewer, "demo")
	deadTile := regexp.MustCompile(`id="outbox-dead">(\d+)<`)
	dead := func() string {
		t.Helper()
		p := c.get("/console/overview/live", "HX-Request", "true")
		m := deadTile.FindStringSubmatch(p.body)
		if p.status != http.StatusOK || m == nil {
			t.Fatalf("overview: %d %s", p.status, p.body)
		}
		return m[1]
	}
	if got := dead(); got != "3" {
		t.Fatalf("first view: %s dead, want 3", got)
	}
	b.seedActions(t, "demo", peakdesk.ActionCouponIssue, 2, peakdesk.ActionDead, "boom")
	if got := dead(); got != "3" {
		t.Fatalf("within the poll interval: %s dead, want the counted 3", got)
	}
	b.clock.Advance(4 * time.Second) // past the default 3 s
	if got := dead(); got != "3" {
		t.Fatalf("past the poll interval: %s dead, want the last 3 while it counts again", got)
	}
	storagetest.WaitFor(t, "the overview to show the new count", 10*time.Second, func() bool { return dead() == "5" })
	// Counts a minute old are not served: the page waits for new ones.
	b.seedActions(t, "demo", peakdesk.ActionCouponIssue, 1, peakdesk.ActionDead, "boom")
	b.clock.Advance(2 * time.Minute)
	if got := dead(); got != "6" {
		t.Fatalf("counts a minute old: %s dead, want the new 6", got)
	}
}

// The overview adds up what worker processes publish and what it reads
// from Postgres; the chart data covers the samples it took.
func TestOverviewShowsWhatProcessesPublish(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOptions{sampleInterval: 200 * time.Millisecond})
	reg := prometheus.NewRegistry()
	inflight := prometheus.NewGauge(prometheus.GaugeOpts{Name: "peakdesk_worker_inflight"})
	limit := prometheus.NewGauge(prometheus.GaugeOpts{Name: "peakdesk_worker_concurrency_limit"})
	breaker := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "peakdesk_llm_breaker_state"}, []string{"provider", "model"})
	// Order answers: lookups that asked the shop or were coalesced, and
	// the time to the final answer.
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "peakdesk_order_lookups_total"}, []string{"kind", "outcome"})
	final := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "peakdesk_order_final_answer_seconds",
		Buckets: []float64{1, 10, 60}}, []string{"path"})
	reg.MustRegister(inflight, limit, breaker, lookups, final)
	inflight.Set(17)
	limit.Set(64)
	breaker.WithLabelValues("llm.example", "qwen-max").Set(2)
	rep, err := snapshot.NewReporter(snapshot.Config{Gatherer: reg, Redis: b.rdb, Prefix: b.prefix + "snap:",
		Interval: 100 * time.Millisecond, Window: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rep.Stop)
	b.seedActions(t, "demo", peakdesk.ActionCouponIssue, 7, peakdesk.ActionDead, "boom")
	c, _ := b.loggedIn(t, storage.RoleViewer, "")
	orderTile := regexp.MustCompile(`id="order-answers">to final answer p99 <b>(\d[^<]*)</b> · shop lookups <b>([^<]+)</b>/s · coalesced <b>([^<]+)</b>/s`)
	storagetest.WaitFor(t, "the overview to show the worker", 10*time.Second, func() bool {
		lookups.WithLabelValues("order", "ran").Inc()
		lookups.WithLabelValues("order", "joined").Add(5)
		lookups.WithLabelValues("orders", "cached").Add(4)
		final.WithLabelValues("followup").Observe(42)
		p := c.get("/console/overview/live", "HX-Request", "true")
		m := orderTile.FindStringSubmatch(p.body)
		return strings.Contains(p.body, `id="inflight">17 <span class="muted">/ 64`) &&
			strings.Contains(p.body, `qwen-max <span class="badge b-open">open`) &&
			strings.Contains(p.body, `id="outbox-dead">7<`) &&
			m != nil && m[2] != "0" && m[3] != "0" && m[2] != m[3] // 9 coalesced for 1 that asked the shop
	})
	var series struct {
		T      []int64
		Charts map[string]struct{ Values [][]float64 }
	}
	p := c.get("/console/overview/series?range=1h")
	if err := json.Unmarshal([]byte(p.body), &series); err != nil || len(series.T) == 0 {
		t.Fatalf("series: %v %s", err, p.body)
	}
	if len(series.Charts["throughput"].Values) != 3 || len(series.Charts["trouble"].Values) != 5 {
		t.Fatalf("charts: %+v", series.Charts)
	}
	// A shop's operator gets the shop's numbers and no platform totals.
	shopOp, _ := b.loggedIn(t, storage.RoleViewer, "other")
	if p := shopOp.get("/console/overview/live", "HX-Request", "true"); !strings.Contains(p.body, `id="outbox-dead">0<`) {
		t.Fatalf("shop overview: %s", p.body)
	}
	p = shopOp.get("/console/overview/series?range=24h")
	if err := json.Unmarshal([]byte(p.body), &series); err != nil || len(series.Charts["trouble"].Values) != 2 {
		t.Fatalf("shop series: %v %+v", err, series.Charts)
	}
}
