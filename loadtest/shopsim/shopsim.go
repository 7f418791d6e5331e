// Package shopsim is the simulated shop API: what a shop's order, coupon and refund system looks
// like to peakdesk's outbox relay and order follow-ups. It is served by dev
// mode, by `peakdesk mockshop`, and by tests through httptest.
//
// Routes (JSON; the shop is named by the X-Peakdesk-Shop header, "demo" when
// absent):
//
//	GET  /orders?user_id=&limit=  a customer's recent orders, newest first
//	GET  /orders?tracking_no=     the order of a tracking number
//	GET  /orders/{id}             the order (404 not_found if unknown or another shop's)
//	GET  /orders/{id}/logistics   its logistics
//	GET  /orders/{id}/refunds     its refunds (requested with POST /refunds, or AddRefund)
//	POST /coupons                 {order_id?, user_id, amount_cents, reason} → 201 coupon
//	POST /refunds                 {order_id, amount_cents?, reason} → 201 refund
//	POST /webhooks/replies        reply-webhook receiver (Peakdesk-Signature verified,
//	                              stale and replayed signatures refused)
//	GET  /openapi.yaml            the shop API's contract (shopapi.OpenAPI), which
//	                              every route above but /admin follows
//	GET  /admin/faults, PUT /admin/faults, GET /admin/stats,
//	GET  /admin/effects[?shop=&kind=], GET /admin/webhooks[?shop=], POST /admin/reset
//
// Faults (latency, random errors, down, validation_fail) apply to the shop
// routes, never to /admin.
package shopsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/peakdesk/peakdesk"
)

// ShopDefaultShop is the shop a request belongs to when it carries no
// X-Peakdesk-Shop header.
const DefaultShop = "demo"

// ShopHeader names the shop a request to the simulated shop API acts for.
const Header = "X-Peakdesk-Shop"

// Request body limits: effects are small; webhook bodies carry a reply.
const (
	shopMaxEffectBody  = 64 << 10
	shopMaxWebhookBody = 1 << 20
)

// Path kinds used as keys of Stats.Requests.
const (
	shopKindOrder     = "order"
	shopKindLogistics = "logistics"
	shopKindOrders    = "orders"
	shopKindRefunds   = "refunds"
	shopKindCoupon    = "coupon"
	shopKindRefund    = "refund"
	shopKindWebhook   = "webhook"
	shopKindAdmin     = "admin"
	shopKindUnknown   = "unknown"
)

// shopStatusClientGone is recorded when the client went away before any
// response was written (nginx's convention).
const shopStatusClientGone = 499

// Faults are the faults the simulated shop API injects. The zero value
// injects none.
type Faults struct {
	// LatencyMS delays every shop request (not replays, not /admin) by this
	// many milliseconds, honouring the request's cancellation.
	LatencyMS int `json:"latency_ms"`
	// LatencyJitterMS adds a uniformly random 0..LatencyJitterMS ms.
	LatencyJitterMS int `json:"latency_jitter_ms"`
	// ErrorRate is the probability (0..1) that a request fails with
	// ErrorStatus after its latency. Failed requests are not stored under
	// their idempotency key, so a retry may succeed.
	ErrorRate float64 `json:"error_rate"`
	// ErrorStatus is the status of a random failure; 0 means 503.
	ErrorStatus int `json:"error_status"`
	// Down answers every shop request 503 at once.
	Down bool `json:"down"`
	// ValidationFail answers every POST 422 validation_failed. For coupons
	// and refunds the 422 is stored under the idempotency key and replayed.
	ValidationFail bool `json:"validation_fail"`
}

// Validate reports the first field of f that is out of range.
func (f Faults) Validate() error {
	switch {
	case f.LatencyMS < 0:
		return errors.New("shop faults: latency_ms must be >= 0")
	case f.LatencyJitterMS < 0:
		return errors.New("shop faults: latency_jitter_ms must be >= 0")
	case math.IsNaN(f.ErrorRate) || f.ErrorRate < 0 || f.ErrorRate > 1:
		return errors.New("shop faults: error_rate must be within 0..1")
	case f.ErrorStatus != 0 && (f.ErrorStatus < 400 || f.ErrorStatus > 599):
		return errors.New("shop faults: error_status must be a 4xx or 5xx status")
	}
	return nil
}

// withDefaults fills ErrorStatus and clamps values Validate would reject, so
// SetFaults never stores something it cannot act on.
func (f Faults) withDefaults() Faults {
	f.LatencyMS = max(f.LatencyMS, 0)
	f.LatencyJitterMS = max(f.LatencyJitterMS, 0)
	if math.IsNaN(f.ErrorRate) || f.ErrorRate < 0 {
		f.ErrorRate = 0
	}
	f.ErrorRate = min(f.ErrorRate, 1)
	if f.ErrorStatus < 400 || f.ErrorStatus > 599 {
		f.ErrorStatus = http.StatusServiceUnavailable
	}
	return f
}

// Effect is one coupon or refund the simulated shop applied. Exactly one
// is recorded per (shop, idempotency key) that succeeded.
type Effect struct {
	// Kind is "coupon" or "refund".
	Kind           string `json:"kind"`
	IdempotencyKey string `json:"idempotency_key"`
	Shop           string `json:"shop"`
	// Body is the created object, as returned with the 201.
	Body json.RawMessage `json:"body"`
	At   time.Time       `json:"at"`
}

// Webhook is one reply-webhook delivery the simulated shop received.
// Deliveries answered by an injected fault are not recorded (the shop never
// saw them); refused deliveries are, with Refused set.
type Webhook struct {
	Shop           string `json:"shop"`
	EventID        string `json:"event_id,omitempty"`
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	// Signature is the Peakdesk-Signature header as received.
	Signature string `json:"signature,omitempty"`
	// SignatureChecked is false when the simulator has no secret.
	SignatureChecked bool `json:"signature_checked"`
	// SignatureValid is true when the signature matches the body, however
	// old it is.
	SignatureValid bool `json:"signature_valid"`
	// Refused says why the delivery was refused (WebhookBadSignature,
	// WebhookStale, WebhookReplayed); empty when accepted.
	Refused string `json:"refused,omitempty"`
	// Duplicate is true when an earlier accepted delivery of this shop had
	// the same event id (or, without one, the same idempotency key).
	Duplicate bool `json:"duplicate"`
	// Body is the delivered JSON; a body that is not JSON is kept as a
	// JSON string.
	Body json.RawMessage `json:"body"`
	At   time.Time       `json:"at"`
}

// Stats counts what the simulated shop API saw.
type Stats struct {
	// Requests counts responses by path kind (order, logistics, coupon,
	// refund, webhook, admin, unknown) and HTTP status; 499 means the client
	// went away before an answer.
	Requests map[string]map[int]int64 `json:"requests"`
	// Effects counts applied effects by kind (coupon, refund).
	Effects map[string]int64 `json:"effects"`
	// Replays counts responses replayed for a repeated idempotency key.
	Replays int64 `json:"replays"`
	// Conflicts counts 409s for a key whose first request was in flight.
	Conflicts int64 `json:"conflicts"`
	// KeyReuses counts 422s for a key repeated with different parameters.
	KeyReuses int64 `json:"key_reuses"`
	// FaultsInjected counts responses produced by down, error_rate or
	// validation_fail.
	FaultsInjected int64 `json:"faults_injected"`
	// WebhooksReceived counts accepted first deliveries; duplicates and
	// refusals (bad signatures, stale timestamps, replayed signatures) are
	// counted apart.
	WebhooksReceived     int64 `json:"webhooks_received"`
	WebhookDuplicates    int64 `json:"webhook_duplicates"`
	WebhookBadSignatures int64 `json:"webhook_bad_signatures"`
	WebhookStale         int64 `json:"webhook_stale"`
	WebhookReplays       int64 `json:"webhook_replays"`
}

// shopKey scopes an idempotency key or a webhook event id to a shop.
type shopKey struct{ shop, key string }

// Sim is the simulated shop API. It is an http.Handler and safe for
// concurrent use. Build it with New.
type Sim struct {
	secret []byte
	mux    *http.ServeMux

	mu          sync.Mutex
	faults      Faults
	orders      map[string]Order // added orders by id; they shadow the catalogue
	keys        map[shopKey]*shopIdemEntry
	effects     []Effect
	webhooks    []Webhook
	webhookSeen map[shopKey]bool
	sigSeen     map[string]bool          // accepted webhook signatures, for replay refusal
	sigQueue    []shopSeenSig            // the same, in arrival order, to forget them
	seq         map[string]int64         // object id sequences by kind
	refunds     map[shopKey][]shopRefund // by (shop, order id)
	stats       Stats
}

// New returns a simulated shop API injecting faults f. secret is the
// webhook secret every shop's reply webhooks are verified with
// (outbox.VerifyWebhook); when empty, signatures are recorded but not
// checked.
func New(f Faults, secret []byte) *Sim {
	s := &Sim{
		secret: slices.Clone(secret),
		mux:    http.NewServeMux(),
		faults: f.withDefaults(),
		orders: make(map[string]Order),
	}
	s.resetLocked()
	s.handle("GET /orders/{id}", shopKindOrder, s.getOrder)
	s.handle("GET /orders/{id}/logistics", shopKindLogistics, s.getLogistics)
	s.handle("GET /orders", shopKindOrders, s.listOrders)
	s.handle("GET /orders/{id}/refunds", shopKindRefunds, s.listRefunds)
	s.handle("GET /openapi.yaml", shopKindAdmin, s.getOpenAPI)
	s.handle("POST /coupons", shopKindCoupon, func(w http.ResponseWriter, r *http.Request) {
		s.postEffect(w, r, shopKindCoupon)
	})
	s.handle("POST /refunds", shopKindRefund, func(w http.ResponseWriter, r *http.Request) {
		s.postEffect(w, r, shopKindRefund)
	})
	s.handle("POST /webhooks/replies", shopKindWebhook, s.postWebhook)
	s.handle("GET /admin/faults", shopKindAdmin, s.getFaults)
	s.handle("PUT /admin/faults", shopKindAdmin, s.putFaults)
	s.handle("GET /admin/stats", shopKindAdmin, s.getStats)
	s.handle("GET /admin/effects", shopKindAdmin, s.getEffects)
	s.handle("GET /admin/webhooks", shopKindAdmin, s.getWebhooks)
	s.handle("POST /admin/reset", shopKindAdmin, s.postReset)
	s.handle("/", shopKindUnknown, func(w http.ResponseWriter, r *http.Request) {
		shopWriteError(w, http.StatusNotFound, "not_found", "no such route: "+r.Method+" "+r.URL.Path, "")
	})
	return s
}

// ServeHTTP implements http.Handler.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// SetFaults replaces the injected faults. Out-of-range values are clamped;
// use Faults.Validate first to reject them instead.
func (s *Sim) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f.withDefaults()
}

// Faults returns the injected faults, with defaults filled in.
func (s *Sim) Faults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults
}

// Effects returns every effect applied since the start or the last reset, in
// the order they were applied.
func (s *Sim) Effects() []Effect {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.effects)
}

// Webhooks returns every recorded webhook delivery, in arrival order.
func (s *Sim) Webhooks() []Webhook {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.webhooks)
}

// Stats returns a copy of the counters.
func (s *Sim) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Requests = make(map[string]map[int]int64, len(s.stats.Requests))
	for kind, byStatus := range s.stats.Requests {
		st.Requests[kind] = make(map[int]int64, len(byStatus))
		for code, n := range byStatus {
			st.Requests[kind][code] = n
		}
	}
	st.Effects = make(map[string]int64, len(s.stats.Effects))
	for kind, n := range s.stats.Effects {
		st.Effects[kind] = n
	}
	return st
}

// Reset forgets everything that happened: effects, webhooks, stored
// idempotency results and counters. Faults and added orders are kept.
func (s *Sim) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resetLocked()
}

func (s *Sim) resetLocked() {
	s.keys = make(map[shopKey]*shopIdemEntry)
	s.effects = nil
	s.webhooks = nil
	s.webhookSeen = make(map[shopKey]bool)
	s.sigSeen = make(map[string]bool)
	s.sigQueue = nil
	s.seq = make(map[string]int64)
	s.refunds = make(map[shopKey][]shopRefund)
	s.stats = Stats{
		Requests: make(map[string]map[int]int64),
		Effects:  make(map[string]int64),
	}
}

// handle registers h for pattern and counts its responses under kind.
func (s *Sim) handle(pattern, kind string, h http.HandlerFunc) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		sw := &shopStatusWriter{ResponseWriter: w}
		h(sw, r)
		status := sw.status
		if status == 0 {
			status = http.StatusOK
			if r.Context().Err() != nil {
				status = shopStatusClientGone
			}
		}
		s.mu.Lock()
		byStatus := s.stats.Requests[kind]
		if byStatus == nil {
			byStatus = make(map[int]int64)
			s.stats.Requests[kind] = byStatus
		}
		byStatus[status]++
		s.mu.Unlock()
	})
}

// shopStatusWriter remembers the status written through it.
type shopStatusWriter struct {
	http.ResponseWriter
	status int
}

func (w *shopStatusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *shopStatusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *shopStatusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// shopOf returns the shop a request acts for.
func shopOf(r *http.Request) string {
	if shop := r.Header.Get(Header); shop != "" {
		return shop
	}
	return DefaultShop
}

// shopError is the error body, shaped like the ingest edge's.
type shopError struct {
	Error shopErrorBody `json:"error"`
}

type shopErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

func shopErrorJSON(code, msg, field string) []byte {
	b, _ := json.Marshal(shopError{Error: shopErrorBody{Code: code, Message: msg, Field: field}})
	return b
}

func shopWriteError(w http.ResponseWriter, status int, code, msg, field string) {
	shopWriteRaw(w, status, shopErrorJSON(code, msg, field))
}

func shopWriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		shopWriteError(w, http.StatusInternalServerError, "internal", "internal error", "")
		return
	}
	shopWriteRaw(w, status, b)
}

func shopWriteRaw(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
	_, _ = w.Write([]byte("\n"))
}

// shopFaultCode names the error code of an injected failure status.
func shopFaultCode(status int) string {
	switch status {
	case http.StatusTooManyRequests:
		return "rate_limited"
	case http.StatusInternalServerError:
		return "internal"
	case http.StatusServiceUnavailable:
		return "unavailable"
	default:
		return "simulated_fault"
	}
}

// injectDown answers 503 when the shop is down and reports whether it did.
func (s *Sim) injectDown(w http.ResponseWriter, f Faults) bool {
	if !f.Down {
		return false
	}
	s.countFault()
	shopWriteError(w, http.StatusServiceUnavailable, "unavailable", "shop API is down (simulated)", "")
	return true
}

// injectError answers ErrorStatus with probability ErrorRate and reports
// whether it did.
func (s *Sim) injectError(w http.ResponseWriter, f Faults) bool {
	if f.ErrorRate <= 0 || rand.Float64() >= f.ErrorRate {
		return false
	}
	s.countFault()
	shopWriteError(w, f.ErrorStatus, shopFaultCode(f.ErrorStatus),
		fmt.Sprintf("simulated failure (status %d)", f.ErrorStatus), "")
	return true
}

func (s *Sim) countFault() {
	s.mu.Lock()
	s.stats.FaultsInjected++
	s.mu.Unlock()
}

// shopDelay waits out the injected latency or until ctx is done.
func shopDelay(ctx context.Context, f Faults) error {
	d := time.Duration(f.LatencyMS) * time.Millisecond
	if f.LatencyJitterMS > 0 {
		d += time.Duration(rand.IntN(f.LatencyJitterMS+1)) * time.Millisecond
	}
	return peakdesk.Sleep(ctx, d)
}

// --- admin ---------------------------------------------------------------

func (s *Sim) getFaults(w http.ResponseWriter, _ *http.Request) {
	shopWriteJSON(w, http.StatusOK, s.Faults())
}

// putFaults replaces the faults with the body; absent fields become zero.
func (s *Sim) putFaults(w http.ResponseWriter, r *http.Request) {
	var f Faults
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, shopMaxEffectBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		shopWriteError(w, http.StatusBadRequest, "invalid_argument", "faults: "+err.Error(), "")
		return
	}
	if err := f.Validate(); err != nil {
		shopWriteError(w, http.StatusBadRequest, "invalid_argument", err.Error(), "")
		return
	}
	s.SetFaults(f)
	shopWriteJSON(w, http.StatusOK, s.Faults())
}

func (s *Sim) getStats(w http.ResponseWriter, _ *http.Request) {
	shopWriteJSON(w, http.StatusOK, s.Stats())
}

func (s *Sim) getEffects(w http.ResponseWriter, r *http.Request) {
	shop, kind := r.URL.Query().Get("shop"), r.URL.Query().Get("kind")
	out := make([]Effect, 0)
	for _, e := range s.Effects() {
		if (shop == "" || e.Shop == shop) && (kind == "" || e.Kind == kind) {
			out = append(out, e)
		}
	}
	shopWriteJSON(w, http.StatusOK, map[string]any{"effects": out, "count": len(out)})
}

func (s *Sim) getWebhooks(w http.ResponseWriter, r *http.Request) {
	shop := r.URL.Query().Get("shop")
	out := make([]Webhook, 0)
	for _, wh := range s.Webhooks() {
		if shop == "" || wh.Shop == shop {
			out = append(out, wh)
		}
	}
	shopWriteJSON(w, http.StatusOK, map[string]any{"webhooks": out, "count": len(out)})
}

func (s *Sim) postReset(w http.ResponseWriter, _ *http.Request) {
	s.Reset()
	w.WriteHeader(http.StatusNoContent)
}
