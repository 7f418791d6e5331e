package shopsim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peakdesk/peakdesk/outbox/shopapi"
)

// shopBundle is one simulated shop behind a real HTTP server.
type shopBundle struct {
	sim *Sim
	srv *httptest.Server
}

func shopSetup(t *testing.T, f Faults, secret string) *shopBundle {
	t.Helper()
	sim := New(f, []byte(secret))
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return &shopBundle{sim: sim, srv: srv}
}

// shopReq describes one request; Body is sent as is when it is a string,
// else JSON-encoded.
type shopReq struct {
	Method, Path, Shop, Key string
	Body                    any
	Header                  map[string]string
	Ctx                     context.Context
}

type shopResp struct {
	Status int
	Header http.Header
	Body   []byte
}

// errorCode returns error.code of a JSON error body.
func (r shopResp) errorCode() string {
	var e shopError
	_ = json.Unmarshal(r.Body, &e)
	return e.Error.Code
}

func (r shopResp) replayed() bool { return r.Header.Get(ReplayedHeader) == "true" }

func (b *shopBundle) send(q shopReq) (shopResp, error) {
	var body io.Reader
	switch v := q.Body.(type) {
	case nil:
	case string:
		body = strings.NewReader(v)
	default:
		raw, err := json.Marshal(v)
		if err != nil {
			return shopResp{}, err
		}
		body = bytes.NewReader(raw)
	}
	ctx := q.Ctx
	if ctx == nil {
		ctx = context.Background()
	}
	req, err := http.NewRequestWithContext(ctx, q.Method, b.srv.URL+q.Path, body)
	if err != nil {
		return shopResp{}, err
	}
	if q.Shop != "" {
		req.Header.Set(Header, q.Shop)
	}
	if q.Key != "" {
		req.Header.Set("Idempotency-Key", q.Key)
	}
	for k, v := range q.Header {
		req.Header.Set(k, v)
	}
	res, err := b.srv.Client().Do(req)
	if err != nil {
		return shopResp{}, err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return shopResp{}, err
	}
	return shopResp{Status: res.StatusCode, Header: res.Header, Body: raw}, nil
}

func (b *shopBundle) do(t *testing.T, q shopReq) shopResp {
	t.Helper()
	r, err := b.send(q)
	if err != nil {
		t.Fatalf("%s %s: %v", q.Method, q.Path, err)
	}
	return r
}

// shopEventually polls cond until it holds or a deadline passes.
func shopEventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// shopInFlight reports whether the first request for key is still running.
func shopInFlight(s *Sim, shop, key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.keys[shopKey{shop, key}]
	return e != nil && !e.done
}

func shopCoupon100(user string) map[string]any {
	return map[string]any{"user_id": user, "amount_cents": 100, "reason": "late delivery"}
}

func TestShopOrders(t *testing.T) {
	t.Parallel()
	b := shopSetup(t, Faults{}, "")
	b.sim.AddOrder(Order{ID: "A-1", Shop: "acme", UserID: "alice", Status: "paid", AmountCents: 4200,
		Logistics: Logistics{Carrier: "SF Express", TrackingNo: "SF1", Status: "in_transit"}})
	b.sim.AddOrder(Order{ID: "9000001", Shop: "acme", UserID: "bob", Status: "shipped", AmountCents: 100})

	tests := []struct {
		name, path, shop string
		wantStatus       int
		check            func(t *testing.T, body []byte)
	}{
		{"catalogue order", "/orders/1234567", "", 200, func(t *testing.T, body []byte) {
			var o Order
			_ = json.Unmarshal(body, &o)
			// 234567: user u7, amount (567+1)*100, (23456)%4 = 0 → paid.
			if o.ID != "1234567" || o.Shop != "demo" || o.UserID != "u7" || o.AmountCents != 56800 || o.Status != "paid" || len(o.Items) != 1 {
				t.Errorf("order = %+v", o)
			}
		}},
		{"catalogue logistics delivered", "/orders/20251111/logistics", "shop-b", 200, func(t *testing.T, body []byte) {
			var l shopLogisticsView
			_ = json.Unmarshal(body, &l)
			// 20251111: (2025111)%4 = 3 → completed/delivered; 20251111%3 = 1 → ZTO.
			if l.OrderID != "20251111" || l.Status != "delivered" || l.Carrier != "ZTO Express" || l.TrackingNo != "ZTO20251111" || len(l.Events) != 4 {
				t.Errorf("logistics = %+v", l)
			}
		}},
		{"catalogue order for any shop", "/orders/1234567", "shop-b", 200, func(t *testing.T, body []byte) {
			if !bytes.Contains(body, []byte(`"shop":"shop-b"`)) {
				t.Errorf("body = %s", body)
			}
		}},
		{"added order", "/orders/A-1", "acme", 200, func(t *testing.T, body []byte) {
			var o Order
			_ = json.Unmarshal(body, &o)
			if o.UserID != "alice" || o.AmountCents != 4200 || o.Currency != "CNY" {
				t.Errorf("order = %+v", o)
			}
		}},
		{"added logistics", "/orders/A-1/logistics", "acme", 200, func(t *testing.T, body []byte) {
			var l shopLogisticsView
			_ = json.Unmarshal(body, &l)
			if l.TrackingNo != "SF1" || l.Status != "in_transit" {
				t.Errorf("logistics = %+v", l)
			}
		}},
		{"other shop's order", "/orders/A-1", "demo", 404, nil},
		{"other shop's logistics", "/orders/A-1/logistics", "", 404, nil},
		{"added id shadows catalogue", "/orders/9000001", "demo", 404, nil},
		{"too short", "/orders/12345", "", 404, nil},
		{"not digits", "/orders/12345x7", "", 404, nil},
		{"unknown route", "/nope", "", 404, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := b.do(t, shopReq{Method: "GET", Path: tc.path, Shop: tc.shop})
			if r.Status != tc.wantStatus {
				t.Fatalf("status = %d, want %d (%s)", r.Status, tc.wantStatus, r.Body)
			}
			if tc.wantStatus == 404 && r.errorCode() != "not_found" {
				t.Errorf("error code = %q, want not_found", r.errorCode())
			}
			if tc.check != nil {
				tc.check(t, r.Body)
			}
		})
	}
}

func TestShopEffectCreatedOnceAndReplayed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		kind, path string
		body       any
		repeat     any // same parameters, spelled differently
	}{
		{"coupon", "/coupons", shopCoupon100("u7"), `{ "reason":"late delivery","amount_cents":100, "user_id":"u7" }`},
		{"refund", "/refunds", map[string]any{"order_id": "1234567", "reason": "broken"}, `{"reason":"broken","order_id":"1234567"}`},
	}
	for _, tc := range tests {
		t.Run(tc.kind, func(t *testing.T) {
			t.Parallel()
			b := shopSetup(t, Faults{}, "")
			first := b.do(t, shopReq{Method: "POST", Path: tc.path, Key: "k1", Body: tc.body})
			if first.Status != 201 || first.replayed() {
				t.Fatalf("first: status %d replayed %v: %s", first.Status, first.replayed(), first.Body)
			}
			var obj map[string]any
			if err := json.Unmarshal(first.Body, &obj); err != nil || obj["id"] == "" || obj["object"] != tc.kind {
				t.Fatalf("created object = %s (%v)", first.Body, err)
			}
			for _, body := range []any{tc.body, tc.repeat} {
				again := b.do(t, shopReq{Method: "POST", Path: tc.path, Key: "k1", Body: body})
				if again.Status != 201 || !again.replayed() || !bytes.Equal(again.Body, first.Body) {
					t.Fatalf("repeat: status %d replayed %v body %s, want replay of %s", again.Status, again.replayed(), again.Body, first.Body)
				}
			}
			effects := b.sim.Effects()
			if len(effects) != 1 || effects[0].Kind != tc.kind || effects[0].IdempotencyKey != "k1" || effects[0].Shop != "demo" {
				t.Fatalf("effects = %+v", effects)
			}
			if !bytes.Equal(bytes.TrimSpace(first.Body), effects[0].Body) {
				t.Errorf("effect body %s, want %s", effects[0].Body, first.Body)
			}
			if st := b.sim.Stats(); st.Replays != 2 || st.Effects[tc.kind] != 1 || st.Requests[tc.kind][201] != 3 {
				t.Errorf("stats = %+v", st)
			}
		})
	}
}

func TestShopKeyReuse(t *testing.T) {
	t.Parallel()
	b := shopSetup(t, Faults{}, "")
	if r := b.do(t, shopReq{Method: "POST", Path: "/coupons", Key: "k", Body: shopCoupon100("u1")}); r.Status != 201 {
		t.Fatalf("first: %d %s", r.Status, r.Body)
	}
	tests := []struct {
		name, path, shop string
		body             any
		wantStatus       int
		wantCode         string
	}{
		{"different amount", "/coupons", "", map[string]any{"user_id": "u1", "amount_cents": 200, "reason": "late delivery"}, 422, "idempotency_key_reuse"},
		{"extra parameter", "/coupons", "demo", map[string]any{"user_id": "u1", "amount_cents": 100, "reason": "late delivery", "order_id": "1234561"}, 422, "idempotency_key_reuse"},
		{"other endpoint", "/refunds", "", map[string]any{"order_id": "1234561"}, 422, "idempotency_key_reuse"},
		{"other shop has its own keys", "/coupons", "acme", shopCoupon100("u1"), 201, ""},
	}
	for _, tc := range tests {
		r := b.do(t, shopReq{Method: "POST", Path: tc.path, Shop: tc.shop, Key: "k", Body: tc.body})
		if r.Status != tc.wantStatus || r.errorCode() != tc.wantCode {
			t.Errorf("%s: %d %s, want %d %s", tc.name, r.Status, r.Body, tc.wantStatus, tc.wantCode)
		}
	}
	if n := len(b.sim.Effects()); n != 2 {
		t.Errorf("effects = %d, want 2 (one per shop)", n)
	}
	if st := b.sim.Stats(); st.KeyReuses != 3 {
		t.Errorf("key reuses = %d, want 3", st.KeyReuses)
	}
}

func TestShopValidation(t *testing.T) {
	t.Parallel()
	b := shopSetup(t, Faults{}, "")
	b.sim.AddOrder(Order{ID: "A-1", Shop: "acme", UserID: "alice", AmountCents: 4200})
	tests := []struct {
		name, path, key string
		body            any
		wantStatus      int
		wantCode        string
		stored          bool
	}{
		{"coupon amount zero", "/coupons", "v1", map[string]any{"user_id": "u1", "amount_cents": 0}, 422, "invalid_argument", true},
		{"coupon negative amount", "/coupons", "v2", map[string]any{"user_id": "u1", "amount_cents": -5}, 422, "invalid_argument", true},
		{"coupon without user", "/coupons", "v3", map[string]any{"amount_cents": 100}, 422, "invalid_argument", true},
		{"coupon unknown order", "/coupons", "v4", map[string]any{"user_id": "u1", "amount_cents": 100, "order_id": "nope"}, 422, "order_not_found", true},
		{"coupon wrong type", "/coupons", "v5", `{"user_id":"u1","amount_cents":"lots"}`, 422, "invalid_argument", true},
		{"refund unknown order", "/refunds", "v6", map[string]any{"order_id": "12"}, 422, "order_not_found", true},
		{"refund other shop's order", "/refunds", "v7", map[string]any{"order_id": "A-1"}, 422, "order_not_found", true},
		{"refund without order", "/refunds", "v8", map[string]any{"amount_cents": 100}, 422, "invalid_argument", true},
		{"refund above order amount", "/refunds", "v9", map[string]any{"order_id": "1234567", "amount_cents": 56801}, 422, "amount_exceeds_order", true},
		{"refund zero amount", "/refunds", "v10", map[string]any{"order_id": "1234567", "amount_cents": 0}, 422, "invalid_argument", true},
		{"missing key", "/coupons", "", shopCoupon100("u1"), 400, "invalid_argument", false},
		{"malformed JSON", "/refunds", "v11", `{"order_id":`, 400, "invalid_argument", false},
		{"trailing data", "/refunds", "v12", `{"order_id":"1234567"} {}`, 400, "invalid_argument", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for i, wantReplay := range []bool{false, tc.stored} {
				r := b.do(t, shopReq{Method: "POST", Path: tc.path, Key: tc.key, Body: tc.body})
				if r.Status != tc.wantStatus || r.errorCode() != tc.wantCode || r.replayed() != wantReplay {
					t.Fatalf("try %d: %d replayed=%v %s, want %d %s replayed=%v", i, r.Status, r.replayed(), r.Body, tc.wantStatus, tc.wantCode, wantReplay)
				}
			}
		})
	}
	t.Cleanup(func() {
		if n := len(b.sim.Effects()); n != 0 {
			t.Errorf("effects = %d, want 0", n)
		}
	})
}

// TestShopConcurrentSameKey sends one key many times at once while the
// shop is slow: one request runs, the others are refused or replayed.
func TestShopConcurrentSameKey(t *testing.T) {
	t.Parallel()
	b := shopSetup(t, Faults{LatencyMS: 50}, "")
	const n = 16
	results := make([]shopResp, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			results[i], errs[i] = b.send(shopReq{Method: "POST", Path: "/refunds", Key: "same", Body: map[string]any{"order_id": "7654321"}})
		})
	}
	wg.Wait()
	var created, conflicts, replays int
	var original []byte
	for i, r := range results {
		switch {
		case errs[i] != nil:
			t.Fatalf("request %d: %v", i, errs[i])
		case r.Status == 201 && !r.replayed():
			created++
			original = r.Body
		case r.Status == 201:
			replays++
		case r.Status == 409 && r.errorCode() == "idempotency_conflict":
			conflicts++
		default:
			t.Fatalf("request %d: unexpected %d %s", i, r.Status, r.Body)
		}
	}
	if created != 1 || conflicts+replays != n-1 {
		t.Fatalf("created %d, conflicts %d, replays %d", created, conflicts, replays)
	}
	for _, r := range results {
		if r.replayed() && !bytes.Equal(r.Body, original) {
			t.Errorf("replay %s differs from original %s", r.Body, original)
		}
	}
	if n := len(b.sim.Effects()); n != 1 {
		t.Errorf("effects = %d, want 1", n)
	}
	if st := b.sim.Stats(); st.Conflicts != int64(conflicts) || st.Replays != int64(replays) {
		t.Errorf("stats conflicts %d replays %d, want %d %d", st.Conflicts, st.Replays, conflicts, replays)
	}
}

// TestShopInFlightConflict holds the first request in its latency, proves a
// second one gets 409, then abandons the first: its key is freed and a retry
// applies the effect once.
func TestShopInFlightConflict(t *testing.T) {
	t.Parallel()
	b := shopSetup(t, Faults{LatencyMS: int(time.Hour / time.Millisecond)}, "")
	body := shopCoupon100("u3")
	ctx, cancel := context.WithCancel(context.Background())
	firstDone := make(chan error, 1)
	go func() {
		_, err := b.send(shopReq{Ctx: ctx, Method: "POST", Path: "/coupons", Key: "slow", Body: body})
		firstDone <- err
	}()
	shopEventually(t, "first request in flight", func() bool { return shopInFlight(b.sim, "demo", "slow") })

	if r := b.do(t, shopReq{Method: "POST", Path: "/coupons", Key: "slow", Body: body}); r.Status != 409 || r.errorCode() != "idempotency_conflict" {
		t.Fatalf("second: %d %s, want 409 idempotency_conflict", r.Status, r.Body)
	}
	cancel()
	if err := <-firstDone; err == nil {
		t.Fatal("first request succeeded, want it cancelled")
	}
	shopEventually(t, "key released", func() bool { return !shopInFlight(b.sim, "demo", "slow") })
	if n := len(b.sim.Effects()); n != 0 {
		t.Fatalf("effects after abandoned request = %d, want 0", n)
	}

	b.sim.SetFaults(Faults{})
	if r := b.do(t, shopReq{Method: "POST", Path: "/coupons", Key: "slow", Body: body}); r.Status != 201 || r.replayed() {
		t.Fatalf("retry: %d replayed=%v %s", r.Status, r.replayed(), r.Body)
	}
	if n := len(b.sim.Effects()); n != 1 {
		t.Errorf("effects = %d, want 1", n)
	}
	shopEventually(t, "499 counted", func() bool { return b.sim.Stats().Requests["coupon"][499] == 1 })
}

// TestShopFaultNotStored: an injected failure leaves the key free, so the
// same request succeeds once the shop recovers.
func TestShopFaultNotStored(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		faults     Faults
		wantStatus int
		wantCode   string
	}{
		{"error rate default status", Faults{ErrorRate: 1}, 503, "unavailable"},
		{"error rate 500", Faults{ErrorRate: 1, ErrorStatus: 500}, 500, "internal"},
		{"error rate 429", Faults{ErrorRate: 1, ErrorStatus: 429}, 429, "rate_limited"},
		{"error statuses over error status", Faults{ErrorRate: 1, ErrorStatus: 503, ErrorStatuses: map[int]float64{500: 1}}, 500, "internal"},
		{"down", Faults{Down: true, LatencyMS: int(time.Hour / time.Millisecond)}, 503, "unavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := shopSetup(t, tc.faults, "")
			body := map[string]any{"order_id": "1111111", "amount_cents": 500}
			for _, q := range []shopReq{
				{Method: "POST", Path: "/refunds", Key: "r1", Body: body},
				{Method: "POST", Path: "/refunds", Key: "r1", Body: body},
				{Method: "GET", Path: "/orders/1111111"},
				{Method: "GET", Path: "/orders/1111111/logistics"},
				{Method: "POST", Path: "/webhooks/replies", Body: map[string]string{"text": "hi"}},
			} {
				if r := b.do(t, q); r.Status != tc.wantStatus || r.errorCode() != tc.wantCode {
					t.Fatalf("%s %s: %d %s, want %d %s", q.Method, q.Path, r.Status, r.Body, tc.wantStatus, tc.wantCode)
				}
			}
			if r := b.do(t, shopReq{Method: "GET", Path: "/admin/stats"}); r.Status != 200 {
				t.Fatalf("admin under faults: %d", r.Status)
			}
			if n, w := len(b.sim.Effects()), len(b.sim.Webhooks()); n != 0 || w != 0 {
				t.Fatalf("effects %d webhooks %d while faulted, want 0", n, w)
			}

			b.sim.SetFaults(Faults{})
			r := b.do(t, shopReq{Method: "POST", Path: "/refunds", Key: "r1", Body: body})
			if r.Status != 201 || r.replayed() {
				t.Fatalf("retry after recovery: %d replayed=%v %s", r.Status, r.replayed(), r.Body)
			}
			if n := len(b.sim.Effects()); n != 1 {
				t.Errorf("effects = %d, want 1", n)
			}
			if st := b.sim.Stats(); st.FaultsInjected != 5 || st.Requests["refund"][tc.wantStatus] != 2 {
				t.Errorf("stats = %+v", st)
			}
		})
	}
}

// TestShopValidationFailStored: a 422 from the validation_fail fault is the
// shop's answer and is replayed like any other.
func TestShopValidationFailStored(t *testing.T) {
	t.Parallel()
	b := shopSetup(t, Faults{ValidationFail: true}, "")
	body := shopCoupon100("u9")
	steps := []struct {
		key        string
		faults     Faults
		wantStatus int
		wantReplay bool
	}{
		{"k1", Faults{ValidationFail: true}, 422, false},
		{"k1", Faults{}, 422, true},
		{"k2", Faults{}, 201, false},
	}
	for i, st := range steps {
		b.sim.SetFaults(st.faults)
		r := b.do(t, shopReq{Method: "POST", Path: "/coupons", Key: st.key, Body: body})
		if r.Status != st.wantStatus || r.replayed() != st.wantReplay {
			t.Fatalf("step %d: %d replayed=%v %s", i, r.Status, r.replayed(), r.Body)
		}
		if r.Status == 422 && r.errorCode() != "validation_failed" {
			t.Fatalf("step %d: code %q", i, r.errorCode())
		}
	}
	if effects := b.sim.Effects(); len(effects) != 1 || effects[0].IdempotencyKey != "k2" {
		t.Errorf("effects = %+v", effects)
	}
}

func TestShopWebhooks(t *testing.T) {
	t.Parallel()
	const secret = "s3cret"
	b := shopSetup(t, Faults{}, secret)
	payload := `{"event":"reply","conversation_id":"c1","text":"你好"}`
	now := time.Now()
	sign := func(body string, at time.Time) string { return shopapi.SignWebhook([]byte(secret), []byte(body), at) }
	good := sign(payload, now)
	sigHeader := shopapi.SignatureHeader
	tests := []struct {
		name       string
		header     map[string]string
		body       string
		wantStatus int
		wantCode   string
		wantDup    bool
	}{
		{"good signature", map[string]string{sigHeader: good, EventIDHeader: "e1"}, payload, 200, "", false},
		{"replayed request", map[string]string{sigHeader: good, EventIDHeader: "e1"}, payload, 409, WebhookReplayed, false},
		{"retry signed anew", map[string]string{sigHeader: sign(payload, now.Add(time.Second)), EventIDHeader: "e1"}, payload, 200, "", true},
		{"idempotency key without event id", map[string]string{sigHeader: sign(payload, now.Add(2*time.Second)), "Idempotency-Key": "w1"}, payload, 200, "", false},
		{"timestamp 6 minutes old", map[string]string{sigHeader: sign(payload, now.Add(-6*time.Minute)), EventIDHeader: "e6"}, payload, 400, WebhookStale, false},
		{"timestamp 6 minutes ahead", map[string]string{sigHeader: sign(payload, now.Add(6*time.Minute)), EventIDHeader: "e7"}, payload, 400, WebhookStale, false},
		{"bad signature", map[string]string{sigHeader: shopapi.SignWebhook([]byte("other"), []byte(payload), now), EventIDHeader: "e2"}, payload, 401, WebhookBadSignature, false},
		{"tampered body", map[string]string{sigHeader: good, EventIDHeader: "e3"}, payload + " ", 401, WebhookBadSignature, false},
		{"missing signature", map[string]string{EventIDHeader: "e4"}, payload, 401, WebhookBadSignature, false},
		{"old signature scheme", map[string]string{sigHeader: "sha256=00", EventIDHeader: "e5"}, payload, 401, WebhookBadSignature, false},
	}
	for _, tc := range tests { // in order: replays and duplicates follow the first
		r := b.do(t, shopReq{Method: "POST", Path: "/webhooks/replies", Header: tc.header, Body: tc.body})
		if r.Status != tc.wantStatus || r.errorCode() != tc.wantCode {
			t.Fatalf("%s: %d %s, want %d %s", tc.name, r.Status, r.Body, tc.wantStatus, tc.wantCode)
		}
		if r.Status == 200 && !bytes.Contains(r.Body, fmt.Appendf(nil, `"duplicate":%v`, tc.wantDup)) {
			t.Errorf("%s: body %s, want duplicate %v", tc.name, r.Body, tc.wantDup)
		}
	}
	got := b.sim.Webhooks()
	if len(got) != len(tests) {
		t.Fatalf("webhooks recorded = %d, want %d", len(got), len(tests))
	}
	for i, wh := range got {
		tc := tests[i]
		wantValid := tc.wantStatus != 401
		if wh.SignatureValid != wantValid || !wh.SignatureChecked || wh.Duplicate != tc.wantDup || wh.Shop != "demo" ||
			wh.Refused != tc.wantCode {
			t.Errorf("%s: recorded %+v", tc.name, wh)
		}
	}
	if got[0].EventID != "e1" || got[0].Signature != good || !json.Valid(got[0].Body) || got[3].IdempotencyKey != "w1" {
		t.Errorf("first recorded = %+v, fourth = %+v", got[0], got[3])
	}
	if st := b.sim.Stats(); st.WebhooksReceived != 2 || st.WebhookDuplicates != 1 || st.WebhookReplays != 1 ||
		st.WebhookStale != 2 || st.WebhookBadSignatures != 4 {
		t.Errorf("stats = %+v", st)
	}
	// The body of a refusal says what to fix.
	r := b.do(t, shopReq{Method: "POST", Path: "/webhooks/replies", Body: payload,
		Header: map[string]string{sigHeader: sign(payload, now.Add(-time.Hour))}})
	if r.Status != 400 || !bytes.Contains(r.Body, []byte("outside the tolerance")) {
		t.Errorf("stale: %d %s", r.Status, r.Body)
	}

	t.Run("no secret", func(t *testing.T) {
		t.Parallel()
		b := shopSetup(t, Faults{}, "")
		r := b.do(t, shopReq{Method: "POST", Path: "/webhooks/replies", Shop: "acme", Body: "not json",
			Header: map[string]string{sigHeader: "t=1,v1=00"}})
		if r.Status != 200 {
			t.Fatalf("status %d %s", r.Status, r.Body)
		}
		wh := b.sim.Webhooks()
		if len(wh) != 1 || wh[0].SignatureChecked || wh[0].SignatureValid || string(wh[0].Body) != `"not json"` || wh[0].Shop != "acme" {
			t.Errorf("recorded = %+v", wh)
		}
	})
}

func TestShopAdmin(t *testing.T) {
	t.Parallel()
	b := shopSetup(t, Faults{}, "")
	decode := func(t *testing.T, r shopResp, v any) {
		t.Helper()
		if r.Status != 200 {
			t.Fatalf("status %d %s", r.Status, r.Body)
		}
		if err := json.Unmarshal(r.Body, v); err != nil {
			t.Fatalf("decode %s: %v", r.Body, err)
		}
	}

	var f Faults
	decode(t, b.do(t, shopReq{Method: "GET", Path: "/admin/faults"}), &f)
	if !reflect.DeepEqual(f, Faults{ErrorStatus: 503}) {
		t.Errorf("default faults = %+v", f)
	}
	for _, bad := range []string{`{"error_rate":2}`, `{"latency_ms":-1}`, `{"error_status":200}`, `{"dwon":true}`, `nope`} {
		if r := b.do(t, shopReq{Method: "PUT", Path: "/admin/faults", Body: bad}); r.Status != 400 || r.errorCode() != "invalid_argument" {
			t.Errorf("PUT %s: %d %s, want 400", bad, r.Status, r.Body)
		}
	}
	want := Faults{LatencyMS: 0, ErrorRate: 0.25, ErrorStatus: 500, ValidationFail: true}
	decode(t, b.do(t, shopReq{Method: "PUT", Path: "/admin/faults", Body: want}), &f)
	if !reflect.DeepEqual(f, want) || !reflect.DeepEqual(b.sim.Faults(), want) {
		t.Errorf("faults after PUT = %+v / %+v, want %+v", f, b.sim.Faults(), want)
	}
	b.sim.SetFaults(Faults{})

	// Some traffic to report on.
	b.do(t, shopReq{Method: "POST", Path: "/coupons", Key: "c1", Body: shopCoupon100("u1")})
	b.do(t, shopReq{Method: "POST", Path: "/coupons", Key: "c1", Body: shopCoupon100("u1")})
	b.do(t, shopReq{Method: "POST", Path: "/refunds", Shop: "acme", Key: "r1", Body: map[string]any{"order_id": "1000002"}})
	b.do(t, shopReq{Method: "POST", Path: "/webhooks/replies", Body: `{"x":1}`})

	var st Stats
	decode(t, b.do(t, shopReq{Method: "GET", Path: "/admin/stats"}), &st)
	if st.Requests["coupon"][201] != 2 || st.Requests["refund"][201] != 1 || st.Effects["coupon"] != 1 || st.Effects["refund"] != 1 || st.Replays != 1 || st.WebhooksReceived != 1 {
		t.Errorf("stats = %+v", st)
	}

	var effects struct {
		Effects []Effect `json:"effects"`
		Count   int      `json:"count"`
	}
	decode(t, b.do(t, shopReq{Method: "GET", Path: "/admin/effects"}), &effects)
	if effects.Count != 2 || effects.Effects[0].Kind != "coupon" || effects.Effects[1].Kind != "refund" {
		t.Errorf("effects = %+v", effects)
	}
	decode(t, b.do(t, shopReq{Method: "GET", Path: "/admin/effects?shop=acme&kind=refund"}), &effects)
	if effects.Count != 1 || effects.Effects[0].IdempotencyKey != "r1" || !bytes.Contains(effects.Effects[0].Body, []byte(`"order_id":"1000002"`)) {
		t.Errorf("filtered effects = %+v", effects)
	}

	var webhooks struct {
		Webhooks []Webhook `json:"webhooks"`
		Count    int       `json:"count"`
	}
	decode(t, b.do(t, shopReq{Method: "GET", Path: "/admin/webhooks"}), &webhooks)
	if webhooks.Count != 1 || string(webhooks.Webhooks[0].Body) != `{"x":1}` {
		t.Errorf("webhooks = %+v", webhooks)
	}

	b.sim.SetFaults(Faults{LatencyMS: 1})
	if r := b.do(t, shopReq{Method: "POST", Path: "/admin/reset"}); r.Status != 204 {
		t.Fatalf("reset: %d %s", r.Status, r.Body)
	}
	if len(b.sim.Effects()) != 0 || len(b.sim.Webhooks()) != 0 || b.sim.Faults().LatencyMS != 1 {
		t.Errorf("after reset: effects %d webhooks %d faults %+v", len(b.sim.Effects()), len(b.sim.Webhooks()), b.sim.Faults())
	}
	if st := b.sim.Stats(); st.Replays != 0 || st.Effects["coupon"] != 0 || st.Requests["coupon"][201] != 0 {
		t.Errorf("stats after reset = %+v", st)
	}
	// Stored keys are forgotten too: c1 runs again.
	if r := b.do(t, shopReq{Method: "POST", Path: "/coupons", Key: "c1", Body: shopCoupon100("u1")}); r.Status != 201 || r.replayed() {
		t.Errorf("c1 after reset: %d replayed=%v", r.Status, r.replayed())
	}
}

// TestShopManyKeysConcurrent: under concurrent load with repeats, every key
// is applied exactly once.
func TestShopManyKeysConcurrent(t *testing.T) {
	t.Parallel()
	b := shopSetup(t, Faults{LatencyJitterMS: 2}, "")
	const keys, repeats = 100, 3
	var wg sync.WaitGroup
	errs := make(chan error, keys*repeats)
	for i := range keys * repeats {
		wg.Go(func() {
			k := i % keys
			shop := fmt.Sprintf("shop-%d", k%4)
			r, err := b.send(shopReq{Method: "POST", Path: "/coupons", Shop: shop, Key: fmt.Sprintf("key-%d", k), Body: shopCoupon100(fmt.Sprintf("u%d", k))})
			switch {
			case err != nil:
				errs <- err
			case r.Status != 201 && r.Status != 409:
				errs <- fmt.Errorf("key %d: %d %s", k, r.Status, r.Body)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	seen := make(map[string]int)
	for _, e := range b.sim.Effects() {
		seen[e.Shop+"/"+e.IdempotencyKey]++
	}
	if len(seen) != keys {
		t.Errorf("distinct effects = %d, want %d", len(seen), keys)
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s applied %d times", k, n)
		}
	}
}

func TestShopCatalogueOrderRule(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id     string
		ok     bool
		user   string
		amount int64
		status string
	}{
		{"100000", true, "u0", 100, "paid"},
		{"1234567", true, "u7", 56800, "paid"},
		{"20251111", true, "u1", 11200, "completed"},
		{"98765432109876543210", true, "u0", 21100, "shipped"},
		{"12345", false, "", 0, ""},
		{"１２３４５６", false, "", 0, ""},
		{"123456789012345678901234567890123", false, "", 0, ""},
	}
	for _, tc := range tests {
		o, ok := CatalogueOrder("demo", tc.id)
		if ok != tc.ok || o.UserID != tc.user || o.AmountCents != tc.amount || o.Status != tc.status {
			t.Errorf("%s: ok=%v %+v, want ok=%v user %s amount %d status %s", tc.id, ok, o, tc.ok, tc.user, tc.amount, tc.status)
		}
	}
}

// TestShopErrorStatusesWeighted: a roll over [0,1) falls on each status by
// its weight, in status order; no usable weight falls back to ErrorStatus;
// Validate refuses what llmsim refuses.
func TestShopErrorStatusesWeighted(t *testing.T) {
	t.Parallel()
	f := Faults{ErrorStatus: 503, ErrorStatuses: map[int]float64{429: 1, 500: 3}}
	for roll, want := range map[float64]int{0: 429, 0.24: 429, 0.25: 500, 0.99: 500} {
		if got := shopErrorStatus(f, roll); got != want {
			t.Errorf("roll %v: %d, want %d", roll, got, want)
		}
	}
	if got := shopErrorStatus(Faults{ErrorStatus: 502, ErrorStatuses: map[int]float64{500: 0}}, 0.5); got != 502 {
		t.Errorf("zero weights: %d, want ErrorStatus 502", got)
	}
	for _, bad := range []map[int]float64{{200: 1}, {500: -1}, {500: math.NaN()}} {
		if err := (Faults{ErrorStatuses: bad}).Validate(); err == nil {
			t.Errorf("Validate accepted %v", bad)
		}
	}
}

// TestShopLatencyJitterAroundLatency: the jitter spreads the wait over
// latency ± jitter, as llmsim's does, and a wait never goes below 0.
func TestShopLatencyJitterAroundLatency(t *testing.T) {
	t.Parallel()
	lo, hi := time.Duration(math.MaxInt64), time.Duration(0)
	for range 2000 {
		d := shopWait(Faults{LatencyMS: 100, LatencyJitterMS: 50})
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < 50*time.Millisecond || hi > 150*time.Millisecond || lo >= 70*time.Millisecond || hi <= 130*time.Millisecond {
		t.Errorf("waits in [%v, %v], want spread over 100ms ± 50ms", lo, hi)
	}
	for range 200 {
		if d := shopWait(Faults{LatencyMS: 5, LatencyJitterMS: 20}); d < 0 || d > 25*time.Millisecond {
			t.Fatalf("wait %v outside [0, 25ms]", d)
		}
	}
}
