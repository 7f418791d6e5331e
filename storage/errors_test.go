package storage_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

// What an operator or a customer may be told comes out of storage coded:
// a *peakdesk.Error with a caller-safe message, which callers pass on as it
// is, and errors.Is still matches the sentinel for code that branches on it.
func TestClientFacingErrorsAreCodedAndMatchTheirSentinels(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	now := time.Now()
	enqueue(t, db, newAction("shop1", peakdesk.ActionCouponIssue, "running", `{}`))
	running, err := db.ClaimActions(ctx, "relay", now.Add(time.Minute), time.Minute, 1)
	if err != nil || len(running) != 1 {
		t.Fatalf("claim: %v, %v", running, err)
	}
	m := newMessage("shop1", hexID("c", 60), "u1", 60)
	dead, err := db.RecordDeadLetter(ctx, &storage.DeadLetter{Message: *m, Subject: "chat.in.p2.shop1", InSeq: 1,
		Deliveries: 5, Reason: "max deliveries"}, "notice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.DiscardDLQ(ctx, storage.DLQAction{ID: dead.Entry.ID, Scope: "shop1", Actor: "op"}); err != nil {
		t.Fatal(err)
	}
	inTx := func(fn func(tx pgx.Tx) error) error { return db.Tx(ctx, fn) }

	tests := []struct {
		name     string
		err      error
		sentinel error
		want     peakdesk.Error
	}{
		{"another shop's action", func() error { _, err := db.Action(ctx, "shop2", running[0].ID); return err }(),
			storage.ErrNotFound, peakdesk.Error{Code: peakdesk.ENotFound, Message: "action not found"}},
		{"retry of another shop's action", inTx(func(tx pgx.Tx) error {
			_, err := storage.RetryAction(ctx, tx, "shop2", running[0].ID, now)
			return err
		}), storage.ErrNotFound, peakdesk.Error{Code: peakdesk.ENotFound, Message: "action not found"}},
		{"cancel of a running action", inTx(func(tx pgx.Tx) error {
			_, err := storage.CancelAction(ctx, tx, "shop1", running[0].ID, now)
			return err
		}), storage.ErrActionState, peakdesk.Error{Code: peakdesk.EInvalid, Field: "state",
			Message: "not possible in the action's state: the action is running"}},
		{"a message of another shop", func() error { _, err := db.Message(ctx, "shop2", m.ID); return err }(),
			storage.ErrNotFound, peakdesk.Error{Code: peakdesk.ENotFound, Message: "message not found"}},
		{"a dead letter of another shop", func() error {
			_, err := db.RedriveDLQ(ctx, storage.DLQAction{ID: dead.Entry.ID, Scope: "shop2", Actor: "op"})
			return err
		}(), storage.ErrNotFound, peakdesk.Error{Code: peakdesk.ENotFound, Message: "dead letter not found"}},
		{"re-driving a discarded dead letter", func() error {
			_, err := db.RedriveDLQ(ctx, storage.DLQAction{ID: dead.Entry.ID, Scope: "shop1", Actor: "op"})
			return err
		}(), storage.ErrDLQResolved, *storage.ErrDLQResolved},
		{"an unknown shop's retention", db.SetShopRetention(ctx, "nosuchshop", 7),
			storage.ErrNotFound, peakdesk.Error{Code: peakdesk.ENotFound, Message: "shop not found"}},
	}
	for _, tc := range tests {
		if !errors.Is(tc.err, tc.sentinel) {
			t.Errorf("%s: %v does not match %v", tc.name, tc.err, tc.sentinel)
		}
		e, ok := errors.AsType[*peakdesk.Error](tc.err)
		if !ok || *e != tc.want {
			t.Errorf("%s: %#v, want %#v", tc.name, e, tc.want)
		}
	}
}
