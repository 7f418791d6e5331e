package retention_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/retention"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// testBundle is a fresh database with shops "short" (the default 30 days)
// and "long" (365 days), and a raw pool to age rows and read them back.
type testBundle struct {
	db   *storage.DB
	pool *pgxpool.Pool
	n    int
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	ctx := context.Background()
	url := storagetest.DatabaseURL(t)
	db, err := storage.Open(ctx, url, 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	for _, s := range []string{"short", "long"} {
		if err := db.EnsureShop(ctx, s, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.SetShopRetention(ctx, "long", 365); err != nil {
		t.Fatal(err)
	}
	return &testBundle{db: db, pool: pool}
}

// chat stores a message of shop answered by a reply, both stored age ago,
// and returns their ids.
func (b *testBundle) chat(t *testing.T, shop string, age time.Duration, question, answer string) (msg, reply string) {
	t.Helper()
	ctx := context.Background()
	b.n++
	m := &peakdesk.Message{ID: fmt.Sprintf("%032x", b.n), ShopID: shop, ConversationID: fmt.Sprintf("c%031x", b.n),
		UserID: "u1", Text: question, Priority: peakdesk.P2, AcceptedAt: time.Now().UTC().Add(-age)}
	r := &peakdesk.Reply{ID: fmt.Sprintf("reply-%d", b.n), ShopID: shop, ConversationID: m.ConversationID,
		MessageIDs: []string{m.ID}, Text: answer, Source: peakdesk.SourceLLM}
	if _, existed, err := b.db.SaveAnsweredMessage(ctx, m, r, nil); err != nil || existed {
		t.Fatalf("store chat: existed=%v err=%v", existed, err)
	}
	for _, q := range []string{`UPDATE messages SET created_at = now() - $2::interval WHERE id = $1`,
		`UPDATE replies SET created_at = now() - $2::interval WHERE id = $1`} {
		id := m.ID
		if strings.Contains(q, "replies") {
			id = r.ID
		}
		if _, err := b.pool.Exec(ctx, q, id, age); err != nil {
			t.Fatal(err)
		}
	}
	return m.ID, r.ID
}

// row is a stored text and whether it was redacted.
type row struct {
	text     string
	redacted bool
	at       time.Time
}

func (b *testBundle) row(t *testing.T, table, id string) row {
	t.Helper()
	var r row
	var at *time.Time
	if err := b.pool.QueryRow(context.Background(), `SELECT text, redacted_at FROM `+table+` WHERE id = $1`, id).
		Scan(&r.text, &at); err != nil {
		t.Fatal(err)
	}
	if at != nil {
		r.redacted, r.at = true, *at
	}
	return r
}

func newRedactor(t *testing.T, b *testBundle, cfg retention.Config) *retention.Redactor {
	t.Helper()
	cfg.DB = b.db
	r, err := retention.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

const day = 24 * time.Hour

// After a shop's retention a message's and a reply's text are replaced by
// their masked form, once; younger rows, and rows of a shop with a longer
// retention, keep their words.
func TestExpiredTextsAreMaskedOnceByShopRetention(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const (
		question = "退款，手机138\u200b1234\u200b5678，身份证110105491231002"
		answer   = "好的，我们会致电13812345678"
	)
	oldMsg, oldReply := b.chat(t, "short", 31*day, question, answer)
	plainMsg, plainReply := b.chat(t, "short", 40*day, "where is my parcel", "on its way")
	youngMsg, youngReply := b.chat(t, "short", 29*day, question, answer)
	longMsg, longReply := b.chat(t, "long", 31*day, question, answer)
	ancientMsg, ancientReply := b.chat(t, "long", 400*day, question, answer)

	reg := prometheus.NewRegistry()
	// A batch of 2 makes the run take the 3 expired rows of each table in
	// two statements.
	res, err := newRedactor(t, b, retention.Config{BatchSize: 2, Registerer: reg}).RunOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res != (retention.Result{Messages: 3, Replies: 3}) {
		t.Errorf("first run %+v, want 3 messages and 3 replies", res)
	}
	for _, id := range []string{oldMsg, ancientMsg} {
		if got := b.row(t, "messages", id); got.text != "退款，手机138****5678，身份证***********1002" || !got.redacted {
			t.Errorf("expired message %s: %+v", id, got)
		}
	}
	for _, id := range []string{oldReply, ancientReply} {
		if got := b.row(t, "replies", id); got.text != "好的，我们会致电138****5678" || !got.redacted {
			t.Errorf("expired reply %s: %+v", id, got)
		}
	}
	if got := b.row(t, "messages", plainMsg); got.text != "where is my parcel" || !got.redacted {
		t.Errorf("expired message without personal data: %+v, want it marked redacted", got)
	}
	if got := b.row(t, "replies", plainReply); got.text != "on its way" || !got.redacted {
		t.Errorf("expired reply without personal data: %+v, want it marked redacted", got)
	}
	for _, id := range []string{youngMsg, longMsg} {
		if got := b.row(t, "messages", id); got.text != question || got.redacted {
			t.Errorf("message within its retention %s: %+v, want it untouched", id, got)
		}
	}
	for _, id := range []string{youngReply, longReply} {
		if got := b.row(t, "replies", id); got.text != answer || got.redacted {
			t.Errorf("reply within its retention %s: %+v, want it untouched", id, got)
		}
	}
	if got := counter(t, reg, "peakdesk_retention_redacted_total", "messages"); got != 3 {
		t.Errorf("redacted messages metric %v, want 3", got)
	}

	// A second run finds nothing and changes nothing.
	before := b.row(t, "messages", oldMsg)
	res, err = newRedactor(t, b, retention.Config{}).RunOnce(ctx)
	if err != nil || res != (retention.Result{}) {
		t.Fatalf("second run %+v %v, want nothing done", res, err)
	}
	if after := b.row(t, "messages", oldMsg); after != before {
		t.Errorf("second run changed %+v to %+v", before, after)
	}
}

// action stores an outbox action created age ago, in state, and returns
// its id.
func (b *testBundle) action(t *testing.T, a peakdesk.Action, age time.Duration, state peakdesk.ActionState) int64 {
	t.Helper()
	ctx := context.Background()
	if n, err := b.db.EnqueueActions(ctx, []peakdesk.Action{a}); err != nil || n != 1 {
		t.Fatalf("enqueue %s: n=%d err=%v", a.Kind, n, err)
	}
	var id int64
	if err := b.pool.QueryRow(ctx, `UPDATE outbox_actions SET created_at = now() - $2::interval, state = $3,
			completed_at = CASE WHEN $3 IN ('succeeded', 'dead', 'canceled') THEN now() END
		WHERE idempotency_key = $1 RETURNING id`, a.IdempotencyKey, age, string(state)).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// payload returns an action's payload and whether it was redacted.
func (b *testBundle) payload(t *testing.T, id int64) (map[string]any, bool) {
	t.Helper()
	var p map[string]any
	var at *time.Time
	if err := b.pool.QueryRow(context.Background(), `SELECT payload, redacted_at FROM outbox_actions WHERE id = $1`, id).
		Scan(&p, &at); err != nil {
		t.Fatal(err)
	}
	return p, at != nil
}

// The outbox's webhook deliveries copy the texts they announce: a
// reply.created event its reply, a desk event the customer's message. Once
// the relays are done with them they are masked with the messages and
// replies, once, the rest of the event as it was. A delivery still due
// goes out as written first; younger deliveries, those of a shop with a
// longer retention and other actions (a coupon's reason is the shop's
// record of a money promise) are left as they are.
func TestExpiredWebhookPayloadsAreMasked(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const (
		question = "我的手机13812345678，快递到了吗"
		answer   = "好的，我们会致电13812345678"
		cost     = 9007199254740993 // 2^53 + 1: a float64 would round it
	)
	msgID, replyID := b.chat(t, "short", 31*day, question, answer)
	webhook := func(shop, id string) peakdesk.Action {
		t.Helper()
		r := &peakdesk.Reply{ID: id, ShopID: shop, ConversationID: "c1", MessageIDs: []string{msgID},
			Text: answer, Source: peakdesk.SourceLLM, CostMicroUSD: cost, CreatedAt: time.Now().Add(-31 * day)}
		a, err := outbox.ReplyWebhook(r)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	hook := webhook("short", replyID)
	oldHook := b.action(t, hook, 31*day, peakdesk.ActionSucceeded)
	deadHook := b.action(t, webhook("short", "reply-dead"), 31*day, peakdesk.ActionDead)
	dueHook := b.action(t, webhook("short", "reply-due"), 31*day, peakdesk.ActionRetrying)
	youngHook := b.action(t, webhook("short", "reply-young"), 29*day, peakdesk.ActionSucceeded)
	longHook := b.action(t, webhook("long", "reply-long"), 31*day, peakdesk.ActionSucceeded)
	desk, err := json.Marshal(peakdesk.DeskEvent{EventID: "pd_desk_1", Type: peakdesk.EventMessageCreated,
		Shop: "short", ConversationID: "c1", Message: &peakdesk.MessageState{ID: msgID, ConversationID: "c1",
			Priority: peakdesk.P1, Status: peakdesk.StatusQueued, Text: question,
			Reply: &peakdesk.Reply{ID: replyID, Text: answer}}})
	if err != nil {
		t.Fatal(err)
	}
	deskHook := b.action(t, peakdesk.Action{ShopID: "short", ConversationID: "c1", Kind: peakdesk.ActionWebhookDeliver,
		Payload: desk, IdempotencyKey: "pd_desk_1", MaxAttempts: 3}, 40*day, peakdesk.ActionCanceled)
	coupon, err := json.Marshal(outbox.CouponPayload{UserID: "u1", AmountCents: 500, Reason: "call 13812345678"})
	if err != nil {
		t.Fatal(err)
	}
	couponAction := b.action(t, peakdesk.Action{ShopID: "short", ConversationID: "c1", Kind: peakdesk.ActionCouponIssue,
		Payload: coupon, IdempotencyKey: "pd_cpn_1", MaxAttempts: 3}, 40*day, peakdesk.ActionSucceeded)

	reg := prometheus.NewRegistry()
	res, err := newRedactor(t, b, retention.Config{Registerer: reg}).RunOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res != (retention.Result{Messages: 1, Replies: 1, Webhooks: 3}) {
		t.Errorf("run %+v, want 1 message, 1 reply, 3 webhooks", res)
	}
	if got := counter(t, reg, "peakdesk_retention_redacted_total", "outbox_actions"); got != 3 {
		t.Errorf("redacted webhooks metric %v, want 3", got)
	}
	const maskedAnswer, maskedQuestion = "好的，我们会致电138****5678", "我的手机138****5678，快递到了吗"
	for _, id := range []int64{oldHook, deadHook} {
		p, redacted := b.payload(t, id)
		r, _ := p["reply"].(map[string]any)
		if !redacted || r["text"] != maskedAnswer || p["type"] != outbox.EventReplyCreated {
			t.Errorf("expired reply webhook %d: redacted=%v payload %v", id, redacted, p)
		}
	}
	p, _ := b.payload(t, oldHook)
	r, _ := p["reply"].(map[string]any)
	if r["reply_id"] != replyID || p["event_id"] != hook.IdempotencyKey {
		t.Errorf("expired reply webhook lost its ids: %v", p)
	}
	if ids, _ := r["message_ids"].([]any); len(ids) != 1 || ids[0] != msgID {
		t.Errorf("expired reply webhook lost its message ids: %v", r["message_ids"])
	}
	var costText string
	if err := b.pool.QueryRow(ctx, `SELECT payload->'reply'->>'cost_micro_usd' FROM outbox_actions WHERE id = $1`,
		oldHook).Scan(&costText); err != nil || costText != "9007199254740993" {
		t.Errorf("cost after masking %q (%v), want 9007199254740993", costText, err)
	}
	p, redacted := b.payload(t, deskHook)
	m, _ := p["message"].(map[string]any)
	mr, _ := m["reply"].(map[string]any)
	if !redacted || m["text"] != maskedQuestion || mr["text"] != maskedAnswer || m["message_id"] != msgID {
		t.Errorf("expired desk event: redacted=%v payload %v", redacted, p)
	}
	for name, id := range map[string]int64{"still due": dueHook, "within its retention": youngHook,
		"of a shop with a longer retention": longHook} {
		p, redacted := b.payload(t, id)
		if r, _ := p["reply"].(map[string]any); redacted || r["text"] != answer {
			t.Errorf("reply webhook %s: redacted=%v payload %v, want it untouched", name, redacted, p)
		}
	}
	p, redacted = b.payload(t, couponAction)
	if redacted || p["reason"] != "call 13812345678" {
		t.Errorf("coupon action: redacted=%v payload %v, want it untouched", redacted, p)
	}

	// A second run finds nothing.
	if res, err := newRedactor(t, b, retention.Config{}).RunOnce(ctx); err != nil || res != (retention.Result{}) {
		t.Fatalf("second run %+v %v, want nothing done", res, err)
	}
}

// Relays run the job side by side: together they redact each expired row
// exactly once.
func TestConcurrentRunsShareTheWork(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const expired = 60
	for i := range expired {
		b.chat(t, "short", 31*day, fmt.Sprintf("call 1381234%04d", i), "ok")
	}
	b.chat(t, "short", time.Hour, "call 13812345678", "ok")
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total retention.Result
	)
	for range 4 {
		r := newRedactor(t, b, retention.Config{BatchSize: 5})
		wg.Go(func() {
			res, err := r.RunOnce(ctx)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			defer mu.Unlock()
			total.Messages += res.Messages
			total.Replies += res.Replies
		})
	}
	wg.Wait()
	if total != (retention.Result{Messages: expired, Replies: expired}) {
		t.Fatalf("runs redacted %+v together, want %d of each", total, expired)
	}
	var left, masked int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE redacted_at IS NULL),
			count(*) FILTER (WHERE text LIKE 'call 138****%')
		FROM messages`).Scan(&left, &masked); err != nil {
		t.Fatal(err)
	}
	if left != 1 || masked != expired {
		t.Fatalf("%d messages left unredacted (want the young one), %d masked (want %d)", left, masked, expired)
	}
}

// The job runs at Start, then every Interval, until Stop.
func TestRedactorRunsFromStartUntilStop(t *testing.T) {
	t.Parallel()
	b := setup(t)
	msg, _ := b.chat(t, "short", 31*day, "call 13812345678", "ok")
	r := newRedactor(t, b, retention.Config{Interval: time.Hour})
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	deadline := time.Now().Add(10 * time.Second)
	for !b.row(t, "messages", msg).redacted {
		if time.Now().After(deadline) {
			t.Fatal("the expired message was not redacted after Start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.Stop()
	r.Stop() // idempotent
	if got := b.row(t, "messages", msg).text; got != "call 138****5678" {
		t.Errorf("redacted text %q", got)
	}
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, tc := range []struct {
		name  string
		cfg   retention.Config
		field string
	}{
		{"no db", retention.Config{}, "DB"},
		{"interval too short", retention.Config{DB: b.db, Interval: time.Millisecond}, "Interval"},
		{"batch too large", retention.Config{DB: b.db, BatchSize: 1_000_000}, "BatchSize"},
	} {
		if _, err := retention.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: %v, want an error naming %s", tc.name, err, tc.field)
		}
	}
	if err := b.db.SetShopRetention(context.Background(), "short", 0); peakdesk.ErrorCode(err) != peakdesk.EInvalid {
		t.Errorf("retention of 0 days: %v, want invalid_argument", err)
	}
	if err := b.db.SetShopRetention(context.Background(), "nope", 7); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("retention of an unknown shop: %v, want ErrNotFound", err)
	}
}

func counter(t *testing.T, reg *prometheus.Registry, name, table string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "table" && l.GetValue() == table {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no metric %s{table=%q}", name, table)
	return 0
}
