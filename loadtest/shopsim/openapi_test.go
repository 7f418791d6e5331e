package shopsim

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

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/peakdesk/peakdesk/outbox/shopapi"
)

// contract is the shop API's OpenAPI document, loaded and validated, with a
// router that matches any host.
type contract struct {
	doc    *openapi3.T
	router routers.Router
}

func loadContract(t *testing.T) *contract {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(shopapi.OpenAPI)
	if err != nil {
		t.Fatalf("load openapi.yaml: %v", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("openapi.yaml is not a valid OpenAPI 3 document: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: "http://shop.test"}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatalf("router: %v", err)
	}
	return &contract{doc: doc, router: router}
}

// exchange validates req against the contract, serves it with h, validates
// the response and returns it; it names the operation it hit.
func (c *contract) exchange(t *testing.T, h http.Handler, req *http.Request, body []byte) (string, *httptest.ResponseRecorder) {
	t.Helper()
	ctx := context.Background()
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		t.Fatalf("%s %s: no route in the contract: %v", req.Method, req.URL, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
		t.Fatalf("%s %s: the request breaks the contract: %v", req.Method, req.URL, err)
	}
	// The validator read the body: serve a fresh copy.
	served := req.Clone(ctx)
	served.Body = io.NopCloser(bytes.NewReader(body))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, served)
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: rec.Code, Header: rec.Header(),
		Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	out.SetBodyBytes(rec.Body.Bytes())
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		t.Fatalf("%s %s → %d: the response breaks the contract: %v\n%s", req.Method, req.URL, rec.Code, err, rec.Body)
	}
	return route.Operation.OperationID, rec
}

// The shop API's contract is a valid OpenAPI 3 document, served at
// /openapi.yaml, and the simulated shop keeps it: every route's requests as
// peakdesk sends them and the simulator's answers — successes and refusals
// — validate (openapi3filter), and every operation of the document is
// exercised.
func TestSimulatedShopKeepsTheOpenAPIContract(t *testing.T) {
	t.Parallel()
	c := loadContract(t)
	const secret = "contract-secret"
	sim := New(Faults{}, []byte(secret))

	// Served as it is embedded.
	rec := httptest.NewRecorder()
	sim.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.yaml", nil))
	if rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), shopapi.OpenAPI) {
		t.Fatalf("GET /openapi.yaml: %d, %d bytes", rec.Code, rec.Body.Len())
	}

	customer := "u3" // three catalogue orders
	ids := CustomerOrderIDs(customer)
	order, _ := CatalogueOrder("demo", ids[2])
	type call struct {
		method, path string
		body         any
		header       map[string]string
		status       int
	}
	calls := []call{
		{"GET", "/orders?user_id=" + customer + "&limit=5", nil, nil, 200},
		{"GET", "/orders?user_id=u4", nil, nil, 200}, // none
		{"GET", "/orders?tracking_no=" + order.Logistics.TrackingNo, nil, nil, 200},
		{"GET", "/orders?tracking_no=XX1", nil, nil, 200},
		{"GET", "/orders?limit=3", nil, nil, 400},
		{"GET", "/orders/" + ids[2], nil, nil, 200},
		{"GET", "/orders/" + ids[2], nil, map[string]string{"Idempotency-Key": "ord_follow_1"}, 200},
		{"GET", "/orders/nope", nil, nil, 404},
		{"GET", "/orders/" + ids[2] + "/logistics", nil, nil, 200},
		{"GET", "/orders/" + ids[0] + "/logistics", nil, nil, 200}, // delivered: no ETA
		{"GET", "/orders/nope/logistics", nil, nil, 404},
		{"GET", "/orders/" + ids[2] + "/refunds", nil, nil, 200}, // none yet
		{"POST", "/refunds", map[string]any{"order_id": ids[2], "amount_cents": 100, "reason": "broken"},
			map[string]string{"Idempotency-Key": "rfd-1"}, 201},
		{"POST", "/refunds", map[string]any{"order_id": ids[2], "amount_cents": 100, "reason": "broken"},
			map[string]string{"Idempotency-Key": "rfd-1"}, 201}, // replayed
		{"POST", "/refunds", map[string]any{"order_id": "123456789", "amount_cents": 100},
			map[string]string{"Idempotency-Key": "rfd-1"}, 422}, // key reuse
		{"GET", "/orders/" + ids[2] + "/refunds", nil, nil, 200},
		{"GET", "/orders/nope/refunds", nil, nil, 404},
		{"POST", "/coupons", map[string]any{"user_id": customer, "amount_cents": 500, "reason": "late"},
			map[string]string{"Idempotency-Key": "cpn-1"}, 201},
		{"POST", "/coupons", map[string]any{"user_id": customer, "order_id": "nope", "amount_cents": 500},
			map[string]string{"Idempotency-Key": "cpn-2"}, 422},
	}
	event := map[string]any{"event_id": "pd_whk_1", "type": "reply.created", "shop": "demo",
		"conversation_id": "c1", "created_at": time.Now().UTC(),
		"reply": map[string]any{"reply_id": "r1", "conversation_id": "c1", "message_ids": []string{"m1"},
			"text": "hello", "source": "order", "follow_up": true, "created_at": time.Now().UTC()}}
	raw, _ := json.Marshal(event)
	calls = append(calls,
		call{"POST", "/webhooks/replies", event, map[string]string{"Idempotency-Key": "pd_whk_1",
			"X-Peakdesk-Event-Id": "pd_whk_1", shopapi.SignatureHeader: shopapi.SignWebhook([]byte(secret), raw, time.Now())}, 200},
		call{"POST", "/webhooks/replies", event, map[string]string{"Idempotency-Key": "pd_whk_1",
			"X-Peakdesk-Event-Id": "pd_whk_1", shopapi.SignatureHeader: shopapi.SignWebhook([]byte("wrong"), raw, time.Now())}, 401},
		call{"POST", "/webhooks/replies", event, map[string]string{"Idempotency-Key": "pd_whk_1",
			"X-Peakdesk-Event-Id": "pd_whk_1", shopapi.SignatureHeader: shopapi.SignWebhook([]byte(secret), raw, time.Now().Add(-time.Hour))}, 400},
	)

	hit := map[string]bool{}
	for _, cl := range calls {
		var body []byte
		if cl.body != nil {
			body, _ = json.Marshal(cl.body)
		}
		req := httptest.NewRequest(cl.method, "http://shop.test"+cl.path, bytes.NewReader(body))
		req.Header.Set(shopapi.ShopHeader, "demo")
		req.Header.Set("Authorization", "Bearer shop-secret")
		req.Header.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		for k, v := range cl.header {
			req.Header.Set(k, v)
		}
		op, rec := c.exchange(t, sim, req, body)
		if rec.Code != cl.status {
			t.Errorf("%s %s: %d, want %d: %s", cl.method, cl.path, rec.Code, cl.status, rec.Body)
		}
		hit[op] = true
	}
	for path, item := range c.doc.Paths.Map() {
		for method, op := range item.Operations() {
			if !hit[op.OperationID] {
				t.Errorf("%s %s (%s) is in the contract but no test request exercised it", method, path, op.OperationID)
			}
		}
	}

	// A response that breaks the contract is caught: the check can fail.
	req := httptest.NewRequest(http.MethodGet, "http://shop.test/orders/"+ids[2], nil)
	req.Header.Set(shopapi.ShopHeader, "demo")
	bad := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"1","status":"paid"}`)
	})
	route, params, _ := c.router.FindRoute(req)
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	rec = httptest.NewRecorder()
	bad.ServeHTTP(rec, req)
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: rec.Code, Header: rec.Header()}
	out.SetBodyBytes(rec.Body.Bytes())
	if err := openapi3filter.ValidateResponse(context.Background(), out); err == nil ||
		!strings.Contains(err.Error(), "user_id") {
		t.Fatalf("an order without user_id passed the contract: %v", err)
	}
}

// The catalogue's customers have 0, 1, 2 or 3 recent orders by their
// number, newest first, each of them theirs.
func TestShopCustomersRecentOrders(t *testing.T) {
	t.Parallel()
	b := shopSetup(t, Faults{}, "")
	for user, want := range map[string][]string{
		"u4": {}, "u1": {"shipped"}, "u2": {"shipped", "completed"}, "u7": {"shipped", "paid", "completed"},
		"nobody": {},
	} {
		resp := b.do(t, shopReq{Method: "GET", Path: "/orders?user_id=" + user})
		var l struct{ Orders []Order }
		if err := json.Unmarshal(resp.Body, &l); err != nil || resp.Status != 200 {
			t.Fatalf("%s: %d %s", user, resp.Status, resp.Body)
		}
		var got []string
		for _, o := range l.Orders {
			got = append(got, o.Status)
			if o.UserID != user {
				t.Errorf("%s got order %s of %s", user, o.ID, o.UserID)
			}
			if one, ok := CatalogueOrder("demo", o.ID); !ok || one.UserID != user {
				t.Errorf("order %s is not in the catalogue for %s", o.ID, user)
			}
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s: statuses %v, want %v", user, got, want)
		}
	}
	resp := b.do(t, shopReq{Method: "GET", Path: "/orders?user_id=u7&limit=1"})
	if !strings.Contains(string(resp.Body), `"status":"shipped"`) || strings.Contains(string(resp.Body), `"paid"`) {
		t.Fatalf("limit 1: %s", resp.Body)
	}
}
