package workers

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// countingMsg is a real JetStream message that notes every verdict told
// about it, passing each on to the server.
type countingMsg struct {
	jetstream.Msg
	mu    sync.Mutex
	final []string // ack, nak, term, in the order told
	beats int      // in progress
}

func (m *countingMsg) note(v string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.final = append(m.final, v)
}

func (m *countingMsg) Ack() error { m.note("ack"); return m.Msg.Ack() }
func (m *countingMsg) DoubleAck(ctx context.Context) error {
	m.note("ack")
	return m.Msg.DoubleAck(ctx)
}
func (m *countingMsg) Nak() error { m.note("nak"); return m.Msg.Nak() }
func (m *countingMsg) NakWithDelay(d time.Duration) error {
	m.note("nak")
	return m.Msg.NakWithDelay(d)
}
func (m *countingMsg) Term() error { m.note("term"); return m.Msg.Term() }
func (m *countingMsg) TermWithReason(r string) error {
	m.note("term")
	return m.Msg.TermWithReason(r)
}
func (m *countingMsg) InProgress() error {
	m.mu.Lock()
	m.beats++
	m.mu.Unlock()
	return m.Msg.InProgress()
}

// verdicts returns the final verdicts told so far.
func (m *countingMsg) verdicts() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.final)
}

// next fetches the next message of the consumer of stream, counted.
func (b *testBundle) next(t *testing.T, stream, consumer string) *countingMsg {
	t.Helper()
	cons, err := b.js.Consumer(context.Background(), stream, consumer)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatalf("fetch from %s: %v", consumer, err)
	}
	return &countingMsg{Msg: msg}
}

// nextQueued fetches the next queued message of priority p.
func (b *testBundle) nextQueued(t *testing.T, p peakdesk.Priority) *countingMsg {
	t.Helper()
	return b.next(t, queue.StreamIn, queue.ConsumerName(p))
}

func wantVerdicts(t *testing.T, what string, m *countingMsg, want ...string) {
	t.Helper()
	if got := m.verdicts(); !slices.Equal(got, want) {
		t.Fatalf("%s: verdicts %v, want exactly %v", what, got, want)
	}
}

// Each queued message gets exactly one verdict, decided by its handler and
// told once, whatever happens to it: answered, answered before (a
// redelivery), waiting for its conversation, undecodable, or handed back
// when the worker stops.
func TestEachQueuedMessageGetsOneVerdict(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	w := b.worker(t, nil)
	ctx := context.Background()
	process := func(ctx context.Context, m *countingMsg) { w.process(ctx, m, nil, func() {}) }

	// Answered: stored, its reply published, acked.
	m := message(peakdesk.P1, "", "hello")
	b.publish(t, m)
	answered := b.nextQueued(t, peakdesk.P1)
	process(ctx, answered)
	wantVerdicts(t, "an answered message", answered, "ack")
	if b.answered(t, []string{m.ID}) != 1 {
		t.Fatal("acked without an answer")
	}

	// Delivered again after its answer (the ack was lost): the event again,
	// acked, no second answer.
	if _, err := b.js.Publish(ctx, queue.InSubject(m.Priority, m.ShopID), mustJSON(t, m)); err != nil {
		t.Fatal(err)
	}
	again := b.nextQueued(t, peakdesk.P1)
	process(ctx, again)
	wantVerdicts(t, "a redelivery of an answered message", again, "ack")
	if n := b.calls.len(); n != 1 {
		t.Fatalf("%d LLM calls, want 1", n)
	}

	// Waiting: another worker holds the conversation; stored and acked.
	waiting := message(peakdesk.P1, "", "anyone there?")
	if _, err := b.pool.Exec(ctx, `INSERT INTO conversations (id, shop_id, user_id, turn_owner, turn_until)
		VALUES ($1, 'demo', $2, 'another-worker', now() + interval '1 minute')`,
		waiting.ConversationID, waiting.UserID); err != nil {
		t.Fatal(err)
	}
	b.publish(t, waiting)
	held := b.nextQueued(t, peakdesk.P1)
	process(ctx, held)
	wantVerdicts(t, "a message waiting for its conversation", held, "ack")

	// Undecodable: terminated.
	if _, err := b.js.Publish(ctx, queue.InSubject(peakdesk.P2, "demo"), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	garbage := b.nextQueued(t, peakdesk.P2)
	process(ctx, garbage)
	wantVerdicts(t, "an undecodable message", garbage, "term")

	// Stopping before it could be stored: handed back at once.
	stopping := message(peakdesk.P0, "", "refund failed")
	b.publish(t, stopping)
	back := b.nextQueued(t, peakdesk.P0)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	process(cancelled, back)
	wantVerdicts(t, "a message taken by a stopping worker", back, "nak")
}

// The subtle one: the queued message behind a turn is acked once the turn
// is stored, and the turn that queued up meanwhile is answered afterwards
// in the same slot — without a second verdict for the first message; the
// message that queued up got its own (ack: stored, waiting).
func TestFurtherTurnsDoNotSettleTheFirstMessageAgain(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{faults: llmsim.Faults{Latency: 300 * time.Millisecond}})
	w := b.worker(t, nil)
	conv := newConvID()
	first, second := message(peakdesk.P1, conv, "question 1"), message(peakdesk.P1, conv, "question 2")
	second.AcceptedAt = first.AcceptedAt.Add(time.Millisecond)
	b.publish(t, first)
	head := b.nextQueued(t, peakdesk.P1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.process(context.Background(), head, nil, func() {})
	}()
	storagetest.WaitFor(t, "the first turn's LLM call", 10*time.Second, func() bool { return b.calls.len() == 1 })
	b.publish(t, second)
	queued := b.nextQueued(t, peakdesk.P1)
	w.process(context.Background(), queued, nil, func() {})
	wantVerdicts(t, "the message that queued up", queued, "ack")
	<-done
	wantVerdicts(t, "the first message", head, "ack")
	replies := b.replies(t, conv)
	checkInOrder(t, replies, []peakdesk.Message{first, second})
	if len(replies) != 2 {
		t.Fatalf("replies %+v; want one per turn", replies)
	}
}

// A worker asked to stop in the middle of a turn hands the message back at
// once (one nak) and releases the conversation for another worker.
func TestStopMidTurnHandsTheMessageBackOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{faults: llmsim.Faults{Latency: 5 * time.Second}})
	w := b.worker(t, nil)
	m := message(peakdesk.P1, "", "where is my parcel")
	b.publish(t, m)
	msg := b.nextQueued(t, peakdesk.P1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.process(ctx, msg, nil, func() {})
	}()
	storagetest.WaitFor(t, "the LLM call", 10*time.Second, func() bool { return b.calls.len() == 1 })
	cancel()
	<-done
	wantVerdicts(t, "a message whose turn was cut short", msg, "nak")
	var owner *string
	if err := b.pool.QueryRow(context.Background(), `SELECT turn_owner FROM conversations WHERE id = $1`,
		m.ConversationID).Scan(&owner); err != nil || owner != nil {
		t.Fatalf("conversation held by %v (%v); want it released", owner, err)
	}
}

// Messages the scheduler fetched but never started are handed back when
// the worker stops, once each.
func TestHeldMessagesAreHandedBackOnceOnStop(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	w := b.worker(t, nil)
	b.publish(t, message(peakdesk.P2, "", "a"), message(peakdesk.P2, "", "b"))
	s := newScheduler(w)
	msgs := []*countingMsg{b.nextQueued(t, peakdesk.P2), b.nextQueued(t, peakdesk.P2)}
	for _, m := range msgs {
		s.held[2] = append(s.held[2], heldMsg{msg: m, beatAt: time.Now()})
	}
	s.beatHeld() // too early for a beat: nothing told
	s.releaseHeld()
	for _, m := range msgs {
		wantVerdicts(t, "a held message", m, "nak")
		if m.beats != 0 {
			t.Fatalf("%d beats for a message held a moment", m.beats)
		}
	}
}

// A max-deliveries advisory gets one verdict too: term when it cannot be
// read, ack once its message is dealt with (here: gone already).
func TestEachAdvisoryGetsOneVerdict(t *testing.T) {
	t.Parallel()
	b := setup(t, bundleOpts{})
	w := b.worker(t, nil)
	subject := "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + queue.StreamIn + "." + queue.ConsumerName(peakdesk.P1)
	for _, data := range []string{`not json`, `{"stream":"CHAT_IN","consumer":"workers-p1","stream_seq":999,"deliveries":5}`} {
		if err := b.js.Conn().Publish(subject, []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.js.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	garbage := b.next(t, queue.StreamAdvisories, queue.ConsumerDeadLetters)
	w.settle(w.log, garbage, w.handleAdvisory(garbage))
	wantVerdicts(t, "an undecodable advisory", garbage, "term")
	gone := b.next(t, queue.StreamAdvisories, queue.ConsumerDeadLetters)
	w.settle(w.log, gone, w.handleAdvisory(gone))
	wantVerdicts(t, "the advisory of a message gone already", gone, "ack")
}
