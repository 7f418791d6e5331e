package shopsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Idempotency, the way Stripe does it, scoped per shop:
//
//   - The first request for a key runs; its response (201, or a 422
//     validation error) is stored with a fingerprint of the request (method,
//     path, canonical JSON body) and replayed on repeats with header
//     Idempotent-Replayed: true. Replays are served at once, without
//     injected latency or errors.
//   - A repeat with a different fingerprint gets 422 idempotency_key_reuse.
//   - A repeat while the first is still running gets 409
//     idempotency_conflict.
//   - Nothing is stored for a missing key (400), malformed JSON (400), an
//     injected failure (down, error_rate) or a client that went away before
//     the effect was applied: the key is free again and a retry may succeed.

// ShopReplayedHeader marks a response replayed for a repeated key.
const ReplayedHeader = "Idempotent-Replayed"

// shopIdemEntry is what is known about one (shop, key). While done is false
// the first request is still in flight.
type shopIdemEntry struct {
	fingerprint string
	done        bool
	status      int
	body        []byte
}

// shopCouponRequest is the body of POST /coupons.
type shopCouponRequest struct {
	OrderID     string `json:"order_id"`
	UserID      string `json:"user_id"`
	AmountCents int64  `json:"amount_cents"`
	Reason      string `json:"reason"`
}

// shopRefundRequest is the body of POST /refunds.
type shopRefundRequest struct {
	OrderID     string `json:"order_id"`
	AmountCents *int64 `json:"amount_cents"`
	Reason      string `json:"reason"`
}

// shopCoupon is a created coupon.
type shopCoupon struct {
	ID          string    `json:"id"`
	Object      string    `json:"object"`
	Shop        string    `json:"shop"`
	Code        string    `json:"code"`
	OrderID     string    `json:"order_id,omitempty"`
	UserID      string    `json:"user_id"`
	AmountCents int64     `json:"amount_cents"`
	Reason      string    `json:"reason"`
	CreatedAt   time.Time `json:"created_at"`
}

// shopRefund is a created refund.
type shopRefund struct {
	ID          string `json:"id"`
	Object      string `json:"object"`
	Shop        string `json:"shop"`
	OrderID     string `json:"order_id"`
	UserID      string `json:"user_id"`
	AmountCents int64  `json:"amount_cents"`
	Currency    string `json:"currency,omitempty"`
	Reason      string `json:"reason"`
	// Status is processing until the refund is done (simulated: never).
	Status     string     `json:"status"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpectedAt *time.Time `json:"expected_at,omitempty"`
}

// shopCanonicalJSON re-encodes body with sorted keys and no insignificant
// space, so that the same parameters give the same fingerprint. An empty body
// stands for {}.
func shopCanonicalJSON(body []byte) ([]byte, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return []byte("{}"), nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("trailing data after JSON value")
	}
	return json.Marshal(v)
}

// postEffect serves POST /coupons and POST /refunds.
func (s *Sim) postEffect(w http.ResponseWriter, r *http.Request, kind string) {
	f := s.Faults()
	if s.injectDown(w, f) {
		return
	}
	shop := shopOf(r)
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		shopWriteError(w, http.StatusBadRequest, "invalid_argument", "the Idempotency-Key header is required", "Idempotency-Key")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, shopMaxEffectBody))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			shopWriteError(w, http.StatusRequestEntityTooLarge, "payload_too_large", "body too large", "")
		}
		return
	}
	canon, err := shopCanonicalJSON(body)
	if err != nil {
		shopWriteError(w, http.StatusBadRequest, "invalid_argument", "body is not valid JSON", "")
		return
	}
	fp := r.Method + " " + r.URL.Path + "\n" + string(canon)
	ik := shopKey{shop, key}

	// Claim the key, or answer from what the key already holds.
	s.mu.Lock()
	e := s.keys[ik]
	switch {
	case e == nil:
		s.keys[ik] = &shopIdemEntry{fingerprint: fp}
		s.mu.Unlock()
	case e.fingerprint != fp:
		s.stats.KeyReuses++
		s.mu.Unlock()
		shopWriteError(w, http.StatusUnprocessableEntity, "idempotency_key_reuse",
			"Idempotency-Key "+key+" was used with different parameters", "")
		return
	case !e.done:
		s.stats.Conflicts++
		s.mu.Unlock()
		shopWriteError(w, http.StatusConflict, "idempotency_conflict",
			"a request with Idempotency-Key "+key+" is still in progress", "")
		return
	default:
		s.stats.Replays++
		status, stored := e.status, e.body
		s.mu.Unlock()
		w.Header().Set(ReplayedHeader, "true")
		shopWriteRaw(w, status, stored)
		return
	}

	// The key is ours. Injected failures and a vanished client free it.
	if shopDelay(r.Context(), f) != nil {
		s.releaseKey(ik)
		return
	}
	if s.injectError(w, f) {
		s.releaseKey(ik)
		return
	}

	var status int
	var out []byte
	if f.ValidationFail {
		s.countFault()
		status, out = http.StatusUnprocessableEntity,
			shopErrorJSON("validation_failed", "the shop rejected the request (simulated)", "")
		s.mu.Lock()
		s.storeLocked(ik, status, out)
		s.mu.Unlock()
	} else {
		status, out = s.apply(kind, shop, key, canon)
	}
	shopWriteRaw(w, status, out)
}

// releaseKey forgets an in-flight key whose request produced nothing.
func (s *Sim) releaseKey(ik shopKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.keys[ik]; e != nil && !e.done {
		delete(s.keys, ik)
	}
}

// apply validates the request, applies the effect and stores the response
// under the key, all under one lock so an effect and its stored answer can
// never be seen apart.
func (s *Sim) apply(kind, shop, key string, body []byte) (int, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var obj any
	var verr error
	switch kind {
	case shopKindCoupon:
		obj, verr = s.couponLocked(shop, body)
	default:
		obj, verr = s.refundLocked(shop, body)
	}
	status, out := http.StatusCreated, []byte(nil)
	if verr != nil {
		var fe *shopFieldError
		errors.As(verr, &fe)
		status, out = http.StatusUnprocessableEntity, shopErrorJSON(fe.code, fe.msg, fe.field)
	} else {
		var err error
		if out, err = json.Marshal(obj); err != nil {
			// Not stored: nothing was applied.
			delete(s.keys, shopKey{shop, key})
			return http.StatusInternalServerError, shopErrorJSON("internal", "internal error", "")
		}
		s.effects = append(s.effects, Effect{
			Kind: kind, IdempotencyKey: key, Shop: shop, Body: out, At: time.Now(),
		})
		s.stats.Effects[kind]++
	}
	s.storeLocked(shopKey{shop, key}, status, out)
	return status, out
}

// storeLocked keeps the first response for a key, to be replayed.
func (s *Sim) storeLocked(ik shopKey, status int, body []byte) {
	if e := s.keys[ik]; e != nil {
		e.done, e.status, e.body = true, status, body
	}
}

// shopFieldError is a validation failure, answered 422 and stored.
type shopFieldError struct{ code, msg, field string }

func (e *shopFieldError) Error() string { return e.code + ": " + e.msg }

func shopInvalid(field, format string, args ...any) error {
	return &shopFieldError{code: "invalid_argument", msg: fmt.Sprintf(format, args...), field: field}
}

func (s *Sim) nextIDLocked(prefix, kind string) string {
	s.seq[kind]++
	return fmt.Sprintf("%s_%08d", prefix, s.seq[kind])
}

// couponLocked validates a coupon request and builds the coupon.
func (s *Sim) couponLocked(shop string, body []byte) (any, error) {
	var req shopCouponRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, shopInvalid("", "bad coupon request: %v", err)
	}
	switch {
	case req.UserID == "":
		return nil, shopInvalid("user_id", "user_id is required")
	case req.AmountCents <= 0:
		return nil, shopInvalid("amount_cents", "amount_cents must be > 0")
	}
	if req.OrderID != "" {
		if _, ok := s.lookupOrderLocked(shop, req.OrderID); !ok {
			return nil, &shopFieldError{code: "order_not_found", msg: "order " + req.OrderID + " not found", field: "order_id"}
		}
	}
	id := s.nextIDLocked("cpn", shopKindCoupon)
	return shopCoupon{
		ID: id, Object: "coupon", Shop: shop, Code: fmt.Sprintf("PD%08d", s.seq[shopKindCoupon]),
		OrderID: req.OrderID, UserID: req.UserID, AmountCents: req.AmountCents, Reason: req.Reason,
		CreatedAt: time.Now().UTC(),
	}, nil
}

// refundLocked validates a refund request and builds the refund. Without
// amount_cents the whole order is refunded.
func (s *Sim) refundLocked(shop string, body []byte) (any, error) {
	var req shopRefundRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, shopInvalid("", "bad refund request: %v", err)
	}
	if req.OrderID == "" {
		return nil, shopInvalid("order_id", "order_id is required")
	}
	o, ok := s.lookupOrderLocked(shop, req.OrderID)
	if !ok {
		return nil, &shopFieldError{code: "order_not_found", msg: "order " + req.OrderID + " not found", field: "order_id"}
	}
	amount := o.AmountCents
	if req.AmountCents != nil {
		amount = *req.AmountCents
	}
	switch {
	case amount <= 0:
		return nil, shopInvalid("amount_cents", "amount_cents must be > 0")
	case amount > o.AmountCents:
		return nil, &shopFieldError{code: "amount_exceeds_order",
			msg: fmt.Sprintf("amount_cents %d exceeds the order's %d", amount, o.AmountCents), field: "amount_cents"}
	}
	now := time.Now().UTC()
	expected := now.Add(refundDelay)
	rf := shopRefund{
		ID: s.nextIDLocked("re", shopKindRefund), Object: "refund", Shop: shop, OrderID: o.ID, UserID: o.UserID,
		AmountCents: amount, Currency: o.Currency, Reason: req.Reason, Status: "processing", CreatedAt: now,
		ExpectedAt: &expected,
	}
	k := shopKey{shop, o.ID}
	s.refunds[k] = append(s.refunds[k], rf)
	return rf, nil
}
