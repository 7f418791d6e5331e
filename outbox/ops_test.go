package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
)

func code(err error) string { return peakdesk.ErrorCode(err) }

// Bulk retry reaches every dead action matching the filter in one call, not
// just a page, and leaves the rest alone.
func TestBulkRetryOfTenThousandDeadActions(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()
	const n = 10000
	actions := make([]peakdesk.Action, 0, n+20)
	for i := range n {
		actions = append(actions, e.coupon(i))
	}
	for i := range 10 {
		actions = append(actions, e.refund(i)) // dead too, but another kind
		other := e.coupon(n + i)               // dead coupons of another shop
		other.ShopID = "other"
		actions = append(actions, other)
	}
	e.enqueue(t, actions...)
	// Kill them all, as a long outage would; half were rejected by the shop.
	conn, err := pgx.Connect(ctx, e.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `UPDATE outbox_actions SET state = 'dead', attempts = 25, run_attempts = 25,
		rejected = (id % 2 = 0), last_error = 'gave up after 25 attempts: shop answered 503', completed_at = now()`); err != nil {
		t.Fatal(err)
	}

	ops, err := outbox.NewOps(outbox.OpsConfig{DB: e.db, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	shopOp := outbox.Operator{ID: "carol", Shop: "other"}
	if _, err := ops.Bulk(ctx, shopOp, storage.ActionFilter{Shop: "demo", State: peakdesk.ActionDead}, outbox.BulkRetry); code(err) != peakdesk.EPermissionDenied {
		t.Fatalf("a shop operator's bulk on another shop: %v", err)
	}
	if _, err := ops.Bulk(ctx, shopOp, storage.ActionFilter{}, outbox.BulkRetry); code(err) != peakdesk.EInvalid {
		t.Fatalf("an empty filter: %v", err)
	}
	if _, err := ops.Bulk(ctx, shopOp, storage.ActionFilter{State: peakdesk.ActionDead}, "delete"); code(err) != peakdesk.EInvalid {
		t.Fatalf("an unknown op: %v", err)
	}

	platform := outbox.Operator{ID: "dave", Shop: "*"}
	got, err := ops.Bulk(ctx, platform, storage.ActionFilter{State: peakdesk.ActionDead, Kind: peakdesk.ActionCouponIssue,
		Shop: "demo", Q: "503"}, outbox.BulkRetry)
	if err != nil || got.Affected != n || got.ID <= 0 {
		t.Fatalf("bulk retry: %+v, %v; want %d affected", got, err, n)
	}
	counts, err := e.db.ActionCounts(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"pending/coupon.issue": n, "dead/coupon.issue": 10, "dead/refund.request": 10}
	for _, c := range counts {
		k := string(c.State) + "/" + string(c.Kind)
		if c.Count != want[k] {
			t.Errorf("%s: %d, want %d", k, c.Count, want[k])
		}
		delete(want, k)
	}
	if len(want) > 0 {
		t.Errorf("missing counts: %v", want)
	}
	var bumped, reset int
	if err := conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE key_generation = 1),
			count(*) FILTER (WHERE run_attempts = 0 AND next_attempt_at = $1 AND NOT rejected)
		FROM outbox_actions WHERE state = 'pending'`, e.clock.Now()).Scan(&bumped, &reset); err != nil {
		t.Fatal(err)
	}
	if bumped != n/2 || reset != n {
		t.Fatalf("%d actions got a new key generation (want %d), %d were reset and due (want %d)", bumped, n/2, reset, n)
	}
	audit, err := e.db.AuditLog(ctx, storage.AllShops, 0, 10)
	if err != nil || len(audit) != 1 || audit[0].Action != "outbox.bulk_retry" || audit[0].Actor != "dave" || audit[0].Shop != "demo" {
		t.Fatalf("audit: %+v, %v", audit, err)
	}
	var details struct {
		Affected int64 `json:"affected"`
	}
	if err := json.Unmarshal(audit[0].Details, &details); err != nil || details.Affected != n || audit[0].ID != got.ID {
		t.Fatalf("audit entry %d details %s: %v; want entry %d", audit[0].ID, audit[0].Details, err, got.ID)
	}
	// Its progress: the n it retried, pending; none of the dead ones it
	// did not match. Another shop's operator sees none of them.
	// progress returns the operation's actions by state (those it has)
	// and whether they are settled.
	progress := func(op outbox.Operator, id int64) (map[peakdesk.ActionState]int64, bool) {
		t.Helper()
		p, err := ops.BulkProgress(ctx, op, id)
		if err != nil || p.ID != id || len(p.States) != len(peakdesk.ActionStates) {
			t.Fatalf("progress of %d: %+v, %v", id, p, err)
		}
		has := map[peakdesk.ActionState]int64{}
		for s, n := range p.States {
			if n > 0 {
				has[s] = n
			}
		}
		return has, p.Settled
	}
	if p, settled := progress(platform, got.ID); p[peakdesk.ActionPending] != n || len(p) != 1 || settled {
		t.Fatalf("progress of the bulk retry: %v settled=%v; want %d pending", p, settled, n)
	}
	if _, err := ops.BulkProgress(ctx, shopOp, got.ID); code(err) != peakdesk.ENotFound {
		t.Fatalf("progress of demo's bulk retry seen by other's operator: %v, want not found", err)
	}

	// A shop's operator cancels all of their dead coupons: only theirs.
	cancel, err := ops.Bulk(ctx, shopOp, storage.ActionFilter{Kind: peakdesk.ActionCouponIssue}, outbox.BulkCancel)
	if err != nil || cancel.Affected != 10 {
		t.Fatalf("bulk cancel: %+v, %v; want 10", cancel, err)
	}
	// A later operation takes over what it changes: the platform cancels
	// the retried coupons again.
	again, err := ops.Bulk(ctx, platform, storage.ActionFilter{Kind: peakdesk.ActionCouponIssue, Shop: "demo",
		State: peakdesk.ActionPending}, outbox.BulkCancel)
	if err != nil || again.Affected != n {
		t.Fatalf("second bulk cancel: %+v, %v; want %d", again, err, n)
	}
	if p, settled := progress(platform, got.ID); len(p) != 0 || !settled {
		t.Fatalf("progress of the first bulk retry after the second took its actions: %v settled=%v", p, settled)
	}
	if p, settled := progress(platform, again.ID); p[peakdesk.ActionCanceled] != n || len(p) != 1 || !settled {
		t.Fatalf("progress of the second: %v settled=%v; want %d canceled", p, settled, n)
	}
	if _, err := ops.BulkProgress(ctx, platform, 0); code(err) != peakdesk.ENotFound {
		t.Fatalf("progress of bulk 0: %v", err)
	}
}

func TestOpsListPagesAndScopes(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()
	var actions []peakdesk.Action
	for i := range 7 {
		actions = append(actions, e.coupon(i))
	}
	other := e.refund(99)
	other.ShopID = "other"
	e.enqueue(t, append(actions, other)...)
	ops, _ := outbox.NewOps(outbox.OpsConfig{DB: e.db, Now: e.clock.Now})
	demoOp := outbox.Operator{ID: "erin", Shop: "demo"}

	var keys []string
	cursor := ""
	for pages := 0; ; pages++ {
		page, err := ops.List(ctx, demoOp, storage.ActionFilter{}, cursor, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range page.Actions {
			keys = append(keys, a.IdempotencyKey)
		}
		if page.NextCursor == "" {
			if pages != 2 {
				t.Fatalf("%d pages, want 3", pages+1)
			}
			break
		}
		cursor = page.NextCursor
	}
	if fmt.Sprint(keys) != "[test_cpn_6 test_cpn_5 test_cpn_4 test_cpn_3 test_cpn_2 test_cpn_1 test_cpn_0]" {
		t.Fatalf("pages: %v", keys)
	}
	if _, err := ops.List(ctx, demoOp, storage.ActionFilter{}, "bm9wZQ", 3); code(err) != peakdesk.EInvalid {
		t.Fatalf("forged cursor: %v", err)
	}
	if _, err := ops.List(ctx, demoOp, storage.ActionFilter{Shop: "other"}, "", 0); code(err) != peakdesk.EPermissionDenied {
		t.Fatalf("another shop's list: %v", err)
	}
	all, err := e.db.ListActions(ctx, storage.AllShops, storage.ActionFilter{Shop: "other"}, 0, 1)
	if err != nil || len(all) != 1 {
		t.Fatal(all, err)
	}
	if _, err := ops.Get(ctx, demoOp, all[0].ID); code(err) != peakdesk.ENotFound {
		t.Fatalf("another shop's action: %v", err)
	}
	if _, err := ops.Cancel(ctx, demoOp, all[0].ID); code(err) != peakdesk.ENotFound {
		t.Fatalf("cancel of another shop's action: %v", err)
	}
	d, err := ops.Get(ctx, outbox.Operator{ID: "root", Shop: "*"}, all[0].ID)
	if err != nil || d.Action.ShopID != "other" || d.Attempts == nil {
		t.Fatalf("platform operator: %+v, %v", d, err)
	}
	canceled, err := ops.Cancel(ctx, demoOp, d.Action.ID-1)
	if err != nil || canceled.State != peakdesk.ActionCanceled {
		t.Fatalf("cancel: %+v, %v", canceled, err)
	}
	_, err = ops.Cancel(ctx, demoOp, canceled.ID)
	var pe *peakdesk.Error
	if !errors.As(err, &pe) || pe.Code != peakdesk.EInvalid || pe.Field != "state" {
		t.Fatalf("cancel twice: %v", err)
	}
}

// The oldest-due gauge tells how long work has waited.
func TestOldestDueGauge(t *testing.T) {
	t.Parallel()
	e := setup(t, shopsim.Faults{})
	cfg := e.relayConfig(t)
	r, err := outbox.NewRelay(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.enqueue(t, e.coupon(1))
	if got, err := outbox.OldestDueGauge(context.Background(), r); err != nil || got != 0 {
		t.Fatalf("due now: %v, %v", got, err)
	}
	e.clock.Advance(90 * time.Second)
	if got, err := outbox.OldestDueGauge(context.Background(), r); err != nil || got != 90 {
		t.Fatalf("due for 90 s: %v, %v", got, err)
	}
	if got, err := outbox.ActionsGauge(context.Background(), r, "pending", "coupon.issue"); err != nil || got != 1 {
		t.Fatalf("pending coupons: %v, %v", got, err)
	}
}
