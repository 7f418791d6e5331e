package dashboard_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
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

const opsTestSecret = "ops-test-secret-0123456789abcdef0123456789"

type opsServer struct {
	t   *testing.T
	url string
	db  *storage.DB
	ids map[string]int64 // action ids by idempotency key
}

// newOpsServer serves the ops API over a fresh database with 5 coupons of
// shop "demo" (keys demo-0..demo-4) and 2 refunds of shop "other".
func newOpsServer(t *testing.T) *opsServer {
	t.Helper()
	db := storagetest.DB(t)
	ctx := context.Background()
	var actions []peakdesk.Action
	for _, shop := range []string{"demo", "other"} {
		if err := db.EnsureShop(ctx, shop, shop); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		actions = append(actions, peakdesk.Action{ShopID: "demo", Kind: peakdesk.ActionCouponIssue,
			Payload:        json.RawMessage(fmt.Sprintf(`{"user_id":"u%d","amount_cents":500,"reason":"late parcel"}`, i)),
			IdempotencyKey: fmt.Sprintf("demo-%d", i), MaxAttempts: 3})
	}
	for i := range 2 {
		actions = append(actions, peakdesk.Action{ShopID: "other", Kind: peakdesk.ActionRefundRequest,
			Payload: json.RawMessage(`{"order_id":"1234567"}`), IdempotencyKey: fmt.Sprintf("other-%d", i), MaxAttempts: 3})
	}
	if _, err := db.EnqueueActions(ctx, actions); err != nil {
		t.Fatal(err)
	}
	ops, err := outbox.NewOps(outbox.OpsConfig{DB: db})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	dashboard.RegisterAPI(mux, dashboard.APIConfig{Auth: token.NewAuthenticator([]byte(opsTestSecret)), Ops: ops,
		DLQ: mustDLQOps(t, db, nil)})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	s := &opsServer{t: t, url: srv.URL, db: db, ids: map[string]int64{}}
	all, err := db.ListActions(ctx, storage.AllShops, storage.ActionFilter{}, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range all {
		s.ids[a.IdempotencyKey] = a.ID
	}
	return s
}

func (s *opsServer) token(shop string, scopes ...string) string {
	s.t.Helper()
	tok, err := token.Sign([]byte(opsTestSecret), shop, "operator-"+shop, scopes, time.Hour)
	if err != nil {
		s.t.Fatal(err)
	}
	return tok
}

type opsResult struct {
	status int
	body   map[string]any
	raw    []byte
}

func (r opsResult) code() string {
	e, _ := r.body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func (r opsResult) field() string {
	e, _ := r.body["error"].(map[string]any)
	f, _ := e["field"].(string)
	return f
}

func (s *opsServer) do(method, path, tok, body string) opsResult {
	s.t.Helper()
	req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := opsResult{status: resp.StatusCode, raw: raw}
	_ = json.Unmarshal(raw, &r.body)
	return r
}

func TestOpsActionsAuth(t *testing.T) {
	t.Parallel()
	s := newOpsServer(t)
	platformViewer := s.token("*", token.ScopeOps)
	platformWriter := s.token("*", token.ScopeOpsWrite)
	demoWriter := s.token("demo", token.ScopeOps, token.ScopeOpsWrite)
	customer := s.token("demo") // an end-user token, no ops scope
	demo0 := fmt.Sprint(s.ids["demo-0"])
	other0 := fmt.Sprint(s.ids["other-0"])

	tests := []struct {
		name, method, path, tok, body string
		status                        int
		code                          string
	}{
		{"no token", "GET", "/v1/ops/actions", "", "", 401, peakdesk.EUnauthenticated},
		{"customer token", "GET", "/v1/ops/actions", customer, "", 403, peakdesk.EPermissionDenied},
		{"viewer reads", "GET", "/v1/ops/actions/" + other0, platformViewer, "", 200, ""},
		{"viewer cannot retry", "POST", "/v1/ops/actions/" + demo0 + "/retry", platformViewer, "", 403, peakdesk.EPermissionDenied},
		{"viewer cannot bulk", "POST", "/v1/ops/actions/bulk", platformViewer, `{"filter":{"state":"dead"},"op":"retry"}`, 403, peakdesk.EPermissionDenied},
		{"ops:write reads too", "GET", "/v1/ops/actions/" + demo0, platformWriter, "", 200, ""},
		{"shop operator cannot see another shop's action", "GET", "/v1/ops/actions/" + other0, demoWriter, "", 404, peakdesk.ENotFound},
		{"shop operator cannot list another shop", "GET", "/v1/ops/actions?shop=other", demoWriter, "", 403, peakdesk.EPermissionDenied},
		{"shop operator cannot cancel another shop's action", "POST", "/v1/ops/actions/" + other0 + "/cancel", demoWriter, "", 404, peakdesk.ENotFound},
		{"shop operator cancels their own", "POST", "/v1/ops/actions/" + demo0 + "/cancel", demoWriter, "", 200, ""},
		{"twice is not possible", "POST", "/v1/ops/actions/" + demo0 + "/cancel", demoWriter, "", 400, peakdesk.EInvalid},
		{"retry brings it back", "POST", "/v1/ops/actions/" + demo0 + "/retry", demoWriter, "", 200, ""},
		{"malformed id", "GET", "/v1/ops/actions/x1", platformViewer, "", 404, peakdesk.ENotFound},
		{"unknown state", "GET", "/v1/ops/actions?state=lost", platformViewer, "", 400, peakdesk.EInvalid},
		{"bad limit", "GET", "/v1/ops/actions?limit=100000", platformViewer, "", 400, peakdesk.EInvalid},
		{"empty bulk filter", "POST", "/v1/ops/actions/bulk", platformWriter, `{"filter":{},"op":"cancel"}`, 400, peakdesk.EInvalid},
		{"unknown bulk field", "POST", "/v1/ops/actions/bulk", platformWriter, `{"filter":{"state":"dead"},"op":"cancel","all":true}`, 400, peakdesk.EInvalid},
		{"unknown bulk op", "POST", "/v1/ops/actions/bulk", platformWriter, `{"filter":{"state":"dead"},"op":"purge"}`, 400, peakdesk.EInvalid},
	}
	for _, tc := range tests {
		r := s.do(tc.method, tc.path, tc.tok, tc.body)
		if r.status != tc.status || r.code() != tc.code {
			t.Errorf("%s: %d %s, want %d %q", tc.name, r.status, r.raw, tc.status, tc.code)
		}
	}

	// The shop operator's bulk cancel touches their own shop only.
	r := s.do("POST", "/v1/ops/actions/bulk", demoWriter, `{"filter":{"state":"pending"},"op":"cancel"}`)
	if r.status != 200 || r.body["affected"] != float64(5) || r.body["bulk_id"] == nil {
		t.Fatalf("bulk cancel: %d %s", r.status, r.raw)
	}
	progress := fmt.Sprintf("/v1/ops/actions/bulk/%v", r.body["bulk_id"])
	for who, tok := range map[string]string{"its operator": demoWriter, "a platform viewer": platformViewer} {
		p := s.do("GET", progress, tok, "")
		states, _ := p.body["states"].(map[string]any)
		if p.status != 200 || p.body["settled"] != true || states["canceled"] != float64(5) || states["pending"] != float64(0) {
			t.Fatalf("bulk progress seen by %s: %d %s", who, p.status, p.raw)
		}
	}
	for _, bad := range []struct{ path, tok string }{
		{"/v1/ops/actions/bulk/0", demoWriter},
		{"/v1/ops/actions/bulk/x", demoWriter},
		{progress, s.token("other", token.ScopeOps)},
	} {
		if p := s.do("GET", bad.path, bad.tok, ""); p.status != 404 || p.code() != peakdesk.ENotFound {
			t.Fatalf("%s: %d %s, want not_found", bad.path, p.status, p.raw)
		}
	}
	if a, _ := s.db.Action(context.Background(), storage.AllShops, s.ids["other-1"]); a.State != peakdesk.ActionPending {
		t.Fatalf("another shop's action was touched: %+v", a)
	}
	audit, err := s.db.AuditLog(context.Background(), "demo", 0, 10)
	if err != nil || len(audit) != 3 || audit[0].Action != "outbox.bulk_cancel" || audit[0].Actor != "operator-demo" {
		t.Fatalf("audit: %+v, %v", audit, err)
	}
}

func TestOpsActionsListPagesWithACursor(t *testing.T) {
	t.Parallel()
	s := newOpsServer(t)
	tok := s.token("*", token.ScopeOps)
	var keys []string
	path := "/v1/ops/actions?limit=3"
	for range 5 {
		r := s.do("GET", path, tok, "")
		if r.status != 200 {
			t.Fatalf("list: %d %s", r.status, r.raw)
		}
		var page struct {
			Actions []peakdesk.Action `json:"actions"`
			Next    string            `json:"next_cursor"`
		}
		if err := json.Unmarshal(r.raw, &page); err != nil {
			t.Fatal(err)
		}
		for _, a := range page.Actions {
			keys = append(keys, a.IdempotencyKey)
		}
		if page.Next == "" {
			break
		}
		path = "/v1/ops/actions?limit=3&cursor=" + url.QueryEscape(page.Next)
	}
	if fmt.Sprint(keys) != "[other-1 other-0 demo-4 demo-3 demo-2 demo-1 demo-0]" {
		t.Fatalf("pages: %v", keys)
	}

	r := s.do("GET", "/v1/ops/actions?kind=coupon.issue&q=LATE+PARCEL&limit=2", tok, "")
	if r.status != 200 || len(r.body["actions"].([]any)) != 2 || r.body["next_cursor"] == nil {
		t.Fatalf("search: %d %s", r.status, r.raw)
	}
	if r := s.do("GET", "/v1/ops/actions?cursor=Zm9v", tok, ""); r.status != 400 || r.field() != "cursor" {
		t.Fatalf("forged cursor: %d %s", r.status, r.raw)
	}

	r = s.do("GET", "/v1/ops/actions/"+fmt.Sprint(s.ids["demo-2"]), tok, "")
	var d struct {
		Action   peakdesk.Action          `json:"action"`
		Attempts []peakdesk.ActionAttempt `json:"attempts"`
	}
	if err := json.Unmarshal(r.raw, &d); err != nil || d.Action.IdempotencyKey != "demo-2" || d.Attempts == nil {
		t.Fatalf("detail: %s, %v", r.raw, err)
	}
	if !bytes.Contains(r.raw, []byte(`"attempts":[]`)) {
		t.Fatalf("detail must list attempts, even none: %s", r.raw)
	}
}
