package dashboard_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/dashboard"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/queue"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

const dlqTestSecret = "dlq-test-secret-0123456789abcdef0123456789"

type dlqServer struct {
	url     string
	js      jetstream.JetStream
	pool    *pgxpool.Pool
	entries map[string]*storage.DLQEntry // by message id
	msgs    map[string]peakdesk.Message
}

// newDLQServer serves the DLQ API over real services with three dead
// letters: two of shop "demo" (m-demo-0, m-demo-1), one of "other".
func newDLQServer(t *testing.T) *dlqServer {
	t.Helper()
	ctx := context.Background()
	js := storagetest.JetStream(t)
	dbURL := storagetest.DatabaseURL(t)
	db, err := storage.Open(ctx, dbURL, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := &dlqServer{js: js, pool: pool, entries: map[string]*storage.DLQEntry{}, msgs: map[string]peakdesk.Message{}}
	for i, shop := range []string{"demo", "demo", "other"} {
		if err := db.EnsureShop(ctx, shop, shop); err != nil {
			t.Fatal(err)
		}
		m := peakdesk.Message{
			ID: newTestHex(i, 'a'), ShopID: shop, ConversationID: newTestHex(i, 'c'), UserID: "u" + strconv.Itoa(i),
			Text: "where is my parcel " + strconv.Itoa(i), Priority: peakdesk.P1,
			AcceptedAt: time.Now().UTC().Truncate(time.Millisecond),
		}
		// What a worker's dead-letter mover records and copies.
		out, err := db.RecordDeadLetter(ctx, &storage.DeadLetter{Message: m, Subject: queue.InSubject(m.Priority, shop),
			InSeq: uint64(100 + i), Deliveries: 6, Reason: "max deliveries (6) reached on workers-p1"}, "a human takes over")
		if err != nil {
			t.Fatal(err)
		}
		data, _ := json.Marshal(m)
		copyMsg := nats.NewMsg(queue.DLQSubject(shop))
		copyMsg.Data = data
		copyMsg.Header.Set("traceparent", "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01")
		ack, err := js.PublishMsg(ctx, copyMsg)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.SetDLQSeq(ctx, out.Entry.ID, ack.Sequence); err != nil {
			t.Fatal(err)
		}
		s.entries[m.ID], s.msgs[m.ID] = out.Entry, m
	}
	mux := http.NewServeMux()
	ops, err := outbox.NewOps(outbox.OpsConfig{DB: db})
	if err != nil {
		t.Fatal(err)
	}
	dashboard.RegisterAPI(mux, dashboard.APIConfig{Auth: token.NewAuthenticator([]byte(dlqTestSecret)), Ops: ops,
		DLQ: mustDLQOps(t, db, js)})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

func newTestHex(i int, c byte) string {
	b := make([]byte, 32)
	for j := range b {
		b[j] = c
	}
	b[31] = byte('0' + i)
	return string(b)
}

func (s *dlqServer) do(t *testing.T, method, path, tok string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, s.url+path, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body map[string]any
	_ = json.Unmarshal(raw, &body)
	return resp.StatusCode, body
}

func dlqToken(t *testing.T, shop, sub string, scopes ...string) string {
	t.Helper()
	tok, err := token.Sign([]byte(dlqTestSecret), shop, sub, scopes, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func entryIDs(body map[string]any) []string {
	var out []string
	entries, _ := body["entries"].([]any)
	for _, e := range entries {
		out = append(out, e.(map[string]any)["message_id"].(string))
	}
	return out
}

func TestOpsDLQAccess(t *testing.T) {
	t.Parallel()
	s := newDLQServer(t)
	demo0 := s.entries[newTestHex(0, 'a')]
	path := "/v1/ops/dlq/" + strconv.FormatInt(demo0.ID, 10) + "/redrive"
	cases := []struct {
		name   string
		method string
		path   string
		tok    string
		status int
	}{
		{"no token", "GET", "/v1/ops/dlq", "", 401},
		{"a customer's token", "GET", "/v1/ops/dlq", dlqToken(t, "demo", "alice"), 403},
		{"a service token", "GET", "/v1/ops/dlq", dlqToken(t, "demo", "crm", token.ScopeService), 403},
		{"read scope cannot act", "POST", path, dlqToken(t, "*", "viewer", token.ScopeOps), 403},
		{"another shop's operator", "POST", path, dlqToken(t, "other", "op", token.ScopeOpsWrite), 404},
		{"not a number", "POST", "/v1/ops/dlq/x1/redrive", dlqToken(t, "*", "op", token.ScopeOpsWrite), 404},
		{"bad state", "GET", "/v1/ops/dlq?state=zombie", dlqToken(t, "*", "op", token.ScopeOps), 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if status, body := s.do(t, tc.method, tc.path, tc.tok); status != tc.status {
				t.Fatalf("%d %v, want %d", status, body, tc.status)
			}
		})
	}
}

func TestOpsDLQListIsScopedByShop(t *testing.T) {
	t.Parallel()
	s := newDLQServer(t)
	_, all := s.do(t, "GET", "/v1/ops/dlq", dlqToken(t, "*", "op", token.ScopeOps))
	if got := entryIDs(all); len(got) != 3 {
		t.Fatalf("platform operator sees %v, want all three", got)
	}
	// A shop's operator asking for another shop is refused, like for actions.
	if status, body := s.do(t, "GET", "/v1/ops/dlq?shop=other", dlqToken(t, "demo", "op", token.ScopeOps)); status != http.StatusForbidden {
		t.Fatalf("demo's operator asking for other: %d %v, want 403", status, body)
	}
	_, demo := s.do(t, "GET", "/v1/ops/dlq", dlqToken(t, "demo", "op", token.ScopeOps))
	if got := entryIDs(demo); len(got) != 2 || got[0] != newTestHex(1, 'a') || got[1] != newTestHex(0, 'a') {
		t.Fatalf("demo's operator sees %v, want demo's two, newest first", got)
	}
	e := all["entries"].([]any)[0].(map[string]any)
	if e["reason"] == "" || e["text"] == "" || e["state"] != "dead" {
		t.Fatalf("entry %v", e)
	}
	_, page := s.do(t, "GET", "/v1/ops/dlq?limit=2", dlqToken(t, "*", "op", token.ScopeOps))
	cursor, _ := page["next_cursor"].(string)
	_, rest := s.do(t, "GET", "/v1/ops/dlq?limit=2&cursor="+cursor, dlqToken(t, "*", "op", token.ScopeOps))
	if len(entryIDs(page)) != 2 || len(entryIDs(rest)) != 1 {
		t.Fatalf("pages %v then %v (cursor %q)", entryIDs(page), entryIDs(rest), cursor)
	}
}

// A re-drive queues the message again on its subject with its payload and
// trace, puts it back in line, and is audited; repeating it queues nothing
// more. A discard keeps it failed; the two exclude each other.
func TestOpsDLQRedriveAndDiscard(t *testing.T) {
	t.Parallel()
	s := newDLQServer(t)
	ctx := context.Background()
	op := dlqToken(t, "demo", "op-alice", token.ScopeOps, token.ScopeOpsWrite)
	m := s.msgs[newTestHex(0, 'a')]
	id := strconv.FormatInt(s.entries[m.ID].ID, 10)

	for range 2 {
		status, body := s.do(t, "POST", "/v1/ops/dlq/"+id+"/redrive", op)
		if status != 200 || body["entry"].(map[string]any)["state"] != "redriven" {
			t.Fatalf("redrive: %d %v", status, body)
		}
	}
	in, _ := s.js.Stream(ctx, queue.StreamIn)
	info, _ := in.Info(ctx)
	if info.State.Msgs != 1 {
		t.Fatalf("CHAT_IN holds %d messages after two re-drives, want 1", info.State.Msgs)
	}
	raw, err := in.GetLastMsgForSubject(ctx, queue.InSubject(m.Priority, m.ShopID))
	if err != nil {
		t.Fatal(err)
	}
	var got peakdesk.Message
	if err := json.Unmarshal(raw.Data, &got); err != nil || got.ID != m.ID || got.Text != m.Text {
		t.Fatalf("re-driven %s (%v)", raw.Data, err)
	}
	if raw.Header.Get("traceparent") == "" {
		t.Error("the trace header was not carried over")
	}
	var status string
	var attempts int
	if err := s.pool.QueryRow(ctx, `SELECT status, attempts FROM messages WHERE id = $1`, m.ID).Scan(&status, &attempts); err != nil ||
		status != "waiting" || attempts != 0 {
		t.Fatalf("message %s with %d attempts (%v), want back in line (waiting, 0)", status, attempts, err)
	}
	var audits int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM operator_audit WHERE actor = 'op-alice' AND scope = 'demo'
		AND shop = 'demo' AND action = 'dlq.redrive' AND target = $1`, "dlq:"+id).Scan(&audits); err != nil || audits != 2 {
		t.Fatalf("%d audit records (%v), want one per re-drive", audits, err)
	}
	if st, _ := s.do(t, "POST", "/v1/ops/dlq/"+id+"/discard", op); st != 400 {
		t.Fatalf("discarding a re-driven entry: %d, want 400", st)
	}

	other := strconv.FormatInt(s.entries[newTestHex(1, 'a')].ID, 10)
	for range 2 {
		if st, body := s.do(t, "POST", "/v1/ops/dlq/"+other+"/discard", op); st != 200 ||
			body["entry"].(map[string]any)["state"] != "discarded" || body["entry"].(map[string]any)["resolved_by"] != "op-alice" {
			t.Fatalf("discard: %d %v", st, body)
		}
	}
	if st, _ := s.do(t, "POST", "/v1/ops/dlq/"+other+"/redrive", op); st != 400 {
		t.Fatalf("re-driving a discarded entry: %d, want 400", st)
	}
	if err := s.pool.QueryRow(ctx, `SELECT status FROM messages WHERE id = $1`, newTestHex(1, 'a')).Scan(&status); err != nil || status != "failed" {
		t.Fatalf("discarded message is %s (%v), want failed", status, err)
	}
	_, dead := s.do(t, "GET", "/v1/ops/dlq?state=dead", dlqToken(t, "*", "op", token.ScopeOps))
	if got := entryIDs(dead); len(got) != 1 || got[0] != newTestHex(2, 'a') {
		t.Fatalf("dead entries %v, want only other's", got)
	}
}

// mustDLQOps returns the DLQ operations over db and js; a nil js serves
// tests that never re-drive.
func mustDLQOps(t *testing.T, db *storage.DB, js jetstream.JetStream) *outbox.DLQOps {
	t.Helper()
	if js == nil {
		ns := storagetest.NATS(t)
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, _ = jetstream.New(nc)
	}
	o, err := outbox.NewDLQOps(outbox.DLQOpsConfig{DB: db, JS: js})
	if err != nil {
		t.Fatal(err)
	}
	return o
}
