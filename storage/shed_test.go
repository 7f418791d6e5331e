package storage_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
)

func shedAnswer(m *peakdesk.Message, replyID string) storage.ShedAnswer {
	return storage.ShedAnswer{Message: m, Reply: &peakdesk.Reply{ID: replyID, ShopID: m.ShopID,
		ConversationID: m.ConversationID, MessageIDs: []string{m.ID}, Text: "faq: " + m.Text,
		Source: peakdesk.SourceFAQ, CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}}
}

// A batch of shed answers is stored once — message, reply, webhook — and a
// batch stored again (a redelivery) or an answer to a message stored
// before (a repeat) or on another user's conversation stores nothing more.
func TestSaveShedAnswersStoresEachAnswerOnce(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	if err := db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "shop1", WebhookURL: "http://127.0.0.1:9/hooks"}); err != nil {
		t.Fatal(err)
	}
	conv := hexID("c", 70)
	queued := newMessage("shop1", conv, "u1", 70)
	if _, err := db.ClaimMessage(ctx, queued, "w1", time.Minute, 20); err != nil {
		t.Fatal(err)
	}
	batch := []storage.ShedAnswer{
		shedAnswer(newMessage("shop1", conv, "u1", 71), "shed-71"),
		shedAnswer(newMessage("shop1", conv, "u1", 72), "shed-72"),           // same conversation in one batch
		shedAnswer(newMessage("shop2", hexID("c", 73), "u9", 73), "shed-73"), // another shop, no webhook URL
		shedAnswer(queued, "shed-70"),                                        // a message a worker has
		shedAnswer(newMessage("shop1", conv, "u2", 74), "shed-74"),           // another user's conversation
	}
	want := []storage.ShedOutcome{storage.ShedStored, storage.ShedStored, storage.ShedStored, storage.ShedRepeat, storage.ShedForeign}
	for round := range 2 {
		got, err := db.SaveShedAnswers(ctx, batch, outbox.ReplyWebhook)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("round %d: answer %d: %v, want %v", round, i, got[i], want[i])
			}
		}
	}
	for _, a := range batch[:3] {
		rec, err := db.Message(ctx, a.Message.ShopID, a.Message.ID)
		if err != nil || rec.Status != peakdesk.StatusAnswered || rec.Reply == nil || rec.Reply.ID != a.Reply.ID ||
			!rec.Reply.CreatedAt.Equal(a.Reply.CreatedAt) {
			t.Errorf("message %s: %+v, %v; want answered by %s", a.Message.ID, rec, err, a.Reply.ID)
		}
	}
	if rec, err := db.Message(ctx, "shop1", queued.ID); err != nil || rec.Reply != nil {
		t.Errorf("the queued message got the shed answer: %+v, %v", rec, err)
	}
	c, err := db.Conversation(ctx, "shop1", conv)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Replies) != 2 {
		t.Errorf("conversation replies %+v, want the two stored answers and no orphan", c.Replies)
	}
	hooks, err := db.ListActions(ctx, "shop1", storage.ActionFilter{Kind: peakdesk.ActionWebhookDeliver}, 0, 10)
	if err != nil || len(hooks) != 2 {
		t.Errorf("webhook actions %+v (%v), want one per stored answer of shop1", hooks, err)
	}
}

// replyHooks counts the reply webhooks written for reply id.
func replyHooks(t *testing.T, db *storage.DB, id string) int {
	t.Helper()
	hooks, err := db.ListActions(context.Background(), storage.AllShops,
		storage.ActionFilter{Kind: peakdesk.ActionWebhookDeliver}, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, a := range hooks {
		if a.ReplyID == id {
			n++
		}
	}
	return n
}

// rawStatus is message id's status column (human and waiting both read as
// queued through the API).
func rawStatus(t *testing.T, db *storage.DB, id string) string {
	t.Helper()
	var status string
	if err := db.Tx(context.Background(), func(tx pgx.Tx) error {
		return tx.QueryRow(context.Background(), `SELECT status FROM messages WHERE id = $1`, id).Scan(&status)
	}); err != nil {
		t.Fatal(err)
	}
	return status
}

// A shed message on a conversation a human owns — waiting for an agent, or
// assigned to one — is stored for the agent: in the agent's inbox, no bot
// answer stored, no reply webhook; announced once however often the batch
// is stored again. A bot conversation's shed answer in the same batch is
// stored as ever.
func TestSaveShedAnswersKeepsAHumanOwnedConversationsMessageForTheAgent(t *testing.T) {
	t.Parallel()
	db := takeoverDB(t)
	ctx := context.Background()
	waiting, assigned, bot := hexID("c", 80), hexID("c", 81), hexID("c", 82)
	handedOver(t, db, newMessage("shop1", waiting, "u1", 80))
	if _, err := db.SaveShedAnswers(ctx, []storage.ShedAnswer{shedAnswer(newMessage("shop1", assigned, "u2", 81), "shed-81")},
		nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := db.ClaimForAgent(ctx, agentOf("shop1", "ann"), assigned); err != nil {
		t.Fatal(err)
	}
	batch := []storage.ShedAnswer{
		shedAnswer(newMessage("shop1", waiting, "u1", 90), "shed-90"),
		shedAnswer(newMessage("shop1", assigned, "u2", 91), "shed-91"),
		shedAnswer(newMessage("shop1", bot, "u3", 92), "shed-92"),
		shedAnswer(newMessage("shop1", waiting, "u9", 93), "shed-93"), // another user's conversation
	}
	want := []storage.ShedOutcome{storage.ShedHuman, storage.ShedHuman, storage.ShedStored, storage.ShedForeign}
	for round := range 3 {
		got, err := db.SaveShedAnswers(ctx, batch, outbox.ReplyWebhook)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("round %d: outcomes %v, want %v", round, got, want)
		}
		// The writer announces what was kept for the agent, every round.
		for i, a := range batch {
			if got[i] == storage.ShedHuman {
				if err := db.AnnounceHumanMessage(ctx, a.Message); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for _, a := range batch[:2] {
		rec, err := db.Message(ctx, "shop1", a.Message.ID)
		if err != nil || rec.Status != peakdesk.StatusQueued || rec.Reply != nil {
			t.Errorf("message %s: %+v, %v; want queued for the agent, unanswered", a.Message.ID, rec, err)
		}
		if s := rawStatus(t, db, a.Message.ID); s != "human" {
			t.Errorf("message %s has status %s, want human", a.Message.ID, s)
		}
		c, err := db.Conversation(ctx, "shop1", a.Message.ConversationID)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range c.Replies {
			if r.ID == a.Reply.ID || r.Source == peakdesk.SourceFAQ && r.CreatedAt.After(a.Message.AcceptedAt) {
				t.Errorf("conversation %s has the bot's reply %+v", a.Message.ConversationID, r)
			}
		}
		if n := replyHooks(t, db, a.Reply.ID); n != 0 {
			t.Errorf("%d webhooks of the unstored reply %s", n, a.Reply.ID)
		}
		ev := deskEvents(t, db, a.Message.ConversationID)
		if n := slices.Index(ev, "message.created "+a.Message.ID); n < 0 ||
			slices.Index(ev[n+1:], "message.created "+a.Message.ID) >= 0 {
			t.Errorf("desk events of %s: %v; want message.created %s once", a.Message.ConversationID, ev, a.Message.ID)
		}
	}
	if rec, err := db.Message(ctx, "shop1", batch[2].Message.ID); err != nil || rec.Reply == nil || rec.Reply.ID != "shed-92" {
		t.Errorf("bot conversation's message: %+v, %v; want answered by shed-92", rec, err)
	}
	if n := replyHooks(t, db, "shed-92"); n != 1 {
		t.Errorf("%d webhooks of shed-92, want 1", n)
	}
	in, err := db.Inbox(ctx, "shop1", "ann", 10)
	if err != nil {
		t.Fatal(err)
	}
	inbox := map[string]storage.InboxEntry{}
	for _, e := range append(in.Waiting, in.Mine...) {
		inbox[e.ConversationID] = e
	}
	for _, a := range batch[:2] {
		e, ok := inbox[a.Message.ConversationID]
		if !ok || e.Pending != 1 || e.LastText != a.Message.Text {
			t.Errorf("inbox entry of %s: %+v (found %v); want the shed message pending", a.Message.ConversationID, e, ok)
		}
	}
}

// A handback racing a batch of shed answers never strands a message: the
// batch stores it for the agent before the handback (which gives it to the
// bot) or answers it after — never "for the agent" in a conversation the
// bot has again.
func TestSaveShedAnswersRacingAHandBackStrandsNoMessage(t *testing.T) {
	t.Parallel()
	db := takeoverDB(t)
	ctx := context.Background()
	for i := range 20 {
		conv := hexID("c", 200+i)
		if _, err := db.SaveShedAnswers(ctx, []storage.ShedAnswer{shedAnswer(newMessage("shop1", conv, "u1", 1000+i),
			fmt.Sprintf("shed-first-%d", i))}, nil); err != nil {
			t.Fatal(err)
		}
		if _, _, err := db.ClaimForAgent(ctx, agentOf("shop1", "ann"), conv); err != nil {
			t.Fatal(err)
		}
		m := newMessage("shop1", conv, "u1", 2000+i)
		var wg sync.WaitGroup
		var outcome []storage.ShedOutcome
		var saveErr, backErr error
		wg.Go(func() {
			outcome, saveErr = db.SaveShedAnswers(ctx, []storage.ShedAnswer{shedAnswer(m, fmt.Sprintf("shed-%d", i))}, nil)
		})
		wg.Go(func() { _, backErr = db.HandBack(ctx, agentOf("shop1", "ann"), conv) })
		wg.Wait()
		if saveErr != nil || backErr != nil {
			t.Fatal(saveErr, backErr)
		}
		switch s := rawStatus(t, db, m.ID); {
		case outcome[0] == storage.ShedStored && s == "answered":
		case outcome[0] == storage.ShedHuman && s == "waiting":
		default:
			t.Fatalf("round %d: outcome %v, message status %s", i, outcome[0], s)
		}
	}
}

// A shed order answer's follow-up is stored with it, once however often the
// batch is stored; a repeat's follow-up is not stored (its message has
// another answer); a shed answer may not promise money.
func TestSaveShedAnswersStoresThePromisedFollowUpOnce(t *testing.T) {
	t.Parallel()
	db := setupDB(t)
	ctx := context.Background()
	followUp := func(m *peakdesk.Message) peakdesk.Action {
		return peakdesk.Action{ShopID: m.ShopID, Kind: peakdesk.ActionOrderFollowUp, MaxAttempts: 5,
			Payload: []byte(`{"order_id":"1234567"}`), IdempotencyKey: "order-followup-" + m.ID}
	}
	conv := hexID("c", 90)
	asked := newMessage("shop1", conv, "u1", 90)
	queued := newMessage("shop1", conv, "u1", 91)
	if _, err := db.ClaimMessage(ctx, queued, "w1", time.Minute, 20); err != nil {
		t.Fatal(err)
	}
	a, repeat := shedAnswer(asked, "shed-90"), shedAnswer(queued, "shed-91")
	a.Actions, repeat.Actions = []peakdesk.Action{followUp(asked)}, []peakdesk.Action{followUp(queued)}
	for round := range 3 {
		got, err := db.SaveShedAnswers(ctx, []storage.ShedAnswer{a, repeat}, outbox.ReplyWebhook)
		if err != nil || got[0] != storage.ShedStored || got[1] != storage.ShedRepeat {
			t.Fatalf("round %d: %v %v", round, got, err)
		}
	}
	acts, err := db.ListActions(ctx, "shop1", storage.ActionFilter{Kind: peakdesk.ActionOrderFollowUp}, 0, 10)
	if err != nil || len(acts) != 1 || acts[0].ReplyID != "shed-90" || acts[0].ConversationID != conv {
		t.Fatalf("follow-ups %+v (%v); want one, of shed-90", acts, err)
	}
	if r, err := db.ReplyFor(ctx, "shop1", asked.ID); err != nil || !r.FollowUp {
		t.Errorf("the stored reply %+v (%v) does not say a follow-up comes", r, err)
	}

	money := shedAnswer(newMessage("shop1", hexID("c", 92), "u3", 92), "shed-92")
	money.Actions = []peakdesk.Action{{ShopID: "shop1", Kind: peakdesk.ActionRefundRequest, MaxAttempts: 5,
		Payload: []byte(`{}`), IdempotencyKey: "refund-92"}}
	if _, err := db.SaveShedAnswers(ctx, []storage.ShedAnswer{money}, nil); err == nil {
		t.Fatal("a shed answer promising a refund was stored")
	}
}
