package storage_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

func newAction(shop string, kind peakdesk.ActionKind, key string, payload string) peakdesk.Action {
	return peakdesk.Action{ShopID: shop, ConversationID: hexID("c", 1), Kind: kind,
		Payload: json.RawMessage(payload), IdempotencyKey: key, MaxAttempts: 3}
}

func enqueue(t *testing.T, db *storage.DB, actions ...peakdesk.Action) {
	t.Helper()
	n, err := db.EnqueueActions(context.Background(), actions)
	if err != nil || n != len(actions) {
		t.Fatalf("enqueue: %d new, %v; want %d", n, err, len(actions))
	}
}

func TestInsertActionsCommitsWithTheTransactionAndOnlyOncePerKey(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	l, err := db.ListenActions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	a := newAction("shop1", peakdesk.ActionCouponIssue, "k1", `{"user_id":"u1","amount_cents":500}`)
	rollback := errors.New("the reply failed")
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		if n, err := storage.InsertActions(ctx, tx, []peakdesk.Action{a}); err != nil || n != 1 {
			t.Errorf("insert in tx: %d, %v", n, err)
		}
		return rollback
	})
	if !errors.Is(err, rollback) {
		t.Fatalf("tx: %v", err)
	}
	if got, _ := db.ListActions(ctx, storage.AllShops, storage.ActionFilter{}, 0, 10); len(got) != 0 {
		t.Fatalf("a rolled back reply left %d actions", len(got))
	}

	enqueue(t, db, a)
	waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := l.Wait(waitCtx); err != nil {
		t.Fatalf("no notification after the insert committed: %v", err)
	}
	if n, err := db.EnqueueActions(ctx, []peakdesk.Action{a}); err != nil || n != 0 {
		t.Fatalf("same key again: %d new, %v; want 0", n, err)
	}
	got, err := db.ListActions(ctx, storage.AllShops, storage.ActionFilter{}, 0, 10)
	if err != nil || len(got) != 1 {
		t.Fatalf("list: %v, %v", got, err)
	}
	if g := got[0]; g.State != peakdesk.ActionPending || g.Attempts != 0 || g.MaxAttempts != 3 ||
		g.IdempotencyKey != "k1" || g.Kind != peakdesk.ActionCouponIssue || g.ShopID != "shop1" {
		t.Fatalf("stored action: %+v", g)
	}

	bad := newAction("shop1", "coupon.unknown", "k2", `{}`)
	if _, err := db.EnqueueActions(ctx, []peakdesk.Action{bad}); err == nil {
		t.Fatal("an unknown kind was accepted")
	}
}

func TestInsertReplyWebhookOnlyForShopsWithAWebhookURL(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	insert := func(key string) bool {
		var ok bool
		err := db.Tx(ctx, func(tx pgx.Tx) error {
			var err error
			ok, err = storage.InsertReplyWebhook(ctx, tx, newAction("shop1", peakdesk.ActionWebhookDeliver, key, `{}`))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if insert("w1") {
		t.Fatal("a webhook action was written for a shop without a webhook URL")
	}
	if err := db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "shop1", WebhookURL: "http://example.invalid/hook"}); err != nil {
		t.Fatal(err)
	}
	if !insert("w2") {
		t.Fatal("no webhook action for a shop with a webhook URL")
	}
	if insert("w2") {
		t.Fatal("the same webhook was written twice")
	}
}

// An action keeps the trace of the message whose reply promised it: its own
// Trace, or else the trace of the context it is written in, so the relay's
// shop calls continue that message's trace.
func TestActionsKeepTheTraceOfTheMessageThatPromisedThem(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	msg := peakdesk.ContinueTrace("")
	ctx := peakdesk.WithTrace(context.Background(), msg)
	own := newAction("shop1", peakdesk.ActionCouponIssue, "own", `{}`)
	own.Trace = peakdesk.ContinueTrace("").Parent
	if err := db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "shop1", WebhookURL: "http://example.invalid/hook"}); err != nil {
		t.Fatal(err)
	}
	err := db.Tx(ctx, func(tx pgx.Tx) error {
		if _, err := storage.InsertActions(ctx, tx, []peakdesk.Action{own,
			newAction("shop1", peakdesk.ActionRefundRequest, "from-ctx", `{}`)}); err != nil {
			return err
		}
		_, err := storage.InsertReplyWebhook(ctx, tx, newAction("shop1", peakdesk.ActionWebhookDeliver, "webhook", `{}`))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	enqueue(t, db, newAction("shop1", peakdesk.ActionCouponIssue, "untraced", `{}`))
	got, err := db.ListActions(context.Background(), "shop1", storage.ActionFilter{}, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"own": own.Trace, "from-ctx": msg.Parent, "webhook": msg.Parent, "untraced": ""}
	for _, a := range got {
		if a.Trace != want[a.IdempotencyKey] {
			t.Errorf("action %s has trace %q, want %q", a.IdempotencyKey, a.Trace, want[a.IdempotencyKey])
		}
		delete(want, a.IdempotencyKey)
	}
	if len(want) != 0 {
		t.Errorf("actions not stored: %v", want)
	}
}

func TestConcurrentClaimsNeverShareAnAction(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	const total = 300
	var actions []peakdesk.Action
	for i := range total {
		actions = append(actions, newAction("shop1", peakdesk.ActionRefundRequest, fmt.Sprintf("k%d", i), `{}`))
	}
	enqueue(t, db, actions...)

	var mu sync.Mutex
	seen := map[int64]string{}
	var wg sync.WaitGroup
	for r := range 6 {
		wg.Go(func() {
			owner := fmt.Sprintf("relay-%d", r)
			for {
				got, err := db.ClaimActions(ctx, owner, time.Now(), time.Minute, 7)
				if err != nil {
					t.Error(err)
					return
				}
				if len(got) == 0 {
					return
				}
				mu.Lock()
				for _, a := range got {
					if prev, dup := seen[a.ID]; dup {
						t.Errorf("action %d claimed by %s and %s", a.ID, prev, owner)
					}
					seen[a.ID] = owner
					if a.State != peakdesk.ActionRunning || a.LeaseOwner != owner || a.Attempts != 1 {
						t.Errorf("claimed action: %+v", a)
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != total {
		t.Fatalf("claimed %d actions, want %d", len(seen), total)
	}
}

func TestExpiredLeaseIsReclaimedAndTheLateResultIsNotApplied(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	enqueue(t, db, newAction("shop1", peakdesk.ActionCouponIssue, "k1", `{}`))
	t0 := time.Now()
	first, err := db.ClaimActions(ctx, "dead-relay", t0, time.Minute, 10)
	if err != nil || len(first) != 1 {
		t.Fatalf("claim: %v, %v", first, err)
	}
	if again, _ := db.ClaimActions(ctx, "other", t0.Add(59*time.Second), time.Minute, 10); len(again) != 0 {
		t.Fatalf("a leased action was claimed again before its lease expired: %+v", again)
	}
	second, err := db.ClaimActions(ctx, "other", t0.Add(61*time.Second), time.Minute, 10)
	if err != nil || len(second) != 1 || second[0].Attempts != 2 || second[0].LeaseOwner != "other" {
		t.Fatalf("re-claim after expiry: %+v, %v", second, err)
	}

	// The vanished relay comes back late: its result must not win.
	late := storage.AttemptResult{ActionID: first[0].ID, N: 1, Owner: "dead-relay", State: peakdesk.ActionSucceeded,
		Outcome: peakdesk.AttemptSucceeded, HTTPStatus: 201, EndedAt: t0.Add(62 * time.Second)}
	if applied, err := db.FinishAttempt(ctx, late); err != nil || applied {
		t.Fatalf("late finish: applied %v, %v; want not applied", applied, err)
	}
	done := storage.AttemptResult{ActionID: first[0].ID, N: 2, Owner: "other", State: peakdesk.ActionSucceeded,
		Outcome: peakdesk.AttemptSucceeded, HTTPStatus: 201, Result: json.RawMessage(`{"id":"cpn_1"}`),
		EndedAt: t0.Add(63 * time.Second)}
	if applied, err := db.FinishAttempt(ctx, done); err != nil || !applied {
		t.Fatalf("finish: applied %v, %v", applied, err)
	}
	a, err := db.Action(ctx, "shop1", first[0].ID)
	if err != nil || a.State != peakdesk.ActionSucceeded || string(a.Result) != `{"id": "cpn_1"}` || a.LeaseOwner != "" {
		t.Fatalf("action: %+v, %v", a, err)
	}
	attempts, err := db.ActionAttempts(ctx, "shop1", a.ID)
	if err != nil || len(attempts) != 2 {
		t.Fatalf("attempts: %+v, %v", attempts, err)
	}
	if attempts[0].Relay != "dead-relay" || attempts[0].Outcome != peakdesk.AttemptSucceeded || attempts[0].EndedAt.IsZero() ||
		attempts[0].Error == "" {
		t.Fatalf("the late attempt should be recorded with a lease-lost note: %+v", attempts[0])
	}
	if attempts[1].Relay != "other" || attempts[1].HTTPStatus != 201 {
		t.Fatalf("second attempt: %+v", attempts[1])
	}
}

func TestActionCountsAreExactButForSucceededWhichIsRecountedRarely(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	enqueue(t, db, newAction("shop1", peakdesk.ActionCouponIssue, "k1", `{}`),
		newAction("shop1", peakdesk.ActionCouponIssue, "k2", `{}`),
		newAction("shop1", peakdesk.ActionRefundRequest, "k3", `{}`))
	t0 := time.Now()
	claimed, err := db.ClaimActions(ctx, "relay", t0, time.Minute, 2)
	if err != nil || len(claimed) != 2 {
		t.Fatalf("claim: %v, %v", claimed, err)
	}
	succeed := func(a peakdesk.Action) {
		t.Helper()
		res := storage.AttemptResult{ActionID: a.ID, N: 1, Owner: "relay", State: peakdesk.ActionSucceeded,
			Outcome: peakdesk.AttemptSucceeded, HTTPStatus: 201, EndedAt: t0.Add(time.Second)}
		if applied, err := db.FinishAttempt(ctx, res); err != nil || !applied {
			t.Fatalf("finish: applied %v, %v", applied, err)
		}
	}
	maxAge := time.Hour
	counts := func() map[string]int64 {
		t.Helper()
		cs, err := db.ActionCounts(ctx, maxAge)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int64{}
		for _, c := range cs {
			out[string(c.State)] += c.Count
		}
		return out
	}
	succeed(claimed[0])
	if got := counts(); got["pending"] != 1 || got["running"] != 1 || got["succeeded"] != 1 {
		t.Fatalf("counts: %v; want pending 1, running 1, succeeded 1", got)
	}
	// The other one succeeds: it leaves running at once; the succeeded
	// count is the last one until it is due again.
	succeed(claimed[1])
	if got := counts(); got["pending"] != 1 || got["running"] != 0 || got["succeeded"] != 1 {
		t.Fatalf("counts: %v; want pending 1, running 0, succeeded still 1", got)
	}
	maxAge = 0
	if got := counts(); got["pending"] != 1 || got["running"] != 0 || got["succeeded"] != 2 {
		t.Fatalf("counts: %v; want pending 1, running 0, succeeded 2 once recounted", got)
	}
}

// A shop operator's overview counts the shop's actions the same way, each
// shop's succeeded actions recounted on their own clock.
func TestShopActionCountsAreScopedAndRecountSucceededRarely(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	enqueue(t, db, newAction("shop1", peakdesk.ActionCouponIssue, "k1", `{}`),
		newAction("shop1", peakdesk.ActionRefundRequest, "k2", `{}`),
		newAction("shop2", peakdesk.ActionCouponIssue, "k3", `{}`))
	t0 := time.Now()
	claimed, err := db.ClaimActions(ctx, "relay", t0, time.Minute, 3)
	if err != nil || len(claimed) != 3 {
		t.Fatalf("claim: %v, %v", claimed, err)
	}
	byKey := map[string]peakdesk.Action{}
	for _, a := range claimed {
		byKey[a.IdempotencyKey] = a
	}
	succeed := func(key string) {
		t.Helper()
		res := storage.AttemptResult{ActionID: byKey[key].ID, N: 1, Owner: "relay", State: peakdesk.ActionSucceeded,
			Outcome: peakdesk.AttemptSucceeded, HTTPStatus: 201, EndedAt: t0.Add(time.Second)}
		if applied, err := db.FinishAttempt(ctx, res); err != nil || !applied {
			t.Fatalf("finish %s: applied %v, %v", key, applied, err)
		}
	}
	counts := func(shop string, maxAge time.Duration) map[peakdesk.ActionState]int64 {
		t.Helper()
		got, err := db.ShopActionCounts(ctx, shop, maxAge)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	succeed("k1")
	if got := counts("shop1", time.Hour); got[peakdesk.ActionRunning] != 1 || got[peakdesk.ActionSucceeded] != 1 ||
		len(got) != 2 {
		t.Fatalf("shop1: %v; want running 1, succeeded 1", got)
	}
	succeed("k2")
	succeed("k3")
	// shop1's succeeded count is the last one until it is due; shop2's is
	// its own, counted now.
	if got := counts("shop1", time.Hour); got[peakdesk.ActionRunning] != 0 || got[peakdesk.ActionSucceeded] != 1 {
		t.Fatalf("shop1: %v; want running 0, succeeded still 1", got)
	}
	if got := counts("shop2", time.Hour); got[peakdesk.ActionSucceeded] != 1 || got[peakdesk.ActionRunning] != 0 {
		t.Fatalf("shop2: %v; want succeeded 1", got)
	}
	if got := counts("shop1", 0); got[peakdesk.ActionSucceeded] != 2 {
		t.Fatalf("shop1: %v; want succeeded 2 once recounted", got)
	}
	if _, err := db.ShopActionCounts(ctx, storage.AllShops, 0); err == nil {
		t.Fatal("counts of all shops as a shop's: no error")
	}
}

func TestOperatorUpdatesAndSearch(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	enqueue(t, db,
		newAction("shop1", peakdesk.ActionCouponIssue, "c1", `{"user_id":"u1","reason":"parcel 50% late"}`),
		newAction("shop1", peakdesk.ActionRefundRequest, "r1", `{"order_id":"1234567"}`),
		newAction("shop2", peakdesk.ActionRefundRequest, "r2", `{"order_id":"7654321"}`),
	)
	// Make c1 a rejected dead action, as the relay would.
	now := time.Now()
	claimed, err := db.ClaimActions(ctx, "relay", now, time.Minute, 10)
	if err != nil || len(claimed) != 3 {
		t.Fatalf("claim: %v", err)
	}
	byKey := map[string]peakdesk.Action{}
	for _, a := range claimed {
		byKey[a.IdempotencyKey] = a
		res := storage.AttemptResult{ActionID: a.ID, N: 1, Owner: "relay", State: peakdesk.ActionRetrying,
			NextAttemptAt: now.Add(time.Hour), Outcome: peakdesk.AttemptFailed, LastError: "shop answered 503", EndedAt: now}
		if a.IdempotencyKey == "c1" {
			res.State, res.Outcome, res.Rejected, res.HTTPStatus = peakdesk.ActionDead, peakdesk.AttemptRejected, true, 422
			res.LastError = "rejected by the shop: validation_failed"
		}
		if _, err := db.FinishAttempt(ctx, res); err != nil {
			t.Fatal(err)
		}
	}

	tests := []struct {
		name  string
		scope string
		f     storage.ActionFilter
		want  []string
	}{
		{"everything", storage.AllShops, storage.ActionFilter{}, []string{"r2", "r1", "c1"}},
		{"a shop's scope", "shop1", storage.ActionFilter{}, []string{"r1", "c1"}},
		{"state", storage.AllShops, storage.ActionFilter{State: peakdesk.ActionDead}, []string{"c1"}},
		{"kind and shop", storage.AllShops, storage.ActionFilter{Kind: peakdesk.ActionRefundRequest, Shop: "shop2"}, []string{"r2"}},
		{"text in payload", storage.AllShops, storage.ActionFilter{Q: "7654"}, []string{"r2"}},
		{"text in error, any case", storage.AllShops, storage.ActionFilter{Q: "VALIDATION"}, []string{"c1"}},
		{"like wildcards are literal", storage.AllShops, storage.ActionFilter{Q: "50%"}, []string{"c1"}},
		{"exact key", storage.AllShops, storage.ActionFilter{Q: "r1"}, []string{"r1"}},
		{"scope wins over the filter's shop", "shop1", storage.ActionFilter{Shop: "shop2"}, nil},
	}
	for _, tc := range tests {
		got, err := db.ListActions(ctx, tc.scope, tc.f, 0, 10)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var keys []string
		for _, a := range got {
			keys = append(keys, a.IdempotencyKey)
		}
		if !slices.Equal(keys, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, keys, tc.want)
		}
	}

	// Another shop's operator cannot touch c1; a running action cannot be canceled.
	c1 := byKey["c1"]
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		_, err := storage.RetryAction(ctx, tx, "shop2", c1.ID, now)
		return err
	})
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("retry from another shop: %v, want not found", err)
	}
	var retried peakdesk.Action
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		retried, err = storage.RetryAction(ctx, tx, "shop1", c1.ID, now)
		return err
	})
	if err != nil || retried.State != peakdesk.ActionPending || retried.KeyGeneration != 1 || retried.Rejected ||
		retried.RunAttempts != 0 || retried.Attempts != 1 {
		t.Fatalf("retry of a rejected action: %+v, %v", retried, err)
	}
	again, err := db.ClaimActions(ctx, "relay", now, time.Minute, 10)
	if err != nil || len(again) != 1 || again[0].ID != c1.ID {
		t.Fatalf("claim after retry: %+v, %v", again, err)
	}
	attempts, _ := db.ActionAttempts(ctx, "shop1", c1.ID)
	if len(attempts) != 2 || attempts[1].Key != again[0].AttemptKey() || attempts[1].Key != "c1-g1" {
		t.Fatalf("the retry's attempt must use the new key generation: %+v", attempts)
	}
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		_, err := storage.CancelAction(ctx, tx, storage.AllShops, c1.ID, now)
		return err
	})
	if !errors.Is(err, storage.ErrActionState) {
		t.Fatalf("cancel of a running action: %v, want ErrActionState", err)
	}

	// Bulk: cancel every retrying refund of shop1 only.
	var n int64
	bulk := &storage.AuditEntry{Actor: "op", Scope: "shop1", Shop: "shop1", Action: "outbox.bulk_cancel", Target: "filter"}
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		if err := storage.InsertAudit(ctx, tx, bulk); err != nil {
			return err
		}
		var err error
		n, err = storage.BulkCancelActions(ctx, tx, "shop1", storage.ActionFilter{Kind: peakdesk.ActionRefundRequest}, now, bulk.ID)
		return err
	})
	if err != nil || n != 1 {
		t.Fatalf("bulk cancel: %d, %v", n, err)
	}
	if a, _ := db.Action(ctx, storage.AllShops, byKey["r2"].ID); a.State != peakdesk.ActionRetrying {
		t.Fatalf("another shop's action was canceled: %+v", a)
	}
	// Its progress counts what it changed, for the scopes that see it in
	// the audit log.
	for _, scope := range []string{"shop1", storage.AllShops} {
		got, err := db.BulkProgress(ctx, scope, bulk.ID)
		if err != nil || got[peakdesk.ActionCanceled] != 1 || len(got) != 1 {
			t.Fatalf("progress of the bulk cancel seen by %s: %v, %v; want canceled 1", scope, got, err)
		}
	}
	if _, err := db.BulkProgress(ctx, "shop2", bulk.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("progress of shop1's bulk cancel seen by shop2: %v, want ErrNotFound", err)
	}
	if _, err := db.BulkProgress(ctx, storage.AllShops, bulk.ID+1000); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("progress of no bulk operation: %v, want ErrNotFound", err)
	}
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		_, err := storage.BulkCancelActions(ctx, tx, "shop1", storage.ActionFilter{Kind: peakdesk.ActionRefundRequest}, now, 0)
		return err
	})
	if err == nil {
		t.Fatal("a bulk update without its audit entry: no error")
	}
}

func TestAuditLogIsScopedByShop(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	for _, e := range []storage.AuditEntry{
		{Actor: "ops-a", Scope: "*", Shop: "shop1", Action: "outbox.retry", Target: "action:1"},
		{Actor: "ops-b", Scope: "shop2", Shop: "shop2", Action: "outbox.cancel", Target: "action:2",
			Details: json.RawMessage(`{"kind":"refund.request"}`)},
		{Actor: "ops-a", Scope: "*", Action: "outbox.bulk_retry", Target: "filter"},
	} {
		if err := db.Audit(ctx, &e); err != nil || e.ID == 0 || e.At.IsZero() {
			t.Fatalf("audit: %+v, %v", e, err)
		}
	}
	all, err := db.AuditLog(ctx, storage.AllShops, 0, 10)
	if err != nil || len(all) != 3 || all[0].Action != "outbox.bulk_retry" {
		t.Fatalf("all: %+v, %v", all, err)
	}
	older, err := db.AuditLog(ctx, storage.AllShops, all[0].ID, 1)
	if err != nil || len(older) != 1 || older[0].ID != all[1].ID {
		t.Fatalf("paging: %+v, %v", older, err)
	}
	mine, err := db.AuditLog(ctx, "shop2", 0, 10)
	if err != nil || len(mine) != 1 || mine[0].Actor != "ops-b" || string(mine[0].Details) != `{"kind": "refund.request"}` {
		t.Fatalf("shop2: %+v, %v", mine, err)
	}
}

// Every shop has a webhook secret of its own, from its creation on, and
// none can be stored empty; settings URLs must at least be http(s) URLs.
func TestShopWebhookSecrets(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	s1, err := db.ShopAPISettings(ctx, "shop1")
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := db.ShopAPISettings(ctx, "shop2")
	if len(s1.WebhookSecret) != 64 || s1.WebhookSecret == s2.WebhookSecret {
		t.Fatalf("secrets %q and %q: want 32 random bytes in hex, one per shop", s1.WebhookSecret, s2.WebhookSecret)
	}
	if err := db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "shop1", BaseURL: "https://shop.example.com"}); err != nil {
		t.Fatal(err)
	}
	if s, _ := db.ShopAPISettings(ctx, "shop1"); s.WebhookSecret != s1.WebhookSecret || s.BaseURL != "https://shop.example.com" {
		t.Fatalf("after a put without a secret: %+v", s)
	}
	err = db.Tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE shop_api_settings SET webhook_secret = '' WHERE shop_id = 'shop1'`)
		return err
	})
	if err == nil {
		t.Fatal("an empty webhook secret was stored")
	}
	for field, s := range map[string]storage.ShopAPISettings{
		"base_url":    {ShopID: "shop1", BaseURL: "gopher://shop.example.com"},
		"webhook_url": {ShopID: "shop1", WebhookURL: "https://user:pw@shop.example.com/hook"},
	} {
		var pe *peakdesk.Error
		if err := db.PutShopAPISettings(ctx, s); !errors.As(err, &pe) || pe.Code != peakdesk.EInvalid || pe.Field != field {
			t.Errorf("%s: %v, want invalid_argument", field, err)
		}
	}
}
