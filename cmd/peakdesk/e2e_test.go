package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/loadtest/llmsim"
	"github.com/peakdesk/peakdesk/loadtest/shopsim"
	"github.com/peakdesk/peakdesk/loadtest/sse"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

const testSecret = "e2e-test-secret-0123456789abcdef0123456789"

// testBundle is a set of real services shared by the programs of one test:
// an embedded JetStream server, a fresh Postgres database with shops "demo"
// and "other", Redis, and the simulated LLM.
type testBundle struct {
	natsURL string
	dbURL   string
	llm     *llmsim.Sim
	llmURL  string
	shop    *shopsim.Sim
	shopURL string
}

func setup(t *testing.T, faults llmsim.Faults) *testBundle {
	t.Helper()
	ns := storagetest.NATS(t)
	dbURL := storagetest.DatabaseURL(t)
	db, err := storage.Open(context.Background(), dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, shop := range []string{"demo", "other"} {
		if err := db.EnsureShop(context.Background(), shop, shop); err != nil {
			t.Fatal(err)
		}
		// The database is new, Redis is not: counts of LLM answers per user
		// and hour would carry over between runs of the tests.
		if err := db.SetShopLLMLimits(context.Background(), storage.LLMLimits{ShopID: shop}); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	sim := llmsim.New(faults)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	shop := shopsim.New(shopsim.Faults{}, []byte("e2e-webhook-secret"))
	shopSrv := httptest.NewServer(shop)
	t.Cleanup(shopSrv.Close)
	return &testBundle{natsURL: ns.ClientURL(), dbURL: dbURL, llm: sim, llmURL: srv.URL + "/v1",
		shop: shop, shopURL: shopSrv.URL}
}

// start runs a Program with the given roles on a free port.
func (b *testBundle) start(t *testing.T, roles []string, mod func(*Config)) *Program {
	t.Helper()
	env := map[string]string{
		"DATABASE_URL":          b.dbURL,
		"REDIS_URL":             storagetest.RedisURL(),
		"NATS_URL":              b.natsURL,
		"PEAKDESK_HTTP_ADDR":    "127.0.0.1:0",
		"PEAKDESK_METRICS_ADDR": "127.0.0.1:0",
		"PEAKDESK_DATA_DIR":     t.TempDir(),
		"PEAKDESK_JWT_SECRET":   testSecret,
		"PEAKDESK_MASTER_KEY":   testMasterKey,
		"PEAKDESK_LLM_BASE_URL": b.llmURL,
		"PEAKDESK_SHOP_API_URL": b.shopURL,
		"PEAKDESK_LOG_LEVEL":    "warn",
	}
	cfg := envDefaults(func(k string) string { return env[k] }, false)
	cfg.Roles = roles
	cfg.AckWait = 5 * time.Second
	cfg.AllowPrivateShopURLs = true // the simulated shop listens on loopback
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	p := NewProgram(cfg, storagetest.LogWriter(t))
	if err := p.Start(context.Background()); err != nil {
		t.Fatalf("start %v: %v", roles, err)
	}
	t.Cleanup(p.Stop)
	return p
}

func bearer(t *testing.T, shop, sub string, scopes ...string) string {
	t.Helper()
	tok, err := token.Sign([]byte(testSecret), shop, sub, scopes, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    []byte
}

func call(t *testing.T, method, url, tok string, body []byte, headers ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := response{status: resp.StatusCode, header: resp.Header, raw: raw}
	_ = json.Unmarshal(raw, &r.body)
	return r
}

func jsonBody(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitAnswered polls GET /v1/messages/{id} until the message is answered.
func waitAnswered(t *testing.T, base, tok, id string, deadline time.Time) peakdesk.MessageState {
	t.Helper()
	for {
		r := call(t, "GET", base+"/v1/messages/"+id, tok, nil)
		var st peakdesk.MessageState
		if r.status == http.StatusOK && json.Unmarshal(r.raw, &st) == nil && st.Status == peakdesk.StatusAnswered {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s not answered by the deadline; last answer %d %s", id, r.status, r.raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// replyEvents reads every reply event in CHAT_EVENTS and returns, per
// message id, the distinct reply ids that answered it.
func replyEvents(t *testing.T, natsURL string) map[string]map[string]bool {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, queue.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]bool{}
	if info.State.Msgs == 0 {
		return out
	}
	cons, err := js.OrderedConsumer(ctx, queue.StreamEvents, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for range info.State.Msgs {
		msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("read reply events: %v", err)
		}
		var r peakdesk.Reply
		if err := json.Unmarshal(msg.Data(), &r); err != nil {
			t.Fatalf("reply event %q: %v", msg.Data(), err)
		}
		for _, id := range r.MessageIDs {
			if out[id] == nil {
				out[id] = map[string]bool{}
			}
			out[id][r.ID] = true
		}
	}
	return out
}

// An end-to-end run over the real roles: 200 messages in 20 conversations,
// with the worker role restarted halfway while it is answering. Every
// message must be answered exactly once, by a reply that quotes it.
func TestEndToEndExactlyOnceAcrossWorkerRestart(t *testing.T) {
	b := setup(t, llmsim.Faults{Latency: 40 * time.Millisecond, LatencyJitter: 30 * time.Millisecond})
	edge := b.start(t, []string{roleIngest}, nil)
	worker1 := b.start(t, []string{roleWorker}, func(c *Config) {
		c.WorkerConcurrency = 8
		c.SoftStop = 20 * time.Millisecond // cut calls off mid-way: they must be redelivered
	})
	base := "http://" + edge.Addr()

	const convs, perConv = 20, 10
	type sent struct {
		id, text, user string
	}
	var mu sync.Mutex
	var all []sent
	convIDs := make([]string, convs)
	postRound := func(round int) {
		var wg sync.WaitGroup
		for c := range convs {
			wg.Go(func() {
				user := fmt.Sprintf("user-%02d", c)
				tok := bearer(t, "demo", user)
				for j := round * perConv / 2; j < (round+1)*perConv/2; j++ {
					text := fmt.Sprintf("第%d个会话的第%d个问题：双11满减怎么算？ conv-%d-msg-%d", c, j, c, j)
					req := map[string]any{"text": text, "client_msg_id": fmt.Sprintf("c%d-m%d", c, j)}
					if convIDs[c] != "" {
						req["conversation_id"] = convIDs[c]
					}
					r := call(t, "POST", base+"/v1/messages", tok, jsonBody(t, req))
					if r.status != http.StatusAccepted {
						t.Errorf("post: %d %s", r.status, r.raw)
						return
					}
					convIDs[c] = r.body["conversation_id"].(string)
					mu.Lock()
					all = append(all, sent{id: r.body["message_id"].(string), text: text, user: user})
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}

	postRound(0)
	// Restart the worker role while it still has work in flight.
	worker1.Stop()
	b.start(t, []string{roleWorker}, func(c *Config) { c.WorkerConcurrency = 8 })
	postRound(1)
	if t.Failed() {
		t.FailNow()
	}
	if len(all) != convs*perConv {
		t.Fatalf("accepted %d messages, want %d", len(all), convs*perConv)
	}

	textOf := map[string]string{}
	for _, m := range all {
		textOf[m.id] = m.text
	}
	deadline := time.Now().Add(90 * time.Second)
	for _, m := range all {
		st := waitAnswered(t, base, bearer(t, "demo", m.user), m.id, deadline)
		if st.Reply == nil || !st.Reply.Answers(m.id) {
			t.Fatalf("message %s: reply %+v does not name it", m.id, st.Reply)
		}
		// Messages that queued up while their conversation was answered are
		// answered together; the simulator quotes the turn's last question.
		last := st.Reply.MessageIDs[len(st.Reply.MessageIDs)-1]
		if !strings.Contains(st.Reply.Text, textOf[last]) {
			t.Errorf("message %s: reply %q does not quote %q", m.id, st.Reply.Text, textOf[last])
		}
	}

	// Exactly once: one distinct reply per message in the event stream, and
	// every message answered in Postgres by at most one reply per turn.
	events := replyEvents(t, b.natsURL)
	for _, m := range all {
		if n := len(events[m.id]); n != 1 {
			t.Errorf("message %s answered by %d distinct replies in CHAT_EVENTS, want 1", m.id, n)
		}
	}
	conn, err := pgx.Connect(context.Background(), b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var replies, answered int
	if err := conn.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM replies),
		(SELECT count(*) FROM messages WHERE status = 'answered')`).Scan(&replies, &answered); err != nil {
		t.Fatal(err)
	}
	if answered != len(all) || replies > len(all) || replies == 0 {
		t.Errorf("stored %d replies for %d answered messages, want %d answered and at most as many replies",
			replies, answered, len(all))
	}
	if got := b.llm.Stats().Requests; got < int64(replies) {
		t.Errorf("simulated LLM saw %d requests for %d replies", got, replies)
	}
}

func streamLastSeq(t *testing.T, natsURL string) uint64 {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	s, err := js.Stream(context.Background(), queue.StreamIn)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// Bad requests get their documented error and never reach the queue.
func TestBadRequestsNeverReachTheQueue(t *testing.T) {
	b := setup(t, llmsim.Faults{})
	edge := b.start(t, []string{roleIngest}, nil)
	url := "http://" + edge.Addr() + "/v1/messages"
	alice := bearer(t, "demo", "alice")
	foreignConv := "0123456789abcdef0123456789abcdef"
	expired, _ := token.Sign([]byte(testSecret), "demo", "alice", nil, -time.Hour)
	wrongKey, _ := token.Sign([]byte("another-secret-0123456789abcdef0123"), "demo", "alice", nil, time.Hour)
	unknownShop := bearer(t, "nosuchshop", "alice")

	before := streamLastSeq(t, b.natsURL)
	cases := []struct {
		name   string
		tok    string
		body   string
		header []string
		status int
		code   string
		field  string
	}{
		{"no token", "", `{"text":"hi"}`, nil, 401, "unauthenticated", ""},
		{"expired token", expired, `{"text":"hi"}`, nil, 401, "unauthenticated", ""},
		{"token signed with another key", wrongKey, `{"text":"hi"}`, nil, 401, "unauthenticated", ""},
		{"unprovisioned shop", unknownShop, `{"text":"hi"}`, nil, 403, "permission_denied", ""},
		{"bad JSON", alice, `{"text":`, nil, 400, "invalid_argument", ""},
		{"not an object", alice, `["hi"]`, nil, 400, "invalid_argument", ""},
		{"two objects", alice, `{"text":"a"}{"text":"b"}`, nil, 400, "invalid_argument", ""},
		{"empty body", alice, ``, nil, 400, "invalid_argument", ""},
		{"empty text", alice, `{"text":""}`, nil, 400, "invalid_argument", "text"},
		{"blank text", alice, `{"text":"  \n\t "}`, nil, 400, "invalid_argument", "text"},
		{"missing text", alice, `{}`, nil, 400, "invalid_argument", "text"},
		{"text not a string", alice, `{"text":42}`, nil, 400, "invalid_argument", "text"},
		{"text too long", alice, `{"text":"` + strings.Repeat("长", 2001) + `"}`, nil, 400, "invalid_argument", "text"},
		{"control character", alice, `{"text":"hi\u0007"}`, nil, 400, "invalid_argument", "text"},
		{"invalid UTF-8", alice, "{\"text\":\"\xff\xfe\"}", nil, 400, "invalid_argument", ""},
		{"bad conversation id", alice, `{"text":"hi","conversation_id":"ABC"}`, nil, 400, "invalid_argument", "conversation_id"},
		{"unknown conversation", alice, `{"text":"hi","conversation_id":"` + foreignConv + `"}`, nil, 404, "not_found", "conversation_id"},
		{"unknown priority", alice, `{"text":"hi","priority":"p9"}`, nil, 400, "invalid_argument", "priority"},
		{"p0 hint without scope", alice, `{"text":"hi","priority":"p0"}`, nil, 403, "permission_denied", "priority"},
		{"p1 hint without scope", alice, `{"text":"hi","priority":"p1"}`, nil, 403, "permission_denied", "priority"},
		{"unknown field", alice, `{"text":"hi","txt":"x"}`, nil, 400, "invalid_argument", "txt"},
		{"metadata not an object", alice, `{"text":"hi","metadata":[1]}`, nil, 400, "invalid_argument", "metadata"},
		{"metadata too large", alice, `{"text":"hi","metadata":{"k":"` + strings.Repeat("x", 4100) + `"}}`, nil, 400, "invalid_argument", "metadata"},
		{"user_id of someone else", alice, `{"text":"hi","user_id":"bob"}`, nil, 403, "permission_denied", "user_id"},
		{"keys disagree", alice, `{"text":"hi","client_msg_id":"a"}`, []string{"Idempotency-Key", "b"}, 400, "invalid_argument", "client_msg_id"},
		{"bad wait", alice, `{"text":"hi"}`, nil, 400, "invalid_argument", "wait"},
		{"body too large", alice, `{"text":"` + strings.Repeat("x", 70<<10) + `"}`, nil, 413, "payload_too_large", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u := url
			if tc.name == "bad wait" {
				u += "?wait=11s"
			}
			r := call(t, "POST", u, tc.tok, []byte(tc.body), tc.header...)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.raw)
			}
			e, _ := r.body["error"].(map[string]any)
			if e == nil || e["code"] != tc.code || e["message"] == "" {
				t.Fatalf("error body %s, want code %s", r.raw, tc.code)
			}
			if tc.field != "" && e["field"] != tc.field {
				t.Errorf("field %v, want %s", e["field"], tc.field)
			}
		})
	}
	if after := streamLastSeq(t, b.natsURL); after != before {
		t.Errorf("CHAT_IN moved from seq %d to %d: a bad request reached the queue", before, after)
	}
}

// ?wait= returns the reply inline; GET shows it; the conversation lists it;
// SSE replays it; an idempotent repeat returns the first message; another
// shop sees none of it.
func TestWaitPollConversationAndEvents(t *testing.T) {
	b := setup(t, llmsim.Faults{Latency: 10 * time.Millisecond})
	p := b.start(t, []string{roleIngest, roleWorker}, nil)
	base := "http://" + p.Addr()
	alice := bearer(t, "demo", "alice")

	r := call(t, "POST", base+"/v1/messages?wait=10s", alice, []byte(`{"text":"我的订单 123456 什么时候发货？"}`),
		"Idempotency-Key", "order-q-1")
	if r.status != http.StatusOK || r.body["status"] != "answered" {
		t.Fatalf("wait: %d %s", r.status, r.raw)
	}
	id, conv := r.body["message_id"].(string), r.body["conversation_id"].(string)
	if r.body["priority"] != "p1" {
		t.Errorf("priority %v, want p1 for an order question", r.body["priority"])
	}
	reply := r.body["reply"].(map[string]any)
	if !strings.Contains(reply["text"].(string), "123456") || reply["source"] != "llm" {
		t.Errorf("reply %v", reply)
	}

	// The repeat gets the first result and no second answer.
	again := call(t, "POST", base+"/v1/messages?wait=2s", alice, []byte(`{"text":"我的订单 123456 什么时候发货？"}`),
		"Idempotency-Key", "order-q-1")
	if again.body["message_id"] != id || again.body["conversation_id"] != conv {
		t.Fatalf("repeat got %s, want message %s", again.raw, id)
	}

	st := waitAnswered(t, base, alice, id, time.Now().Add(10*time.Second))
	if st.ConversationID != conv || st.Reply.ID != reply["reply_id"] {
		t.Errorf("GET message: %+v", st)
	}
	c := call(t, "GET", base+"/v1/conversations/"+conv, alice, nil)
	if c.status != http.StatusOK || len(c.body["messages"].([]any)) != 1 || len(c.body["replies"].([]any)) != 1 {
		t.Fatalf("conversation: %d %s", c.status, c.raw)
	}

	// Another shop, and another user of the same shop, see nothing.
	for _, tok := range []string{bearer(t, "other", "alice"), bearer(t, "demo", "mallory")} {
		for _, path := range []string{"/v1/messages/" + id, "/v1/conversations/" + conv, "/v1/conversations/" + conv + "/events"} {
			if r := call(t, "GET", base+path, tok, nil); r.status != http.StatusNotFound {
				t.Errorf("GET %s by a stranger: %d %s, want 404", path, r.status, r.raw)
			}
		}
	}

	// SSE replays the reply with a resumable id.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/v1/conversations/"+conv+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+alice)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("content type %q", ct)
	}
	ev, err := sse.NewReader(resp.Body).Next()
	var got peakdesk.Reply
	if err != nil || ev.Type != "reply" || ev.ID == "" || json.Unmarshal([]byte(ev.Data), &got) != nil || !got.Answers(id) {
		t.Fatalf("event %+v, %v; want the reply to %s with an id", ev, err, id)
	}
}
