package storage_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

// A turn's transaction does not notify the relays itself (a NOTIFY in
// every turn serialised their commits); its caller's NotifyRelays does, and
// outbox inserts anywhere else still notify by themselves.
func TestSaveTurnLeavesWakingTheRelaysToItsCaller(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	l, err := db.ListenActions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	notifications := func() int {
		n := 0
		for {
			wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			err := l.Wait(wctx)
			cancel()
			if err != nil {
				return n
			}
			n++
		}
	}
	action := func(r *peakdesk.Reply, key string) []peakdesk.Action {
		return []peakdesk.Action{{ShopID: "shop1", ConversationID: r.ConversationID, ReplyID: r.ID,
			Kind: peakdesk.ActionWebhookDeliver, Payload: []byte(`{"reply_id":"` + r.ID + `"}`),
			IdempotencyKey: key, MaxAttempts: 3}}
	}

	m := newMessage("shop1", hexID("c", 7), "u1", 1)
	c, err := db.ClaimMessage(ctx, m, hexID("o", 1), lease, 20)
	if err != nil || c.Hold == nil {
		t.Fatal(c, err)
	}
	r := turnReply(c.Hold, "r1")
	if _, err := db.SaveTurn(ctx, c.Hold, storage.TurnReply{Reply: r,
		InTx: func(ctx context.Context, tx pgx.Tx, r *peakdesk.Reply) error {
			_, err := storage.InsertActions(ctx, tx, action(r, "hook-r1"))
			return err
		}}, lease, 20); err != nil {
		t.Fatal(err)
	}
	if err := db.NotifyRelays(ctx); err != nil {
		t.Fatal(err)
	}
	if n := notifications(); n != 1 {
		t.Errorf("a turn with an action and NotifyRelays: %d notifications, want 1 (NotifyRelays' alone)", n)
	}

	// Elsewhere the trigger still notifies.
	if _, err := db.EnqueueActions(ctx, action(r, "hook-elsewhere")); err != nil {
		t.Fatal(err)
	}
	if n := notifications(); n != 1 {
		t.Errorf("an action inserted outside a turn: %d notifications, want 1", n)
	}
}
