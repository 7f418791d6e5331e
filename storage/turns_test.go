package storage_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
)

const lease = 30 * time.Second

func turnReply(h *storage.Hold, id string) *peakdesk.Reply {
	return &peakdesk.Reply{ID: id, ShopID: h.ShopID, ConversationID: h.ConversationID,
		MessageIDs: h.MessageIDs(), Text: "answer " + id, Source: peakdesk.SourceLLM}
}

// Concurrent claims of one conversation's messages: exactly one gets the
// conversation, the others wait; the holder's end of turn takes every
// waiting message, in order, and the turn after that gives the hold up.
// (Which claim comes first is a race; the worker's gather window and claim
// line are what order near-simultaneous messages.)
func TestClaimsOfOneConversationSerialise(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	conv := hexID("c", 1)
	var msgs []*peakdesk.Message
	for i := range 6 {
		m := newMessage("shop1", conv, "u1", i)
		m.AcceptedAt = m.AcceptedAt.Add(time.Duration(i) * time.Millisecond)
		msgs = append(msgs, m)
	}
	var mu sync.Mutex
	var holds []*storage.Hold
	waiting := 0
	var wg sync.WaitGroup
	for i, m := range msgs {
		wg.Go(func() {
			c, err := db.ClaimMessage(ctx, m, hexID("o", i), lease, 20)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case c.Hold != nil:
				holds = append(holds, c.Hold)
			case c.Waiting:
				waiting++
			default:
				t.Errorf("claim %+v", c)
			}
		})
	}
	wg.Wait()
	if len(holds) != 1 || waiting != 5 {
		t.Fatalf("%d holds, %d waiting; want 1 and 5", len(holds), waiting)
	}
	h := holds[0]
	answered := slices.Clone(h.MessageIDs())
	if len(answered) != 1 {
		t.Fatalf("the first turn holds %v; the others had not arrived", answered)
	}
	for i := 0; h != nil; i++ {
		next, err := db.SaveTurn(ctx, h, storage.TurnReply{Reply: turnReply(h, hexID("r", i))}, lease, 20)
		if err != nil {
			t.Fatal(err)
		}
		if next != nil {
			answered = append(answered, next.MessageIDs()...)
			if next.Owner != h.Owner {
				t.Fatal("the next turn changed owner")
			}
		}
		h = next
	}
	want := slices.Clone(holds[0].MessageIDs())
	for _, m := range msgs {
		if !slices.Contains(want, m.ID) {
			want = append(want, m.ID)
		}
	}
	if !slices.Equal(answered, want) {
		t.Fatalf("answered %v, want %v in order", answered, want)
	}
	// The hold is given up: a new message gets the conversation at once.
	m := newMessage("shop1", conv, "u1", 99)
	c, err := db.ClaimMessage(ctx, m, hexID("o", 99), lease, 20)
	if err != nil || c.Hold == nil || len(c.Hold.Messages) != 1 {
		t.Fatalf("claim after the turns: %+v %v", c, err)
	}
	// A redelivery of an answered message gets its reply.
	c, err = db.ClaimMessage(ctx, msgs[0], hexID("o", 100), lease, 20)
	if err != nil || c.Reply == nil || !c.Reply.Answers(msgs[0].ID) {
		t.Fatalf("redelivered claim: %+v %v", c, err)
	}
}

// A holder whose lease expired and was taken over stores nothing: its
// reply would race the new holder's. (The lease is taken already expired,
// as Postgres's clock sees it: the test waits for nothing.)
func TestSaveTurnIsFencedByTheHold(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	m := newMessage("shop1", hexID("c", 2), "u1", 1)
	c, err := db.ClaimMessage(ctx, m, hexID("o", 1), -time.Second, 20)
	if err != nil || c.Hold == nil {
		t.Fatalf("%+v %v", c, err)
	}
	stale := c.Hold
	fresh, err := db.ClaimConversation(ctx, "shop1", m.ConversationID, hexID("o", 2), lease, 20)
	if err != nil || fresh == nil || !slices.Equal(fresh.MessageIDs(), []string{m.ID}) {
		t.Fatalf("take-over: %+v %v", fresh, err)
	}
	if err := db.RenewHold(ctx, stale, lease); !errors.Is(err, storage.ErrTurnLost) {
		t.Fatalf("renewing a lost hold: %v, want ErrTurnLost", err)
	}
	if _, err := db.SaveTurn(ctx, stale, storage.TurnReply{Reply: turnReply(stale, "stale")}, lease, 20); !errors.Is(err, storage.ErrTurnLost) {
		t.Fatalf("saving a lost turn: %v, want ErrTurnLost", err)
	}
	if next, err := db.SaveTurn(ctx, fresh, storage.TurnReply{Reply: turnReply(fresh, "fresh")}, lease, 20); err != nil || next != nil {
		t.Fatalf("saving the new holder's turn: %v %v", next, err)
	}
	r, err := db.ReplyFor(ctx, "shop1", m.ID)
	if err != nil || r.ID != "fresh" {
		t.Fatalf("reply %+v %v, want fresh", r, err)
	}
}

// A failed turn keeps its messages in line, notes the error, and the sweeper
// finds the conversation once the retry time has come, not before. Two
// conversations fail, one to be retried in an hour, one at once: the test
// compares against Postgres's clock and waits for nothing.
func TestFailedTurnIsRetriedAfterItsDelay(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	due := func(conv string) bool {
		refs, err := db.DueConversations(ctx, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		return slices.Contains(refs, storage.ConversationRef{ShopID: "shop1", ConversationID: conv})
	}
	failed := func(n int, retryAfter time.Duration) *peakdesk.Message {
		m := newMessage("shop1", hexID("c", 30+n), "u1", n)
		m.AcceptedAt = time.Now().Add(-time.Minute)
		c, err := db.ClaimMessage(ctx, m, hexID("o", n), lease, 20)
		if err != nil || c.Hold == nil {
			t.Fatalf("%+v %v", c, err)
		}
		if due(m.ConversationID) {
			t.Fatal("a held conversation is due")
		}
		if err := db.FailTurn(ctx, c.Hold, retryAfter, "llm: 503"); err != nil {
			t.Fatal(err)
		}
		return m
	}
	later, now := failed(1, time.Hour), failed(2, 0)

	if due(later.ConversationID) {
		t.Fatal("due before its retry time")
	}
	if h, err := db.ClaimConversation(ctx, "shop1", later.ConversationID, hexID("o", 3), lease, 20); err != nil || h != nil {
		t.Fatalf("claimed before its retry time: %+v %v", h, err)
	}
	if !due(now.ConversationID) {
		t.Fatal("not due once its retry time has come")
	}
	h, err := db.ClaimConversation(ctx, "shop1", now.ConversationID, hexID("o", 4), lease, 20)
	if err != nil || h == nil || h.Messages[0].Attempts != 2 || h.Messages[0].ID != now.ID {
		t.Fatalf("retry: %+v %v; want the message on its second attempt", h, err)
	}
}

// The history the LLM sees is in turn order: messages answered together
// come before their reply, even those that arrived while an earlier reply
// was written; unanswered messages are left out.
func TestRecentTurnsFollowTurns(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	conv := hexID("c", 4)
	m1 := newMessage("shop1", conv, "u1", 1)
	c, err := db.ClaimMessage(ctx, m1, hexID("o", 1), lease, 20)
	if err != nil || c.Hold == nil {
		t.Fatal(c, err)
	}
	m2 := newMessage("shop1", conv, "u1", 2) // arrives during turn 1
	m2.AcceptedAt = m1.AcceptedAt.Add(time.Millisecond)
	if c2, err := db.ClaimMessage(ctx, m2, hexID("o", 2), lease, 20); err != nil || !c2.Waiting {
		t.Fatal(c2, err)
	}
	next, err := db.SaveTurn(ctx, c.Hold, storage.TurnReply{Reply: turnReply(c.Hold, "r1")}, lease, 20)
	if err != nil || next == nil {
		t.Fatal(next, err)
	}
	m3 := newMessage("shop1", conv, "u1", 3) // arrives during turn 2, waits
	if c3, err := db.ClaimMessage(ctx, m3, hexID("o", 3), lease, 20); err != nil || !c3.Waiting {
		t.Fatal(c3, err)
	}
	if _, err := db.SaveTurn(ctx, next, storage.TurnReply{Reply: turnReply(next, "r2")}, lease, 1); err != nil {
		t.Fatal(err)
	}
	turns, err := db.RecentTurns(ctx, "shop1", conv, 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tr := range turns {
		got = append(got, tr.Role+":"+tr.Text)
	}
	want := []string{"user:question 1", "assistant:answer r1", "user:question 2", "assistant:answer r2"}
	if !slices.Equal(got, want) {
		t.Fatalf("history %q, want %q", got, want)
	}
}

// What a reply promises (outbox actions) commits with it, or not at all.
func TestSaveTurnStoresActionsInTheReplysTransaction(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	m := newMessage("shop1", hexID("c", 5), "u1", 1)
	c, err := db.ClaimMessage(ctx, m, hexID("o", 1), lease, 20)
	if err != nil || c.Hold == nil {
		t.Fatal(c, err)
	}
	action := func(r *peakdesk.Reply) []peakdesk.Action {
		return []peakdesk.Action{{ShopID: "shop1", ConversationID: r.ConversationID, ReplyID: r.ID,
			Kind: peakdesk.ActionCouponIssue, Payload: []byte(`{"user_id":"u1","amount_cents":500}`),
			IdempotencyKey: "coupon-" + r.ID, MaxAttempts: 3}}
	}
	boom := errors.New("boom")
	_, err = db.SaveTurn(ctx, c.Hold, storage.TurnReply{Reply: turnReply(c.Hold, "r1"),
		InTx: func(ctx context.Context, tx pgx.Tx, r *peakdesk.Reply) error {
			if _, err := storage.InsertActions(ctx, tx, action(r)); err != nil {
				return err
			}
			return boom
		}}, lease, 20)
	if !errors.Is(err, boom) {
		t.Fatalf("save: %v, want boom", err)
	}
	if _, err := db.ReplyFor(ctx, "shop1", m.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a rolled-back turn left a reply: %v", err)
	}
	_, err = db.SaveTurn(ctx, c.Hold, storage.TurnReply{Reply: turnReply(c.Hold, "r2"),
		InTx: func(ctx context.Context, tx pgx.Tx, r *peakdesk.Reply) error {
			_, err := storage.InsertActions(ctx, tx, action(r))
			return err
		}}, lease, 20)
	if err != nil {
		t.Fatal(err)
	}
	actions, err := db.ListActions(ctx, "shop1", storage.ActionFilter{}, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(actions) != 1 || actions[0].ReplyID != "r2" {
		t.Fatalf("actions %+v, want the one of r2", actions)
	}
}
