package storage_test

import (
	"context"
	"testing"
	"time"

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
