package loadtest

import (
	"cmp"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"
)

// Reply-webhook headers peakdesk sends.
const (
	// ShopSignatureHeader carries "sha256=<hex HMAC-SHA256 of the raw body>".
	ShopSignatureHeader = "X-Peakdesk-Signature"
	// ShopEventIDHeader carries the delivery's event id.
	ShopEventIDHeader = "X-Peakdesk-Event-Id"
)

// ShopSign returns the X-Peakdesk-Signature value for body under secret.
func ShopSign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// shopVerify reports whether sig is a valid signature of body under secret.
func shopVerify(secret, body []byte, sig string) bool {
	hexSum, ok := strings.CutPrefix(sig, "sha256=")
	if !ok {
		return false
	}
	got, err := hex.DecodeString(hexSum)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return hmac.Equal(got, m.Sum(nil))
}

// postWebhook serves POST /webhooks/replies: it records the delivery, and
// answers 200 {"received":true,"duplicate":…}, or 401 for a bad signature.
// Duplicates are detected per shop by event id, or by idempotency key when
// the delivery has no event id.
func (s *ShopSim) postWebhook(w http.ResponseWriter, r *http.Request) {
	f := s.Faults()
	if s.injectDown(w, f) {
		return
	}
	if shopDelay(r.Context(), f) != nil {
		return
	}
	if s.injectError(w, f) {
		return
	}
	if f.ValidationFail {
		s.countFault()
		shopWriteError(w, http.StatusUnprocessableEntity, "validation_failed", "the shop rejected the webhook (simulated)", "")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, shopMaxWebhookBody))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			shopWriteError(w, http.StatusRequestEntityTooLarge, "payload_too_large", "body too large", "")
		}
		return
	}

	wh := ShopWebhook{
		Shop:             shopOf(r),
		EventID:          r.Header.Get(ShopEventIDHeader),
		IdempotencyKey:   r.Header.Get("Idempotency-Key"),
		Signature:        r.Header.Get(ShopSignatureHeader),
		SignatureChecked: len(s.secret) > 0,
		Body:             body,
		At:               time.Now(),
	}
	if !json.Valid(body) {
		wh.Body, _ = json.Marshal(string(body))
	}
	wh.SignatureValid = wh.SignatureChecked && shopVerify(s.secret, body, wh.Signature)

	s.mu.Lock()
	if wh.SignatureChecked && !wh.SignatureValid {
		s.stats.WebhookBadSignatures++
		s.webhooks = append(s.webhooks, wh)
		s.mu.Unlock()
		shopWriteError(w, http.StatusUnauthorized, "unauthenticated", "bad webhook signature", ShopSignatureHeader)
		return
	}
	if dedup := cmp.Or(wh.EventID, wh.IdempotencyKey); dedup != "" {
		k := shopKey{wh.Shop, dedup}
		wh.Duplicate = s.webhookSeen[k]
		s.webhookSeen[k] = true
	}
	if wh.Duplicate {
		s.stats.WebhookDuplicates++
	} else {
		s.stats.WebhooksReceived++
	}
	s.webhooks = append(s.webhooks, wh)
	s.mu.Unlock()
	shopWriteJSON(w, http.StatusOK, map[string]bool{"received": true, "duplicate": wh.Duplicate})
}
