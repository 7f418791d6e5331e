package outbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// deskEnv is a testEnv with JetStream, the demo shop's webhook URL set, and
// a Desk.
type deskEnv struct {
	*testEnv
	js   jetstream.JetStream
	desk *outbox.Desk
	reg  *prometheus.Registry
}

func setupDesk(t *testing.T) *deskEnv {
	t.Helper()
	e := setup(t, shopsim.Faults{})
	ctx := context.Background()
	if err := e.db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "demo",
		WebhookURL: e.url + "/webhooks/replies", WebhookSecret: testWebhookSecret}); err != nil {
		t.Fatal(err)
	}
	js := storagetest.JetStream(t)
	reg := prometheus.NewRegistry()
	desk, err := outbox.NewDesk(outbox.DeskConfig{DB: e.db, JS: js, Logger: storagetest.Logger(t), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return &deskEnv{testEnv: e, js: js, desk: desk, reg: reg}
}

// waitingConversation stores a customer's message of a new conversation
// and hands it to a human, as a worker does for "转人工".
func (e *deskEnv) waitingConversation(t *testing.T, n int, text string) (conv string, m *peakdesk.Message) {
	t.Helper()
	ctx := context.Background()
	conv = fmt.Sprintf("%032x", 0xc0000+n)
	m = &peakdesk.Message{ID: fmt.Sprintf("%032x", 0xa0000+n), ShopID: "demo", ConversationID: conv, UserID: "u1",
		Text: text, Priority: peakdesk.P1, AcceptedAt: time.Now()}
	c, err := e.db.ClaimMessage(ctx, m, "owner", time.Minute, 20)
	if err != nil || c.Hold == nil {
		t.Fatalf("claim: %+v %v", c, err)
	}
	r := &peakdesk.Reply{ID: fmt.Sprintf("%032x", 0xb0000+n), ShopID: "demo", ConversationID: conv,
		MessageIDs: c.Hold.MessageIDs(), Text: "a human takes over", Source: peakdesk.SourceHandoff}
	if _, err := e.db.SaveTurn(ctx, c.Hold, storage.TurnReply{Reply: r,
		Handoff: &storage.HandOff{Reason: peakdesk.HandoffCustomerAsked, Priority: peakdesk.P1}}, time.Minute, 20); err != nil {
		t.Fatal(err)
	}
	return conv, m
}

// lastEvent returns the last reply event of conv in CHAT_EVENTS.
func (e *deskEnv) lastEvent(t *testing.T, conv string) (*peakdesk.Reply, uint64) {
	t.Helper()
	s, err := e.js.Stream(context.Background(), queue.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	events, err := queue.ConversationEvents(context.Background(), s, "demo", conv)
	if err != nil || len(events) == 0 {
		return nil, 0
	}
	raw := events[len(events)-1]
	var r peakdesk.Reply
	if err := json.Unmarshal(raw.Data, &r); err != nil {
		t.Fatal(err)
	}
	return &r, raw.Sequence
}

// An agent's reply is delivered like every reply: its event on the
// conversation's subject, its signed webhook; a repeat with the same key is
// the same reply; only the agent who claimed the conversation may reply.
func TestAgentReplyIsDeliveredLikeEveryReply(t *testing.T) {
	t.Parallel()
	e := setupDesk(t)
	ctx := context.Background()
	conv, m := e.waitingConversation(t, 1, "转人工")
	lily := outbox.Agent{ID: "lily@shop.example", Shop: "demo", Via: "test"}
	bob := outbox.Agent{ID: "bob", Shop: "demo", Via: "test"}

	if _, _, err := e.desk.Reply(ctx, lily, conv, "hello", ""); peakdesk.ErrorCode(err) != peakdesk.EConflict {
		t.Fatalf("reply before claiming: %v; want a conflict", err)
	}
	if c, err := e.desk.Claim(ctx, lily, conv); err != nil || c.Agent != lily.ID {
		t.Fatalf("claim: %+v %v", c, err)
	}
	if n := testutil.CollectAndCount(e.reg, "peakdesk_handoff_wait_seconds"); n != 1 {
		t.Fatalf("wait histogram series %d", n)
	}
	if _, err := e.desk.Claim(ctx, bob, conv); peakdesk.ErrorCode(err) != peakdesk.EConflict ||
		!strings.Contains(peakdesk.ErrorMessage(err), lily.ID) {
		t.Fatalf("bob's claim: %v; want a conflict naming lily", err)
	}
	for _, text := range []string{"", "  ", "bell\a"} {
		if _, _, err := e.desk.Reply(ctx, lily, conv, text, ""); peakdesk.ErrorCode(err) != peakdesk.EInvalid {
			t.Errorf("reply %q: %v; want invalid_argument", text, err)
		}
	}
	if _, err := e.desk.Claim(ctx, lily, "not-a-conversation"); peakdesk.ErrorCode(err) != peakdesk.ENotFound {
		t.Fatalf("claim of a bad id: %v", err)
	}

	r, stored, err := e.desk.Reply(ctx, lily, conv, " 您好，我是客服 Lily ", "k1")
	if err != nil || !stored {
		t.Fatalf("reply: %v %v", stored, err)
	}
	if r.Source != peakdesk.SourceAgent || r.Agent != "lily" || r.Text != "您好，我是客服 Lily" || len(r.MessageIDs) != 0 {
		t.Fatalf("reply %+v; want source agent signed lily (the handoff answered %s already)", r, m.ID)
	}
	ev, seq := e.lastEvent(t, conv)
	if ev == nil || ev.ID != r.ID || ev.Agent != "lily" {
		t.Fatalf("event %+v; want the agent's reply", ev)
	}
	again, stored, err := e.desk.Reply(ctx, lily, conv, "您好，我是客服 Lily", "k1")
	if err != nil || stored || again.ID != r.ID {
		t.Fatalf("repeat: %+v %v %v; want the first reply", again, stored, err)
	}
	if _, seq2 := e.lastEvent(t, conv); seq2 != seq {
		t.Fatal("a repeat published a second event")
	}
	actions, err := e.db.ListActions(ctx, "demo", storage.ActionFilter{Kind: peakdesk.ActionWebhookDeliver, Q: r.ID}, 0, 10)
	if err != nil || len(actions) != 1 || actions[0].ReplyID != r.ID {
		t.Fatalf("webhooks of the reply: %+v %v; want one", actions, err)
	}
	if _, err := e.desk.Resolve(ctx, lily, conv); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.desk.Reply(ctx, lily, conv, "one more thing", ""); peakdesk.ErrorCode(err) != peakdesk.EConflict {
		t.Fatalf("reply after resolving: %v; want a conflict", err)
	}
}

// Waiting longer than the shop's handoff_sla, the customer is told the
// expected wait in their language — once, though the notifier looks again.
func TestWaitNotifierTellsTheCustomerOnce(t *testing.T) {
	t.Parallel()
	e := setupDesk(t)
	ctx := context.Background()
	if err := e.db.SetShopTakeoverSettings(ctx, "demo", storage.TakeoverSettings{SLA: time.Second}); err != nil {
		t.Fatal(err)
	}
	conv, _ := e.waitingConversation(t, 2, "can I talk to a human?")
	// Ann claimed another conversation of the shop lately: the pace is
	// one per 30 minutes.
	other, _ := e.waitingConversation(t, 3, "转人工")
	if _, err := e.desk.Claim(ctx, outbox.Agent{ID: "ann", Shop: "demo", Via: "test"}, other); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	n, err := outbox.NewWaitNotifier(outbox.WaitNotifierConfig{DB: e.db, JS: e.js, Logger: storagetest.Logger(t),
		Registerer: reg, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	var notice *peakdesk.Reply
	deadline := time.Now().Add(20 * time.Second)
	for notice == nil || notice.Source != peakdesk.SourceHandoff || notice.Text == "a human takes over" {
		if time.Now().After(deadline) {
			t.Fatalf("no waiting notice; last event %+v", notice)
		}
		time.Sleep(20 * time.Millisecond)
		notice, _ = e.lastEvent(t, conv)
	}
	if !strings.Contains(notice.Text, "about 30 minutes") {
		t.Fatalf("notice %q; want the expected wait in English", notice.Text)
	}
	if got := testutil.ToFloat64(reg); got != 1 {
		t.Fatalf("peakdesk_conversations_waiting %v; want 1", got)
	}
	n.Stop()
	c, err := e.db.Conversation(ctx, "demo", conv)
	if err != nil {
		t.Fatal(err)
	}
	notices := 0
	for _, r := range c.Replies {
		if r.Text == notice.Text {
			notices++
		}
	}
	if notices != 1 {
		t.Fatalf("%d notices; want one", notices)
	}
}
