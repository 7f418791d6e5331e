package workers

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"github.com/peakdesk/peakdesk/workers/faq"
)

// plainMessage is a message of a new conversation of user whose text goes
// to the LLM as it is (no tag).
func plainMessage(prio peakdesk.Priority, user, text string) peakdesk.Message {
	return peakdesk.Message{ID: newID(), ShopID: "demo", ConversationID: newConvID(), UserID: user, Text: text,
		Priority: prio, AcceptedAt: time.Now()}
}

// actionsOf returns the kinds of the outbox actions stored with reply id.
func (b *testBundle) actionsOf(t testing.TB, replyID string) []string {
	t.Helper()
	rows, err := b.pool.Query(context.Background(), `SELECT kind FROM outbox_actions WHERE reply_id = $1 ORDER BY id`, replyID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var kinds []string
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, k)
	}
	return kinds
}

// lastEvent returns the last reply event published on conv.
func (b *testBundle) lastEvent(t testing.TB, conv string) peakdesk.Reply {
	t.Helper()
	events := conversationEvents(t, b, conv)
	if len(events) == 0 {
		t.Fatalf("no reply event on conversation %s", conv)
	}
	var r peakdesk.Reply
	if err := json.Unmarshal(events[len(events)-1].Data, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// A refund request naming the customer's order: the LLM calls
// request_refund, the tool checks the order against the shop and promises
// the refund; the reply tells the customer so and the refund.request action
// is stored with it, in its transaction. The reply carries its cost.
func TestRefundToolActionStoredWithReply(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	b.start(t, func(c *Config, l *LimitsConfig) { c.Tools = b.tools })
	// Catalogue order 1234567890123456 belongs to user u6.
	m := plainMessage(peakdesk.P0, "u6", "我要退款，订单号 1234567890123456")
	b.publish(t, m)
	storagetest.WaitFor(t, "the answer", 15*time.Second, func() bool { return b.answered(t, []string{m.ID}) == 1 })

	r := b.replies(t, m.ConversationID)
	t.Logf("replies: %+v", r)
	if len(r) != 1 || r[0].source != peakdesk.SourceLLM ||
		!strings.Contains(r[0].text, "refund") || !strings.Contains(r[0].text, "1234567890123456 has been requested") {
		t.Fatalf("replies %+v; want the LLM's answer quoting the tool's text", r)
	}
	if got := b.sim.Stats().ToolCalls; got["request_refund"] != 1 {
		t.Fatalf("tool calls %v, want one request_refund", got)
	}
	if kinds := b.actionsOf(t, r[0].id); len(kinds) != 1 || kinds[0] != string(peakdesk.ActionRefundRequest) {
		t.Fatalf("actions of the reply %v; want one refund.request (and no webhook: the shop has no URL)", kinds)
	}
	var order, user string
	var cost int64
	if err := b.pool.QueryRow(context.Background(), `SELECT a.payload->>'order_id', a.payload->>'user_id', r.cost_micro_usd
		FROM outbox_actions a JOIN replies r ON r.id = a.reply_id WHERE a.reply_id = $1`, r[0].id).Scan(&order, &user, &cost); err != nil {
		t.Fatal(err)
	}
	if order != "1234567890123456" || user != "u6" || cost <= 0 {
		t.Fatalf("refund of order %q for %q, reply cost %d; want order 1234567890123456 for u6 at a cost", order, user, cost)
	}
	if b.handedOff(t, m.ConversationID) {
		t.Fatal("an approved refund handed the conversation to a human")
	}
}

// The LLM requests the refund, then fails before it can say so: the
// customer gets the handoff reply, and the refund the tool checked and
// promised is stored with it all the same.
func TestToolActionsKeptWhenTheLLMFailsAfterwards(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	b.calls.failAfterTools.Store(true)
	b.start(t, func(c *Config, l *LimitsConfig) { c.Tools = b.tools })
	m := plainMessage(peakdesk.P0, "u6", "我要退款，订单号 1234567890123456")
	b.publish(t, m)
	storagetest.WaitFor(t, "the answer", 15*time.Second, func() bool { return b.answered(t, []string{m.ID}) == 1 })
	r := b.replies(t, m.ConversationID)
	if len(r) != 1 || r[0].source != peakdesk.SourceHandoff {
		t.Fatalf("replies %+v; want the handoff", r)
	}
	if kinds := b.actionsOf(t, r[0].id); len(kinds) != 1 || kinds[0] != string(peakdesk.ActionRefundRequest) {
		t.Fatalf("actions of the reply %v; want the refund.request", kinds)
	}
	if !b.handedOff(t, m.ConversationID) {
		t.Fatal("conversation not marked for a human")
	}
}

// A customer asking for a person in words the worker does not take for a
// handoff itself: the LLM calls handoff_to_human and answers; the reply is
// the LLM's and the conversation goes to a human.
func TestToolHandoffMarksConversation(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	b.start(t, func(c *Config, l *LimitsConfig) { c.Tools = b.tools })
	m := plainMessage(peakdesk.P1, "u1", "let me talk to a real person please")
	b.publish(t, m)
	storagetest.WaitFor(t, "the answer", 15*time.Second, func() bool { return b.answered(t, []string{m.ID}) == 1 })
	r := b.replies(t, m.ConversationID)
	if len(r) != 1 || r[0].source != peakdesk.SourceLLM {
		t.Fatalf("replies %+v; want the LLM's answer", r)
	}
	// At least one call: on a loaded machine a turn whose hold expired is
	// composed again by the next holder (its first composition is dropped,
	// never stored), so the LLM may be asked twice; the reply stays one.
	if got := b.sim.Stats().ToolCalls; got["handoff_to_human"] < 1 {
		t.Fatalf("tool calls %v, want handoff_to_human", got)
	}
	if !b.handedOff(t, m.ConversationID) {
		t.Fatal("conversation not marked for a human")
	}
	if d := b.desk(t, m.ConversationID); d.State != peakdesk.StateWaitingHuman || d.Reason != peakdesk.HandoffTool {
		t.Fatalf("conversation %+v; want waiting_human by the tool", d.Takeover)
	}
}

// With the LLM down, a question the demo FAQ answers gets that entry's
// answer in its first turn, once; a question it does not know gets the
// handoff, and the conversation goes to a human.
func TestLLMOutageFallsBackToDemoFAQ(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{faults: llmsim.Faults{Outage: true}})
	entries := faq.DemoEntries()
	if _, err := b.db.ImportFAQ(context.Background(), "demo", entries, false); err != nil {
		t.Fatal(err)
	}
	const question = "可以开发票吗？" // not an order question: those are answered from the shop's data first
	var want string
	for _, e := range entries {
		if e.Question == question {
			want = e.Answer
		}
	}
	if want == "" {
		t.Fatalf("the demo FAQ has no entry %q", question)
	}
	b.start(t, func(c *Config, l *LimitsConfig) { c.Tools = b.tools }) // the FAQ is loaded at start
	known := plainMessage(peakdesk.P1, "u1", question)
	unknown := plainMessage(peakdesk.P1, "u2", "你们的仓库能寄到南极科考站吗？")
	b.publish(t, known, unknown)
	storagetest.WaitFor(t, "two answers", 15*time.Second, func() bool { return b.answered(t, ids([]peakdesk.Message{known, unknown})) == 2 })

	r := b.replies(t, known.ConversationID)
	if len(r) != 1 || r[0].source != peakdesk.SourceFAQ || r[0].text != want {
		t.Fatalf("replies %+v; want one from the FAQ: %q", r, want)
	}
	if b.handedOff(t, known.ConversationID) {
		t.Fatal("a question the FAQ answered was handed to a human")
	}
	if n := b.attempts(t, known.ID); n != 1 {
		t.Fatalf("answered in turn %d, want the first", n)
	}
	storagetest.WaitFor(t, "the reply event", 10*time.Second, func() bool { return countEvents(t, b, known.ConversationID) == 1 })
	if kinds := b.actionsOf(t, r[0].id); len(kinds) != 0 {
		t.Fatalf("actions %v for a fallback without tool calls", kinds)
	}

	r = b.replies(t, unknown.ConversationID)
	if len(r) != 1 || r[0].source != peakdesk.SourceHandoff {
		t.Fatalf("replies %+v; want the handoff for a question the FAQ does not know", r)
	}
	if !b.handedOff(t, unknown.ConversationID) {
		t.Fatal("handoff reply, but the conversation is not marked for a human")
	}
	if b.sim.Stats().ByStatus[503] == 0 {
		t.Fatal("the LLM was not asked")
	}
}

// Every reply of a shop with a webhook URL comes with one webhook.deliver
// action, stored in the reply's transaction; it carries the reply.
func TestReplyWebhookActionPerReply(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	if err := b.db.PutShopAPISettings(context.Background(), storage.ShopAPISettings{ShopID: "demo",
		WebhookURL: "http://127.0.0.1:9/replies", WebhookSecret: "whsec-test"}); err != nil {
		t.Fatal(err)
	}
	b.start(t, nil)
	conv := newConvID()
	first := message(peakdesk.P2, conv, "hello")
	b.publish(t, first)
	storagetest.WaitFor(t, "the first answer", 15*time.Second, func() bool { return b.answered(t, []string{first.ID}) == 1 })
	msgs := []peakdesk.Message{first, message(peakdesk.P2, conv, "and another thing"), message(peakdesk.P1, "", "hi")}
	b.publish(t, msgs[1:]...)
	storagetest.WaitFor(t, "three answers", 15*time.Second, func() bool { return b.answered(t, ids(msgs)) == 3 })

	rows, err := b.pool.Query(context.Background(), `SELECT r.id, count(a.id), min(a.payload->'reply'->>'reply_id')
		FROM replies r LEFT JOIN outbox_actions a ON a.reply_id = r.id AND a.kind = 'webhook.deliver'
		GROUP BY r.id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	replies := 0
	for rows.Next() {
		var id string
		var n int
		var inPayload *string
		if err := rows.Scan(&id, &n, &inPayload); err != nil {
			t.Fatal(err)
		}
		replies++
		if n != 1 || inPayload == nil || *inPayload != id {
			t.Errorf("reply %s: %d webhook actions (payload names reply %v); want one carrying it", id, n, inPayload)
		}
	}
	if replies != 3 {
		t.Fatalf("%d replies, want 3", replies)
	}
}

// partialLog collects the partial replies published on one conversation.
type partialLog struct {
	mu   sync.Mutex
	msgs []PartialReply
}

func (b *testBundle) followPartials(t testing.TB, conv string) *partialLog {
	t.Helper()
	l := &partialLog{}
	sub, err := b.js.Conn().Subscribe(queue.PartialsFilter, func(msg *nats.Msg) {
		if msg.Header.Get(queue.HeaderConversation) != conv {
			return
		}
		var p PartialReply
		if err := json.Unmarshal(msg.Data, &p); err != nil {
			t.Errorf("partial %q: %v", msg.Data, err)
			return
		}
		l.mu.Lock()
		l.msgs = append(l.msgs, p)
		l.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := b.js.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *partialLog) snapshot() []PartialReply {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]PartialReply(nil), l.msgs...)
}

// An urgent answer streams: partial replies with the text so far go out on
// core NATS before the reply, each a beginning of it; the reply event does
// not replace them.
func TestUrgentAnswerStreamsPartials(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{faults: llmsim.Faults{ChunkDelay: 5 * time.Millisecond}})
	b.start(t, nil)
	m := message(peakdesk.P1, "", "where is my parcel")
	partials := b.followPartials(t, m.ConversationID)
	b.publish(t, m)
	storagetest.WaitFor(t, "the reply event", 15*time.Second, func() bool { return countEvents(t, b, m.ConversationID) == 1 })
	ev := b.lastEvent(t, m.ConversationID)
	storagetest.WaitFor(t, "a partial reply", 5*time.Second, func() bool { return len(partials.snapshot()) > 0 })
	for _, p := range partials.snapshot() {
		if p.ConversationID != m.ConversationID || len(p.MessageIDs) != 1 || p.MessageIDs[0] != m.ID ||
			p.Text == "" || !strings.HasPrefix(ev.Text, p.Text) {
			t.Fatalf("partial %+v; want the beginning of %q", p, ev.Text)
		}
	}
	if ev.Source != peakdesk.SourceLLM || ev.ReplacesPartial {
		t.Fatalf("reply event %+v; want the LLM's answer, not replacing the partials", ev)
	}
}

// A stream that breaks after text was shown: the answer falls back, and the
// reply event tells the client it replaces the partial text.
func TestBrokenStreamReplyReplacesPartial(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{faults: llmsim.Faults{StreamCutRate: 1}})
	b.start(t, nil)
	m := message(peakdesk.P0, "", "my payment failed")
	partials := b.followPartials(t, m.ConversationID)
	b.publish(t, m)
	storagetest.WaitFor(t, "the reply event", 15*time.Second, func() bool { return countEvents(t, b, m.ConversationID) == 1 })
	ev := b.lastEvent(t, m.ConversationID)
	if ev.Source == peakdesk.SourceLLM || !ev.ReplacesPartial {
		t.Fatalf("reply event %+v; want a fallback that replaces the partial text", ev)
	}
	storagetest.WaitFor(t, "a partial reply", 5*time.Second, func() bool { return len(partials.snapshot()) > 0 })
}
