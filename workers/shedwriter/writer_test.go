package shedwriter_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

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

type testBundle struct {
	db *storage.DB
	js jetstream.JetStream
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	ctx := context.Background()
	js := storagetest.JetStream(t)
	db := storagetest.DB(t)
	if err := db.EnsureShop(ctx, "shop1", "shop1"); err != nil {
		t.Fatal(err)
	}
	if err := db.PutShopAPISettings(ctx, storage.ShopAPISettings{ShopID: "shop1", WebhookURL: "http://127.0.0.1:9/hooks"}); err != nil {
		t.Fatal(err)
	}
	return &testBundle{db: db, js: js}
}

// publish publishes the shed record of message n as the edge does; with
// msgID false it leaves out the Nats-Msg-Id, so a second publish is a
// second copy (as a redelivery, or a repeat after the duplicate window).
func (b *testBundle) publish(t *testing.T, n int, msgID bool) *peakdesk.Message {
	t.Helper()
	m := &peakdesk.Message{ID: fmt.Sprintf("%032x", n), ShopID: "shop1", ConversationID: fmt.Sprintf("c%031x", n%7),
		UserID: fmt.Sprintf("u%d", n%7), Text: "双11满减怎么算？", Priority: peakdesk.P2, AcceptedAt: time.Now().UTC()}
	r := &peakdesk.Reply{ID: fmt.Sprintf("r%031x", n), ShopID: "shop1", ConversationID: m.ConversationID,
		MessageIDs: []string{m.ID}, Text: "满300减50", Source: peakdesk.SourceFAQ, CreatedAt: time.Now().UTC()}
	data, err := queue.EncodeShed(m, r)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg(queue.ShedSubject("shop1"))
	msg.Data = data
	if msgID {
		msg.Header.Set(jetstream.MsgIDHeader, m.ID)
	}
	if _, err := b.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	return m
}

func (b *testBundle) start(t *testing.T, reg prometheus.Registerer, maxBatch int) *shedwriter.Writer {
	t.Helper()
	return b.startWith(t, shedwriter.Config{Webhook: outbox.ReplyWebhook, MaxBatch: maxBatch, Registerer: reg})
}

func (b *testBundle) startWith(t *testing.T, cfg shedwriter.Config) *shedwriter.Writer {
	t.Helper()
	cfg.JS, cfg.DB, cfg.Logger = b.js, b.db, storagetest.Logger(t)
	w, err := shedwriter.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return w
}

func (b *testBundle) pending(t *testing.T) uint64 {
	t.Helper()
	c, err := b.js.Consumer(context.Background(), queue.StreamIn, queue.ConsumerShedWriter)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.NumPending + uint64(info.NumAckPending)
}

// Every shed answer is stored exactly once — message, reply, webhook, event
// — across a writer that stops half way and another that takes over, and
// copies of the same records.
func TestShedAnswersAreStoredExactlyOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const n = 300
	var msgs []*peakdesk.Message
	for i := range n / 2 {
		msgs = append(msgs, b.publish(t, i, true))
	}
	first := b.start(t, prometheus.NewRegistry(), 16)
	for i := n / 2; i < n; i++ {
		msgs = append(msgs, b.publish(t, i, true))
	}
	first.Stop()
	// Copies of 20 records (no message id, so JetStream keeps them).
	for i := range 20 {
		b.publish(t, i*7, false)
	}
	reg := prometheus.NewRegistry()
	b.start(t, reg, 64)
	storagetest.WaitFor(t, "every record settled", 20*time.Second, func() bool { return b.pending(t) == 0 })

	for _, m := range msgs {
		rec, err := b.db.Message(ctx, "shop1", m.ID)
		if err != nil || rec.Status != peakdesk.StatusAnswered || rec.Reply == nil || rec.Reply.ID != fmt.Sprintf("r%031x", mustHex(m.ID)) {
			t.Fatalf("message %s: %+v, %v", m.ID, rec, err)
		}
	}
	hooks, err := b.db.ListActions(ctx, "shop1", storage.ActionFilter{Kind: peakdesk.ActionWebhookDeliver}, 0, 2*n)
	if err != nil || len(hooks) != n {
		t.Errorf("%d webhook actions (%v), want %d", len(hooks), err, n)
	}
	events, err := b.js.Stream(ctx, queue.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := events.Info(ctx)
	if err != nil || info.State.Msgs != n {
		t.Errorf("%d reply events (%v), want %d (one per reply)", info.State.Msgs, err, n)
	}
	// Each event is on its customer's subject (the reply's UserID comes
	// from the record's message), where the customer's stream reads it.
	for _, m := range msgs[:3] {
		want := fmt.Sprintf("r%031x", mustHex(m.ID))
		found := false
		for seq := uint64(0); !found; {
			ev, err := queue.NextReplyEvent(ctx, events, "shop1", m.UserID, m.ConversationID, seq)
			if err != nil {
				break
			}
			found, seq = strings.Contains(string(ev.Data), want), ev.Sequence
		}
		if !found {
			t.Errorf("no reply event of %s on customer %s's subject", want, m.UserID)
		}
	}
	// The second writer's copies were stored before: stored (their
	// events again), never a second answer.
	if got := testutil.ToFloat64(mustCounter(t, reg, "stored")); got < 20 {
		t.Errorf("second writer stored %v records, want at least the 20 copies", got)
	}
}

func mustHex(id string) int {
	var n int
	_, _ = fmt.Sscanf(id, "%x", &n)
	return n
}

func mustCounter(t *testing.T, reg *prometheus.Registry, outcome string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "peakdesk_shed_writer_records_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
					c.Add(m.GetCounter().GetValue())
					return c
				}
			}
		}
	}
	return prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
}

// A record that can never be stored holds back no other: its batch is
// split until it is alone, and it alone waits to be retried — never dropped.
func TestAShedAnswerThatCannotBeStoredHoldsBackNoOther(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const n, poison = 64, 37
	var msgs []*peakdesk.Message
	for i := range n {
		msgs = append(msgs, b.publish(t, i, true))
	}
	poisonReply := fmt.Sprintf("r%031x", poison)
	// A failed record is not delivered again within the test: every record
	// is stored by the attempt that fetched it, or not at all.
	b.startWith(t, shedwriter.Config{MaxBatch: n, RetryDelay: time.Hour,
		Webhook: func(r *peakdesk.Reply) (peakdesk.Action, error) {
			if r.ID == poisonReply {
				return peakdesk.Action{}, fmt.Errorf("no webhook for reply %s", r.ID)
			}
			return outbox.ReplyWebhook(r)
		}})
	for i, m := range msgs {
		if i == poison {
			continue
		}
		storagetest.WaitFor(t, "message "+m.ID+" stored", 20*time.Second, func() bool {
			rec, err := b.db.Message(ctx, "shop1", m.ID)
			return err == nil && rec.Status == peakdesk.StatusAnswered
		})
	}
	if _, err := b.db.Message(ctx, "shop1", msgs[poison].ID); err == nil {
		t.Errorf("the record that cannot be stored was stored")
	}
	storagetest.WaitFor(t, "only the poison record left", 10*time.Second, func() bool { return b.pending(t) == 1 })
}

// publishRecord publishes the shed record of m answered by r, with no
// Nats-Msg-Id (so each call is another copy, as a redelivery).
func (b *testBundle) publishRecord(t *testing.T, m *peakdesk.Message, r *peakdesk.Reply) {
	t.Helper()
	data, err := queue.EncodeShed(m, r)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg(queue.ShedSubject(m.ShopID))
	msg.Data = data
	if _, err := b.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// A shed message on a conversation a human agent took over after the edge
// answered it goes to the agent, once however many copies come: in the
// agent's inbox, announced (message.created webhook, live desk message),
// its FAQ answer neither stored nor published. A bot conversation's shed
// answer is stored as ever.
func TestAShedMessageOnAConversationAHumanOwnsGoesToTheAgent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	conv := fmt.Sprintf("cafe%028x", 1)
	now := time.Now().UTC()
	msg := func(n int, text string) (*peakdesk.Message, *peakdesk.Reply) {
		m := &peakdesk.Message{ID: fmt.Sprintf("%032x", 5000+n), ShopID: "shop1", ConversationID: conv, UserID: "uh",
			Text: text, Priority: peakdesk.P2, AcceptedAt: now}
		return m, &peakdesk.Reply{ID: fmt.Sprintf("r%031x", 5000+n), ShopID: "shop1", ConversationID: conv,
			MessageIDs: []string{m.ID}, Text: "满300减50", Source: peakdesk.SourceFAQ, CreatedAt: now}
	}
	// The bot's conversation, then an agent takes it over.
	first, firstReply := msg(1, "双11满减怎么算？")
	if _, err := b.db.SaveShedAnswers(ctx, []storage.ShedAnswer{{Message: first, Reply: firstReply}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.db.ClaimForAgent(ctx, storage.DeskActor{Agent: "ann", Scope: "shop1", Via: "test"}, conv); err != nil {
		t.Fatal(err)
	}
	live, err := b.js.Conn().SubscribeSync(queue.DeskSubject("shop1", conv))
	if err != nil {
		t.Fatal(err)
	}
	m, r := msg(2, "满减能和优惠券一起用吗")
	b.publishRecord(t, m, r)
	b.publishRecord(t, m, r) // a copy, as a redelivered record
	other := b.publish(t, 3, true)

	reg := prometheus.NewRegistry()
	b.start(t, reg, 16)
	storagetest.WaitFor(t, "every record settled", 20*time.Second, func() bool { return b.pending(t) == 0 })

	rec, err := b.db.Message(ctx, "shop1", m.ID)
	if err != nil || rec.Status != peakdesk.StatusQueued || rec.Reply != nil {
		t.Fatalf("message %+v, %v; want queued for the agent", rec, err)
	}
	in, err := b.db.Inbox(ctx, "shop1", "ann", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Mine) != 1 || in.Mine[0].ConversationID != conv || in.Mine[0].Pending != 1 || in.Mine[0].LastText != m.Text {
		t.Errorf("agent's inbox %+v; want the conversation with the shed message pending", in.Mine)
	}
	c, err := b.db.Conversation(ctx, "shop1", conv)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Replies) != 1 || c.Replies[0].ID != firstReply.ID {
		t.Errorf("conversation replies %+v; want only the answer given before the takeover", c.Replies)
	}
	events, err := b.js.Stream(ctx, queue.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := queue.ConversationEvents(ctx, events, "shop1", conv)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if strings.Contains(string(ev.Data), r.ID) {
			t.Errorf("the unstored answer's event was published: %s", ev.Data)
		}
	}
	hooks, err := b.db.ListActions(ctx, "shop1", storage.ActionFilter{Kind: peakdesk.ActionWebhookDeliver}, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	created := 0
	for _, h := range hooks {
		if h.ReplyID == r.ID {
			t.Errorf("a webhook of the unstored answer: %s", h.Payload)
		}
		if strings.Contains(string(h.Payload), `"message.created"`) && strings.Contains(string(h.Payload), m.ID) {
			created++
		}
	}
	if created != 1 {
		t.Errorf("%d message.created webhooks of the shed message, want 1", created)
	}
	got, err := live.NextMsg(5 * time.Second)
	if err != nil || !strings.Contains(string(got.Data), m.ID) {
		t.Errorf("live desk message: %v %v; want the shed message", got, err)
	}
	if n := testutil.ToFloat64(mustCounter(t, reg, "human")); n != 2 {
		t.Errorf("%v records settled human, want both copies", n)
	}
	if rec, err := b.db.Message(ctx, "shop1", other.ID); err != nil || rec.Status != peakdesk.StatusAnswered {
		t.Errorf("the bot conversation's shed answer: %+v, %v; want answered", rec, err)
	}
}
