package workers

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// storedReply is a reply as Postgres holds it, with the messages it answers
// in the order they were sent.
type storedReply struct {
	id       string
	text     string
	source   string
	messages []string
}

func (b *testBundle) replies(t testing.TB, conv string) []storedReply {
	t.Helper()
	rows, err := b.pool.Query(context.Background(), `SELECT r.id, r.text, r.source,
			coalesce((SELECT array_agg(m.id ORDER BY m.accepted_at, m.id) FROM messages m WHERE m.reply_id = r.id), '{}')
		FROM replies r WHERE r.conversation_id = $1 ORDER BY r.created_at, r.id`, conv)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []storedReply
	for rows.Next() {
		var r storedReply
		if err := rows.Scan(&r.id, &r.text, &r.source, &r.messages); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// checkInOrder fails unless replies answer msgs exactly once each, in the
// order they were sent: each reply answers the next few messages.
func checkInOrder(t *testing.T, replies []storedReply, msgs []peakdesk.Message) {
	t.Helper()
	var got []string
	for _, r := range replies {
		got = append(got, r.messages...)
	}
	if !slices.Equal(got, ids(msgs)) {
		t.Fatalf("replies answer %v in this order; want each of %v once, in order", got, ids(msgs))
	}
}

// A customer sends five messages in a row while the first is being answered,
// and two workers share the queue: the answers come in order, never two at
// once, and the four that queued up are answered together by one reply that
// the LLM wrote seeing all four, in order, as one question (and the first
// turn as history). Waiting for the conversation cost them no delivery
// attempts.
func TestConversationAnsweredInOrderOneTurnAtATime(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{faults: llmsim.Faults{Latency: 500 * time.Millisecond}})
	for range 2 {
		b.start(t, nil)
	}
	conv := newConvID()
	var msgs []peakdesk.Message
	for i := range 5 {
		msgs = append(msgs, message(peakdesk.P1, conv, "question "+string(rune('1'+i))))
		msgs[i].AcceptedAt = time.Now().Add(time.Duration(i) * time.Millisecond)
	}
	b.publish(t, msgs[0])
	storagetest.WaitFor(t, "the first LLM call", 10*time.Second, func() bool { return b.calls.len() == 1 })
	b.publish(t, msgs[1:]...)
	storagetest.WaitFor(t, "five answers", 20*time.Second, func() bool { return b.answered(t, ids(msgs)) == 5 })

	replies := b.replies(t, conv)
	checkInOrder(t, replies, msgs)
	if len(replies) != 2 || len(replies[1].messages) != 4 {
		t.Fatalf("replies %+v; want one to the first message, then one to the four that queued up", replies)
	}
	if n := b.calls.max(conv); n != 1 {
		t.Fatalf("%d LLM calls of the conversation ran at once, want 1", n)
	}
	calls := b.calls.snapshot()
	if len(calls) != 2 {
		t.Fatalf("%d LLM calls, want 2", len(calls))
	}
	second := calls[1]
	want := []string{strings.Join([]string{msgs[1].Text, msgs[2].Text, msgs[3].Text, msgs[4].Text}, "\n")}
	if !slices.Equal(second.users, want) {
		t.Fatalf("second call answered %q, want %q", second.users, want)
	}
	if len(second.history) != 2 || second.history[0] != msgs[0].Text || second.history[1] != "assistant: "+replies[0].text {
		t.Fatalf("second call's history %q; want the first message and its reply", second.history)
	}
	var attempts []int
	rows, _ := b.pool.Query(context.Background(), `SELECT attempts FROM messages WHERE conversation_id = $1 ORDER BY accepted_at`, conv)
	for rows.Next() {
		var n int
		_ = rows.Scan(&n)
		attempts = append(attempts, n)
	}
	rows.Close()
	if !slices.Equal(attempts, []int{1, 1, 1, 1, 1}) {
		t.Errorf("attempts %v, want one each", attempts)
	}
	cons, _ := b.js.Consumer(context.Background(), queue.StreamIn, queue.ConsumerName(peakdesk.P1))
	info, err := cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.NumRedelivered != 0 || info.NumAckPending != 0 || info.NumPending != 0 {
		t.Errorf("consumer: %d redelivered, %d ack pending, %d pending; want none", info.NumRedelivered,
			info.NumAckPending, info.NumPending)
	}
}

// Five messages sent at once reach three idle workers at about the same
// time: still one turn at a time, in the order they were sent. (The gather
// window is far wider than the default, 2 s: a test machine loaded by other
// packages' tests delayed claims past 300 ms.)
func TestBurstOfOneConversationAcrossWorkers(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{faults: llmsim.Faults{Latency: 50 * time.Millisecond}})
	for range 3 {
		b.start(t, func(c *Config, l *LimitsConfig) { c.GatherWait = 2 * time.Second })
	}
	for round := range 3 {
		conv := newConvID()
		var msgs []peakdesk.Message
		for i := range 5 {
			msgs = append(msgs, message(peakdesk.P2, conv, "burst "+string(rune('1'+i))))
			msgs[i].AcceptedAt = time.Now().Add(time.Duration(i) * time.Millisecond)
		}
		b.waitParked(t, 3) // the workers are idle, with parked pulls
		b.publish(t, msgs...)
		storagetest.WaitFor(t, "five answers", 20*time.Second, func() bool { return b.answered(t, ids(msgs)) == 5 })
		checkInOrder(t, b.replies(t, conv), msgs)
		if n := b.calls.max(conv); n != 1 {
			t.Fatalf("round %d: %d LLM calls of the conversation ran at once, want 1", round, n)
		}
	}
}

// A message whose conversation is held by a worker that died is stored as
// waiting and acked; once the dead worker's hold expires, the sweeper
// answers it.
func TestSweeperAnswersWaitingMessagesOfADeadHolder(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	m := message(peakdesk.P1, "", "anyone there?")
	ctx := context.Background()
	// The "dead" worker took the conversation a moment ago.
	if _, err := b.pool.Exec(ctx, `INSERT INTO conversations (id, shop_id, user_id, turn_owner, turn_until)
		VALUES ($1, 'demo', $2, 'dead-worker', now() + interval '1 second')`, m.ConversationID, m.UserID); err != nil {
		t.Fatal(err)
	}
	b.start(t, nil)
	b.publish(t, m)
	storagetest.WaitFor(t, "the answer", 20*time.Second, func() bool { return b.answered(t, []string{m.ID}) == 1 })
	var swept bool
	if err := b.pool.QueryRow(ctx, `SELECT attempts = 1 FROM messages WHERE id = $1`, m.ID).Scan(&swept); err != nil || !swept {
		t.Fatalf("attempts: %v %v", swept, err)
	}
	// The reply's event was published (by the sweeper's turn) and is no
	// longer pending.
	storagetest.WaitFor(t, "the event to be published", 10*time.Second, func() bool {
		var pending bool
		err := b.pool.QueryRow(ctx, `SELECT event_pending FROM replies r JOIN messages m ON m.reply_id = r.id
			WHERE m.id = $1`, m.ID).Scan(&pending)
		return err == nil && !pending
	})
	if n := countEvents(t, b, m.ConversationID); n != 1 {
		t.Fatalf("%d reply events, want 1", n)
	}
}

// A message redelivered after its answer was stored (the ack was lost) only
// gets its event re-published: no second LLM call, no second reply.
func TestRedeliveryOfAnAnsweredMessage(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	m := message(peakdesk.P2, "", "hello")
	w := b.start(t, nil)
	b.publish(t, m)
	storagetest.WaitFor(t, "the answer", 10*time.Second, func() bool { return b.answered(t, []string{m.ID}) == 1 })
	// The same message again, as JetStream would redeliver it (a new
	// Nats-Msg-Id, or the duplicate window would drop it).
	m2 := m
	data := mustJSON(t, m2)
	if _, err := b.js.Publish(context.Background(), queue.InSubject(m.Priority, m.ShopID), data); err != nil {
		t.Fatal(err)
	}
	storagetest.WaitFor(t, "the redelivery to be handled", 10*time.Second, func() bool {
		return testutil.ToFloat64(w.metrics.redelivered) == 1 && b.streamMsgs(t, queue.StreamIn) == 0
	})
	// The event went out again under the reply's id: JetStream keeps one.
	if n := countEvents(t, b, m.ConversationID); n != 1 {
		t.Fatalf("%d reply events, want 1", n)
	}
	if n := b.calls.len(); n != 1 {
		t.Fatalf("%d LLM calls, want 1", n)
	}
	if r := b.replies(t, m.ConversationID); len(r) != 1 {
		t.Fatalf("%d replies, want 1", len(r))
	}
}

// An LLM that is down gets the message a handoff reply (the shop has no
// FAQ) in its first turn, instead of silence or retries.
func TestLLMOutageEndsInHandoff(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{faults: llmsim.Faults{Outage: true}})
	b.start(t, nil)
	m := message(peakdesk.P0, "", "退款失败了")
	b.publish(t, m)
	storagetest.WaitFor(t, "the handoff", 20*time.Second, func() bool { return b.answered(t, []string{m.ID}) == 1 })
	r := b.replies(t, m.ConversationID)
	if len(r) != 1 || r[0].source != peakdesk.SourceHandoff || !strings.Contains(r[0].text, "人工") {
		t.Fatalf("replies %+v, want one handoff in Chinese", r)
	}
	if !b.handedOff(t, m.ConversationID) {
		t.Fatal("conversation not marked for a human")
	}
	if n := b.attempts(t, m.ID); n != 1 {
		t.Fatalf("answered in turn %d, want the first", n)
	}
	if n := b.sim.Stats().ByStatus[503]; n == 0 {
		t.Fatal("the LLM was not asked")
	}
}

func (b *testBundle) handedOff(t testing.TB, conv string) bool {
	t.Helper()
	var handoff bool
	if err := b.pool.QueryRow(context.Background(), `SELECT handoff FROM conversations WHERE id = $1`,
		conv).Scan(&handoff); err != nil {
		t.Fatal(err)
	}
	return handoff
}

// attempts returns the turns that took message id.
func (b *testBundle) attempts(t testing.TB, id string) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(context.Background(), `SELECT attempts FROM messages WHERE id = $1`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A message that used up its deliveries is copied to CHAT_DLQ with the
// reason, removed from CHAT_IN and marked failed; its conversation goes to a
// human and the customer is told so at once. Operators see its text masked.
func TestMaxDeliveriesMovesToDLQ(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{ackWait: time.Second, maxDeliver: 2})
	ctx := context.Background()
	m := message(peakdesk.P1, "", "where is my parcel? call 138\u200b1234\u200b5678")
	b.publish(t, m)
	// Some worker fails it twice (here: the test itself).
	cons, err := b.js.Consumer(ctx, queue.StreamIn, queue.ConsumerName(peakdesk.P1))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		_ = msg.Nak()
	}
	b.start(t, nil)

	var status string
	storagetest.WaitFor(t, "the message to be dead-lettered", 20*time.Second, func() bool {
		_ = b.pool.QueryRow(ctx, `SELECT status FROM messages WHERE id = $1`, m.ID).Scan(&status)
		return status == "failed" && b.streamMsgs(t, queue.StreamDLQ) == 1 && b.streamMsgs(t, queue.StreamIn) == 0
	})
	dlq, _ := b.js.Stream(ctx, queue.StreamDLQ)
	raw, err := dlq.GetLastMsgForSubject(ctx, queue.DLQSubject("demo"))
	if err != nil {
		t.Fatal(err)
	}
	if reason := raw.Header.Get(HeaderDLQReason); !strings.Contains(reason, "max deliveries (2)") {
		t.Errorf("reason header %q", reason)
	}
	if string(raw.Data) != string(mustJSON(t, m)) {
		t.Errorf("copy %s differs from the queued message", raw.Data)
	}
	var entries int
	var reason string
	if err := b.pool.QueryRow(ctx, `SELECT count(*), max(reason) FROM dlq_entries WHERE message_id = $1 AND state = 'dead'
		AND dlq_seq = $2`, m.ID, raw.Sequence).Scan(&entries, &reason); err != nil || entries != 1 {
		t.Fatalf("dlq entries %d (%v)", entries, err)
	}
	listed, err := b.db.ListDLQ(ctx, storage.DLQFilter{Scope: "demo"})
	if err != nil || len(listed) != 1 || !strings.HasSuffix(listed[0].Text, "where is my parcel? call 138****5678") {
		t.Errorf("operators' dead letters %+v %v; want the text masked", listed, err)
	}
	r := b.replies(t, m.ConversationID)
	if len(r) != 1 || r[0].source != peakdesk.SourceHandoff || len(r[0].messages) != 0 {
		t.Fatalf("replies %+v; want one handoff notice linked to no message", r)
	}
	storagetest.WaitFor(t, "the notice event", 10*time.Second, func() bool { return countEvents(t, b, m.ConversationID) == 1 })
	if b.calls.len() != 0 {
		t.Fatalf("the LLM was called %d times", b.calls.len())
	}
}

func (b *testBundle) streamMsgs(t testing.TB, name string) uint64 {
	t.Helper()
	s, err := b.js.Stream(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func countEvents(t testing.TB, b *testBundle, conv string) uint64 {
	t.Helper()
	return uint64(len(conversationEvents(t, b, conv)))
}

// conversationEvents returns the reply events of conversation conv, oldest
// first: they are on its customer's subject, named in a header.
func conversationEvents(t testing.TB, b *testBundle, conv string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := b.js.Stream(ctx, queue.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for after := uint64(0); ; {
		msg, err := s.GetMsg(ctx, after+1, jetstream.WithGetMsgSubject(queue.EventsFilter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if msg.Header.Get(queue.HeaderConversation) == conv {
			out = append(out, msg)
		}
		after = msg.Sequence
	}
}

// The trace the edge started goes on in the worker: its calls to the LLM
// carry the message's trace id (in a span of the worker's own), so the
// provider's logs can be searched by it, and so do the outbox actions its
// reply promises (here the reply webhook), for the relay's calls.
func TestTheMessagesTraceReachesTheLLM(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	if err := b.db.PutShopAPISettings(context.Background(), storage.ShopAPISettings{ShopID: "demo",
		WebhookURL: "http://127.0.0.1:9/replies", WebhookSecret: "whsec-test"}); err != nil {
		t.Fatal(err)
	}
	b.start(t, nil)
	m := message(peakdesk.P1, "", "where is my parcel")
	edge := peakdesk.ContinueTrace("")
	nm := nats.NewMsg(queue.InSubject(m.Priority, m.ShopID))
	nm.Data = mustJSON(t, m)
	nm.Header.Set(peakdesk.TraceHeader, edge.Parent)
	if _, err := b.js.PublishMsg(context.Background(), nm); err != nil {
		t.Fatal(err)
	}
	storagetest.WaitFor(t, "the answer", 15*time.Second, func() bool { return b.answered(t, []string{m.ID}) == 1 })
	calls := b.calls.snapshot()
	if len(calls) == 0 {
		t.Fatal("no LLM call")
	}
	for _, c := range calls {
		if got := peakdesk.ContinueTrace(c.trace).ID; got != edge.ID || c.trace == edge.Parent {
			t.Fatalf("LLM call with traceparent %q; want trace %s in a span of the worker's", c.trace, edge.ID)
		}
	}
	var actionTrace string
	if err := b.pool.QueryRow(context.Background(), `SELECT a.trace FROM outbox_actions a
		JOIN messages m ON m.reply_id = a.reply_id WHERE m.id = $1`, m.ID).Scan(&actionTrace); err != nil {
		t.Fatal(err)
	}
	if got := peakdesk.ContinueTrace(actionTrace).ID; got != edge.ID {
		t.Fatalf("the reply's webhook action has trace %q; want trace %s", actionTrace, edge.ID)
	}
}
