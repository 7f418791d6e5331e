package dashboard_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk"
	"github.com/peakdesk/peakdesk/dashboard"
	"github.com/peakdesk/peakdesk/ingest/token"
	"github.com/peakdesk/peakdesk/outbox"
	"github.com/peakdesk/peakdesk/storage"
	"github.com/peakdesk/peakdesk/storage/storagetest"
)

// deskServer serves the agent API over real services, with conversation
// conv of shop "demo" handed to a human (the customer asked).
type deskServer struct {
	url  string
	conv string
}

func newDeskServer(t *testing.T) *deskServer {
	t.Helper()
	ctx := context.Background()
	js := storagetest.JetStream(t)
	db, err := storage.Open(ctx, storagetest.DatabaseURL(t), 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	for _, shop := range []string{"demo", "other"} {
		if err := db.EnsureShop(ctx, shop, shop); err != nil {
			t.Fatal(err)
		}
	}
	// What a worker does with a customer asking for a human.
	m := &peakdesk.Message{ID: newTestHex(1, 'a'), ShopID: "demo", ConversationID: newTestHex(1, 'c'), UserID: "alice",
		Text: "转人工", Priority: peakdesk.P2, AcceptedAt: time.Now()}
	c, err := db.ClaimMessage(ctx, m, "worker", time.Minute, 20)
	if err != nil || c.Hold == nil {
		t.Fatalf("claim: %+v %v", c, err)
	}
	r := &peakdesk.Reply{ID: newTestHex(1, 'b'), ShopID: "demo", ConversationID: m.ConversationID,
		MessageIDs: c.Hold.MessageIDs(), Text: "正在为您转接人工客服", Source: peakdesk.SourceHandoff}
	if _, err := db.SaveTurn(ctx, c.Hold, storage.TurnReply{Reply: r,
		Handoff: &storage.HandOff{Reason: peakdesk.HandoffCustomerAsked, Priority: peakdesk.P2}}, time.Minute, 20); err != nil {
		t.Fatal(err)
	}
	desk, err := outbox.NewDesk(outbox.DeskConfig{DB: db, JS: js})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	dashboard.RegisterDeskAPI(mux, dashboard.DeskAPIConfig{Auth: token.NewAuthenticator([]byte(dlqTestSecret)), Desk: desk})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &deskServer{url: srv.URL, conv: m.ConversationID}
}

func (s *deskServer) do(t *testing.T, method, path, tok, body string, headers ...string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, s.url+path, bytes.NewReader([]byte(body)))
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

// Only a shop's agents work its conversations through the agent API: no
// token, a customer's or a service's token, another shop's agent, bad
// input and a reply before the claim are refused with the edge's codes.
func TestDeskAPIRefusals(t *testing.T) {
	t.Parallel()
	s := newDeskServer(t)
	ann := dlqToken(t, "demo", "ann", token.ScopeAgent)
	claim := "/v1/conversations/" + s.conv + "/claim"
	replies := "/v1/conversations/" + s.conv + "/replies"
	for _, tc := range []struct {
		name, method, path, tok, body string
		status                        int
		code                          string
	}{
		{"no token", "POST", claim, "", "", 401, peakdesk.EUnauthenticated},
		{"a customer's token", "POST", claim, dlqToken(t, "demo", "alice"), "", 403, peakdesk.EPermissionDenied},
		{"a service token", "GET", "/v1/inbox", dlqToken(t, "demo", "crm", token.ScopeService), "", 403, peakdesk.EPermissionDenied},
		{"another shop's agent", "POST", claim, dlqToken(t, "other", "ann", token.ScopeAgent), "", 404, peakdesk.ENotFound},
		{"not a conversation id", "POST", "/v1/conversations/xyz/claim", ann, "", 404, peakdesk.ENotFound},
		{"a bad limit", "GET", "/v1/inbox?limit=0", ann, "", 400, peakdesk.EInvalid},
		{"reply before claiming", "POST", replies, ann, `{"text":"hello"}`, 409, peakdesk.EConflict},
		{"an unknown field", "POST", replies, ann, `{"text":"hello","source":"llm"}`, 400, peakdesk.EInvalid},
		{"an empty reply", "POST", replies, ann, `{"text":"  "}`, 400, peakdesk.EInvalid},
		{"invalid UTF-8", "POST", replies, ann, "{\"text\":\"\xff\"}", 400, peakdesk.EInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := s.do(t, tc.method, tc.path, tc.tok, tc.body)
			e, _ := body["error"].(map[string]any)
			if status != tc.status || e["code"] != tc.code {
				t.Fatalf("%d %v; want %d %s", status, body, tc.status, tc.code)
			}
		})
	}
}

// An agent's day through the API: the inbox lists the waiting
// conversation, the agent claims it (a colleague's claim is refused),
// replies (a retry with the same Idempotency-Key is the same reply),
// resolves it, and the inbox is empty.
func TestDeskAPIClaimReplyResolve(t *testing.T) {
	t.Parallel()
	s := newDeskServer(t)
	ann := dlqToken(t, "demo", "ann", token.ScopeAgent)
	bob := dlqToken(t, "demo", "bob", token.ScopeAgent)
	base := "/v1/conversations/" + s.conv

	status, in := s.do(t, "GET", "/v1/inbox", ann, "")
	waiting, _ := in["waiting"].([]any)
	if status != 200 || len(waiting) != 1 || in["waiting_total"] != float64(1) ||
		waiting[0].(map[string]any)["conversation_id"] != s.conv || waiting[0].(map[string]any)["last_text"] != "转人工" {
		t.Fatalf("inbox: %d %v", status, in)
	}
	if status, c := s.do(t, "POST", base+"/claim", ann, ""); status != 200 || c["state"] != "assigned" || c["agent"] != "ann" {
		t.Fatalf("ann's claim: %d %v", status, c)
	}
	status, refused := s.do(t, "POST", base+"/claim", bob, "")
	if e, _ := refused["error"].(map[string]any); status != 409 || !strings.Contains(e["message"].(string), "assigned to ann") {
		t.Fatalf("bob's claim: %d %v; want 409 naming ann", status, refused)
	}
	status, r1 := s.do(t, "POST", base+"/replies", ann, `{"text":"您好，我是客服 ann"}`, "Idempotency-Key", "k1")
	if status != 201 || r1["source"] != peakdesk.SourceAgent || r1["agent"] != "ann" {
		t.Fatalf("reply: %d %v", status, r1)
	}
	if status, r2 := s.do(t, "POST", base+"/replies", ann, `{"text":"您好，我是客服 ann"}`, "Idempotency-Key", "k1"); status != 200 ||
		r2["reply_id"] != r1["reply_id"] {
		t.Fatalf("the reply again: %d %v; want 200 and reply %v", status, r2, r1["reply_id"])
	}
	if status, c := s.do(t, "POST", base+"/resolve", bob, ""); status != 409 {
		t.Fatalf("bob resolves ann's conversation: %d %v", status, c)
	}
	if status, c := s.do(t, "POST", base+"/resolve", ann, ""); status != 200 || c["state"] != "resolved" {
		t.Fatalf("resolve: %d %v", status, c)
	}
	if status, in := s.do(t, "GET", "/v1/inbox", ann, ""); status != 200 || in["waiting_total"] != float64(0) {
		t.Fatalf("inbox after: %d %v", status, in)
	}
}
