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
	ns := storagetest.NATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := queue.EnsureTopology(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
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
