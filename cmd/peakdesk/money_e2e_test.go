package main

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// Customers farming the desk at midnight, through the real roles, the
// simulated LLM (which calls the money tools on cue) and the simulated
// shop: ten refund requests for one order sent at once from ten
// conversations, and six coupon requests over six conversations. The shop
// applies one refund and one coupon; the other customers are told why not.
func TestMoneyCannotBeFarmed(t *testing.T) {
	b := setup(t, llmsim.Faults{})
	p := b.start(t, []string{roleIngest, roleWorker, roleRelay}, nil)
	base := "http://" + p.Addr()

	ask := func(tok, text string) string {
		r := call(t, "POST", base+"/v1/messages?wait=10s", tok, jsonBody(t, map[string]any{"text": text}))
		if r.status != http.StatusOK {
			t.Errorf("POST %q: %d %s; want 200 answered", text, r.status, r.raw)
			return ""
		}
		reply, _ := r.body["reply"].(map[string]any)
		text, _ = reply["text"].(string)
		return text
	}
	// Catalogue order 1234567890123456 belongs to user u6.
	u6 := bearer(t, "demo", "u6")
	var wg sync.WaitGroup
	refunds := make([]string, 10)
	for i := range refunds {
		wg.Go(func() { refunds[i] = ask(u6, "我要退款，订单号 1234567890123456，东西坏了") })
	}
	wg.Wait()
	granted, refused := 0, 0
	for _, text := range refunds {
		switch {
		case strings.Contains(text, "has been requested"):
			granted++
		case strings.Contains(text, "already requested"):
			refused++
		}
	}
	if granted != 1 || refused != 9 {
		t.Fatalf("refund replies: %d granted, %d told it exists already; want 1 and 9:\n%s",
			granted, refused, strings.Join(refunds, "\n"))
	}

	u1 := bearer(t, "demo", "u1")
	coupons := 0
	for range 6 {
		if text := ask(u1, "I want a coupon, my parcel was late, I complain"); strings.Contains(text, "will be issued") {
			coupons++
		}
	}
	if coupons != 1 {
		t.Fatalf("%d of 6 coupon requests promised a coupon; want 1", coupons)
	}

	// The relay carries out what was promised, once.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	storagetest.WaitFor(t, "every money action succeeded", 30*time.Second, func() bool {
		var open int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM outbox_actions
			WHERE kind IN ('refund.request', 'coupon.issue') AND state <> 'succeeded'`).Scan(&open); err != nil {
			t.Fatal(err)
		}
		return open == 0
	})
	effects := map[string]int{}
	for _, e := range b.shop.Effects() {
		effects[e.Kind]++
	}
	if effects["refund"] != 1 || effects["coupon"] != 1 {
		t.Fatalf("the shop applied %v; want one refund and one coupon", effects)
	}
}
