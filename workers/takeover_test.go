package workers

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"github.com/peakdesk/peakdesk/workers/texts"
)

func TestAsksForHuman(t *testing.T) {
	t.Parallel()
	shop := append(slices.Clone(builtinHandoffWords), "客服小姐姐", "operator")
	for _, tc := range []struct {
		text string
		want bool
	}{
		{"我要人工", true},
		{"转人工！！", true},
		{"人工客服在吗", true},
		{"我要\u200b人\u200b工", true}, // zero-width spaces hide nothing
		{"你们是人工智能吗？", false},
		{"人工智能能帮我转人工吗", true},
		{"Can I talk to a HUMAN please", true},
		{"I want an agent.", true},
		{"agents, anyone?", true},
		{"is your travel agency open", false},
		{"humane treatment of animals", false},
		{"real person please", false},
		{"找客服小姐姐", true},
		{"put me through to an operator", true},
		{"cooperators welcome", false},
		{"双11满减怎么算？", false},
	} {
		if got := asksForHuman(tc.text, shop); got != tc.want {
			t.Errorf("asksForHuman(%q) = %v, want %v", tc.text, got, tc.want)
		}
	}
}

// desk returns conversation conv's takeover state.
func (b *testBundle) desk(t testing.TB, conv string) *peakdesk.DeskConversation {
	t.Helper()
	d, err := b.db.DeskConversation(context.Background(), "demo", conv)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// settled reports whether priority p's consumer has nothing pending and
// nothing unacked.
func (b *testBundle) settled(t testing.TB, p peakdesk.Priority) bool {
	t.Helper()
	cons, err := b.js.Consumer(context.Background(), queue.StreamIn, queue.ConsumerName(p))
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.NumPending == 0 && info.NumAckPending == 0
}

// statuses returns the stored status of each of ids, in order ("" for one
// not stored yet).
func (b *testBundle) statuses(t testing.TB, ids []string) []string {
	t.Helper()
	out := make([]string, len(ids))
	for i, id := range ids {
		if err := b.pool.QueryRow(context.Background(), `SELECT coalesce((SELECT status FROM messages WHERE id = $1), '')`,
			id).Scan(&out[i]); err != nil {
			t.Fatalf("message %s: %v", id, err)
		}
	}
	return out
}

// A customer who asks for a human is handed over at once, in their
// language, at any priority — an opening p2 question too — without an LLM
// call; asking an AI whether it is one (人工智能) is not asking for a human.
func TestCustomerAskingForHumanIsHandedOverWithoutTheLLM(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	b.start(t, func(c *Config, l *LimitsConfig) { c.Tools = b.tools })
	zh := plainMessage(peakdesk.P2, "u1", "我要人工")
	en := plainMessage(peakdesk.P0, "u2", "Can I talk to an agent? My payment failed")
	ai := plainMessage(peakdesk.P2, "u3", "你们是人工智能吗？")
	b.publish(t, zh, en, ai)
	storagetest.WaitFor(t, "three answers", 15*time.Second, func() bool {
		return b.answered(t, ids([]peakdesk.Message{zh, en, ai})) == 3
	})

	for _, tc := range []struct {
		m    peakdesk.Message
		lang texts.Lang
	}{{zh, texts.ZH}, {en, texts.EN}} {
		r := b.replies(t, tc.m.ConversationID)
		want := texts.Text(tc.lang, texts.HandoffRequested, nil)
		if len(r) != 1 || r[0].source != peakdesk.SourceHandoff || r[0].text != want {
			t.Fatalf("%q: replies %+v; want the handoff %q", tc.m.Text, r, want)
		}
		d := b.desk(t, tc.m.ConversationID)
		if d.State != peakdesk.StateWaitingHuman || d.Reason != peakdesk.HandoffCustomerAsked || d.Priority != tc.m.Priority {
			t.Fatalf("%q: conversation %+v; want waiting_human, customer_asked, %s", tc.m.Text, d.Takeover, tc.m.Priority)
		}
	}
	if r := b.replies(t, ai.ConversationID); len(r) != 1 || r[0].source != peakdesk.SourceLLM {
		t.Fatalf("replies to %q: %+v; want the LLM's", ai.Text, r)
	}
	if d := b.desk(t, ai.ConversationID); d.State != peakdesk.StateBot {
		t.Fatalf("%q handed the conversation over: %+v", ai.Text, d.Takeover)
	}
	if n := b.calls.len(); n != 1 {
		t.Fatalf("%d LLM calls; want one, for the question about AI", n)
	}
}

// While a human owns a conversation the bot says nothing: the customer's
// messages are stored for the agent, acked and announced (message.created),
// never answered by the bot nor sent to the LLM; the agent's reply answers
// them all, in order; handed back, the bot answers again.
func TestBotIsSilentWhileAHumanOwnsTheConversation(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	ctx := context.Background()
	// A webhook URL makes the desk events be written (no relay runs here).
	if err := b.db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "demo",
		WebhookURL: "https://shop.example.com/hooks"}); err != nil {
		t.Fatal(err)
	}
	b.start(t, nil)
	first := plainMessage(peakdesk.P1, "u1", "转人工")
	b.publish(t, first)
	storagetest.WaitFor(t, "the handoff", 15*time.Second, func() bool { return b.answered(t, []string{first.ID}) == 1 })
	calls := b.calls.len()

	var later []peakdesk.Message
	for _, text := range []string{"我的订单还没到", "订单号 8812", "快点好吗"} {
		m := plainMessage(peakdesk.P1, "u1", text)
		m.ConversationID = first.ConversationID
		m.AcceptedAt = time.Now()
		later = append(later, m)
		b.publish(t, m) // one by one: they reach the worker in this order
	}
	storagetest.WaitFor(t, "the three messages stored for the agent and acked", 15*time.Second, func() bool {
		return slices.Equal(b.statuses(t, ids(later)), []string{"human", "human", "human"}) && b.settled(t, peakdesk.P1)
	})
	if r := b.replies(t, first.ConversationID); len(r) != 1 {
		t.Fatalf("replies %+v; want only the handoff", r)
	}
	if n := b.calls.len(); n != calls {
		t.Fatalf("the LLM was asked %d times while a human owned the conversation", n-calls)
	}
	var announced []string
	rows, err := b.pool.Query(ctx, `SELECT payload #>> '{message,message_id}' FROM outbox_actions
		WHERE conversation_id = $1 AND payload ->> 'type' = 'message.created' ORDER BY id`, first.ConversationID)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		announced = append(announced, id)
	}
	if !slices.Equal(announced, ids(later)) {
		t.Fatalf("message.created for %v; want each of %v once", announced, ids(later))
	}

	agent := storage.DeskActor{Agent: "lily@demo.example", Scope: "demo", Via: "test"}
	if _, _, err := b.db.ClaimForAgent(ctx, agent, first.ConversationID); err != nil {
		t.Fatal(err)
	}
	r := &peakdesk.Reply{ID: newID(), Text: "您好，我来帮您查", Agent: "lily"}
	if _, err := b.db.AgentReply(ctx, agent, first.ConversationID, r, nil); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.MessageIDs, ids(later)) {
		t.Fatalf("the agent's reply answers %v; want %v", r.MessageIDs, ids(later))
	}
	if _, err := b.db.HandBack(ctx, agent, first.ConversationID); err != nil {
		t.Fatal(err)
	}
	again := plainMessage(peakdesk.P1, "u1", "谢谢，另外双11满减怎么算？")
	again.ConversationID = first.ConversationID
	b.publish(t, again)
	storagetest.WaitFor(t, "the bot's answer", 15*time.Second, func() bool { return b.answered(t, []string{again.ID}) == 1 })
	if got := b.replies(t, first.ConversationID); got[len(got)-1].source != peakdesk.SourceLLM {
		t.Fatalf("after hand back: %+v; want the LLM's answer", got[len(got)-1])
	}
}

// llmGate holds every LLM call until released, and says when one started.
type llmGate struct {
	started chan struct{}
	release chan struct{}
}

func (g *llmGate) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case g.started <- struct{}{}:
		default:
		}
		select {
		case <-g.release:
		case <-r.Context().Done():
			return
		}
		next.ServeHTTP(w, r)
	})
}

// The race: an agent takes the conversation over while the bot is still
// composing its answer. The bot's answer is dropped in SaveTurn's
// transaction — never stored, never sent — the message is the agent's and
// acked, and the agent's reply answers it.
func TestBotAnswerDroppedWhenAHumanTakesOverMidTurn(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	gate := &llmGate{started: make(chan struct{}, 1), release: make(chan struct{})}
	srv := httptest.NewServer(gate.wrap(b.calls.wrap(b.sim)))
	t.Cleanup(srv.Close)
	b.llmURL = srv.URL + "/v1"
	b.start(t, nil)
	ctx := context.Background()

	m := plainMessage(peakdesk.P1, "u1", "where is my parcel?")
	b.publish(t, m)
	select {
	case <-gate.started:
	case <-time.After(15 * time.Second):
		t.Fatal("the bot never asked the LLM")
	}
	agent := storage.DeskActor{Agent: "lily@demo.example", Scope: "demo", Via: "test"}
	d, _, err := b.db.ClaimForAgent(ctx, agent, m.ConversationID)
	if err != nil || d.State != peakdesk.StateAssigned || d.Reason != peakdesk.HandoffAgentTakeover {
		t.Fatalf("take over: %+v, %v", d, err)
	}
	close(gate.release)
	storagetest.WaitFor(t, "the worker to let go of the conversation and ack", 15*time.Second, func() bool {
		var held bool
		if err := b.pool.QueryRow(ctx, `SELECT turn_owner IS NOT NULL FROM conversations WHERE id = $1`,
			m.ConversationID).Scan(&held); err != nil {
			t.Fatal(err)
		}
		return !held && b.settled(t, peakdesk.P1)
	})
	if r := b.replies(t, m.ConversationID); len(r) != 0 {
		t.Fatalf("replies %+v; want none from the bot", r)
	}
	if s := b.statuses(t, []string{m.ID}); s[0] != "human" {
		t.Fatalf("message status %s; want human", s[0])
	}
	r := &peakdesk.Reply{ID: newID(), Text: "I am looking into it", Agent: "lily"}
	if _, err := b.db.AgentReply(ctx, agent, m.ConversationID, r, nil); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.MessageIDs, []string{m.ID}) {
		t.Fatalf("the agent's reply answers %v; want %s", r.MessageIDs, m.ID)
	}
}
