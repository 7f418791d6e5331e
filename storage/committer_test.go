package storage_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// claimed claims a message of a new conversation n for owner and returns the
// hold.
func claimed(t *testing.T, db *storage.DB, n int) *storage.Hold {
	t.Helper()
	m := newMessage("shop1", hexID("cc", n), "u1", 1000+n)
	c, err := db.ClaimMessage(context.Background(), m, hexID("0b", n), lease, 20)
	if err != nil || c.Hold == nil {
		t.Fatalf("claim %d: %+v %v", n, c, err)
	}
	return c.Hold
}

// Turns that are ready while the committer is busy are stored in one
// transaction, and each gets its own outcome: a lost hold, a conversation
// a human took, a reply stored already, a failing InTx fail alone (nothing
// of theirs is stored), the others are stored with what came with them,
// and a turn with messages waiting meanwhile gets its next turn.
func TestTurnCommitterGroupsTurnsEachWithItsOwnOutcome(t *testing.T) {
	t.Parallel()
	db := takeoverDB(t)
	ctx := context.Background()
	c, err := storage.NewTurnCommitter(storage.TurnCommitterConfig{DB: db, Committers: 1,
		Logger: storagetest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}

	// The first turn holds the only committer until the others queue up.
	const others = 7
	first := claimed(t, db, 0)
	release := make(chan struct{})
	firstDone := make(chan error, 1)
	go func() {
		_, err := c.SaveTurn(ctx, first, storage.TurnReply{Reply: turnReply(first, hexID("ee", 0)),
			InTx: func(context.Context, pgx.Tx, *peakdesk.Reply) error { <-release; return nil }}, lease, 20)
		firstDone <- err
	}()

	holds := make([]*storage.Hold, others)
	for i := range holds {
		holds[i] = claimed(t, db, i+1)
	}
	// 1: its hold was lost (expired and taken by another worker).
	if err := db.RenewHold(ctx, holds[1], -time.Second); err != nil {
		t.Fatal(err)
	}
	if h, err := db.ClaimConversation(ctx, "shop1", holds[1].ConversationID, "thief", lease, 20); err != nil || h == nil {
		t.Fatalf("take-over: %v %v", h, err)
	}
	// 2: an agent took the conversation.
	if _, _, err := db.ClaimForAgent(ctx, agentOf("shop1", "ann"), holds[2].ConversationID); err != nil {
		t.Fatal(err)
	}
	// 3: its reply id is taken (a unique violation).
	answered(t, db, newMessage("shop1", hexID("cd", 3), "u1", 2003), hexID("ee", 3), "taken")
	// 4: what comes with the reply fails.
	boom := errors.New("boom")
	// 5: another message waits for the conversation meanwhile.
	waiting := newMessage("shop1", holds[5].ConversationID, "u1", 3005)
	if cl, err := db.ClaimMessage(ctx, waiting, "other", lease, 20); err != nil || !cl.Waiting {
		t.Fatalf("waiting claim: %+v %v", cl, err)
	}

	type outcome struct {
		next *storage.Hold
		err  error
	}
	outcomes := make([]outcome, others)
	var wg sync.WaitGroup
	for i, h := range holds {
		tr := storage.TurnReply{Reply: turnReply(h, hexID("ee", i+1))}
		if i == 3 {
			tr.Reply.ID = hexID("ee", 3)
		}
		if i == 4 {
			tr.InTx = func(context.Context, pgx.Tx, *peakdesk.Reply) error { return boom }
		} else {
			tr.InTx = func(ctx context.Context, tx pgx.Tx, r *peakdesk.Reply) error {
				_, err := storage.InsertReplyWebhook(ctx, tx, peakdesk.Action{ShopID: r.ShopID,
					ConversationID: r.ConversationID, ReplyID: r.ID, Kind: peakdesk.ActionWebhookDeliver,
					Payload: []byte(`{}`), IdempotencyKey: "wh-" + r.ID, MaxAttempts: 3})
				return err
			}
		}
		wg.Go(func() {
			next, err := c.SaveTurn(ctx, h, tr, lease, 20)
			outcomes[i] = outcome{next, err}
		})
	}
	storagetest.WaitFor(t, "the other turns queued", 10*time.Second, func() bool { return c.Queued() == others })
	close(release)
	wg.Wait()
	if err := <-firstDone; err != nil {
		t.Fatalf("first turn: %v", err)
	}
	if groups, turns := c.Groups(); groups != 1 || turns != others {
		t.Fatalf("%d groups with %d turns; want the %d others in one", groups, turns, others)
	}

	for i, o := range outcomes {
		var want error
		switch i {
		case 1:
			want = storage.ErrTurnLost
		case 2:
			want = storage.ErrHumanOwned
		case 3:
			want = storage.ErrAlreadyAnswered
		case 4:
			want = boom
		}
		if !errors.Is(o.err, want) || (want == nil && o.err != nil) {
			t.Errorf("turn %d: %v, want %v", i, o.err, want)
		}
		h := holds[i]
		r, err := db.ReplyFor(ctx, "shop1", h.Messages[0].ID)
		switch {
		case want == nil && (err != nil || r.ID != hexID("ee", i+1)):
			t.Errorf("turn %d: reply %+v %v, want it stored", i, r, err)
		case want != nil && err == nil:
			t.Errorf("turn %d failed but its message is answered by %s", i, r.ID)
		}
		if want == nil && !hasWebhook(t, db, hexID("ee", i+1)) {
			t.Errorf("turn %d: its webhook was not stored with it", i)
		}
	}
	if hasWebhook(t, db, hexID("ee", 4+1)) {
		t.Error("the failed turn's webhook was stored")
	}
	if n := outcomes[5].next; n == nil || !slices.Equal(n.MessageIDs(), []string{waiting.ID}) {
		t.Errorf("turn 5's next turn %+v, want the waiting message", n)
	}
	for i, o := range outcomes {
		if i != 5 && o.next != nil {
			t.Errorf("turn %d got a next turn %+v", i, o.next)
		}
	}
}

func hasWebhook(t *testing.T, db *storage.DB, replyID string) bool {
	t.Helper()
	actions, err := db.ListActions(context.Background(), "shop1", storage.ActionFilter{Q: "wh-" + replyID}, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	return len(actions) > 0
}

// A published event's note clears the reply's pending mark, in a
// transaction of its own when no turn is waiting.
func TestTurnCommitterNotesPublishedEvents(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	c, err := storage.NewTurnCommitter(storage.TurnCommitterConfig{DB: db, Logger: storagetest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	h := claimed(t, db, 50)
	r := turnReply(h, hexID("ee", 50))
	if _, err := c.SaveTurn(ctx, h, storage.TurnReply{Reply: r, EventPending: true}, lease, 20); err != nil {
		t.Fatal(err)
	}
	pending := func() bool {
		rs, err := db.PendingEvents(ctx, -time.Hour, 100)
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(rs, func(p *peakdesk.Reply) bool { return p.ID == r.ID })
	}
	if !pending() {
		t.Fatal("the reply's event is not pending")
	}
	c.EventPublished("shop2", r.ID) // another shop's reply of that id: nothing
	c.Wait()
	if !pending() {
		t.Fatal("a note of another shop cleared the reply's pending event")
	}
	c.EventPublished("shop1", r.ID)
	c.Wait()
	if pending() {
		t.Fatal("the published event is still pending")
	}
}

// RenewHolds renews every hold in one statement and names those lost.
func TestRenewHoldsNamesTheLostOnes(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	kept, taken := claimed(t, db, 60), claimed(t, db, 61)
	if err := db.RenewHold(ctx, taken, -time.Second); err != nil {
		t.Fatal(err)
	}
	if h, err := db.ClaimConversation(ctx, "shop1", taken.ConversationID, "thief", lease, 20); err != nil || h == nil {
		t.Fatalf("take-over: %v %v", h, err)
	}
	foreign := *kept
	foreign.ShopID = "shop2" // the same conversation named under another shop is not renewed
	lost, err := db.RenewHolds(ctx, []*storage.Hold{kept, taken, &foreign}, -time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(lost) != 2 || lost[0] != taken || lost[1] != &foreign {
		t.Fatalf("lost %v, want the taken hold and the foreign one", lost)
	}
	// The kept hold was renewed (here: to expire at once, so another
	// worker may take it).
	if h, err := db.ClaimConversation(ctx, "shop1", kept.ConversationID, "next", lease, 20); err != nil || h == nil {
		t.Fatalf("the renewed lease was not applied: %v %v", h, err)
	}
}

// RenewHolds does not wait for a conversation another transaction has
// locked (a group of turns being stored): it skips it, and does not call
// the hold lost while it is, as last committed, still the hold's.
func TestRenewHoldsSkipsALockedConversationWithoutLosingIt(t *testing.T) {
	t.Parallel()
	url := storagetest.DatabaseURL(t)
	ctx := context.Background()
	db, err := storage.Open(ctx, url, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if err := db.EnsureShop(ctx, "shop1", "shop1"); err != nil {
		t.Fatal(err)
	}
	free, locked := claimed(t, db, 70), claimed(t, db, 71)
	raw, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = raw.Close(context.Background()) })
	tx, err := raw.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE`, locked.ConversationID); err != nil {
		t.Fatal(err)
	}
	// Were it to wait for the lock, it would wait for this deadline.
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	lost, err := db.RenewHolds(rctx, []*storage.Hold{free, locked}, -time.Second)
	if err != nil {
		t.Fatalf("renew holds waited for the locked conversation: %v", err)
	}
	if len(lost) != 0 {
		t.Fatalf("lost %v; the locked conversation is still the hold's", lost)
	}
	// The free one was renewed (to expire at once); the locked one not.
	if h, err := db.ClaimConversation(ctx, "shop1", free.ConversationID, "next", lease, 20); err != nil || h == nil {
		t.Fatalf("the free hold was not renewed: %v %v", h, err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if h, err := db.ClaimConversation(ctx, "shop1", locked.ConversationID, "next", lease, 20); err != nil || h != nil {
		t.Fatalf("the skipped hold was renewed or lost: %v %v", h, err)
	}
}

// A group whose first turn (in conversation order) fails on its own still
// commits the others together: the failed turn alone is rolled back to its
// savepoint, and nobody is stored twice or told a wrong outcome.
func TestTurnCommitterGroupSurvivesItsFirstTurnFailing(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	c, err := storage.NewTurnCommitter(storage.TurnCommitterConfig{DB: db, Committers: 1,
		Logger: storagetest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	first := claimed(t, db, 80)
	release := make(chan struct{})
	firstDone := make(chan error, 1)
	go func() {
		_, err := c.SaveTurn(ctx, first, storage.TurnReply{Reply: turnReply(first, hexID("ef", 80)),
			InTx: func(context.Context, pgx.Tx, *peakdesk.Reply) error { <-release; return nil }}, lease, 20)
		firstDone <- err
	}()
	holds := []*storage.Hold{claimed(t, db, 81), claimed(t, db, 82), claimed(t, db, 83)}
	slices.SortFunc(holds, func(a, b *storage.Hold) int { return strings.Compare(a.ConversationID, b.ConversationID) })
	// The group's first turn fails on a statement: its reply id is taken
	// (a unique violation, which aborts the transaction to the savepoint).
	answered(t, db, newMessage("shop1", hexID("cd", 84), "u1", 2084), hexID("ef", 84), "taken")
	errs := make([]error, len(holds))
	var wg sync.WaitGroup
	for i, h := range holds {
		id := hexID("ef", 81+i)
		if i == 0 {
			id = hexID("ef", 84)
		}
		wg.Go(func() {
			_, errs[i] = c.SaveTurn(ctx, h, storage.TurnReply{Reply: turnReply(h, id)}, lease, 20)
		})
	}
	storagetest.WaitFor(t, "the turns queued", 10*time.Second, func() bool { return c.Queued() == len(holds) })
	close(release)
	wg.Wait()
	if err := <-firstDone; err != nil {
		t.Fatalf("the blocking turn: %v", err)
	}
	if errs[0] == nil || errs[1] != nil || errs[2] != nil {
		t.Fatalf("outcomes %v; want the first failed, the others stored", errs)
	}
	if groups, turns := c.Groups(); groups != 1 || turns != int64(len(holds)) {
		t.Fatalf("%d groups with %d turns; want one group of %d", groups, turns, len(holds))
	}
	for i, h := range holds {
		_, err := db.ReplyFor(ctx, "shop1", h.Messages[0].ID)
		if stored := err == nil; stored != (i > 0) {
			t.Fatalf("turn %d: reply stored %v (%v)", i, stored, err)
		}
	}
}
