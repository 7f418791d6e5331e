package storage_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

func takeGrant(t *testing.T, db *storage.DB, r storage.GrantRequest) storage.Grant {
	t.Helper()
	g, err := db.TakeGrant(context.Background(), r)
	if err != nil {
		t.Fatalf("take grant %+v: %v", r, err)
	}
	return g
}

// moneyAction is the action a tool makes for grant g.
func moneyAction(shop, conv string, g storage.Grant, key string) peakdesk.Action {
	return peakdesk.Action{ShopID: shop, ConversationID: conv, Kind: peakdesk.ActionRefundRequest,
		Payload: json.RawMessage(`{}`), IdempotencyKey: key, MaxAttempts: 3, GrantID: g.ID}
}

// Ten turns of ten conversations ask to refund one order at the same time:
// Postgres grants exactly one.
func TestConcurrentRefundGrantsOfOneOrderGrantOne(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	var wg sync.WaitGroup
	results := make([]storage.Grant, 10)
	for i := range results {
		wg.Go(func() {
			g, err := db.TakeGrant(context.Background(), storage.GrantRequest{Shop: "shop1", Kind: storage.GrantRefund,
				User: "u1", ConversationID: hexID("c", i), OrderID: "1234567", AmountCents: 1000})
			if err != nil {
				t.Error(err)
			}
			results[i] = g
		})
	}
	wg.Wait()
	granted, taken := 0, 0
	for _, g := range results {
		switch {
		case g.ID != 0 && g.Refusal == "":
			granted++
		case g.Refusal == storage.RefusedOrderTaken:
			taken++
		}
	}
	if granted != 1 || taken != 9 {
		t.Fatalf("granted %d, refused as taken %d: %+v; want 1 and 9", granted, taken, results)
	}
	// Another shop's order of the same number is another order.
	if g := takeGrant(t, db, storage.GrantRequest{Shop: "shop2", Kind: storage.GrantRefund, User: "u1",
		ConversationID: hexID("c", 99), OrderID: "1234567", AmountCents: 1000}); g.ID == 0 {
		t.Fatalf("shop2's order refused: %+v", g)
	}
}

// Coupons are counted per customer over 24 hours and per shop per day, and
// concurrent grants never take more than the budget holds.
func TestCouponGrantsKeepToTheShopsLimits(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	if err := db.SetCouponPolicy(ctx, "shop1", storage.CouponPolicy{PerUserPerDay: 2, BudgetPerDayCents: 5000}); err != nil {
		t.Fatal(err)
	}
	// 30 customers at once, 500 each, against a budget of 5000: 10 fit.
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[storage.GrantRefusal]int{}
	for i := range 30 {
		wg.Go(func() {
			g, err := db.TakeGrant(ctx, storage.GrantRequest{Shop: "shop1", Kind: storage.GrantCoupon,
				User: fmt.Sprintf("u%d", i), ConversationID: hexID("c", i), AmountCents: 500})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			got[g.Refusal]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if got[""] != 10 || got[storage.RefusedShopBudget] != 20 {
		t.Fatalf("outcomes %v; want 10 granted, 20 refused by the shop's budget", got)
	}

	// One customer: two coupons a day, the third refused, in other
	// conversations too.
	if err := db.SetCouponPolicy(ctx, "shop2", storage.CouponPolicy{PerUserPerDay: 2, BudgetPerDayCents: 100000}); err != nil {
		t.Fatal(err)
	}
	for i, want := range []storage.GrantRefusal{"", "", storage.RefusedUserLimit} {
		g := takeGrant(t, db, storage.GrantRequest{Shop: "shop2", Kind: storage.GrantCoupon, User: "farmer",
			ConversationID: hexID("d", i), AmountCents: 100})
		if g.Refusal != want || (want == storage.RefusedUserLimit && g.Limit != 2) {
			t.Fatalf("coupon %d: %+v; want refusal %q", i+1, g, want)
		}
	}
	// One coupon per order, whoever asks.
	if g := takeGrant(t, db, storage.GrantRequest{Shop: "shop2", Kind: storage.GrantCoupon, User: "a",
		ConversationID: hexID("e", 1), OrderID: "42", AmountCents: 100}); g.ID == 0 {
		t.Fatalf("first coupon of order 42: %+v", g)
	}
	if g := takeGrant(t, db, storage.GrantRequest{Shop: "shop2", Kind: storage.GrantCoupon, User: "b",
		ConversationID: hexID("e", 2), OrderID: "42", AmountCents: 100}); g.Refusal != storage.RefusedOrderTaken {
		t.Fatalf("second coupon of order 42: %+v", g)
	}
}

// A turn that takes a grant and fails is tried again: its retry takes the
// grant again instead of being refused by its own first try. A grant
// nobody confirmed lapses for everyone else after its lease.
func TestUnconfirmedGrantsAreRetakenAndLapse(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	conv := hexID("c", 1)
	req := storage.GrantRequest{Shop: "shop1", Kind: storage.GrantCoupon, User: "u1", ConversationID: conv,
		OrderID: "77", AmountCents: 500}
	first := takeGrant(t, db, req)
	retry := takeGrant(t, db, req)
	if first.ID == 0 || retry.ID == 0 || retry.ID == first.ID {
		t.Fatalf("first %+v, retry %+v; want two grants, the first released", first, retry)
	}
	// The first try's grant is gone: confirming it fails the reply.
	err := db.Tx(ctx, func(tx pgx.Tx) error {
		_, err := storage.InsertActions(ctx, tx, []peakdesk.Action{moneyAction("shop1", conv, first, "k-first")})
		return err
	})
	if !errors.Is(err, storage.ErrGrantLapsed) {
		t.Fatalf("confirming a released grant: %v; want ErrGrantLapsed", err)
	}

	// Another conversation waits for the lease; once it lapses, it may.
	other := req
	other.ConversationID, other.User = hexID("c", 2), "u2"
	if g := takeGrant(t, db, other); g.Refusal != storage.RefusedOrderTaken {
		t.Fatalf("order taken by an unconfirmed grant: %+v", g)
	}
	expire(t, db, retry.ID)
	g := takeGrant(t, db, other)
	if g.ID == 0 {
		t.Fatalf("after the lease: %+v", g)
	}
	// The lapsed grant cannot be confirmed either.
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		_, err := storage.InsertActions(ctx, tx, []peakdesk.Action{moneyAction("shop1", conv, retry, "k-retry")})
		return err
	})
	if !errors.Is(err, storage.ErrGrantLapsed) {
		t.Fatalf("confirming a lapsed grant: %v; want ErrGrantLapsed", err)
	}
}

// expire moves grant id's lease into the past.
func expire(t *testing.T, db *storage.DB, id int64) {
	t.Helper()
	err := db.Tx(context.Background(), func(tx pgx.Tx) error {
		_, err := tx.Exec(context.Background(), `UPDATE money_grants SET expires_at = now() - interval '1 second'
			WHERE id = $1`, id)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A refund whose action ends dead gave nothing: the order may be refunded
// again. An operator retry of the dead one is then refused, since another
// refund of the order is live.
func TestDeadRefundReleasesItsOrder(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	req := storage.GrantRequest{Shop: "shop1", Kind: storage.GrantRefund, User: "u1", ConversationID: hexID("c", 1),
		OrderID: "55", AmountCents: 100}
	g := takeGrant(t, db, req)
	enqueue(t, db, moneyAction("shop1", req.ConversationID, g, "k-dead"))
	actions, err := db.ListActions(ctx, storage.AllShops, storage.ActionFilter{}, 0, 10)
	if err != nil || len(actions) != 1 || actions[0].GrantID != g.ID {
		t.Fatalf("actions %+v, %v", actions, err)
	}
	again := req
	again.ConversationID = hexID("c", 2)
	if g2 := takeGrant(t, db, again); g2.Refusal != storage.RefusedOrderTaken {
		t.Fatalf("second refund while the first is live: %+v", g2)
	}
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		_, err := storage.CancelAction(ctx, tx, storage.AllShops, actions[0].ID, time.Now())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	g2 := takeGrant(t, db, again)
	if g2.ID == 0 {
		t.Fatalf("refund after the first was canceled: %+v", g2)
	}
	enqueue(t, db, moneyAction("shop1", again.ConversationID, g2, "k-live"))
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		_, err := storage.RetryAction(ctx, tx, storage.AllShops, actions[0].ID, time.Now())
		return err
	})
	if !errors.Is(err, storage.ErrActionState) {
		t.Fatalf("operator retry of the canceled refund: %v; want ErrActionState", err)
	}
	// A bulk retry leaves it alone too.
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		n, err := storage.BulkRetryActions(ctx, tx, storage.AllShops,
			storage.ActionFilter{State: peakdesk.ActionCanceled}, time.Now(), 1)
		if err == nil && n != 0 {
			err = fmt.Errorf("bulk retry retried %d", n)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
