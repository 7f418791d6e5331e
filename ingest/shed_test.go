package ingest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"github.com/peakdesk/peakdesk/workers/shedwriter"
)

// A message answered from the FAQ while the edge shed keeps that answer:
// repeated with its key once the edge accepts again, it gets the same
// reply (not a second message queued, not "queued"), and GET still shows
// it before the shed writer has stored it.
func TestRepeatOfAShedAnswerGetsTheSameAnswerAfterTheShedding(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, func(c *Config) {
		c.FAQ = fixedFAQ{}
		c.Admission = AdmissionConfig{MinBacklog: 3, Refresh: 20 * time.Millisecond,
			MaxWait: map[peakdesk.Priority]time.Duration{peakdesk.P0: time.Hour, peakdesk.P1: time.Hour, peakdesk.P2: time.Nanosecond}}
	})
	u := tok(t, "shop1", b.salt+"u1")
	// A p2 backlog nobody drains, until the edge sheds.
	queued := 0
	storagetest.WaitFor(t, "the edge sheds p2", 10*time.Second, func() bool {
		r := b.do(t, "POST", "/v1/messages", u, fmt.Sprintf(`{"text":"随便问问 %d"}`, queued))
		if r.status == http.StatusAccepted {
			queued++
		}
		return r.status == http.StatusTooManyRequests
	})
	const question = `{"text":"双11满减怎么算？","client_msg_id":"k-faq"}`
	shed := b.do(t, "POST", "/v1/messages", u, question)
	reply, _ := shed.body["reply"].(map[string]any)
	if shed.status != http.StatusOK || reply == nil {
		t.Fatalf("shed FAQ question: %d %s", shed.status, shed.raw)
	}
	id := shed.body["message_id"].(string)

	// The workers catch up; the edge accepts p2 again.
	for range queued {
		b.takeMessage(t, peakdesk.P2)
	}
	storagetest.WaitFor(t, "the edge accepts p2 again", 10*time.Second, func() bool {
		r := b.do(t, "POST", "/v1/messages", u, `{"text":"还在忙吗"}`)
		if r.status == http.StatusAccepted {
			b.takeMessage(t, peakdesk.P2)
		}
		return r.status == http.StatusAccepted
	})

	again := b.do(t, "POST", "/v1/messages", u, question)
	againReply, _ := again.body["reply"].(map[string]any)
	if again.status != http.StatusOK || again.body["message_id"] != id || againReply == nil || againReply["reply_id"] != reply["reply_id"] {
		t.Errorf("repeat after the shedding: %d %s, want 200 with reply %v", again.status, again.raw, reply["reply_id"])
	}
	if g := b.do(t, "GET", "/v1/messages/"+id, u, ""); g.body["status"] != "answered" {
		t.Errorf("GET after the repeat: %s, want the shed answer", g.raw)
	}
	c, err := b.js.Consumer(context.Background(), queue.StreamIn, queue.ConsumerName(peakdesk.P2))
	if err != nil {
		t.Fatal(err)
	}
	if info, err := c.Info(context.Background()); err != nil || info.NumPending != 0 {
		t.Errorf("p2 pending %d (%v) after the repeat, want 0: the repeat queued a second message", info.NumPending, err)
	}
}

func TestNormaliseQuestion(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ in, want string }{
		{"双11满减怎么算？", "双11满减怎么算"},
		{"  Where is   my ORDER?! ", "where is my order"},
		{"where is order 20241111001", "where is order #"},
		{"where is order 20241111002", "where is order #"},
		{"coupon 12345 ok", "coupon 12345 ok"},
		{"订单2024111100123到哪了", "订单#到哪了"},
	} {
		if got := normaliseQuestion(c.in); got != c.want {
			t.Errorf("normaliseQuestion(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// countingFAQ answers "满减" questions and counts its searches; a search
// whose request is gone finds nothing.
type countingFAQ struct {
	mu       sync.Mutex
	searches int
}

func (f *countingFAQ) Answer(ctx context.Context, _, q string) (string, bool) {
	f.mu.Lock()
	f.searches++
	f.mu.Unlock()
	if ctx.Err() != nil || !strings.Contains(q, "满减") {
		return "", false
	}
	return "满300减50", true
}

func (f *countingFAQ) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.searches
}

// The edge's FAQ answers are cached per shop and normalised question —
// answers and their absence — within a bounded size; a search cut short by
// its request is not cached.
func TestFAQAnswersAreCachedAndBounded(t *testing.T) {
	t.Parallel()
	m, err := newEdgeMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	f := &countingFAQ{}
	c := newFAQAnswers(f, time.Hour, 10, 2, m)
	ctx := context.Background()
	gone, cancel := context.WithCancel(ctx)
	cancel()
	if _, ok := c.answer(gone, "shop1", "双11满减怎么算？"); ok {
		t.Fatal("a search cut short answered")
	}
	cut := f.count() // 0 or 1: a gone request may not even wait for its turn
	for _, q := range []string{"双11满减怎么算？", "  双11满减怎么算。", "双11满减怎么算!!"} {
		if a, ok := c.answer(ctx, "shop1", q); !ok || a != "满300减50" {
			t.Errorf("answer(%q) = %q, %v", q, a, ok)
		}
	}
	if _, ok := c.answer(ctx, "shop1", "随便问问"); ok {
		t.Error("an unknown question answered")
	}
	c.answer(ctx, "shop1", "随便问问")
	c.answer(ctx, "shop2", "双11满减怎么算？")
	// One search per (shop, question), the cut-short one not counting.
	if got := f.count() - cut; got != 3 {
		t.Errorf("%d searches after the cut-short one, want 3", got)
	}
	for i := range 50 {
		c.answer(ctx, "shop1", fmt.Sprintf("问题 %d 号", i))
		if n := c.len(); n > 10 {
			t.Fatalf("%d cached questions, more than the bound 10", n)
		}
	}
}

// conversationOf posts a first message for user u (before any shedding),
// stores it answered as a worker would and returns its conversation.
func (b *testBundle) conversationOf(t *testing.T, u string) string {
	t.Helper()
	r := b.do(t, "POST", "/v1/messages", u, `{"text":"你好"}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("first message: %d %s", r.status, r.raw)
	}
	m, _ := b.takeMessage(t, peakdesk.P2)
	b.answer(t, m, "您好")
	return m.ConversationID
}

// shedP2 fills p2's backlog until the edge sheds p2.
func (b *testBundle) shedP2(t *testing.T, u string) {
	t.Helper()
	n := 0
	storagetest.WaitFor(t, "the edge sheds p2", 10*time.Second, func() bool {
		n++
		return b.do(t, "POST", "/v1/messages", u, fmt.Sprintf(`{"text":"随便问问 %d"}`, n)).status == http.StatusTooManyRequests
	})
}

// shedCount is the edge's count of shed p2 messages with outcome.
func (b *testBundle) shedCount(outcome string) float64 {
	return testutil.ToFloat64(b.edge.metrics.shed.WithLabelValues("p2", outcome))
}

// While the edge sheds, a message in a conversation a human agent owns is
// queued for the agent (202, on the p2 subject for the workers, who store
// it for the agent) — never answered from the FAQ, never a shed record —
// while one in a bot conversation gets its FAQ answer as ever; once the
// agent hands the conversation back, its messages are shed like any.
func TestShedMessagesOfAConversationAHumanOwnsAreQueuedForTheAgent(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, func(c *Config) {
		c.FAQ = fixedFAQ{}
		c.Admission = AdmissionConfig{MinBacklog: 3, Refresh: 20 * time.Millisecond,
			MaxWait: map[peakdesk.Priority]time.Duration{peakdesk.P0: time.Hour, peakdesk.P1: time.Hour, peakdesk.P2: time.Nanosecond}}
	})
	ctx := context.Background()
	human, bot := tok(t, "shop1", b.salt+"u1"), tok(t, "shop1", b.salt+"u2")
	humanConv, botConv := b.conversationOf(t, human), b.conversationOf(t, bot)
	ann := storage.DeskActor{Agent: "ann", Scope: "shop1", Via: "test"}
	if _, _, err := b.db.ClaimForAgent(ctx, ann, humanConv); err != nil {
		t.Fatal(err)
	}
	storagetest.WaitFor(t, "the edge knows the agent has the conversation", 10*time.Second, func() bool {
		h, known := b.edge.humans.owns("shop1", humanConv)
		return h && known
	})
	b.shedP2(t, bot)
	in, err := b.js.Stream(ctx, queue.StreamIn)
	if err != nil {
		t.Fatal(err)
	}

	const question = `{"text":"双11满减怎么算？","conversation_id":%q}`
	r := b.do(t, "POST", "/v1/messages?wait=2s", human, fmt.Sprintf(question, humanConv))
	if r.status != http.StatusAccepted || r.body["status"] != "queued" || r.body["reply"] != nil {
		t.Fatalf("shed message of the agent's conversation: %d %s; want 202 queued, no answer", r.status, r.raw)
	}
	last, err := in.GetLastMsgForSubject(ctx, queue.InSubject(peakdesk.P2, "shop1"))
	if err != nil || !strings.Contains(string(last.Data), r.body["message_id"].(string)) {
		t.Errorf("the message is not the last on the p2 subject: %v", err)
	}
	if _, err := in.GetLastMsgForSubject(ctx, queue.ShedSubject("shop1")); err == nil {
		t.Errorf("a shed record was published for the agent's conversation")
	}
	if n := b.shedCount("human"); n != 1 {
		t.Errorf("shed human %v, want 1", n)
	}

	r = b.do(t, "POST", "/v1/messages", bot, fmt.Sprintf(question, botConv))
	if r.status != http.StatusOK || r.body["reply"] == nil {
		t.Fatalf("shed message of the bot's conversation: %d %s; want 200 with the FAQ answer", r.status, r.raw)
	}

	if _, err := b.db.HandBack(ctx, ann, humanConv); err != nil {
		t.Fatal(err)
	}
	storagetest.WaitFor(t, "the edge knows the bot has the conversation again", 10*time.Second, func() bool {
		h, known := b.edge.humans.owns("shop1", humanConv)
		return !h && known
	})
	r = b.do(t, "POST", "/v1/messages", human, `{"text":"满减还有吗","conversation_id":"`+humanConv+`"}`)
	if r.status != http.StatusOK || r.body["reply"] == nil {
		t.Errorf("shed message after the handback: %d %s; want 200 with the FAQ answer", r.status, r.raw)
	}
}

// While the edge does not know which conversations humans own (its
// listening connection lost), a shed message naming a conversation gets
// 429, never an FAQ answer; a new conversation's is answered as ever.
func TestShedMessagesGet429WhileTheEdgeDoesNotKnowWhoOwnsTheConversation(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, func(c *Config) {
		c.FAQ = fixedFAQ{}
		c.Admission = AdmissionConfig{MinBacklog: 3, Refresh: 20 * time.Millisecond,
			MaxWait: map[peakdesk.Priority]time.Duration{peakdesk.P0: time.Hour, peakdesk.P1: time.Hour, peakdesk.P2: time.Nanosecond}}
	})
	ctx := context.Background()
	u := tok(t, "shop1", b.salt+"u1")
	conv := b.conversationOf(t, u)
	b.shedP2(t, u)
	if _, known := b.edge.humans.owns("shop1", conv); !known {
		t.Fatal("the edge does not follow the takeover state after starting")
	}
	// Lose the listening connection, and do not come back within the test.
	b.edge.humans.mu.Lock()
	b.edge.humans.backoff = peakdesk.LinearBackOff{Step: time.Hour}
	b.edge.humans.mu.Unlock()
	if err := b.db.Tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND query LIKE 'SELECT shop_id, id FROM conversations WHERE state IN%'
			AND pid <> pg_backend_pid()`)
		if err == nil && tag.RowsAffected() != 1 {
			err = fmt.Errorf("terminated %d listeners, want 1", tag.RowsAffected())
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	storagetest.WaitFor(t, "the edge knows it does not know", 10*time.Second, func() bool {
		_, known := b.edge.humans.owns("shop1", conv)
		return !known
	})
	r := b.do(t, "POST", "/v1/messages", u, `{"text":"双11满减怎么算？","conversation_id":"`+conv+`"}`)
	if r.status != http.StatusTooManyRequests {
		t.Errorf("shed message naming a conversation: %d %s; want 429", r.status, r.raw)
	}
	if n := b.shedCount("unknown_owner"); n != 1 {
		t.Errorf("shed unknown_owner %v, want 1", n)
	}
	r = b.do(t, "POST", "/v1/messages", u, `{"text":"双11满减怎么算？"}`)
	if r.status != http.StatusOK || r.body["reply"] == nil {
		t.Errorf("shed message of a new conversation: %d %s; want 200 with the FAQ answer", r.status, r.raw)
	}
}

// An order question shed in the moment between an agent's takeover and the
// edge hearing of it is told "checking" (the edge did not know), but the
// shed writer finds the conversation a human's: the message is stored for
// the agent, and neither the answer nor its follow-up is — the facts are
// not pushed into a human's conversation.
func TestAShedOrderQuestionRacingATakeoverIsLeftToTheAgent(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, func(c *Config) {
		c.Orders, c.FAQ = shedOrders{}, fixedFAQ{}
		c.Admission = AdmissionConfig{MinBacklog: 3, Refresh: 20 * time.Millisecond,
			MaxWait: map[peakdesk.Priority]time.Duration{peakdesk.P0: time.Hour, peakdesk.P1: time.Nanosecond, peakdesk.P2: time.Nanosecond}}
	})
	ctx := context.Background()
	u := tok(t, "shop1", b.salt+"u1")
	conv := b.conversationOf(t, u)
	if _, _, err := b.db.ClaimForAgent(ctx, storage.DeskActor{Agent: "ann", Scope: "shop1", Via: "test"}, conv); err != nil {
		t.Fatal(err)
	}
	storagetest.WaitFor(t, "the edge knows the agent has the conversation", 10*time.Second, func() bool {
		h, _ := b.edge.humans.owns("shop1", conv)
		return h
	})
	// As if the edge had not heard of the takeover yet.
	b.edge.humans.mu.Lock()
	delete(b.edge.humans.owned, ownerKey("shop1", conv))
	b.edge.humans.mu.Unlock()
	// An order question is p1: a p1 backlog until the edge sheds p1.
	other, n := tok(t, "shop1", b.salt+"u2"), 0
	storagetest.WaitFor(t, "the edge sheds p1", 10*time.Second, func() bool {
		n++
		return b.do(t, "POST", "/v1/messages", other, fmt.Sprintf(`{"text":"快递到哪了 %d"}`, n)).status == http.StatusTooManyRequests
	})

	r := b.do(t, "POST", "/v1/messages", u, `{"text":"我的订单1234567满减到哪了","conversation_id":"`+conv+`"}`)
	if r.status != http.StatusOK || r.body["status"] != "answered" {
		t.Fatalf("shed order question the edge thinks the bot's: %d %s; want 200 checking", r.status, r.raw)
	}
	w, err := shedwriter.New(shedwriter.Config{JS: b.js, DB: b.db, Webhook: outbox.ReplyWebhook,
		Logger: storagetest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	id := r.body["message_id"].(string)
	storagetest.WaitFor(t, "the writer stores the message", 10*time.Second, func() bool {
		_, err := b.db.Message(ctx, "shop1", id)
		return err == nil
	})
	rec, err := b.db.Message(ctx, "shop1", id)
	if err != nil || rec.Status != peakdesk.StatusQueued || rec.Reply != nil {
		t.Errorf("message %+v %v; want stored for the agent, unanswered", rec, err)
	}
	in, err := b.db.Inbox(ctx, "shop1", "ann", 10)
	if err != nil || len(in.Mine) != 1 || in.Mine[0].Pending != 1 {
		t.Errorf("agent's inbox %+v (%v); want the question pending", in, err)
	}
	acts, err := b.db.ListActions(ctx, "shop1", storage.ActionFilter{Kind: peakdesk.ActionOrderFollowUp}, 0, 10)
	if err != nil || len(acts) != 0 {
		t.Errorf("follow-ups %+v (%v); want none in a human's conversation", acts, err)
	}
}

// A shed message retried with its key after CHAT_IN's duplicate window —
// when JetStream no longer knows the id — gets the answer it got and that
// the shed writer stored (same reply id and text), not a new one the
// writer would drop as a repeat; exactly one reply is stored and no second
// shed record is published.
func TestAKeyedRetryOfAShedAnswerAfterTheDuplicateWindowGetsTheStoredAnswer(t *testing.T) {
	t.Parallel()
	const window = time.Second
	b := setup(t, queue.Topology{DuplicateWindow: window}, func(c *Config) {
		c.FAQ = fixedFAQ{}
		c.Admission = AdmissionConfig{MinBacklog: 3, Refresh: 20 * time.Millisecond,
			MaxWait: map[peakdesk.Priority]time.Duration{peakdesk.P0: time.Hour, peakdesk.P1: time.Hour, peakdesk.P2: time.Nanosecond}}
	})
	ctx := context.Background()
	u := tok(t, "shop1", b.salt+"u1")
	b.shedP2(t, u)
	reg := prometheus.NewRegistry()
	w, err := shedwriter.New(shedwriter.Config{JS: b.js, DB: b.db, Webhook: outbox.ReplyWebhook,
		Logger: storagetest.Logger(t), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)

	const question = `{"text":"双11满减怎么算？","client_msg_id":"k-late"}`
	first := b.do(t, "POST", "/v1/messages", u, question)
	reply, _ := first.body["reply"].(map[string]any)
	if first.status != http.StatusOK || reply == nil {
		t.Fatalf("shed FAQ question: %d %s", first.status, first.raw)
	}
	id := first.body["message_id"].(string)
	storagetest.WaitFor(t, "the writer stores the answer", 10*time.Second, func() bool {
		r, err := b.db.ReplyFor(ctx, "shop1", id)
		return err == nil && r.ID == reply["reply_id"]
	})
	// Past the window: a probe published with the first one's time is no
	// longer a duplicate (JetStream forgets ids a little after the window).
	probe := func() bool {
		msg := nats.NewMsg(queue.InSubject(peakdesk.P0, "probe"))
		msg.Header.Set(jetstream.MsgIDHeader, "probe-"+id)
		ack, err := b.js.PublishMsg(ctx, msg)
		return err == nil && !ack.Duplicate
	}
	if !probe() {
		t.Fatal("the probe's first publish was a duplicate")
	}
	storagetest.WaitFor(t, "CHAT_IN's duplicate window passes", 20*window, probe)

	again := b.do(t, "POST", "/v1/messages", u, question)
	againReply, _ := again.body["reply"].(map[string]any)
	if again.status != http.StatusOK || again.body["message_id"] != id || againReply == nil ||
		againReply["reply_id"] != reply["reply_id"] || againReply["text"] != reply["text"] {
		t.Errorf("retry after the window: %d %s; want 200 with reply %v %q", again.status, again.raw,
			reply["reply_id"], reply["text"])
	}
	// Whatever was published is settled by the writer before the counts.
	c, err := b.js.Consumer(ctx, queue.StreamIn, queue.ConsumerShedWriter)
	if err != nil {
		t.Fatal(err)
	}
	storagetest.WaitFor(t, "the writer is done", 10*time.Second, func() bool {
		ci, err := c.Info(ctx)
		return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0
	})
	if got := writerRecords(t, reg); got != "stored=1" {
		t.Errorf("shed records the writer settled: %s, want stored=1 (one shed record)", got)
	}
	var replies int
	if err := b.db.Tx(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT count(*) FROM replies WHERE shop_id = 'shop1' AND conversation_id = $1`,
			first.body["conversation_id"]).Scan(&replies)
	}); err != nil {
		t.Fatal(err)
	}
	if replies != 1 {
		t.Errorf("%d replies stored, want 1", replies)
	}
	if g := b.do(t, "GET", "/v1/messages/"+id, u, ""); g.body["status"] != "answered" {
		t.Errorf("GET after the retry: %s, want answered", g.raw)
	}
}

// writerRecords lists the shed writer's settled records by outcome.
func writerRecords(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range fams {
		if f.GetName() != "peakdesk_shed_writer_records_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			out = append(out, fmt.Sprintf("%s=%v", m.GetLabel()[0].GetValue(), m.GetCounter().GetValue()))
		}
	}
	return strings.Join(out, " ")
}
