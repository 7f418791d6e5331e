package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/loadtest/sse"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
	"github.com/peakdesk/peakdesk/workers/shedwriter"
)

var testSecret = []byte("ingest-test-secret-0123456789abcdef012345")

// testBundle is an Edge on real services: embedded JetStream, a fresh
// Postgres database with shops "shop1" and "shop2", and Redis.
type testBundle struct {
	edge *Edge
	srv  *httptest.Server
	db   *storage.DB
	js   jetstream.JetStream
	reg  *prometheus.Registry
	// salt makes user names unique per test: rate-limit state lives in the
	// shared Redis, keyed by shop and user.
	salt string
}

func setup(t *testing.T, topo queue.Topology, mod func(*Config)) *testBundle {
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
	if _, err := queue.EnsureTopology(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	db := storagetest.DB(t)
	for _, s := range []string{"shop1", "shop2"} {
		if err := db.EnsureShop(ctx, s, s); err != nil {
			t.Fatal(err)
		}
	}
	rdb, err := storage.OpenRedis(storagetest.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	reg := prometheus.NewRegistry()
	cfg := Config{Secret: testSecret, DB: db, Redis: rdb, JS: js, Registerer: reg, SSEHeartbeat: time.Second}
	if mod != nil {
		mod(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	e.Register(mux)
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.RegisterOnShutdown(e.CloseStreams)
	srv.Start()
	t.Cleanup(func() { srv.Close(); e.Stop() })
	return &testBundle{edge: e, srv: srv, db: db, js: js, reg: reg, salt: fmt.Sprintf("%x-", time.Now().UnixNano())}
}

func tok(t *testing.T, shop, sub string, scopes ...string) string {
	t.Helper()
	s, err := token.Sign(testSecret, shop, sub, scopes, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type result struct {
	status int
	header http.Header
	body   map[string]any
	raw    []byte
}

func (b *testBundle) do(t *testing.T, method, path, token, body string, headers ...string) result {
	t.Helper()
	req, _ := http.NewRequest(method, b.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := result{status: resp.StatusCode, header: resp.Header, raw: raw}
	_ = json.Unmarshal(raw, &r.body)
	return r
}

func errCode(r result) string {
	e, _ := r.body["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

// takeMessage reads the next message from a priority's consumer, as a
// worker would, and acks it.
func (b *testBundle) takeMessage(t *testing.T, p peakdesk.Priority) (*peakdesk.Message, jetstream.Msg) {
	t.Helper()
	c, err := b.js.Consumer(context.Background(), queue.StreamIn, queue.ConsumerName(p))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatalf("no %s message: %v", p, err)
	}
	var m peakdesk.Message
	if err := json.Unmarshal(msg.Data(), &m); err != nil {
		t.Fatal(err)
	}
	_ = msg.Ack()
	return &m, msg
}

// answer stores m answered and publishes the reply event, as a worker would.
func (b *testBundle) answer(t *testing.T, m *peakdesk.Message, text string) *peakdesk.Reply {
	t.Helper()
	ctx := context.Background()
	r := &peakdesk.Reply{ID: "r-" + m.ID, ShopID: m.ShopID, ConversationID: m.ConversationID,
		MessageIDs: []string{m.ID}, Text: text, Source: peakdesk.SourceLLM}
	if _, _, err := b.db.SaveAnsweredMessage(ctx, m, r, nil); err != nil {
		t.Fatal(err)
	}
	if err := queue.PublishReplyEvent(ctx, b.js, r); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestPriorityRulesHintsAndTraceContext(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	ctx := context.Background()
	if err := b.db.SetPriorityRules(ctx, "shop2", []storage.PriorityRule{{Priority: peakdesk.P0, Keyword: "秒杀失败"}}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		shop, text, hint string
		scopes           []string
		want             peakdesk.Priority
	}{
		{"shop1", "我要退款", "", nil, peakdesk.P0},
		{"shop1", "我的快递到哪了", "", nil, peakdesk.P1},
		{"shop1", "有什么优惠", "", nil, peakdesk.P2},
		{"shop1", "有什么优惠", "p1", []string{token.ScopeUrgent}, peakdesk.P1}, // a hint raises (with the scope)
		{"shop1", "我要退款", "p2", nil, peakdesk.P0},                          // never lowers
		{"shop1", "有什么优惠", "p0", []string{token.ScopeUrgent}, peakdesk.P0}, // p0 with scope
		{"shop2", "秒杀失败了怎么办", "", nil, peakdesk.P0},                        // the shop's own rule
		{"shop2", "我要退款", "", nil, peakdesk.P2},                            // shop rules replace the defaults
	}
	for i, tc := range cases {
		body := fmt.Sprintf(`{"text":%q,"priority":%q}`, tc.text, tc.hint)
		if tc.hint == "" {
			body = fmt.Sprintf(`{"text":%q}`, tc.text)
		}
		trace := fmt.Sprintf("00-%032x-00f067aa0ba902b7-01", i+1)
		r := b.do(t, "POST", "/v1/messages", tok(t, tc.shop, b.salt+"u1", tc.scopes...), body, "traceparent", trace)
		if r.status != http.StatusAccepted || r.body["priority"] != string(tc.want) {
			t.Fatalf("%s %q hint %q: %d %s, want priority %s", tc.shop, tc.text, tc.hint, r.status, r.raw, tc.want)
		}
		m, msg := b.takeMessage(t, tc.want)
		if m.ID != r.body["message_id"] {
			t.Fatalf("queued message %s, want %s", m.ID, r.body["message_id"])
		}
		if got := msg.Headers().Get("traceparent"); !strings.HasPrefix(got, fmt.Sprintf("00-%032x-", i+1)) {
			t.Errorf("traceparent in NATS %q, want the caller's trace id", got)
		}
	}
}

func TestRateLimitsPerUserAndShop(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	if err := b.db.SetShopLimits(context.Background(), "shop1", 1000, 1000, 2, 2); err != nil {
		t.Fatal(err)
	}
	user := fmt.Sprintf("rl-%d", time.Now().UnixNano())
	for i := range 2 {
		if r := b.do(t, "POST", "/v1/messages", tok(t, "shop1", user), `{"text":"hi"}`); r.status != http.StatusAccepted {
			t.Fatalf("message %d: %d %s", i, r.status, r.raw)
		}
	}
	r := b.do(t, "POST", "/v1/messages", tok(t, "shop1", user), `{"text":"hi"}`)
	if r.status != http.StatusTooManyRequests || errCode(r) != peakdesk.ERateLimited {
		t.Fatalf("third message: %d %s, want 429 rate_limited", r.status, r.raw)
	}
	if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 || s > 60 {
		t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
	}
	// Another user of the shop is not affected.
	if r := b.do(t, "POST", "/v1/messages", tok(t, "shop1", user+"-other"), `{"text":"hi"}`); r.status != http.StatusAccepted {
		t.Errorf("another user: %d %s", r.status, r.raw)
	}
}

func TestRedisDownTheEdgeStillAccepts(t *testing.T) {
	t.Parallel()
	down, err := storage.OpenRedis("redis://127.0.0.1:1/0") // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { down.Close() })
	b := setup(t, queue.Topology{}, func(c *Config) { c.Redis = down })
	for i := range 5 {
		r := b.do(t, "POST", "/v1/messages", tok(t, "shop1", b.salt+"u1"), fmt.Sprintf(`{"text":"message %d"}`, i))
		if r.status != http.StatusAccepted {
			t.Fatalf("with Redis down: %d %s", r.status, r.raw)
		}
		// And a queued message still reads as queued.
		if g := b.do(t, "GET", "/v1/messages/"+r.body["message_id"].(string), tok(t, "shop1", b.salt+"u1"), ""); g.body["status"] != "queued" {
			t.Fatalf("GET with Redis down: %d %s", g.status, g.raw)
		}
	}
	if got := testutil.ToFloat64(b.edge.metrics.rateDegraded); got != 1 {
		t.Errorf("peakdesk_ingest_ratelimit_local = %v, want 1", got)
	}
	if got := testutil.ToFloat64(b.edge.metrics.rateFallbacks); got < 1 {
		t.Errorf("peakdesk_ingest_ratelimit_redis_failures_total = %v, want ≥ 1", got)
	}
}

// A Redis that takes connections and never answers must not hold messages
// up: the limiter's own deadlines end the check and local limits take over.
func TestRedisHangingTheEdgeStillAccepts(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	hung, err := storage.OpenRedis("redis://" + ln.Addr().String() + "/0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hung.Close() })
	b := setup(t, queue.Topology{}, func(c *Config) { c.Redis = hung })
	results := make(chan result, 10)
	start := time.Now()
	for i := range 10 {
		go func() {
			results <- b.do(t, "POST", "/v1/messages", tok(t, "shop1", fmt.Sprintf("%su%d", b.salt, i)), `{"text":"hi"}`)
		}()
	}
	for range 10 {
		if r := <-results; r.status != http.StatusAccepted {
			t.Fatalf("with Redis hanging: %d %s", r.status, r.raw)
		}
	}
	// Not a speed test: a check stuck behind a silent Redis would take the
	// client's retries × timeouts (many seconds), not a fraction of one.
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("10 messages took %v with Redis hanging", d)
	}
	if got := testutil.ToFloat64(b.edge.metrics.rateDegraded); got != 1 {
		t.Errorf("peakdesk_ingest_ratelimit_local = %v, want 1", got)
	}
}

func TestAFullStreamAnswers503(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{MaxMessages: 3}, nil)
	for i := range 3 {
		if r := b.do(t, "POST", "/v1/messages", tok(t, "shop1", b.salt+"u1"), fmt.Sprintf(`{"text":"m%d"}`, i)); r.status != http.StatusAccepted {
			t.Fatalf("message %d: %d %s", i, r.status, r.raw)
		}
	}
	r := b.do(t, "POST", "/v1/messages", tok(t, "shop1", b.salt+"u1"), `{"text":"one too many"}`)
	if r.status != http.StatusServiceUnavailable || errCode(r) != peakdesk.EOverloaded || r.header.Get("Retry-After") == "" {
		t.Fatalf("full stream: %d %s %v, want 503 overloaded with Retry-After", r.status, r.raw, r.header)
	}
}

// fixedFAQ stands in for the shop's FAQ engine (it arrives with the
// LLM-resilience work): it knows one question.
type fixedFAQ struct{}

func (fixedFAQ) Answer(_ context.Context, _, q string) (string, bool) {
	if strings.Contains(q, "满减") {
		return "满300减50，可与店铺券叠加。", true
	}
	return "", false
}

func TestAdmissionShedsLowPriorityFirst(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, func(c *Config) {
		c.FAQ = fixedFAQ{}
		c.Admission = AdmissionConfig{MinBacklog: 5, Refresh: 50 * time.Millisecond,
			MaxWait: map[peakdesk.Priority]time.Duration{peakdesk.P0: time.Hour, peakdesk.P1: time.Hour, peakdesk.P2: time.Second}}
	})
	u := tok(t, "shop1", b.salt+"u1")
	first := b.do(t, "POST", "/v1/messages", u, `{"text":"早就问过的问题","client_msg_id":"k-early"}`)
	if first.status != http.StatusAccepted {
		t.Fatalf("early message: %d %s", first.status, first.raw)
	}
	if err := b.db.PutShopAPISettings(context.Background(), storage.ShopAPISettings{ShopID: "shop1",
		WebhookURL: "http://127.0.0.1:9/webhooks"}); err != nil {
		t.Fatal(err)
	}
	// Build a p2 backlog no worker drains until the edge, which refreshes
	// the backlog every 50 ms, starts shedding.
	deadline := time.Now().Add(10 * time.Second)
	var shed result
	for i := 0; ; i++ {
		shed = b.do(t, "POST", "/v1/messages", u, fmt.Sprintf(`{"text":"随便问问 %d"}`, i))
		if shed.status != http.StatusAccepted || time.Now().After(deadline) {
			break
		}
		if i >= 6 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Shed, not limited per user: the answer names the busy desk.
	shedErr, _ := shed.body["error"].(map[string]any)
	if msg, _ := shedErr["message"].(string); shed.status != http.StatusTooManyRequests ||
		errCode(shed) != peakdesk.ERateLimited || !strings.Contains(msg, "busy") {
		t.Fatalf("p2 over the threshold: %d %s, want 429 from admission control", shed.status, shed.raw)
	}
	if s, _ := strconv.Atoi(shed.header.Get("Retry-After")); s < 1 {
		t.Errorf("Retry-After %q", shed.header.Get("Retry-After"))
	}
	// A repeat of a message accepted before the shedding started gets its
	// first result, not a 429.
	repeat := b.do(t, "POST", "/v1/messages", u, `{"text":"随便问问 0","client_msg_id":"before-shed"}`)
	if repeat.status != http.StatusTooManyRequests {
		t.Fatalf("a new keyed p2 message while shedding: %d %s", repeat.status, repeat.raw)
	}
	// A p2 question the FAQ knows is answered at once instead.
	faq := b.do(t, "POST", "/v1/messages", u, `{"text":"双11满减怎么算？"}`)
	reply, _ := faq.body["reply"].(map[string]any)
	if faq.status != http.StatusOK || faq.body["status"] != "answered" || reply["source"] != peakdesk.SourceFAQ {
		t.Fatalf("FAQ shed: %d %s", faq.status, faq.raw)
	}
	// GET shows the answer at once, before anything stored it in Postgres
	// (no writer runs yet): the edge remembered it in Redis.
	faqID := faq.body["message_id"].(string)
	if g := b.do(t, "GET", "/v1/messages/"+faqID, u, ""); g.body["status"] != "answered" {
		t.Errorf("GET of a shed answer before it is stored: %s", g.raw)
	}
	if _, err := b.db.Message(context.Background(), "shop1", faqID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the shed answer was stored on the request path: %v", err)
	}
	// A repeat gets the same answer, not a second one.
	faqAgain := b.do(t, "POST", "/v1/messages", u, `{"text":"双11满减怎么算？","client_msg_id":"k-faq"}`)
	faqAgain2 := b.do(t, "POST", "/v1/messages", u, `{"text":"双11满减怎么算？","client_msg_id":"k-faq"}`)
	r1, _ := faqAgain.body["reply"].(map[string]any)
	r2, _ := faqAgain2.body["reply"].(map[string]any)
	if faqAgain2.status != http.StatusOK || r1 == nil || r2 == nil || r1["reply_id"] != r2["reply_id"] {
		t.Errorf("repeat of a shed answer: %s then %s, want the same reply", faqAgain.raw, faqAgain2.raw)
	}
	// The shed writer stores the answers, with their webhooks, and
	// publishes their events.
	w, err := shedwriter.New(shedwriter.Config{JS: b.js, DB: b.db, Webhook: outbox.ReplyWebhook,
		Logger: storagetest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	for _, id := range []string{faqID, faqAgain.body["message_id"].(string)} {
		storagetest.WaitFor(t, "the shed answer stored", 10*time.Second, func() bool {
			rec, err := b.db.Message(context.Background(), "shop1", id)
			return err == nil && rec.Status == peakdesk.StatusAnswered
		})
	}
	if rec, _ := b.db.Message(context.Background(), "shop1", faqID); rec.Reply.ID != reply["reply_id"] {
		t.Errorf("stored reply %s, the customer got %v", rec.Reply.ID, reply["reply_id"])
	}
	// Like every reply, it goes to the shop's webhook through the outbox.
	hooks, err := b.db.ListActions(context.Background(), "shop1", storage.ActionFilter{Kind: peakdesk.ActionWebhookDeliver}, 0, 10)
	if err != nil || len(hooks) != 2 {
		t.Errorf("webhook actions %+v (%v), want one per shed answer", hooks, err)
	}
	events, err := b.js.Stream(context.Background(), queue.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	// The shed writer publishes on the customer's subject, like every
	// reply event.
	var found bool
	for seq := uint64(0); ; {
		ev, err := queue.NextReplyEvent(context.Background(), events, "shop1", b.salt+"u1", faq.body["conversation_id"].(string), seq)
		if err != nil {
			break
		}
		found = found || strings.Contains(string(ev.Data), reply["reply_id"].(string))
		seq = ev.Sequence
	}
	if !found {
		t.Errorf("no reply event of reply %v on the customer's subject", reply["reply_id"])
	}
	again := b.do(t, "POST", "/v1/messages", u, `{"text":"早就问过的问题","client_msg_id":"k-early"}`)
	if again.status != http.StatusAccepted || again.body["message_id"] != first.body["message_id"] || again.body["status"] != "queued" {
		t.Errorf("repeat of an accepted message while shedding: %d %s, want 202 with %v", again.status, again.raw, first.body["message_id"])
	}
	// p1 and p0 still get in.
	for _, text := range []string{"我的快递到哪了", "我要退款"} {
		if r := b.do(t, "POST", "/v1/messages", u, fmt.Sprintf(`{"text":%q}`, text)); r.status != http.StatusAccepted {
			t.Errorf("%q while p2 is shed: %d %s", text, r.status, r.raw)
		}
	}
}

// SSE replays stored events, resumes after Last-Event-ID without repeats,
// and follows live ones.
func TestEventStreamReplayAndResume(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	u := tok(t, "shop1", b.salt+"u1")
	first := b.do(t, "POST", "/v1/messages", u, `{"text":"第一个问题"}`)
	conv := first.body["conversation_id"].(string)
	m1, _ := b.takeMessage(t, peakdesk.P2)
	r1 := b.answer(t, m1, "answer 1")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	open := func(last string) (*sse.Reader, func()) {
		req, _ := http.NewRequestWithContext(ctx, "GET", b.srv.URL+"/v1/conversations/"+conv+"/events", nil)
		req.Header.Set("Authorization", "Bearer "+u)
		if last != "" {
			req.Header.Set("Last-Event-ID", last)
		}
		resp, err := b.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("events: %d", resp.StatusCode)
		}
		return sse.NewReader(resp.Body), func() { resp.Body.Close() }
	}
	// next returns the next reply event, skipping partial answers.
	next := func(rd *sse.Reader) (id string, r peakdesk.Reply) {
		t.Helper()
		for {
			ev, err := rd.Next()
			if err != nil {
				t.Fatalf("reading events: %v", err)
			}
			if ev.Type != "reply" {
				continue
			}
			if err := json.Unmarshal([]byte(ev.Data), &r); err != nil {
				t.Fatal(err)
			}
			return ev.ID, r
		}
	}

	rd, closeStream := open("")
	id1, got := next(rd)
	if got.ID != r1.ID {
		t.Fatalf("replayed %s, want %s", got.ID, r1.ID)
	}
	// A live event arrives on the open stream.
	second := b.do(t, "POST", "/v1/messages", u, fmt.Sprintf(`{"text":"第二个问题","conversation_id":%q}`, conv))
	if second.status != http.StatusAccepted {
		t.Fatalf("second: %d %s", second.status, second.raw)
	}
	m2, _ := b.takeMessage(t, peakdesk.P2)
	r2 := b.answer(t, m2, "answer 2")
	id2, got := next(rd)
	if got.ID != r2.ID {
		t.Fatalf("live event %s, want %s", got.ID, r2.ID)
	}
	closeStream()

	// Reconnect after the first event: only the second comes again.
	rd, closeStream = open(id1)
	defer closeStream()
	id, got := next(rd)
	if got.ID != r2.ID || id != id2 {
		t.Fatalf("resumed with %s (id %s), want %s (id %s)", got.ID, id, r2.ID, id2)
	}
}

func TestIdempotentRepeats(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{DuplicateWindow: time.Second}, nil)
	u := tok(t, "shop1", b.salt+"u1")
	first := b.do(t, "POST", "/v1/messages", u, `{"text":"hello","client_msg_id":"k-1"}`)
	again := b.do(t, "POST", "/v1/messages", u, `{"text":"hello"}`, "Idempotency-Key", "k-1")
	if first.status != http.StatusAccepted || again.status != http.StatusAccepted ||
		again.body["message_id"] != first.body["message_id"] || again.body["conversation_id"] != first.body["conversation_id"] {
		t.Fatalf("repeat within the window: %s then %s", first.raw, again.raw)
	}
	if got := testutil.ToFloat64(b.edge.metrics.duplicates); got != 1 {
		t.Errorf("duplicates metric %v, want 1", got)
	}
	// Only one copy was queued.
	s, _ := b.js.Stream(context.Background(), queue.StreamIn)
	info, _ := s.Info(context.Background())
	if info.State.Msgs != 1 {
		t.Errorf("CHAT_IN holds %d messages, want 1", info.State.Msgs)
	}
	// After the window the same key still maps to the same message id; the
	// worker finds it answered and does not answer again (tested end to end
	// in cmd/peakdesk).
	m, _ := b.takeMessage(t, peakdesk.P2)
	b.answer(t, m, "answer")
	time.Sleep(1500 * time.Millisecond) // let the 1 s duplicate window pass
	late := b.do(t, "POST", "/v1/messages?wait=1s", u, `{"text":"hello","client_msg_id":"k-1"}`)
	if late.body["message_id"] != first.body["message_id"] {
		t.Fatalf("repeat after the window: %s, want message %s", late.raw, first.body["message_id"])
	}
	if late.status != http.StatusOK || late.body["status"] != "answered" {
		t.Errorf("a repeat of an answered message with ?wait= should return its answer: %d %s", late.status, late.raw)
	}
}

func TestShopIsolation(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	alice := tok(t, "shop1", b.salt+"alice")
	r := b.do(t, "POST", "/v1/messages", alice, `{"text":"我的订单"}`)
	id, conv := r.body["message_id"].(string), r.body["conversation_id"].(string)
	m, _ := b.takeMessage(t, peakdesk.P1)
	b.answer(t, m, "answer")
	strangers := map[string]string{
		"another shop, same user": tok(t, "shop2", b.salt+"alice"),
		"another shop, service":   tok(t, "shop2", b.salt+"svc", token.ScopeService),
		"same shop, another user": tok(t, "shop1", b.salt+"bob"),
	}
	for name, token := range strangers {
		for _, path := range []string{"/v1/messages/" + id, "/v1/conversations/" + conv, "/v1/conversations/" + conv + "/events"} {
			if g := b.do(t, "GET", path, token, ""); g.status != http.StatusNotFound || errCode(g) != peakdesk.ENotFound {
				t.Errorf("%s GET %s: %d %s, want 404", name, path, g.status, g.raw)
			}
		}
		body := fmt.Sprintf(`{"text":"hi","conversation_id":%q}`, conv)
		if p := b.do(t, "POST", "/v1/messages", token, body); p.status != http.StatusNotFound {
			t.Errorf("%s POST into the conversation: %d %s, want 404", name, p.status, p.raw)
		}
	}
	// The shop's own service may read it.
	if g := b.do(t, "GET", "/v1/conversations/"+conv, tok(t, "shop1", b.salt+"svc", token.ScopeService), ""); g.status != http.StatusOK {
		t.Errorf("the shop's service: %d %s", g.status, g.raw)
	}
}

// Every error the edge can give has the documented shape (docs/api.md):
// {"error":{"code","message","field"?}} as JSON, the code's status, a
// field only where one is at fault, Retry-After exactly where the caller is
// told to come back, and no internals in an internal error's message. Each
// code is provoked for real.
func TestEveryErrorHasTheDocumentedShape(t *testing.T) {
	t.Parallel()
	// A stream that holds one message makes the second one overloaded.
	b := setup(t, queue.Topology{MaxMessages: 1}, nil)
	// shop2's customers may send one message a minute.
	if err := b.db.SetShopLimits(context.Background(), "shop2", 1000, 1000, 1, 1); err != nil {
		t.Fatal(err)
	}
	limited := tok(t, "shop2", b.salt+"limited")
	if r := b.do(t, "POST", "/v1/messages", limited, `{"text":"the one message"}`); r.status != http.StatusAccepted {
		t.Fatalf("first message: %d %s", r.status, r.raw)
	}
	u := tok(t, "shop1", b.salt+"u1")
	tests := []struct {
		code, field string
		status      int
		retry       bool
		do          func() result
	}{
		{peakdesk.EInvalid, "text", http.StatusBadRequest, false,
			func() result { return b.do(t, "POST", "/v1/messages", u, `{"text":"   "}`) }},
		{peakdesk.EUnauthenticated, "", http.StatusUnauthorized, false,
			func() result { return b.do(t, "POST", "/v1/messages", "garbage", `{"text":"hi"}`) }},
		{peakdesk.EPermissionDenied, "priority", http.StatusForbidden, false,
			func() result { return b.do(t, "POST", "/v1/messages", u, `{"text":"hi","priority":"p0"}`) }},
		{peakdesk.ENotFound, "", http.StatusNotFound, false,
			func() result { return b.do(t, "GET", "/v1/messages/"+strings.Repeat("ab", 16), u, "") }},
		{peakdesk.EPayloadTooLarge, "", http.StatusRequestEntityTooLarge, false, func() result {
			return b.do(t, "POST", "/v1/messages", u, `{"text":"`+strings.Repeat("x", peakdesk.MaxBodyBytes)+`"}`)
		}},
		{peakdesk.ERateLimited, "", http.StatusTooManyRequests, true,
			func() result { return b.do(t, "POST", "/v1/messages", limited, `{"text":"one too many"}`) }},
		{peakdesk.EOverloaded, "", http.StatusServiceUnavailable, true,
			func() result { return b.do(t, "POST", "/v1/messages", u, `{"text":"no room in the stream"}`) }},
		// Last: Postgres gone from under the edge.
		{peakdesk.EInternal, "", http.StatusInternalServerError, false, func() result {
			b.db.Close()
			return b.do(t, "GET", "/v1/conversations/"+strings.Repeat("cd", 16), u, "")
		}},
	}
	for _, tc := range tests {
		r := tc.do()
		var body struct {
			Error *struct {
				Code    string  `json:"code"`
				Message string  `json:"message"`
				Field   *string `json:"field"`
			} `json:"error"`
		}
		dec := json.NewDecoder(bytes.NewReader(r.raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil || body.Error == nil {
			t.Errorf("%s: body %s is not the error format: %v", tc.code, r.raw, err)
			continue
		}
		e := body.Error
		if r.status != tc.status || e.Code != tc.code || e.Message == "" {
			t.Errorf("%s: %d %s, want status %d with code %s and a message", tc.code, r.status, r.raw, tc.status, tc.code)
		}
		if (e.Field != nil) != (tc.field != "") || (e.Field != nil && *e.Field != tc.field) {
			t.Errorf("%s: field in %s, want %q", tc.code, r.raw, tc.field)
		}
		if ct := r.header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
			t.Errorf("%s: Content-Type %q", tc.code, ct)
		}
		if s, err := strconv.Atoi(r.header.Get("Retry-After")); tc.retry != (err == nil && s >= 1) ||
			!tc.retry && r.header.Get("Retry-After") != "" {
			t.Errorf("%s: Retry-After %q, want one: %v", tc.code, r.header.Get("Retry-After"), tc.retry)
		}
		if tc.code == peakdesk.EInternal && e.Message != "internal error" {
			t.Errorf("an internal error tells the caller %q", e.Message)
		}
	}
}

// A streaming answer's partial text reaches open event streams as
// `event: partial`, without an id.
func TestEventStreamForwardsPartials(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	u := tok(t, "shop1", b.salt+"u1")
	first := b.do(t, "POST", "/v1/messages", u, `{"text":"你好"}`)
	conv := first.body["conversation_id"].(string)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", b.srv.URL+"/v1/conversations/"+conv+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+u)
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The listener is registered before the response starts; publish until
	// the partial arrives (core NATS has no replay).
	nc := b.js.Conn()
	done := make(chan struct{})
	go func() {
		for {
			_ = nc.PublishMsg(queue.PartialMsg("shop1", b.salt+"u1", conv, []byte(`{"text":"您好，关于"}`)))
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	defer close(done)
	ev, err := sse.NewReader(resp.Body).Next()
	if err != nil {
		t.Fatalf("reading events: %v", err)
	}
	if ev.Type != "partial" || ev.ID != "" || ev.Data != `{"text":"您好，关于"}` {
		t.Fatalf("got event %+v; want a partial without an id", ev)
	}
}

// shedOrders stands in for the order desk (outbox.Tools.ShedOrder, tested
// there): every question with 订单 is an order question.
type shedOrders struct{}

func (shedOrders) ShedOrder(_ context.Context, m *peakdesk.Message) (string, []peakdesk.Action, bool, error) {
	if !strings.Contains(m.Text, "订单") {
		return "", nil, false, nil
	}
	return "正在为您查询订单信息", []peakdesk.Action{{ShopID: m.ShopID, Kind: peakdesk.ActionOrderFollowUp,
		Payload: json.RawMessage(`{"order_id":"1234567","user_id":"` + m.UserID + `"}`), IdempotencyKey: "ord-" + m.ID,
		MaxAttempts: 3}}, true, nil
}

// An order question the edge sheds is told "checking" at once (200,
// source order, follow_up) and, like a FAQ answer, published to CHAT_IN
// for the shed writer with the follow-up it promises — no Postgres
// transaction on the request path. The writer stores the answer with its
// follow-up: the facts come from the relays, not from the backlog that
// made the edge shed.
func TestShedOrderQuestionsAreFollowedUp(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, func(c *Config) {
		c.Orders, c.FAQ = shedOrders{}, fixedFAQ{}
		c.Admission = AdmissionConfig{MinBacklog: 5, Refresh: 50 * time.Millisecond,
			MaxWait: map[peakdesk.Priority]time.Duration{peakdesk.P0: time.Hour, peakdesk.P1: time.Second, peakdesk.P2: time.Second}}
	})
	u := tok(t, "shop1", b.salt+"u1")
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		r := b.do(t, "POST", "/v1/messages", u, fmt.Sprintf(`{"text":"快递到哪了 %d"}`, i)) // p1
		if r.status != http.StatusAccepted || time.Now().After(deadline) {
			break
		}
		if i >= 6 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	r := b.do(t, "POST", "/v1/messages", u, `{"text":"我的订单1234567到哪了"}`)
	reply, _ := r.body["reply"].(map[string]any)
	if r.status != http.StatusOK || reply["source"] != peakdesk.SourceOrder || reply["follow_up"] != true ||
		!strings.Contains(reply["text"].(string), "正在为您查询") {
		t.Fatalf("shed order question: %d %s", r.status, r.raw)
	}
	id := r.body["message_id"].(string)
	if _, err := b.db.Message(context.Background(), "shop1", id); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the shed order answer was stored on the request path: %v", err)
	}
	w, err := shedwriter.New(shedwriter.Config{JS: b.js, DB: b.db, Webhook: outbox.ReplyWebhook,
		Logger: storagetest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	storagetest.WaitFor(t, "the shed order answer stored", 10*time.Second, func() bool {
		rec, err := b.db.Message(context.Background(), "shop1", id)
		return err == nil && rec.Status == peakdesk.StatusAnswered
	})
	acts, err := b.db.ListActions(context.Background(), "shop1", storage.ActionFilter{Kind: peakdesk.ActionOrderFollowUp}, 0, 10)
	if err != nil || len(acts) != 1 || acts[0].ReplyID != reply["reply_id"] || acts[0].ConversationID != r.body["conversation_id"] {
		t.Fatalf("follow-ups %+v (%v)", acts, err)
	}
	g := b.do(t, "GET", "/v1/messages/"+r.body["message_id"].(string), u, "")
	if stored, _ := g.body["reply"].(map[string]any); stored["follow_up"] != true {
		t.Errorf("the stored reply does not say a follow-up comes: %s", g.raw)
	}
	// Its event is on the customer's subject.
	events, err := b.js.Stream(context.Background(), queue.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := queue.NextReplyEvent(context.Background(), events, "shop1", b.salt+"u1", r.body["conversation_id"].(string), 0); err != nil ||
		!strings.Contains(string(ev.Data), reply["reply_id"].(string)) {
		t.Errorf("the order answer's event: %v", err)
	}

	faq := b.do(t, "POST", "/v1/messages", u, `{"text":"双11满减怎么算？"}`)
	if fr, _ := faq.body["reply"].(map[string]any); faq.status != http.StatusOK || fr["source"] != peakdesk.SourceFAQ {
		t.Fatalf("shed FAQ question: %d %s", faq.status, faq.raw)
	}
	in, err := b.js.Stream(context.Background(), queue.StreamIn)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := in.GetLastMsgForSubject(context.Background(), queue.ShedSubject("shop1"))
	if err != nil {
		t.Fatalf("no shed record in CHAT_IN: %v", err)
	}
	if got, err := queue.DecodeShed(rec.Data); err != nil || got.Message.ID != faq.body["message_id"] || got.Reply.UserID != b.salt+"u1" {
		t.Errorf("shed record %+v (%v), want message %v of the customer", got, err, faq.body["message_id"])
	}
}
