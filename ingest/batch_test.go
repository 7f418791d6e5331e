package ingest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/storage/queue"
)

// batchResults returns the per-message results of a batch answer.
func batchResults(t *testing.T, r result) []map[string]any {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("batch answered %d %s, want 200", r.status, r.raw)
	}
	list, _ := r.body["results"].([]any)
	out := make([]map[string]any, len(list))
	for i, v := range list {
		out[i], _ = v.(map[string]any)
	}
	return out
}

func itemCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

func TestBatchEachMessageGetsItsOwnResult(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	ctx := context.Background()
	if err := b.db.SetShopLimits(ctx, "shop1", 1000, 1000, 1, 3); err != nil {
		t.Fatal(err)
	}
	gw := tok(t, "shop1", "gateway", token.ScopeService)
	busy := b.salt + "busy"
	body := `{"messages":[
		{"user_id":"` + b.salt + `a","text":"我要退款，订单 123"},
		{"user_id":"` + b.salt + `b","text":"what discounts tonight?","client_msg_id":"k-1"},
		{"user_id":"` + b.salt + `c","text":"   "},
		{"user_id":"` + b.salt + `d","text":"hi","priority":"p9"},
		{"user_id":"` + b.salt + `e","text":"hi","colour":"red"},
		{"user_id":"` + busy + `","text":"one"},
		{"user_id":"` + busy + `","text":"two"},
		{"user_id":"` + busy + `","text":"three"},
		{"user_id":"` + busy + `","text":"four"},
		{"user_id":"` + b.salt + `f","text":"urgent please","priority":"p0"},
		"not an object"
	]}`
	res := batchResults(t, b.do(t, "POST", "/v1/messages:batch", gw, body))
	if len(res) != 11 {
		t.Fatalf("%d results, want 11", len(res))
	}
	wantOK := func(i int, prio string) {
		t.Helper()
		r := res[i]
		if r["http_status"] != float64(http.StatusAccepted) || r["status"] != "queued" || r["priority"] != prio ||
			!isHexID(fmt.Sprint(r["message_id"])) || !isHexID(fmt.Sprint(r["conversation_id"])) {
			t.Errorf("message %d: %v, want queued %s", i, r, prio)
		}
	}
	wantErr := func(i, status int, code, field string) {
		t.Helper()
		r := res[i]
		e, _ := r["error"].(map[string]any)
		if r["http_status"] != float64(status) || itemCode(r) != code || (field != "" && e["field"] != field) {
			t.Errorf("message %d: %v, want %d %s on %q", i, r, status, code, field)
		}
		if _, ok := r["message_id"]; ok {
			t.Errorf("message %d: a failed message has no message_id: %v", i, r)
		}
	}
	wantOK(0, "p0")
	wantOK(1, "p2")
	wantErr(2, 400, peakdesk.EInvalid, "text")
	wantErr(3, 400, peakdesk.EInvalid, "priority")
	wantErr(4, 400, peakdesk.EInvalid, "colour")
	wantErr(9, 403, peakdesk.EPermissionDenied, "priority")
	wantErr(10, 400, peakdesk.EInvalid, "")
	// The same user four times with a burst of 3 (and one more a minute):
	// exactly one is limited,
	// and it says when to retry.
	limited := 0
	for i := 5; i <= 8; i++ {
		switch res[i]["http_status"] {
		case float64(http.StatusAccepted):
		case float64(http.StatusTooManyRequests):
			limited++
			if e, _ := res[i]["error"].(map[string]any); itemCode(res[i]) != peakdesk.ERateLimited || e["retry_after"] == nil {
				t.Errorf("limited message %d: %v", i, res[i])
			}
		default:
			t.Errorf("message %d: %v", i, res[i])
		}
	}
	if limited != 1 {
		t.Errorf("%d of the busy user's 4 messages limited, want 1", limited)
	}

	// Exactly the accepted messages reached the queue, each once, as its
	// own user.
	s, _ := b.js.Stream(ctx, queue.StreamIn)
	info, _ := s.Info(ctx)
	if info.State.Msgs != 5 {
		t.Errorf("CHAT_IN holds %d messages, want 5", info.State.Msgs)
	}
	m, _ := b.takeMessage(t, peakdesk.P0)
	if m.UserID != b.salt+"a" || m.ID != res[0]["message_id"] {
		t.Errorf("p0 message %+v, want user a's %v", m, res[0]["message_id"])
	}

	// A repeat of a client_msg_id, in a batch or alone, gets the first id.
	again := batchResults(t, b.do(t, "POST", "/v1/messages:batch", gw,
		`{"messages":[{"user_id":"`+b.salt+`b","text":"what discounts tonight?","client_msg_id":"k-1"}]}`))
	single := b.do(t, "POST", "/v1/messages", gw, `{"user_id":"`+b.salt+`b","text":"what discounts tonight?","client_msg_id":"k-1"}`)
	if again[0]["message_id"] != res[1]["message_id"] || single.body["message_id"] != res[1]["message_id"] {
		t.Errorf("repeats: %v and %s, want message %v", again[0], single.raw, res[1]["message_id"])
	}
	info, _ = s.Info(ctx)
	if info.State.Msgs != 4 { // one taken above, no new copies
		t.Errorf("CHAT_IN holds %d messages after repeats, want 4", info.State.Msgs)
	}
}

func TestBatchRequestErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	gw := tok(t, "shop1", "gateway", token.ScopeService)
	many := `{"messages":[` + strings.TrimSuffix(strings.Repeat(`{"text":"x"},`, MaxBatchMessages+1), ",") + `]}`
	huge := `{"messages":[{"text":"` + strings.Repeat("x", MaxBatchBodyBytes) + `"}]}`
	cases := []struct {
		name, token, path, body string
		headers                 []string
		status                  int
		code                    string
	}{
		{"no token", "", "/v1/messages:batch", `{"messages":[{"text":"x"}]}`, nil, 401, peakdesk.EUnauthenticated},
		{"not JSON", gw, "/v1/messages:batch", `{"messages":`, nil, 400, peakdesk.EInvalid},
		{"no messages", gw, "/v1/messages:batch", `{"messages":[]}`, nil, 400, peakdesk.EInvalid},
		{"messages not an array", gw, "/v1/messages:batch", `{"messages":{"text":"x"}}`, nil, 400, peakdesk.EInvalid},
		{"unknown field", gw, "/v1/messages:batch", `{"messages":[{"text":"x"}],"mode":"fast"}`, nil, 400, peakdesk.EInvalid},
		{"too many", gw, "/v1/messages:batch", many, nil, 400, peakdesk.EInvalid},
		{"too large", gw, "/v1/messages:batch", huge, nil, 413, peakdesk.EPayloadTooLarge},
		{"wait", gw, "/v1/messages:batch?wait=1s", `{"messages":[{"text":"x"}]}`, nil, 400, peakdesk.EInvalid},
		{"idempotency header", gw, "/v1/messages:batch", `{"messages":[{"text":"x"}]}`, []string{"Idempotency-Key", "k"}, 400, peakdesk.EInvalid},
		{"operator token", tok(t, "*", "ops"), "/v1/messages:batch", `{"messages":[{"text":"x"}]}`, nil, 403, peakdesk.EPermissionDenied},
		{"unknown shop", tok(t, "nope", "gw", token.ScopeService), "/v1/messages:batch", `{"messages":[{"text":"x"}]}`, nil, 403, peakdesk.EPermissionDenied},
	}
	for _, c := range cases {
		r := b.do(t, "POST", c.path, c.token, c.body, c.headers...)
		if r.status != c.status || errCode(r) != c.code {
			t.Errorf("%s: %d %s, want %d %s", c.name, r.status, r.raw, c.status, c.code)
		}
	}
	// Without the service scope a message may not name another user; the
	// token's own user is fine.
	own := tok(t, "shop1", b.salt+"me")
	res := batchResults(t, b.do(t, "POST", "/v1/messages:batch", own,
		`{"messages":[{"text":"mine"},{"user_id":"someone-else","text":"theirs"}]}`))
	if res[0]["http_status"] != float64(202) || res[1]["http_status"] != float64(403) || itemCode(res[1]) != peakdesk.EPermissionDenied {
		t.Errorf("user_id without service scope: %v", res)
	}
	// Nothing from a refused request reached the queue.
	s, _ := b.js.Stream(context.Background(), queue.StreamIn)
	info, _ := s.Info(context.Background())
	if info.State.Msgs != 1 {
		t.Errorf("CHAT_IN holds %d messages, want 1", info.State.Msgs)
	}
}

// A batch's messages to another shop's conversation are not found, like a
// single POST's.
func TestBatchShopIsolation(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, nil)
	a := b.do(t, "POST", "/v1/messages", tok(t, "shop1", b.salt+"u"), `{"text":"hi"}`)
	conv, _ := a.body["conversation_id"].(string)
	res := batchResults(t, b.do(t, "POST", "/v1/messages:batch", tok(t, "shop2", "gateway", token.ScopeService),
		`{"messages":[{"user_id":"`+b.salt+`u","conversation_id":"`+conv+`","text":"hi"}]}`))
	if res[0]["http_status"] != float64(404) || itemCode(res[0]) != peakdesk.ENotFound {
		t.Errorf("another shop's conversation: %v, want 404", res[0])
	}
}

func TestBatchWithGroupCommit(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Topology{}, func(c *Config) { c.BatchPublish = true })
	gw := tok(t, "shop1", "gateway", token.ScopeService)
	var sb strings.Builder
	sb.WriteString(`{"messages":[`)
	for i := range 50 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"user_id":"%su%d","text":"message %d","client_msg_id":"c-%d"}`, b.salt, i%45, i, i%45)
	}
	sb.WriteString(`]}`)
	res := batchResults(t, b.do(t, "POST", "/v1/messages:batch", gw, sb.String()))
	ids := map[any]bool{}
	for i, r := range res {
		if r["http_status"] != float64(202) {
			t.Fatalf("message %d: %v", i, r)
		}
		ids[r["message_id"]] = true
	}
	// Messages 45..49 repeat 0..4 (same user, same key): one atomic batch
	// cannot hold both, and each still gets the first one's id.
	if len(ids) != 45 {
		t.Errorf("%d distinct message ids, want 45", len(ids))
	}
	for i := 45; i < 50; i++ {
		if res[i]["message_id"] != res[i-45]["message_id"] {
			t.Errorf("message %d: id %v, want %v", i, res[i]["message_id"], res[i-45]["message_id"])
		}
	}
	s, _ := b.js.Stream(context.Background(), queue.StreamIn)
	info, _ := s.Info(context.Background())
	if info.State.Msgs != 45 {
		t.Errorf("CHAT_IN holds %d messages, want 45", info.State.Msgs)
	}
}

func FuzzDecodeBatch(f *testing.F) {
	f.Add([]byte(`{"messages":[{"text":"hi"},{"user_id":"u2","text":"我的订单 123456 到哪了？"}]}`))
	f.Add([]byte(`{"messages":[1,"x",null]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		items, err := decodeBatch(body)
		if err != nil {
			if peakdesk.ErrorCode(err) == peakdesk.EInternal {
				t.Fatalf("internal error for bad input: %v", err)
			}
			return
		}
		if len(items) == 0 || len(items) > MaxBatchMessages {
			t.Fatalf("accepted a batch of %d messages", len(items))
		}
		// Each message is then held to the single-message rules.
		for _, raw := range items {
			if _, err := decodePostRequest(raw); err != nil && peakdesk.ErrorCode(err) == peakdesk.EInternal {
				t.Fatalf("internal error for a bad message: %v", err)
			}
		}
	})
}
